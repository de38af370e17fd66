"""Backend connect timeouts share one queue per timeout, not a DelayedCall per connection."""

from __future__ import annotations

from twisted.internet.address import IPv4Address
from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.trial.unittest import SynchronousTestCase

from gatekeep.detectors.http import HTTPDetector
from gatekeep.sniff import ListenerRuntime, SniffingProtocol
from gatekeep.targets.forward import ForwardTarget
from gatekeep.values import Route, Service

REQUEST = b"GET / HTTP/1.1\r\nHost: example.test\r\n\r\n"


class ConnectDeadlineTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.reactor = MemoryReactorClock()
        route = Route("http", "http", (), ForwardTarget(to="tcp:127.0.0.1:8080"),
                      connect_timeout=3.0)
        self.runtime = ListenerRuntime.build(
            "edge", Service("svc", (route,)), {"http": HTTPDetector()}, 5.0, self.reactor)

    def connect(self) -> StringTransport:
        protocol = SniffingProtocol(self.runtime)
        client = StringTransport(peerAddress=IPv4Address("TCP", "198.51.100.4", 5000))
        protocol.makeConnection(client)
        protocol.dataReceived(REQUEST)
        return client

    def test_one_timer_for_many_connects_each_timed_out_on_time(self) -> None:
        first = self.connect()
        self.reactor.advance(1.0)
        later = [self.connect() for _ in range(3)]
        # The detect deadlines are gone (decided); the connect deadlines wait on one call.
        self.assertEqual(len(self.reactor.getDelayedCalls()), 1)
        self.reactor.advance(2.0)
        self.assertTrue(first.value().startswith(b"HTTP/1.1 504 Gateway Timeout\r\n"))
        self.assertEqual([c.value() for c in later], [b""] * 3)
        self.reactor.advance(0.999)
        self.assertEqual([c.value() for c in later], [b""] * 3)
        self.reactor.advance(0.001)
        for client in later:
            self.assertTrue(client.value().startswith(b"HTTP/1.1 504 Gateway Timeout\r\n"))
        self.assertEqual(self.reactor.getDelayedCalls(), [])

    def test_connected_backend_leaves_no_timer(self) -> None:
        client = self.connect()
        [(_host, _port, factory, _timeout, _bind)] = self.reactor.tcpClients
        backend = factory.buildProtocol(None)
        assert backend is not None
        backend.makeConnection(StringTransport())
        self.assertEqual(self.reactor.getDelayedCalls(), [])
        self.reactor.advance(10.0)
        self.assertEqual(client.value(), b"")
