"""PROXY v1 lines: every receiver rule of the spec, and early refusal."""

from __future__ import annotations

import ipaddress

import pytest

from gatekeep.proxyproto import (
    Command,
    Family,
    Incomplete,
    InetAddress,
    Invalid,
    NotProxy,
    ProxyHeader,
    build,
    parse,
    parse_v1,
)

V4 = b"PROXY TCP4 192.168.0.1 192.168.0.11 56324 443\r\n"
V6 = b"PROXY TCP6 2001:db8::1 2001:db8::2 4242 5222\r\n"
LONGEST = (b"PROXY UNKNOWN ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff "
           b"ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff 65535 65535\r\n")


def test_tcp4_line_and_what_follows() -> None:
    result = parse(V4 + b"GET / HTTP/1.1\r\n")
    assert result == ProxyHeader(
        1, Command.PROXY, Family.TCP4,
        InetAddress(ipaddress.IPv4Address("192.168.0.1"), 56324),
        InetAddress(ipaddress.IPv4Address("192.168.0.11"), 443))
    assert isinstance(result, ProxyHeader) and result.length == len(V4)


def test_tcp6_line() -> None:
    result = parse(V6)
    assert isinstance(result, ProxyHeader)
    assert result.family is Family.TCP6
    assert str(result.source) == "[2001:db8::1]:4242"
    assert result.relayed


def test_v4_mapped_ipv6_as_nginx_writes_it() -> None:
    result = parse(b"PROXY TCP6 ::ffff:127.0.0.5 ::ffff:127.0.0.1 1 2\r\n")
    assert isinstance(result, ProxyHeader)
    assert result.source == InetAddress(ipaddress.IPv6Address("::ffff:127.0.0.5"), 1)


def test_unknown_ignores_the_rest_and_keeps_real_endpoints() -> None:
    for line in (b"PROXY UNKNOWN\r\n", LONGEST, b"PROXY UNKNOWN whatever here\r\n"):
        result = parse(line + b"rest")
        assert isinstance(result, ProxyHeader), line
        assert result.family is Family.UNSPEC and result.source is None
        assert not result.relayed
        assert result.length == len(line)


def test_longest_line_is_107_bytes_and_accepted() -> None:
    assert len(LONGEST) == 107
    assert isinstance(parse_v1(LONGEST), ProxyHeader)


def test_no_crlf_in_107_bytes_is_invalid() -> None:
    line = LONGEST[:-2] + b"5\r\n"  # 108 bytes: the CRLF comes too late
    result = parse_v1(line)
    assert isinstance(result, Invalid) and "107" in result.reason
    assert isinstance(parse_v1(b"PROXY UNKNOWN " + b"a" * 200), Invalid)


def test_every_prefix_of_a_valid_line_is_incomplete() -> None:
    for line in (V4, V6, LONGEST, b"PROXY UNKNOWN\r\n"):
        for size in range(len(line)):
            assert parse(line[:size]) == Incomplete(), line[:size]


@pytest.mark.parametrize("line, why", [
    (b"PROXY TCP4 192.168.0.1 192.168.0.11 56324 443\n", "bare LF"),
    (b"PROXY TCP4 192.168.0.1 192.168.0.11 56324 443\rX", "bare CR"),
    # Found by atheris: a CR right before the CRLF is a bare CR, however the bytes came.
    (b"PROXY UNKNOWN 2\r\r\n", "bare CR"),
    (b"PROXY TCP4 1.2.3.4 1.2.3.4 1 2\r\r\n", "bare CR"),
    (b"PROXY  TCP4 1.2.3.4 1.2.3.4 1 2\r\n", "unknown protocol"),
    (b"PROXY TCP4 1.2.3.4  1.2.3.4 1 2\r\n", "one space"),
    (b"PROXY TCP5 1.2.3.4 1.2.3.4 1 2\r\n", "unknown protocol"),
    (b"PROXY tcp4 1.2.3.4 1.2.3.4 1 2\r\n", "unknown protocol"),
    (b"PROXYTCP4 1.2.3.4 1.2.3.4 1 2\r\n", "no space after PROXY"),
    (b"PROXY TCP4 1.2.3.4 1.2.3.4 1\r\n", "6 fields"),
    (b"PROXY TCP4 1.2.3.4 1.2.3.4 1 2 3\r\n", "too many fields"),
    (b"PROXY TCP4 01.2.3.4 1.2.3.4 1 2\r\n", "source address"),
    (b"PROXY TCP4 1.2.3.4 1.2.3.256 1 2\r\n", "destination address"),
    (b"PROXY TCP4 1.2.3 1.2.3.4 1 2\r\n", "source address"),
    (b"PROXY TCP4 ::1 1.2.3.4 1 2\r\n", "source address"),
    (b"PROXY TCP6 1.2.3.4 ::1 1 2\r\n", "source address"),
    (b"PROXY TCP6 ::1%eth0 ::1 1 2\r\n", "unexpected characters"),
    (b"PROXY TCP6 1::2::3 ::1 1 2\r\n", "source address"),
    (b"PROXY TCP4 1.2.3.4 1.2.3.4 01 2\r\n", "source port"),
    (b"PROXY TCP4 1.2.3.4 1.2.3.4 1 65536\r\n", "destination port"),
    (b"PROXY TCP4 1.2.3.4 1.2.3.4 -1 2\r\n", "unexpected characters"),
    (b"PROXY TCP4 1.2.3.4 1.2.3.4 1 2 \r\n", "too many fields"),
    (b"PROXY\r\n", "needs a protocol"),
    (b"PROXY \r\n", "protocol"),
])
def test_malformed_lines_are_invalid_with_a_reason(line: bytes, why: str) -> None:
    result = parse(line)
    assert isinstance(result, Invalid), result
    assert why in result.reason


@pytest.mark.parametrize("start", [
    b"PROXY TCP7", b"PROXY TCP4 1.2.3.4  ", b"PROXY TCP4 1.2.3.4 1.2.3.4 1 2 3 4",
    b"PROXY TCP4 1.2.3.4\n", b"PROXY TCP4 x", b"PROXY TCP4 1.2.3.4\rz",
])
def test_hopeless_lines_are_refused_before_the_crlf(start: bytes) -> None:
    assert isinstance(parse(start), Invalid)


def test_not_a_proxy_line() -> None:
    for data in (b"GET / HTTP/1.1\r\n", b"\x16\x03\x01", b"PROXZ", b"proxy TCP4"):
        assert parse(data) == NotProxy(), data
    for data in (b"", b"P", b"PROX"):
        assert parse(data) == Incomplete(), data


def test_tor_circuit_id_line() -> None:
    # tor's HiddenServiceExportCircuitID haproxy: the circuit id in an IPv6 address.
    result = parse(b"PROXY TCP6 fc00:dead:beef:4dad::0:29 ::1 65535 42\r\n")
    assert isinstance(result, ProxyHeader)
    assert result.source == InetAddress(ipaddress.IPv6Address("fc00:dead:beef:4dad::29"), 65535)


def test_build_v1() -> None:
    header = parse(V6)
    assert isinstance(header, ProxyHeader)
    assert build(header) == V6
    assert build(ProxyHeader(1, Command.PROXY, Family.UNSPEC)) == b"PROXY UNKNOWN\r\n"
    with pytest.raises(ValueError, match="LOCAL"):
        build(ProxyHeader(1, Command.LOCAL, Family.UNSPEC))
    with pytest.raises(ValueError, match="IPv4"):
        build(ProxyHeader(1, Command.PROXY, Family.TCP4, header.source, header.destination))
