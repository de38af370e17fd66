"""Transparent connects: parsing the backend, failures, and a real connect on loopback."""

from __future__ import annotations

import ipaddress
import os
import socket
from typing import Any

import pytest
from twisted.internet import defer, error, protocol
from twisted.internet.address import IPv4Address, UNIXAddress
from twisted.internet.epollreactor import EPollReactor
from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.trial.unittest import SynchronousTestCase, TestCase

from gatekeep.eventloop import coalesce
from gatekeep.targets.forward import ForwardTarget
from gatekeep.targets.transparent import (
    TransparentEndpoint,
    _Attempt,
    parse_tcp_destination,
)


@pytest.mark.parametrize("description, expected", [
    ("tcp:192.0.2.10:8080", ("192.0.2.10", 8080)),
    ("tcp:host=192.0.2.10:port=8080:timeout=3", ("192.0.2.10", 8080)),
    ("tcp:port=25:host=2001\\:db8\\:\\:10", ("2001:db8::10", 25)),
])
def test_parse_tcp_destination(description: str, expected: tuple[str, int]) -> None:
    host, port = parse_tcp_destination(description)
    assert (str(host), port) == expected


@pytest.mark.parametrize("description, why", [
    ("unix:/run/x.sock", "needs a tcp: backend"),
    ("tcp:backend.internal:8080", "needs an IP address"),
    ("tls:example.org:443", "needs a tcp: backend"),
])
def test_transparent_backend_must_be_an_ip(description: str, why: str) -> None:
    with pytest.raises(ValueError, match=why):
        parse_tcp_destination(description)
    with pytest.raises(ValueError, match=why):
        ForwardTarget(to=description, transparent=True)


class FailureTests(SynchronousTestCase):
    def endpoint(self, host: str, source: str | None) -> TransparentEndpoint:
        return TransparentEndpoint(MemoryReactorClock(), ipaddress.ip_address(host), 80,
                                   None if source is None else ipaddress.ip_address(source))

    def test_family_mismatch(self) -> None:
        failure = self.failureResultOf(
            self.endpoint("2001:db8::1", "192.0.2.1").connect(protocol.Factory()),
            error.ConnectError)
        self.assertIn("the client is IPv4 but the backend is IPv6", str(failure.value))

    def test_no_client_address(self) -> None:
        failure = self.failureResultOf(
            self.endpoint("192.0.2.1", None).connect(protocol.Factory()), error.ConnectError)
        self.assertIn("no IP address", str(failure.value))

    def test_forward_uses_the_clients_address(self) -> None:
        target = ForwardTarget(to="tcp:192.0.2.10:8080", transparent=True)
        self.assertIn("transparent", target.describe())
        inbound: Any = _Inbound(IPv4Address("TCP", "198.51.100.4", 5000))
        endpoint = target._transparent(inbound)
        assert isinstance(endpoint, TransparentEndpoint)
        self.assertEqual((str(endpoint.source), str(endpoint.host), endpoint.port),
                         ("198.51.100.4", "192.0.2.10", 8080))
        unix: Any = _Inbound(UNIXAddress(None))
        from_unix = target._transparent(unix)
        assert isinstance(from_unix, TransparentEndpoint)
        self.assertIsNone(from_unix.source)


class _Inbound:
    def __init__(self, client: Any) -> None:
        self.client = client
        self.reactor = MemoryReactorClock()
        self.transport = StringTransport()


class Echo(protocol.Protocol):
    def connectionMade(self) -> None:
        assert self.transport is not None
        peer: Any = self.transport.getPeer()
        self.transport.write(f"{peer.host}\n".encode())
        self.transport.loseConnection()


class Collect(protocol.Protocol):
    def __init__(self) -> None:
        self.data = b""
        self.done: defer.Deferred[bytes] = defer.Deferred()

    def dataReceived(self, data: bytes) -> None:
        self.data += data

    def connectionLost(self, reason: Any = None) -> None:
        self.done.callback(self.data)


class LoopbackTests(TestCase):
    """On the real reactor: 127.0.0.0/8 is all local, so any address there can be used."""

    @defer.inlineCallbacks
    def test_connects_from_the_given_source(self) -> Any:
        if os.geteuid() != 0:
            raise self.skipTest("IP_TRANSPARENT needs CAP_NET_ADMIN (CI runs as root)")
        from twisted.internet import reactor

        factory: Any = protocol.ServerFactory.forProtocol(Echo)
        port: Any = reactor.listenTCP(0, factory, interface="127.0.0.1")
        self.addCleanup(port.stopListening)
        endpoint = TransparentEndpoint(reactor, ipaddress.ip_address("127.0.0.1"),
                                       port.getHost().port, ipaddress.ip_address("127.0.0.9"))
        client = yield endpoint.connect(protocol.Factory.forProtocol(Collect))
        self.assertIsInstance(client, Collect)
        self.assertEqual((yield client.done), b"127.0.0.9\n")

    @defer.inlineCallbacks
    def test_refused_and_cancelled(self) -> Any:
        if os.geteuid() != 0:
            raise self.skipTest("IP_TRANSPARENT needs CAP_NET_ADMIN (CI runs as root)")
        from twisted.internet import reactor

        from tests.integration.process import free_port

        endpoint = TransparentEndpoint(reactor, ipaddress.ip_address("127.0.0.1"), free_port(),
                                       ipaddress.ip_address("127.0.0.9"))
        yield self.assertFailure(endpoint.connect(protocol.Factory.forProtocol(Collect)),
                                 error.ConnectionRefusedError)
        # Cancelled before the reactor saw it complete (as connect_timeout does).
        factory: Any = protocol.ServerFactory.forProtocol(Echo)
        port: Any = reactor.listenTCP(0, factory, interface="127.0.0.1")
        self.addCleanup(port.stopListening)
        pending = TransparentEndpoint(reactor, ipaddress.ip_address("127.0.0.1"),
                                      port.getHost().port, ipaddress.ip_address("127.0.0.9"))
        attempt = pending.connect(protocol.Factory.forProtocol(Collect))
        attempt.cancel()
        yield self.assertFailure(attempt, error.ConnectingCancelledError)


def test_the_connection_takes_the_attempts_socket_and_epoll_forgets_nothing(
        monkeypatch: pytest.MonkeyPatch) -> None:
    # On gatekeep's event loop (its own reactor, driven by iterate): the watched
    # socket becomes the connection's, as it is. A duplicate (adoptStreamConnection's)
    # left epoll watching the closed attempt's number for the duplicate, reporting
    # it writable on every turn for as long as the connection lived.
    monkeypatch.delenv("GATEKEEP_EVENTLOOP", raising=False)
    reactor: Any = EPollReactor()
    assert coalesce(reactor)
    listening = socket.create_server(("127.0.0.1", 0))
    sock = socket.socket()
    sock.setblocking(False)
    sock.connect_ex(listening.getsockname())
    number = sock.fileno()
    attempt = _Attempt(reactor, sock, socket.AF_INET, protocol.Factory.forProtocol(Collect))
    reactor.addWriter(attempt)
    for _ in range(100):
        if attempt.deferred.called:
            break
        reactor.iterate(0.1)
    client: Any = attempt.deferred.result
    assert isinstance(client, Collect)
    reactor.iterate(0)  # the turn's changes reach the kernel
    assert reactor._poller.poll(0) == []  # nothing to read, nothing stray
    transport: Any = client.transport
    assert transport.fileno() == number
    assert transport.getPeer() == IPv4Address("TCP", *listening.getsockname())
    server, _ = listening.accept()
    server.sendall(b"hello")
    server.close()
    for _ in range(100):
        if client.done.called:
            break
        reactor.iterate(0.1)
    assert client.done.result == b"hello"
    listening.close()
