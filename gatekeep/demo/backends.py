"""
The demo's in-process backends: each answers with what gatekeep detected.

They are reached through the ``app`` target, so each protocol learns the
detection facts through :class:`~gatekeep.interfaces.IInboundReceiver`.
"""

from __future__ import annotations

import functools
from typing import Any
from xml.sax.saxutils import escape, quoteattr

from twisted.internet import ssl
from twisted.internet.protocol import Factory, Protocol
from twisted.protocols.tls import TLSMemoryBIOFactory, TLSMemoryBIOProtocol
from zope.interface import implementer

from gatekeep.addresses import format_address
from gatekeep.connlog import format_facts
from gatekeep.demo.selfsigned import self_signed_pem
from gatekeep.interfaces import IInboundReceiver
from gatekeep.values import Inbound

__all__ = ["http_backend", "other_backend", "ssh_backend", "tls_backend", "xmpp_backend"]


def report(inbound: Inbound | None, extra: str = "") -> str:
    """The few lines every demo backend shows."""
    if inbound is None:
        return "gatekeep demo: no detection facts\n"
    port = inbound.server.port if hasattr(inbound.server, "port") else "PORT"
    lines = [
        "gatekeep demo: your connection was detected and routed.",
        f"  listener: {inbound.listener}",
        f"  client:   {format_address(inbound.client)}",
        f"  detector: {inbound.detector or 'none matched'}",
        f"  facts:    {format_facts(inbound.facts) or '-'}",
        f"  route:    {inbound.route.name}",
    ]
    if extra:
        lines.append(extra)
    lines += [
        "Try the other protocols on the same port:",
        f"  curl http://localhost:{port}/",
        f"  curl -k https://localhost:{port}/",
        f"  printf \"<stream:stream to='localhost' xmlns='jabber:client' "
        f"xmlns:stream='http://etherx.jabber.org/streams' version='1.0'>\" "
        f"| socat - TCP:localhost:{port}",
        f"  ssh -p {port} localhost",
        "",
    ]
    return "\n".join(lines)


@implementer(IInboundReceiver)
class _Reporter(Protocol):
    inbound: Inbound | None = None

    def inboundReceived(self, inbound: Inbound) -> None:
        self.inbound = inbound


class _HTTPReport(_Reporter):
    """Answers one HTTP request (once its head has arrived) with the report."""

    extra = ""

    def __init__(self) -> None:
        self._head: bytes | None = b""

    def dataReceived(self, data: bytes) -> None:
        if self._head is None:
            return
        head = self._head = self._head + data
        if b"\r\n\r\n" not in head and b"\n\n" not in head and len(head) < 16384:
            return
        self._head = None
        body = report(self.inbound, self.extra).encode()
        assert self.transport is not None
        self.transport.write(
            b"HTTP/1.1 200 OK\r\nContent-Type: text/plain; charset=utf-8\r\n"
            b"Content-Length: %d\r\nConnection: close\r\n\r\n%s" % (len(body), body))
        self.transport.loseConnection()


class _TLSReport(_HTTPReport):
    """The inner protocol of the TLS backend: also shows what TLS negotiated."""

    def dataReceived(self, data: bytes) -> None:
        # Application data only flows once the handshake is done, so ALPN is known.
        transport: Any = self.transport
        self.extra = "  (TLS terminated by the demo backend; negotiated ALPN: {})".format(
            (transport.negotiatedProtocol or b"none").decode("ascii", "replace"))
        super().dataReceived(data)


@implementer(IInboundReceiver)
class _DemoTLSProtocol(TLSMemoryBIOProtocol):
    def inboundReceived(self, inbound: Inbound) -> None:
        wrapped: Any = self.wrappedProtocol
        wrapped.inboundReceived(inbound)


class _XMPPReport(_Reporter):
    """Opens a stream and closes it with a stream error whose text is the report."""

    def connectionMade(self) -> None:
        inbound = self.inbound
        to = inbound.facts.get("to") if inbound else None
        sender = f" from={quoteattr(to)}" if isinstance(to, str) else ""
        text = escape(report(inbound))
        assert self.transport is not None
        self.transport.write((
            "<?xml version='1.0'?><stream:stream xmlns='jabber:client' "
            "xmlns:stream='http://etherx.jabber.org/streams' id='gatekeep-demo' "
            f"version='1.0'{sender}><stream:error><policy-violation "
            "xmlns='urn:ietf:params:xml:ns:xmpp-streams'/><text "
            f"xmlns='urn:ietf:params:xml:ns:xmpp-streams'>{text}</text></stream:error>"
            "</stream:stream>\n").encode())
        self.transport.loseConnection()


class _LinesReport(_Reporter):
    """Writes the report as plain lines and closes (SSH clients print such lines)."""

    def connectionMade(self) -> None:
        assert self.transport is not None
        self.transport.write(report(self.inbound).replace("\n", "\r\n").encode())
        self.transport.loseConnection()


@functools.cache
def _tls_options() -> ssl.CertificateOptions:
    cert_pem, key_pem = self_signed_pem("localhost")
    private = ssl.PrivateCertificate.loadPEM(cert_pem + key_pem)
    return ssl.CertificateOptions(
        privateKey=private.privateKey.original,
        certificate=private.original,
        acceptableProtocols=[b"http/1.1"],
    )


def _quiet(protocol: type[Protocol]) -> Factory:
    factory: Factory = Factory.forProtocol(protocol)
    factory.noisy = False
    return factory


def tls_backend() -> TLSMemoryBIOFactory:
    factory = TLSMemoryBIOFactory(_tls_options(), False, _quiet(_TLSReport))
    factory.protocol = _DemoTLSProtocol
    factory.noisy = False
    return factory


def http_backend() -> Factory:
    return _quiet(_HTTPReport)


def xmpp_backend() -> Factory:
    return _quiet(_XMPPReport)


def ssh_backend() -> Factory:
    return _quiet(_LinesReport)


def other_backend() -> Factory:
    return _quiet(_LinesReport)
