"""
PROXY protocol version 2: the binary header.

16 fixed bytes (signature, version and command, family and transport, length),
then the address block and TLVs. Every receiver rule of the spec is enforced:
version 2 only, known commands, families and transports, the length field always
used to skip (never assumed zero for LOCAL), an address block at least as long as
its family needs, TLVs that fit exactly, a CRC32C TLV verified. The whole header is
capped at :data:`MAX_V2_LENGTH` bytes, so a peer cannot make the receiver buffer
64 KiB by announcing it.
"""

from __future__ import annotations

import ipaddress
from typing import Final

from gatekeep.proxyproto.crc32c import crc32c
from gatekeep.proxyproto.model import (
    TLV,
    Address,
    Command,
    Family,
    Incomplete,
    InetAddress,
    Invalid,
    NotProxy,
    ParseResult,
    ProxyHeader,
    UnixAddress,
)
from gatekeep.proxyproto.tlv import CRC32C, TLVError, check_tlv, encode_tlvs, split_tlvs

__all__ = ["MAX_V2_LENGTH", "UNIX_PATH_LENGTH", "V2_SIGNATURE", "build_v2", "parse_v2"]

V2_SIGNATURE: Final = b"\r\n\r\n\x00\r\nQUIT\n"
#: The largest v2 header accepted, fixed part included. Real senders stay far below
#: (addresses, SNI, ALPN, a unique id, SSL details: a few hundred bytes).
MAX_V2_LENGTH: Final = 4096
UNIX_PATH_LENGTH: Final = 108
_FIXED: Final = 16


def _inet(block: bytes, size: int) -> tuple[InetAddress, InetAddress]:
    kind = ipaddress.IPv4Address if size == 4 else ipaddress.IPv6Address
    ports = block[2 * size:2 * size + 4]
    return (InetAddress(kind(block[:size]), int.from_bytes(ports[:2], "big")),
            InetAddress(kind(block[size:2 * size]), int.from_bytes(ports[2:], "big")))


def _unix(raw: bytes) -> UnixAddress:
    return UnixAddress(raw.rstrip(b"\x00"))


def _tlvs(header: bytes, start: int) -> tuple[TLV, ...] | Invalid:
    try:
        entries = split_tlvs(header[start:])
        for entry in entries:
            check_tlv(entry)
    except TLVError as error:
        return Invalid(str(error))
    checksums = [e for e in entries if e.type == CRC32C]
    if len(checksums) > 1:
        return Invalid("more than one CRC32C TLV")
    if checksums:
        # Zero the checksum's own value, then compare over the whole header.
        offset = start
        for entry in entries:
            if entry.type == CRC32C:
                break
            offset += 3 + len(entry.value)
        zeroed = header[:offset + 3] + bytes(4) + header[offset + 7:]
        if crc32c(zeroed) != int.from_bytes(checksums[0].value, "big"):
            return Invalid("CRC32C checksum mismatch")
    return entries


def parse_v2(data: bytes) -> ParseResult:
    """Parse a v2 header at the start of ``data`` (see :func:`parse_v1` for the answers)."""
    head = data[:len(V2_SIGNATURE)]
    if head != V2_SIGNATURE[:len(head)]:
        return NotProxy()
    if len(data) < 13:
        return Incomplete()
    version, command = data[12] >> 4, data[12] & 0x0F
    if version != 2:
        return Invalid(f"v2 signature with version {version} (only 2 exists)")
    if command not in (Command.LOCAL, Command.PROXY):
        return Invalid(f"unknown v2 command 0x{command:x}")
    if len(data) < 14:
        return Incomplete()
    family_byte = data[13]
    if family_byte >> 4 > 3 or family_byte & 0x0F > 2:
        return Invalid(f"unknown v2 address family/transport 0x{family_byte:02x}")
    if len(data) < _FIXED:
        return Incomplete()
    total = _FIXED + int.from_bytes(data[14:16], "big")
    if total > MAX_V2_LENGTH:
        return Invalid(f"v2 header of {total} bytes exceeds the limit of {MAX_V2_LENGTH}")
    try:
        family = Family(family_byte)
    except ValueError:
        family = None  # valid nibbles, but no combination the spec lists: as UNSPEC
    if command == Command.PROXY and family is not None and total - _FIXED < family.address_length:
        return Invalid(f"v2 {family.name} address block of {total - _FIXED} bytes "
                       f"(it needs {family.address_length})")
    if len(data) < total:
        return Incomplete()
    header = data[:total]
    if command == Command.LOCAL or family is None:
        # LOCAL: the block, family included, is to be ignored; so is a block whose
        # layout the spec does not define. Skipped by its announced length.
        return ProxyHeader(2, Command(command), Family.UNSPEC, length=total)
    source: Address | None = None
    destination: Address | None = None
    if family.is_inet:
        source, destination = _inet(header[_FIXED:], 4 if family.value >> 4 == 1 else 16)
    elif family.is_unix:
        block = header[_FIXED:_FIXED + 2 * UNIX_PATH_LENGTH]
        source, destination = _unix(block[:UNIX_PATH_LENGTH]), _unix(block[UNIX_PATH_LENGTH:])
    entries = _tlvs(header, _FIXED + family.address_length)
    if isinstance(entries, Invalid):
        return entries
    return ProxyHeader(2, Command.PROXY, family, source, destination, entries, length=total)


def _address_block(family: Family, source: Address | None, destination: Address | None) -> bytes:
    if family is Family.UNSPEC:
        return b""
    if family.is_unix:
        if not (isinstance(source, UnixAddress) and isinstance(destination, UnixAddress)):
            raise ValueError(f"{family.name} needs two UNIX addresses")
        for path in (source.path, destination.path):
            if len(path) > UNIX_PATH_LENGTH:
                raise ValueError(f"UNIX path of {len(path)} bytes (at most {UNIX_PATH_LENGTH})")
        return (source.path.ljust(UNIX_PATH_LENGTH, b"\x00")
                + destination.path.ljust(UNIX_PATH_LENGTH, b"\x00"))
    version = 4 if family.value >> 4 == 1 else 6
    if not (isinstance(source, InetAddress) and isinstance(destination, InetAddress)
            and source.host.version == version == destination.host.version):
        raise ValueError(f"{family.name} needs two IPv{version} addresses")
    for port in (source.port, destination.port):
        if not 0 <= port <= 0xFFFF:
            raise ValueError(f"port {port} out of range")
    return (source.host.packed + destination.host.packed
            + source.port.to_bytes(2, "big") + destination.port.to_bytes(2, "big"))


def build_v2(header: ProxyHeader) -> bytes:
    """
    The v2 bytes of ``header`` (its ``version`` is not looked at).

    A LOCAL header is sent with family UNSPEC and no addresses. If ``tlvs`` holds a
    CRC32C entry, its value is computed here, whatever it was. Raises ValueError if
    the addresses do not fit the family or the header would not fit the length field.
    """
    family = Family.UNSPEC if header.command is Command.LOCAL else header.family
    block = b"" if header.command is Command.LOCAL else _address_block(
        family, header.source, header.destination)
    tlvs = [TLV(e.type, bytes(4)) if e.type == CRC32C else e for e in header.tlvs]
    body = block + encode_tlvs(tlvs)
    if len(body) > 0xFFFF:
        raise ValueError(f"a v2 header cannot carry {len(body)} bytes after its fixed part")
    out = (V2_SIGNATURE + bytes([0x20 | header.command, family])
           + len(body).to_bytes(2, "big") + body)
    if any(e.type == CRC32C for e in tlvs):
        offset = _FIXED + len(block)
        for entry in tlvs:
            if entry.type == CRC32C:
                break
            offset += 3 + len(entry.value)
        out = out[:offset + 3] + crc32c(out).to_bytes(4, "big") + out[offset + 7:]
    return out
