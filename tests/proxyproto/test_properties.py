"""
Round trips and fuzzing: any header built parses back to itself, whatever follows it
and however it is split; any bytes at all get an answer, never an exception, and
never a wait past the header's own size limit.
"""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gatekeep.proxyproto import (
    MAX_V1_LENGTH,
    MAX_V2_LENGTH,
    Incomplete,
    Invalid,
    NotProxy,
    ProxyHeader,
    build,
    parse,
)
from gatekeep.proxyproto.v2 import V2_SIGNATURE
from tests.proxyproto.strategies import headers, without_checksum_values

FAST = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
BIG = settings(max_examples=4_000, deadline=None, suppress_health_check=list(HealthCheck))

prefixes = st.sampled_from([b"", b"PROXY ", b"PROXY TCP4 ", b"PROXY TCP6 ", b"PROXY UNKNOWN",
                            V2_SIGNATURE, V2_SIGNATURE + b"\x21", V2_SIGNATURE + b"\x21\x11",
                            V2_SIGNATURE + b"\x20\x00\x00", V2_SIGNATURE + b"\x21\x21\x00\x24"])


def check_round_trip(header: ProxyHeader, tail: bytes) -> None:
    data = build(header)
    parsed = parse(data + tail)
    assert isinstance(parsed, ProxyHeader), parsed
    assert parsed.length == len(data)
    assert without_checksum_values(parsed) == without_checksum_values(header)
    assert build(parsed) == data  # and back to the very same bytes


def check_any_bytes(data: bytes) -> None:
    result = parse(data)
    assert isinstance(result, ProxyHeader | Incomplete | NotProxy | Invalid)
    if isinstance(result, Incomplete):
        # Waiting for more is bounded by the header's own limit.
        assert len(data) < MAX_V2_LENGTH
        if data.startswith(b"PROXY"):
            assert len(data) < MAX_V1_LENGTH
    if isinstance(result, ProxyHeader):
        assert 0 < result.length <= len(data)
        assert build(result)  # what was accepted can be sent on
    # A verdict, once given, holds for every longer input: split-independence.
    for size in range(len(data)):
        early = parse(data[:size])
        if not isinstance(early, Incomplete):
            assert early == result
            if isinstance(early, ProxyHeader):
                assert early.length == getattr(result, "length", -1)
            break


@FAST
@given(headers, st.binary(max_size=40))
def test_round_trip(header: ProxyHeader, tail: bytes) -> None:
    check_round_trip(header, tail)


@FAST
@given(headers, st.data())
def test_any_split_same_header(header: ProxyHeader, data: st.DataObject) -> None:
    wire = build(header)
    cut = data.draw(st.integers(0, len(wire)))
    assert parse(wire[:cut]) == (Incomplete() if cut < len(wire) else parse(wire))


@FAST
@given(prefixes, st.binary(max_size=300))
def test_fuzz_parser(prefix: bytes, tail: bytes) -> None:
    check_any_bytes(prefix + tail)


@FAST
@given(headers, st.integers(0, 400), st.integers(0, 255))
def test_mutated_headers(header: ProxyHeader, index: int, value: int) -> None:
    data = bytearray(build(header))
    data[index % len(data)] = value
    check_any_bytes(bytes(data))


@pytest.mark.slow
@BIG
@given(headers, st.binary(max_size=40))
def test_round_trip_big(header: ProxyHeader, tail: bytes) -> None:
    check_round_trip(header, tail)


@pytest.mark.slow
@BIG
@given(prefixes, st.binary(max_size=600))
def test_fuzz_parser_big(prefix: bytes, tail: bytes) -> None:
    check_any_bytes(prefix + tail)


@pytest.mark.slow
@BIG
@given(headers, st.integers(0, 400), st.integers(0, 255))
def test_mutated_headers_big(header: ProxyHeader, index: int, value: int) -> None:
    data = bytearray(build(header))
    data[index % len(data)] = value
    check_any_bytes(bytes(data))
