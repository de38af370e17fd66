"""
Tests for the TLS detector and its ClientHello parser.

Real clients' hellos (tests/fixtures/clienthello, see capture.py there) must give
their sidecar's facts for every split into reads and records, agree with what OpenSSL
itself parses, and nothing, however hostile, may make the detector raise or wait past
``max_prefix``.
"""

from __future__ import annotations

import struct

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from zope.interface.verify import verifyObject

from gatekeep.detectors._clienthello import (
    MAX_RECORD,
    ClientHello,
    Incomplete,
    Rejected,
    parse_client_hello,
)
from gatekeep.detectors.tls import TLSDetector, host_name
from gatekeep.interfaces import IDetector
from gatekeep.values import Match, NeedMore, NoMatch, Verdict
from tests.detectors._tls_helpers import (
    Fixture,
    alpn_ext,
    even_cuts,
    ext,
    fixtures,
    handshake_of,
    hello,
    hello_message,
    openssl_view,
    padded_hello,
    records,
    reframe,
    sni_ext,
    versions_ext,
    with_body,
)

DETECTOR = TLSDetector()
FIXTURES = fixtures()
BY_NAME = {f.name: f for f in FIXTURES}
fixture_param = pytest.mark.parametrize("fixture", FIXTURES, ids=[f.name for f in FIXTURES])


def detect(data: bytes) -> Verdict:
    return DETECTOR.detect(data)


def facts(data: bytes) -> dict[str, object]:
    verdict = detect(data)
    assert isinstance(verdict, Match), verdict
    assert verdict.consumed == 0
    return dict(verdict.facts)


def reason(data: bytes) -> str:
    verdict = detect(data)
    assert isinstance(verdict, NoMatch), verdict
    return verdict.reason


def variants(fixture: Fixture) -> dict[str, bytes]:
    """The fixture re-framed into 1..8 even records, and cut inside the SNI name."""
    message, _ = handshake_of(fixture.data)
    out = {f"{n}-records": reframe(fixture.data, even_cuts(len(message), n)) for n in range(1, 9)}
    if fixture.sidecar["sni"]:
        at = message.find(fixture.sidecar["sni"].encode()) + len(fixture.sidecar["sni"]) // 2
        out["cut-in-sni"] = reframe(fixture.data, [at])
        out["byte-records-around-sni"] = reframe(fixture.data, range(at - 8, at + 8))
    return out


def test_provides_idetector() -> None:
    assert verifyObject(IDetector, DETECTOR)
    assert DETECTOR.name == "tls"
    assert DETECTOR.max_prefix == 16384
    assert set(DETECTOR.facts) == {*facts(BY_NAME["curl"].data), "truncated"}


def test_fixtures_present() -> None:
    # capture.py's clients; losing one silently would weaken every test below.
    assert set(BY_NAME) >= {
        "chromium",
        "curl",
        "openssl-xmpp",
        "openssl-tls12-nosni",
        "python-ssl",
        "slixmpp",
    }
    assert len(BY_NAME["chromium"].data) > 1500  # the post-quantum hello


@fixture_param
def test_fixture_facts(fixture: Fixture) -> None:
    assert facts(fixture.data) == fixture.facts
    assert len(fixture.data) == fixture.sidecar["total_length"]
    parsed = parse_client_hello(fixture.data, DETECTOR.max_prefix)
    assert isinstance(parsed, ClientHello)
    assert parsed.records == fixture.sidecar["records"]
    assert parsed.length == len(fixture.data)


@fixture_param
def test_every_prefix(fixture: Fixture) -> None:
    """Fed one byte at a time: undecided until the last byte, then the same match."""
    data = fixture.data
    buffer = b""
    for byte in data[:-1]:
        buffer += bytes([byte])
        assert detect(buffer) == NeedMore()
    assert facts(buffer + data[-1:]) == fixture.facts


@fixture_param
def test_bytes_after_the_hello_ignored(fixture: Fixture) -> None:
    # Early data, or a client that does not wait: what follows is not ours to judge.
    for tail in (b"\x17\x03\x03\x00\x10", b"\x16\x03\x01\x00\x05\x01", b"GET / HTTP/1.1\r\n"):
        assert facts(fixture.data + tail) == fixture.facts


@fixture_param
def test_reframed(fixture: Fixture) -> None:
    for name, data in variants(fixture).items():
        assert facts(data) == fixture.facts, name
        assert all(detect(data[:n]) == NeedMore() for n in range(len(data))), name


@fixture_param
def test_openssl_agrees(fixture: Fixture) -> None:
    """SNI and ALPN as OpenSSL parses them, for the capture and every re-framing."""
    for name, data in {"captured": fixture.data, **variants(fixture)}.items():
        seen = openssl_view(data)
        assert seen.server_hello, (name, seen)
        found = facts(data)
        expected_sni = None if seen.sni is None else seen.sni.decode().lower()
        assert found["sni"] == expected_sni, name
        assert found["alpn"] == tuple(p.decode() for p in seen.alpn), name


@given(data=st.data())
@settings(max_examples=40, deadline=None)
def test_openssl_agrees_on_random_framing(data: st.DataObject) -> None:
    fixture = data.draw(st.sampled_from(FIXTURES))
    message, _ = handshake_of(fixture.data)
    cuts = data.draw(st.lists(st.integers(1, len(message) - 1), max_size=12))
    framed = reframe(fixture.data, cuts)
    seen = openssl_view(framed)
    assert seen.server_hello
    assert facts(framed) == fixture.facts


# ------------------------------------------------------------ facts from built hellos


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        (b"www.example.test", "www.example.test"),
        (b"WWW.Example.TEST.", "www.example.test"),
        (b"xn--bcher-kva.example", "xn--bcher-kva.example"),
        (b"localhost", "localhost"),
        (b"a" * 63 + b".example", "a" * 63 + ".example"),
        (b".".join([b"a" * 63] * 3) + b"." + b"b" * 61, ".".join(["a" * 63] * 3) + "." + "b" * 61),
        (b"127.0.0.1", None),  # RFC 6066: no IP literals
        (b"10.1", None),
        (b"0x7f000001", None),
        (b"[::1]", None),
        (b"::1", None),
        (b"a" * 64 + b".example", None),
        (b".".join([b"a" * 63] * 3) + b"." + b"b" * 62, None),  # 254 characters
        (b"under_score.example", None),
        (b"-lead.example", None),
        (b"trail-.example", None),
        (b"two..dots", None),
        (b".", None),
        (b"example.org..", None),
        (b"b\xc3\xbccher.example", None),  # UTF-8, not an A-label
        (b"nul\x00.example", None),
        (b"sp ace.example", None),
        (b"a" * 300, None),
    ],
)
def test_sni_validation(raw: bytes, expected: str | None) -> None:
    assert host_name(raw) == expected
    # An invalid name still matches as TLS; the fact is just absent.
    assert facts(hello(sni_ext(raw)))["sni"] == expected


def test_sni_other_name_types_skipped() -> None:
    assert facts(hello(sni_ext(b"opaque", name_type=7)))["sni"] is None
    entries = b"\x07\x00\x02zz" + b"\x00\x00\x09a.example"
    assert facts(hello(ext(0, struct.pack("!H", len(entries)) + entries)))["sni"] == "a.example"


def test_alpn_rendering() -> None:
    found = facts(hello(alpn_ext(b"xmpp-client", b"\x0a\x0a", b"h2", b"sp ace", b"\xff")))
    assert found["alpn"] == ("xmpp-client", "0x0a0a", "h2", "0x737020616365", "0xff")


def test_versions() -> None:
    grease = versions_ext(0x3A3A, 0x0303, 0x0304, 0x0304, 0x7F1C)
    assert facts(hello(grease))["versions"] == ("0x7f1c", "TLSv1.3", "TLSv1.2")
    assert facts(hello(versions_ext(0x0302, 0x0301)))["versions"] == ("TLSv1.1", "TLSv1.0")
    assert facts(hello(versions_ext(0xFAFA)))["versions"] == ()
    assert facts(hello())["versions"] == ("TLSv1.2",)
    assert facts(hello(legacy_version=0x0301))["versions"] == ("TLSv1.0",)
    assert facts(hello(legacy_version=0x0300))["versions"] == ("SSLv3",)
    assert facts(hello(legacy_version=0x0403))["versions"] == ("0x0403",)  # tolerated


def test_minimal_and_ech() -> None:
    assert facts(hello()) == {"sni": None, "alpn": (), "versions": ("TLSv1.2",), "ech": False}
    assert facts(records(hello_message(None), ()))["versions"] == ("TLSv1.2",)  # no block
    assert facts(hello(ext(0xFE0D, b"\x00" * 9)))["ech"] is True


# ------------------------------------------------------------ refusals


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        (b"G", "not a TLS handshake record"),
        (b"\x15", "not a TLS handshake record"),
        (b"\x16\x02", "record version is not 3.x"),
        (b"\x16\x03\x05", "record version is not 3.0-3.4"),
        (b"\x16\x03\x01\x00\x00", "record length 0 outside 1..16384"),
        (b"\x16\x03\x01\x40\x01", "record length 16385 outside 1..16384"),
        (b"\x16\x03\x01\x00\x04\x02", "handshake type 2 is not ClientHello"),
        (
            b"\x16\x03\x01\x00\x01\x01\x16\x03\x01\x00\x01\x00\x16\x03\x01\x00\x01\x00"
            b"\x16\x03\x01\x00\x01\x05",
            "malformed ClientHello: handshake length 5",
        ),
        (
            b"\x16\x03\x01\x00\x04\x01\x03\x00\x00",
            "malformed ClientHello: handshake length 196608",
        ),
        (
            b"\x16\x03\x01\x00\x04\x01\x00\x01\x00\x17",
            "non-handshake record before the ClientHello ended",
        ),
    ],
)
def test_refused_early(data: bytes, expected: str) -> None:
    assert reason(data) == expected


@pytest.mark.parametrize(
    ("extensions", "expected"),
    [
        (b"\x00\x17\x00", "extension header"),
        (b"\x00\x17\x00\x01", "extension length"),
        (ext(23, b"") * 2, "duplicate extension 23"),
        (ext(0, b"\x00\x00"), "server_name list length"),
        (ext(0, b"\x00\x04\x00\x00\x01"), "server_name list length"),
        (ext(0, b"\x00\x03\x00\x00\x00"), "server_name entry length"),
        (ext(0, b"\x00\x02\x00\x00"), "server_name entry"),
        (ext(0, b"\x00\x04\x00\x00\x05a"), "server_name entry length"),
        (sni_ext(b"a.example", b"b.example"), "server_name has two host names"),
        (ext(16, b"\x00\x01\x00"), "alpn list length"),
        (ext(16, b"\x00\x04\x02h2"), "alpn list length"),
        (ext(16, b"\x00\x02\x00\x00"), "alpn protocol length"),
        (ext(16, b"\x00\x02\x05h"), "alpn protocol length"),
        (ext(43, b"\x03\x03\x04\x03"), "supported_versions length"),
        (ext(43, b"\x00"), "supported_versions length"),
        (ext(43, b"\x04\x03\x04"), "supported_versions length"),
        (ext(43, b""), "supported_versions length"),
    ],
)
def test_malformed_extensions(extensions: bytes, expected: str) -> None:
    block = struct.pack("!H", len(extensions)) + extensions
    assert reason(with_body(hello_message(None)[4:] + block)) == (
        f"malformed ClientHello: {expected}"
    )


def test_malformed_body() -> None:
    body = hello_message(None)[4:]
    sid = 2 + 32
    cases = {
        "legacy_version below 3.0": b"\x02" + body[1:],
        "session id length": body[:sid] + b"\x21" + b"\x00" * 33 + body[sid + 33 :],
        "cipher suites length": body[: sid + 33] + b"\x00\x03" + body[sid + 35 :],
        "compression methods length": body[:-2] + b"\x00" + body[-1:],
    }
    for expected, mutated in cases.items():
        assert reason(with_body(mutated)) == f"malformed ClientHello: {expected}"
    # Bodies of the smallest legal size (41) that end inside a vector's length.
    head = b"\x03\x03" + b"\x00" * 32
    ends_in_suites = head + b"\x05" + b"\x00" * 5 + b"\x00"
    ends_before_compression = head + b"\x00\x00\x04" + b"\x13\x01" * 2
    for expected, short in {
        "cipher suites length": ends_in_suites,
        "compression methods length": ends_before_compression,
    }.items():
        assert len(short) == 41
        assert reason(with_body(short)) == f"malformed ClientHello: {expected}"
    for block in (b"\x00", b"\x00\x06" + ext(0xAAAA, b"x"), b"\x00\x04" + ext(0xAAAA, b"x")):
        assert reason(with_body(body + block)) == "malformed ClientHello: extensions length"


def test_data_after_hello_in_its_record_refused() -> None:
    # OpenSSL refuses this too ("not on record boundary" / "unexpected message").
    message, _ = handshake_of(BY_NAME["python-ssl"].data)
    data = records(message + b"\x14\x00\x00\x00", ())
    assert reason(data[:10]) == "data after the ClientHello in its last record"
    assert openssl_view(data).error


# ------------------------------------------------------------ size limits


def test_largest_readable_hello() -> None:
    data = padded_hello(DETECTOR.max_prefix)
    assert facts(data)["sni"] == "big.example"
    assert detect(data[:-1]) == NeedMore()


def test_too_large_hello_matches_truncated() -> None:
    truncated = {"sni": None, "alpn": (), "versions": (), "ech": False, "truncated": True}
    data = padded_hello(DETECTOR.max_prefix + 1)
    assert facts(data[:9]) == truncated  # decided by the declared lengths alone
    assert facts(data) == truncated
    # Small records push the same hello past the cap: decided once that is certain.
    small = padded_hello(DETECTOR.max_prefix + 6 * 60, record=200)
    for n in range(0, len(small) + 1, 97):
        verdict = detect(small[:n])
        if n > DETECTOR.max_prefix:
            assert isinstance(verdict, Match)
        if isinstance(verdict, Match):
            assert dict(verdict.facts) == truncated
        else:
            assert verdict == NeedMore()


# ------------------------------------------------------------ properties


def _check_verdicts(data: bytes) -> None:
    """Never raises, one of three answers, final once given, never waits past the cap."""
    full = detect(data)
    assert isinstance(full, Match | NoMatch | NeedMore)
    if len(data) >= DETECTOR.max_prefix:
        assert not isinstance(full, NeedMore)
    # Every short prefix (where headers are judged) and a sample of the longer ones.
    lengths = set(range(min(len(data), 80))) | set(range(0, len(data), max(1, len(data) // 16)))
    earlier = [detect(data[:n]) for n in sorted(lengths)]
    decided = [v for v in earlier if not isinstance(v, NeedMore)]
    assert all(v == full for v in decided)


def _mutate(data: bytes, draw: st.DataObject) -> bytes:
    out = bytearray(data)
    for _ in range(draw.draw(st.integers(1, 4))):
        if not out:
            break
        i = draw.draw(st.integers(0, len(out) - 1))
        kind = draw.draw(st.sampled_from(["flip", "u16", "cut", "insert", "delete"]))
        if kind == "flip":
            out[i] ^= draw.draw(st.integers(1, 255))
        elif kind == "u16":
            out[i : i + 2] = struct.pack("!H", draw.draw(st.integers(0, 0xFFFF)))
        elif kind == "cut":
            del out[i:]
        elif kind == "insert":
            out[i:i] = draw.draw(st.binary(min_size=1, max_size=8))
        else:
            del out[i : i + draw.draw(st.integers(1, 8))]
    return bytes(out)


hostile = st.one_of(
    st.binary(max_size=64),
    st.binary(max_size=400).map(lambda b: b"\x16\x03\x01" + b),
    st.binary(max_size=400).map(lambda b: records(b"\x01" + len(b).to_bytes(3, "big") + b, ())),
)


def _fuzz_fixture(data: st.DataObject) -> None:
    fixture = data.draw(st.sampled_from(FIXTURES))
    _check_verdicts(_mutate(fixture.data, data))


def _fuzz_oversize(data: st.DataObject) -> None:
    pad = data.draw(st.integers(0, 40000))
    message = hello_message([sni_ext(b"big.example"), ext(21, b"\x00" * pad)])
    size = data.draw(st.integers(1, MAX_RECORD))
    stream = records(message, range(size, len(message), size)) + b"\x17" * DETECTOR.max_prefix
    n = data.draw(st.integers(DETECTOR.max_prefix, len(stream)))
    verdict = detect(stream[:n])
    assert isinstance(verdict, Match)
    fits = len(message) + 5 * -(-len(message) // size) <= DETECTOR.max_prefix
    assert verdict.facts["sni"] == ("big.example" if fits else None)
    assert verdict.facts.get("truncated", False) is not fits


fast = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
thorough = settings(max_examples=3000, deadline=None, suppress_health_check=list(HealthCheck))


@given(hostile)
@fast
def test_hostile_bytes(data: bytes) -> None:
    _check_verdicts(data)


@given(st.data())
@fast
def test_mutated_fixtures(data: st.DataObject) -> None:
    _fuzz_fixture(data)


@given(st.data())
@settings(max_examples=50, deadline=None)
def test_never_waits_past_max_prefix(data: st.DataObject) -> None:
    _fuzz_oversize(data)


@pytest.mark.slow
@given(hostile)
@thorough
def test_hostile_bytes_thorough(data: bytes) -> None:
    _check_verdicts(data)


@pytest.mark.slow
@given(st.data())
@thorough
def test_mutated_fixtures_thorough(data: st.DataObject) -> None:
    _fuzz_fixture(data)


@pytest.mark.slow
@given(st.data())
@settings(max_examples=1000, deadline=None)
def test_never_waits_past_max_prefix_thorough(data: st.DataObject) -> None:
    _fuzz_oversize(data)


@given(st.one_of(st.binary(max_size=64),
                 st.builds(lambda h, tail: h[: len(h) // 2] + tail,
                           st.sampled_from([f.data for f in FIXTURES]), st.binary(max_size=8))))
def test_detect_answers_what_the_parser_says(prefix: bytes) -> None:
    """The detector's shortcut for a first byte that is not a handshake record included."""
    result = parse_client_hello(prefix, TLSDetector.max_prefix)
    verdict = TLSDetector().detect(prefix)
    if isinstance(result, Incomplete):
        assert verdict == NeedMore()
    elif isinstance(result, Rejected):
        assert verdict == NoMatch(result.reason)
    else:
        assert isinstance(verdict, Match)
