"""
The detection chain: buffer the first bytes, ask the detectors, pick a route.

One :class:`SniffingProtocol` is the transport's protocol for the whole life of a
connection. On a listener that receives the PROXY protocol it first reads the
header (:mod:`gatekeep.preamble`), which then names the client. Before a route is
chosen it buffers (up to :data:`SNIFF_CAP`) and asks every detector the service
uses; afterwards it hands each event to the protocol the route's target attached,
counting bytes for the connection's log line.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Callable, Mapping
from types import MappingProxyType
from typing import Any

import attrs
from twisted.internet import tcp
from twisted.internet.address import IPv4Address, IPv6Address
from twisted.internet.error import ConnectionDone
from twisted.internet.interfaces import IHalfCloseableProtocol
from twisted.internet.protocol import Factory, Protocol, connectionDone
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from gatekeep import metrics
from gatekeep.addresses import format_address
from gatekeep.connlog import log_connection
from gatekeep.detectors.proxy import PREAMBLE, header_facts
from gatekeep.failures import failure_bytes
from gatekeep.guard import Guard, Limits, Refusal, client_key
from gatekeep.interfaces import IDetector
from gatekeep.preamble import Done, ProxyPolicy, Refuse, Waiting, endpoints_from, step
from gatekeep.proxyproto import ProxyHeader
from gatekeep.routing import Selection, select_route
from gatekeep.shapers.shaping import ShaperSpec, Shaping
from gatekeep.timeouts import (
    Deadline,
    DeadlineQueue,
    QueuedDeadline,
    Timeouts,
    deadlines_for,
    wheel_for,
)
from gatekeep.tracker import ConnectionTracker
from gatekeep.values import (
    ConnectionRecord,
    Inbound,
    Match,
    NeedMore,
    NoMatch,
    Service,
    Verdict,
)

__all__ = ["SNIFF_CAP", "ListenerRuntime", "SniffingFactory", "SniffingProtocol", "run_detectors"]

#: No connection makes gatekeep buffer more than this before a route is chosen.
SNIFF_CAP = 16 * 1024

log = Logger()


@attrs.frozen
class ListenerRuntime:
    """What every connection of one listener needs; replaced wholesale on reload."""

    name: str
    service: Service
    detectors: Mapping[str, IDetector]
    detect_timeout: float
    reactor: Any = attrs.field(repr=False)
    #: Shared by every runtime of the process, so a graceful stop finds connections
    #: accepted under any config generation.
    tracker: ConnectionTracker | None = attrs.field(default=None, repr=False)
    proxy: ProxyPolicy = attrs.field(factory=ProxyPolicy)
    #: Whether a route tests the PROXY header's facts (``match.proxy``).
    proxy_routes: bool = False
    #: Access rules and connection limits (:mod:`gatekeep.guard`); None: none.
    guard: Guard | None = None
    #: The listener's ``[shaper.X]``; None: unshaped.
    shaper: ShaperSpec | None = None
    #: ``idle_timeout`` and ``max_lifetime`` (on the process's timer wheel).
    timeouts: Timeouts | None = None
    #: The process's queue of ``detect_timeout`` deadlines (looked up once, not per
    #: connection).
    detect_deadlines: DeadlineQueue | None = attrs.field(init=False, repr=False, eq=False)

    def __attrs_post_init__(self) -> None:
        object.__setattr__(self, "detect_deadlines", None if self.reactor is None else
                           deadlines_for(self.reactor, self.detect_timeout))

    def detect_deadline(self, callback: Callable[[], None]) -> QueuedDeadline:
        """``callback`` once ``detect_timeout`` has passed (unless cancelled)."""
        queue = self.detect_deadlines
        if queue is None:
            queue = deadlines_for(self.reactor, self.detect_timeout)
        return queue.callLater(callback)

    @classmethod
    def build(
        cls, name: str, service: Service, all_detectors: Mapping[str, IDetector],
        detect_timeout: float, reactor: Any, tracker: ConnectionTracker | None = None,
        proxy: ProxyPolicy | None = None, *, guard: Guard | None = None,
        shaper: ShaperSpec | None = None, timeouts: Timeouts | None = None,
    ) -> ListenerRuntime:
        # Only the detectors this service's routes use run, in route order. The
        # PROXY preamble is read before detection, not run as a detector.
        wanted = [r.detector for r in service.routes if r.detector is not None]
        used = {d: all_detectors[d] for d in dict.fromkeys(wanted) if d != PREAMBLE}
        return cls(name, service, used, detect_timeout, reactor, tracker, proxy or ProxyPolicy(),
                   PREAMBLE in wanted, guard, shaper, timeouts)


def run_detectors(
    detectors: Mapping[str, IDetector], prefix: bytes, verdicts: dict[str, Verdict],
    final: bool,
) -> None:
    """
    Ask each still-undecided detector about ``prefix``, updating ``verdicts``.

    A detector that raises is a bug in it, not in the client: it counts as not
    matching (and is logged), so one broken plugin cannot take a listener down.
    """
    size = len(prefix)
    for name, detector in detectors.items():
        previous = verdicts.get(name)
        if previous is not None and not isinstance(previous, NeedMore):
            continue
        limit = detector.max_prefix
        try:
            verdict = detector.detect(prefix[:limit] if size > limit else prefix)
        except Exception:  # noqa: BLE001 - foreign code must not kill the connection
            log.failure("detector {detector} raised", detector=name)
            verdict = NoMatch("the detector raised an exception")
        if isinstance(verdict, NeedMore) and (final or size >= limit):
            verdict = NoMatch("undecided when detection ended" if final else
                              f"undecided after its max_prefix ({limit} bytes)")
        verdicts[name] = verdict


@implementer(IHalfCloseableProtocol)
class SniffingProtocol(Protocol):
    """Detects, routes, then relays events to the target's protocol."""

    # Until set otherwise per connection (class attributes: a new connection's object
    # is made without storing each of them).
    record: ConnectionRecord | None = None
    attached: Protocol | None = None
    #: The detect_timeout (one entry in the listener's queue of them).
    _deadline: QueuedDeadline | None = None
    _client_eof = False
    # The PROXY preamble: still expected, from a trusted peer or not.
    _preamble = False
    _refused = False
    _trusted = False
    header: ProxyHeader | None = None
    _preamble_facts: Mapping[str, Any] = MappingProxyType({})
    #: The real client and server: the peer's own, or a PROXY header's.
    client: Any = None
    server: Any = None
    #: Counted by the guard: in ``max_connections``, and under this client key.
    counted = False
    _client_key: str | None = None
    #: Refused by the guard: its refusal log has it, not a connection line.
    _quiet = False
    _shaping: Shaping | None = None
    _deadlines: Deadline | None = None
    _detect_expired = False

    def __init__(self, runtime: ListenerRuntime) -> None:
        self.runtime = runtime
        self._buffer = bytearray()
        self._verdicts: dict[str, Verdict] = {}

    def connectionMade(self) -> None:
        runtime = self.runtime
        transport: Any = self.transport
        # (known already: the client from the accept, the server if the listener's
        # address is fixed)
        self.client = self.client or transport.getPeer()
        self.server = self.server or transport.getHost()
        if isinstance(transport, tcp.Connection):
            # Read no more than the cap at a time while sniffing: Twisted's 64 KiB reads
            # would make a client that sends at once cost 64 KiB before any route.
            transport.bufferSize = SNIFF_CAP
        self.record = ConnectionRecord(
            runtime.name, format_address(self.client), runtime.reactor.seconds())
        metrics.connection_opened(self.record)
        if runtime.tracker is not None:
            runtime.tracker.opened(runtime.name, self)
        if runtime.timeouts is not None:
            self._deadlines = runtime.timeouts.start(self.record, transport)
        if runtime.proxy_routes:
            self._verdicts[PREAMBLE] = NoMatch("no PROXY header")
        policy = runtime.proxy
        if policy.mode != "off":
            self._trusted = policy.trusts(self.client)
            if not self._trusted and policy.mode == "required":
                self._refuse(Refuse("PROXY header required, but the peer is not in "
                                    "trusted_proxies", "proxy_untrusted", signature=False))
                return
            self._preamble = True
            self._deadline = runtime.detect_deadline(self._timedOut)
            return
        if self._admit():
            self._startDetecting()

    def _admit(self) -> bool:
        """The real client is known: the guard's rule and per-client limits."""
        guard = self.runtime.guard
        if guard is None or not guard.active:
            return True
        refusal, self._client_key = guard.admit(self.client)
        if refusal is None:
            return True
        self._refuseQuietly(guard, refusal)
        return False

    def _refuseQuietly(self, guard: Guard, refusal: Refusal, message: bytes = b"") -> None:
        record, transport = self.record, self.transport
        assert record is not None and transport is not None
        if self._deadline is not None:
            self._deadline.cancel()
            self._deadline = None
        self._preamble = False
        self._refused = self._quiet = True
        self._buffer = bytearray()
        record.close(f"refused: {refusal.why}")
        guard.refused(self.client, refusal)
        if message:
            record.bytes_out += len(message)
            transport.write(message)
        transport.loseConnection()

    def _startDetecting(self) -> None:
        if not self.runtime.detectors:
            self._decide(final=True)
        elif self._deadline is None:
            self._deadline = self.runtime.detect_deadline(self._timedOut)

    def dataReceived(self, data: bytes) -> None:
        assert self.record is not None
        self.record.bytes_in += len(data)
        if self.attached is not None:
            self.attached.dataReceived(data)
            return
        if self._refused:
            return
        self._buffer += data
        if self._preamble:
            self._readPreamble(None)
            return
        self._decide(final=len(self._buffer) >= SNIFF_CAP)

    def _readPreamble(self, final: str | None) -> None:
        """Consume the PROXY header (or decide there is none), then detect the rest."""
        outcome = step(self.runtime.proxy.mode, self._trusted, bytes(self._buffer), final)
        if isinstance(outcome, Waiting):
            return
        if isinstance(outcome, Refuse):
            self._refuse(outcome)
            return
        assert isinstance(outcome, Done)
        self._preamble = False
        if outcome.header is not None:
            self._received(outcome.header)
            del self._buffer[:outcome.consumed]
        if not self._admit():
            return
        if final is not None:
            self._decide(final=True)
        elif not self.runtime.detectors:
            self._startDetecting()
        elif self._buffer:
            self._decide(final=len(self._buffer) >= SNIFF_CAP)

    def _received(self, header: ProxyHeader) -> None:
        """A trusted proxy's header: it names the real client from now on."""
        record = self.record
        assert record is not None
        via = format_address(self.client)
        self.header = header
        self.client, self.server = endpoints_from(header, self.client, self.server)
        record.client = format_address(self.client)
        facts = header_facts(header)
        if self.runtime.proxy_routes:
            self._verdicts[PREAMBLE] = Match(facts, header.length)
        self._preamble_facts = {f"proxy_{k}": v for k, v in facts.items()}
        self._preamble_facts["proxy_via"] = via
        record.facts = dict(self._preamble_facts)

    def _refuse(self, refusal: Refuse) -> None:
        record, transport = self.record, self.transport
        assert record is not None and transport is not None
        if self._deadline is not None:
            self._deadline.cancel()
            self._deadline = None
        self._preamble = False
        self._refused = True
        self._buffer = bytearray()
        if refusal.signature:
            record.protocol = PREAMBLE
        record.close(refusal.reason)
        metrics.refused(record.listener, refusal.metric)
        transport.loseConnection()

    def _timedOut(self) -> None:
        self._deadline = None
        self._detect_expired = True
        if self._preamble:
            self._readPreamble("the detect_timeout passed")
            return
        self._decide(final=True)

    def _decide(self, final: bool) -> None:
        buffered = bytes(self._buffer)
        prefix = buffered[:SNIFF_CAP] if len(buffered) > SNIFF_CAP else buffered
        run_detectors(self.runtime.detectors, prefix, self._verdicts, final)
        selection = select_route(self.runtime.service, self._verdicts, final)
        if not selection.waiting:
            self._route(selection, buffered)

    def _route(self, selection: Selection, prefix: bytes) -> None:
        record, transport = self.record, self.transport
        assert record is not None and transport is not None
        if self._deadline is not None:
            self._deadline.cancel()
            self._deadline = None
        metrics.detected(record.listener, self.runtime.reactor.seconds() - record.started)
        if isinstance(transport, tcp.Connection):
            vars(transport).pop("bufferSize", None)  # the class's size for relaying
        protocol, match = self._protocol_of(selection)
        record.protocol = protocol
        detected = match.facts if match is not None else {}
        record.facts = {**detected, **self._preamble_facts}
        route = selection.route
        if route is None:
            record.close("no route (detect_timeout passed)" if self._detect_expired
                         else "no route")
            message = failure_bytes(protocol, detected, "refused")
            record.bytes_out += len(message)
            transport.write(message)
            transport.loseConnection()
            return
        guard = self.runtime.guard
        if guard is not None:
            refusal = guard.routed(self.client, route, protocol, detected)
            if refusal is not None:
                record.route = route.name
                self._refuseQuietly(guard, refusal, failure_bytes(protocol, detected, "denied"))
                return
        record.route = route.name
        if route.idle_timeout is not None or route.max_lifetime is not None:
            self._routeDeadlines(route.idle_timeout, route.max_lifetime)
        if self.runtime.shaper is not None:
            self._shaping = self._shape(self.runtime.shaper)
        inbound = Inbound(
            listener=self.runtime.name, client=self.client, server=self.server,
            transport=transport, detector=protocol, facts=detected, prefix=prefix,
            route=route, record=record, reactor=self.runtime.reactor, proxy=self.header,
            shaping=self._shaping, guard=self.runtime.guard)
        self._buffer = bytearray()
        try:
            attached = route.target.attach(inbound)
        except Exception:  # noqa: BLE001 - a failing target must only cost this connection
            log.failure("route {route} failed to take a connection", route=route.name)
            record.close("target error")
            transport.loseConnection()
            return
        self.attached = attached
        attached.makeConnection(transport)
        if prefix:
            attached.dataReceived(prefix)
        if self._client_eof:
            self._relayReadLost()

    def _routeDeadlines(self, idle: float | None, lifetime: float | None) -> None:
        """The route's own timeouts replace the listener's."""
        assert self.record is not None
        if self._deadlines is not None:
            self._deadlines.stop()
        timeouts = self.runtime.timeouts or Timeouts(wheel_for(self.runtime.reactor))
        self._deadlines = timeouts.start(self.record, self.transport, idle, lifetime)

    def _shape(self, shaper: ShaperSpec) -> Shaping:
        runtime = self.runtime
        limits = runtime.guard.limits if runtime.guard is not None else Limits()
        key = self._client_key or client_key(self.client, limits.prefix_v6,
                                             limits.whole_address)
        return shaper.open(runtime.name, key or format_address(self.client), runtime.reactor)

    def _protocol_of(self, selection: Selection) -> tuple[str | None, Match | None]:
        """The protocol to report: the route's detector, else the first that matched."""
        route = selection.route
        if route is not None and route.detector is not None and selection.match is not None:
            return route.detector, selection.match
        for name, verdict in self._verdicts.items():
            if isinstance(verdict, Match) and name != PREAMBLE:
                return name, verdict
        return None, None

    def readConnectionLost(self) -> None:
        self._client_eof = True
        if self.attached is None:
            if self._preamble:
                self._readPreamble("the client closed")
            elif self.record is not None and not self._refused:
                self._decide(final=True)
            return
        self._relayReadLost()

    def _relayReadLost(self) -> None:
        attached: Any = self.attached
        if IHalfCloseableProtocol.providedBy(attached):
            attached.readConnectionLost()
        elif self.transport is not None:
            self.transport.loseConnection()

    def writeConnectionLost(self) -> None:
        attached: Any = self.attached
        if IHalfCloseableProtocol.providedBy(attached):
            attached.writeConnectionLost()

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        if self._deadline is not None:
            self._deadline.cancel()
            self._deadline = None
        if self.attached is not None:
            self.attached.connectionLost(reason)
        if self._shaping is not None:
            self._shaping.stop()
            self._shaping = None
        if self._deadlines is not None:
            self._deadlines.stop()
            self._deadlines = None
        guard = self.runtime.guard
        if guard is not None:
            if self._client_key is not None:
                guard.release(self._client_key)
                self._client_key = None
            if self.counted:
                guard.closed()
                self.counted = False
        record = self.record
        if record is None:
            return
        if record.route is None:
            record.close("client closed before detection")
        record.close(_reason_text(reason))
        if self._quiet:
            metrics.connection_ended(record)
        else:
            log_connection(record, self.runtime.reactor.seconds())
        if self.runtime.tracker is not None:
            self.runtime.tracker.closed(self)


def _reason_text(reason: Failure) -> str:
    if isinstance(reason.value, ConnectionDone):  # (Failure.check builds names)
        return "closed"
    return reason.getErrorMessage() or reason.type.__name__  # type: ignore[union-attr]


_IP_ADDRESSES = (IPv4Address, IPv6Address)


def fixed_local_address(port: Any) -> IPv4Address | IPv6Address | None:
    """
    The local address of every connection ``port`` accepts, if it is always the same:
    a TCP port bound to one address (not a wildcard) accepts only connections to
    that address and port (a listener takes no redirected connections: it does not
    set IP_TRANSPARENT), so a ``getsockname`` per connection would say nothing new.
    """
    host = port.getHost()
    if type(host) not in (IPv4Address, IPv6Address):
        return None
    try:
        if ipaddress.ip_address(host.host.partition("%")[0]).is_unspecified:
            return None
    except ValueError:
        return None
    return host  # type: ignore[no-any-return]


class SniffingFactory(Factory):
    """Builds a sniffer per connection from the listener's current runtime."""

    noisy = False
    #: The listening port's :func:`fixed_local_address`, once it listens.
    local: IPv4Address | IPv6Address | None = None

    def __init__(self, runtime: ListenerRuntime) -> None:
        self.runtime = runtime

    def buildProtocol(self, addr: Any) -> SniffingProtocol | None:
        runtime = self.runtime
        guard = runtime.guard
        if guard is not None and not guard.accept(addr):
            return None  # Twisted closes the socket at once: refused, not queued
        protocol = SniffingProtocol(runtime)
        protocol.server = self.local
        if type(addr) in _IP_ADDRESSES:
            protocol.client = addr  # what the transport's getPeer would make again
        protocol.counted = guard is not None
        return protocol
