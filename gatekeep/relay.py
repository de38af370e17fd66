"""
Byte-exact relaying between a client and a backend, both ways, with half-close.

Flow control is Twisted's own producer/consumer machinery: each transport is the
other's streaming producer, so a slow reader on one side pauses reading on the
other and gatekeep never buffers more than a transport's write buffer per
direction. Half-close is relayed faithfully (a FIN from one side becomes a
``shutdown(SHUT_WR)`` towards the other once everything before it was written),
which ``twisted.protocols.portforward`` does not do.

On Linux, a relay between two plain sockets moves its bytes kernel-side instead
(:mod:`gatekeep.splice`), with the same semantics. A shaped relay (``shaping``) and
one whose :attr:`Relay.fast` is False stay on this user-space path. Both paths keep
the record's byte counts current and call :attr:`Relay.activity` (if set) whenever
bytes move, which is what an idle timeout needs.
"""

from __future__ import annotations

import os
import select
from collections.abc import Callable
from typing import Any

from twisted.internet import tcp
from twisted.internet.error import ConnectionDone, ConnectionLost
from twisted.internet.interfaces import IHalfCloseableProtocol, ITransport
from twisted.internet.protocol import Protocol, connectionDone
from twisted.python.failure import Failure
from zope.interface import implementer

from gatekeep import splice
from gatekeep.shapers.shaping import Shaping
from gatekeep.streamerror import stream_error
from gatekeep.values import ConnectionRecord

__all__ = ["BackendSide", "Relay"]


def _half_close(transport: Any) -> None:
    """Stop writing to ``transport`` after its buffer drains (or close, if it can't)."""
    lose_write = getattr(transport, "loseWriteConnection", None)
    if lose_write is not None:
        lose_write()
    else:
        transport.loseConnection()


class Relay:
    """
    The state shared by the two sides of one relayed connection.

    Each side's transport is registered as the other's producer only while it is
    still readable: Twisted resumes a registered producer when the consumer's
    buffer drains, and resuming a transport that already saw EOF would read the
    EOF again, or keep a half-closed write side from ever finishing.
    """

    __slots__ = ("activity", "backend", "backend_eof", "backend_gone", "client", "client_eof",
                 "client_gone", "fast", "reactor", "record", "shaping", "splicer")

    def __init__(self, client: ITransport, record: ConnectionRecord,
                 shaping: Shaping | None = None, reactor: Any = None,
                 fast: bool = False) -> None:
        self.client: Any = client
        self.backend: Any = None
        self.record = record
        #: A ``[shaper.X]`` paces this connection: it must stay on this user-space
        #: path (the relay tells it every byte it passes on).
        self.shaping = shaping
        self.reactor = reactor
        #: May use the splice fast path once joined (if both sockets allow it).
        self.fast = fast
        #: Called with no arguments whenever bytes move either way (e.g. an idle timer).
        self.activity: Callable[[], None] | None = None
        self.splicer: splice.Splicer | None = None
        self.client_eof = False
        self.backend_eof = False
        self.client_gone = False
        self.backend_gone = False

    def joined(self, backend: Any, pending: list[bytes]) -> None:
        """The backend accepted: replay what the client sent so far, then relay."""
        self.backend = backend
        if self.client_gone:
            backend.loseConnection()
            return
        if getattr(backend, "spliced_only", False) is True or (
                self.fast and self.shaping is None and self.reactor is not None
                and splice.enabled() and splice.usable(self.client)
                and splice.usable(backend)):
            self.splicer = splice.Splicer(self, self.reactor, pending, self.activity)
            self.splicer.start()
            return
        if pending:
            backend.writeSequence(pending)
        shaping = self.shaping
        if shaping is None:
            self.client.registerProducer(backend, True)
        else:
            self.client.registerProducer(shaping.gate("out", backend), True)
        if self.client_eof:
            _half_close(backend)
        elif shaping is None:
            backend.registerProducer(self.client, True)
            self.client.resumeProducing()
        else:
            client = shaping.gate("in", self.client, paused=True)
            backend.registerProducer(client, True)
            client.resumeProducing()

    def from_client(self, data: bytes) -> None:
        self.backend.write(data)
        if self.shaping is not None:
            self.shaping.passed("in", len(data))
        if self.activity is not None:
            self.activity()

    def from_backend(self, data: bytes) -> None:
        self.record.bytes_out += len(data)
        self.client.write(data)
        if self.shaping is not None:
            self.shaping.passed("out", len(data))
        if self.activity is not None:
            self.activity()

    def spliced_done(self) -> None:
        """
        The fast path relayed both directions to their end (and gave the sockets back):
        both connections close now. Nothing is buffered in user space, so each one
        closes at once, as Twisted's ``loseConnection`` would a turn later (without
        watching the socket for writing in between).
        """
        self.record.close("done")
        # Closed just below: the client's connectionLost must not ask the backend to
        # lose its connection first (a Twisted transport would then wait for a turn).
        self.backend_gone = True
        _close_now(self.client)
        _close_now(self.backend)

    def client_read_done(self) -> None:
        if _reset_behind_eof(self.client):
            return
        if self.splicer is not None and not self.splicer.finished:
            # Read while sniffing, delivered after a backend that connected at once
            # joined: the splicer passes the half-close on.
            self.splicer.client_ended()
            return
        self.client_eof = True
        if self.shaping is not None:
            self.shaping.read_done("in")
        if self.backend is not None and not self.backend_gone:
            self.backend.unregisterProducer()
            _half_close(self.backend)
        self._maybe_finish()

    def backend_read_done(self) -> None:
        if _reset_behind_eof(self.backend):
            return
        self.backend_eof = True
        if self.shaping is not None:
            self.shaping.read_done("out")
        if not self.client_gone:
            self.client.unregisterProducer()
            _half_close(self.client)
        self._maybe_finish()

    def _maybe_finish(self) -> None:
        # Both directions ended: close both once their buffers are flushed.
        if self.client_eof and self.backend_eof:
            self.record.close("done")
            if not self.client_gone:
                self.client.loseConnection()
            if self.backend is not None and not self.backend_gone:
                self.backend.loseConnection()

    def client_lost(self, reason: Failure) -> None:
        self.client_gone = True
        if self.splicer is not None:
            self.splicer.abandon()
        if self.backend is not None and not self.backend_gone:
            if (self.backend_eof and not self.client_eof
                    and isinstance(reason.value, ConnectionDone)):
                # gatekeep closed the client, not the client itself: a backend's
                # transport that is lost stops its producer (this client, half-closed
                # after the backend's EOF, which then closes at once) before its
                # protocol hears of it. It is the backend's end being passed on.
                self.record.close("backend closed")
            else:
                self.record.close("client closed" if self.client_eof else "client reset")
            self.backend.unregisterProducer()
            self.backend.loseConnection()

    def backend_lost(self, reason: Failure) -> None:
        self.backend_gone = True
        if self.splicer is not None:
            self.splicer.abandon()
        if not self.client_gone:
            if self.client_eof and not self.backend_eof and getattr(
                    self.client, "disconnected", False):
                # The other way round: the client's transport is being lost, and it
                # stopped its producer (this backend, half-closed after the client's
                # EOF, which then closes at once) before the client's protocol heard.
                self.record.close("client closed")
            else:
                clean = self.backend_eof or _ended_cleanly(reason)
                self.record.close("backend closed" if clean else "backend reset")
            self.client.unregisterProducer()
            self.client.loseConnection()


_EPOLLIN = getattr(select, "EPOLLIN", 0)


def _reset_behind_eof(transport: Any) -> bool:
    """
    Whether an end of stream the reactor reported for ``transport`` was a reset
    (see :func:`stream_error`); if so, the transport is lost with that error now
    (as a failed read loses it) and True is returned. Otherwise the relay would
    half-close the other side, and the log would name the wrong side, or say
    "closed". An end of stream that was read (gatekeep's event loop says the event
    had ``EPOLLIN``, so Twisted's ``recv`` returned nothing) is not asked about
    again: a peek would say the same, and a system call per connection is saved.
    """
    if not isinstance(transport, tcp.Connection):
        return False  # a wrapped stream (TLS): its own transport reads its socket
    sock = getattr(transport, "socket", None)  # None once it was lost
    if sock is None or getattr(transport.reactor, "last_event", 0) & _EPOLLIN:
        return False
    code = stream_error(sock)
    if not code:
        return False
    transport.connectionLost(Failure(ConnectionLost(os.strerror(code))))
    return True


def _close_now(transport: Any) -> None:
    """
    Close a spliced transport whose both directions ended, now (its buffers are
    empty; else it flushes first).
    """
    if (getattr(transport, "connected", False) and not transport.disconnecting
            and splice.usable(transport)):
        # Both directions saw their FIN, so no shutdown(2) before the close (Twisted's
        # switch for it); then what the reactor does once loseConnection's write turn
        # finds nothing to write.
        transport._shouldShutdown = False
        transport.connectionLost(connectionDone)
    else:
        transport.loseConnection()


def _ended_cleanly(reason: Failure) -> bool:
    """
    A plain close (FIN) by a backend whose transport cannot half-close, also when a
    wrapping protocol reports it as its own error around the original Failure (txtorcon's
    SOCKS client does, for ``tor:`` backends).
    """
    if reason.check(ConnectionDone):
        return True
    args = getattr(reason.value, "args", ())
    inner = args[0] if args else None
    return isinstance(inner, Failure) and inner.check(ConnectionDone) is not None


@implementer(IHalfCloseableProtocol)
class BackendSide(Protocol):
    """The protocol on the connection gatekeep opened to the backend."""

    def __init__(self, relay: Relay, on_connect: Callable[[ITransport], None]) -> None:
        self.relay = relay
        self._on_connect = on_connect

    def connectionMade(self) -> None:
        assert self.transport is not None
        self._on_connect(self.transport)

    def dataReceived(self, data: bytes) -> None:
        self.relay.from_backend(data)

    def readConnectionLost(self) -> None:
        self.relay.backend_read_done()

    def writeConnectionLost(self) -> None:
        pass

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        self.relay.backend_lost(reason)
