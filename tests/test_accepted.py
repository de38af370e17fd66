"""gatekeep's listeners accept into AcceptedServer: Twisted's tcp.Server, with lazy strings."""

from __future__ import annotations

import socket
from typing import Any

from twisted.internet import defer, endpoints, error, protocol, reactor, tcp
from twisted.internet.interfaces import IHalfCloseableProtocol
from twisted.trial.unittest import TestCase
from zope.interface import implementer

from gatekeep import splice
from gatekeep.accepted import AcceptedServer, use_for
from gatekeep.http.server import is_tls
from gatekeep.sendnow import send_now


class Accepting(TestCase):
    @defer.inlineCallbacks
    def test_a_used_port_makes_accepted_servers_as_twisted_would(self) -> Any:
        made: defer.Deferred[Any] = defer.Deferred()

        class Note(protocol.Protocol):
            def connectionMade(self) -> None:
                made.callback(self.transport)

            def dataReceived(self, data: bytes) -> None:
                assert self.transport is not None
                self.transport.write(data.upper())

        port = yield endpoints.TCP4ServerEndpoint(
            reactor, 0, interface="127.0.0.1").listen(protocol.Factory.forProtocol(Note))
        self.addCleanup(port.stopListening)
        use_for(port)
        use_for(port)  # (twice: still the same class)
        self.assertIs(port.transport, AcceptedServer)
        client = yield endpoints.TCP4ClientEndpoint(
            reactor, "127.0.0.1", port.getHost().port).connect(
            protocol.Factory.forProtocol(protocol.Protocol))
        self.addCleanup(client.transport.loseConnection)
        transport = yield made
        self.assertIsInstance(transport, AcceptedServer)
        self.assertIsInstance(transport, tcp.Server)
        self.assertIn(transport.fileno(), [r.fileno() for r in reactor.getReaders()
                                           if r is transport])
        self.assertEqual(transport.getPeer(), client.transport.getHost())
        self.assertEqual(transport.sessionno, 0)
        self.assertEqual(transport.logstr, "Note,0,127.0.0.1")
        self.assertEqual(repr(transport), f"<Note #0 on {port.getHost().port}>")
        transport.logstr = "changed"  # Twisted may set it, as on a tcp.Server
        self.assertEqual(transport.logPrefix(), "changed")
        # gatekeep's fast paths take it as the bare socket transport it is.
        self.assertTrue(splice.usable(transport))
        self.assertFalse(is_tls(transport))
        send_now(transport, b"sent at once")
        self.assertNotIn(transport, reactor.getWriters())  # nothing queued

    def test_other_ports_are_left_alone(self) -> None:
        class Other:
            transport = tcp.Server

        other = Other()
        use_for(other)
        self.assertIs(other.transport, tcp.Server)


@implementer(IHalfCloseableProtocol)
class HalfClosing(protocol.Protocol):
    """Echoes; on the client's EOF writes "bye" and closes; or aborts when told."""

    def __init__(self, ended: defer.Deferred[Any]) -> None:
        self.ended = ended

    def dataReceived(self, data: bytes) -> None:
        assert self.transport is not None
        if data == b"abort":
            self.transport.abortConnection()  # type: ignore[attr-defined]
            return
        self.transport.write(data)

    def readConnectionLost(self) -> None:
        assert self.transport is not None
        self.transport.write(b"bye")
        self.transport.loseConnection()

    def writeConnectionLost(self) -> None:
        pass

    def connectionLost(self, reason: Any = None) -> None:
        self.ended.callback([reason])  # (a Failure itself would be an errback)


class Ending(TestCase):
    """Reads, half-close and both ways of closing, over real sockets."""

    @defer.inlineCallbacks
    def _serve(self) -> Any:
        ended: defer.Deferred[Any] = defer.Deferred()
        port = yield endpoints.TCP4ServerEndpoint(reactor, 0, interface="127.0.0.1").listen(
            protocol.Factory.forProtocol(lambda: HalfClosing(ended)))
        self.addCleanup(port.stopListening)
        use_for(port)
        return port.getHost().port, ended

    @defer.inlineCallbacks
    def test_half_close_then_close(self) -> Any:
        number, ended = yield self._serve()
        client = socket.create_connection(("127.0.0.1", number))
        self.addCleanup(client.close)
        client.sendall(b"ping")
        client.shutdown(socket.SHUT_WR)
        [reason] = yield ended
        self.assertTrue(reason.check(error.ConnectionDone))
        received = b""
        while chunk := client.recv(100):
            received += chunk
        self.assertEqual(received, b"pingbye")

    @defer.inlineCallbacks
    def test_abort_resets(self) -> Any:
        number, ended = yield self._serve()
        client = socket.create_connection(("127.0.0.1", number))
        self.addCleanup(client.close)
        client.sendall(b"abort")
        [reason] = yield ended
        self.assertTrue(reason.check(error.ConnectionAborted))
        with self.assertRaises(ConnectionResetError):
            client.recv(100)
