"""Onion-service configuration text: parsing tor's reply, writing SETCONF."""

from __future__ import annotations

import re

from hypothesis import given
from hypothesis import strategies as st

from gatekeep.onion.hsconf import (
    HiddenService,
    auth_file_name,
    gatekeep_service,
    parse_hidden_services,
    quote,
    setconf_command,
    without,
)

# What tor 0.4.9 answered to GETCONF HiddenServiceOptions with two services.
REPLY = """\
HiddenServiceDir=/var/lib/tor/blog
HiddenServicePort=80 127.0.0.1:8080
HiddenServicePort=5222 127.0.0.1:8080
HiddenServiceExportCircuitID=haproxy
HiddenServiceDir=/var/lib/gatekeep/onion
HiddenServicePort=81 127.0.0.1:8081"""


def test_parse_groups_keep_every_option_in_order() -> None:
    blog, ours = parse_hidden_services(REPLY)
    assert blog == HiddenService("/var/lib/tor/blog", (
        ("HiddenServicePort", "80 127.0.0.1:8080"),
        ("HiddenServicePort", "5222 127.0.0.1:8080"),
        ("HiddenServiceExportCircuitID", "haproxy")))
    assert ours.directory == "/var/lib/gatekeep/onion"


def test_no_services() -> None:
    # tor answers the bare key when nothing is configured.
    assert parse_hidden_services("HiddenServiceOptions") == []
    assert setconf_command([]) == "RESETCONF HiddenServiceDir"


def test_publish_replaces_ours_and_keeps_the_others_verbatim() -> None:
    groups = parse_hidden_services(REPLY)
    ours = gatekeep_service("/var/lib/gatekeep/onion/", [80, 5222], "127.0.0.1:40000")
    command = setconf_command([*without(groups, "/var/lib/gatekeep/onion/"), ours])
    assert command == (
        'SETCONF HiddenServiceDir="/var/lib/tor/blog" '
        'HiddenServicePort="80 127.0.0.1:8080" HiddenServicePort="5222 127.0.0.1:8080" '
        'HiddenServiceExportCircuitID="haproxy" '
        'HiddenServiceDir="/var/lib/gatekeep/onion/" '
        'HiddenServicePort="80 127.0.0.1:40000" HiddenServicePort="5222 127.0.0.1:40000" '
        'HiddenServiceVersion="3" HiddenServiceExportCircuitID="haproxy"')


def _unquote(text: str) -> str:
    """control-spec 2.1's QuotedString, read back."""
    assert text.startswith('"') and text.endswith('"')
    return re.sub(r"\\(.)", r"\1", text[1:-1])


@given(st.text(alphabet=st.characters(exclude_characters="\r\n\0"), max_size=40))
def test_quote_round_trips(value: str) -> None:
    quoted = quote(value)
    assert _unquote(quoted) == value
    # Nothing unescaped can end the string early or start a new keyword.
    assert re.fullmatch(r'"(?:[^"\\]|\\.)*"', quoted, re.DOTALL)


def test_auth_file_names_are_stable_and_ours() -> None:
    line = "descriptor:x25519:" + "A" * 52
    assert auth_file_name(line) == auth_file_name(line)
    assert re.fullmatch(r"gatekeep-[0-9a-f]{16}\.auth", auth_file_name(line))
    assert auth_file_name(line) != auth_file_name(line.replace("A", "B", 1))
