"""
What the TLS layer of a terminated connection writes leaves at once on a bare
socket: a handshake flight or a record does not wait for the reactor's next turn.
"""

from __future__ import annotations

from typing import Any

from twisted.internet import reactor as _reactor
from twisted.internet.defer import Deferred
from twisted.internet.protocol import ClientFactory, Factory, Protocol
from twisted.trial.unittest import TestCase

from gatekeep.targets._inner import _Counting
from gatekeep.values import ConnectionRecord

REACTOR: Any = _reactor


class _Writer(Protocol):
    """Writes through ``_Counting`` as the TLS layer does, noting what stayed queued."""

    def __init__(self, noted: list[tuple[int, int]]) -> None:
        self.noted = noted

    def connectionMade(self) -> None:
        transport: Any = self.transport
        record = ConnectionRecord("edge", "127.0.0.1:1", 0.0)
        counting = _Counting(transport, record)
        counting.write(b"flight")
        counting.write(b"record")
        queued = len(transport.dataBuffer) + sum(map(len, transport._tempDataBuffer))
        self.noted.append((queued, record.bytes_out))
        transport.loseConnection()


class _Reader(Protocol):
    def __init__(self, done: Deferred[bytes]) -> None:
        self.done = done
        self.received = b""

    def dataReceived(self, data: bytes) -> None:
        self.received += data

    def connectionLost(self, reason: object = None) -> None:
        self.done.callback(self.received)


class CountingWritesTests(TestCase):
    def test_writes_leave_at_once_counted_and_in_order(self) -> Deferred[None]:
        noted: list[tuple[int, int]] = []
        factory = Factory.forProtocol(lambda: _Writer(noted))
        port = REACTOR.listenTCP(0, factory, interface="127.0.0.1")
        self.addCleanup(port.stopListening)
        done: Deferred[bytes] = Deferred()
        client = ClientFactory.forProtocol(lambda: _Reader(done))
        REACTOR.connectTCP("127.0.0.1", port.getHost().port, client)

        def check(received: bytes) -> None:
            self.assertEqual(received, b"flightrecord")
            self.assertEqual(noted, [(0, 12)])  # nothing left queued for the next turn

        return done.addCallback(check)
