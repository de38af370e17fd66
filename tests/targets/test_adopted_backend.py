"""
A ``tcp:`` backend of a relay that will not splice (the client is a TLS layer, a
shaped stream, a test transport) is connected with a bare socket and relayed
through a Twisted transport made from it, on the real reactor.
"""

from __future__ import annotations

from typing import Any

from twisted.internet import reactor as _reactor
from twisted.internet.address import IPv4Address
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IHalfCloseableProtocol
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.testing import StringTransport
from twisted.trial.unittest import TestCase
from zope.interface import implementer

from gatekeep.detectors.http import HTTPDetector
from gatekeep.sniff import ListenerRuntime, SniffingProtocol
from gatekeep.targets.forward import ForwardTarget, _AdoptedBackend
from gatekeep.values import Route, Service

REACTOR: Any = _reactor
REQUEST = b"GET / HTTP/1.1\r\nHost: example.test\r\n\r\n"


class Client(StringTransport):
    """The client's side as the relay sees it; says when the backend's bytes came."""

    def __init__(self) -> None:
        super().__init__(peerAddress=IPv4Address("TCP", "198.51.100.4", 5000),
                         hostAddress=IPv4Address("TCP", "127.0.0.1", 443))
        self.waiting: tuple[bytes, Deferred[None]] | None = None
        self.closed: Deferred[None] = Deferred()

    def write(self, data: bytes) -> None:
        super().write(data)
        if self.waiting is not None and self.value() == self.waiting[0]:
            self.waiting[1].callback(None)

    def loseConnection(self) -> None:
        super().loseConnection()
        if not self.closed.called:
            self.closed.callback(None)

    def unregisterProducer(self) -> None:
        self.producer = None  # as a socket transport: also when none is registered

    def wait_for(self, data: bytes) -> Deferred[None]:
        done: Deferred[None] = Deferred()
        self.waiting = (data, done)
        return done


@implementer(IHalfCloseableProtocol)
class Backend(Protocol):
    def __init__(self, got_request: Deferred[Protocol], got_eof: Deferred[bytes]) -> None:
        self.got_request = got_request
        self.got_eof = got_eof
        self.received = b""

    def dataReceived(self, data: bytes) -> None:
        self.received += data
        if self.received == REQUEST:
            self.got_request.callback(self)

    def readConnectionLost(self) -> None:
        self.got_eof.callback(self.received)

    def writeConnectionLost(self) -> None:
        pass


class AdoptedBackendTests(TestCase):
    async def test_relays_both_ways_and_half_closes(self) -> None:
        got_request: Deferred[Protocol] = Deferred()
        got_eof: Deferred[bytes] = Deferred()
        port = REACTOR.listenTCP(0, Factory.forProtocol(lambda: Backend(got_request, got_eof)),
                                 interface="127.0.0.1")
        self.addCleanup(port.stopListening)
        target = ForwardTarget(to=f"tcp:127.0.0.1:{port.getHost().port}")
        runtime = ListenerRuntime.build(
            "edge", Service("svc", (Route("http", "http", (), target),)),
            {"http": HTTPDetector()}, 5.0, REACTOR)
        sniffer = SniffingProtocol(runtime)
        client = Client()
        sniffer.makeConnection(client)
        sniffer.dataReceived(REQUEST)
        backend: Any = await got_request
        relay: Any = sniffer.attached.relay  # type: ignore[union-attr]
        self.assertIsInstance(relay.backend, _AdoptedBackend)
        answered = client.wait_for(b"HTTP/1.1 200 OK\r\n\r\n")
        backend.transport.write(b"HTTP/1.1 200 OK\r\n\r\n")
        await answered
        sniffer.readConnectionLost()  # the client's EOF reaches the backend as a FIN
        self.assertEqual(await got_eof, REQUEST)
        backend.transport.loseConnection()  # the backend's FIN: both ways are done
        await client.closed
        self.assertEqual(relay.record.bytes_out, len(b"HTTP/1.1 200 OK\r\n\r\n"))
