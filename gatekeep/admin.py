"""
The ``[admin]`` listener: ``/metrics``, ``/status``, ``/health``.

Everything is rendered in the reactor thread from in-memory state (no WSGI
thread pool, unlike prometheus-client's own Twisted resource), so a scrape sees
a consistent picture and costs no thread hand-off.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from twisted.web.resource import Resource
from twisted.web.server import Request, Site

from gatekeep import metrics
from gatekeep.status import Snapshot, render_status

__all__ = ["admin_site"]


class _Leaf(Resource):
    isLeaf = True

    def __init__(self, content_type: str, body: Callable[[], bytes]) -> None:
        super().__init__()
        self._type = content_type
        self._body = body

    def render_GET(self, request: Request) -> bytes:
        request.setHeader(b"content-type", self._type.encode())
        request.setHeader(b"cache-control", b"no-store")
        return self._body()

    def render_HEAD(self, request: Request) -> bytes:
        return self.render_GET(request)


class _Index(Resource):
    def render_GET(self, request: Request) -> bytes:
        request.setHeader(b"content-type", b"text/html; charset=utf-8")
        return (b'<!DOCTYPE html><title>gatekeep</title><ul><li><a href="/status">status</a>'
                b'<li><a href="/metrics">metrics</a><li><a href="/health">health</a></ul>')


class _QuietSite(Site):
    noisy = False
    displayTracebacks = False

    def log(self, request: Any) -> None:
        """No access log: a scrape every few seconds would drown the connection lines."""


def admin_site(snapshot: Callable[[], Snapshot]) -> Site:
    root: Any = Resource()
    root.putChild(b"", _Index())
    root.putChild(b"metrics", _Leaf(metrics.CONTENT_TYPE, metrics.exposition))
    root.putChild(b"status", _Leaf("text/html; charset=utf-8",
                                   lambda: render_status(snapshot())))
    root.putChild(b"health", _Leaf("text/plain; charset=utf-8", lambda: b"ok\n"))
    return _QuietSite(root)
