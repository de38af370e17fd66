"""An HTTP site on a memory reactor: a client transport, backend transports on demand."""

from __future__ import annotations

import tomllib
from typing import Any

from twisted.internet.address import IPv4Address
from twisted.internet.testing import MemoryReactorClock, StringTransport

from gatekeep.config.errors import ConfigError
from gatekeep.detectors.http import HTTPDetector
from gatekeep.http.settings import HTTPSite, load_sites
from gatekeep.sniff import ListenerRuntime, SniffingProtocol
from gatekeep.targets.http import HTTPTarget
from gatekeep.values import Route, Service


def site_from(text: str, name: str = "site") -> HTTPSite:
    errors: list[ConfigError] = []
    sites = load_sites(tomllib.loads(text)["http"], errors)
    assert not errors, errors
    return sites[name]


class Harness:
    def __init__(self, text: str, client: str = "198.51.100.4", detect: bool = True) -> None:
        self.reactor = MemoryReactorClock()
        self.target = HTTPTarget(site_from(text))
        # detect=False: a catch-all route, so every byte reaches the proxy's own reader.
        route = Route("web", "http" if detect else None, (), self.target, connect_timeout=3.0)
        self.runtime = ListenerRuntime.build(
            "edge", Service("svc", (route,)), {"http": HTTPDetector()}, 5.0, self.reactor)
        self.client_ip = client
        self.backends: list[tuple[Any, StringTransport]] = []

    def connect(self, data: bytes = b"") -> tuple[SniffingProtocol, StringTransport]:
        protocol = SniffingProtocol(self.runtime)
        client = StringTransport(peerAddress=IPv4Address("TCP", self.client_ip, 5000),
                                 hostAddress=IPv4Address("TCP", "127.0.0.1", 443))
        protocol.makeConnection(client)
        if data:
            protocol.dataReceived(data)
        return protocol, client

    def backend(self, index: int = -1) -> tuple[Any, StringTransport]:
        """Accept the newest (or ``index``) backend connection the proxy asked for."""
        clients = self.reactor.tcpClients
        host, port, factory, _timeout, _bind = clients[index]
        protocol = factory.buildProtocol(IPv4Address("TCP", host, port))
        assert protocol is not None
        transport = StringTransport(peerAddress=IPv4Address("TCP", host, port))
        protocol.makeConnection(transport)
        # The endpoint's wrapper resolves the connect Deferred on connectionMade.
        self.backends.append((protocol, transport))
        return protocol, transport
