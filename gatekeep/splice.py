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

from twisted.internet.error import ConnectionDone, ConnectionLost
from twisted.internet.interfaces import IReadWriteDescriptor
from twisted.python.failure import Failure
from zope.interface import implementer

from gatekeep.sendnow import PLAIN
from gatekeep.streamerror import stream_error

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
    # (Twisted's plain transports all have these attributes; ``socket`` goes once closed)
    return (type(transport) in PLAIN and not transport.TLS
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


@implementer(IReadWriteDescriptor)
class _End:
    """
    One socket as the reactor sees it while spliced (the transport stands aside), and
    the direction that reads from it: this socket -> a pipe -> :attr:`peer`'s socket.
    """

    __slots__ = ("bare", "count_in", "eof", "fd", "peer", "pending", "pipe", "queued",
                 "reading", "shut", "side", "sock", "splicer", "transport", "writing")

    def __init__(self, splicer: Splicer, transport: Any, side: str) -> None:
        self.splicer = splicer
        self.transport = transport
        self.side = side
        self.sock: socket.socket = transport.socket
        self.fd: int = self.sock.fileno()
        #: Connected by gatekeep itself (``RawBackend``): there is no transport to set aside.
        self.bare = _bare(transport)
        self.reading = False
        self.writing = False
        self.peer: _End = self
        #: Whether this direction's bytes are the record's bytes_in (from the client).
        self.count_in = side == "client"
        self.pipe: tuple[int, int] | None = None
        #: Bytes in the pipe.
        self.queued = 0
        #: User-space bytes to write to the peer first (a PROXY header, the sniffed prefix).
        self.pending: memoryview | None = None
        #: This socket's EOF was read; and passed on to the peer (shutdown or close).
        self.eof = False
        self.shut = False

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


def _stand_aside(cls: type) -> type:
    """
    A subclass of the transport class ``cls`` for the time its socket is spliced:
    whoever closes it (a timeout, the drain at stop, the relay itself) goes through
    the splicer first, so that the reactor stops watching the splice's end before the
    transport watches its descriptor again. The splicer swaps a transport's class to
    this one and back, which costs no object per connection.
    """

    def loseConnection(self: Any, *args: Any) -> Any:
        _reclaim(self)
        return self.loseConnection(*args)

    def abortConnection(self: Any) -> Any:
        _reclaim(self)
        return self.abortConnection()

    return type(f"Spliced{cls.__name__}", (cls,), {
        "loseConnection": loseConnection, "abortConnection": abortConnection,
        "__module__": __name__})


_SPLICED = {cls: _stand_aside(cls) for cls in PLAIN}
_UNSPLICED = {spliced: cls for cls, spliced in _SPLICED.items()}


def _reclaim(transport: Any) -> None:
    """A spliced transport is being closed: the splicer lets go of it first."""
    splicer = transport.__dict__.get("_gatekeep_splicer")
    if splicer is not None:
        splicer.abandon()
    _restore(transport)


def _restore(transport: Any) -> None:
    """The transport's own class again (see :func:`_stand_aside`)."""
    transport.__class__ = _UNSPLICED.get(type(transport), type(transport))
    transport.__dict__.pop("_gatekeep_splicer", None)


class Splicer:
    """Relays one joined connection with splice(2); see the module docstring."""

    __slots__ = ("activity", "backend", "client", "finished", "reactor", "relay", "starting")

    def __init__(self, relay: Relay, reactor: Any, pending: list[bytes],
                 activity: Callable[[], None] | None = None) -> None:
        self.relay = relay
        self.reactor = reactor
        self.activity = activity
        self.finished = False
        self.starting: Any = None
        self.client = client = _End(self, relay.client, "client")
        self.backend = backend = _End(self, relay.backend, "backend")
        client.peer = backend
        backend.peer = client
        if pending:
            data = pending[0] if len(pending) == 1 else b"".join(pending)
            if data:
                client.pending = memoryview(data)
        client.eof = relay.client_eof

    # --------------------------------------------------------------- control

    def start(self) -> None:
        """Take both sockets from their transports and start relaying."""
        reactor = self.reactor
        # (a Twisted backend's socket must not be acted on before the next turn: its
        # ends are watched from _begin on, as it was)
        hand_over = getattr(reactor, "hand_over", None) if self.backend.bare else None
        for end in (self.client, self.backend):
            if end.bare:
                continue
            transport = end.transport
            watched = hand_over(transport, end) if hand_over is not None else None
            if watched is None:
                reactor.removeReader(transport)  # (what stopReading and stopWriting do)
                reactor.removeWriter(transport)
            else:
                # gatekeep's event loop: this end took the transport's place as it was
                # watched; _update changes only what must change.
                end.reading, end.writing = watched
            transport._gatekeep_splicer = self
            transport.__class__ = _SPLICED[type(transport)]
        if self.backend.bare:
            # Connected by gatekeep itself (RawConnect): nothing else acts on it now.
            self._begin()
            return
        # A Twisted backend joins from inside its transport's connect event, which goes
        # on (a zero-byte send) after this returns: writing, shutting down or failing
        # the socket must wait for the next turn of the reactor.
        self.starting = self.reactor.callLater(0, self._begin)

    def _begin(self) -> None:
        self.starting = None
        self._pump_out(self.client)
        if not self.finished:
            self._update()

    def buffered(self) -> int:
        """Bytes gatekeep holds for either direction right now (pipes and pending)."""
        return sum(e.queued + (len(e.pending) if e.pending is not None else 0)
                   for e in (self.client, self.backend))

    def _update(self) -> None:
        """Watch each socket for what its two directions need now."""
        reactor = self.reactor
        for end in (self.client, self.backend):
            peer = end.peer
            # Read while this direction is open and holds nothing; write while the
            # other direction holds bytes for this socket.
            read = not end.eof and not end.queued and end.pending is None
            write = bool(peer.queued) or peer.pending is not None
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

    def _release(self) -> None:
        """Stop watching both sockets and give the pipes back; the transports take over."""
        self.finished = True
        if self.starting is not None:
            self.starting.cancel()
            self.starting = None
        reactor = self.reactor
        for end in (self.client, self.backend):
            transport = end.transport
            if getattr(transport, "disconnected", False):
                # Its connectionLost stopped watching the descriptor (by number), which
                # removed this end too; the socket may be closed, so leave the reactor be.
                end.reading = end.writing = False
            else:
                if end.reading:
                    end.reading = False
                    reactor.removeReader(end)
                if end.writing:
                    end.writing = False
                    reactor.removeWriter(end)
            if not end.bare:
                _restore(transport)
            if end.pipe is not None:
                if end.queued:
                    _close_pipe(end.pipe)
                else:
                    _pool.give(end.pipe)
                end.pipe = None
                end.queued = 0

    def client_ended(self) -> None:
        """The client's EOF came through its transport (read before the splice began)."""
        if self.finished or self.client.eof:
            return
        self._source_ended(self.client)
        if not self.finished:
            self._update()

    def abandon(self) -> None:
        """The relay is ending for another reason (a transport was closed): stop."""
        if not self.finished:
            self._release()

    # --------------------------------------------------------------- events

    def readable(self, end: _End) -> None:
        try:
            self._pump_in(end)
        except OSError as error:
            self._failed(end, error)
            return
        if not self.finished:
            self._update()

    def writable(self, end: _End) -> None:
        self._pump_out(end.peer)
        if not self.finished:
            self._update()

    def lost(self, end: _End, reason: Failure) -> None:
        if self.finished:
            return
        if isinstance(reason.value, ConnectionDone):
            # The reactor saw a hang-up without EPOLLIN. A reset can look like that
            # (gatekeep.streamerror): a read (a peek) tells.
            code = stream_error(end.sock)
            if code:
                self._end_with(end, Failure(ConnectionLost(os.strerror(code))))
                return
            # Otherwise whatever was readable was read: treat it as EOF.
            self._source_ended(end)
            if not self.finished:
                self._update()
            return
        self._end_with(end, reason)

    # --------------------------------------------------------------- moving bytes

    def _pump_in(self, src: _End) -> None:
        """Move what ``src`` has into its pipe and on to its peer."""
        fd = src.fd
        record = self.relay.record
        for _ in range(_ROUNDS):
            if src.eof or src.queued or src.pending is not None:
                return
            pipe = src.pipe
            if pipe is None:
                free = _pool.free
                pipe = src.pipe = free.pop() if free else _pool.take()
            try:
                moved = os.splice(fd, pipe[1], _CHUNK, flags=_FLAGS)
            except BlockingIOError:
                self._idle(src)
                return
            except InterruptedError:
                continue
            if moved == 0:
                self._idle(src)
                self._source_ended(src)
                return
            src.queued = moved
            if src.count_in:
                record.bytes_in += moved
            else:
                record.bytes_out += moved
            if self.activity is not None:
                self.activity()
            self._pump_out(src)
            if self.finished:
                return
            if moved < _PIPE_SIZE and not src.queued:
                # Less than a pipe's worth: the socket is drained and, if the event
                # says no FIN is waiting behind it (EPOLLRDHUP: gatekeep's event
                # loop), another splice would only say EAGAIN.
                event = getattr(self.reactor, "last_event", 0)
                if event and not event & select.EPOLLRDHUP:
                    self._idle(src)
                    return

    def _idle(self, src: _End) -> None:
        """An empty direction gives its pipe back to the pool."""
        if src.pipe is not None and not src.queued:
            _pool.give(src.pipe)
            src.pipe = None

    def _pump_out(self, src: _End) -> None:
        """Write what ``src``'s direction holds; then, at EOF, pass the half-close on."""
        dst = src.peer
        try:
            while src.pending is not None:
                sent = dst.sock.send(src.pending)
                src.pending = src.pending[sent:] if sent < len(src.pending) else None
            while src.queued:
                assert src.pipe is not None
                src.queued -= os.splice(src.pipe[0], dst.fd, src.queued, flags=_FLAGS)
        except (BlockingIOError, InterruptedError):
            return
        except OSError as error:
            self._failed(dst, error)
            return
        if src.eof:
            self._shut(src)

    def _source_ended(self, src: _End) -> None:
        src.eof = True
        if src is self.client:
            self.relay.client_eof = True
        else:
            self.relay.backend_eof = True
        if not src.queued and src.pending is None:
            self._shut(src)

    def _shut(self, src: _End) -> None:
        if src.shut:
            return
        src.shut = True
        self._idle(src)
        if not src.peer.shut:
            # (not contextlib.suppress: three calls more on every connection)
            try:  # noqa: SIM105
                src.peer.sock.shutdown(socket.SHUT_WR)
            except OSError:
                pass  # already gone: its read side tells how
            return
        # Both directions ended: spliced_done closes both sockets right away (a close
        # sends the FIN): a shutdown first would be one more system call.
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
