"""The forward action on a memory reactor: replay, relay, and backend failures."""

from __future__ import annotations

from typing import Any

from twisted.internet.address import IPv4Address
from twisted.internet.error import ConnectionRefusedError
from twisted.internet.protocol import connectionDone
from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase

from gatekeep.detectors.http import HTTPDetector
from gatekeep.detectors.tls import TLSDetector
from gatekeep.detectors.xmpp import XMPPDetector
from gatekeep.sniff import ListenerRuntime, SniffingProtocol
from gatekeep.targets.forward import ForwardTarget
from gatekeep.values import Route, Service
from tests.helpers import captured_log

REQUEST = b"GET / HTTP/1.1\r\nHost: example.test\r\n\r\n"
XMPP = (b"<stream:stream to='example.test' xmlns='jabber:client' "
        b"xmlns:stream='http://etherx.jabber.org/streams' version='1.0'>")


class ForwardTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.reactor = MemoryReactorClock()
        target = ForwardTarget(to="tcp:127.0.0.1:8080")
        routes = tuple(Route(name, name, (), target, connect_timeout=3.0)
                       for name in ("tls", "xmpp", "http"))
        detectors = {"tls": TLSDetector(), "xmpp": XMPPDetector(), "http": HTTPDetector()}
        self.runtime = ListenerRuntime.build(
            "edge", Service("svc", routes), detectors, 5.0, self.reactor)

    def connect(self, data: bytes) -> tuple[SniffingProtocol, StringTransport]:
        protocol = SniffingProtocol(self.runtime)
        client = StringTransport(peerAddress=IPv4Address("TCP", "198.51.100.4", 5000))
        protocol.makeConnection(client)
        protocol.dataReceived(data)
        return protocol, client

    def backend_factory(self) -> Any:
        [(host, port, factory, _timeout, _bind)] = self.reactor.tcpClients
        self.assertEqual((host, port), ("127.0.0.1", 8080))
        return factory

    def test_replays_then_relays_both_ways(self) -> None:
        protocol, client = self.connect(REQUEST[:10])
        self.assertEqual(client.producerState, "producing")  # still sniffing
        protocol.dataReceived(REQUEST[10:])
        # A socket the relay cannot splice keeps being read while the backend
        # connects (no stop and restart of reading); what arrives waits.
        self.assertEqual(client.producerState, "producing")
        protocol.dataReceived(b"early")
        backend = StringTransport()
        backend_side = self.backend_factory().buildProtocol(None)
        backend_side.makeConnection(backend)
        self.assertEqual(backend.value(), REQUEST + b"early")
        self.assertEqual(client.producerState, "producing")
        # Each side is the other's producer: a full buffer pauses the other side.
        self.assertIs(backend.producer, client)
        self.assertIs(client.producer, backend)
        protocol.dataReceived(b"body")
        self.assertEqual(backend.value(), REQUEST + b"earlybody")
        backend_side.dataReceived(b"HTTP/1.1 200 OK\r\n")
        self.assertEqual(client.value(), b"HTTP/1.1 200 OK\r\n")

    def test_a_client_sending_much_while_connecting_is_paused(self) -> None:
        protocol, client = self.connect(REQUEST)
        chunk = b"x" * 16384
        for _ in range(3):
            protocol.dataReceived(chunk)
        self.assertEqual(client.producerState, "producing")  # 48 KiB and the request
        protocol.dataReceived(chunk)  # past 64 KiB
        self.assertEqual(client.producerState, "paused")
        protocol.dataReceived(chunk)  # what was already on its way
        backend = StringTransport()
        self.backend_factory().buildProtocol(None).makeConnection(backend)
        self.assertEqual(backend.value(), REQUEST + chunk * 5)
        self.assertEqual(client.producerState, "producing")

    def test_refused_http_gets_502(self) -> None:
        protocol, client = self.connect(REQUEST)
        with captured_log("gatekeep.connection") as events:
            self.backend_factory().clientConnectionFailed(
                None, Failure(ConnectionRefusedError()))
            self.assertTrue(client.value().startswith(b"HTTP/1.1 502 Bad Gateway\r\n"))
            self.assertTrue(client.disconnecting)
            protocol.connectionLost(connectionDone)
        [event] = events
        self.assertTrue(event["close_reason"].startswith("backend unreachable"))
        self.assertEqual(event["backend"], "tcp:127.0.0.1:8080")

    def test_timeout_gets_504_and_stops_connecting(self) -> None:
        _protocol, client = self.connect(REQUEST)
        connector = self.reactor.connectors[0]
        self.reactor.advance(3.0)
        self.assertTrue(client.value().startswith(b"HTTP/1.1 504 Gateway Timeout\r\n"))
        self.assertTrue(connector.stoppedConnecting)

    def test_refused_tls_gets_an_alert(self) -> None:
        hello = _fixture("openssl-xmpp.bin")
        _, client = self.connect(hello)
        self.backend_factory().clientConnectionFailed(None, Failure(ConnectionRefusedError()))
        self.assertEqual(client.value(), bytes.fromhex("15030100020250"))

    def test_refused_xmpp_gets_a_stream_error(self) -> None:
        _, client = self.connect(XMPP)
        self.backend_factory().clientConnectionFailed(None, Failure(ConnectionRefusedError()))
        reply = client.value()
        self.assertIn(b"from=\"example.test\"", reply)
        self.assertIn(b"<remote-connection-failed xmlns='urn:ietf:params:xml:ns:xmpp-streams'/>",
                      reply)
        self.assertTrue(reply.endswith(b"</stream:stream>"))

    def test_client_gone_while_connecting_cancels(self) -> None:
        protocol, client = self.connect(REQUEST)
        connector = self.reactor.connectors[0]
        protocol.connectionLost(connectionDone)
        self.assertTrue(connector.stoppedConnecting)
        self.assertEqual(client.value(), b"")

    def test_client_eof_before_backend_half_closes_backend_after_replay(self) -> None:
        protocol, _client = self.connect(REQUEST)
        protocol.readConnectionLost()
        backend = StringTransport()
        self.backend_factory().buildProtocol(None).makeConnection(backend)
        self.assertEqual(backend.value(), REQUEST)
        # StringTransport cannot half-close, so the relay closes its write side fully.
        self.assertTrue(backend.disconnecting)
        self.assertIsNone(backend.producer)


def _fixture(name: str) -> bytes:
    from pathlib import Path

    return (Path(__file__).parent.parent / "fixtures" / "clienthello" / name).read_bytes()
