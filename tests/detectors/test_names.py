"""
Tests for the name validation shared by detectors (HTTP Host, XMPP ``to``, SNI).

Routes compare names as text, so the promise tested here is canonical spelling: a
name the helpers return is valid, lower case, without a trailing dot, and comes back
unchanged when normalised again; anything else comes back as None, never raising.
"""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from gatekeep.detectors._names import normalise_dns_name, normalise_host, valid_dns_name
from tests.detectors._protocol_fixtures import FAST


@pytest.mark.parametrize(
    ("text", "valid"),
    [
        ("example.org", True),
        ("Example.ORG.", True),
        ("localhost", True),
        ("a-b.c_d.example", True),
        ("xn--bcher-kva.example", True),
        ("a" * 63 + ".org", True),
        ("a" * 64 + ".org", False),
        (".".join(["a" * 61] * 4), True),  # 247 characters
        (".".join(["a" * 63] * 4), False),  # 255 characters
        ("", False),
        (".", False),
        ("a..b", False),
        (".a", False),
        ("a.b..", False),
        ("-a.org", False),
        ("a-.org", False),
        ("192.0.2.1", False),
        ("a.123", False),
        ("exa mple.org", False),
        ("bücher.example", False),
        ("a:b", False),
    ],
)
def test_valid_dns_name(text: str, valid: bool) -> None:
    assert valid_dns_name(text) is valid


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        (b"Example.ORG.", "example.org"),
        (b"ex\xc3\xa4mple.org", None),  # bytes on the wire are A-labels
        ("Bücher.Example.", "xn--bcher-kva.example"),
        ("bücher\u3002example", "xn--bcher-kva.example"),  # ideographic full stop
        ("xn--zz.example", "xn--zz.example"),  # A-labels are not decoded
        ("a_b\u00e9.example", None),  # IDNA 2008 has no underscore
        ("\u00e9" * 2000, None),
        ("", None),
    ],
)
def test_normalise_dns_name(raw: bytes | str, expected: str | None) -> None:
    assert normalise_dns_name(raw) == expected


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("192.0.2.1", "192.0.2.1"),
        ("192.0.2.01", None),
        ("192.0.2", None),
        ("256.0.0.1", None),
        ("[2001:DB8:0::1]", "2001:db8::1"),
        ("[::1]", "::1"),
        ("::1", None),
        ("[::1", None),
        ("[fe80::1%eth0]", None),
        ("[v1.x]", None),
        ("[192.0.2.1]", None),
        ("Example.org.", "example.org"),
    ],
)
def test_normalise_host(text: str, expected: str | None) -> None:
    assert normalise_host(text) == expected


@FAST
@given(st.text(max_size=300) | st.from_regex(r"[A-Za-z0-9.\-_\[\]:]{0,80}", fullmatch=True))
def test_normalised_names_are_canonical(text: str) -> None:
    name = normalise_host(text)
    if name is not None:
        assert name == name.lower()
        assert not name.endswith(".")
        assert name.isascii()
        assert normalise_host(name) == name or ":" in name


@FAST
@given(st.binary(max_size=300))
def test_wire_names_never_raise(raw: bytes) -> None:
    name = normalise_dns_name(raw)
    assert name is None or valid_dns_name(name)
