"""
The Twisted service tree: one :class:`ListenerService` per ``[[listener]]``.

Listening happens in ``privilegedStartService`` so that port 443 is bound before
twistd drops privileges (``--uid/--gid``).
"""

from __future__ import annotations

import sys
from typing import Any

from twisted.application.service import MultiService, Service
from twisted.internet.endpoints import serverFromString
from twisted.internet.interfaces import IListeningPort
from twisted.logger import Logger
from twisted.python.failure import Failure

from gatekeep.addresses import format_address
from gatekeep.config.model import Config, ListenerConfig
from gatekeep.registry import Registry
from gatekeep.sniff import ListenerRuntime, SniffingFactory

__all__ = ["GatekeepService", "ListenerService"]

log = Logger()


class ListenerService(Service):
    """Listens on one endpoint and feeds its connections to the sniffing chain."""

    def __init__(self, listener: ListenerConfig, factory: SniffingFactory, reactor: Any) -> None:
        self.listener = listener
        self.factory = factory
        self.reactor = reactor
        self.port: IListeningPort | None = None
        self.setName(f"listener:{listener.name}")

    def privilegedStartService(self) -> None:
        if self.port is None:
            self._listen()
        super().privilegedStartService()

    def startService(self) -> None:
        if self.port is None:
            self._listen()
        super().startService()

    def _listen(self) -> None:
        endpoint = serverFromString(self.reactor, self.listener.endpoint)
        failures: list[Failure] = []
        endpoint.listen(self.factory).addCallbacks(self._listening, failures.append)
        if failures:
            # Binding is synchronous for every stream endpoint we know: fail start-up
            # with a clear line instead of a traceback.
            message = (f"gatekeep: listener {self.listener.name!r} cannot listen on "
                       f"{self.listener.endpoint}: {failures[0].getErrorMessage()}")
            log.critical(message.replace("{", "{{").replace("}", "}}"))
            print(message, file=sys.stderr)
            raise SystemExit(1)

    def _listening(self, port: IListeningPort) -> None:
        self.port = port
        log.info("listener {listener} listening on {address} (service {service})",
                 listener=self.listener.name, address=format_address(port.getHost()),
                 service=self.listener.service)

    def stopService(self) -> Any:
        super().stopService()
        port, self.port = self.port, None
        if port is not None:
            return port.stopListening()
        return None


class GatekeepService(MultiService):
    """Everything one config runs."""

    def __init__(self, config: Config, registry: Registry, reactor: Any) -> None:
        super().__init__()
        self.config = config
        for warning in config.warnings:
            log.warn("config: {warning}", warning=warning)
        for listener in config.listeners:
            runtime = ListenerRuntime.build(
                listener.name, config.services[listener.service], registry.detectors,
                listener.detect_timeout, reactor)
            ListenerService(listener, SniffingFactory(runtime), reactor).setServiceParent(self)
