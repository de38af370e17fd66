"""
PROXY v2 TLVs: the registered types, their encoding and their validation.

Values are kept raw in :class:`~gatekeep.proxyproto.model.TLV`; this module checks
the ones the spec gives a shape (CRC32C is 4 bytes, UNIQUE_ID at most 128, SSL a
flag byte, a verify word and sub-TLVs, strings are UTF-8) and decodes SSL.
"""

from __future__ import annotations

from typing import Final

import attrs

from gatekeep.proxyproto.model import TLV

__all__ = [
    "ALPN",
    "AUTHORITY",
    "CLIENT_CERT_CONN",
    "CLIENT_CERT_SESS",
    "CLIENT_SSL",
    "CRC32C",
    "MAX_UNIQUE_ID",
    "NETNS",
    "NOOP",
    "SSL",
    "SSL_CIPHER",
    "SSL_CN",
    "SSL_KEY_ALG",
    "SSL_SIG_ALG",
    "SSL_VERSION",
    "UNIQUE_ID",
    "SSLInfo",
    "TLVError",
    "check_tlv",
    "decode_ssl",
    "encode_tlvs",
    "split_tlvs",
]

ALPN: Final = 0x01
AUTHORITY: Final = 0x02
CRC32C: Final = 0x03
NOOP: Final = 0x04
UNIQUE_ID: Final = 0x05
SSL: Final = 0x20
SSL_VERSION: Final = 0x21
SSL_CN: Final = 0x22
SSL_CIPHER: Final = 0x23
SSL_SIG_ALG: Final = 0x24
SSL_KEY_ALG: Final = 0x25
NETNS: Final = 0x30

#: Bits of the SSL TLV's ``client`` byte.
CLIENT_SSL: Final = 0x01
CLIENT_CERT_CONN: Final = 0x02
CLIENT_CERT_SESS: Final = 0x04

MAX_UNIQUE_ID: Final = 128

_NAMES: Final = {
    ALPN: "ALPN", AUTHORITY: "AUTHORITY", CRC32C: "CRC32C", NOOP: "NOOP",
    UNIQUE_ID: "UNIQUE_ID", SSL: "SSL", NETNS: "NETNS",
}


class TLVError(ValueError):
    """A TLV that breaks the spec; the message says which and how."""


def split_tlvs(data: bytes, what: str = "TLV") -> tuple[TLV, ...]:
    """Split a run of TLVs that must fill ``data`` exactly."""
    entries = []
    offset = 0
    while offset < len(data):
        if len(data) - offset < 3:
            raise TLVError(f"{len(data) - offset} stray bytes after the last {what}")
        kind = data[offset]
        size = int.from_bytes(data[offset + 1:offset + 3], "big")
        end = offset + 3 + size
        if end > len(data):
            raise TLVError(f"{what} 0x{kind:02x} of {size} bytes overruns the header")
        entries.append(TLV(kind, data[offset + 3:end]))
        offset = end
    return tuple(entries)


def encode_tlvs(entries: tuple[TLV, ...] | list[TLV]) -> bytes:
    out = bytearray()
    for entry in entries:
        if not 0 <= entry.type <= 0xFF or len(entry.value) > 0xFFFF:
            raise ValueError(f"TLV 0x{entry.type:02x} cannot be encoded")
        out += bytes([entry.type]) + len(entry.value).to_bytes(2, "big") + entry.value
    return bytes(out)


def _text(value: bytes, what: str) -> str:
    try:
        return value.decode("utf-8")
    except UnicodeDecodeError:
        raise TLVError(f"{what} is not UTF-8") from None


@attrs.frozen
class SSLInfo:
    """
    The SSL TLV: how the client reached the proxy.

    ``client`` holds the CLIENT_* bits; ``verify`` is 0 when the client presented a
    certificate that was verified. Sub-TLVs the spec names are decoded as text;
    others are kept in ``other``.
    """

    client: int
    verify: int
    version: str | None = None
    cn: str | None = None
    cipher: str | None = None
    sig_alg: str | None = None
    key_alg: str | None = None
    other: tuple[TLV, ...] = ()

    def encode(self) -> bytes:
        subs = [TLV(kind, text.encode("utf-8")) for kind, text in (
            (SSL_VERSION, self.version), (SSL_CN, self.cn), (SSL_CIPHER, self.cipher),
            (SSL_SIG_ALG, self.sig_alg), (SSL_KEY_ALG, self.key_alg)) if text is not None]
        return (bytes([self.client]) + self.verify.to_bytes(4, "big")
                + encode_tlvs([*subs, *self.other]))


_SSL_FIELDS: Final = {SSL_VERSION: "version", SSL_CN: "cn", SSL_CIPHER: "cipher",
                      SSL_SIG_ALG: "sig_alg", SSL_KEY_ALG: "key_alg"}


def decode_ssl(value: bytes) -> SSLInfo:
    if len(value) < 5:
        raise TLVError(f"SSL TLV of {len(value)} bytes (at least 5: client flags and verify)")
    texts: dict[str, str] = {}
    other = []
    for sub in split_tlvs(value[5:], "SSL sub-TLV"):
        name = _SSL_FIELDS.get(sub.type)
        if name is None:
            other.append(sub)
        elif name in texts:
            raise TLVError(f"SSL sub-TLV 0x{sub.type:02x} appears twice")
        else:
            texts[name] = _text(sub.value, f"SSL sub-TLV 0x{sub.type:02x}")
    return SSLInfo(value[0], int.from_bytes(value[1:5], "big"), other=tuple(other), **texts)


def check_tlv(entry: TLV) -> None:
    """Raise :class:`TLVError` if a registered TLV breaks its shape."""
    kind, value = entry.type, entry.value
    name = _NAMES.get(kind, f"0x{kind:02x}")
    if kind == CRC32C and len(value) != 4:
        raise TLVError(f"CRC32C TLV of {len(value)} bytes (it has 4)")
    if kind == UNIQUE_ID and len(value) > MAX_UNIQUE_ID:
        raise TLVError(f"UNIQUE_ID of {len(value)} bytes (at most {MAX_UNIQUE_ID})")
    if kind in (ALPN, AUTHORITY, UNIQUE_ID) and not value:
        raise TLVError(f"empty {name} TLV")
    if kind in (AUTHORITY, NETNS):
        _text(value, f"{name} TLV")
    if kind == SSL:
        decode_ssl(value)
