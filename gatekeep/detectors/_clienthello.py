"""
A TLS ClientHello parser for the first bytes of a connection.

Kept apart from the detector glue (like caddy-l4's ``parsehello.go``) so that it can be
tested and fuzzed on its own. :func:`parse_client_hello` is a pure function of the
whole prefix received so far and never raises: every input is either still
incomplete, rejected with a short reason, too large to ever fit, or a ClientHello.

It reassembles the handshake message across any number of TLS records (RFC 8446 5.1
lets a client fragment it; post-quantum hellos of ~2 KB make that real), and it is
strict about framing: a length that disagrees with its container, a record that is
not a handshake record, or bytes after the ClientHello in its last record all reject
the prefix instead of guessing. Unknown extensions are skipped, never interpreted.
"""

from __future__ import annotations

import struct

import attrs

__all__ = [
    "EXT_ALPN",
    "EXT_ECH",
    "EXT_SERVER_NAME",
    "EXT_SUPPORTED_VERSIONS",
    "INCOMPLETE",
    "MAX_RECORD",
    "ClientHello",
    "Incomplete",
    "Oversized",
    "Rejected",
    "is_grease",
    "parse_client_hello",
]

CONTENT_HANDSHAKE = 22
HANDSHAKE_CLIENT_HELLO = 1
RECORD_HEADER = 5
#: RFC 8446 5.1: a TLSPlaintext fragment is at most 2^14 bytes; no slack is allowed.
MAX_RECORD = 1 << 14
EXT_SERVER_NAME = 0
EXT_ALPN = 16
EXT_SUPPORTED_VERSIONS = 43
EXT_ECH = 0xFE0D
NAME_TYPE_HOST = 0

# Bounds of a ClientHello body from its vectors' declared limits (RFC 8446 4.1.2):
# version 2 + random 32 + session id 1..33 + suites 2+2..2+65534 + compression
# 1+1..1+255 + extensions 0 or 2+0..2+65535. Outside them the length is a lie.
_MIN_BODY = 2 + 32 + 1 + 4 + 2
_MAX_BODY = 2 + 32 + 33 + 65536 + 256 + 65537


def is_grease(value: int) -> bool:
    """RFC 8701 GREASE values (0x0a0a, 0x1a1a, ...): sent to be ignored."""
    return (value & 0x0F0F) == 0x0A0A and (value >> 8) == (value & 0xFF)


@attrs.frozen
class Incomplete:
    """Everything so far is consistent, but the ClientHello has not fully arrived."""


INCOMPLETE = Incomplete()


@attrs.frozen
class Rejected:
    """The prefix is not (or no longer) a well-formed start of a ClientHello."""

    reason: str


@attrs.frozen
class Oversized:
    """
    A ClientHello whose framing cannot fit in the bytes the caller will ever look at.

    It is TLS, but it cannot be read, so it is reported rather than waited for.
    """

    handshake_length: int


@attrs.frozen
class ClientHello:
    """
    What a complete ClientHello offered, with names still as raw bytes.

    ``supported_versions`` is None when the extension is absent (a pre-TLS 1.3 client)
    and otherwise has GREASE values removed. ``length`` is how many bytes of the prefix
    the records carrying the hello took; ``records`` how many records that was.
    """

    legacy_version: int
    session_id: bytes
    cipher_suites: tuple[int, ...]
    compression_methods: bytes
    extensions: tuple[int, ...]
    server_name: bytes | None
    alpn: tuple[bytes, ...]
    supported_versions: tuple[int, ...] | None
    ech: bool
    records: int
    length: int


Result = ClientHello | Incomplete | Rejected | Oversized


def parse_client_hello(data: bytes, limit: int) -> Result:
    """
    Find and parse the ClientHello at the start of ``data``.

    ``limit`` is the most bytes the caller will ever offer: once the declared lengths
    show the records carrying the hello must end past it, the answer is
    :class:`Oversized` rather than :class:`Incomplete`, so no caller waits for bytes
    it will never read. Checks run in stream order, so once a prefix is decided every
    longer prefix gets the same answer. The chain asks again on every read, so until
    the hello is complete only record and handshake headers are looked at and nothing
    is copied.
    """
    size = len(data)
    if size == 0:
        return INCOMPLETE
    view = memoryview(data)
    fragments: list[tuple[int, int]] = []
    got = 0  # handshake bytes carried by the records seen so far (whole records)
    need = -1  # 4 + declared body length, once the handshake header is known
    header = 0  # the handshake header's bytes, accumulated big-endian
    pos = 0
    while True:
        if pos >= size:
            return INCOMPLETE
        if data[pos] != CONTENT_HANDSHAKE:
            if fragments:
                return Rejected("non-handshake record before the ClientHello ended")
            return Rejected("not a TLS handshake record")
        if pos + 1 < size and data[pos + 1] != 3:
            return Rejected("record version is not 3.x")
        if pos + 2 < size and data[pos + 2] > 4:
            return Rejected("record version is not 3.0-3.4")
        if pos + RECORD_HEADER > size:
            return INCOMPLETE
        length = (data[pos + 3] << 8) | data[pos + 4]
        if length == 0 or length > MAX_RECORD:
            return Rejected(f"record length {length} outside 1..{MAX_RECORD}")
        start = pos + RECORD_HEADER
        end = start + length
        fragments.append((start, end))
        if need >= 0:
            # What the record header implies is judged before any byte it carries.
            verdict = _check_size(got + length, need, end, limit)
            if verdict is not None:
                return verdict
        if got < 5:
            # The handshake header and legacy_version's first byte, checked as soon as
            # they arrive; they may be split over several tiny records.
            index = got
            cursor = start
            stop = min(end, size)
            while index < 5 and cursor < stop:
                byte = data[cursor]
                if index == 0 and byte != HANDSHAKE_CLIENT_HELLO:
                    return Rejected(f"handshake type {byte} is not ClientHello")
                if index == 4 and byte < 3:
                    # Higher versions are tolerated, as RFC 8446 D.1 asks of servers.
                    return Rejected("malformed ClientHello: legacy_version below 3.0")
                header = (header << 8) | byte
                index += 1
                cursor += 1
                if index == 4:
                    body = header & 0xFFFFFF
                    if not _MIN_BODY <= body <= _MAX_BODY:
                        return Rejected(f"malformed ClientHello: handshake length {body}")
                    need = 4 + body
                    # Decide on the lengths now, before looking at the next byte, so
                    # that a longer prefix never changes the answer.
                    verdict = _check_size(got + length, need, end, limit)
                    if verdict is not None:
                        return verdict
        got += length
        if end > size:
            return INCOMPLETE
        if got == need:
            break
        pos = end
    if len(fragments) == 1:
        message = view[fragments[0][0] : fragments[0][1]]
    else:
        message = memoryview(b"".join(view[a:b] for a, b in fragments))
    return _parse_message(message, len(fragments), end)


def _check_size(got: int, need: int, end: int, limit: int) -> Rejected | Oversized | None:
    """Judge the lengths once the records up to ``end`` declare ``got`` handshake bytes."""
    if got > need:
        return Rejected("data after the ClientHello in its last record")
    remaining = need - got
    records_left = -(-remaining // MAX_RECORD)
    if end + remaining + RECORD_HEADER * records_left > limit:
        return Oversized(need)
    return None


def _u16(m: memoryview, at: int) -> int:
    return (m[at] << 8) | m[at + 1]


# An extension's type and length, read in one call (a hello has a dozen or more).
_EXTENSION_HEADER = struct.Struct(">HH")


def _parse_message(m: memoryview, records: int, length: int) -> Result:
    """Parse a complete handshake message; only its declared lengths are trusted."""
    end = len(m)
    p = 4
    legacy_version = _u16(m, p)  # its first byte was checked while gathering
    p += 2 + 32
    sid_len = m[p]
    p += 1
    if sid_len > 32 or p + sid_len > end:
        return Rejected("malformed ClientHello: session id length")
    session_id = bytes(m[p : p + sid_len])
    p += sid_len
    if p + 2 > end:
        return Rejected("malformed ClientHello: cipher suites length")
    cs_len = _u16(m, p)
    p += 2
    if cs_len < 2 or cs_len % 2 or p + cs_len > end:
        return Rejected("malformed ClientHello: cipher suites length")
    suites: tuple[int, ...] = struct.unpack_from(f">{cs_len // 2}H", m, p)
    p += cs_len
    if p >= end:
        return Rejected("malformed ClientHello: compression methods length")
    comp_len = m[p]
    p += 1
    if comp_len < 1 or p + comp_len > end:
        return Rejected("malformed ClientHello: compression methods length")
    compression = bytes(m[p : p + comp_len])
    p += comp_len
    hello = _Extensions()
    if p < end:
        if p + 2 > end or p + 2 + _u16(m, p) != end:
            return Rejected("malformed ClientHello: extensions length")
        problem = hello.parse(m, p + 2, end)
        if problem:
            return Rejected(f"malformed ClientHello: {problem}")
    return ClientHello(
        legacy_version=legacy_version,
        session_id=session_id,
        cipher_suites=suites,
        compression_methods=compression,
        extensions=tuple(hello.types),
        server_name=hello.server_name,
        alpn=tuple(hello.alpn),
        supported_versions=hello.versions,
        ech=EXT_ECH in hello.types,
        records=records,
        length=length,
    )


class _Extensions:
    """The extension block's parse state; lives only for one call."""

    __slots__ = ("alpn", "server_name", "types", "versions")

    def __init__(self) -> None:
        self.types: list[int] = []
        self.server_name: bytes | None = None
        self.alpn: list[bytes] = []
        self.versions: tuple[int, ...] | None = None

    def parse(self, m: memoryview, p: int, end: int) -> str:
        """Walk the extensions in ``m[p:end]``; return what is wrong, or ``""``."""
        while p < end:
            if p + 4 > end:
                return "extension header"
            ext_type, ext_len = _EXTENSION_HEADER.unpack_from(m, p)
            p += 4
            if p + ext_len > end:
                return "extension length"
            if ext_type in self.types:
                return f"duplicate extension {ext_type}"
            self.types.append(ext_type)
            problem = ""
            if ext_type == EXT_SERVER_NAME:
                problem = self._server_name(m, p, p + ext_len)
            elif ext_type == EXT_ALPN:
                problem = self._alpn(m, p, p + ext_len)
            elif ext_type == EXT_SUPPORTED_VERSIONS:
                problem = self._versions(m, p, p + ext_len)
            if problem:
                return problem
            p += ext_len
        return ""

    def _server_name(self, m: memoryview, p: int, end: int) -> str:
        # RFC 6066 3: ServerNameList server_name_list<1..2^16-1>, one name per type.
        if p + 2 > end or p + 2 + _u16(m, p) != end or end - p < 3:
            return "server_name list length"
        p += 2
        while p < end:
            if p + 3 > end:
                return "server_name entry"
            name_type = m[p]
            name_len = _u16(m, p + 1)
            p += 3
            if name_len == 0 or p + name_len > end:
                return "server_name entry length"
            if name_type == NAME_TYPE_HOST:
                if self.server_name is not None:
                    return "server_name has two host names"
                self.server_name = bytes(m[p : p + name_len])
            p += name_len
        return ""

    def _alpn(self, m: memoryview, p: int, end: int) -> str:
        # RFC 7301 3.1: ProtocolName protocol_name_list<2..2^16-1>, names <1..2^8-1>.
        if p + 2 > end or p + 2 + _u16(m, p) != end or end - p < 4:
            return "alpn list length"
        p += 2
        while p < end:
            name_len = m[p]
            p += 1
            if name_len == 0 or p + name_len > end:
                return "alpn protocol length"
            self.alpn.append(bytes(m[p : p + name_len]))
            p += name_len
        return ""

    def _versions(self, m: memoryview, p: int, end: int) -> str:
        # RFC 8446 4.2.1: ProtocolVersion versions<2..254> in a ClientHello.
        if p >= end or p + 1 + m[p] != end or m[p] < 2 or m[p] % 2:
            return "supported_versions length"
        self.versions = tuple(
            v for v in (_u16(m, i) for i in range(p + 1, end, 2)) if not is_grease(v)
        )
        return ""
