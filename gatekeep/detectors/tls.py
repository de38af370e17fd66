"""
Detects TLS from the client's ClientHello, and reports what routes need from it.

Routing by SNI and ALPN only works if the whole ClientHello is read, however it was
split into TCP segments and TLS records; the parsing lives in
:mod:`gatekeep.detectors._clienthello`, this module turns its result into a verdict
and into facts that are safe, validated text (names are never passed on as bytes).
"""

from __future__ import annotations

from typing import Final

from zope.interface import implementer

from gatekeep.detectors._clienthello import (
    CONTENT_HANDSHAKE,
    ClientHello,
    Incomplete,
    Oversized,
    Rejected,
    parse_client_hello,
)
from gatekeep.interfaces import IDetector
from gatekeep.values import FactValue, Match, NeedMore, NoMatch

__all__ = ["TLSDetector", "host_name", "protocol_name", "version_name"]

_VERSION_NAMES: Final = {
    0x0300: "SSLv3",
    0x0301: "TLSv1.0",
    0x0302: "TLSv1.1",
    0x0303: "TLSv1.2",
    0x0304: "TLSv1.3",
}
_LDH: Final = frozenset(b"abcdefghijklmnopqrstuvwxyz0123456789-")
_HEX: Final = frozenset(b"0123456789abcdef")


def version_name(version: int) -> str:
    """Known versions by their usual name; anything else (drafts, DTLS) as hex."""
    return _VERSION_NAMES.get(version, f"0x{version:04x}")


def protocol_name(raw: bytes) -> str:
    """
    An ALPN protocol id as text, without letting arbitrary bytes into facts and logs.

    Visible ASCII (0x21-0x7e, as every registered id is) stays as it is; anything else
    becomes ``0x`` and its hex, which can still be listed in a route.
    """
    if raw and all(0x21 <= b <= 0x7E for b in raw):
        return raw.decode("ascii")
    return "0x" + raw.hex()


def host_name(raw: bytes) -> str | None:
    """
    The SNI host name in canonical form, or None when it is not a valid DNS name.

    Only LDH labels are accepted (internationalised names arrive as IDNA A-labels), so
    the text is lowercased ASCII with no trailing dot, labels of 1-63 characters and at
    most 253 in all. RFC 6066 forbids IP literals as SNI: names whose last label is
    numeric (how URL parsers tell an IPv4 address) are refused; IPv6 has ``:``.
    """
    if len(raw) > 254:
        return None
    name = raw.lower()
    if name.endswith(b"."):
        name = name[:-1]
    if not 0 < len(name) <= 253:
        return None
    labels = name.split(b".")
    for label in labels:
        if not 0 < len(label) <= 63 or not _LDH.issuperset(label):
            return None
        if label[0] == 0x2D or label[-1] == 0x2D:  # no leading or trailing hyphen
            return None
    last = labels[-1]
    if last.isdigit() or (last.startswith(b"0x") and _HEX.issuperset(last[2:])):
        return None
    return name.decode("ascii")


def _facts(hello: ClientHello) -> dict[str, FactValue]:
    if hello.supported_versions is not None:
        offered = sorted(set(hello.supported_versions), reverse=True)
    else:
        offered = [hello.legacy_version]
    return {
        "sni": None if hello.server_name is None else host_name(hello.server_name),
        "alpn": tuple(protocol_name(p) for p in hello.alpn),
        "versions": tuple(version_name(v) for v in offered),
        "ech": hello.ech,
    }


_NOT_TLS = NoMatch("not a TLS handshake record")


@implementer(IDetector)
class TLSDetector:
    """
    Matches a TLS connection once its whole ClientHello has arrived.

    Facts: ``sni`` (validated host name or None), ``alpn`` (the client's protocols in
    its order), ``versions`` (offered, highest first) and ``ech`` (an
    encrypted_client_hello extension was sent, real or GREASE). A hello too large to
    fit in ``max_prefix`` still matches, with empty facts and ``truncated=True``.
    """

    name = "tls"
    max_prefix = 16384
    #: The keys a route's ``match.tls`` table may test; the config loader rejects others.
    facts = ("sni", "alpn", "versions", "ech", "truncated")

    def detect(self, prefix: bytes) -> Match | NoMatch | NeedMore:
        if prefix and prefix[0] != CONTENT_HANDSHAKE:
            # Most plain-text connections: what the parser would say, without parsing.
            return _NOT_TLS
        result = parse_client_hello(prefix, self.max_prefix)
        if isinstance(result, Incomplete):
            return NeedMore()
        if isinstance(result, Rejected):
            return NoMatch(result.reason)
        if isinstance(result, Oversized):
            return Match(
                facts={"sni": None, "alpn": (), "versions": (), "ech": False, "truncated": True}
            )
        return Match(facts=_facts(result))
