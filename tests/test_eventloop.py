"""
The coalescing epoll reactor: the kernel hears each descriptor's interest once per
turn, descriptors get exactly Twisted's events, and removal stays immediate.

Each test drives its own reactor with ``iterate`` (never the test run's reactor).
"""

from __future__ import annotations

import os
import socket
import struct
import tempfile
from typing import Any

import pytest
from twisted.internet import error
from twisted.internet.epollreactor import EPollReactor
from twisted.internet.interfaces import (
    IHalfCloseableProtocol,
    IListeningPort,
    IReactorFDSet,
    IReadDescriptor,
)
from twisted.internet.protocol import ClientFactory, Factory, Protocol, connectionDone
from twisted.internet.task import Clock
from twisted.python.failure import Failure
from zope.interface import implementer
from zope.interface.verify import verifyObject

from gatekeep.eventloop import CoalescingEPollReactor, before_wait, coalesce

# How this run was started (tests/conftest.py makes the run's reactor gatekeep's loop).
_SUITE_ON_TWISTED = os.environ.get("GATEKEEP_EVENTLOOP", "") == "twisted"


@pytest.fixture(autouse=True)
def gatekeeps_loop(monkeypatch: pytest.MonkeyPatch) -> None:
    """These tests are about gatekeep's event loop, also when the suite runs on Twisted's."""
    monkeypatch.delenv("GATEKEEP_EVENTLOOP", raising=False)


class CountingPoller:
    """The reactor's epoll object, counting the ``epoll_ctl`` calls made through it."""

    def __init__(self, poller: Any) -> None:
        self.poller = poller
        self.calls: list[tuple[str, int]] = []

    def register(self, fd: int, mask: int) -> None:
        self.calls.append(("register", fd))
        self.poller.register(fd, mask)

    def modify(self, fd: int, mask: int) -> None:
        self.calls.append(("modify", fd))
        self.poller.modify(fd, mask)

    def unregister(self, fd: int) -> None:
        self.calls.append(("unregister", fd))
        self.poller.unregister(fd)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.poller, name)


@implementer(IReadDescriptor)
class Reader:
    """A socket the reactor watches; it notes what it read and how it ended."""

    def __init__(self, sock: Any) -> None:
        self.sock = sock
        self.read: list[bytes] = []
        self.lost: list[Failure] = []

    def fileno(self) -> int:
        return int(self.sock.fileno())

    def doRead(self) -> Any:
        data = self.sock.recv(65536) if hasattr(self.sock, "recv") else self.sock.read(65536)
        if not data:
            return error.ConnectionDone()
        self.read.append(data)
        return None

    def doWrite(self) -> None:
        return None

    def connectionLost(self, reason: Failure) -> None:
        self.lost.append(reason)

    def logPrefix(self) -> str:
        return "Reader"


def coalescing() -> tuple[Any, CountingPoller]:
    reactor: Any = EPollReactor()
    assert coalesce(reactor)
    counting = CountingPoller(reactor._poller)
    reactor._poller = counting
    return reactor, counting


def pair() -> tuple[socket.socket, socket.socket]:
    a, b = socket.socketpair()
    a.setblocking(False)
    b.setblocking(False)
    return a, b


def test_it_is_a_reactor_and_keeps_what_was_registered() -> None:
    reactor: Any = EPollReactor()
    before = set(reactor.getReaders())
    assert coalesce(reactor)
    assert isinstance(reactor, CoalescingEPollReactor)
    assert verifyObject(IReactorFDSet, reactor)
    assert set(reactor.getReaders()) == before  # the waker, still watched
    assert coalesce(reactor)  # already done: nothing more to do


def test_the_test_run_is_on_gatekeeps_loop_unless_told_otherwise() -> None:
    from twisted.internet import reactor

    expected = EPollReactor if _SUITE_ON_TWISTED else CoalescingEPollReactor
    running: Any = reactor
    assert type(running) is expected


def test_only_twisteds_epoll_reactor_is_changed(monkeypatch: pytest.MonkeyPatch) -> None:
    assert not coalesce(Clock())
    monkeypatch.setenv("GATEKEEP_EVENTLOOP", "twisted")
    reactor: Any = EPollReactor()
    assert not coalesce(reactor)
    assert type(reactor) is EPollReactor


def test_changes_within_a_turn_reach_the_kernel_once() -> None:
    reactor, counting = coalescing()
    a, b = pair()
    reader = Reader(a)
    reactor.addReader(reader)
    reactor.addWriter(reader)
    reactor.removeWriter(reader)
    reactor.removeReader(reader)
    reactor.addReader(reader)
    assert counting.calls == []  # nothing told yet
    assert reactor.getReaders().count(reader) == 1  # but reported at once
    assert reader not in reactor.getWriters()
    b.send(b"hello")
    reactor.iterate(1)
    assert counting.calls == [("register", a.fileno())]
    assert reader.read == [b"hello"]
    # Stop and start again in one turn: the kernel already has it right.
    reactor.removeReader(reader)
    reactor.addReader(reader)
    b.send(b"again")
    reactor.iterate(1)
    assert counting.calls == [("register", a.fileno())]
    assert reader.read == [b"hello", b"again"]
    # Stopped for longer than a turn: taken out of epoll at the next wait.
    reactor.removeReader(reader)
    reactor.iterate(0)
    assert counting.calls == [("register", a.fileno()), ("unregister", a.fileno())]
    b.send(b"unwatched")
    reactor.iterate(0.05)
    assert reader.read == [b"hello", b"again"]
    a.close()
    b.close()


def test_a_closed_connection_leaves_epoll_without_a_call() -> None:
    reactor, counting = coalescing()
    a, b = pair()
    reader = Reader(a)  # its fileno() is -1 once its socket is closed, as Twisted's
    number = a.fileno()
    reactor.addReader(reader)
    reactor.iterate(0)
    reactor.removeReader(reader)
    a.close()
    reactor.iterate(0)
    assert counting.calls == [("register", number)]
    b.close()


class CachedNumber(Reader):
    """Keeps its number after the close, as gatekeep's splice ends do (``sock`` tells)."""

    def __init__(self, sock: Any) -> None:
        super().__init__(sock)
        self.number = int(sock.fileno())

    def fileno(self) -> int:
        return self.number


def test_a_closed_end_that_keeps_its_number_leaves_epoll_without_a_call() -> None:
    reactor, counting = coalescing()
    a, b = pair()
    reader = CachedNumber(a)
    reactor.addReader(reader)
    reactor.iterate(0)
    reactor.removeReader(reader)
    a.close()
    reactor.iterate(0)
    assert counting.calls == [("register", reader.number)]
    b.close()


def test_a_descriptor_added_and_removed_in_one_turn_costs_no_call() -> None:
    reactor, counting = coalescing()
    a, b = pair()
    reader = Reader(a)
    reactor.addReader(reader)
    reactor.addWriter(reader)
    reactor.removeReader(reader)
    reactor.removeWriter(reader)
    reactor.iterate(0)
    assert counting.calls == []
    assert reader not in reactor.getReaders() + reactor.getWriters()
    a.close()
    b.close()


@implementer(IListeningPort)
class SharedPort(Reader):
    """Stands for a listening socket, which other processes may hold open too."""

    def startListening(self) -> None:
        pass

    def stopListening(self) -> None:
        pass

    def getHost(self) -> Any:
        return None


def test_a_listening_socket_leaves_epoll_at_once_as_others_may_share_it() -> None:
    # A worker's listening socket is also open in the parent: closing this copy
    # would not end the epoll registration, so it must be gone before the close.
    reactor, counting = coalescing()
    a, b = pair()
    shared = os.dup(a.fileno())  # the other holder of the same socket
    reader = SharedPort(a)
    reactor.addReader(reader)
    reactor.iterate(0)
    reactor.removeReader(reader)
    assert ("unregister", a.fileno()) in counting.calls
    a.close()
    b.send(b"for the other holder")
    reactor.iterate(0.05)  # an event here would reach a closed descriptor
    assert reader.read == []
    assert os.read(shared, 100) == b"for the other holder"
    os.close(shared)
    b.close()


def on_number(sock: socket.socket, number: int) -> socket.socket:
    """``sock`` under the descriptor number ``number`` (what the kernel usually does)."""
    if sock.fileno() == number:
        return sock
    os.dup2(sock.fileno(), number)
    sock.close()
    return socket.socket(fileno=number)


def test_a_reused_descriptor_number_is_registered_afresh() -> None:
    reactor, _ = coalescing()
    a, b = pair()
    first = Reader(a)
    reactor.addReader(first)
    reactor.iterate(0)
    number = a.fileno()
    reactor.removeReader(first)
    a.close()
    c, d = pair()
    reused = on_number(c, number)
    second = Reader(reused)
    reactor.addReader(second)
    d.send(b"to the new socket")
    reactor.iterate(1)
    assert second.read == [b"to the new socket"]
    assert first.read == []
    reactor.removeReader(second)
    for sock in (b, d, reused):
        sock.close()


def test_a_listening_socket_on_a_number_closed_this_turn_leaves_without_error() -> None:
    # A connect attempt fails and closes its socket; in the same turn a listening
    # socket gets the freed number and stops again (a test's cleanup, a reload):
    # the kernel never watched the listening socket, and forgot the closed one.
    reactor, counting = coalescing()
    a, b = pair()
    first = Reader(a)
    reactor.addWriter(first)
    reactor.iterate(0)
    number = a.fileno()
    reactor.removeWriter(first)
    a.close()
    listening = on_number(socket.socket(), number)
    listening.bind(("127.0.0.1", 0))
    listening.listen()
    port = SharedPort(listening)
    reactor.addReader(port)
    reactor.removeReader(port)  # raised FileNotFoundError (ENOENT) from epoll_ctl
    reactor.iterate(0)
    assert counting.calls == [("register", number)]
    # The number is free for the next one, which is watched as usual.
    reactor.addReader(port)
    reactor.iterate(0)
    reactor.removeReader(port)
    assert counting.calls[1:] == [("register", number), ("unregister", number)]
    listening.close()
    b.close()


def test_a_regular_file_is_polled_continuously_as_twisted_does() -> None:
    reactor, _ = coalescing()
    with tempfile.TemporaryFile() as handle:
        handle.write(b"file bytes")
        handle.flush()
        handle.seek(0)
        reader = Reader(handle)
        reactor.addReader(reader)
        reactor.iterate(0)
        assert reactor._continuousPolling.isReading(reader)
        assert reader in reactor.getReaders()
        reactor.iterate(0)
        assert b"".join(reader.read) == b"file bytes"
        reactor.removeReader(reader)
        assert reader not in reactor.getReaders()


@implementer(IHalfCloseableProtocol)
class _Echo(Protocol):
    def dataReceived(self, data: bytes) -> None:
        assert self.transport is not None
        self.transport.write(data)

    def readConnectionLost(self) -> None:
        assert self.transport is not None
        self.transport.loseConnection()

    def writeConnectionLost(self) -> None:
        pass


@implementer(IHalfCloseableProtocol)
class _Client(Protocol):
    def __init__(self, payload: bytes) -> None:
        self.payload = payload
        self.received: list[bytes] = []
        self.done = False

    def connectionMade(self) -> None:
        transport: Any = self.transport
        transport.write(self.payload)
        transport.loseWriteConnection()  # half-close: the echo must still arrive

    def dataReceived(self, data: bytes) -> None:
        self.received.append(data)

    def readConnectionLost(self) -> None:
        assert self.transport is not None
        self.transport.loseConnection()

    def writeConnectionLost(self) -> None:
        pass

    def connectionLost(self, reason: Failure | None = None) -> None:
        self.done = True


def echo_round(reactor: Any, payload: bytes) -> bytes:
    factory = Factory.forProtocol(_Echo)
    factory.protocol = _Echo
    port = reactor.listenTCP(0, factory, interface="127.0.0.1")
    client = _Client(payload)
    reactor.connectTCP("127.0.0.1", port.getHost().port,
                       ClientFactory.forProtocol(lambda: client))
    turns = 0
    while not client.done and turns < 100_000:
        reactor.iterate(1)
        turns += 1
    port.stopListening()
    for _ in range(3):
        reactor.iterate(0)
    return b"".join(client.received)


def test_a_tcp_echo_with_half_close_is_byte_exact_with_fewer_calls() -> None:
    big = os.urandom(3 * 1024 * 1024 + 7)  # many full socket buffers, both ways
    assert echo_round(coalescing()[0], big) == big
    # Compared on a payload the socket buffers hold: how often a buffer fills (and
    # writing is watched) depends on timing, so 3 MiB made the counts vary by a few.
    payload = os.urandom(100_007)
    coalesced, calls = coalescing()
    assert echo_round(coalesced, payload) == payload
    plain: Any = EPollReactor()
    plain_calls = CountingPoller(plain._poller)
    plain._poller = plain_calls
    assert echo_round(plain, payload) == payload
    assert len(calls.calls) < len(plain_calls.calls)


def test_a_reader_learns_from_the_event_whether_the_peer_has_sent_its_fin() -> None:
    import select

    reactor, _ = coalescing()
    a, b = pair()
    seen: list[int] = []

    class Noting(Reader):
        def doRead(self) -> Any:
            seen.append(reactor.last_event)
            return super().doRead()

    reader = Noting(a)
    reactor.addReader(reader)
    b.send(b"data")
    reactor.iterate(1)
    b.shutdown(socket.SHUT_WR)
    reactor.iterate(1)
    assert [bool(event & select.EPOLLRDHUP) for event in seen] == [False, True]
    assert reactor.last_event == 0  # only while an event is dispatched
    reactor.removeReader(reader)
    a.close()
    b.close()


def test_a_socket_handed_to_another_object_costs_no_call() -> None:
    # A splice takes a connection's socket from its transport within one turn: epoll
    # watches the same socket already, and events go to the new object.
    reactor, counting = coalescing()
    a, b = pair()
    transport, splice_end = Reader(a), Reader(a)
    reactor.addReader(transport)
    reactor.iterate(0)
    reactor.removeReader(transport)
    reactor.addReader(splice_end)
    b.send(b"after the handover")
    reactor.iterate(1)
    assert counting.calls == [("register", a.fileno())]
    assert splice_end.read == [b"after the handover"]
    assert transport.read == []
    reactor.removeReader(splice_end)
    a.close()
    b.close()


def test_hooks_run_before_every_wait_on_gatekeeps_loop_only() -> None:
    reactor, _ = coalescing()
    seen: list[int] = []
    assert before_wait(reactor, lambda: seen.append(len(seen)))
    reactor.iterate(0)
    reactor.iterate(0)
    assert seen == [0, 1]
    plain: Any = EPollReactor()
    assert not before_wait(plain, lambda: None)
    assert not before_wait(Clock(), lambda: None)


class Raising(Reader):
    """A reader whose doRead raises (a protocol bug)."""

    def doRead(self) -> Any:
        raise ZeroDivisionError("bug in a protocol")


def test_a_descriptor_whose_handler_raises_is_logged_and_disconnected() -> None:
    from twisted.python import log as legacy

    reactor, _ = coalescing()
    a, b = pair()
    raising, other = Raising(a), Reader(b)
    reactor.addReader(raising)
    reactor.addReader(other)
    errors: list[Any] = []
    legacy.addObserver(errors.append)
    try:
        b.send(b"x")
        a.send(b"y")
        reactor.iterate(1)
        reactor.iterate(0)
    finally:
        legacy.removeObserver(errors.append)
    [lost] = raising.lost
    assert lost.check(ZeroDivisionError)
    assert [e for e in errors if e.get("isError")]
    assert raising not in reactor.getReaders()
    assert other.read == [b"y"]  # the other descriptor's event was still handled
    reactor.removeReader(other)
    a.close()
    b.close()


def test_hand_over_puts_another_object_in_place_as_watched() -> None:
    reactor, counting = coalescing()
    a, b = pair()
    transport, splice_end, stranger = Reader(a), Reader(a), Reader(b)
    reactor.addReader(transport)
    reactor.iterate(0)
    assert reactor.hand_over(stranger, splice_end) is None  # not the descriptor's object
    assert reactor.hand_over(transport, splice_end) == (True, False)
    b.send(b"to the new object")
    reactor.iterate(1)
    assert splice_end.read == [b"to the new object"]
    assert transport.read == []
    assert counting.calls == [("register", a.fileno())]
    assert splice_end in reactor.getReaders() and transport not in reactor.getReaders()
    reactor.removeReader(splice_end)
    a.close()
    b.close()


class Waker(Reader):
    """As Twisted's wakers: once closed, it has no number to give (fileno raises)."""

    def fileno(self) -> int:
        if self.sock is None:
            raise AttributeError("closed")
        return int(self.sock.fileno())


def test_a_descriptor_that_cannot_tell_its_number_once_closed_is_forgotten() -> None:
    reactor, counting = coalescing()
    a, b = pair()
    waker = Waker(a)
    number = a.fileno()
    reactor.addReader(waker)
    reactor.iterate(0)
    reactor.removeReader(waker)
    a.close()
    waker.sock = None
    reactor.iterate(0)  # must not raise from the flush
    assert waker not in reactor.getReaders()
    assert counting.calls[0] == ("register", number)
    b.close()


class RacingPoller:
    """
    The reactor's epoll object, except that the next wait reports ``event`` for ``fd``
    instead of asking the kernel: what a wait may return while the kernel is still
    handling a peer's RST (``EPOLLERR`` without ``EPOLLIN``, see gatekeep.streamerror).
    """

    def __init__(self, poller: Any, fd: int, event: int) -> None:
        self.poller = poller
        self.next: list[tuple[int, int]] | None = [(fd, event)]

    def poll(self, timeout: float = -1, most: int = -1) -> list[tuple[int, int]]:
        events, self.next = self.next, None
        return events if events is not None else self.poller.poll(timeout, most)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.poller, name)


def tcp_pair() -> tuple[socket.socket, socket.socket]:
    """A loopback TCP connection: (accepted end, connecting end), both non-blocking."""
    with socket.create_server(("127.0.0.1", 0)) as server:
        near = socket.create_connection(server.getsockname())
        far, _ = server.accept()
    far.setblocking(False)
    near.setblocking(False)
    return far, near


def reset(sock: socket.socket) -> None:
    """Close ``sock`` with an RST instead of a FIN."""
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    sock.close()


def wait_readable(sock: socket.socket) -> None:
    import select

    assert select.select([sock], [], [], 5)[0], "the peer's RST or FIN never arrived"


@pytest.mark.parametrize("how", ["reset", "close"])
def test_a_hang_up_without_input_is_a_reset_only_if_a_read_would_say_so(how: str) -> None:
    import select

    reactor, _ = coalescing()
    watched, peer = tcp_pair()
    reader = Reader(watched)
    reactor.addReader(reader)
    reactor.iterate(0)  # registered with the kernel
    reset(peer) if how == "reset" else peer.close()
    wait_readable(watched)
    reactor._poller = RacingPoller(reactor._poller, watched.fileno(),
                                   select.EPOLLERR | select.EPOLLHUP)
    reactor.iterate(0)
    assert len(reader.lost) == 1
    if how == "reset":
        assert reader.lost[0].check(error.ConnectionLost), reader.lost[0]
        assert "reset" in reader.lost[0].getErrorMessage()
    else:
        assert reader.lost[0].check(error.ConnectionDone), reader.lost[0]
    assert reader not in reactor.getReaders()
    watched.close()


class Ending(Protocol):
    """A protocol on a Twisted TCP transport (as TLS is, wrapping one): how it ended."""

    def __init__(self) -> None:
        self.reasons: list[Failure] = []

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        self.reasons.append(reason)


def test_a_protocol_on_a_tcp_transport_hears_a_racing_reset_as_a_reset() -> None:
    import select

    reactor, _ = coalescing()
    ending = Ending()
    port = reactor.listenTCP(0, Factory.forProtocol(lambda: ending), interface="127.0.0.1")
    client = socket.create_connection(("127.0.0.1", port.getHost().port))
    turns = 0
    while ending.transport is None and turns < 1000:
        reactor.iterate(0.01)
        turns += 1
    transport: Any = ending.transport
    assert transport is not None, "never accepted"
    reset(client)
    wait_readable(transport.socket)
    reactor._poller = RacingPoller(reactor._poller, transport.fileno(),
                                   select.EPOLLERR | select.EPOLLHUP)
    reactor.iterate(0)
    assert [reason.type for reason in ending.reasons] == [error.ConnectionLost]
    port.stopListening()
    reactor.iterate(0)


def test_timed_and_thread_calls_run_as_on_twisteds_loop() -> None:
    import threading

    reactor, _ = coalescing()
    assert reactor.timeout() is None  # nothing scheduled: wait for events only
    ran: list[str] = []
    reactor.callLater(0, ran.append, "now")
    later = reactor.callLater(0.05, ran.append, "later")
    cancelled = reactor.callLater(0, ran.append, "cancelled")
    cancelled.cancel()
    delayed = reactor.callLater(0.01, ran.append, "delayed")
    delayed.delay(0.1)
    reactor.iterate(0)
    assert ran == ["now"]
    timeout = reactor.timeout()
    assert timeout is not None and 0 < timeout <= 0.05
    threading.Thread(target=reactor.callFromThread, args=(ran.append, "thread")).start()
    deadline = reactor.seconds() + 5
    while len(ran) < 4 and reactor.seconds() < deadline:
        reactor.iterate(0.01)
    assert sorted(ran) == ["delayed", "later", "now", "thread"]
    assert ran.index("later") < ran.index("delayed")  # delayed by 0.1 s: after "later"
    assert not later.active() and not delayed.active()
    assert reactor.timeout() is None


def test_an_error_in_a_turn_is_logged_and_the_loop_goes_on() -> None:
    from tests.helpers import captured_log

    reactor, _ = coalescing()
    class Failing:
        """The kernel's epoll object, failing its next wait once."""

        def __init__(self, poller: Any) -> None:
            self.poller, self.failed = poller, False

        def poll(self, timeout: float = -1, most: int = -1) -> Any:
            if not self.failed:
                self.failed = True
                raise RuntimeError("a wait that failed")
            return self.poller.poll(timeout, most)

        def __getattr__(self, name: str) -> Any:
            return getattr(self.poller, name)

    reactor._poller = Failing(reactor._poller)
    ran: list[int] = []
    reactor.callLater(0.01, ran.append, 1)
    reactor.callLater(0.02, reactor.stop)
    with captured_log() as events:
        reactor.run(installSignalHandlers=False)
    failures = [event["log_failure"] for event in events if "log_failure" in event]
    assert [f.getErrorMessage() for f in failures] == ["a wait that failed"]
    assert ran == [1]  # the loop went on after the error
