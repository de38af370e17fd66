"""
``forward`` to a ``tor:`` endpoint on a memory reactor, the test playing tor's SOCKS5
port: the backend's name goes to tor (never resolved here), the sniffed bytes follow
the SOCKS reply, and tor's refusals and a silent SOCKS port end like any backend's.
"""

from __future__ import annotations

import struct
from typing import Any

from twisted.internet.address import IPv4Address
from twisted.internet.error import ConnectionDone, ConnectionLost
from twisted.internet.protocol import connectionDone
from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase

from gatekeep.detectors.http import HTTPDetector
from gatekeep.sniff import ListenerRuntime, SniffingProtocol
from gatekeep.targets.forward import ForwardTarget
from gatekeep.values import Route, Service
from tests.helpers import captured_log

ONION = "pg6mmjiyjmcrsslvykfwnntlaru7p5svn6y2ymmju6nubxndf4pscryd.onion"
REQUEST = f"GET / HTTP/1.1\r\nHost: {ONION}\r\n\r\n".encode()


class ForwardThroughTorTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.reactor = MemoryReactorClock()
        target = ForwardTarget(to=f"tor:{ONION}:80:socksHostname=127.0.0.1:socksPort=9050")
        route = Route("web", "http", (), target, connect_timeout=3.0)
        self.runtime = ListenerRuntime.build(
            "edge", Service("svc", (route,)), {"http": HTTPDetector()}, 5.0, self.reactor)

    def connect(self) -> tuple[SniffingProtocol, StringTransport]:
        protocol = SniffingProtocol(self.runtime)
        client = StringTransport(peerAddress=IPv4Address("TCP", "198.51.100.4", 5000))
        protocol.makeConnection(client)
        protocol.dataReceived(REQUEST)
        return protocol, client

    def socks_side(self) -> tuple[Any, StringTransport]:
        [(host, port, factory, _timeout, _bind)] = self.reactor.tcpClients
        self.assertEqual((host, port), ("127.0.0.1", 9050))  # tor's SOCKS port, nothing else
        socks: Any = factory.buildProtocol(IPv4Address("TCP", host, port))
        wire = StringTransport()
        socks.makeConnection(wire)
        return socks, wire

    def handshake(self, socks: Any, wire: StringTransport, reply: int) -> None:
        self.assertEqual(wire.value(), b"\x05\x01\x00")  # SOCKS5, no authentication
        wire.clear()
        socks.dataReceived(b"\x05\x00")
        name = ONION.encode()
        # CONNECT by name (ATYP 3): tor resolves it, gatekeep never does.
        self.assertEqual(wire.value(),
                         b"\x05\x01\x00\x03" + bytes([len(name)]) + name + struct.pack("!H", 80))
        wire.clear()
        socks.dataReceived(bytes([5, reply, 0, 1, 0, 0, 0, 0, 0, 0]))

    def test_request_reaches_the_onion_after_the_socks_reply(self) -> None:
        _protocol, client = self.connect()
        socks, wire = self.socks_side()
        self.handshake(socks, wire, reply=0)
        self.assertEqual(wire.value(), REQUEST)  # the sniffed bytes, replayed
        socks.dataReceived(b"HTTP/1.1 200 OK\r\n")
        self.assertEqual(client.value(), b"HTTP/1.1 200 OK\r\n")

    def test_tor_refusal_is_a_502(self) -> None:
        protocol, client = self.connect()
        socks, wire = self.socks_side()
        with captured_log("gatekeep.connection") as events:
            self.handshake(socks, wire, reply=4)  # host unreachable
            self.assertTrue(client.value().startswith(b"HTTP/1.1 502 Bad Gateway\r\n"))
            protocol.connectionLost(connectionDone)
        [event] = events
        self.assertEqual(event["close_reason"], "backend unreachable: Host unreachable")

    def test_silent_socks_port_hits_connect_timeout(self) -> None:
        _protocol, client = self.connect()
        self.socks_side()  # connected to "tor", which never answers the greeting
        self.reactor.advance(3.0)
        self.assertTrue(client.value().startswith(b"HTTP/1.1 504 Gateway Timeout\r\n"))
        self.assertTrue(client.disconnecting)

    def test_backend_closing_is_logged_as_closed(self) -> None:
        # txtorcon's SOCKS protocol cannot half-close: a FIN ends the whole stream, and it
        # reports the end as its own error around the original reason.
        protocol, client = self.connect()
        socks, wire = self.socks_side()
        self.handshake(socks, wire, reply=0)
        with captured_log("gatekeep.connection") as events:
            socks.dataReceived(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n")
            socks.connectionLost(Failure(ConnectionDone()))
            self.assertTrue(client.disconnecting)
            protocol.connectionLost(connectionDone)
        [event] = events
        self.assertEqual(event["close_reason"], "backend closed")
        self.assertEqual(client.value(), b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n")

    def test_backend_failing_is_still_a_reset(self) -> None:
        protocol, _client = self.connect()
        socks, wire = self.socks_side()
        self.handshake(socks, wire, reply=0)
        with captured_log("gatekeep.connection") as events:
            socks.connectionLost(Failure(ConnectionLost()))
            protocol.connectionLost(connectionDone)
        [event] = events
        self.assertEqual(event["close_reason"], "backend reset")
