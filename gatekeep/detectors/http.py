"""
Detects a plaintext HTTP/1.0 or HTTP/1.1 request, or HTTP/2 with prior knowledge.

HTTP/1 matches only once the whole header section has arrived, because the fact
routes care most about, the Host header, may be its last line. The syntax is that
of RFC 9112, read strictly where leniency would let a client make gatekeep and the
backend disagree about a request (whitespace before a colon, obsolete line folding,
control characters, a request-target with spaces: all NoMatch), and leniently
where every common server is lenient:

- one empty line before the request line is skipped (RFC 9112 §2.2);
- a bare LF ends a line like CR LF does (RFC 9112 §2.2 allows it; nginx, HAProxy and
  Twisted accept it), but a CR must be followed by LF.

Facts for HTTP/1:

``method``
    As sent (a token of at most 32 characters).
``host`` / ``port``
    From the request-target when it is in absolute form (``GET http://h:1/ ...``) or
    authority form (``CONNECT h:443``), which RFC 9112 §3.2.2 makes override Host;
    otherwise from the Host header. The host is in canonical spelling (lower case,
    A-labels, no trailing dot, IPv6 without brackets); the port is None when not
    given. Both are None when the request has no usable authority: no Host, more
    than one Host (RFC 9112 §3.2 makes that a 400), userinfo, a bad port or name.
``path``
    The request-target exactly as sent, minus ``scheme://authority`` in absolute
    form (so ``http://h`` gives ``""``); ``*`` and CONNECT's authority as sent.
``version``
    ``"1.0"`` or ``"1.1"``.

The HTTP/2 connection preface (RFC 9113 §3.4) matches after its 24 bytes with
``version = "2"`` and the other facts None: HPACK-compressed headers are not read.
"""

from __future__ import annotations

import re

from zope.interface import implementer

from gatekeep.detectors._names import normalise_host
from gatekeep.interfaces import IDetector
from gatekeep.values import FactValue, Match, NeedMore, NoMatch

__all__ = ["H2_PREFACE", "HTTPDetector", "parse_authority"]

H2_PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
MAX_METHOD = 32
_TOKEN = re.compile(rb"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
_TARGET = re.compile(rb"[\x21-\x7e]+")
_FIELD_VALUE = re.compile(rb"[\t\x20-\x7e\x80-\xff]*")
_SCHEME = re.compile(rb"[A-Za-z][A-Za-z0-9+\-.]*://")
_VERSIONS = {b"HTTP/1.1": "1.1", b"HTTP/1.0": "1.0"}
_H2_FACTS: dict[str, FactValue] = {
    "method": None,
    "host": None,
    "port": None,
    "path": None,
    "version": "2",
}


class _Incomplete(Exception):
    """The bytes end before the request head does."""


class _Rejected(Exception):
    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def _line_end(view: bytes, pos: int, what: str) -> int:
    """The position after the CR LF (or bare LF) at ``pos``."""
    if view.startswith(b"\r\n", pos):
        return pos + 2
    if view.startswith(b"\n", pos):
        return pos + 1
    if view[pos:] in (b"", b"\r"):
        raise _Incomplete()
    raise _Rejected(what)


def _token(view: bytes, pos: int, what: str) -> int:
    """The end of the token at ``pos``; the token must be followed by something."""
    found = _TOKEN.match(view, pos)
    if found is None:
        if pos >= len(view):
            raise _Incomplete()
        raise _Rejected(f"{what}: not a token")
    if found.end() >= len(view):
        raise _Incomplete()
    return found.end()


def _check_target_start(target: bytes, method: bytes) -> None:
    first = target[:1]
    if first in (b"/", b"*") or method == b"CONNECT":
        return
    if not first.isalpha():
        raise _Rejected("request-target in no known form")


def _target_form(target: bytes, method: bytes) -> tuple[bytes | None, bytes]:
    """(authority or None, path) of a complete request-target."""
    if target.startswith(b"/") or target == b"*":
        return None, target
    scheme = _SCHEME.match(target)
    if scheme is not None:
        rest = target[scheme.end() :]
        end = len(rest)
        for stop in (b"/", b"?", b"#"):
            found = rest.find(stop)
            if found != -1:
                end = min(end, found)
        return rest[:end], rest[end:]
    if method == b"CONNECT":
        return target, target
    raise _Rejected("request-target in no known form")


def parse_authority(raw: bytes) -> tuple[str | None, int | None]:
    """(host, port) of ``host[:port]``, or (None, None) if it is not valid."""
    if not raw.isascii() or b"@" in raw:
        return None, None
    text = raw.decode("ascii")
    if text.startswith("["):
        host, bracket, rest = text.partition("]")
        host += bracket
    else:
        host, colon, port_text = text.partition(":")
        rest = colon + port_text
    port: int | None = None
    if rest:
        digits = rest[1:]
        if not rest.startswith(":") or not (digits == "" or digits.isdigit()):
            return None, None
        if digits:
            if len(digits) > 5 or not 0 < int(digits) <= 65535:
                return None, None
            port = int(digits)
    name = normalise_host(host)
    if name is None:
        return None, None
    return name, port


def _scan_request(view: bytes) -> dict[str, FactValue]:
    """The facts of a complete request head; raises while incomplete or invalid."""
    pos = 0
    if view.startswith(b"\r") or view.startswith(b"\n"):
        pos = _line_end(view, 0, "stray CR")
        if view.startswith(b"\r", pos) or view.startswith(b"\n", pos):
            raise _Rejected("more than one empty line before the request line")
    method_token = _TOKEN.match(view, pos)
    if pos < len(view) and method_token is None:
        raise _Rejected(f"first byte 0x{view[pos]:02x} cannot start a method")
    if method_token is not None and method_token.end() - pos > MAX_METHOD:
        raise _Rejected(f"method longer than {MAX_METHOD}")
    method_end = _token(view, pos, "method")
    method = view[pos:method_end]
    if view[method_end] != 0x20:
        raise _Rejected("no space after the method")
    target_start = method_end + 1
    found = _TARGET.match(view, target_start)
    if found is None:
        if target_start >= len(view):
            raise _Incomplete()
        raise _Rejected("empty or non-ASCII request-target")
    target = found.group()
    _check_target_start(target, method)
    if found.end() >= len(view):
        raise _Incomplete()
    if view[found.end()] in b"\r\n":
        raise _Rejected("request line without an HTTP version")
    if view[found.end()] != 0x20:
        raise _Rejected("control or non-ASCII character in the request line")
    authority, path = _target_form(target, method)
    version_start = found.end() + 1
    version_bytes = view[version_start : version_start + 8]
    if not any(known.startswith(version_bytes) for known in _VERSIONS):
        raise _Rejected("not HTTP/1.0 or HTTP/1.1")
    if len(version_bytes) < 8:
        raise _Incomplete()
    pos = _line_end(view, version_start + 8, "request line does not end after the version")
    hosts = []
    while True:
        if view[pos:] in (b"", b"\r"):
            raise _Incomplete()
        if view.startswith(b"\r\n", pos) or view.startswith(b"\n", pos):
            break
        if view[pos : pos + 1] in (b" ", b"\t"):
            raise _Rejected("obsolete line folding")
        name_end = _token(view, pos, "header field name")
        if view[name_end] != 0x3A:
            raise _Rejected("malformed header field name")
        value = _FIELD_VALUE.match(view, name_end + 1)
        assert value is not None  # the pattern matches the empty string
        if view[pos:name_end].lower() == b"host":
            hosts.append(value.group().strip(b" \t"))
        pos = _line_end(view, value.end(), "control character in a header field")
    if len(hosts) > 1:
        host, port = None, None
    elif authority is not None:
        host, port = parse_authority(authority)
    elif hosts:
        host, port = parse_authority(hosts[0])
    else:
        host, port = None, None
    return {
        "method": method.decode("ascii"),
        "host": host,
        "port": port,
        "path": path.decode("ascii"),
        "version": _VERSIONS[version_bytes],
    }


@implementer(IDetector)
class HTTPDetector:
    """
    Matches once the request head is complete (its empty line has arrived).

    The head must end within :attr:`max_prefix` bytes, the chain's global cap; most
    servers' own limit is 8 KiB to 16 KiB too.
    """

    name = "http"
    max_prefix = 16384
    #: The keys a route's ``match.http`` table may test; the config loader rejects others.
    facts = ("method", "host", "port", "path", "version")

    def detect(self, prefix: bytes) -> Match | NoMatch | NeedMore:
        if len(prefix) < len(H2_PREFACE) and H2_PREFACE.startswith(prefix):
            return NeedMore()
        if prefix.startswith(H2_PREFACE):
            return Match(facts=_H2_FACTS)
        try:
            facts = _scan_request(prefix[: self.max_prefix])
        except _Rejected as rejected:
            return NoMatch(rejected.reason)
        except _Incomplete:
            if len(prefix) >= self.max_prefix:
                return NoMatch(f"request head longer than {self.max_prefix} bytes")
            return NeedMore()
        return Match(facts=facts)
