"""
A sans-IO reader of a backend's HTTP/1.x responses (the proxy's backend side).

Framing follows RFC 9112 section 6.3: no body after ``HEAD`` or for 1xx, 204 and
304; ``Transfer-Encoding`` ending in ``chunked`` is decoded, any other coding is
read until the connection closes; otherwise ``Content-Length`` (repeated values
must agree); otherwise until the close. A response that cannot be framed raises
:class:`BackendError` (the client gets a 502, or its response is cut off).
"""

from __future__ import annotations

import re
from typing import Final

import attrs

from gatekeep.http.events import END, NEED_DATA, Marker
from gatekeep.http.fields import NAMES, field_name

__all__ = ["END", "NEED_DATA", "BackendError", "Informational", "ResponseHead",
           "ResponseReader"]

MAX_HEAD: Final = 65536

_STATUS = re.compile(rb"HTTP/(1\.[01]) ([1-9][0-9][0-9])(?: ([^\r\n]*))?")
_FIELD = re.compile(rb"([!#$%&'*+\-.^_`|~0-9A-Za-z]+):[ \t]*(.*?)[ \t]*")
_HEAD_END = re.compile(rb"\r?\n\r?\n")
_LINE = re.compile(rb"\r?\n")
_CHUNK = re.compile(rb"([0-9A-Fa-f]{1,16})[ \t]*(?:;[^\r\n]*)?")
_FRAMING: Final = frozenset({b"connection", b"transfer-encoding", b"content-length"})


def head_end(buffer: bytes | bytearray) -> tuple[int, int] | None:
    """
    Where the first blank line (``\\r?\\n\\r?\\n``) starts and ends, or None: what
    ``_HEAD_END.search`` finds, with two ``find`` scans instead of the regex engine.
    """
    crlf = buffer.find(b"\n\r\n")
    # An LF LF before it (ending no later than its LF) comes first.
    lf = buffer.find(b"\n\n", 0, crlf + 1 if crlf >= 0 else len(buffer))
    if lf >= 0:
        first, end = lf, lf + 2
    elif crlf >= 0:
        first, end = crlf, crlf + 3
    else:
        return None
    return (first - 1 if first > 0 and buffer[first - 1] == 13 else first), end


def split_lines(head: bytes) -> list[bytes]:
    """``_LINE.split(head)``: lines ended by LF or CRLF (a last line keeps a lone CR)."""
    if head.count(b"\n") == head.count(b"\r\n"):
        return head.split(b"\r\n")  # every line ends with CR LF: one split in C
    lines = head.split(b"\n")
    for index in range(len(lines) - 1):
        line = lines[index]
        if line[-1:] == b"\r":
            lines[index] = line[:-1]
    return lines


class BackendError(Exception):
    """The backend's bytes are not a response gatekeep can pass on."""


@attrs.frozen
class Informational:
    """A 1xx response other than 101 (``100 Continue``, ``103 Early Hints``)."""

    status: int
    reason: bytes
    fields: list[tuple[bytes, bytes]]


@attrs.frozen
class ResponseHead:
    status: int
    reason: bytes
    fields: list[tuple[bytes, bytes]]
    #: ``Content-Length`` as the backend gave it (also after HEAD), else None.
    length: int | None
    #: The backend keeps the connection open after this response.
    keep_alive: bool
    #: 101: the connection now carries another protocol.
    switched: bool = False
    #: The ``Connection`` field's tokens, lowercased (None: not read).
    connection: frozenset[bytes] | None = None
    #: The fields' names in lower case, in order (None: not read).
    names: list[bytes] | None = None


class ResponseReader:
    def __init__(self) -> None:
        self._buffer = bytearray()
        self._state = "idle"
        self._method = b"GET"
        self._upgrade = False
        self._remaining = 0
        self._chunk = "size"
        self._eof = False
        self.keep_alive = False

    @property
    def done(self) -> bool:
        """The last response is complete and the connection may carry another."""
        return self._state == "done" and self.keep_alive and not self._eof

    def expect(self, method: bytes, upgrade: bool) -> None:
        """A request was sent: read its response."""
        self._method, self._upgrade = method, upgrade
        self._state = "head"

    def feed(self, data: bytes) -> None:
        self._buffer += data

    def feed_eof(self) -> None:
        self._eof = True

    def take_rest(self) -> bytes:
        rest, self._buffer = bytes(self._buffer), bytearray()
        self._state = "switched"
        return rest

    def next_event(self) -> Informational | ResponseHead | bytes | Marker:
        state = self._state
        if state == "head":
            return self._head()
        if state == "length":
            return self._length()
        if state == "chunked":
            return self._chunked()
        if state == "close":
            if self._buffer:
                return self._take(len(self._buffer))
            if self._eof:
                self._state = "done"
                return END
            return NEED_DATA
        if state == "end":
            self._state = "done"
            return END
        if state == "idle" and self._buffer.strip():
            raise BackendError("bytes from the backend before any request")
        return NEED_DATA

    def _head(self) -> Informational | ResponseHead | Marker:
        buffer = self._buffer
        end = head_end(buffer)
        if end is None:
            if len(buffer) > MAX_HEAD:
                raise BackendError(f"response head longer than {MAX_HEAD} bytes")
            if self._eof:
                raise BackendError("the backend closed the connection before a response"
                                   if not buffer else "the backend closed mid-response-head")
            return NEED_DATA
        lines = split_lines(bytes(buffer[:end[0]]))
        del buffer[:end[1]]
        line = _STATUS.fullmatch(lines[0])
        if line is None:
            raise BackendError("malformed status line")
        version, status_text, reason = line.groups()
        status = int(status_text)
        fields: list[tuple[bytes, bytes]] = []
        lowers: list[bytes] = []
        framing: list[tuple[bytes, bytes]] = []
        names = NAMES
        for raw in lines[1:]:
            # What _FIELD.fullmatch gives, without the regex engine: a token, a colon,
            # the value without the spaces and tabs around it.
            name, colon, value = raw.partition(b":")
            lower = names.get(name) or field_name(name)
            if not colon or lower is None:
                raise BackendError("malformed header field in the response")
            value = value.strip(b" \t")
            fields.append((name, value))
            lowers.append(lower)
            if lower in _FRAMING:
                framing.append((lower, value))
        reason = reason or b""
        if 100 <= status < 200:
            if status == 101:
                if not self._upgrade:
                    raise BackendError("101 Switching Protocols without an Upgrade request")
                self._state = "switched"
                return ResponseHead(status, reason, fields, None, False, switched=True)
            return Informational(status, reason, fields)
        return self._framing(version, status, reason, fields, lowers, framing)

    def _framing(self, version: bytes, status: int, reason: bytes,
                 fields: list[tuple[bytes, bytes]], lowers: list[bytes],
                 framing: list[tuple[bytes, bytes]]) -> ResponseHead:
        connection: set[bytes] = set()
        codings: list[bytes] = []
        lengths: set[bytes] = set()
        for lower, value in framing:
            if lower == b"connection":
                if b"," in value:
                    connection.update([t.strip().lower() for t in value.split(b",")])
                else:
                    connection.add(value.strip().lower())
            elif lower == b"transfer-encoding":
                codings += [t.strip().lower() for t in value.split(b",") if t.strip()]
            elif b"," in value:
                lengths.update([v.strip() for v in value.split(b",")])
            else:
                lengths.add(value.strip())
        length: int | None = None
        if lengths:
            if len(lengths) > 1:
                raise BackendError("conflicting or invalid Content-Length")
            value = lengths.pop()
            if not value.isdigit():
                raise BackendError("conflicting or invalid Content-Length")
            length = int(value)
        keep = version == b"1.1" and b"close" not in connection
        if self._method == b"HEAD" or status in (204, 304):
            self._state = "end"
        elif codings:
            if codings[-1] == b"chunked":
                self._state, self._chunk = "chunked", "size"
            else:
                self._state, keep = "close", False
            length = None
        elif length is not None:
            self._state, self._remaining = ("length", length) if length else ("end", 0)
        else:
            self._state, keep = "close", False
        self.keep_alive = keep
        return ResponseHead(status, reason, fields, length, keep, False, frozenset(connection),
                            lowers)

    def _take(self, limit: int) -> bytes:
        buffer = self._buffer
        if len(buffer) <= limit:
            data = bytes(buffer)
            buffer.clear()
        else:
            data = bytes(buffer[:limit])
            del buffer[:limit]
        return data

    def _length(self) -> bytes | Marker:
        if not self._buffer:
            if self._eof:
                raise BackendError("the backend closed before the end of the body")
            return NEED_DATA
        data = self._take(self._remaining)
        self._remaining -= len(data)
        if self._remaining == 0:
            self._state = "end"
        return data

    def _line(self) -> bytes | None:
        found = _LINE.search(self._buffer)
        if found is None:
            if len(self._buffer) > 4096:
                raise BackendError("malformed chunked body")
            return None
        line = bytes(self._buffer[:found.start()])
        del self._buffer[:found.end()]
        return line

    def _chunked(self) -> bytes | Marker:
        while True:
            if self._chunk == "data":
                if not self._buffer:
                    break
                data = self._take(self._remaining)
                self._remaining -= len(data)
                if self._remaining == 0:
                    self._chunk = "crlf"
                return data
            line = self._line()
            if line is None:
                break
            if self._chunk == "size":
                size = _CHUNK.fullmatch(line)
                if size is None:
                    raise BackendError("invalid chunk size")
                self._remaining = int(size.group(1), 16)
                self._chunk = "data" if self._remaining else "trailer"
            elif self._chunk == "crlf":
                if line:
                    raise BackendError("chunk longer than its size")
                self._chunk = "size"
            elif line == b"":  # the end of the trailer section (trailers are dropped)
                self._state = "done"
                return END
        if self._eof:
            raise BackendError("the backend closed before the end of the chunked body")
        return NEED_DATA

    def whole_body(self) -> bytes | None:
        """
        Right after a :class:`ResponseHead`: the whole body when it is here already
        (``Content-Length`` bytes buffered, or no body), and the reader is done; None
        otherwise (read on with :meth:`next_event`). The events it stands for are the
        body bytes (when any) and :data:`END`.
        """
        state = self._state
        if state == "end":
            self._state = "done"
            return b""
        if state == "length" and len(self._buffer) >= self._remaining:
            data = self._take(self._remaining)
            self._remaining = 0
            self._state = "done"
            return data
        return None

    def reset(self) -> None:
        """The response is over: the next request may be sent."""
        self._state = "idle"
