"""
A small twisted.web site that gatekeep runs in-process (``examples/in-process-app.toml``).

The ``app`` action hands a detected connection straight to a Twisted protocol factory,
with no second TCP hop. This site's channels provide
:class:`gatekeep.interfaces.IInboundReceiver`, so each page can show what gatekeep
detected and who the real client is.

Run it with ``examples/`` on the import path::

    PYTHONPATH=examples twistd -n gatekeep --config examples/in-process-app.toml
"""

from __future__ import annotations

import html

from twisted.web.http import HTTPChannel
from twisted.web.resource import Resource
from twisted.web.server import Request, Site
from zope.interface import implementer

from gatekeep.addresses import format_address
from gatekeep.interfaces import IInboundReceiver
from gatekeep.values import Inbound

__all__ = ["HelloChannel", "HelloPage", "HelloSite", "make_site"]


@implementer(IInboundReceiver)
class HelloChannel(HTTPChannel):
    """An HTTP channel that keeps what gatekeep told it about the connection."""

    inbound: Inbound | None = None

    def inboundReceived(self, inbound: Inbound) -> None:
        self.inbound = inbound


class HelloPage(Resource):
    """Answers every path with what gatekeep detected for this connection."""

    isLeaf = True

    def render_GET(self, request: Request) -> bytes:
        inbound: Inbound | None = getattr(request.channel, "inbound", None)
        request.setHeader(b"content-type", b"text/html; charset=utf-8")
        if inbound is None:
            return b"<p>Hello! (not reached through gatekeep)</p>\n"
        facts = "".join(
            f"<li>{html.escape(key)} = {html.escape(repr(value))}</li>"
            for key, value in inbound.facts.items()
        )
        page = (
            "<h1>Hello from inside gatekeep</h1>\n"
            f"<p>client {html.escape(format_address(inbound.client))}, "
            f"listener {html.escape(inbound.listener)}, route {html.escape(inbound.route.name)}, "
            f"detected as {html.escape(inbound.detector or 'nothing')}:</p>\n"
            f"<ul>{facts}</ul>\n"
        )
        return page.encode("utf-8")


class HelloSite(Site):
    """
    A site whose connections are :class:`HelloChannel` instances.

    Twisted's default wraps each channel in a protocol that can switch to HTTP/2,
    and gatekeep offers the inbound to the protocol the factory builds: so build
    the HTTP/1.1 channel itself (HTTP/2 needs TLS with ALPN anyway).
    """

    protocol = HelloChannel  # type: ignore[assignment]


def make_site() -> Site:
    """The factory named in the config: ``app = { factory = "hello_web:make_site" }``."""
    return HelloSite(HelloPage())
