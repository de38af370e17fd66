"""
A listener bound to one address knows every accepted connection's local address
without asking the kernel; a wildcard listener asks per connection.
"""

from __future__ import annotations

import socket
from typing import Any

import pytest
from twisted.internet import defer, endpoints, protocol, reactor
from twisted.internet.address import IPv4Address, IPv6Address, UNIXAddress
from twisted.trial.unittest import TestCase

from gatekeep.sniff import fixed_local_address


class Port:
    def __init__(self, host: Any) -> None:
        self.host = host

    def getHost(self) -> Any:
        return self.host


@pytest.mark.parametrize(("host", "fixed"), [
    (IPv4Address("TCP", "127.0.0.1", 443), True),
    (IPv4Address("TCP", "0.0.0.0", 443), False),
    (IPv6Address("TCP", "::1", 443), True),
    (IPv6Address("TCP", "::", 443), False),
    (IPv6Address("TCP", "fe80::1%eth0", 443), True),
    (UNIXAddress(b"/run/gatekeep.sock"), False),
])
def test_only_a_single_address_tcp_port_is_fixed(host: Any, fixed: bool) -> None:
    assert (fixed_local_address(Port(host)) is host) is fixed


class AcceptedAddresses(TestCase):
    """What a connection's getHost says, against the fixed address (real sockets)."""

    @defer.inlineCallbacks
    def test_fixed_address_is_what_getsockname_says(self) -> Any:
        for interface in ("127.0.0.1", "0.0.0.0"):
            made: defer.Deferred[Any] = defer.Deferred()

            class Note(protocol.Protocol):
                def connectionMade(self, made: defer.Deferred[Any] = made) -> None:
                    assert self.transport is not None
                    made.callback(self.transport.getHost())
                    self.transport.loseConnection()

            port = yield endpoints.TCP4ServerEndpoint(
                reactor, 0, interface=interface).listen(protocol.Factory.forProtocol(Note))
            self.addCleanup(port.stopListening)
            with socket.create_connection(("127.0.0.1", port.getHost().port)) as client:
                host = yield made
                fixed = fixed_local_address(port)
                if interface == "0.0.0.0":
                    self.assertIsNone(fixed)
                else:
                    assert fixed is not None
                    self.assertEqual(fixed, host)
                    self.assertEqual((fixed.host, fixed.port), client.getpeername())
