"""
CRC32C (Castagnoli), the checksum of the PROXY v2 ``PP2_TYPE_CRC32C`` TLV.

The standard library only has the zlib CRC32 polynomial; headers are at most a
few KiB and only come from trusted proxies, so a table-driven loop is fast enough
and spares a compiled dependency.
"""

from __future__ import annotations

from typing import Final

__all__ = ["crc32c"]

_POLY: Final = 0x82F63B78  # the reflected Castagnoli polynomial (RFC 4960, appendix B)


def _table() -> tuple[int, ...]:
    rows = []
    for byte in range(256):
        crc = byte
        for _ in range(8):
            crc = (crc >> 1) ^ _POLY if crc & 1 else crc >> 1
        rows.append(crc)
    return tuple(rows)


_TABLE: Final = _table()


def crc32c(data: bytes, crc: int = 0) -> int:
    """The CRC32C of ``data``; pass a previous result as ``crc`` to continue it."""
    crc ^= 0xFFFFFFFF
    table = _TABLE
    for byte in data:
        crc = table[(crc ^ byte) & 0xFF] ^ (crc >> 8)
    return crc ^ 0xFFFFFFFF
