"""
A strict, sans-IO reader of HTTP/1.x requests: the client side of the proxy.

Anything that could make gatekeep and a backend disagree about where a request
ends or what it says is refused with a status for the client (:class:`BadRequest`),
never repaired: conflicting or repeated ``Content-Length``, ``Transfer-Encoding``
with ``Content-Length`` or in HTTP/1.0, codings other than ``chunked``, a missing or
repeated ``Host``, obsolete line folding, whitespace before a colon, invalid field
names or control characters, bare CR or LF line ends, malformed chunk sizes or
chunk ends. The request-target is kept exactly as sent.

Events, from :meth:`RequestReader.next_event`: a :class:`RequestHead`, body bytes,
:data:`END` when the body is complete (the reader then pauses until
:meth:`RequestReader.start_next`), :data:`NEED_DATA` or :data:`PAUSED`.
"""

from __future__ import annotations

import functools
import re
from typing import Final

import attrs

from gatekeep.detectors.http import parse_authority as _parse_authority
from gatekeep.http.events import END, NEED_DATA, PAUSED, Marker
from gatekeep.http.fields import NAMES, field_name

__all__ = ["END", "NEED_DATA", "PAUSED", "BadRequest", "RequestHead", "RequestReader"]

MAX_HEAD: Final = 16384
MAX_FIELDS: Final = 128

_REQUEST_LINE = re.compile(
    rb"([!#$%&'*+\-.^_`|~0-9A-Za-z]{1,32}) ([\x21-\x7e]+) HTTP/(1\.[01])")
_FIELD = re.compile(
    rb"([!#$%&'*+\-.^_`|~0-9A-Za-z]+):[ \t]*"
    rb"((?:[\x21-\x7e\x80-\xff](?:[\t \x21-\x7e\x80-\xff]*[\x21-\x7e\x80-\xff])?)?)[ \t]*")
#: Every byte but the control characters (HTAB is allowed, in field values) and CR and
#: LF: what ``bytes.translate`` deletes to leave the bytes a clean head may hold only as
#: CR LF pairs.
_PLAIN: Final = bytes(b for b in range(256) if b == 9 or 0x20 <= b != 0x7f)
_BARE_LF = re.compile(rb"(?<!\r)\n")
_BARE_CR = re.compile(rb"\r(?!\n)")
_CHUNK_SIZE = re.compile(
    rb"([0-9A-Fa-f]{1,16})((?:[ \t]*;[ \t]*[!#$%&'*+\-.^_`|~0-9A-Za-z]+"
    rb"(?:[ \t]*=[ \t]*(?:[!#$%&'*+\-.^_`|~0-9A-Za-z]+|\"(?:[\t \x21\x23-\x5b\x5d-\x7e]"
    rb"|\\[\t \x21-\x7e])*\"))?)*)")


#: A keep-alive client names the same host in every request: parse it once.
parse_authority = functools.lru_cache(maxsize=1024)(_parse_authority)


class BadRequest(Exception):
    """The client's bytes cannot be a valid request: answer ``status`` and close."""

    def __init__(self, reason: str, status: int = 400) -> None:
        super().__init__(reason)
        self.reason = reason
        self.status = status


@attrs.frozen
class RequestHead:
    """A request line and its header fields, names and values as sent (values trimmed)."""

    method: bytes
    target: bytes
    version: bytes  # b"1.0" or b"1.1"
    fields: tuple[tuple[bytes, bytes], ...]
    #: The authority the request is for: absolute-form target, else Host.
    host: str | None
    port: int | None
    #: The raw Host header value (None if absent).
    host_field: bytes | None
    #: The path (and query) part of the target: the target minus scheme://authority.
    path: bytes
    content_length: int | None
    chunked: bool
    #: The ``Connection`` field's tokens, lower case (None: not read, see :meth:`tokens`).
    connection: frozenset[bytes] | None = None

    @property
    def has_body(self) -> bool:
        return self.chunked or bool(self.content_length)

    def values(self, name: bytes) -> list[bytes]:
        """Every value of the field ``name`` (lower case), in order."""
        return [v for n, v in self.fields if n.lower() == name]

    def tokens(self, name: bytes) -> set[bytes]:
        """The comma-separated tokens of a field, lower case (``Connection``...)."""
        return {t.strip().lower() for v in self.values(name) for t in v.split(b",")
                if t.strip()}

    @property
    def connection_tokens(self) -> frozenset[bytes]:
        """The ``Connection`` tokens, lower case: read by the reader, else now."""
        if self.connection is not None:
            return self.connection
        return frozenset(self.tokens(b"connection"))

    @property
    def keep_alive(self) -> bool:
        connection = self.connection_tokens
        if self.version == b"1.0":
            # HTTP/1.0 persists only when asked to (RFC 9112, appendix C.2.2), and the
            # response then says so (see gatekeep.http.server).
            return b"keep-alive" in connection and b"close" not in connection
        return b"close" not in connection


def _split_target(target: bytes, method: bytes) -> tuple[bytes | None, bytes]:
    """(authority or None, path) of the request-target, or BadRequest."""
    if target.startswith(b"/"):
        return None, target
    if method == b"CONNECT":
        return target, b""  # authority-form: the proxy answers 405
    if target == b"*":
        if method != b"OPTIONS":
            raise BadRequest("asterisk-form is only for OPTIONS")
        return None, target
    lower = target[:8].lower()
    for scheme in (b"http://", b"https://"):
        if lower.startswith(scheme):
            rest = target[len(scheme):]
            end = len(rest)
            for stop in (b"/", b"?", b"#"):
                found = rest.find(stop)
                if found != -1:
                    end = min(end, found)
            if end == 0:
                raise BadRequest("absolute-form target without a host")
            return rest[:end], rest[end:] or b"/"
    raise BadRequest("request-target in no form a reverse proxy accepts")


def has_bare_cr_or_lf(head: bytes) -> bool:
    """
    Whether ``head`` has a CR or an LF outside a CR LF pair (``_BARE_LF`` or ``_BARE_CR``
    would match): each CR LF holds one CR and one LF, so any other is bare. Three counts
    in C instead of two regex scans with look-arounds.
    """
    pairs = head.count(b"\r\n")
    return head.count(b"\n") != pairs or head.count(b"\r") != pairs


def _connection_tokens(fields: list[tuple[bytes, bytes]]) -> frozenset[bytes]:
    return frozenset(t.strip().lower() for n, v in fields if n.lower() == b"connection"
                     for t in v.split(b",") if t.strip())


def parse_head(head: bytes) -> RequestHead:
    """
    The head (without its final empty line's CR LF) as a :class:`RequestHead`.

    One pass for the common head: no control characters and CR LF line ends (two scans
    of the whole head in C), valid field names (:func:`~gatekeep.http.fields.field_name`),
    at most one Host and Content-Length, no Transfer-Encoding. Anything else, and every
    head that is refused, goes to :func:`parse_head_general`, so the result (or the
    refusal and its reason) is always the general reader's.
    """
    # What is left after deleting the plain bytes is one CR LF per line end, nothing else:
    # no control character, no bare CR or LF (two passes in C over the head).
    if len(head.translate(None, _PLAIN)) != 2 * head.count(b"\r\n"):
        return parse_head_general(head)
    lines = head.split(b"\r\n")
    line = _REQUEST_LINE.fullmatch(lines[0])
    if line is None or len(lines) > MAX_FIELDS + 1:
        return parse_head_general(head)
    method, target, version = line.groups()
    fields: list[tuple[bytes, bytes]] = []
    host_field = length = None
    connection: list[bytes] | None = None
    names = NAMES
    for raw in lines[1:]:
        name, colon, value = raw.partition(b":")
        lower = names.get(name) or field_name(name)
        if lower is None or not colon:
            return parse_head_general(head)
        value = value.strip(b" \t")
        fields.append((name, value))
        if lower in _SPECIAL:
            if lower == b"host":
                if host_field is not None:
                    return parse_head_general(head)
                host_field = value
            elif lower == b"content-length":
                if length is not None or not value.isdigit() or len(value) > 18:
                    return parse_head_general(head)
                length = value
            elif lower == b"connection":
                if connection is None:
                    connection = []
                connection.append(value)
            else:  # transfer-encoding
                return parse_head_general(head)
    if host_field is None and version == b"1.1":
        return parse_head_general(head)
    authority, path = _split_target(target, method)
    host = port = None
    if host_field is not None and host_field != b"":
        host, port = parse_authority(host_field)
        if host is None:
            return parse_head_general(head)
    if authority is not None:
        host, port = parse_authority(authority)
        if host is None:
            return parse_head_general(head)
    tokens = _NO_TOKENS if connection is None else frozenset(
        t.strip().lower() for v in connection for t in v.split(b",") if t.strip())
    return RequestHead(method, target, version, tuple(fields), host, port, host_field, path,
                       None if length is None else int(length), False, tokens)


_SPECIAL: Final = frozenset({b"host", b"content-length", b"connection", b"transfer-encoding"})
_NO_TOKENS: Final[frozenset[bytes]] = frozenset()


def parse_head_general(head: bytes) -> RequestHead:
    """
    The head (without its final empty line's CR LF) as a :class:`RequestHead`, checked
    line by line: the reference :func:`parse_head` equals, and the one that names what
    is wrong with a bad head.
    """
    if has_bare_cr_or_lf(head):
        raise BadRequest("bare CR or LF in the request head")
    lines = head.split(b"\r\n")
    line = _REQUEST_LINE.fullmatch(lines[0])
    if line is None:
        raise BadRequest("malformed request line")
    method, target, version = line.groups()
    fields: list[tuple[bytes, bytes]] = []
    for raw in lines[1:]:
        if raw[:1] in (b" ", b"\t"):
            raise BadRequest("obsolete line folding")
        field = _FIELD.fullmatch(raw)
        if field is None:
            raise BadRequest("malformed header field (name, colon or value)")
        fields.append((field.group(1), field.group(2)))
    if len(fields) > MAX_FIELDS:
        raise BadRequest(f"more than {MAX_FIELDS} header fields", 431)
    authority, path = _split_target(target, method)
    hosts = [v for n, v in fields if n.lower() == b"host"]
    if len(hosts) > 1:
        raise BadRequest("more than one Host header")
    if not hosts and version == b"1.1":
        raise BadRequest("HTTP/1.1 request without Host")
    host_field = hosts[0] if hosts else None
    host = port = None
    if host_field is not None and host_field != b"":
        host, port = parse_authority(host_field)
        if host is None:
            raise BadRequest("invalid Host header")
    if authority is not None:
        host, port = parse_authority(authority)
        if host is None:
            raise BadRequest("invalid authority in the request-target")
    lengths = [v for n, v in fields if n.lower() == b"content-length"]
    codings = [v for n, v in fields if n.lower() == b"transfer-encoding"]
    content_length = None
    if len(lengths) > 1:
        raise BadRequest("more than one Content-Length")
    if lengths:
        if not lengths[0].isdigit() or len(lengths[0]) > 18:
            raise BadRequest("invalid Content-Length")
        content_length = int(lengths[0])
    if codings:
        if lengths:
            raise BadRequest("both Content-Length and Transfer-Encoding")
        if version == b"1.0":
            raise BadRequest("Transfer-Encoding in an HTTP/1.0 request")
        if len(codings) > 1 or codings[0].lower() != b"chunked":
            raise BadRequest("transfer codings other than a single 'chunked'", 501)
    return RequestHead(method, target, version, tuple(fields), host, port, host_field, path,
                       content_length, bool(codings), _connection_tokens(fields))


class RequestReader:
    """Reads requests one after another from the bytes fed to it."""

    def __init__(self, max_head: int = MAX_HEAD) -> None:
        self.max_head = max_head
        self._buffer = bytearray()
        self._state = "head"
        self._remaining = 0  # body bytes left (length body or current chunk)
        self._chunk_state = "size"
        self.received_body = 0

    @property
    def buffered(self) -> int:
        return len(self._buffer)

    @property
    def between_requests(self) -> bool:
        """No byte of a next request has arrived (a close now loses nothing)."""
        return self._state in ("head", "done") and not self._buffer

    def feed(self, data: bytes) -> None:
        self._buffer += data

    def take_rest(self) -> bytes:
        """Every byte not yet read (after an upgrade: the new protocol's)."""
        rest, self._buffer = bytes(self._buffer), bytearray()
        self._state = "upgraded"
        return rest

    def start_next(self) -> None:
        """The current exchange is over: read the next request."""
        assert self._state == "done"
        self._state = "head"

    def take_end(self) -> bool:
        """
        Right after a :class:`RequestHead`: True if the request has no body, and then
        its :data:`END` is taken now (the reader waits for :meth:`start_next`).
        """
        if self._state == "end":
            self._state = "done"
            return True
        return False

    def next_event(self) -> RequestHead | bytes | Marker:
        state = self._state
        if state == "head":
            return self._head()
        if state == "length":
            return self._length_body()
        if state == "chunked":
            return self._chunked_body()
        if state == "end":
            self._state = "done"
            return END
        return PAUSED

    def _head(self) -> RequestHead | Marker:
        buffer = self._buffer
        # RFC 9112 2.2: one empty line before a request line may be ignored.
        if buffer.startswith(b"\r\n"):
            del buffer[:2]
        end = buffer.find(b"\r\n\r\n", 0, self.max_head + 4)
        if end == -1:
            if len(buffer) >= self.max_head:
                raise BadRequest(f"request head longer than {self.max_head} bytes", 431)
            complete = buffer[:-1] if buffer.endswith(b"\r") else buffer
            if _BARE_LF.search(buffer) or _BARE_CR.search(complete):
                raise BadRequest("bare CR or LF in the request head")
            return NEED_DATA
        head = parse_head(bytes(buffer[:end]))
        del buffer[:end + 4]
        self.received_body = 0
        if head.chunked:
            self._state, self._chunk_state = "chunked", "size"
        elif head.content_length:
            self._state, self._remaining = "length", head.content_length
        else:
            self._state = "end"
        return head

    def _take(self, limit: int) -> bytes:
        buffer = self._buffer
        if len(buffer) <= limit:
            data = bytes(buffer)
            buffer.clear()
        else:
            data = bytes(buffer[:limit])
            del buffer[:limit]
        self.received_body += len(data)
        return data

    def _length_body(self) -> bytes | Marker:
        if not self._buffer:
            return NEED_DATA
        data = self._take(self._remaining)
        self._remaining -= len(data)
        if self._remaining == 0:
            self._state = "end"
        return data

    def _line(self, limit: int) -> bytes | None:
        buffer = self._buffer
        end = buffer.find(b"\r\n", 0, limit + 2)
        if end == -1:
            if len(buffer) > limit or b"\n" in buffer:
                raise BadRequest("malformed chunked encoding (line)")
            return None
        line = bytes(buffer[:end])
        del buffer[:end + 2]
        return line

    def _chunked_body(self) -> bytes | Marker:
        while True:
            if self._chunk_state == "size":
                line = self._line(1024)
                if line is None:
                    return NEED_DATA
                size = _CHUNK_SIZE.fullmatch(line)
                if size is None:
                    raise BadRequest("invalid chunk size line")
                self._remaining = int(size.group(1), 16)
                self._chunk_state = "data" if self._remaining else "trailer"
            elif self._chunk_state == "data":
                if not self._buffer:
                    return NEED_DATA
                data = self._take(self._remaining)
                self._remaining -= len(data)
                if self._remaining == 0:
                    self._chunk_state = "data-end"
                return data
            elif self._chunk_state == "data-end":
                if len(self._buffer) < 2:
                    if bytes(self._buffer[:1]) not in (b"", b"\r"):
                        raise BadRequest("chunk data longer than its size")
                    return NEED_DATA
                if self._buffer[:2] != b"\r\n":
                    raise BadRequest("chunk data longer than its size")
                del self._buffer[:2]
                self._chunk_state = "size"
            else:  # trailer fields: checked, then dropped
                line = self._line(self.max_head)
                if line is None:
                    return NEED_DATA
                if line == b"":
                    self._state = "done"
                    return END
                if line[:1] in (b" ", b"\t") or _FIELD.fullmatch(line) is None:
                    raise BadRequest("malformed trailer field")
