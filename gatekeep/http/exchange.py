"""
One request and its response, whatever the client's HTTP version.

An :class:`Exchange` decides what answers the request (the health path, a
``respond`` route, a backend, or an error), drives the backend connection and
passes the response to its :class:`Downstream`: the HTTP/1.1 connection or an
HTTP/2 stream, which frame it for the client.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Final
from typing import Protocol as TypingProtocol

from twisted.internet.interfaces import IDelayedCall
from twisted.internet.protocol import Factory
from twisted.logger import Logger
from twisted.python.failure import Failure

from gatekeep import metrics
from gatekeep.addresses import format_address
from gatekeep.http.accesslog import combined_line
from gatekeep.http.deadline import Deadline
from gatekeep.http.fields import NOT_PASSED
from gatekeep.http.forwarding import HOP_BY_HOP, backend_head, client_ip, is_health, select
from gatekeep.http.reader import RequestHead
from gatekeep.http.response import END, Informational, ResponseHead
from gatekeep.http.settings import HTTPRoute
from gatekeep.http.upstream import Pool, Upstream
from gatekeep.http.wire import reason_of, simple_body

if TYPE_CHECKING:
    from gatekeep.targets.http import HTTPTarget
    from gatekeep.values import Inbound

__all__ = ["Downstream", "Exchange"]

log = Logger()

_TEXT: Final = [(b"Content-Type", b"text/plain; charset=utf-8")]
_NO_BODY_STATUS: Final = frozenset({204, 304})



class Downstream(TypingProtocol):
    """What an exchange needs from the client side (an HTTP/1.1 connection, an h2 stream)."""

    inbound: Inbound
    scheme: str
    pool: Pool

    def send_informational(self, status: int, reason: bytes,
                           fields: list[tuple[bytes, bytes]]) -> None: ...
    def send_head(self, status: int, reason: bytes, fields: list[tuple[bytes, bytes]],
                  length: int | None, body: bool, close: bool = False) -> None: ...
    def send_response(self, status: int, reason: bytes, fields: list[tuple[bytes, bytes]],
                      length: int | None, body: bool, data: bytes) -> None:
        """``send_head``, then ``send_data(data)`` when ``data``, then ``send_end``."""
    def send_data(self, data: bytes) -> None: ...
    def send_end(self) -> None: ...
    def flush(self) -> None: ...
    def send_abort(self, why: str) -> None: ...
    def switch(self, upstream: Upstream, status: int, reason: bytes,
               fields: list[tuple[bytes, bytes]]) -> bool: ...
    def attach_upstream(self, upstream: Upstream) -> None: ...
    def detach_upstream(self, upstream: Upstream) -> None: ...
    def body_wanted(self) -> None: ...
    def exchange_done(self, exchange: Exchange) -> None: ...


def _upgrade_token(head: RequestHead) -> bytes | None:
    """The ``Upgrade`` value of a GET that asks for one, without a body (WebSocket)."""
    if head.method != b"GET" or b"upgrade" not in head.connection_tokens or head.has_body:
        return None
    values = head.values(b"upgrade")
    return values[0] if len(values) == 1 and values[0] else None


class Exchange:
    """A request from arrival to the end of its response (or its failure)."""

    def __init__(self, target: HTTPTarget, downstream: Downstream, head: RequestHead) -> None:
        self.target = target
        self.site = target.site
        self.downstream = downstream
        self.head = head
        self.reactor = downstream.inbound.reactor
        self.started = self.reactor.seconds()
        self.route: HTTPRoute | None = None
        self.limit = self.site.max_body
        self.upstream: Upstream | None = None
        self.upgrade: bytes | None = None
        #: Body bytes are taken now (False while the backend connection is being made).
        self.wants_body = False
        self.request_ended = False
        self.response_started = False
        self.finished = False
        self.status = 0
        self.sent = 0
        self.received = 0
        self.close_after = False
        self._upstream_started: float | None = None
        self._upstream_time: float | None = None
        self._connecting: Any = None
        self._reused = False
        self._timer: IDelayedCall | None = None
        #: The response timeout: the backend connection's, re-armed for each request.
        self._deadline: Deadline | None = None

    # ------------------------------------------------------------ deciding

    def start(self) -> None:
        head, site = self.head, self.site
        if is_health(site, head):
            self.simple(200, b"OK\n", _TEXT)
            return
        if head.method == b"CONNECT":
            self.simple(405, close=True)
            return
        port = getattr(self.downstream.inbound.server, "port", None)
        route = self.route = select(site, head, port)
        if route is None:
            self.simple(404)
            return
        if route.max_body is not None:
            self.limit = route.max_body
        if head.content_length is not None and head.content_length > self.limit:
            self.simple(413, simple_body(413, f"the limit is {self.limit} bytes"), _TEXT,
                        close=True)
            return
        if route.respond is not None:
            answer = route.respond
            fields = [(n.encode("ascii"), v.encode("ascii")) for n, v in answer.headers]
            self.simple(answer.status, answer.body, fields)
            return
        assert route.to is not None
        self.downstream.inbound.record.backend = route.to
        self._upstream_started = self.reactor.seconds()
        upstream = self.downstream.pool.take(route.to)
        if upstream is not None:
            self._use(upstream, reused=True)
            return
        self._connect(route.to)

    def _connect(self, to: str) -> None:
        site, route = self.site, self.route
        assert route is not None
        endpoint = self.target.endpoint(self.reactor, to)
        factory = Factory.forProtocol(lambda: Upstream(to))
        factory.noisy = False
        self._connecting = connecting = endpoint.connect(factory)
        self._timer = self.reactor.callLater(site.connect_timeout, self._connect_timed_out)
        connecting.addCallbacks(self._connected, self._connect_failed)

    def _connect_timed_out(self) -> None:
        self._timer = None
        if self._connecting is not None:
            self._connecting.cancel()

    def _stop_timer(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self._deadline is not None:
            self._deadline.disarm()
            self._deadline = None

    def _connected(self, upstream: Upstream) -> None:
        self._connecting = None
        self._stop_timer()
        inbound = self.downstream.inbound
        assert self._upstream_started is not None
        metrics.backend_connected(inbound.listener, inbound.route.name,
                                  self.reactor.seconds() - self._upstream_started)
        if self.finished:
            upstream.close()
            return
        self._use(upstream)

    def _connect_failed(self, reason: Failure) -> None:
        self._connecting = None
        timed_out = self._timer is None
        self._stop_timer()
        if self.finished:
            return
        inbound = self.downstream.inbound
        label = "timeout" if timed_out else "unreachable"
        metrics.backend_connect_failed(inbound.listener, inbound.route.name, label)
        why = "connect timeout" if timed_out else reason.getErrorMessage()
        log.info("{client} http {route}: backend {to} unreachable: {why}",
                 client=format_address(inbound.client), route=self._route_name(),
                 to=self.route.to if self.route else "-", why=why)
        self.simple(502, simple_body(502, "the backend is unreachable"), _TEXT, close=True)

    def _use(self, upstream: Upstream, reused: bool = False) -> None:
        head, route = self.head, self.route
        assert route is not None
        self._reused = reused
        self.upstream = upstream
        upstream.listener = self
        upstream.on_lost = self._upstream_lost
        self.downstream.attach_upstream(upstream)
        self.upgrade = _upgrade_token(head)
        data = backend_head(self.site, route, head, self.downstream.inbound.client,
                            self.downstream.scheme, self.upgrade)
        upstream.send_request(head.method, data, head.chunked, self.upgrade is not None,
                              head.has_body)
        self.wants_body = True
        if self.request_ended:
            self._request_sent()  # no body (or all of it taken already): nothing to want
        else:
            self.downstream.body_wanted()

    # ------------------------------------------------------------ request body

    def body(self, data: bytes) -> None:
        self.received += len(data)
        if self.received > self.limit:
            self._too_large()
            return
        upstream = self.upstream
        if upstream is not None and not self.finished:
            upstream.send_body(data)

    def _too_large(self) -> None:
        if self.finished:
            self.downstream.send_abort("request body over the limit")
            return
        self._release_upstream(reuse=False)
        if self.response_started:
            self.downstream.send_abort("request body over the limit")
            self._finish()
        else:
            self.simple(413, simple_body(413, f"the limit is {self.limit} bytes"), _TEXT,
                        close=True)

    def end_of_body(self) -> None:
        self.request_ended = True
        if self.upstream is not None and not self.finished:
            self._request_sent()

    def _request_sent(self) -> None:
        assert self.upstream is not None
        upstream = self.upstream
        upstream.end_request()
        if not self.response_started and self._timer is None and self._deadline is None:
            deadline = upstream.deadline
            if deadline is None:
                deadline = upstream.deadline = Deadline(self.reactor, self._response_timed_out)
            deadline.expired = self._response_timed_out
            deadline.arm(self.site.response_timeout)
            self._deadline = deadline

    def _response_timed_out(self) -> None:
        self._deadline = None
        if self.finished or self.response_started:
            return
        self._release_upstream(reuse=False)
        self.simple(504, simple_body(504, "the backend did not answer in time"), _TEXT,
                    close=True)

    # ------------------------------------------------------------ response

    def upstream_event(self, event: Any) -> None:
        if self.finished:
            return
        if isinstance(event, bytes):
            self.sent += len(event)
            self.downstream.send_data(event)
        elif isinstance(event, ResponseHead):
            if event.switched:
                self._switched(event.reason or reason_of(101), event.fields)
                return
            self._response_head(event)
        elif isinstance(event, Informational):
            self.downstream.send_informational(event.status, event.reason, event.fields)
        elif event is END:
            self.downstream.send_end()
            self._release_upstream(reuse=True)
            self._finish()

    def upstream_response(self, head: ResponseHead, body: bytes) -> None:
        """
        A whole response that came at once: the same as its events (``head``, ``body``
        when not empty, :data:`END`) one after another.
        """
        if self.finished:
            return
        self._response_head(head, body)
        self.sent += len(body)
        self._release_upstream(reuse=True)
        self._finish()

    def _response_head(self, event: ResponseHead, whole: bytes | None = None) -> None:
        """Pass the response head on; with ``whole``, the whole body too (and its end)."""
        self._stop_timer()
        self.status = status = event.status
        self.response_started = True
        fields = []
        listed = event.connection
        if listed is None:
            listed = frozenset(t.strip().lower() for n, v in event.fields
                               if n.lower() == b"connection" for t in v.split(b","))
        lowers = event.names
        if lowers is None:
            lowers = [name.lower() for name, _value in event.fields]
        for lower, field in zip(lowers, event.fields, strict=True):
            if lower not in NOT_PASSED and lower not in listed:
                fields.append(field)
        body = status not in _NO_BODY_STATUS and self.head.method != b"HEAD"
        if whole is None:
            self.downstream.send_head(status, event.reason or reason_of(status), fields,
                                      event.length, body)
        else:
            self.downstream.send_response(status, event.reason or reason_of(status), fields,
                                          event.length, body, whole)

    def upstream_waiting(self) -> None:
        """The backend's bytes so far are handled: a held response head may go."""
        if not self.finished:
            self.downstream.flush()

    def _switched(self, reason: bytes, fields: list[tuple[bytes, bytes]]) -> None:
        upstream = self.upstream
        assert upstream is not None and self.upgrade is not None
        self._stop_timer()
        self.status = 101
        self.response_started = True
        kept = [(n, v) for n, v in fields if n.lower() not in HOP_BY_HOP]
        kept += [(b"Connection", b"upgrade"), (b"Upgrade", self.upgrade)]
        self.finished = True
        self.downstream.detach_upstream(upstream)
        upstream.listener = None
        upstream.on_lost = None
        self.upstream = None
        self._log()
        self.downstream.switch(upstream, 101, reason, kept)

    def upstream_failed(self, why: str) -> None:
        if self.finished:
            return
        if self._reused and not self.response_started and not self.head.has_body:
            # An idle keep-alive connection the backend closed as we reused it: the
            # request (which has no body to replay) goes once more on a new connection.
            self._reused = False
            self._stop_timer()
            upstream, self.upstream = self.upstream, None
            if upstream is not None:
                self.downstream.detach_upstream(upstream)
                upstream.listener = None
                upstream.on_lost = None
                upstream.abort()
            route = self.route
            assert route is not None and route.to is not None
            self._connect(route.to)
            return
        self._release_upstream(reuse=False)
        if self.response_started:
            self.downstream.send_abort(why)
            self._finish()
        else:
            self.simple(502, simple_body(502, why), _TEXT, close=True)

    def _upstream_lost(self, reason: Failure) -> None:
        if not self.finished and self.upstream is not None:
            self.upstream_failed("backend closed the connection")

    def _release_upstream(self, reuse: bool) -> None:
        self._stop_timer()
        if self._connecting is not None:
            self._connecting.cancel()
            self._connecting = None
        upstream, self.upstream = self.upstream, None
        if upstream is None:
            return
        if self._upstream_started is not None:
            self._upstream_time = self.reactor.seconds() - self._upstream_started
        self.downstream.detach_upstream(upstream)
        upstream.listener = None
        upstream.on_lost = None
        if reuse and self.request_ended:
            self.downstream.pool.put(upstream)
        else:
            upstream.abort()

    # ------------------------------------------------------------ answering ourselves

    def refuse(self, status: int, why: str) -> None:
        """The request turned out bad before any response: answer ``status``, then close."""
        self._release_upstream(reuse=False)
        self.simple(status, simple_body(status, why), _TEXT, close=True)

    def simple(
        self, status: int, body: bytes | None = None,
        fields: list[tuple[bytes, bytes]] | None = None, close: bool = False,
    ) -> None:
        """Answer from gatekeep itself (health, respond routes, errors)."""
        if body is None:
            body, fields = simple_body(status), _TEXT
        self.status = status
        self.response_started = True
        self.close_after = close
        with_body = self.head.method != b"HEAD"
        self.wants_body = True  # whatever body follows is read and dropped
        self.downstream.send_head(status, reason_of(status), list(fields or []), len(body),
                                  with_body, close)
        if with_body and body:
            self.sent += len(body)
            self.downstream.send_data(body)
        self.downstream.send_end()
        self._finish()

    # ------------------------------------------------------------ the end

    def _route_name(self) -> str:
        return self.route.name if self.route is not None else "-"

    def _finish(self) -> None:
        if self.finished:
            return
        self.finished = True
        self._stop_timer()
        self._log()
        self.downstream.exchange_done(self)

    def client_gone(self) -> None:
        """The client's connection (or stream) ended before the exchange did."""
        if self.finished:
            return
        if not self.response_started:
            self.status = 499
        # Finished first: a backend connect cancelled here is not the backend's failure
        # (no 502 to a client that left, no second access-log line).
        self.finished = True
        self._release_upstream(reuse=False)
        self._log()

    def _log(self) -> None:
        """The request's metrics, and its access-log line if the site keeps one."""
        inbound = self.downstream.inbound
        metrics.http_request(inbound.listener, self.site.name, self._route_name(), self.status,
                             self.reactor.seconds() - self.started)
        access = self.target.access_log
        if access is None:
            return
        head = self.head
        ip = client_ip(inbound.client) or format_address(inbound.client)
        upstream = self._upstream_time
        if upstream is None and self._upstream_started is not None:
            upstream = self.reactor.seconds() - self._upstream_started
        referer, agent = head.values(b"referer"), head.values(b"user-agent")
        access.write(combined_line(
            ip, self.started, head.method, head.target, head.version, self.status, self.sent,
            referer[0] if referer else None, agent[0] if agent else None, upstream))
