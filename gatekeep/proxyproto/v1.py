"""
PROXY protocol version 1: the human-readable line.

``PROXY TCP4 192.0.2.1 198.51.100.1 56324 443\\r\\n``. The parser is strict where
the spec is (one space between fields, canonical addresses, no leading zeros in
numbers, CRLF within 107 bytes, no bare CR or LF) and fails as early as the bytes
allow, so a bad sender is cut off before it has sent a whole line.

It is usable on its own: tor's ``HiddenServiceExportCircuitID haproxy`` writes
exactly these lines.
"""

from __future__ import annotations

import ipaddress
import re
from typing import Final

from gatekeep.proxyproto.model import (
    Address,
    Command,
    Family,
    Incomplete,
    InetAddress,
    Invalid,
    NotProxy,
    ParseResult,
    ProxyHeader,
)

__all__ = ["MAX_V1_LENGTH", "V1_SIGNATURE", "build_v1", "parse_v1"]

V1_SIGNATURE: Final = b"PROXY"
#: The longest line a receiver must accept, CRLF included ("PROXY UNKNOWN" + two
#: full IPv6 addresses and ports). Past it without a CRLF, the line is invalid.
MAX_V1_LENGTH: Final = 107

_PROTOCOLS: Final = {b"TCP4": Family.TCP4, b"TCP6": Family.TCP6, b"UNKNOWN": Family.UNSPEC}
_IPV4: Final = re.compile(rb"(?:0|[1-9][0-9]{0,2})(?:\.(?:0|[1-9][0-9]{0,2})){3}\Z")
_IPV6_CHARS: Final = frozenset(b"0123456789abcdefABCDEF:.")
_PORT: Final = re.compile(rb"(?:0|[1-9][0-9]{0,4})\Z")


def _address(text: bytes, family: Family) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    if family is Family.TCP4:
        if not _IPV4.match(text):
            return None
        try:
            return ipaddress.IPv4Address(text.decode("ascii"))
        except ValueError:  # an octet above 255
            return None
    if not text or not _IPV6_CHARS.issuperset(text):
        return None  # also keeps out "%scope" suffixes that ipaddress would accept
    try:
        return ipaddress.IPv6Address(text.decode("ascii"))
    except ValueError:
        return None


def _port(text: bytes) -> int | None:
    if not _PORT.match(text):
        return None
    value = int(text)
    return value if value <= 0xFFFF else None


def _early_problem(data: bytes) -> str | None:
    """Why ``data`` (no CRLF yet, within the limit) can already never be a valid line."""
    lf = data.find(b"\n")
    if lf >= 0:
        return "bare LF in the PROXY line (it must end with CRLF)"
    cr = data.find(b"\r")
    if 0 <= cr < len(data) - 1:
        return "bare CR in the PROXY line (it must end with CRLF)"
    fields = data.rstrip(b"\r").split(b" ")
    if len(fields) > 1 and fields[0] != V1_SIGNATURE:
        return "no space after PROXY"
    if len(fields) > 2 and fields[1] not in _PROTOCOLS:
        return f"unknown protocol {fields[1][:10]!r} (TCP4, TCP6 or UNKNOWN)"
    if len(fields) == 2 and not any(p.startswith(fields[1]) for p in _PROTOCOLS):
        return f"unknown protocol {fields[1][:10]!r} (TCP4, TCP6 or UNKNOWN)"
    if len(fields) > 2 and fields[1] != b"UNKNOWN":
        if any(not f for f in fields[2:-1]):
            return "fields must be separated by exactly one space"
        if len(fields) > 6:
            return "too many fields in the PROXY line"
        if any(not _IPV6_CHARS.issuperset(f) for f in fields[2:]):
            return "unexpected characters in an address or port"
    return None


def parse_v1(data: bytes) -> ParseResult:
    """
    Parse a v1 line at the start of ``data`` (any bytes may follow it).

    Answers :class:`NotProxy` unless ``data`` starts with ``PROXY`` (or a prefix of
    it), :class:`Incomplete` while the line could still become valid,
    :class:`Invalid` with the reason otherwise, or the header. The reason is the one
    the shortest invalid prefix gives, so it does not depend on how the bytes were
    split into reads.
    """
    result = _parse(data)
    if isinstance(result, Invalid):
        for size in range(len(V1_SIGNATURE) + 1, min(len(data), MAX_V1_LENGTH)):
            earlier = _parse(data[:size])
            if isinstance(earlier, Invalid):
                return earlier
    return result


def _parse(data: bytes) -> ParseResult:
    head = data[: len(V1_SIGNATURE)]
    if not V1_SIGNATURE.startswith(head):
        return NotProxy()
    if len(head) < len(V1_SIGNATURE):
        return Incomplete()
    end = data.find(b"\r\n", 0, MAX_V1_LENGTH)
    if end < 0:
        window = data[:MAX_V1_LENGTH]
        problem = _early_problem(window)
        if problem is not None:
            return Invalid(problem)
        if len(data) >= MAX_V1_LENGTH:
            return Invalid(f"no CRLF within the first {MAX_V1_LENGTH} bytes of a PROXY line")
        return Incomplete()
    line = data[:end]
    if b"\r" in line or b"\n" in line:
        which = "CR" if b"\r" in line else "LF"
        return Invalid(f"bare {which} in the PROXY line (it must end with CRLF)")
    problem = _early_problem(line)
    if problem is not None:
        return Invalid(problem)
    fields = line.split(b" ")
    if fields[0] != V1_SIGNATURE or len(fields) < 2 or fields[1] not in _PROTOCOLS:
        return Invalid("a PROXY line needs a protocol after 'PROXY ' (TCP4, TCP6 or UNKNOWN)")
    family = _PROTOCOLS[fields[1]]
    if family is Family.UNSPEC:
        # "UNKNOWN": whatever follows up to the CRLF is ignored; use the real endpoints.
        return ProxyHeader(1, Command.PROXY, Family.UNSPEC, length=end + 2)
    if len(fields) != 6:
        return Invalid(f"a {fields[1].decode()} line has 6 fields, not {len(fields)}")
    source, destination = _address(fields[2], family), _address(fields[3], family)
    if source is None or destination is None:
        which = "source" if source is None else "destination"
        return Invalid(f"bad {which} address for {fields[1].decode()}")
    sport, dport = _port(fields[4]), _port(fields[5])
    if sport is None or dport is None:
        which = "source" if sport is None else "destination"
        return Invalid(f"bad {which} port (decimal 0-65535, no leading zeros)")
    return ProxyHeader(
        1, Command.PROXY, family, InetAddress(source, sport), InetAddress(destination, dport),
        length=end + 2)


def build_v1(family: Family, source: Address | None, destination: Address | None) -> bytes:
    """
    The v1 line for TCP4/TCP6 addresses, or ``PROXY UNKNOWN`` for anything else.

    Raises ValueError if the addresses do not fit the family.
    """
    if family is Family.UNSPEC:
        return b"PROXY UNKNOWN\r\n"
    if family not in (Family.TCP4, Family.TCP6):
        raise ValueError(f"version 1 cannot carry {family.name}")
    version = 4 if family is Family.TCP4 else 6
    if not (isinstance(source, InetAddress) and isinstance(destination, InetAddress)
            and source.host.version == version == destination.host.version):
        raise ValueError(f"{family.name} needs two IPv{version} addresses")
    for port in (source.port, destination.port):
        if not 0 <= port <= 0xFFFF:
            raise ValueError(f"port {port} out of range")
    return (f"PROXY {family.name} {source.host} {destination.host} "
            f"{source.port} {destination.port}\r\n").encode("ascii")
