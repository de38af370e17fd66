"""
Detects a plain XMPP stream (RFC 6120 §4.7) from its opening stream header.

Clients (c2s), servers (s2s) and components all open with a ``<stream:stream>``
start tag, optionally after a UTF-8 byte order mark and an XML declaration. The
detector reads exactly as much XML as that prologue allows and no more: a comment,
a processing instruction, a DOCTYPE (all forbidden in XMPP, RFC 6120 §11.1) or any
other element is a NoMatch, as is anything that is not namespace-well-formed, so a
stream Prosody or ejabberd would refuse is never routed to them.

Facts (all may be None):

``to``
    The domain the stream is addressed to: a host name in canonical spelling
    (lower case, A-labels, no trailing dot) or an IP literal (IPv6 without
    brackets); None if absent or not a valid domain.
``from``
    The sender's JID as sent (after entity decoding); None if absent, empty, not
    printable or longer than 3071 bytes (RFC 7622 §3.1).
``version``
    ``major.minor`` as sent (``"1.0"``); None if absent or malformed.
``ns``
    The default namespace: ``jabber:client``, ``jabber:server``,
    ``jabber:component:accept``; for an unprefixed ``<stream>`` element, the
    streams namespace itself.
"""

from __future__ import annotations

import codecs
import re

from zope.interface import implementer

from gatekeep.detectors._names import normalise_host
from gatekeep.detectors._xmlscan import Incomplete, Rejected, Scanner
from gatekeep.interfaces import IDetector
from gatekeep.values import FactValue, Match, NeedMore, NoMatch

__all__ = ["STREAMS_NS", "XMPPDetector"]

STREAMS_NS = "http://etherx.jabber.org/streams"
BOM = b"\xef\xbb\xbf"
MAX_JID_BYTES = 3071
MAX_NS_CHARS = 1024
_VERSION = re.compile(r"[0-9]{1,9}\.[0-9]{1,9}")


def _domain(value: str | None) -> str | None:
    return None if value is None else normalise_host(value)


def _jid(value: str | None) -> str | None:
    if not value or not value.isprintable():
        return None
    if len(value.encode("utf-8")) > MAX_JID_BYTES:
        return None
    return value


def _version(value: str | None) -> str | None:
    return value if value is not None and _VERSION.fullmatch(value) else None


def _namespace(value: str | None) -> str | None:
    if not value or len(value) > MAX_NS_CHARS or not value.isprintable():
        return None
    return value


def _decode(view: bytes) -> str:
    """
    The text of ``view``, leaving out a multi-byte character cut off at its end.

    Invalid UTF-8 becomes lone surrogates, which the scanner refuses if (and only
    if) they are inside the header: bytes after the ``>`` must not change a Match.
    """
    decoder = codecs.getincrementaldecoder("utf-8")("surrogateescape")
    return decoder.decode(view, final=False)


def _facts(attributes: dict[str, str]) -> dict[str, FactValue]:
    return {
        "to": _domain(attributes.get("to")),
        "from": _jid(attributes.get("from")),
        "version": _version(attributes.get("version")),
        "ns": _namespace(attributes.get("xmlns")),
    }


def _check_namespace(prefix: str, namespaces: dict[str, str]) -> None:
    declared = namespaces.get(prefix)
    if declared is None and not prefix:
        raise Rejected("stream element is not in the streams namespace")
    if declared is None:
        raise Rejected(f"stream prefix {prefix!r} is not declared")
    if declared != STREAMS_NS:
        raise Rejected("stream element is not in the streams namespace")


def _scan_header(text: str) -> dict[str, str]:
    """
    Read the prologue and the stream start tag; return its attributes.

    Raises Incomplete while the tag is unfinished, Rejected once it cannot be one.
    """
    scanner = Scanner(text)
    if scanner.starts_xml_declaration():
        scanner.xml_declaration()
    scanner.skip_space()
    scanner.expect_start_tag()
    name = scanner.name()
    stream_prefix, _, local = name.rpartition(":")
    if local != "stream":
        raise Rejected(f"first element is <{name[:40]}>, not a stream")
    declaration = f"xmlns:{stream_prefix}" if stream_prefix else "xmlns"
    attributes: dict[str, str] = {}
    for key, value in scanner.attributes():
        if key in attributes:
            raise Rejected(f"duplicate attribute {key[:40]}")
        if key == declaration and value != STREAMS_NS:
            raise Rejected("stream element is not in the streams namespace")
        attributes[key] = value
    namespaces = {"xml": "http://www.w3.org/XML/1998/namespace"}
    for key, value in attributes.items():
        if key == "xmlns":
            namespaces[""] = value
        elif key.startswith("xmlns:"):
            if not value:
                raise Rejected("empty namespace declaration")
            namespaces[key[6:]] = value
    for key in attributes:
        prefix = key.partition(":")[0] if ":" in key else ""
        if prefix and prefix != "xmlns" and prefix not in namespaces:
            raise Rejected(f"attribute prefix {prefix[:40]!r} is not declared")
    _check_namespace(stream_prefix, namespaces)
    return attributes


@implementer(IDetector)
class XMPPDetector:
    """
    Matches once the whole stream start tag (up to its ``>``) has arrived.

    The header must end within :attr:`max_prefix` bytes; real ones take 100 to 300.
    """

    name = "xmpp"
    max_prefix = 4096
    #: The keys a route's ``match.xmpp`` table may test; the config loader rejects others.
    facts = ("to", "from", "version", "ns")

    def detect(self, prefix: bytes) -> Match | NoMatch | NeedMore:
        view = prefix[: self.max_prefix]
        if len(view) < len(BOM) and BOM.startswith(view):
            return NeedMore()
        if view.startswith(BOM):
            view = view[len(BOM) :]
        try:
            attributes = _scan_header(_decode(view))
        except Rejected as rejected:
            return NoMatch(rejected.reason)
        except Incomplete:
            if len(prefix) >= self.max_prefix:
                return NoMatch(f"no stream header within {self.max_prefix} bytes")
            return NeedMore()
        return Match(facts=_facts(attributes))
