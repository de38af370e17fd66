"""
Tests for the HTTP/1 request and HTTP/2 preface detector.

Captured requests (curl in origin, absolute and authority form and with h2 prior
knowledge, Chromium, Twisted's Agent) and hand-written edge cases must give their
sidecar's verdict for every prefix; generated requests must match with the facts
they were built from; and no bytes may make the detector raise or change its mind.
"""

from __future__ import annotations

import ipaddress
from random import Random
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st
from zope.interface.verify import verifyObject

from gatekeep.detectors.http import H2_PREFACE, HTTPDetector
from gatekeep.interfaces import IDetector
from gatekeep.values import Match, NeedMore, NoMatch
from tests.detectors._protocol_fixtures import (
    FAST,
    check_final,
    check_generated_match,
    check_needs_every_byte,
    detector_contract,
    fast_and_slow,
    load,
    match_facts,
    parametrize,
    tls_client_hellos,
)

DETECTOR = HTTPDetector()
FIXTURES = load("http")
TestContract = detector_contract(DETECTOR, "http", random_size=600)
H2_FACTS = {"method": None, "host": None, "port": None, "path": None, "version": "2"}


def facts(data: bytes) -> dict[str, object]:
    return match_facts(DETECTOR, data)


def host_of(value: bytes) -> tuple[object, object]:
    got = facts(b"GET / HTTP/1.1\r\nHost: " + value + b"\r\n\r\n")
    return got["host"], got["port"]


def test_provides_idetector() -> None:
    assert verifyObject(IDetector, DETECTOR)
    assert DETECTOR.name == "http"
    assert DETECTOR.max_prefix == 16384


def test_fixtures_cover_captures_and_both_verdicts() -> None:
    captured = {f.name for f in FIXTURES if f.sidecar["source"].startswith("captured")}
    assert {"curl-origin", "chromium", "curl-h2-prior-knowledge"} <= captured
    assert {f.matches for f in FIXTURES} == {True, False}


@parametrize([f for f in FIXTURES if f.matches and f.sidecar["facts"]["version"] != "2"])
def test_http1_match_needs_the_whole_head(fixture: Any) -> None:
    head = fixture.data[: fixture.decided_at]
    assert head.endswith((b"\r\n\r\n", b"\n\n"))


def test_h2_preface_needs_all_24_bytes() -> None:
    assert len(H2_PREFACE) == 24
    for n in range(24):
        assert DETECTOR.detect(H2_PREFACE[:n]) == NeedMore()
    assert facts(H2_PREFACE) == H2_FACTS
    assert DETECTOR.detect(b"\r\n" + H2_PREFACE) == NoMatch("not HTTP/1.0 or HTTP/1.1")


def test_pri_as_an_http1_method_is_still_http1() -> None:
    got = facts(b"PRI * HTTP/1.1\r\nHost: example.org\r\n\r\n")
    assert got == {
        "method": "PRI",
        "host": "example.org",
        "port": None,
        "path": "*",
        "version": "1.1",
    }


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (b"example.org", ("example.org", None)),
        (b"Example.ORG.:8448", ("example.org", 8448)),
        (b"  example.org \t", ("example.org", None)),
        (b"example.org:", ("example.org", None)),
        (b"192.0.2.1:80", ("192.0.2.1", 80)),
        (b"[2001:DB8::1]", ("2001:db8::1", None)),
        (b"[::1]:443", ("::1", 443)),
        (b"::1", (None, None)),
        (b"[::1", (None, None)),
        (b"[fe80::1%25eth0]", (None, None)),
        (b"example.org:0", (None, None)),
        (b"example.org:65536", (None, None)),
        (b"example.org:0443", ("example.org", 443)),
        (b"example.org:x", (None, None)),
        (b"example.org:80:80", (None, None)),
        (b"user@example.org", (None, None)),
        (b"exa mple.org", (None, None)),
        (b"", (None, None)),
        ("bücher.example".encode(), (None, None)),
        (b"xn--bcher-kva.example", ("xn--bcher-kva.example", None)),
        (b"256.0.0.1", (None, None)),
        (b"a" * 64 + b".org", (None, None)),
    ],
)
def test_host_header_is_validated(value: bytes, expected: tuple[object, object]) -> None:
    assert host_of(value) == expected


def test_host_from_the_target_overrides_the_header() -> None:
    got = facts(b"GET https://a.example:8443/x?y HTTP/1.1\r\nHost: b.example\r\n\r\n")
    assert (got["host"], got["port"], got["path"]) == ("a.example", 8443, "/x?y")
    got = facts(b"GET http://a.example?q HTTP/1.1\r\n\r\n")
    assert (got["host"], got["path"]) == ("a.example", "?q")


def test_path_is_the_raw_target() -> None:
    for target in (b"/a/../b//c?x=%2F&y", b"/%7Euser/", b"/_matrix/client/r0/rooms/!x:y/send"):
        assert facts(b"GET " + target + b" HTTP/1.1\r\n\r\n")["path"] == target.decode()


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        (b"", NeedMore()),
        (b"\r", NeedMore()),
        (b"\r\n", NeedMore()),
        (b"\n", NeedMore()),
        (b"\rG", NoMatch("stray CR")),
        (b"G", NeedMore()),
        (b"GET", NeedMore()),
        (b"GET ", NeedMore()),
        (b"GET /", NeedMore()),
        (b"GET x", NeedMore()),
        (b"GET x ", NoMatch("request-target in no known form")),
        (b"GET ?", NoMatch("request-target in no known form")),
        (b"CONNECT x", NeedMore()),
        (b"GET / ", NeedMore()),
        (b"GET / HTTP/1.1", NeedMore()),
        (b"GET / HTTP/1.1\r", NeedMore()),
        (b"GET / HTTP/1.1\r\n", NeedMore()),
        (b"GET / HTTP/1.1\r\nHost", NeedMore()),
        (b"GET / HTTP/1.1\r\nHost:", NeedMore()),
        (b"GET / HTTP/1.1\r\nHost: a\r", NeedMore()),
        (b"GET / HTTP/1.1\r\nHost: a\r\n\r", NeedMore()),
        (b"GET / HTTP/1.2", NoMatch("not HTTP/1.0 or HTTP/1.1")),
        (b"GET / HTTP/1.1 ", NoMatch("request line does not end after the version")),
        (b"GET / HTTP/1.1\r\n:x\r\n", NoMatch("header field name: not a token")),
        (b"GET / HTTP/1.1\r\nA\x01", NoMatch("malformed header field name")),
        (b"GET / HTTP/1.1\r\nA: \x7f", NoMatch("control character in a header field")),
        (b"GET\t/ HTTP/1.1", NoMatch("no space after the method")),
        (b"\x16\x03\x01", NoMatch("first byte 0x16 cannot start a method")),
        (b"<stream", NoMatch("first byte 0x3c cannot start a method")),
        (
            b"CONNECT example.org:443 HTTP/1.1\r\n\r\n",
            Match(
                {
                    "method": "CONNECT",
                    "host": "example.org",
                    "port": 443,
                    "path": "example.org:443",
                    "version": "1.1",
                }
            ),
        ),
        (
            b"GET / HTTP/1.1\r\nX: \xc3\xa9\x80\r\n\r\n",
            Match({"method": "GET", "host": None, "port": None, "path": "/", "version": "1.1"}),
        ),
    ],
)
def test_partial_and_broken_requests(data: bytes, expected: object) -> None:
    assert DETECTOR.detect(data) == expected


def test_method_of_32_characters_is_allowed() -> None:
    assert facts(b"M" * 32 + b" / HTTP/1.1\r\n\r\n")["method"] == "M" * 32
    assert DETECTOR.detect(b"M" * 32) == NeedMore()
    assert DETECTOR.detect(b"M" * 33) == NoMatch("method longer than 32")


def test_head_must_end_within_max_prefix() -> None:
    start = b"GET / HTTP/1.1\r\nHost: example.org\r\nX-Pad: "
    fits = start + b"p" * (16384 - len(start) - 4) + b"\r\n\r\n"
    assert len(fits) == 16384
    assert facts(fits)["host"] == "example.org"
    too_long = start + b"p" * (16384 - len(start) - 3) + b"\r\n\r\n"
    assert DETECTOR.detect(too_long[:16383]) == NeedMore()
    assert DETECTOR.detect(too_long) == NoMatch("request head longer than 16384 bytes")


@pytest.mark.parametrize(
    "other",
    [
        b"SSH-2.0-OpenSSH_9.2p1 Debian-2+deb12u10\r\n",
        b"SSH-2.0-PuTTY_Release_0.78\r\n",
        b"<stream:stream to='example.test' xmlns:stream='http://etherx.jabber.org/streams'>",
        b"<?xml version='1.0'?><stream:stream>",
        b"\x00\x00\x00\x00",
    ],
)
def test_other_protocols_do_not_match(other: bytes) -> None:
    assert isinstance(DETECTOR.detect(other), NoMatch)


def test_proxy_v1_header_is_not_http() -> None:
    assert isinstance(DETECTOR.detect(b"PROXY TCP4 192.0.2.1 192.0.2.2 1234 443\r\n"), NoMatch)


def test_tls_client_hellos_do_not_match() -> None:
    for hello in tls_client_hellos():
        assert DETECTOR.detect(hello[:1]) == NoMatch("first byte 0x16 cannot start a method")


# -- properties ---------------------------------------------------------------


_HTTP_ALPHABET = st.sampled_from(
    [
        *(b"GET", b"CONNECT", b"PRI", b" ", b"/", b"*", b"http://", b"a.b", b":", b"80"),
        *(b"[::1]", b"HTTP/1.1", b"HTTP/1.0", b"HTTP/2.0", b"\r\n", b"\n", b"\r", b"Host"),
        *(b": ", b"\t", b"@", b"?", b"\x00", b"\xff", H2_PREFACE[:10], H2_PREFACE),
    ]
)


def _http_like_keeps_promises(data: bytes, suffix: bytes) -> None:
    check_final(DETECTOR, data, suffix)


test_http_like_bytes, test_http_like_bytes_slow = fast_and_slow(
    st.lists(_HTTP_ALPHABET, max_size=40).map(b"".join), st.binary(max_size=16)
)(_http_like_keeps_promises)


# -- generated valid requests -------------------------------------------------

_ALNUM = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789"
_TCHAR = _ALNUM + "!#$%&'*+-.^_`|~"
_VCHAR = "".join(chr(c) for c in range(0x21, 0x7F))


def _name(rnd: Random) -> str:
    labels = []
    for _ in range(rnd.randint(1, 3)):
        rest = "".join(rnd.choice(_ALNUM + "-") for _ in range(rnd.randint(0, 12)))
        labels.append(rnd.choice(_ALNUM) + rest.rstrip("-"))
    labels.append("".join(rnd.choice(_ALNUM[:52]) for _ in range(rnd.randint(2, 5))))
    return ".".join(labels) + rnd.choice(["", "."])


def _authority(rnd: Random) -> tuple[str, str, int | None]:
    """(as sent, expected host, expected port)."""
    kind = rnd.randrange(3)
    if kind == 0:
        sent = _name(rnd)
        host = sent.rstrip(".").lower()
    elif kind == 1:
        host = sent = ".".join(str(rnd.randrange(256)) for _ in range(4))
    else:
        groups = [f"{rnd.randrange(1 << 16):x}" for _ in range(8)]
        sent = "[" + ":".join(g.upper() if rnd.random() < 0.5 else g for g in groups) + "]"
        host = ipaddress.IPv6Address(":".join(groups)).compressed
    port = rnd.choice([None, rnd.randint(1, 65535)])
    return sent + ("" if port is None else f":{port}"), host, port


@st.composite
def requests(draw: st.DrawFn) -> tuple[bytes, dict[str, object]]:
    """A valid HTTP/1 request head and the facts it must give."""
    rnd = Random(draw(st.integers(0, 2**32)))
    method = draw(
        st.sampled_from(["GET", "POST", "OPTIONS", "PUT", "DELETE", "PATCH"])
        | st.text(_TCHAR, min_size=1, max_size=32)
    )
    version = rnd.choice(["1.0", "1.1"])
    path = "/" + "".join(rnd.choice(_VCHAR) for _ in range(rnd.randint(0, 40)))
    sent, host, port = _authority(rnd)
    absolute = rnd.random() < 0.2
    target = (rnd.choice(["http", "HTTPS", "ws"]) + "://" + sent + path) if absolute else path
    fields = [
        (
            rnd.choice(["User-Agent", "accept", "X-Forwarded-For", "Cookie"]),
            "".join(rnd.choice(_VCHAR + " \t") for _ in range(rnd.randint(0, 30))).strip(" \t"),
        )
        for _ in range(rnd.randint(0, 5))
    ]
    with_host = absolute or rnd.random() < 0.9
    if with_host:
        fields.insert(rnd.randint(0, len(fields)), (rnd.choice(["Host", "host", "HOST"]), sent))

    def eol() -> str:
        return rnd.choice(["\r\n", "\r\n", "\n"])

    def ows() -> str:
        return "".join(rnd.choice(" \t") for _ in range(rnd.randint(0, 2)))

    text = rnd.choice(["", "", "", "\r\n", "\n"])
    text += f"{method} {target} HTTP/{version}{eol()}"
    text += "".join(f"{k}:{ows()}{v}{ows()}{eol()}" for k, v in fields)
    text += eol()
    expected: dict[str, object] = {
        "method": method,
        "host": host if with_host else None,
        "port": port if with_host else None,
        "path": path,
        "version": version,
    }
    return text.encode("ascii"), expected


def _generated_requests_match(request: tuple[bytes, dict[str, object]], cut: int) -> None:
    data, expected = request
    check_generated_match(DETECTOR, data, expected, cut)


test_generated_requests, test_generated_requests_slow = fast_and_slow(
    requests(), st.integers(min_value=0)
)(_generated_requests_match)


@pytest.mark.slow
@FAST
@given(requests())
def test_generated_requests_every_prefix(request: tuple[bytes, dict[str, object]]) -> None:
    check_needs_every_byte(DETECTOR, request[0])
