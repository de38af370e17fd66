"""
The PROXY protocol preamble as facts: what a load balancer in front told us.

Unlike the other detectors this one never competes for a connection: the chain
reads the header itself (see :mod:`gatekeep.preamble`) on listeners that expect it
from trusted proxies, then offers this detector's verdict to routes that say
``match.proxy = {...}``. The detector exists so that those tables are checked like
any other, and so that ``gatekeep explain`` can show what a header says.
"""

from __future__ import annotations

from typing import Final

from zope.interface import implementer

from gatekeep.detectors.tls import host_name, protocol_name
from gatekeep.interfaces import IDetector
from gatekeep.proxyproto import (
    Incomplete,
    Invalid,
    NotProxy,
    ProxyHeader,
    decode_ssl,
    parse,
)
from gatekeep.proxyproto import tlv as t
from gatekeep.proxyproto.v2 import MAX_V2_LENGTH
from gatekeep.values import FactValue, Match, NeedMore, NoMatch

__all__ = ["PREAMBLE", "ProxyDetector", "header_facts"]

#: The detector name the chain treats as a preamble rather than a protocol.
PREAMBLE: Final = "proxy"

FACTS: Final = (
    "version", "command", "family", "alpn", "authority", "unique_id", "netns", "ssl",
    "ssl_version", "ssl_cipher", "ssl_cn", "ssl_sig_alg", "ssl_key_alg", "ssl_client_cert",
    "ssl_verified",
)


def _opaque(raw: bytes) -> str:
    """Visible ASCII as it is, anything else as ``0x`` + hex (safe in facts and logs)."""
    return protocol_name(raw)


def header_facts(header: ProxyHeader) -> dict[str, FactValue]:
    """
    The facts of a header: its form, and the TLVs routes and logs may use.

    Only TLVs present appear (a fact that is absent never matches a route).
    """
    facts: dict[str, FactValue] = {
        "version": header.version,
        "command": header.command.name.lower(),
        "family": header.family.name.lower(),
    }
    alpn = header.tlv(t.ALPN)
    if alpn is not None:
        facts["alpn"] = protocol_name(alpn)
    authority = header.tlv(t.AUTHORITY)
    if authority is not None:
        name = host_name(authority)
        if name is not None:
            facts["authority"] = name
    unique_id = header.tlv(t.UNIQUE_ID)
    if unique_id is not None:
        facts["unique_id"] = _opaque(unique_id)
    netns = header.tlv(t.NETNS)
    if netns is not None:
        facts["netns"] = _opaque(netns)
    ssl = header.tlv(t.SSL)
    if ssl is not None:
        info = decode_ssl(ssl)  # the parser already validated it
        facts["ssl"] = bool(info.client & t.CLIENT_SSL)
        cert = bool(info.client & (t.CLIENT_CERT_CONN | t.CLIENT_CERT_SESS))
        facts["ssl_client_cert"] = cert
        facts["ssl_verified"] = cert and info.verify == 0
        for key, value in (("ssl_version", info.version), ("ssl_cipher", info.cipher),
                           ("ssl_cn", info.cn), ("ssl_sig_alg", info.sig_alg),
                           ("ssl_key_alg", info.key_alg)):
            if value is not None:
                facts[key] = value
    return facts


@implementer(IDetector)
class ProxyDetector:
    """
    Matches a complete, valid PROXY v1 or v2 header at the start of the bytes.

    Facts: ``version`` (1 or 2), ``command`` (``proxy``/``local``), ``family``
    (``tcp4``, ``tcp6``, ``unix_stream``, ``unspec``...), and from v2 TLVs:
    ``alpn``, ``authority`` (a validated host name), ``unique_id``, ``netns``,
    ``ssl`` (the client used TLS), ``ssl_version``, ``ssl_cipher``, ``ssl_cn``,
    ``ssl_sig_alg``, ``ssl_key_alg``, ``ssl_client_cert``, ``ssl_verified``.
    """

    name = PREAMBLE
    max_prefix = MAX_V2_LENGTH
    facts = FACTS

    def detect(self, prefix: bytes) -> Match | NoMatch | NeedMore:
        result = parse(prefix)
        if isinstance(result, Incomplete):
            return NeedMore()
        if isinstance(result, NotProxy):
            return NoMatch("no PROXY signature")
        if isinstance(result, Invalid):
            return NoMatch(result.reason)
        return Match(facts=header_facts(result), consumed=result.length)
