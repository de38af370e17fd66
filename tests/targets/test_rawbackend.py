"""
The bare-socket backend connect of spliced ``tcp:`` forwards (gatekeep.targets.rawbackend):
when it is used, and that it reports what ``connectTCP`` would.
"""

from __future__ import annotations

import errno
import os
import socket
from typing import Any

from twisted.internet import defer, error, protocol, reactor, task
from twisted.internet.interfaces import IHalfCloseableProtocol, IReadWriteDescriptor
from twisted.python.failure import Failure
from twisted.trial.unittest import SkipTest, TestCase
from zope.interface import implementer
from zope.interface.verify import verifyObject

from gatekeep import splice
from gatekeep.targets.forward import ForwardTarget, _bare
from gatekeep.targets.rawbackend import RawBackend, RawConnect
from tests.helpers import captured_log, start_gatekeep


def _closed_port() -> int:
    """A port nothing listens on (connects are refused)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _stalled_listener(testcase: TestCase) -> int:
    """A listening port whose accept queue is full: further connects hang (Linux)."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(0)
    port = int(server.getsockname()[1])
    fillers = []
    for _ in range(2):
        filler = socket.socket()
        filler.setblocking(False)
        filler.connect_ex(("127.0.0.1", port))
        fillers.append(filler)
    testcase.addCleanup(server.close)
    for filler in fillers:
        testcase.addCleanup(filler.close)
    return port


def test_only_ip_literals_without_bind_go_bare() -> None:
    assert _bare(("127.0.0.1", 80, 30.0, None))
    assert not _bare(("localhost", 80, 30.0, None))
    assert not _bare(("127.0.0.1", 80, 30.0, ("127.0.0.1", 0)))
    assert not _bare(None)
    target = ForwardTarget(to="tcp:127.0.0.1:80")
    assert _bare(target.direct(reactor))
    assert not _bare(ForwardTarget(to="tcp:localhost:80").direct(reactor))
    assert not _bare(ForwardTarget(to="unix:/run/x.sock").direct(reactor))


class RawConnectTests(TestCase):
    def setUp(self) -> None:
        if not splice.AVAILABLE:
            raise SkipTest("the bare connect serves the splice path (Linux)")

    def _connect(self, port: int) -> tuple[RawConnect, defer.Deferred[Any]]:
        outcome: defer.Deferred[Any] = defer.Deferred()
        relay: Any = type("FakeRelay", (), {"splicer": None})()
        # A failure is delivered as a value (a list), not as the Deferred's error.
        connecting = RawConnect(reactor, relay, "127.0.0.1", port, outcome.callback,
                                lambda reason: outcome.callback([reason]))
        verifyObject(IReadWriteDescriptor, connecting)
        connecting.start()
        return connecting, outcome

    @defer.inlineCallbacks
    def test_no_descriptor_left_fails_as_connect_tcp_does(self) -> Any:
        # Out of descriptors (EMFILE), socket() fails: a failure from the reactor,
        # as connectTCP's ConnectBindError, not an exception in the caller.
        def no_descriptors(*args: Any) -> Any:
            raise OSError(errno.EMFILE, os.strerror(errno.EMFILE))

        outcome: defer.Deferred[Any] = defer.Deferred()
        relay: Any = type("FakeRelay", (), {"splicer": None})()
        connecting = RawConnect(reactor, relay, "127.0.0.1", 9, outcome.callback,
                                lambda reason: outcome.callback([reason]))
        module: Any = socket
        real = module.socket
        module.socket = no_descriptors  # only while start() runs
        try:
            connecting.start(finish_soon=True)
        finally:
            module.socket = real
        self.assertFalse(outcome.called)
        [reason] = yield outcome
        self.assertIs(reason.type, error.ConnectBindError)
        self.assertIn("Too many open files", reason.getErrorMessage())
        connecting.cancel()  # nothing to stop

    @defer.inlineCallbacks
    def test_refused_as_connect_tcp_reports_it(self) -> Any:
        port = _closed_port()
        theirs: defer.Deferred[list[Failure]] = defer.Deferred()

        class Factory(protocol.ClientFactory):
            def clientConnectionFailed(self, connector: Any, reason: Failure) -> None:
                theirs.callback([reason])

        reactor.connectTCP("127.0.0.1", port, Factory())
        connecting, outcome = self._connect(port)
        [mine] = yield outcome
        [reference] = yield theirs
        self.assertIsInstance(mine, Failure)
        self.assertIs(mine.type, error.ConnectionRefusedError)
        self.assertEqual(mine.getErrorMessage(), reference.getErrorMessage())
        assert connecting.sock is not None
        self.assertEqual(connecting.sock.fileno(), -1)
        self.assertNotIn(connecting, reactor.getWriters())

    @defer.inlineCallbacks
    def test_connects_and_hands_over_a_bare_backend(self) -> Any:
        accepted: list[protocol.Protocol] = []

        class Server(protocol.Protocol):
            def connectionMade(self) -> None:
                accepted.append(self)

        factory: Any = protocol.Factory.forProtocol(Server)
        port = reactor.listenTCP(0, factory, interface="127.0.0.1")
        self.addCleanup(port.stopListening)
        address: Any = port.getHost()
        connecting, outcome = self._connect(address.port)
        backend = yield outcome
        self.assertIsInstance(backend, RawBackend)
        self.assertNotIn(connecting, reactor.getWriters())
        self.assertEqual(backend.getPeer().port, address.port)
        self.assertEqual(backend.getHost().host, "127.0.0.1")
        lost_calls: list[Failure] = []
        backend.relay.backend_lost = lost_calls.append
        backend.loseConnection()
        backend.loseConnection()  # once only
        self.assertEqual(len(lost_calls), 1)
        self.assertTrue(lost_calls[0].check(error.ConnectionDone))
        self.assertTrue(backend.disconnected)
        self.assertEqual(backend.socket.fileno(), -1)

    @defer.inlineCallbacks
    def test_cancel_fails_with_connecting_cancelled(self) -> Any:
        connecting, outcome = self._connect(_stalled_listener(self))
        yield task.deferLater(reactor, 0.05, lambda: None)
        self.assertFalse(outcome.called, "the accept queue should have stalled the connect")
        connecting.cancel()
        [reason] = yield outcome
        self.assertIs(reason.type, error.ConnectingCancelledError)
        assert connecting.sock is not None
        self.assertEqual(connecting.sock.fileno(), -1)
        self.assertNotIn(connecting, reactor.getWriters())
        connecting.cancel()  # idempotent


CONFIG = """
[[listener]]
name = "edge"
endpoint = "tcp:0:interface=127.0.0.1"
service = "svc"

[service.svc]
[[service.svc.route]]
name = "all"
connect_timeout = "{timeout}"
forward = {{ to = "tcp:127.0.0.1:{port}" }}
"""


class BareForwardTests(TestCase):
    """Through a listener: the close reasons are those of the Twisted connect path."""

    timeout = 30

    def setUp(self) -> None:
        if not splice.AVAILABLE:
            raise SkipTest("the bare connect serves the splice path (Linux)")
        splice.configure(True)

    @defer.inlineCallbacks
    def _one(self, backend_port: int, timeout: str = "5s") -> Any:
        ports = start_gatekeep(self, CONFIG.format(port=backend_port, timeout=timeout))
        bare: list[RawConnect] = []
        original = RawConnect.start

        def start(connecting: RawConnect, finish_soon: bool = False) -> None:
            bare.append(connecting)
            original(connecting, finish_soon)

        self.patch(RawConnect, "start", start)
        done: defer.Deferred[None] = defer.Deferred()

        class Client(protocol.Protocol):
            def connectionMade(self) -> None:
                assert self.transport is not None
                self.transport.write(b"hello")

            def connectionLost(self, reason: Any = None) -> None:
                done.callback(None)

        with captured_log("gatekeep.connection") as events:
            yield protocol.ClientCreator(reactor, Client).connectTCP("127.0.0.1", ports["edge"])
            yield done
            while not events:
                yield task.deferLater(reactor, 0.01, lambda: None)
        self.assertEqual(len(bare), 1, "the bare connect was not used")
        [event] = events
        return event

    @defer.inlineCallbacks
    def test_refused_backend(self) -> Any:
        event = yield self._one(_closed_port())
        self.assertEqual(event["close_reason"], "backend unreachable: Connection was refused "
                         "by other side: 111: Connection refused.")

    @defer.inlineCallbacks
    def test_connect_timeout(self) -> Any:
        event = yield self._one(_stalled_listener(self), timeout="300ms")
        self.assertEqual(event["close_reason"], "backend connect timeout")


SNIFFING_CONFIG = """
[[listener]]
name = "edge"
endpoint = "tcp:0:interface=127.0.0.1"
service = "svc"

[service.svc]
[[service.svc.route]]
name = "tls"
match.tls = {{}}
reject = {{}}

[[service.svc.route]]
name = "all"
forward = {{ to = "tcp:127.0.0.1:{port}" }}
"""


@implementer(IHalfCloseableProtocol)
class _Replier(protocol.Protocol):
    """Backend: answers ``reply`` once it has ``expect`` bytes or the client's EOF, then closes."""

    def __init__(self, expect: int, reply: bytes, got: list[bytes]) -> None:
        self.expect = expect
        self.reply = reply
        self.got = got
        self.data = b""

    def dataReceived(self, data: bytes) -> None:
        self.data += data
        if len(self.data) >= self.expect:
            self._answer()

    def readConnectionLost(self) -> None:
        self._answer()

    def writeConnectionLost(self) -> None:
        pass

    def _answer(self) -> None:
        assert self.transport is not None
        self.got.append(self.data)
        self.transport.write(self.reply)
        self.transport.loseConnection()


@implementer(IHalfCloseableProtocol)
class _Client(protocol.Protocol):
    def __init__(self, send: bytes, half_close: bool) -> None:
        self.send = send
        self.half_close = half_close
        self.received = b""
        self.done: defer.Deferred[bytes] = defer.Deferred()

    def connectionMade(self) -> None:
        assert self.transport is not None
        self.transport.write(self.send)
        if self.half_close:
            self.transport.loseWriteConnection()  # type: ignore[attr-defined]

    def dataReceived(self, data: bytes) -> None:
        self.received += data

    def readConnectionLost(self) -> None:
        assert self.transport is not None
        self.transport.loseConnection()

    def writeConnectionLost(self) -> None:
        pass

    def connectionLost(self, reason: Any = None) -> None:
        self.done.callback(self.received)


class ConnectedAtOnceTests(TestCase):
    """A loopback connect completes inside connect(): the sniffed bytes join it at once."""

    timeout = 30

    def setUp(self) -> None:
        if not splice.AVAILABLE:
            raise SkipTest("the bare connect serves the splice path (Linux)")
        splice.configure(True)
        self.connects: list[RawConnect] = []
        self.watched: list[bool] = []
        original = RawConnect.start
        connects, watched = self.connects, self.watched

        def start(connecting: RawConnect, finish_soon: bool = False) -> None:
            connects.append(connecting)
            original(connecting, finish_soon)
            watched.append(connecting in reactor.getWriters())

        self.patch(RawConnect, "start", start)

    @defer.inlineCallbacks
    def _exchange(self, send: bytes, expect: int, half_close: bool) -> Any:
        got: list[bytes] = []
        factory: Any = protocol.Factory.forProtocol(lambda: _Replier(expect, b"world!", got))
        backend = reactor.listenTCP(0, factory, interface="127.0.0.1")
        self.addCleanup(backend.stopListening)
        address: Any = backend.getHost()
        ports = start_gatekeep(self, SNIFFING_CONFIG.format(port=address.port))
        client = _Client(send, half_close)
        with captured_log("gatekeep.connection") as events:
            yield protocol.ClientCreator(reactor, lambda: client).connectTCP(
                "127.0.0.1", ports["edge"])
            received = yield client.done
            while not events:
                yield task.deferLater(reactor, 0.01, lambda: None)
        [event] = events
        self.assertEqual(received, b"world!")
        self.assertEqual(got, [send])
        self.assertEqual((event["route"], event["close_reason"]), ("all", "done"))
        self.assertEqual((event["bytes_in"], event["bytes_out"]), (len(send), 6))
        [connecting] = self.connects
        self.assertTrue(connecting.done)
        self.assertEqual(self.watched, [False], "the reactor watched a finished connect")

    def test_joined_without_watching_the_connect(self) -> Any:
        return self._exchange(b"hello", 5, half_close=False)

    def test_client_half_closed_during_detection(self) -> Any:
        # Two bytes of a TLS record header and a FIN: detection ends at the EOF, the
        # catch-all route joins the backend at once, then passes the half-close on.
        return self._exchange(b"\x16\x03", 3, half_close=True)
