"""
Tests for the SSH identification-line detector.

The captured OpenSSH client (its line followed by the binary KEXINIT) and
hand-written lines must give their sidecar's verdict for every prefix; generated
lines must match with the facts they were built from; and no bytes may make the
detector raise, change its mind, or wait past 255 bytes.
"""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import strategies as st
from zope.interface.verify import verifyObject

from gatekeep.detectors.ssh import MAX_LINE, SSHDetector
from gatekeep.interfaces import IDetector
from gatekeep.values import Match, NeedMore, NoMatch
from tests.detectors._protocol_fixtures import (
    check_final,
    detector_contract,
    fast_and_slow,
    load,
    parametrize,
    tls_client_hellos,
)

DETECTOR = SSHDetector()
FIXTURES = load("ssh")
TestContract = detector_contract(DETECTOR, "ssh", random_size=300)
BAD_CHARACTER = NoMatch("control or non-ASCII character in the identification line")


def test_provides_idetector() -> None:
    assert verifyObject(IDetector, DETECTOR)
    assert DETECTOR.name == "ssh"
    assert DETECTOR.max_prefix == MAX_LINE == 255


def test_fixtures_cover_captures_and_both_verdicts() -> None:
    captured = {f.name for f in FIXTURES if f.sidecar["source"].startswith("captured")}
    assert "openssh-9.2-client" in captured
    assert {f.matches for f in FIXTURES} == {True, False}


@parametrize([f for f in FIXTURES if f.matches])
def test_match_needs_the_whole_line(fixture: Any) -> None:
    assert fixture.data[fixture.decided_at - 1 : fixture.decided_at] == b"\n"


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        (b"", NeedMore()),
        (b"S", NeedMore()),
        (b"SSH-", NeedMore()),
        (b"SSH-1", NeedMore()),
        (b"SSH-1.9", NeedMore()),
        (b"SSH-2.0-", NeedMore()),
        (b"SSH-2.0-x", NeedMore()),
        (b"SSH-2.0-x\r", NeedMore()),
        (b"SSH-2.0-x ", NeedMore()),
        (b"SSH-2.0-x\r\n", Match({"version": "2.0", "software": "x"})),
        (b"SSH-2.0-x\rx", BAD_CHARACTER),
        (b"SSH-2.0-x\t", BAD_CHARACTER),
        (b"SSH-2.0-x \xc3\xa9", BAD_CHARACTER),
        (b"SSH-2.0-\r", NoMatch("empty software version")),
        (b"SSH-2.1-x\r\n", NoMatch("not SSH protocol 2.0 or 1.99")),
        (b"SSH-3", NoMatch("not SSH protocol 2.0 or 1.99")),
        (b"SSH_", NoMatch("does not start with SSH-")),
        (b"\r\nSSH-2.0-x\r\n", NoMatch("does not start with SSH-")),
        (b"SSH-2.0-a-b-c  two  spaces \r\n", Match({"version": "2.0", "software": "a-b-c"})),
    ],
)
def test_partial_and_broken_lines(data: bytes, expected: object) -> None:
    assert DETECTOR.detect(data) == expected


def test_line_limit_is_255_bytes_including_crlf() -> None:
    for end in (b"\r\n", b"\n"):
        fits = b"SSH-2.0-" + b"s" * (255 - 8 - len(end)) + end
        assert len(fits) == 255
        assert isinstance(DETECTOR.detect(fits), Match)
    too_long = b"SSH-2.0-" + b"s" * 246 + b"\r\n"
    assert DETECTOR.detect(too_long[:254]) == NeedMore()
    assert DETECTOR.detect(too_long[:255]) == NoMatch("identification line longer than 255 bytes")


@pytest.mark.parametrize(
    "other",
    [
        b"GET / HTTP/1.1\r\nHost: example.org\r\n\r\n",
        b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n",
        b"<stream:stream to='example.test' xmlns:stream='http://etherx.jabber.org/streams'>",
        b"PROXY TCP4 192.0.2.1 192.0.2.2 1234 443\r\n",
    ],
)
def test_other_protocols_do_not_match(other: bytes) -> None:
    assert DETECTOR.detect(other[:1]) == NoMatch("does not start with SSH-")
    assert DETECTOR.detect(other) == NoMatch("does not start with SSH-")


def test_tls_client_hellos_do_not_match() -> None:
    for hello in tls_client_hellos():
        assert DETECTOR.detect(hello[:1]) == NoMatch("does not start with SSH-")


# -- properties ---------------------------------------------------------------


def _ssh_like_keeps_promises(head: bytes, rest: bytes, suffix: bytes) -> None:
    check_final(DETECTOR, head + rest, suffix)


test_ssh_like_bytes, test_ssh_like_bytes_slow = fast_and_slow(
    st.sampled_from([b"SSH-", b"SSH-2.0-", b"SSH-1.99-", b"SSH-1.9", b""]),
    st.binary(max_size=300),
    st.binary(max_size=16),
)(_ssh_like_keeps_promises)


_SOFTWARE = st.text(st.characters(min_codepoint=0x21, max_codepoint=0x7E), min_size=1)
_COMMENTS = st.text(st.characters(min_codepoint=0x20, max_codepoint=0x7E))


@st.composite
def lines(draw: st.DrawFn) -> tuple[bytes, dict[str, str]]:
    """A valid identification line and the facts it must give."""
    version = draw(st.sampled_from(["2.0", "1.99"]))
    software = draw(_SOFTWARE)
    comments = draw(st.none() | _COMMENTS)
    end = draw(st.sampled_from(["\r\n", "\n"]))
    line = f"SSH-{version}-{software}" + ("" if comments is None else " " + comments) + end
    return line.encode("ascii")[:MAX_LINE], {"version": version, "software": software}


def _generated_lines_match(line: tuple[bytes, dict[str, str]], suffix: bytes) -> None:
    data, expected = line
    verdict = check_final(DETECTOR, data, suffix)
    if data.endswith(b"\n"):
        assert verdict == Match(expected)
        for n in range(len(data)):
            assert DETECTOR.detect(data[:n]) == NeedMore()
    else:  # cut at 255 bytes: too long
        assert verdict == NoMatch("identification line longer than 255 bytes")


test_generated_lines, test_generated_lines_slow = fast_and_slow(lines(), st.binary(max_size=16))(
    _generated_lines_match
)
