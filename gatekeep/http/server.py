"""
The client side of the proxy for HTTP/1.x: one protocol per client connection.

Requests are read by :class:`~gatekeep.http.reader.RequestReader` and answered
one at a time, in order (pipelined requests wait in the reader, which stops
reading the socket when too much is waiting). Body bytes flow only while the
exchange can pass them on, and both directions are flow-controlled: a full
backend pauses reading from the client and a slow client pauses reading from the
backend, so memory stays bounded whatever the body sizes.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Final

from twisted.internet.interfaces import IHalfCloseableProtocol
from twisted.internet.protocol import Protocol, connectionDone
from twisted.python.failure import Failure
from zope.interface import implementer

from gatekeep.addresses import format_address
from gatekeep.detectors.http import H2_PREFACE
from gatekeep.http.accesslog import combined_line
from gatekeep.http.deadline import Deadline
from gatekeep.http.exchange import Exchange
from gatekeep.http.forwarding import client_ip
from gatekeep.http.reader import END, NEED_DATA, PAUSED, BadRequest, RequestHead, RequestReader
from gatekeep.http.upstream import Gate, Upstream, no_delay
from gatekeep.http.wire import reason_of, response_head, simple_body
from gatekeep.sendnow import PLAIN as _PLAIN
from gatekeep.sendnow import close_now, send_now

if TYPE_CHECKING:
    from gatekeep.targets.http import HTTPTarget
    from gatekeep.values import Inbound

__all__ = ["HTTP1Connection", "is_tls"]

#: Bytes of pipelined requests read ahead before reading from the client pauses.
PIPELINE_LIMIT: Final = 64 * 1024

#: What a response to an HTTP/1.0 client that asked to keep the connection says.
_KEEP_ALIVE: Final = (b"Connection", b"keep-alive")


def _half_close(transport: Any) -> None:
    """Stop writing to a tunnel's backend after its buffer drains (or close, if it can't)."""
    lose_write = getattr(transport, "loseWriteConnection", None)
    if lose_write is not None:
        lose_write()
    else:
        transport.loseConnection()


def is_tls(transport: Any) -> bool:
    """Whether gatekeep itself decrypted this connection (terminate, or any TLS transport)."""
    if type(transport) in _PLAIN and not getattr(transport, "TLS", False):
        return False  # a bare socket
    from OpenSSL import SSL

    get_handle = getattr(transport, "getHandle", None)
    try:
        return get_handle is not None and isinstance(get_handle(), SSL.Connection)
    except Exception:  # noqa: BLE001 - a wrapper without a usable handle is not TLS
        return False


@implementer(IHalfCloseableProtocol)
class HTTP1Connection(Protocol):
    """Serves one client connection's HTTP/1.0 and HTTP/1.1 requests."""

    def __init__(self, target: HTTPTarget, inbound: Inbound) -> None:
        self.target = target
        self.inbound = inbound
        self.scheme = "http"
        self.pool = target.pool(inbound.reactor)
        self.reader = RequestReader()
        self.exchange: Exchange | None = None
        self.head: RequestHead | None = None
        #: Pauses reading from the client (a full backend, a pipeline backlog).
        self.client_gate = Gate()
        #: Pauses reading from the current backend (the client reads too slowly).
        self.backend_gate = Gate()
        self.tunnel: Upstream | None = None
        self._chunked = False
        self._close_after = False
        self._request_done = False
        self._response_done = False
        self._client_eof = False
        self._closing = False
        self._pumping = False
        self._again = False
        #: The next request's head is due (``keepalive_timeout``); one timer per connection.
        self._idle_timer = Deadline(inbound.reactor, self._idle)
        #: A response head held back to leave in one write with the first body bytes.
        self._held: bytes | None = None
        #: The first bytes, until they cannot be the HTTP/2 preface.
        self._opening: bytearray | None = bytearray()
        self.h2: Protocol | None = None

    def connectionMade(self) -> None:
        transport: Any = self.transport
        self.scheme = "https" if is_tls(transport) else "http"
        no_delay(transport)
        self.client_gate.attach(transport)
        transport.registerProducer(self.backend_gate, True)
        self._await_request()

    def _await_request(self) -> None:
        """The next request's head must arrive whole within ``keepalive_timeout``."""
        timeout = self.target.site.keepalive_timeout
        if not self._idle_timer.armed and timeout is not None:
            self._idle_timer.arm(timeout)

    def _stop_idle_timer(self) -> None:
        self._idle_timer.disarm()

    def _idle(self) -> None:
        if self.exchange is None and self.tunnel is None and not self._closing:
            self.inbound.record.close("keepalive_timeout" if self.reader.between_requests
                                      else "keepalive_timeout (request head incomplete)")
            self._close()

    # ------------------------------------------------------------ reading

    def dataReceived(self, data: bytes) -> None:
        if self.h2 is not None:
            self.h2.dataReceived(data)
            return
        if self.tunnel is not None:
            if self.tunnel.transport is not None:
                self.tunnel.transport.write(data)
            return
        if self._closing:
            return
        if self._opening is not None:
            # HTTP/2 with prior knowledge on a route that detected nothing: its preface.
            self._opening += data
            if len(self._opening) < len(H2_PREFACE) and H2_PREFACE.startswith(self._opening):
                return
            data, self._opening = bytes(self._opening), None
            if data.startswith(H2_PREFACE):
                self._to_h2(data)
                return
        self.reader.feed(data)
        self._pump()

    def _to_h2(self, data: bytes) -> None:
        from gatekeep.http.h2server import H2Connection

        transport: Any = self.transport
        self._idle_timer.cancel()
        transport.unregisterProducer()
        self.h2 = H2Connection(self.target, self.inbound)
        self.h2.makeConnection(transport)
        self.h2.dataReceived(data)

    def _pump(self) -> None:
        if self._pumping:
            self._again = True
            return
        self._pumping = True
        try:
            self._again = True
            while self._again and not self._closing and self.tunnel is None:
                self._again = False
                self._read_events()
        finally:
            self._pumping = False
        if self._closing or self.tunnel is not None:
            return
        if self.reader.buffered > PIPELINE_LIMIT:
            self.client_gate.hold("pipeline")
        else:
            self.client_gate.release("pipeline")

    def _ended_early(self) -> None:
        """The client half-closed and the reader wants more: nothing more can come."""
        if not self.reader.between_requests:
            self.inbound.record.close("client closed mid-request")
            if self.exchange is not None:
                self.exchange.client_gone()
                self.exchange = None
        self._close()

    def _read_events(self) -> None:
        while not self._closing and self.tunnel is None:
            exchange = self.exchange
            if exchange is not None and not exchange.wants_body:
                return
            try:
                event = self.reader.next_event()
            except BadRequest as bad:
                self._bad_request(bad)
                return
            if event is NEED_DATA:
                if self._client_eof:
                    self._ended_early()
                return
            if event is PAUSED:
                return
            if isinstance(event, RequestHead):
                self._begin(event)
            elif event is END:
                self._request_done = True
                if exchange is not None:
                    exchange.end_of_body()
                self._maybe_next()
            elif exchange is not None and isinstance(event, bytes):
                exchange.body(event)

    def _begin(self, head: RequestHead) -> None:
        self._stop_idle_timer()
        self.head = head
        self._request_done = self._response_done = False
        self._chunked = False
        self.exchange = exchange = Exchange(self.target, self, head)
        if self.reader.take_end():
            # No body: the request is complete now (the END event it would read next).
            self._request_done = exchange.request_ended = True
        exchange.start()

    def _bad_request(self, bad: BadRequest) -> None:
        self.inbound.record.close(f"bad request: {bad.reason}")
        exchange = self.exchange
        if exchange is None:
            access = self.target.access_log
            if access is not None:
                client = self.inbound.client
                access.write(combined_line(
                    client_ip(client) or format_address(client), self.inbound.reactor.seconds(),
                    b"", b"", b"", bad.status, 0, None, None, None))
            body = simple_body(bad.status, bad.reason)
            self._write(response_head(bad.status, reason_of(bad.status), [
                (b"Content-Type", b"text/plain; charset=utf-8"),
                (b"Content-Length", b"%d" % len(body)), (b"Connection", b"close")]) + body)
            self._close()
        elif not exchange.finished and not exchange.response_started:
            exchange.refuse(bad.status, bad.reason)  # answers, then closes
        else:
            exchange.client_gone()
            if self._response_done:
                self._close()
            else:
                self.send_abort(bad.reason)

    def _maybe_next(self) -> None:
        if not (self._request_done and self._response_done):
            return
        self.exchange = None
        self.reader.start_next()
        if self._client_eof and self.reader.between_requests:
            self._close()
            return
        self._await_request()
        if self.reader.buffered or self._client_eof:
            self._pump()
        else:  # nothing of a next request yet: nothing to read
            self.client_gate.release("pipeline")

    # ------------------------------------------------------------ Downstream

    def send_informational(self, status: int, reason: bytes,
                           fields: list[tuple[bytes, bytes]]) -> None:
        if self.head is not None and self.head.version == b"1.1":
            self._write(response_head(status, reason, fields))

    def send_head(self, status: int, reason: bytes, fields: list[tuple[bytes, bytes]],
                  length: int | None, body: bool, close: bool = False) -> None:
        head = self.head
        assert head is not None
        close = close or not head.keep_alive or self._client_eof
        if length is not None:
            fields.append((b"Content-Length", b"%d" % length))
        elif body:
            if head.version == b"1.1":
                fields.append((b"Transfer-Encoding", b"chunked"))
                self._chunked = True
            else:
                close = True  # HTTP/1.0: the body ends where the connection does
        self._say_persistence(head, fields, close)
        data = response_head(status, reason, fields)
        if body and length != 0:
            # Held until the body's first bytes (or :meth:`flush`): one write, one packet.
            self.flush()
            self._held = data
        else:
            self._write(data)

    def send_response(self, status: int, reason: bytes, fields: list[tuple[bytes, bytes]],
                      length: int | None, body: bool, data: bytes) -> None:
        """A whole response (its body, if any, all of ``data``) in one write."""
        if length is None and body:  # chunked or close-delimited: as its parts
            self.send_head(status, reason, fields, length, body)
            self.send_data(data)
            self.send_end()
            return
        head = self.head
        assert head is not None
        close = not head.keep_alive or self._client_eof
        if length is not None:
            fields.append((b"Content-Length", b"%d" % length))
        self._say_persistence(head, fields, close)
        self._write(response_head(status, reason, fields) + data)

    def _say_persistence(self, head: RequestHead, fields: list[tuple[bytes, bytes]],
                         close: bool) -> None:
        """The response's ``Connection`` field, and whether the connection ends after it."""
        if close:
            fields.append((b"Connection", b"close"))
        elif head.version == b"1.0":
            fields.append(_KEEP_ALIVE)  # or an HTTP/1.0 client closes after this response
        self._close_after = close

    def flush(self) -> None:
        """Write a held response head now (its body is not here yet)."""
        held, self._held = self._held, None
        if held is not None:
            self._write(held)

    def send_data(self, data: bytes) -> None:
        if not data:
            return
        if self._chunked:
            self._write_sequence([b"%x\r\n" % len(data), data, b"\r\n"])
        else:
            self._write(data)

    def send_end(self) -> None:
        if self._chunked:
            self._write(b"0\r\n\r\n")
        else:
            self.flush()

    def send_abort(self, why: str) -> None:
        self.inbound.record.close(f"response aborted: {why}")
        self.flush()
        self._closing = True
        transport: Any = self.transport
        if transport is not None:
            transport.abortConnection()

    def switch(self, upstream: Upstream, status: int, reason: bytes,
               fields: list[tuple[bytes, bytes]]) -> bool:
        self._write(response_head(status, reason, fields))
        self.tunnel = upstream
        self.exchange = None
        self.client_gate.release("pipeline")
        backend: Any = upstream.transport
        rest = self.reader.take_rest()
        if rest:
            backend.write(rest)
        trailing = upstream.take_rest()
        upstream.tunnel = self._from_tunnel
        upstream.on_lost = self._tunnel_lost
        self.backend_gate.attach(backend)
        backend.registerProducer(self.client_gate, True)
        if trailing:
            self._write(bytes(trailing))
        if self._client_eof:
            _half_close(backend)
        return True

    def _from_tunnel(self, data: bytes) -> None:
        self._write(data)

    def _tunnel_lost(self, reason: Failure) -> None:
        self.inbound.record.close("backend closed")
        self._close()

    def attach_upstream(self, upstream: Upstream) -> None:
        backend: Any = upstream.transport
        self.backend_gate.attach(backend)
        backend.registerProducer(self.client_gate, True)

    def detach_upstream(self, upstream: Upstream) -> None:
        self.backend_gate.attach(None)
        self.client_gate.release("consumer")
        if not upstream.lost and upstream.transport is not None:
            upstream.transport.unregisterProducer()  # type: ignore[attr-defined]

    def body_wanted(self) -> None:
        self._pump()

    def exchange_done(self, exchange: Exchange) -> None:
        self._response_done = True
        if self._close_after:
            self._close()
            return
        self._maybe_next()

    # ------------------------------------------------------------ writing and closing

    def _write(self, data: bytes) -> None:
        held, self._held = self._held, None
        if held is not None:
            data = held + data
        if self.transport is not None:
            self.inbound.record.bytes_out += len(data)
            send_now(self.transport, data)

    def _write_sequence(self, parts: list[bytes]) -> None:
        self._write(b"".join(parts))

    def _close(self) -> None:
        if self._closing:
            return
        self.flush()
        self._closing = True
        if self.transport is not None:
            close_now(self.transport)

    def readConnectionLost(self) -> None:
        self._client_eof = True
        if self.h2 is not None or self._opening:
            self._close()
            return
        if self.tunnel is not None:
            backend: Any = self.tunnel.transport
            if backend is not None:
                backend.unregisterProducer()
                _half_close(backend)
            return
        self._pump()

    def writeConnectionLost(self) -> None:
        pass

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        self._closing = True
        self._held = None
        self._idle_timer.cancel()
        if self.h2 is not None:
            self.h2.connectionLost(reason)
            return
        if self.exchange is not None:
            self.exchange.client_gone()
            self.exchange = None
        if self.tunnel is not None:
            self.tunnel.on_lost = None
            self.tunnel.close()
