"""The accept guard: out of descriptors, a port pauses, backs off and logs sparingly."""

from __future__ import annotations

import errno
import socket
from typing import Any

import pytest
from twisted.internet import tcp
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.task import Clock

from gatekeep.acceptguard import MAX_PAUSE, MIN_PAUSE, AcceptGuard, _GuardedSocket, guard_port
from tests.helpers import captured_log


class FakePort:
    connected = True
    disconnecting = False

    def __init__(self) -> None:
        self.reading = True

    def stopReading(self) -> None:
        self.reading = False

    def startReading(self) -> None:
        self.reading = True


class FailingSocket:
    """accept() fails with ``code`` while ``failing``; other calls are recorded."""

    def __init__(self, code: int) -> None:
        self.code = code
        self.failing = True

    def accept(self) -> tuple[Any, Any]:
        if self.failing:
            raise OSError(self.code, "no")
        return "client", ("127.0.0.1", 1)

    def fileno(self) -> int:
        return 42


def guarded(code: int = errno.EMFILE) -> tuple[Clock, FakePort, FailingSocket, _GuardedSocket]:
    clock, port, sock = Clock(), FakePort(), FailingSocket(code)
    guard = AcceptGuard(port, clock, "listener pub")
    return clock, port, sock, _GuardedSocket(sock, guard)  # type: ignore[arg-type]


@pytest.mark.parametrize("code", [errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM])
def test_exhaustion_pauses_then_resumes(code: int) -> None:
    clock, port, _sock, wrapped = guarded(code)
    with pytest.raises(BlockingIOError) as raised:
        wrapped.accept()
    assert raised.value.errno == errno.EAGAIN  # Twisted ends its accept loop quietly
    assert not port.reading
    clock.advance(MIN_PAUSE)
    assert port.reading


def test_backoff_doubles_up_to_the_cap_and_resets() -> None:
    clock, port, sock, wrapped = guarded()
    delays = []
    for _ in range(8):
        with pytest.raises(BlockingIOError):
            wrapped.accept()
        [call] = clock.getDelayedCalls()
        delays.append(round(call.getTime() - clock.seconds(), 3))
        clock.advance(delays[-1])
    assert delays == [0.05, 0.1, 0.2, 0.4, 0.8, 1.0, 1.0, 1.0]
    assert delays[-1] == MAX_PAUSE
    sock.failing = False
    accepted: Any = wrapped.accept()
    assert accepted == ("client", ("127.0.0.1", 1))
    sock.failing = True
    with pytest.raises(BlockingIOError):
        wrapped.accept()
    [call] = clock.getDelayedCalls()
    assert call.getTime() - clock.seconds() == pytest.approx(MIN_PAUSE)
    assert not port.reading


def test_at_most_one_line_per_second() -> None:
    clock, _port, _sock, wrapped = guarded()
    with captured_log("gatekeep.acceptguard") as events:
        for _ in range(200):  # 200 pauses of 50 ms = 10 s of exhaustion
            with pytest.raises(BlockingIOError):
                wrapped.accept()
            wrapped._guard.accepted()  # keep the pause at its minimum
            clock.advance(MIN_PAUSE)
    assert 9 <= len(events) <= 11
    assert "EMFILE" in events[0]["log_format"].format(**events[0])
    assert events[1]["count"] == 20


def test_no_resume_after_the_port_stopped() -> None:
    clock, port, _sock, wrapped = guarded()
    with pytest.raises(BlockingIOError):
        wrapped.accept()
    port.connected = False
    clock.advance(MIN_PAUSE)
    assert not port.reading
    with pytest.raises(BlockingIOError):
        wrapped.accept()
    wrapped._guard.stop()
    assert clock.getDelayedCalls() == []


def test_other_errors_pass_through() -> None:
    _clock, port, _sock, wrapped = guarded(errno.ECONNABORTED)
    with pytest.raises(OSError) as raised:
        wrapped.accept()
    assert raised.value.errno == errno.ECONNABORTED
    assert port.reading
    assert wrapped.fileno() == 42


def test_guards_real_tcp_ports_only() -> None:
    port = tcp.Port(0, Factory.forProtocol(Protocol), interface="127.0.0.1")
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port.socket = sock
    try:
        guard = guard_port(port, Clock(), "listener x")
        assert guard is not None
        assert isinstance(port.socket, _GuardedSocket)
        assert port.socket.getsockname()[0] == "127.0.0.1"
    finally:
        sock.close()
    assert guard_port(object(), Clock(), "x") is None


def test_a_real_socket_is_accepted_as_socket_accept_would() -> None:
    """The guarded accept skips socket.accept's per-call lookups, with the same result."""
    listening = socket.create_server(("127.0.0.1", 0))
    listening.setblocking(False)
    clock, port = Clock(), FakePort()
    wrapped = _GuardedSocket(listening, AcceptGuard(port, clock, "listener pub"))
    client = socket.create_connection(listening.getsockname())
    try:
        accepted, address = wrapped.accept()
        with accepted:
            assert address == client.getsockname()
            assert accepted.getpeername() == client.getsockname()
            assert (accepted.family, accepted.type, accepted.proto) == (
                listening.family, listening.type, listening.proto)
            assert accepted.gettimeout() is None  # as socket.accept leaves it
            assert not accepted.get_inheritable()
            client.sendall(b"ping")
            assert accepted.recv(4) == b"ping"
        with pytest.raises(BlockingIOError):
            wrapped.accept()  # nothing waiting: EAGAIN, as before
    finally:
        client.close()
        listening.close()
