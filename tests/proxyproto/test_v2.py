"""PROXY v2 headers: families, LOCAL, length rules, TLVs and CRC32C."""

from __future__ import annotations

import ipaddress

import pytest

from gatekeep.proxyproto import (
    MAX_V2_LENGTH,
    TLV,
    Command,
    Family,
    Incomplete,
    InetAddress,
    Invalid,
    NotProxy,
    ProxyHeader,
    SSLInfo,
    UnixAddress,
    build,
    decode_ssl,
    parse,
)
from gatekeep.proxyproto import tlv as t
from gatekeep.proxyproto.crc32c import crc32c
from gatekeep.proxyproto.v2 import V2_SIGNATURE

SIG = V2_SIGNATURE
SRC4 = InetAddress(ipaddress.IPv4Address("203.0.113.7"), 4242)
DST4 = InetAddress(ipaddress.IPv4Address("192.0.2.1"), 443)
SRC6 = InetAddress(ipaddress.IPv6Address("2001:db8::7"), 4242)
DST6 = InetAddress(ipaddress.IPv6Address("2001:db8::1"), 443)
#: What HAProxy 2.6 sends as a health check on a send-proxy-v2 server (see the lab).
HAPROXY_LOCAL = bytes.fromhex("0d0a0d0a000d0a515549540a20000000")


def header(data: bytes) -> ProxyHeader:
    result = parse(data)
    assert isinstance(result, ProxyHeader), result
    return result


def test_crc32c_known_values() -> None:
    assert crc32c(b"123456789") == 0xE3069283
    assert crc32c(bytes(32)) == 0x8A9136AA  # RFC 3720, B.4
    assert crc32c(b"6789", crc32c(b"12345")) == 0xE3069283


def test_tcp4_by_hand() -> None:
    data = (SIG + b"\x21\x11\x00\x0c" + bytes([203, 0, 113, 7, 192, 0, 2, 1])
            + (4242).to_bytes(2, "big") + (443).to_bytes(2, "big"))
    result = header(data + b"payload")
    assert (result.version, result.command, result.family) == (2, Command.PROXY, Family.TCP4)
    assert (result.source, result.destination) == (SRC4, DST4)
    assert result.length == len(data)


def test_tcp6_and_unix_round_trip() -> None:
    for family, src, dst in ((Family.TCP6, SRC6, DST6),
                             (Family.UNIX_STREAM, UnixAddress(b"/run/c.sock"), UnixAddress(b"")),
                             (Family.UNIX_STREAM, UnixAddress(b"\x00abstract"),
                              UnixAddress(b"x" * 108))):
        original = ProxyHeader(2, Command.PROXY, family, src, dst)
        data = build(original)
        assert len(data) == 16 + family.address_length
        assert header(data) == original


def test_haproxy_health_check_is_local() -> None:
    result = header(HAPROXY_LOCAL)
    assert result.command is Command.LOCAL and not result.relayed
    assert build(ProxyHeader(2, Command.LOCAL, Family.UNSPEC)) == HAPROXY_LOCAL


def test_local_skips_its_block_whatever_it_holds() -> None:
    # Receivers must use the length field and never assume zero for LOCAL.
    block = bytes(12) + b"junk that is not TLVs"
    data = SIG + b"\x20\x11" + len(block).to_bytes(2, "big") + block
    result = header(data + b"after")
    assert result.command is Command.LOCAL and result.source is None
    assert result.length == len(data)


def test_unspec_proxy_keeps_real_endpoints_and_reads_tlvs() -> None:
    original = ProxyHeader(2, Command.PROXY, Family.UNSPEC, tlvs=(TLV(t.AUTHORITY, b"a.example"),))
    result = header(build(original))
    assert result == original and not result.relayed


def test_udp_families_parse_with_addresses() -> None:
    original = ProxyHeader(2, Command.PROXY, Family.UDP4, SRC4, DST4)
    assert header(build(original)) == original


def test_unlisted_nibble_combinations_fall_back_to_unspec() -> None:
    data = SIG + b"\x21\x10\x00\x05" + b"12345"
    result = header(data)
    assert result.family is Family.UNSPEC and result.source is None and result.tlvs == ()


@pytest.mark.parametrize("data, why", [
    (SIG + b"\x11\x11\x00\x00", "version 1"),
    (SIG + b"\x31\x11\x00\x00", "version 3"),
    (SIG + b"\x22\x11\x00\x00", "command 0x2"),
    (SIG + b"\x2f\x11\x00\x00", "command 0xf"),
    (SIG + b"\x21\x41\x00\x00", "family/transport 0x41"),
    (SIG + b"\x21\x13\x00\x00", "family/transport 0x13"),
    (SIG + b"\x21\x11\x00\x0b" + bytes(11), "needs 12"),
    (SIG + b"\x21\x21\x00\x0c" + bytes(12), "needs 36"),
    (SIG + b"\x21\x31\x00\x24" + bytes(36), "needs 216"),
    (SIG + b"\x21\x11\xff\xff", "exceeds the limit"),
    (SIG + b"\x21\x11\x00\x0e" + bytes(14), "stray bytes"),
    (SIG + b"\x21\x11\x00\x10" + bytes(12) + b"\x01\x00\x05x", "overruns"),
])
def test_malformed_headers_are_invalid(data: bytes, why: str) -> None:
    result = parse(data)
    assert isinstance(result, Invalid), result
    assert why in result.reason


def test_length_cap_refuses_at_once_without_buffering() -> None:
    announced = MAX_V2_LENGTH - 16 + 1
    result = parse(SIG + b"\x21\x11" + announced.to_bytes(2, "big"))
    assert isinstance(result, Invalid)
    at_cap = MAX_V2_LENGTH - 16
    assert parse(SIG + b"\x21\x11" + at_cap.to_bytes(2, "big") + bytes(12)) == Incomplete()


def test_every_prefix_is_incomplete() -> None:
    data = build(ProxyHeader(2, Command.PROXY, Family.TCP6, SRC6, DST6, (
        TLV(t.ALPN, b"h2"), TLV(t.AUTHORITY, b"example.org"), TLV(t.CRC32C, bytes(4)))))
    for size in range(len(data)):
        assert parse(data[:size]) == Incomplete(), size
    assert isinstance(parse(data), ProxyHeader)


def test_crc32c_verified() -> None:
    data = build(ProxyHeader(2, Command.PROXY, Family.TCP4, SRC4, DST4, (
        TLV(t.UNIQUE_ID, b"abc"), TLV(t.CRC32C, b"\xde\xad\xbe\xef"))))
    parsed = header(data)
    value = parsed.tlv(t.CRC32C)
    assert value is not None and value != b"\xde\xad\xbe\xef"  # computed by the builder
    for index in range(len(data)):
        corrupted = bytearray(data)
        corrupted[index] ^= 0x01
        result = parse(bytes(corrupted))
        assert not isinstance(result, ProxyHeader) or result != parsed, index
    # Flipping an address bit keeps a well-formed header: only the checksum notices.
    flipped = bytearray(data)
    flipped[17] ^= 0x01
    assert parse(bytes(flipped)) == Invalid("CRC32C checksum mismatch")


def test_crc32c_tlv_shape_and_count() -> None:
    base = SIG + b"\x21\x00"
    bad_size = b"\x03\x00\x03abc"
    result = parse(base + len(bad_size).to_bytes(2, "big") + bad_size)
    assert isinstance(result, Invalid) and "has 4" in result.reason
    two = build(ProxyHeader(2, Command.PROXY, Family.UNSPEC, tlvs=(
        TLV(t.NOOP, b""), TLV(t.NOOP, b"12"))))
    assert isinstance(parse(two), ProxyHeader)
    twice = b"\x03\x00\x04" + bytes(4) + b"\x03\x00\x04" + bytes(4)
    assert parse(base + len(twice).to_bytes(2, "big") + twice) == Invalid(
        "more than one CRC32C TLV")


@pytest.mark.parametrize("entry, why", [
    (TLV(t.UNIQUE_ID, b"x" * 129), "UNIQUE_ID of 129"),
    (TLV(t.UNIQUE_ID, b""), "empty UNIQUE_ID"),
    (TLV(t.AUTHORITY, b"\xff\xfe"), "not UTF-8"),
    (TLV(t.ALPN, b""), "empty ALPN"),
    (TLV(t.SSL, b"\x01\x00"), "SSL TLV of 2 bytes"),
    (TLV(t.SSL, b"\x01\x00\x00\x00\x00\x21\x00\x09TLS"), "overruns"),
    (TLV(t.SSL, b"\x01\x00\x00\x00\x00\x22\x00\x01\xff"), "not UTF-8"),
])
def test_bad_registered_tlvs(entry: TLV, why: str) -> None:
    data = build(ProxyHeader(2, Command.PROXY, Family.TCP4, SRC4, DST4, (entry,)))
    result = parse(data)
    assert isinstance(result, Invalid) and why in result.reason, result


def test_unknown_and_custom_tlvs_are_kept() -> None:
    entries = (TLV(0xE0, b"\x00\x01"), TLV(0xEA, b"vpce-123"), TLV(t.NETNS, b"blue"))
    original = ProxyHeader(2, Command.PROXY, Family.TCP4, SRC4, DST4, entries)
    assert header(build(original)).tlvs == entries


def test_ssl_tlv() -> None:
    info = SSLInfo(t.CLIENT_SSL | t.CLIENT_CERT_CONN | t.CLIENT_CERT_SESS, 0, version="TLSv1.3",
                   cn="alice", cipher="TLS_AES_256_GCM_SHA384", sig_alg="ECDSA-SHA256",
                   key_alg="EC256", other=(TLV(0x26, b"?"),))
    assert decode_ssl(info.encode()) == info
    result = header(build(ProxyHeader(2, Command.PROXY, Family.TCP4, SRC4, DST4,
                                      (TLV(t.SSL, info.encode()),))))
    value = result.tlv(t.SSL)
    assert value is not None and decode_ssl(value) == info


def test_not_v2() -> None:
    assert parse(b"\r\n\r\n\x01") == NotProxy()
    assert parse(b"\r\n\r\n\x00\r\nQUI") == Incomplete()


def test_builder_refuses_what_it_cannot_express() -> None:
    with pytest.raises(ValueError, match="IPv4"):
        build(ProxyHeader(2, Command.PROXY, Family.TCP4, SRC6, DST6))
    with pytest.raises(ValueError, match="UNIX"):
        build(ProxyHeader(2, Command.PROXY, Family.UNIX_STREAM, SRC4, DST4))
    with pytest.raises(ValueError, match="108"):
        build(ProxyHeader(2, Command.PROXY, Family.UNIX_STREAM, UnixAddress(b"x" * 109),
                          UnixAddress(b"")))
    with pytest.raises(ValueError, match="carry"):
        build(ProxyHeader(2, Command.PROXY, Family.UNSPEC, tlvs=(TLV(0xE0, bytes(65535)),)))
    with pytest.raises(ValueError, match="version 3"):
        build(ProxyHeader(3, Command.PROXY, Family.UNSPEC))
