"""
Detects an SSH client from its identification line (RFC 4253 §4.2).

A server may send other lines before its identification, but a client may not, so
a client's first bytes are ``SSH-``: anything else is a NoMatch from the first byte
that differs. Only protocol 2 clients match (``SSH-2.0-`` and the compatibility
``SSH-1.99-``); SSH-1 died with OpenSSH 7.6.

Deliberate leniencies, both shared with OpenSSH's own reader:

- the software version may contain ``-`` (JSch sends ``SSH-2.0-JSCH-0.1.54``), even
  though the RFC excludes it;
- the line may end with a bare LF instead of CR LF.

The line may not exceed 255 bytes including its end, and must be printable ASCII
(no NUL, no control characters, no bytes above 0x7E).

Facts: ``version`` (``"2.0"`` or ``"1.99"``) and ``software`` (the software
version, up to the first space: ``OpenSSH_9.2p1``).
"""

from __future__ import annotations

import re

from zope.interface import implementer

from gatekeep.interfaces import IDetector
from gatekeep.values import Match, NeedMore, NoMatch

__all__ = ["MAX_LINE", "SSHDetector"]

#: RFC 4253 §4.2: "The maximum length of the string is 255 characters, including
#: the Carriage Return and Line Feed."
MAX_LINE = 255
_STARTS = (b"SSH-2.0-", b"SSH-1.99-")
# Printable ASCII up to the line end: the software version stops at the first space,
# comments may hold spaces.
_SOFTWARE = re.compile(rb"[\x21-\x7e]*")
_COMMENTS = re.compile(rb"[\x20-\x7e]*")


@implementer(IDetector)
class SSHDetector:
    """Matches once the whole identification line, up to its LF, has arrived."""

    name = "ssh"
    max_prefix = MAX_LINE
    #: The keys a route's ``match.ssh`` table may test; the config loader rejects others.
    facts = ("version", "software")

    def detect(self, prefix: bytes) -> Match | NoMatch | NeedMore:
        view = prefix[:MAX_LINE]
        start = next((s for s in _STARTS if view[: len(s)] == s[: len(view)]), None)
        if start is None:
            if view[:4] != b"SSH-"[: len(view)]:
                return NoMatch("does not start with SSH-")
            return NoMatch("not SSH protocol 2.0 or 1.99")
        if len(view) <= len(start):
            return NeedMore()
        software = _SOFTWARE.match(view, len(start))
        assert software is not None  # the pattern matches the empty string
        end = software.end()
        if end == len(start):
            return NoMatch("empty software version")
        if view[end : end + 1] == b" ":
            comments = _COMMENTS.match(view, end)
            assert comments is not None
            end = comments.end()
        verdict = self._line_end(view, end)
        if verdict is not None:
            return verdict
        return Match(
            facts={
                "version": start[4:-1].decode("ascii"),
                "software": software.group().decode("ascii"),
            }
        )

    def _line_end(self, view: bytes, end: int) -> NoMatch | NeedMore | None:
        """None if the line ends properly at ``end``; else why not (yet)."""
        rest = view[end : end + 2]
        if rest == b"\r\n" or rest.startswith(b"\n"):
            return None
        if rest in (b"", b"\r"):
            if len(view) >= MAX_LINE:
                return NoMatch(f"identification line longer than {MAX_LINE} bytes")
            return NeedMore()
        return NoMatch("control or non-ASCII character in the identification line")
