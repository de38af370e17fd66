"""
The client side of the proxy for HTTP/2 (the ``h2`` package); backends stay HTTP/1.1.

Each stream is one :class:`~gatekeep.http.exchange.Exchange` with its own backend
connection, so streams run concurrently. Flow control: a request body is
acknowledged to the client (its window reopened) only once it was passed to the
backend, and a response is sent only as the client's windows allow; a stream that
cannot send pauses its backend, and a full client socket pauses every backend.
"""

from __future__ import annotations

import contextlib
from typing import TYPE_CHECKING, Any, Final

import h2.config
import h2.connection
import h2.errors
import h2.events
import h2.exceptions
from twisted.internet.protocol import Protocol, connectionDone
from twisted.python.failure import Failure

from gatekeep.detectors.http import parse_authority
from gatekeep.http.exchange import Exchange
from gatekeep.http.reader import RequestHead
from gatekeep.http.server import is_tls
from gatekeep.http.upstream import Gate, Upstream

if TYPE_CHECKING:
    from gatekeep.targets.http import HTTPTarget
    from gatekeep.values import Inbound

__all__ = ["H2Connection", "request_head"]

#: Response bytes queued per stream beyond the client's window before its backend pauses.
STREAM_BUFFER: Final = 64 * 1024


class _Refused(Exception):
    pass


def request_head(headers: list[tuple[bytes, bytes]], ended: bool) -> RequestHead:
    """An h2 request's header block as the :class:`RequestHead` HTTP/1.1 would give."""
    pseudo: dict[bytes, bytes] = {}
    fields: list[tuple[bytes, bytes]] = []
    cookies: list[bytes] = []
    for name, value in headers:
        if name.startswith(b":"):
            pseudo[name] = value
        elif name == b"cookie":
            cookies.append(value)  # h2 may split cookies; HTTP/1.1 wants one field
        else:
            fields.append((name, value))
    if cookies:
        fields.append((b"cookie", b"; ".join(cookies)))
    method, path = pseudo.get(b":method"), pseudo.get(b":path")
    if method is None or path is None or method == b"CONNECT":
        raise _Refused("CONNECT or a request without :method/:path")
    authority = pseudo.get(b":authority")
    hosts = [v for n, v in fields if n == b"host"]
    if authority is not None:
        fields = [(n, v) for n, v in fields if n != b"host"]
        fields.insert(0, (b"host", authority))
        host_field: bytes | None = authority
    else:
        host_field = hosts[0] if len(hosts) == 1 else None
    if host_field is None:
        raise _Refused("no :authority or Host")
    host, port = parse_authority(host_field)
    if host is None:
        raise _Refused("invalid :authority")
    lengths = [v for n, v in fields if n == b"content-length"]
    length = int(lengths[0]) if len(lengths) == 1 and lengths[0].isdigit() else None
    if lengths and length is None:
        raise _Refused("invalid content-length")
    chunked = not ended and length is None
    return RequestHead(method, path, b"2", tuple(fields), host, port, host_field, path,
                       length, chunked)


class _Pauser:
    """The producer registered on a backend transport: a full backend pauses the client."""

    def __init__(self, gate: Gate, reason: str) -> None:
        self.gate = gate
        self.reason = reason

    def pauseProducing(self) -> None:
        self.gate.hold(self.reason)

    def resumeProducing(self) -> None:
        self.gate.release(self.reason)

    def stopProducing(self) -> None:
        self.gate.release(self.reason)


class H2Stream:
    """One request stream: the :class:`~gatekeep.http.exchange.Downstream` of its exchange."""

    def __init__(self, connection: H2Connection, stream_id: int, head: RequestHead) -> None:
        self.connection = connection
        self.stream_id = stream_id
        self.inbound = connection.inbound
        self.scheme = connection.scheme
        self.pool = connection.pool
        self.head = head
        self.exchange = Exchange(connection.target, self, head)
        self.backend_gate = Gate()
        self.pauser = _Pauser(connection.client_gate, f"stream-{stream_id}")
        self.body: list[bytes] = []
        self.request_ended = False
        self.response_done = False
        self.pending: list[bytes] = []
        self.pending_size = 0
        self.end_pending = False
        self.closed = False

    # request side
    def data(self, data: bytes, flow: int) -> None:
        if self.exchange.wants_body:
            self.exchange.body(data)
            self.connection.acknowledge(self.stream_id, flow)
        else:
            self.body.append(data)
            self.connection.unacknowledged[self.stream_id] = (
                self.connection.unacknowledged.get(self.stream_id, 0) + flow)

    def ended(self) -> None:
        self.request_ended = True
        if self.exchange.wants_body and not self.body:
            self.exchange.end_of_body()
            self._maybe_forget()

    def body_wanted(self) -> None:
        body, self.body = self.body, []
        for part in body:
            self.exchange.body(part)
        flow = self.connection.unacknowledged.pop(self.stream_id, 0)
        if flow:
            self.connection.acknowledge(self.stream_id, flow)
        if self.request_ended:
            self.exchange.end_of_body()
            self._maybe_forget()

    # Downstream
    def send_informational(self, status: int, reason: bytes,
                           fields: list[tuple[bytes, bytes]]) -> None:
        if status != 100:
            self._headers(status, fields, end=False)

    def send_head(self, status: int, reason: bytes, fields: list[tuple[bytes, bytes]],
                  length: int | None, body: bool, close: bool = False) -> None:
        if length is not None:
            fields.append((b"content-length", b"%d" % length))
        self._headers(status, fields, end=not body)
        if not body:
            self.response_done = True

    def send_response(self, status: int, reason: bytes, fields: list[tuple[bytes, bytes]],
                      length: int | None, body: bool, data: bytes) -> None:
        self.send_head(status, reason, fields, length, body)
        self.send_data(data)
        self.send_end()

    def _headers(self, status: int, fields: list[tuple[bytes, bytes]], end: bool) -> None:
        if self.closed:
            return
        block = [(b":status", b"%d" % status)]
        block += [(n.lower(), v) for n, v in fields if n.lower() != b"host"]
        self.connection.conn.send_headers(self.stream_id, block, end_stream=end)
        self.connection.flush()

    def send_data(self, data: bytes) -> None:
        if self.closed or not data:
            return
        self.pending.append(data)
        self.pending_size += len(data)
        self.push()

    def flush(self) -> None:
        """Nothing is held back on a stream: its frames go out as they are made."""

    def send_end(self) -> None:
        if self.closed or self.response_done:
            return
        self.end_pending = True
        self.push()

    def push(self) -> None:
        """Send what the client's windows allow; pause the backend while too much waits."""
        conn = self.connection.conn
        while self.pending and not self.closed:
            window = min(conn.local_flow_control_window(self.stream_id),
                         conn.max_outbound_frame_size)
            if window <= 0:
                break
            first = self.pending[0]
            part, rest = first[:window], first[window:]
            if rest:
                self.pending[0] = rest
            else:
                self.pending.pop(0)
            self.pending_size -= len(part)
            conn.send_data(self.stream_id, part)
        if not self.pending and self.end_pending and not self.closed:
            self.end_pending = False
            self.response_done = True
            conn.end_stream(self.stream_id)
        self.connection.flush()
        if self.pending_size > STREAM_BUFFER:
            self.backend_gate.hold("window")
        else:
            self.backend_gate.release("window")
        self._maybe_forget()

    def send_abort(self, why: str) -> None:
        self.reset(h2.errors.ErrorCodes.INTERNAL_ERROR)

    def reset(self, code: int) -> None:
        if not self.closed:
            self.closed = True
            with contextlib.suppress(h2.exceptions.StreamClosedError):
                self.connection.conn.reset_stream(self.stream_id, code)
            self.connection.flush()
        self.connection.forget(self.stream_id)

    def switch(self, upstream: Upstream, status: int, reason: bytes,
               fields: list[tuple[bytes, bytes]]) -> bool:
        upstream.close()  # no Upgrade in HTTP/2 (the request never asks for one)
        self.send_abort("upgrade over HTTP/2")
        return False

    def attach_upstream(self, upstream: Upstream) -> None:
        backend: Any = upstream.transport
        self.backend_gate.attach(backend)
        if self.connection.client_paused:
            self.backend_gate.hold("client")
        backend.registerProducer(self.pauser, True)

    def detach_upstream(self, upstream: Upstream) -> None:
        self.backend_gate.attach(None)
        self.pauser.stopProducing()
        if not upstream.lost and upstream.transport is not None:
            upstream.transport.unregisterProducer()  # type: ignore[attr-defined]

    def exchange_done(self, exchange: Exchange) -> None:
        self._maybe_forget()

    def _maybe_forget(self) -> None:
        if self.response_done and self.request_ended and self.exchange.finished:
            self.connection.forget(self.stream_id)


class H2Connection(Protocol):
    """Serves one client connection that speaks HTTP/2."""

    def __init__(self, target: HTTPTarget, inbound: Inbound) -> None:
        self.target = target
        self.inbound = inbound
        self.scheme = "https"
        self.pool = target.pool(inbound.reactor)
        self.conn = h2.connection.H2Connection(h2.config.H2Configuration(
            client_side=False, header_encoding=None))
        self.streams: dict[int, H2Stream] = {}
        self.unacknowledged: dict[int, int] = {}
        self.client_gate = Gate()
        self.client_paused = False
        self._closing = False
        self._idle_timer: Any = None

    def connectionMade(self) -> None:
        transport: Any = self.transport
        self.scheme = "https" if is_tls(transport) else "http"
        self.client_gate.attach(transport)
        transport.registerProducer(self, True)
        self.conn.initiate_connection()
        self.flush()
        self._await_request()

    def _await_request(self) -> None:
        """With no stream open, a request must come within ``keepalive_timeout``."""
        timeout = self.target.site.keepalive_timeout
        if self._idle_timer is None and timeout is not None and not self._closing:
            self._idle_timer = self.inbound.reactor.callLater(timeout, self._idle)

    def _idle(self) -> None:
        self._idle_timer = None
        if not self.streams and not self._closing:
            self.inbound.record.close("keepalive_timeout")
            self.conn.close_connection()
            self.flush()
            self._close()

    # the client transport's producer: a slow client pauses every backend
    def pauseProducing(self) -> None:
        self.client_paused = True
        for stream in self.streams.values():
            stream.backend_gate.hold("client")

    def resumeProducing(self) -> None:
        self.client_paused = False
        for stream in list(self.streams.values()):
            stream.backend_gate.release("client")

    def stopProducing(self) -> None:
        pass

    def flush(self) -> None:
        data = self.conn.data_to_send()
        if data and self.transport is not None:
            self.inbound.record.bytes_out += len(data)
            self.transport.write(data)

    def acknowledge(self, stream_id: int, flow: int) -> None:
        try:
            self.conn.acknowledge_received_data(flow, stream_id)
        except h2.exceptions.StreamClosedError:
            return
        self.flush()

    def forget(self, stream_id: int) -> None:
        self.streams.pop(stream_id, None)
        self.unacknowledged.pop(stream_id, None)
        if not self.streams:
            self._await_request()

    def dataReceived(self, data: bytes) -> None:
        if self._closing:
            return
        try:
            events = self.conn.receive_data(data)
        except h2.exceptions.ProtocolError as error:
            self.inbound.record.close(f"HTTP/2 protocol error: {error}")
            self.flush()
            self._close()
            return
        for event in events:
            self._event(event)
        self.flush()

    def _event(self, event: Any) -> None:
        if isinstance(event, h2.events.RequestReceived):
            self._request(event)
        elif isinstance(event, h2.events.DataReceived):
            stream = self.streams.get(event.stream_id)
            if stream is not None:
                stream.data(event.data, event.flow_controlled_length)
            else:
                self.acknowledge(event.stream_id, event.flow_controlled_length)
            if event.stream_ended is not None and stream is not None:
                stream.ended()
        elif isinstance(event, h2.events.StreamEnded):
            stream = self.streams.get(event.stream_id)
            if stream is not None and not stream.request_ended:
                stream.ended()
        elif isinstance(event, h2.events.StreamReset):
            stream = self.streams.get(event.stream_id)
            if stream is not None:
                stream.closed = True
                stream.exchange.client_gone()
                self.forget(event.stream_id)
        elif isinstance(event, h2.events.WindowUpdated | h2.events.RemoteSettingsChanged):
            for stream in list(self.streams.values()):
                stream.push()
        elif isinstance(event, h2.events.ConnectionTerminated):
            self._close()

    def _request(self, event: h2.events.RequestReceived) -> None:
        ended = event.stream_ended is not None
        headers = [(bytes(n), bytes(v)) for n, v in event.headers]
        try:
            head = request_head(headers, ended)
        except _Refused as refused:
            self.inbound.record.close(f"bad HTTP/2 request: {refused}")
            self.conn.reset_stream(event.stream_id, h2.errors.ErrorCodes.PROTOCOL_ERROR)
            return
        if self._idle_timer is not None:
            self._idle_timer.cancel()
            self._idle_timer = None
        stream = self.streams[event.stream_id] = H2Stream(self, event.stream_id, head)
        stream.request_ended = ended
        stream.exchange.start()
        if ended and stream.exchange.wants_body and not stream.exchange.request_ended:
            stream.exchange.end_of_body()

    def _close(self) -> None:
        if self._closing:
            return
        self._closing = True
        if self.transport is not None:
            self.transport.loseConnection()

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        self._closing = True
        if self._idle_timer is not None:
            self._idle_timer.cancel()
            self._idle_timer = None
        for stream in list(self.streams.values()):
            stream.closed = True
            stream.exchange.client_gone()
        self.streams.clear()
