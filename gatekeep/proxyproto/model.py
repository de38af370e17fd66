"""
What a PROXY header says, as plain frozen data shared by the parser and the builder.

A header is the same value whichever version carries it: version 1 can express
TCP over IPv4/IPv6 and ``UNKNOWN`` (here :attr:`Family.UNSPEC`); version 2 adds
the LOCAL command, UDP and UNIX families, and TLVs.
"""

from __future__ import annotations

import enum
import ipaddress

import attrs

__all__ = [
    "TLV",
    "Address",
    "Command",
    "Family",
    "Incomplete",
    "InetAddress",
    "Invalid",
    "NotProxy",
    "ParseResult",
    "ProxyHeader",
    "UnixAddress",
]


class Command(enum.IntEnum):
    """v2's low nibble of byte 13; version 1 headers are always PROXY."""

    LOCAL = 0x0  # the proxy's own connection (a health check): keep the real endpoints
    PROXY = 0x1  # relayed on behalf of the client the addresses describe


class Family(enum.IntEnum):
    """v2's byte 14: address family (high nibble) and transport (low nibble)."""

    UNSPEC = 0x00
    TCP4 = 0x11
    UDP4 = 0x12
    TCP6 = 0x21
    UDP6 = 0x22
    UNIX_STREAM = 0x31
    UNIX_DGRAM = 0x32

    @property
    def address_length(self) -> int:
        """Bytes of the v2 address block (both addresses and, for IP, both ports)."""
        return {0x0: 0, 0x1: 12, 0x2: 36, 0x3: 216}[self.value >> 4]

    @property
    def is_inet(self) -> bool:
        return (self.value >> 4) in (0x1, 0x2)

    @property
    def is_unix(self) -> bool:
        return (self.value >> 4) == 0x3


@attrs.frozen
class InetAddress:
    """An IPv4 or IPv6 address and a port."""

    host: ipaddress.IPv4Address | ipaddress.IPv6Address
    port: int

    def __str__(self) -> str:
        if self.host.version == 6:
            return f"[{self.host}]:{self.port}"
        return f"{self.host}:{self.port}"


@attrs.frozen
class UnixAddress:
    """
    A UNIX socket path, as bytes (v2 carries 108 NUL-padded bytes).

    Trailing NULs are not part of the path; a leading NUL marks an abstract
    socket, and an empty path an unnamed one.
    """

    path: bytes

    def __str__(self) -> str:
        return "unix:" + self.path.decode("utf-8", "backslashreplace")


Address = InetAddress | UnixAddress


@attrs.frozen
class TLV:
    """One v2 type-length-value entry, kept raw; see :mod:`gatekeep.proxyproto.tlv`."""

    type: int
    value: bytes


@attrs.frozen
class ProxyHeader:
    """
    One parsed (or to-be-built) PROXY header.

    ``source``/``destination`` are None for LOCAL, UNSPEC and UNKNOWN headers, which
    tell the receiver to keep the connection's real endpoints. ``length`` is how
    many bytes the header took on the wire (0 for a header not parsed from bytes);
    it takes no part in comparisons.
    """

    version: int
    command: Command
    family: Family
    source: Address | None = None
    destination: Address | None = None
    tlvs: tuple[TLV, ...] = ()
    length: int = attrs.field(default=0, eq=False)

    def tlv(self, kind: int) -> bytes | None:
        """The value of the first TLV of type ``kind``, if any."""
        for entry in self.tlvs:
            if entry.type == kind:
                return entry.value
        return None

    @property
    def relayed(self) -> bool:
        """Whether the header carries a client address the receiver must use."""
        return self.command is Command.PROXY and self.source is not None


@attrs.frozen
class Incomplete:
    """Not decidable yet: a valid header so far, but more bytes are needed."""


@attrs.frozen
class NotProxy:
    """The bytes do not start with a PROXY signature (``PROXY`` or v2's 12 bytes)."""


@attrs.frozen
class Invalid:
    """A PROXY signature followed by something the spec says to refuse, and why."""

    reason: str


ParseResult = ProxyHeader | Incomplete | NotProxy | Invalid
