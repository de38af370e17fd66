"""
The ``app`` action: hand the connection to a Twisted protocol factory in-process.

No second TCP hop: the factory's protocol runs on the client's own transport.
The demo backends use it, and so can a user's own Twisted application.
"""

from __future__ import annotations

import importlib
from typing import Any

import attrs
from twisted.internet.interfaces import IHalfCloseableProtocol, IProtocolFactory
from twisted.internet.protocol import Protocol
from zope.interface import implementer, providedBy
from zope.interface.declarations import directlyProvides

from gatekeep.config.schema import setting
from gatekeep.interfaces import IInboundReceiver, ITarget
from gatekeep.values import Inbound

__all__ = ["AppTarget", "resolve_factory"]


def resolve_factory(path: object) -> IProtocolFactory:
    """Import ``package.module:name`` (or ``package.module.name``) as a protocol factory."""
    if not isinstance(path, str) or not path.strip():
        raise TypeError('expected a dotted path such as "myapp.server:factory"')
    module_name, sep, attribute = path.partition(":")
    if not sep:
        module_name, _, attribute = path.rpartition(".")
    try:
        module = importlib.import_module(module_name)
    except Exception as error:  # noqa: BLE001 - the user's module may raise anything
        raise ValueError(f"cannot import {module_name!r}: {error}") from None
    obj: Any = module
    for part in attribute.split("."):
        obj = getattr(obj, part, None)
        if obj is None:
            raise ValueError(f"{module_name!r} has no attribute {attribute!r}")
    if not IProtocolFactory.providedBy(obj) and callable(obj):
        obj = obj()  # a zero-argument factory of factories (e.g. a class)
    if not IProtocolFactory.providedBy(obj):
        raise ValueError(f"{path!r} is not a Twisted protocol factory (IProtocolFactory)")
    factory: IProtocolFactory = obj
    return factory


class _CountingTransport:
    """Counts the bytes an in-process protocol writes, for the connection's log line."""

    def __init__(self, transport: Any, inbound: Inbound) -> None:
        self._transport = transport
        self._record = inbound.record
        directlyProvides(self, providedBy(transport))

    def write(self, data: bytes) -> None:
        self._record.bytes_out += len(data)
        self._transport.write(data)

    def writeSequence(self, data: list[bytes]) -> None:
        self._record.bytes_out += sum(map(len, data))
        self._transport.writeSequence(data)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._transport, name)


@implementer(IHalfCloseableProtocol)
class _Attached(Protocol):
    """Puts the app's protocol on the counting transport (and relays every event)."""

    def __init__(self, inner: Any, inbound: Inbound) -> None:
        self.inner = inner
        self.inbound = inbound

    def makeConnection(self, transport: Any) -> None:
        Protocol.makeConnection(self, transport)
        self.inner.makeConnection(_CountingTransport(transport, self.inbound))

    def dataReceived(self, data: bytes) -> None:
        self.inner.dataReceived(data)

    def connectionLost(self, reason: Any = None) -> None:
        self.inner.connectionLost(reason)

    def readConnectionLost(self) -> None:
        handler = getattr(self.inner, "readConnectionLost", None)
        if handler is not None:
            handler()
        elif self.transport is not None:
            self.transport.loseConnection()

    def writeConnectionLost(self) -> None:
        handler = getattr(self.inner, "writeConnectionLost", None)
        if handler is not None:
            handler()


@implementer(ITarget)
@attrs.define(eq=False)
class AppTarget:
    """``app = { factory = "package.module:factory" }``"""

    factory: IProtocolFactory = setting(
        "Dotted path (`package.module:name`) of a Twisted protocol factory, or of a "
        "zero-argument callable returning one. Its protocols may provide "
        "`IInboundReceiver` to learn the detected facts and the real client address.",
        parse=resolve_factory,
    )
    _started: bool = attrs.field(default=False, init=False)

    def attach(self, inbound: Inbound) -> Protocol:
        if not self._started:
            self._started = True
            self.factory.doStart()
        protocol = self.factory.buildProtocol(inbound.client)
        if protocol is None:
            raise ValueError("the app's factory refused the connection")
        receiver = IInboundReceiver(protocol, None)
        if receiver is not None:
            receiver.inboundReceived(inbound)
        inbound.record.backend = "app"
        return _Attached(protocol, inbound)

    def describe(self) -> str:
        factory = self.factory
        name = getattr(factory, "__qualname__", None) or type(factory).__qualname__
        return f"app {type(factory).__module__}.{name}"
