"""
The ``http = "SITE"`` action: the HTTP reverse proxy of ``[http.SITE]``.

The connection's bytes (already detected as HTTP, plain or decrypted by
``terminate``) are served by :mod:`gatekeep.http`: HTTP/1.x here, HTTP/2 when the
client starts with the HTTP/2 preface (ALPN ``h2`` after ``terminate``).
"""

from __future__ import annotations

import weakref
from typing import Any

import attrs
from twisted.internet.endpoints import clientFromString
from twisted.internet.interfaces import IStreamClientEndpoint
from twisted.internet.protocol import Protocol
from zope.interface import implementer

from gatekeep.detectors.http import H2_PREFACE
from gatekeep.http.accesslog import AccessLog
from gatekeep.http.server import HTTP1Connection
from gatekeep.http.settings import HTTPSite
from gatekeep.http.upstream import Pool
from gatekeep.interfaces import ITarget
from gatekeep.values import Inbound

__all__ = ["HTTPTarget"]


def _speaks_h2(inbound: Inbound) -> bool:
    """HTTP/2: its preface was detected, or TLS (``terminate``) negotiated ALPN ``h2``."""
    if inbound.facts.get("version") == "2" or inbound.prefix.startswith(H2_PREFACE):
        return True
    get_handle = getattr(inbound.transport, "getHandle", None)
    try:
        handle = get_handle() if get_handle is not None else None
        # A plain socket has no ALPN: asked without raising (and catching) an error.
        alpn = getattr(handle, "get_alpn_proto_negotiated", None)
        negotiated = alpn() if alpn is not None else None
    except Exception:  # noqa: BLE001 - not a pyOpenSSL connection: not TLS
        return False
    return negotiated == b"h2"


@implementer(ITarget)
@attrs.define(eq=False)
class HTTPTarget:
    """
    `http = "SITE"`: serve the connection with the HTTP reverse proxy `[http.SITE]`
    (its routes send requests to backends or answer them; see `[http.NAME]`).
    """

    site: HTTPSite
    access_log: AccessLog | None = attrs.field(default=None)
    _endpoints: weakref.WeakKeyDictionary[Any, dict[str, IStreamClientEndpoint]] = attrs.field(
        factory=weakref.WeakKeyDictionary, init=False, repr=False)
    _pools: weakref.WeakKeyDictionary[Any, Pool] = attrs.field(
        factory=weakref.WeakKeyDictionary, init=False, repr=False)

    def __attrs_post_init__(self) -> None:
        if self.access_log is None and self.site.access_log is not None:
            self.access_log = AccessLog(self.site.access_log)

    def endpoint(self, reactor: Any, to: str) -> IStreamClientEndpoint:
        """The parsed endpoint for ``to`` (parsed once per reactor, not per request)."""
        known = self._endpoints.setdefault(reactor, {})
        endpoint = known.get(to)
        if endpoint is None:
            endpoint = known[to] = clientFromString(reactor, to)
        return endpoint

    def pool(self, reactor: Any) -> Pool:
        """Idle keep-alive backend connections, shared by the site's client connections."""
        pool = self._pools.get(reactor)
        if pool is None:
            pool = self._pools[reactor] = Pool(reactor)
        return pool

    def attach(self, inbound: Inbound) -> Protocol:
        inbound.record.backend = f"http:{self.site.name}"
        if _speaks_h2(inbound):
            from gatekeep.http.h2server import H2Connection

            return H2Connection(self, inbound)
        return HTTP1Connection(self, inbound)

    def describe(self) -> str:
        site = self.site
        return f"http site {site.name!r} ({len(site.routes)} route(s))"
