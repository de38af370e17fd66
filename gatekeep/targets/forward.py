"""
The ``forward`` action: connect to a backend endpoint and relay both ways.

The client is not read while the backend connection is being made (the bytes
sniffed so far are replayed first), so a client can never make gatekeep buffer
more than the sniff cap for a backend that is slow to accept.
"""

from __future__ import annotations

import socket
import weakref
from typing import Any

import attrs
from twisted.internet import defer, error, tcp
from twisted.internet.abstract import isIPAddress
from twisted.internet.address import IPv4Address, IPv6Address
from twisted.internet.endpoints import TCP4ClientEndpoint, clientFromString
from twisted.internet.interfaces import (
    IHalfCloseableProtocol,
    IStreamClientEndpoint,
    ITransport,
)
from twisted.internet.posixbase import PosixReactorBase
from twisted.internet.protocol import ClientFactory, Factory, Protocol, connectionDone
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from gatekeep import metrics, splice
from gatekeep.config.endpoints import client_endpoint_problem
from gatekeep.config.schema import expect, setting
from gatekeep.failures import FailureKind, failure_bytes
from gatekeep.interfaces import ITarget
from gatekeep.preamble import plain_ip
from gatekeep.relay import BackendSide, Relay
from gatekeep.targets.backendtls import Pin, check_pinned_target, parse_pins, pinned_endpoint
from gatekeep.targets.proxyheader import TLV_NAMES, outgoing_header
from gatekeep.targets.rawbackend import RawConnect
from gatekeep.targets.transparent import TransparentEndpoint, parse_tcp_destination
from gatekeep.timeouts import QueuedDeadline, deadlines_for
from gatekeep.values import Inbound

__all__ = ["ForwardTarget"]

log = Logger()

# Endpoint kinds whose connections are plain sockets, which the relay may splice;
# tls:, tor: and plugins' endpoints wrap theirs and keep the portable relay.
_PLAIN_KINDS = frozenset({"tcp", "tcp6", "unix"})

#: Bytes a client may send while its backend connects before its reading pauses.
_PENDING_LIMIT = 64 * 1024


#: What ``reactor.connectTCP`` needs for a ``tcp:`` backend: host, port, timeout, bind.
_Direct = tuple[str, int, float | None, Any]


def _direct(endpoint: IStreamClientEndpoint) -> _Direct | None:
    """
    The ``connectTCP`` arguments of a parsed ``tcp:`` endpoint (``TCP4ClientEndpoint``
    itself makes exactly this call), or ``None`` for any other kind.
    """
    if type(endpoint) is not TCP4ClientEndpoint:
        return None
    return (endpoint._host, endpoint._port, endpoint._timeout, endpoint._bindAddress)


#: A target's per-reactor plan: endpoint, connectTCP's arguments, bare connect allowed.
_Plan = tuple[IStreamClientEndpoint, _Direct | None, bool]


def _bare(direct: _Direct | None) -> bool:
    """Whether a ``tcp:`` backend may be connected with a bare socket (RawConnect)."""
    return direct is not None and direct[3] is None and isIPAddress(direct[0])


def _proxy_version(value: object) -> int:
    if value == "v1":
        return 1
    if value == "v2":
        return 2
    raise ValueError(f'expected "v1" or "v2", not {value!r}')


def _tlv_names(value: object) -> tuple[str, ...]:
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise TypeError(f"expected a list of TLV names: {', '.join(TLV_NAMES)}")
    unknown = [v for v in value if v not in TLV_NAMES]
    if unknown:
        raise ValueError(f"unknown TLV {unknown[0]!r}; known: {', '.join(TLV_NAMES)}")
    return tuple(dict.fromkeys(value))


def _client_endpoint(value: object) -> str:
    if not isinstance(value, str):
        raise TypeError('expected a client endpoint string such as "tcp:127.0.0.1:8080"')
    problem = client_endpoint_problem(value)
    if problem:
        raise ValueError(problem + ' (examples: "tcp:127.0.0.1:5222", "unix:/run/app.sock", '
                         "'tcp:host=\\:\\:1:port=8080')")
    return value


@implementer(ITarget)
@attrs.define(eq=False)
class ForwardTarget:
    """``forward = { to = "tcp:127.0.0.1:5222" }``"""

    to: str = setting(
        "Client endpoint string of the backend: `tcp:HOST:PORT`, `unix:PATH`, "
        "`tls:NAME:PORT:endpoint=...`, "
        "`tor:HOST:PORT:socksHostname=127.0.0.1:socksPort=9050` (through a tor's SOCKS "
        "port, to an onion or clear-web backend; without socksHostname/socksPort txtorcon "
        "tries 127.0.0.1:9050 then 9150); any Twisted client endpoint.",
        parse=_client_endpoint,
    )
    proxy_protocol: int | None = setting(
        "Send a PROXY protocol header to the backend before the client's bytes: `\"v1\"` "
        "(text) or `\"v2\"` (binary, with `proxy_tlvs`). It carries the real client "
        "address (the one a trusted load balancer's header gave, if any) and the address "
        "the client connected to; IPv4-mapped IPv6 is sent as TCP4, UNIX sockets as "
        "UNIX (v2) or UNKNOWN (v1). The backend must expect it (Prosody `mod_net_proxy`, "
        "nginx `listen ... proxy_protocol`, HAProxy `accept-proxy`).",
        default=None,
        parse=_proxy_version,
        shown="none",
    )
    proxy_tlvs: tuple[str, ...] = setting(
        "TLVs added to a v2 header: `alpn` and `authority` (passthrough: the first ALPN "
        "the ClientHello offered and its SNI; after TLS termination: the negotiated ALPN "
        "and the SNI; otherwise what a trusted proxy in front sent), `ssl` (the client's "
        "TLS session when gatekeep terminated it, or the SSL TLV received), `unique_id` "
        "(the one received, else a new random id, logged as the `unique_id` fact), "
        "`crc32c` (a checksum of the header).",
        default=(),
        parse=_tlv_names,
        shown="`[]`",
    )
    transparent: bool = setting(
        "Connect to the backend from the client's own IP address (Linux `IP_TRANSPARENT`, "
        "like HAProxy `usesrc clientip`), for backends that speak no PROXY protocol. `to` "
        "must be `tcp:IP:PORT` of the client's family. Needs CAP_NET_ADMIN and policy "
        "routing that delivers the backend's replies to gatekeep: see the transparent "
        "recipe.",
        default=False,
        parse=expect(bool, "true or false"),
        shown="`false`",
    )
    tls_pin: tuple[Pin, ...] = setting(
        "Trust a `tls:` backend by its key instead of a CA: its certificate must match one "
        "of these pins, `\"sha256/BASE64\"` (SHA-256 of the public key, as HPKP and curl's "
        "`--pinnedpubkey` write it) or `\"sha256:HEX\"` (the certificate's fingerprint). "
        "Issuer, names and `trustRoots` are then not checked, so a self-signed backend "
        "works; a mismatch closes the connection and logs a warning. Without it, `tls:` "
        "backends are verified against `trustRoots` (a directory of PEM CA certificates, "
        "else the system's) and NAME with service-identity.",
        default=(),
        parse=parse_pins,
        shown="`[]`",
    )
    # Parsed endpoints per reactor: parsing per connection would cost more than
    # the connect itself.
    _endpoints: weakref.WeakKeyDictionary[Any, IStreamClientEndpoint] = attrs.field(
        factory=weakref.WeakKeyDictionary, init=False, repr=False)
    # Per reactor, what attach needs: the endpoint, connectTCP's arguments (tcp:) and
    # whether those allow a bare connect; worked out once, not per connection.
    _plans: weakref.WeakKeyDictionary[Any, _Plan] = attrs.field(
        factory=weakref.WeakKeyDictionary, init=False, repr=False)
    #: The backend connection is a bare socket (tcp:, tcp6:, unix:): it may splice.
    _plain: bool = attrs.field(default=False, init=False, repr=False)

    def endpoint(self, reactor: Any) -> IStreamClientEndpoint:
        endpoint = self._endpoints.get(reactor)
        if endpoint is None:
            endpoint = self._endpoints[reactor] = (
                pinned_endpoint(reactor, self.to, self.tls_pin) if self.tls_pin
                else clientFromString(reactor, self.to))
        return endpoint

    def _plan(self, reactor: Any) -> _Plan:
        try:
            return self._plans[reactor]
        except KeyError:
            endpoint = self.endpoint(reactor)
            direct = _direct(endpoint)
            plan = self._plans[reactor] = (endpoint, direct, _bare(direct))
            return plan

    def direct(self, reactor: Any) -> _Direct | None:
        """For a ``tcp:`` backend, the parsed ``connectTCP`` arguments (else ``None``)."""
        return self._plan(reactor)[1]

    def __attrs_post_init__(self) -> None:
        self._plain = (self.transparent
                       or self.to.split(":", 1)[0].strip().lower() in _PLAIN_KINDS)
        if self.proxy_tlvs and self.proxy_protocol != 2:
            raise ValueError('impossible combination: proxy_tlvs needs proxy_protocol = "v2"')
        if self.transparent:
            parse_tcp_destination(self.to)  # ValueError: the backend must be tcp:IP:PORT
        if self.tls_pin:
            check_pinned_target(self.to)

    def _transparent(self, inbound: Inbound) -> IStreamClientEndpoint:
        host, port = parse_tcp_destination(self.to)
        client = inbound.client
        source = plain_ip(client.host) if isinstance(client, IPv4Address | IPv6Address) else None
        return TransparentEndpoint(inbound.reactor, host, port, source)

    def attach(self, inbound: Inbound) -> Protocol:
        inbound.record.backend = self.to
        preamble = b""
        if self.proxy_protocol is not None:
            preamble = outgoing_header(inbound, self.proxy_protocol, self.proxy_tlvs)
        if self.transparent:
            return ClientSide(inbound, self._transparent(inbound), preamble, fast=True)
        endpoint, direct, bare = self._plan(inbound.reactor)
        return ClientSide(inbound, endpoint, preamble, fast=self._plain, direct=direct,
                          bare=bare)

    def describe(self) -> str:
        extra = f" with PROXY v{self.proxy_protocol}" if self.proxy_protocol else ""
        if self.proxy_tlvs:
            extra += f" (TLVs: {', '.join(self.proxy_tlvs)})"
        if self.transparent:
            extra += ", transparent (from the client's address)"
        if self.tls_pin:
            extra += f", pinned ({len(self.tls_pin)} pin{'s' if len(self.tls_pin) > 1 else ''})"
        return f"forward to {self.to}{extra}"


class _AdoptedBackend(tcp.Server):
    """A backend connection gatekeep connected itself, as a Twisted TCP transport."""

    def _getLogPrefix(self, protocol: Any) -> str:
        return "backend"


class _DirectConnect(ClientFactory):
    """
    One ``connectTCP`` to a ``tcp:`` backend, reporting to its :class:`ClientSide` as
    the endpoint's Deferred would: the connection, or a failure (``cancel`` stops
    connecting and fails with ``ConnectingCancelledError``, as cancelling it does).
    """

    noisy = False

    def __init__(self, side: ClientSide, relay: Relay) -> None:
        self.side = side
        self.relay = relay
        self.connector: Any = None
        self.done = False

    def buildProtocol(self, addr: Any) -> Protocol:
        self.done = True
        return BackendSide(self.relay, self.side._joined)

    def clientConnectionFailed(self, connector: Any, reason: Failure) -> None:
        if not self.done:
            self.done = True
            self.side._failed(reason)

    def cancel(self) -> None:
        if self.done:
            return
        self.done = True
        connector = self.connector
        if connector is not None:
            connector.stopConnecting()
        address = connector.getDestination() if connector is not None else None
        self.side._failed(Failure(error.ConnectingCancelledError(address)))


@implementer(IHalfCloseableProtocol)
class ClientSide(Protocol):
    """Takes over the client's connection until the backend answers, then relays."""

    def __init__(
        self, inbound: Inbound, endpoint: IStreamClientEndpoint, preamble: bytes = b"",
        fast: bool = False, direct: _Direct | None = None, bare: bool = False,
    ) -> None:
        self.inbound = inbound
        #: ``direct`` is an IPv4 literal with no bind address: when the relay will
        #: splice, connect it with a bare socket (gatekeep.targets.rawbackend).
        self.bare = bare
        #: ``connectTCP``'s arguments: connect without the endpoint's per-connection
        #: wrapping factory, protocol and Deferred.
        self.direct = direct
        #: The backend is a plain socket endpoint: the relay may splice (Linux).
        self.fast = fast
        self.endpoint = endpoint
        #: Written to the backend before anything else (a PROXY header).
        self.preamble = preamble
        self.relay: Relay | None = None
        self._pending: list[bytes] = []
        self._pending_size = 0
        self._paused = False
        self._connecting: defer.Deferred[Any] | _DirectConnect | RawConnect | None = None
        self._timer: QueuedDeadline | None = None
        self._timed_out = False
        self._started = 0.0

    def connectionMade(self) -> None:
        transport = self.transport
        assert transport is not None
        usable = splice.usable(transport)
        # A bare-socket backend the relay will splice (gatekeep.targets.rawbackend).
        bare_splice = (self.direct is not None and self.bare
                       and self.inbound.shaping is None and usable and splice.enabled())
        if self.inbound.shaping is not None or (self.fast and usable and not bare_splice):
            # A shaper must see every byte, and a spliced socket is read by the
            # splicer alone: nothing is read until the backend has joined.
            transport.pauseProducing()  # type: ignore[attr-defined]
        # Otherwise (a TLS-terminated stream, a wrapped backend) what the client sends
        # while the backend connects waits in _pending, up to _PENDING_LIMIT: no
        # stop-and-start of reading (two epoll_ctl calls) for every connection.
        self.relay = relay = Relay(transport, self.inbound.record, self.inbound.shaping,
                                   self.inbound.reactor, fast=self.fast)
        self._started = self.inbound.reactor.seconds()
        timeout = self.inbound.route.connect_timeout
        if bare_splice:
            self._connectRaw(relay, timeout, adopt=False)
            connecting = self._connecting
            if not (isinstance(connecting, RawConnect) and connecting.ready):
                transport.pauseProducing()  # type: ignore[attr-defined]
            # else: connected already (a loopback backend), and the splicer takes the
            # socket from the transport within this call, still watched for reading.
            return
        if self.direct is not None and self.bare and \
                isinstance(self.inbound.reactor, PosixReactorBase):
            self._connectRaw(relay, timeout, adopt=True)
            return
        if timeout is not None:
            # A queue shared by all connections with this timeout, not a DelayedCall each.
            self._timer = deadlines_for(self.inbound.reactor, timeout).callLater(self._timedOut)
        if self.direct is not None:
            direct = _DirectConnect(self, relay)
            self._connecting = direct
            host, port, connect_timeout, bind = self.direct
            if timeout is not None and connect_timeout is not None and \
                    timeout <= connect_timeout:
                # The route's deadline comes first: no connector timer (a DelayedCall).
                connect_timeout = None
            try:
                direct.connector = self.inbound.reactor.connectTCP(
                    host, port, direct, timeout=connect_timeout, bindAddress=bind)
            except Exception:  # noqa: BLE001 - as the endpoint's Deferred would: a failure
                direct.clientConnectionFailed(None, Failure())
            return
        factory = Factory.forProtocol(lambda: BackendSide(relay, self._joined))
        factory.noisy = False
        connecting = self.endpoint.connect(factory)
        connecting.addErrback(self._failed)
        self._connecting = connecting

    def _connectRaw(self, relay: Relay, timeout: float | None, adopt: bool) -> None:
        """
        Connect with a bare socket (gatekeep.targets.rawbackend). For a relay that
        splices, the socket is handed over as it is; otherwise (``adopt``: TLS-terminated
        or shaped streams) it is relayed through a Twisted transport made from it.
        Against ``connectTCP`` this leaves out the connector, its resolution turn, the
        second ``connect`` and, for a loopback backend, a turn of the reactor.
        """
        assert self.direct is not None
        host, port, connect_timeout, _ = self.direct
        if adopt:
            connecting = RawConnect(self.inbound.reactor, relay, host, port, self._adopted,
                                    self._failed, wrap=self._transport)
        else:
            connecting = RawConnect(self.inbound.reactor, relay, host, port, self._joined,
                                    self._failed)
        self._connecting = connecting
        # A connect that completed at once (a loopback backend's) joins without waiting
        # for the reactor: an adopted one right here, a spliced one with the sniffed
        # bytes, which follow at once (ITarget: dataReceived after makeConnection).
        connecting.start(finish_soon=adopt or bool(self.inbound.prefix))
        if adopt:
            connecting.finish()
        if connecting.ready or connecting.done:
            return
        # One deadline, the earlier of the route's and the endpoint's (connectTCP's).
        if timeout is None or (connect_timeout is not None and connect_timeout < timeout):
            timeout = connect_timeout
        if timeout is not None:
            self._timer = deadlines_for(self.inbound.reactor, timeout).callLater(self._timedOut)

    def _transport(self, sock: socket.socket) -> tcp.Server:
        """The connected backend socket as a Twisted TCP transport (not yet started)."""
        assert self.relay is not None and self.direct is not None
        host, port = self.direct[0], self.direct[1]
        # No listening port: as Twisted's own adoptStreamConnection makes it.
        transport = _AdoptedBackend(sock, BackendSide(self.relay, self._joined), (host, port),
                                    None, port, self.inbound.reactor)  # type: ignore[arg-type]
        transport.repstr = f"<backend {host}:{port}>"
        return transport

    def _adopted(self, transport: Any) -> None:
        transport.protocol.makeConnection(transport)  # BackendSide: then _joined

    def _timedOut(self) -> None:
        # Cancelling makes endpoints fail with ConnectingCancelledError; remember why.
        self._timer = None
        self._timed_out = True
        self._stopTimer()
        if self._connecting is not None:
            self._connecting.cancel()

    def _stopTimer(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _joined(self, backend: ITransport) -> None:
        self._connecting = None
        self._stopTimer()
        inbound = self.inbound
        metrics.backend_connected(inbound.listener, inbound.route.name,
                                  inbound.reactor.seconds() - self._started)
        pending, self._pending = self._pending, []
        if self.preamble:
            pending.insert(0, self.preamble)
        assert self.relay is not None
        self.relay.joined(backend, pending)

    def _failed(self, reason: Failure) -> None:
        self._connecting = None
        self._stopTimer()
        relay = self.relay
        if relay is None or relay.client_gone:
            return  # the client went away (and we cancelled the attempt)
        kind: FailureKind = "unavailable"
        if self._timed_out or reason.check(error.TimeoutError):
            kind = "timeout"
            why = "backend connect timeout"
            label = "timeout"
        else:
            why = f"backend unreachable: {reason.getErrorMessage()}"
            label = "refused" if reason.check(error.ConnectionRefusedError) else "unreachable"
        metrics.backend_connect_failed(self.inbound.listener, self.inbound.route.name, label)
        self.inbound.record.close(why)
        message = failure_bytes(self.inbound.detector, self.inbound.facts, kind)
        if message:
            self.inbound.record.bytes_out += len(message)
            relay.client.write(message)
        relay.client.loseConnection()

    def dataReceived(self, data: bytes) -> None:
        relay = self.relay
        if relay is None or relay.backend is None:
            self._pending.append(data)
            self._pending_size += len(data)
            if self._pending_size > _PENDING_LIMIT and not self._paused:
                self._paused = True
                self.transport.pauseProducing()  # type: ignore[union-attr]
            connecting = self._connecting
            if type(connecting) is RawConnect and connecting.ready:
                connecting.finish()  # connected already: relay from here
        else:
            relay.from_client(data)

    def readConnectionLost(self) -> None:
        if self.relay is not None:
            self.relay.client_read_done()

    def writeConnectionLost(self) -> None:
        pass

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        if self.relay is not None:
            self.relay.client_lost(reason)
        self._stopTimer()
        if self._connecting is not None:
            self._connecting.cancel()
