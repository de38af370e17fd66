"""``tcp:`` backends are connected with ``connectTCP`` directly, with the endpoint's arguments."""

from __future__ import annotations

from twisted.internet.address import IPv4Address
from twisted.internet.error import ConnectionRefusedError
from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase

from gatekeep.detectors.http import HTTPDetector
from gatekeep.relay import BackendSide
from gatekeep.sniff import ListenerRuntime, SniffingProtocol
from gatekeep.targets.forward import ForwardTarget
from gatekeep.values import Route, Service

REQUEST = b"GET / HTTP/1.1\r\nHost: example.test\r\n\r\n"


class DirectConnectTests(SynchronousTestCase):
    def connect(self, to: str, connect_timeout: float | None = 3.0,
                ) -> tuple[MemoryReactorClock, SniffingProtocol, StringTransport]:
        reactor = MemoryReactorClock()
        route = Route("http", "http", (), ForwardTarget(to=to), connect_timeout=connect_timeout)
        runtime = ListenerRuntime.build(
            "edge", Service("svc", (route,)), {"http": HTTPDetector()}, 5.0, reactor)
        protocol = SniffingProtocol(runtime)
        client = StringTransport(peerAddress=IPv4Address("TCP", "198.51.100.4", 5000))
        protocol.makeConnection(client)
        protocol.dataReceived(REQUEST)
        return reactor, protocol, client

    def test_tcp_uses_the_endpoints_arguments_and_builds_the_backend_side_itself(self) -> None:
        reactor, _protocol, client = self.connect(
            "tcp:host=127.0.0.1:port=8080:timeout=7:bindAddress=127.0.0.2", None)
        [(host, port, factory, timeout, bind)] = reactor.tcpClients
        self.assertEqual((host, port, timeout, bind), ("127.0.0.1", 8080, 7, ("127.0.0.2", 0)))
        backend = factory.buildProtocol(None)
        assert isinstance(backend, BackendSide)  # no endpoint wrapper in between
        transport = StringTransport()
        backend.makeConnection(transport)
        self.assertEqual(transport.value(), REQUEST)
        backend.dataReceived(b"HTTP/1.1 204 No Content\r\n\r\n")
        self.assertEqual(client.value(), b"HTTP/1.1 204 No Content\r\n\r\n")

    def test_the_connector_timer_only_when_it_would_come_first(self) -> None:
        # connect_timeout 3 s comes before the endpoint's 30 s (or 7 s): no connector timer.
        for to, expected in (("tcp:127.0.0.1:8080", None), ("tcp:127.0.0.1:8080:timeout=7", None),
                             ("tcp:127.0.0.1:8080:timeout=2", 2)):
            reactor, _protocol, _client = self.connect(to)
            [(_h, _p, _f, timeout, _b)] = reactor.tcpClients
            self.assertEqual(timeout, expected, to)

    def test_a_failure_after_the_timeout_is_reported_once(self) -> None:
        reactor, _protocol, client = self.connect("tcp:127.0.0.1:8080")
        [(_h, _p, factory, _t, _b)] = reactor.tcpClients
        reactor.advance(3.0)
        self.assertTrue(client.value().startswith(b"HTTP/1.1 504 Gateway Timeout\r\n"))
        # A real connector reports the stop as a failure too: ignored, no second reply.
        before = client.value()
        factory.clientConnectionFailed(reactor.connectors[0], Failure(ConnectionRefusedError()))
        self.assertEqual(client.value(), before)

    def test_other_kinds_keep_their_endpoint(self) -> None:
        reactor, _protocol, _client = self.connect("unix:/nonexistent/backend.sock")
        self.assertEqual(reactor.tcpClients, [])
        [(path, factory, _timeout, _check)] = reactor.unixClients
        self.assertEqual(path, "/nonexistent/backend.sock")
        self.assertNotIsInstance(factory.buildProtocol(None), BackendSide)  # wrapped
