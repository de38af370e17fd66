"""
The ``forward`` action: connect to a backend endpoint and relay both ways.

The client is not read while the backend connection is being made (the bytes
sniffed so far are replayed first), so a client can never make gatekeep buffer
more than the sniff cap for a backend that is slow to accept.
"""

from __future__ import annotations

import weakref
from typing import Any

import attrs
from twisted.internet import defer, error
from twisted.internet.endpoints import clientFromString
from twisted.internet.interfaces import (
    IDelayedCall,
    IHalfCloseableProtocol,
    IStreamClientEndpoint,
    ITransport,
)
from twisted.internet.protocol import Factory, Protocol, connectionDone
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from gatekeep import metrics
from gatekeep.config.endpoints import client_endpoint_problem
from gatekeep.config.schema import setting
from gatekeep.failures import FailureKind, failure_bytes
from gatekeep.interfaces import ITarget
from gatekeep.relay import BackendSide, Relay
from gatekeep.values import Inbound

__all__ = ["ForwardTarget"]

log = Logger()


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
    # Parsed endpoints per reactor: parsing per connection would cost more than
    # the connect itself.
    _endpoints: weakref.WeakKeyDictionary[Any, IStreamClientEndpoint] = attrs.field(
        factory=weakref.WeakKeyDictionary, init=False, repr=False)

    def endpoint(self, reactor: Any) -> IStreamClientEndpoint:
        endpoint = self._endpoints.get(reactor)
        if endpoint is None:
            endpoint = self._endpoints[reactor] = clientFromString(reactor, self.to)
        return endpoint

    def attach(self, inbound: Inbound) -> Protocol:
        inbound.record.backend = self.to
        return ClientSide(inbound, self.endpoint(inbound.reactor))

    def describe(self) -> str:
        return f"forward to {self.to}"


@implementer(IHalfCloseableProtocol)
class ClientSide(Protocol):
    """Takes over the client's connection until the backend answers, then relays."""

    def __init__(self, inbound: Inbound, endpoint: IStreamClientEndpoint) -> None:
        self.inbound = inbound
        self.endpoint = endpoint
        self.relay: Relay | None = None
        self._pending: list[bytes] = []
        self._connecting: defer.Deferred[Any] | None = None
        self._timer: IDelayedCall | None = None
        self._timed_out = False
        self._started = 0.0

    def connectionMade(self) -> None:
        transport = self.transport
        assert transport is not None
        transport.pauseProducing()  # type: ignore[attr-defined]
        self.relay = relay = Relay(transport, self.inbound.record)
        self._started = self.inbound.reactor.seconds()
        factory = Factory.forProtocol(lambda: BackendSide(relay, self._joined))
        factory.noisy = False
        connecting = self.endpoint.connect(factory)
        timeout = self.inbound.route.connect_timeout
        if timeout is not None:
            self._timer = self.inbound.reactor.callLater(timeout, self._timedOut)
        connecting.addErrback(self._failed)
        self._connecting = connecting

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
