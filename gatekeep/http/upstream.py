"""
The backend side: one HTTP/1.1 connection per exchange at a time.

A connection whose exchange ended cleanly (both sides DONE, keep-alive) goes back
to its client connection's :class:`Pool` and serves that client's next request for
the same backend. After a ``101 Switching Protocols`` it becomes a byte tunnel.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from typing import Any
from typing import Protocol as TypingProtocol

from twisted.internet.protocol import Protocol, connectionDone
from twisted.python.failure import Failure

from gatekeep.http.deadline import Deadline
from gatekeep.http.response import NEED_DATA, BackendError, ResponseHead, ResponseReader
from gatekeep.sendnow import send_now

__all__ = ["Gate", "Pool", "Upstream", "UpstreamListener", "no_delay"]


def no_delay(transport: Any) -> None:
    """
    Turn Nagle's algorithm off where the transport is TCP: a request body or response
    written after its head would otherwise wait for the peer's delayed ACK (40 ms).
    """
    set_no_delay = getattr(transport, "setTcpNoDelay", None)
    if set_no_delay is None:
        return
    with contextlib.suppress(OSError, AttributeError, NotImplementedError):
        set_no_delay(True)  # fails where no TCP socket is underneath (UNIX, a wrapper)


class UpstreamListener(TypingProtocol):
    def upstream_event(self, event: Any) -> None: ...
    def upstream_response(self, head: ResponseHead, body: bytes) -> None: ...
    def upstream_failed(self, why: str) -> None: ...
    def upstream_waiting(self) -> None: ...


class Gate:
    """
    A streaming producer standing for a transport that several reasons may pause.

    Twisted resumes a producer as soon as *its* reason is gone; the gate keeps the
    transport paused while any reason remains, and follows a change of transport.
    """

    def __init__(self) -> None:
        self.transport: Any = None
        self.reasons: set[str] = set()

    def attach(self, transport: Any) -> None:
        if transport is self.transport:
            return
        if self.transport is not None and self.reasons:
            self.transport.resumeProducing()
        self.transport = transport
        if transport is not None and self.reasons:
            transport.pauseProducing()

    def hold(self, reason: str) -> None:
        if not self.reasons and self.transport is not None:
            self.transport.pauseProducing()
        self.reasons.add(reason)

    def release(self, reason: str) -> None:
        if reason not in self.reasons:
            return
        self.reasons.discard(reason)
        if not self.reasons and self.transport is not None:
            self.transport.resumeProducing()

    # IPushProducer, as seen by the consumer transport it is registered with.
    def pauseProducing(self) -> None:
        self.hold("consumer")

    def resumeProducing(self) -> None:
        self.release("consumer")

    def stopProducing(self) -> None:
        pass


class Upstream(Protocol):
    """One connection to a backend, speaking HTTP/1.1."""

    def __init__(self, to: str) -> None:
        self.to = to
        self.reader = ResponseReader()
        self.listener: UpstreamListener | None = None
        self.tunnel: Callable[[bytes], None] | None = None
        self.on_lost: Callable[[Failure], None] | None = None
        self.connected = False
        self.lost = False
        #: The whole request (its body included) was written.
        self.request_done = True
        self._chunked = False
        #: The response timeout, kept with the connection so that requests re-use it.
        self.deadline: Deadline | None = None

    def connectionMade(self) -> None:
        self.connected = True
        no_delay(self.transport)

    def send_request(self, method: bytes, head: bytes, chunked: bool, upgrade: bool,
                     body: bool = True) -> None:
        """
        Write the request head (its bytes, see :func:`~gatekeep.http.forwarding.backend_head`);
        the body follows with :meth:`send_body`.

        A request without a body is sent at once (:func:`send_now`); a head whose body
        follows is queued, so that the first body bytes leave with it.
        """
        self.reader.expect(method, upgrade)
        self._chunked = chunked
        self.request_done = False
        if self.transport is not None:
            if body:
                self.transport.write(head)
            else:
                send_now(self.transport, head)

    def send_body(self, data: bytes) -> None:
        if self.transport is None or not data:
            return
        if self._chunked:
            self.transport.writeSequence([b"%x\r\n" % len(data), data, b"\r\n"])
        else:
            self.transport.write(data)

    def end_request(self) -> None:
        if self.request_done:
            return
        self.request_done = True
        if self._chunked and self.transport is not None:
            self.transport.write(b"0\r\n\r\n")

    def take_rest(self) -> bytes:
        """After a 101: the bytes of the new protocol that came with the response."""
        return self.reader.take_rest()

    def dataReceived(self, data: bytes) -> None:
        if self.tunnel is not None:
            self.tunnel(data)
            return
        self.reader.feed(data)
        self._events()

    def _events(self) -> None:
        while self.listener is not None and self.tunnel is None:
            try:
                event = self.reader.next_event()
            except BackendError as error:
                listener, self.listener = self.listener, None
                listener.upstream_failed(f"backend broke HTTP/1.1: {error}")
                self.abort()
                return
            if event is NEED_DATA:
                self.listener.upstream_waiting()
                return
            if type(event) is ResponseHead:
                if event.switched:
                    self.listener.upstream_event(event)
                    return
                body = self.reader.whole_body()
                if body is not None:  # all here: one call instead of three events
                    self.listener.upstream_response(event, body)
                    continue
            self.listener.upstream_event(event)

    @property
    def reusable(self) -> bool:
        return not self.lost and self.request_done and self.reader.done

    def recycle(self) -> bool:
        """Ready the connection for another request; False if it cannot be."""
        if not self.reusable:
            return False
        self.reader.reset()
        return True

    def abort(self) -> None:
        if self.transport is not None and not self.lost:
            self.transport.abortConnection()  # type: ignore[attr-defined]

    def close(self) -> None:
        if self.transport is not None and not self.lost:
            self.transport.loseConnection()

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        self.lost = True
        if self.deadline is not None:
            self.deadline.cancel()
        if self.tunnel is None and self.listener is not None:
            self.reader.feed_eof()
            self._events()
            if self.listener is not None:
                listener, self.listener = self.listener, None
                listener.upstream_failed("backend closed the connection")
        if self.on_lost is not None:
            self.on_lost(reason)


class Pool:
    """
    Idle keep-alive backend connections by endpoint string, shared by a site's clients.

    At most ``max_idle`` wait per backend (more are closed); one the backend closed
    while idle is dropped when found; one idle for ``idle_timeout`` is closed by a
    sweep (one timer per pool, not per connection), so a pool a reload left behind
    lets its connections go.
    """

    def __init__(self, reactor: Any, max_idle: int = 64, idle_timeout: float = 30.0) -> None:
        self.reactor = reactor
        self.max_idle = max_idle
        self.idle_timeout = idle_timeout
        self.idle: dict[str, list[tuple[float, Upstream]]] = {}
        self._sweep: Any = None

    def take(self, to: str) -> Upstream | None:
        idle = self.idle.get(to)
        while idle:
            _since, upstream = idle.pop()
            if not upstream.lost:
                return upstream
        return None

    def put(self, upstream: Upstream) -> None:
        idle = self.idle.setdefault(upstream.to, [])
        if len(idle) < self.max_idle and upstream.recycle():
            upstream.listener = None
            upstream.on_lost = None
            idle.append((self.reactor.seconds(), upstream))
            if self._sweep is None:
                self._sweep = self.reactor.callLater(self.idle_timeout, self._swept)
        else:
            upstream.close()

    def _swept(self) -> None:
        self._sweep = None
        cutoff = self.reactor.seconds() - self.idle_timeout
        for to, idle in list(self.idle.items()):
            keep = []
            for since, upstream in idle:
                if since > cutoff and not upstream.lost:
                    keep.append((since, upstream))
                else:
                    upstream.close()
            if keep:
                self.idle[to] = keep
            else:
                del self.idle[to]
        if self.idle:
            oldest = min(since for idle in self.idle.values() for since, _u in idle)
            delay = max(oldest + self.idle_timeout - self.reactor.seconds(), 0.0)
            self._sweep = self.reactor.callLater(delay, self._swept)

    def close(self) -> None:
        if self._sweep is not None:
            self._sweep.cancel()
            self._sweep = None
        for idle in self.idle.values():
            for _since, upstream in idle:
                upstream.close()
        self.idle.clear()
