"""
Tests for the XMPP stream-header detector.

Captured headers (slixmpp c2s and component, Prosody s2s) and hand-written edge
cases must give their sidecar's verdict for every prefix; generated headers, in any
attribute order, quoting, spacing and escaping, must match with the facts they were
built from; and no bytes, however broken, may make the detector raise or change its
mind.
"""

from __future__ import annotations

from random import Random
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st
from zope.interface.verify import verifyObject

from gatekeep.detectors.xmpp import STREAMS_NS, XMPPDetector
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

DETECTOR = XMPPDetector()
FIXTURES = load("xmpp")
TestContract = detector_contract(DETECTOR, "xmpp", random_size=600)
OPEN = b"<stream:stream xmlns:stream='http://etherx.jabber.org/streams'"


def facts(data: bytes) -> dict[str, object]:
    return match_facts(DETECTOR, data)


def reason(data: bytes) -> str:
    verdict = DETECTOR.detect(data)
    assert isinstance(verdict, NoMatch), verdict
    return verdict.reason


def test_provides_idetector() -> None:
    assert verifyObject(IDetector, DETECTOR)
    assert DETECTOR.name == "xmpp"
    assert DETECTOR.max_prefix == 4096


def test_fixtures_cover_captures_and_both_verdicts() -> None:
    captured = [f.name for f in FIXTURES if f.sidecar["source"].startswith("captured")]
    assert {"slixmpp-c2s", "slixmpp-component", "prosody-s2s"} <= set(captured)
    assert {f.matches for f in FIXTURES} == {True, False}


@parametrize([f for f in FIXTURES if f.matches])
def test_match_needs_the_whole_start_tag(fixture: Any) -> None:
    assert fixture.data[fixture.decided_at - 1 : fixture.decided_at] == b">"


def test_slixmpp_sends_no_declaration() -> None:
    slixmpp = next(f for f in FIXTURES if f.name == "slixmpp-c2s")
    assert slixmpp.data.startswith(b"<stream:stream to='example.test'")


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("example.org", "example.org"),
        ("EXAMPLE.org.", "example.org"),
        ("127.0.0.1", "127.0.0.1"),
        ("[::1]", "::1"),
        ("::1", None),
        ("example..org", None),
        ("-example.org", None),
        ("exa_mple.org", "exa_mple.org"),
        ("a" * 64 + ".org", None),
        ("", None),
        ("&#x61;.example", "a.example"),
        ("b&#252;cher.example", "xn--bcher-kva.example"),
        ("ex&#10;ample.org", None),
    ],
)
def test_to_is_a_validated_domain(raw: str, expected: str | None) -> None:
    assert facts(OPEN + f" to='{raw}'>".encode())["to"] == expected


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("juliet@example.com/balcony", "juliet@example.com/balcony"),
        ("example.net", "example.net"),
        ("", None),
        ("a&#x7F;b", None),
        ("a&#xA0;b", None),
        ("x" * 3071, "x" * 3071),
        ("x" * 3072, None),
        ("\u00e9" * 1535, "\u00e9" * 1535),
        ("\u00e9" * 1536, None),
    ],
)
def test_from_is_a_printable_bounded_jid(raw: str, expected: str | None) -> None:
    assert facts(OPEN + f" from='{raw}'>".encode())["from"] == expected


@pytest.mark.parametrize(
    ("raw", "expected"), [("1.0", "1.0"), ("2.17", "2.17"), ("1", None), ("1.0 ", None)]
)
def test_version_must_be_major_minor(raw: str, expected: str | None) -> None:
    assert facts(OPEN + f" version='{raw}'>".encode())["version"] == expected


def test_facts_have_exactly_the_documented_keys() -> None:
    for fixture in FIXTURES:
        if fixture.matches:
            assert set(facts(fixture.data)) == {"to", "from", "version", "ns"}


def test_attribute_whitespace_is_normalised() -> None:
    got = facts(OPEN + b" from='a\r\nb\tc\rd'>")
    assert got["from"] == "a b c d"


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        (b"", NeedMore()),
        (b"\xef", NeedMore()),
        (b"\xef\xbb\xbf", NeedMore()),
        (b"\xef<", NoMatch("does not start with '<'")),
        (b"<", NeedMore()),
        (b"<?xml", NeedMore()),
        (b"<?xml ", NeedMore()),
        (b"<?xml?>", NoMatch("processing instruction (forbidden in XMPP)")),
        (b"<?xml encoding='UTF-8'?>", NoMatch("XML declaration without version")),
        (b"<?xml version='2.0'?>", NoMatch("not XML 1.x")),
        (b" \n\t", NeedMore()),
        (b"<stream:stream", NeedMore()),
        (b"<a:b:stream ", NoMatch("malformed qualified name 'a:b:stream'")),
        (b"<stream:stream xmlns:stream='x", NeedMore()),
        (OPEN + b" to='a&", NeedMore()),
        (OPEN + b" to='a&#", NeedMore()),
        (OPEN + b" to='a&#x", NeedMore()),
        (OPEN + b" to='a&#1114112;'", NoMatch("character reference out of range")),
        (OPEN + b" to='a&#0;'", NoMatch("character reference to a character not allowed in XML")),
        (OPEN + b" to='a&#X41;'", NoMatch("malformed character reference")),
        (OPEN + b" to='a&am", NeedMore()),
        (OPEN + b" to='a&ax", NoMatch("undefined entity (no DTD in XMPP)")),
        (OPEN + b" to='a<'", NoMatch("'<' in an attribute value")),
        (OPEN + b" to=a>", NoMatch("unquoted attribute value")),
        (OPEN + b"to='a'>", NoMatch("malformed start tag")),
        (OPEN + b" a:b='c'>", NoMatch("attribute prefix 'a' is not declared")),
        (OPEN + b" xmlns:a=''>", NoMatch("empty namespace declaration")),
        (OPEN + b" to='\xe2\x82", NeedMore()),
        (OPEN + b" to='\xe2\x82\xac.example'", NeedMore()),
        (OPEN + b" to='\xe2(", NoMatch("character not allowed in XML")),
        (b"\x16\x03\x01\x02\x00", NoMatch("does not start with '<'")),
    ],
)
def test_partial_and_broken_headers(data: bytes, expected: object) -> None:
    assert DETECTOR.detect(data) == expected


def test_header_must_end_within_max_prefix() -> None:
    long_from = b" from='" + b"x" * 4000 + b"'"
    fits = OPEN + long_from + b">"
    assert len(fits) < 4096
    assert isinstance(DETECTOR.detect(fits), Match)
    too_long = OPEN + b" id='" + b"x" * 4096 + b"'>"
    assert DETECTOR.detect(too_long[:4095]) == NeedMore()
    assert DETECTOR.detect(too_long[:4096]) == NoMatch("no stream header within 4096 bytes")
    assert DETECTOR.detect(too_long) == NoMatch("no stream header within 4096 bytes")
    assert DETECTOR.detect(b" " * 5000) == NoMatch("no stream header within 4096 bytes")


def test_bytes_after_the_tag_never_matter() -> None:
    header = next(f for f in FIXTURES if f.name == "prosody-s2s").data
    expected = DETECTOR.detect(header)
    for junk in (b"\x00", b"\xff\xfe", b"\xe2\x82", b"<!-- -->", b"\r\n" * 3000):
        assert DETECTOR.detect(header + junk) == expected


@pytest.mark.parametrize(
    "other",
    [
        b"SSH-2.0-OpenSSH_9.2p1 Debian-2+deb12u10\r\n",
        b"GET / HTTP/1.1\r\nHost: example.org\r\n\r\n",
        b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n",
        b"PROXY TCP4 192.0.2.1 192.0.2.2 1234 443\r\n",
        b"\r\n\r\n\x00\r\nQUIT\n",
    ],
)
def test_other_protocols_do_not_match(other: bytes) -> None:
    assert isinstance(DETECTOR.detect(other), NoMatch)


def test_tls_client_hellos_do_not_match() -> None:
    hellos = tls_client_hellos()
    assert hellos
    for hello in hellos:
        assert DETECTOR.detect(hello[:1]) == NoMatch("does not start with '<'")
        assert DETECTOR.detect(hello) == NoMatch("does not start with '<'")


# -- properties ---------------------------------------------------------------


def _xml_like_keeps_promises(data: bytes, suffix: bytes) -> None:
    check_final(DETECTOR, data, suffix)


_XML_ALPHABET = st.sampled_from(
    [
        *(b"<", b">", b"'", b'"', b"=", b" ", b"\n", b"&", b";", b"#", b"x", b"?", b"!", b"/"),
        *(b":", b"stream", b"xmlns", b"to", b"?xml", b"version", b"\xc3\xa9", b"\xff", b"\x00"),
        *(STREAMS_NS.encode(), b"&amp;", b"&#65;", b"\xef\xbb\xbf"),
    ]
)
test_xml_like_bytes, test_xml_like_bytes_slow = fast_and_slow(
    st.lists(_XML_ALPHABET, max_size=40).map(b"".join), st.binary(max_size=16)
)(_xml_like_keeps_promises)


# -- generated valid headers ----------------------------------------------------

_ALNUM = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789"
# A label starts with a letter or digit and does not end with a hyphen.
_LABEL = st.builds(
    lambda first, rest: first + rest.rstrip("-"),
    st.sampled_from(_ALNUM),
    st.text(_ALNUM + "-", max_size=12),
)
DOMAINS = st.builds(
    lambda labels, tld, dot: ".".join([*labels, tld]) + dot,
    st.lists(_LABEL, min_size=1, max_size=3),
    st.text(_ALNUM[:52], min_size=2, max_size=6),
    st.sampled_from(["", "."]),
)
JID_TEXT = st.text(
    st.characters(categories=["L", "N", "P", "S", "M"]) | st.just(" "),
    min_size=1,
    max_size=60,
)
_NAMED = {"&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&apos;"}


def escaped(rnd: Random, text: str, quote: str) -> str:
    """``text`` as an attribute value between ``quote``s, escaped at random."""
    out = []
    for c in text:
        must = c in "<&" or c == quote
        choices = ["dec", "hex"] + (["named"] if c in _NAMED else []) + ([] if must else ["raw"])
        how = rnd.choice(choices)
        if how == "raw":
            out.append(c)
        elif how == "named":
            out.append(_NAMED[c])
        elif how == "dec":
            out.append(f"&#{'0' * rnd.randrange(3)}{ord(c)};")
        else:
            out.append(f"&#x{ord(c):{rnd.choice('xX')}};")
    return quote + "".join(out) + quote


def space(rnd: Random, least: int) -> str:
    return "".join(rnd.choice(" \t\r\n") for _ in range(rnd.randint(least, 3)))


@st.composite
def stream_headers(draw: st.DrawFn) -> tuple[bytes, dict[str, object]]:
    """A valid stream header and the facts it must give."""
    to = draw(DOMAINS)
    sender = draw(st.none() | JID_TEXT)
    version = draw(st.none() | st.sampled_from(["1.0", "1.1", "2.0"]))
    unprefixed = draw(st.booleans())
    prefix = "" if unprefixed else draw(st.sampled_from(["stream", "s", "str_m", "x-1"]))
    ns = (
        STREAMS_NS
        if unprefixed
        else draw(st.sampled_from(["jabber:client", "jabber:server", "jabber:component:accept"]))
    )
    attributes = {"to": to}
    if sender is not None:
        attributes["from"] = sender
    if version is not None:
        attributes["version"] = version
    if unprefixed:
        attributes["xmlns"] = STREAMS_NS
    else:
        attributes[f"xmlns:{prefix}"] = STREAMS_NS
        attributes["xmlns"] = ns
    for extra in draw(st.sets(st.sampled_from(["xml:lang", "id", "xmlns:db"]))):
        attributes[extra] = {"xml:lang": "en", "id": "a1&b", "xmlns:db": "jabber:server:dialback"}[
            extra
        ]
    # Spacing, quoting and escaping come from a Random seeded by Hypothesis: drawing
    # each of those hundreds of choices from Hypothesis is many times slower.
    rnd = Random(draw(st.integers(0, 2**32)))
    parts = []
    for key in draw(st.permutations(sorted(attributes))):
        quote = rnd.choice("'\"")
        value = escaped(rnd, attributes[key], quote)
        parts.append(space(rnd, 1) + key + space(rnd, 0) + "=" + space(rnd, 0) + value)
    element = f"{prefix}:stream" if prefix else "stream"
    head = ""
    if draw(st.booleans()):
        q = rnd.choice("'\"")
        encoding = rnd.choice(["", f" encoding={q}UTF-8{q}", f" encoding={q}utf-8{q}"])
        head = f"<?xml version={q}1.0{q}{encoding}{space(rnd, 0)}?>"
    head += space(rnd, 0)
    text = head + "<" + element + "".join(parts) + space(rnd, 0) + ">"
    bom = draw(st.sampled_from([b"", b"\xef\xbb\xbf"]))
    expected = {
        "to": to.rstrip(".").lower(),
        "from": sender,
        "version": version,
        "ns": ns,
    }
    return bom + text.encode(), expected


def _generated_headers_match(header: tuple[bytes, dict[str, object]], cut: int) -> None:
    data, expected = header
    check_generated_match(DETECTOR, data, expected, cut)


test_generated_headers, test_generated_headers_slow = fast_and_slow(
    stream_headers(), st.integers(min_value=0)
)(_generated_headers_match)


@pytest.mark.slow
@FAST
@given(stream_headers())
def test_generated_headers_every_prefix(header: tuple[bytes, dict[str, object]]) -> None:
    check_needs_every_byte(DETECTOR, header[0])
