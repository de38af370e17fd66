"""
The Linux fast path of the relay: bytes move kernel-side with ``splice(2)``.

Once a ``forward`` connection is joined (detection done, a PROXY header and the
sniffed bytes written), both sockets leave Twisted's transports and are driven by
:class:`Splicer` on the same reactor: each direction splices from its source socket
into a pipe and from the pipe into its destination socket, so the bytes never enter
user space. The semantics are the portable relay's (:mod:`gatekeep.relay`):

- flow control: a direction reads its source only while its pipe is empty, so at
  most one pipe's worth (64 KiB) is in flight per direction, and a slow reader
  stops reading on the other side;
- half-close: a source's EOF becomes ``shutdown(SHUT_WR)`` on the destination once
  the pipe is flushed; when both directions ended, both connections close;
- byte counts go to the connection's record as they move (``bytes_in`` from the
  client, ``bytes_out`` to it), and an ``activity`` callback hears about every move;
- errors (a reset, a write to a closed peer) end the connection through the
  transport's own ``connectionLost``, so logs, metrics and the tracker see the same
  events as on the portable path.

Pipes come from a small per-process pool and go back to it whenever a direction's
pipe is empty, so idle connections hold no pipes (and no extra descriptors).

The fast path is used only where it has the same effect: on Linux, for plain
stream sockets on both sides (TLS, SOCKS or any wrapped transport keeps the
portable path), and unless ``GATEKEEP_SPLICE=0`` is set in the environment or the
config's ``splice = false`` turns it off (:func:`configure`).
"""

from __future__ import annotations

import contextlib
import errno
import os
import select
import socket
import sys
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from twisted.internet import tcp, unix
from twisted.internet.error import ConnectionDone, ConnectionLost
from twisted.internet.interfaces import IReadWriteDescriptor
from twisted.python.failure import Failure
from zope.interface import implementer

if TYPE_CHECKING:
    from gatekeep.relay import Relay

__all__ = ["AVAILABLE", "Splicer", "configure", "enabled", "usable"]

#: Whether this platform has splice(2) at all.
AVAILABLE = sys.platform.startswith("linux") and hasattr(os, "splice")

_FLAGS = getattr(os, "SPLICE_F_MOVE", 1) | getattr(os, "SPLICE_F_NONBLOCK", 2)
#: Bytes asked for per splice into a pipe (the pipe's capacity bounds it anyway).
_CHUNK = 1 << 20
#: Reads per readiness event before going back to the reactor (fairness).
_ROUNDS = 8
#: A pipe's default capacity: a splice that moved less emptied its socket.
_PIPE_SIZE = 1 << 16
_AGAIN = (errno.EAGAIN, errno.EWOULDBLOCK, errno.EINTR)
# Transports whose ``socket`` is the connection itself, with nothing in between.
_PLAIN = (tcp.Server, tcp.Client, unix.Server, unix.Client)

def _environment_allows() -> bool:
    return os.environ.get("GATEKEEP_SPLICE", "1").strip().lower() not in ("0", "off", "no",
                                                                        "false")


#: The config's ``splice`` key, and ``GATEKEEP_SPLICE`` as read when it was applied.
_switch = {"config": True, "environment": _environment_allows()}


def _bare(transport: Any) -> bool:
    """A backend gatekeep connected itself (``RawBackend``): always spliced, no transport."""
    return getattr(transport, "spliced_only", False) is True


def configure(enable: bool) -> None:
    """
    The config's ``splice`` key: False keeps every relay on the portable path. The
    environment's ``GATEKEEP_SPLICE`` is read here too (at start and on each reload),
    not per connection.
    """
    _switch["config"] = enable
    _switch["environment"] = _environment_allows()


def enabled() -> bool:
    """True if new relays may take the fast path (platform, config and environment)."""
    return AVAILABLE and _switch["config"] and _switch["environment"]


def usable(transport: Any) -> bool:
    """True if ``transport`` is a bare socket connection with nothing left to write."""
    return (type(transport) in _PLAIN and not getattr(transport, "TLS", False)
            and bool(transport.connected) and not transport.disconnecting
            and not transport.dataBuffer and not transport._tempDataBuffer
            and getattr(transport, "socket", None) is not None)


class _PipePool:
    """Empty pipes for directions that have bytes in flight; a few are kept spare."""

    def __init__(self, spare: int = 64) -> None:
        self.spare = spare
        self.free: list[tuple[int, int]] = []

    def take(self) -> tuple[int, int]:
        if self.free:
            return self.free.pop()
        return os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)

    def give(self, pipe: tuple[int, int]) -> None:
        """Return an *empty* pipe."""
        if len(self.free) < self.spare:
            self.free.append(pipe)
        else:
            os.close(pipe[0])
            os.close(pipe[1])


_pool = _PipePool()


def _close_pipe(pipe: tuple[int, int]) -> None:
    for fd in pipe:
        with contextlib.suppress(OSError):
            os.close(fd)


class _Flow:
    """One direction: ``src`` -> pipe -> ``dst``."""

    __slots__ = ("count_in", "dst", "eof", "pending", "pipe", "queued", "shut", "src")

    def __init__(self, src: _End, dst: _End, count_in: bool) -> None:
        self.src = src
        self.dst = dst
        #: Whether this direction's bytes are the record's bytes_in (from the client).
        self.count_in = count_in
        self.pipe: tuple[int, int] | None = None
        #: Bytes in the pipe.
        self.queued = 0
        #: User-space bytes to write first (the PROXY header and the sniffed prefix).
        self.pending: memoryview | None = None
        self.eof = False
        self.shut = False

    @property
    def busy(self) -> bool:
        return bool(self.queued or self.pending)


@implementer(IReadWriteDescriptor)
class _End:
    """One socket as the reactor sees it while spliced (the transport stands aside)."""

    __slots__ = ("fd", "reading", "side", "sock", "splicer", "transport", "writing")

    def __init__(self, splicer: Splicer, transport: Any, side: str) -> None:
        self.splicer = splicer
        self.transport = transport
        self.side = side
        self.sock: socket.socket = transport.socket
        self.fd: int = self.sock.fileno()
        self.reading = False
        self.writing = False

    def fileno(self) -> int:
        return self.fd

    def logPrefix(self) -> str:
        return _PREFIXES[self.side]

    def doRead(self) -> None:
        self.splicer.readable(self)

    def doWrite(self) -> None:
        self.splicer.writable(self)

    def connectionLost(self, reason: Failure) -> None:
        # The reactor disconnects a descriptor on EPOLLHUP/EPOLLERR without EPOLLIN,
        # or when it shuts down; it has already stopped watching it.
        self.reading = self.writing = False
        self.splicer.lost(self, reason)


_PREFIXES = {"client": "splice,client", "backend": "splice,backend"}
_CLOSERS = ("loseConnection", "abortConnection")


class _Closer:
    """Stands in for a spliced transport's close method: give the socket back, then close."""

    __slots__ = ("name", "splicer", "transport")

    def __init__(self, splicer: Splicer, transport: Any, name: str) -> None:
        self.splicer = splicer
        self.transport = transport
        self.name = name

    def __call__(self, *args: Any) -> Any:
        self.splicer.abandon()
        self.transport.__dict__.pop(self.name, None)
        return getattr(self.transport, self.name)(*args)


class Splicer:
    """Relays one joined connection with splice(2); see the module docstring."""

    __slots__ = (
        "activity",
        "b2c",
        "backend",
        "c2b",
        "client",
        "finished",
        "reactor",
        "relay",
        "starting",
    )

    def __init__(self, relay: Relay, reactor: Any, pending: list[bytes],
                 activity: Callable[[], None] | None = None) -> None:
        self.relay = relay
        self.reactor = reactor
        self.activity = activity
        self.finished = False
        self.starting: Any = None
        self.client = _End(self, relay.client, "client")
        self.backend = _End(self, relay.backend, "backend")
        self.c2b = _Flow(self.client, self.backend, count_in=True)
        self.b2c = _Flow(self.backend, self.client, count_in=False)
        data = b"".join(pending)
        if data:
            self.c2b.pending = memoryview(data)
        self.c2b.eof = relay.client_eof

    # --------------------------------------------------------------- control

    def start(self) -> None:
        """Take both sockets from their transports and start relaying."""
        for end in (self.client, self.backend):
            transport = end.transport
            if _bare(transport):
                continue
            transport.stopReading()
            transport.stopWriting()
            # Whoever closes a spliced transport (a timeout, the drain at stop, the
            # relay itself) goes through the splicer first, so that the reactor stops
            # watching this end before the transport watches its descriptor again.
            for name in _CLOSERS:
                setattr(transport, name, _Closer(self, transport, name))
        if _bare(self.backend.transport):
            # Connected by gatekeep itself (RawConnect): nothing else acts on it now.
            self._begin()
            return
        # A Twisted backend joins from inside its transport's connect event, which goes
        # on (a zero-byte send) after this returns: writing, shutting down or failing
        # the socket must wait for the next turn of the reactor.
        self.starting = self.reactor.callLater(0, self._begin)

    def _begin(self) -> None:
        self.starting = None
        self._pump_out(self.c2b)
        if not self.finished:
            self._update()

    def buffered(self) -> int:
        """Bytes gatekeep holds for either direction right now (pipes and pending)."""
        return sum(f.queued + (len(f.pending) if f.pending is not None else 0)
                   for f in (self.c2b, self.b2c))

    def _want(self, end: _End, read: bool, write: bool) -> None:
        reactor = self.reactor
        if read != end.reading:
            end.reading = read
            if read:
                reactor.addReader(end)
            else:
                reactor.removeReader(end)
        if write != end.writing:
            end.writing = write
            if write:
                reactor.addWriter(end)
            else:
                reactor.removeWriter(end)

    def _update(self) -> None:
        c2b, b2c = self.c2b, self.b2c
        # (``busy`` spelt out: this runs after every event)
        c2b_busy = bool(c2b.queued or c2b.pending)
        b2c_busy = bool(b2c.queued or b2c.pending)
        self._want(self.client, not c2b.eof and not c2b_busy, b2c_busy)
        self._want(self.backend, not b2c.eof and not b2c_busy, c2b_busy)

    def _release(self) -> None:
        """Stop watching both sockets and give the pipes back; the transports take over."""
        self.finished = True
        if self.starting is not None:
            self.starting.cancel()
            self.starting = None
        for end in (self.client, self.backend):
            self._forget(end)
            if not _bare(end.transport):
                for name in _CLOSERS:
                    end.transport.__dict__.pop(name, None)
        for flow in (self.c2b, self.b2c):
            if flow.pipe is not None:
                if flow.queued:
                    _close_pipe(flow.pipe)
                else:
                    _pool.give(flow.pipe)
                flow.pipe = None
                flow.queued = 0

    def _forget(self, end: _End) -> None:
        if getattr(end.transport, "disconnected", False):
            # Its connectionLost stopped watching the descriptor (by number), which
            # removed this end too; the socket may be closed, so leave the reactor be.
            end.reading = end.writing = False
        else:
            self._want(end, False, False)

    def client_ended(self) -> None:
        """The client's EOF came through its transport (read before the splice began)."""
        if self.finished or self.c2b.eof:
            return
        self._source_ended(self.c2b)
        if not self.finished:
            self._update()

    def abandon(self) -> None:
        """The relay is ending for another reason (a transport was closed): stop."""
        if not self.finished:
            self._release()

    # --------------------------------------------------------------- events

    def readable(self, end: _End) -> None:
        flow = self.c2b if end is self.client else self.b2c
        try:
            self._pump_in(flow)
        except OSError as error:
            self._failed(flow.src, error)
            return
        if not self.finished:
            self._update()

    def writable(self, end: _End) -> None:
        flow = self.b2c if end is self.client else self.c2b
        self._pump_out(flow)
        if not self.finished:
            self._update()

    def lost(self, end: _End, reason: Failure) -> None:
        if self.finished:
            return
        if reason.check(ConnectionDone) is not None:
            # The reactor saw a hang-up: whatever was readable was read; treat as EOF.
            flow = self.c2b if end is self.client else self.b2c
            self._source_ended(flow)
            if not self.finished:
                self._update()
            return
        self._end_with(end, reason)

    # --------------------------------------------------------------- moving bytes

    def _pump_in(self, flow: _Flow) -> None:
        src = flow.src.fd
        record = self.relay.record
        for _ in range(_ROUNDS):
            if flow.eof or flow.queued or flow.pending:
                return
            if flow.pipe is None:
                flow.pipe = _pool.take()
            try:
                moved = os.splice(src, flow.pipe[1], _CHUNK, flags=_FLAGS)
            except BlockingIOError:
                self._idle(flow)
                return
            except InterruptedError:
                continue
            if moved == 0:
                self._idle(flow)
                self._source_ended(flow)
                return
            flow.queued = moved
            if flow.count_in:
                record.bytes_in += moved
            else:
                record.bytes_out += moved
            if self.activity is not None:
                self.activity()
            self._pump_out(flow)
            if self.finished:
                return
            if moved < _PIPE_SIZE and not flow.queued and not self._more():
                # Less than a pipe's worth: the socket is drained, and no FIN is
                # waiting behind it; another splice would only say EAGAIN.
                self._idle(flow)
                return

    def _more(self) -> bool:
        """
        Whether the source may still hold something this event: with gatekeep's
        event loop, only if the peer's FIN has arrived (EPOLLRDHUP); else, as far as
        anyone can tell without asking the socket, yes.
        """
        event = getattr(self.reactor, "last_event", None)
        return event is None or not event or bool(event & select.EPOLLRDHUP)

    def _idle(self, flow: _Flow) -> None:
        """An empty direction gives its pipe back to the pool."""
        if flow.pipe is not None and not flow.queued:
            _pool.give(flow.pipe)
            flow.pipe = None

    def _pump_out(self, flow: _Flow) -> None:
        """Write what the direction holds; then, at EOF, pass the half-close on."""
        dst = flow.dst
        try:
            while flow.pending is not None:
                sent = dst.sock.send(flow.pending)
                flow.pending = flow.pending[sent:] if sent < len(flow.pending) else None
            while flow.queued:
                assert flow.pipe is not None
                flow.queued -= os.splice(flow.pipe[0], dst.fd, flow.queued, flags=_FLAGS)
        except (BlockingIOError, InterruptedError):
            return
        except OSError as error:
            self._failed(dst, error)
            return
        if flow.eof:
            self._shut(flow)

    def _source_ended(self, flow: _Flow) -> None:
        flow.eof = True
        if flow is self.c2b:
            self.relay.client_eof = True
        else:
            self.relay.backend_eof = True
        if not flow.busy:
            self._shut(flow)

    def _shut(self, flow: _Flow) -> None:
        if flow.shut:
            return
        flow.shut = True
        self._idle(flow)
        other = self.b2c if flow is self.c2b else self.c2b
        if not other.shut:
            with contextlib.suppress(OSError):  # already gone: its read side tells how
                flow.dst.sock.shutdown(socket.SHUT_WR)
        # else: both directions ended, and spliced_done closes both sockets right away
        # (a close sends the FIN): a shutdown first would be one more system call.
        if self.c2b.shut and self.b2c.shut:
            self._release()
            self.relay.spliced_done()

    def _failed(self, end: _End, error: OSError) -> None:
        code = error.errno
        if code in _AGAIN:
            return
        text = os.strerror(code) if code else str(error)
        self._end_with(end, Failure(ConnectionLost(text)))

    def _end_with(self, end: _End, reason: Failure) -> None:
        """``end``'s connection failed: hand both back and close it as Twisted would."""
        self._release()
        end.transport.connectionLost(reason)
