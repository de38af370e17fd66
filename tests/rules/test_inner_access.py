"""Route access rules inside a terminated TLS connection (the nested chain)."""

from __future__ import annotations

from twisted.internet.address import IPv4Address
from twisted.internet.protocol import connectionDone
from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.trial.unittest import SynchronousTestCase

from gatekeep import metrics
from gatekeep.config.loader import load_config
from gatekeep.guard import Guard, GuardState
from gatekeep.registry import load_registry
from gatekeep.sniff import ListenerRuntime, SniffingProtocol
from tests.targets.test_terminate import MemoryClient
from tests.tlscerts import make_ca, scratch_dir

CONFIG = """
[[listener]]
name = "inner-access"
endpoint = "tcp:0"
service = "edge"

[service.edge]

[[service.edge.route]]
name = "web"
match.tls = {{}}
terminate = {{ certificates = "{certs}", alpn = ["http/1.1"], service = "inner" }}

[service.inner]

[[service.inner.route]]
name = "admin"
match.http = {{ host = ["admin.example.test"] }}
access = "inside"
respond = {{ data = "admin" }}

[[service.inner.route]]
name = "site"
match.http = {{}}
respond = {{ data = "site" }}

[access.inside]
allow = ["10.0.0.0/8"]
default = "deny"
"""


class InnerAccessTests(SynchronousTestCase):
    def setUp(self) -> None:
        certs = scratch_dir(self) / "certs"
        certs.mkdir()
        self.ca = make_ca()
        self.ca.leaf("example.test").write_combined(certs / "a.pem")
        self.ca.leaf("*.example.test").write_combined(certs / "b.pem")
        self.reactor = MemoryReactorClock()
        config = load_config(CONFIG.format(certs=certs), load_registry())
        self.guard = Guard("inner-access", GuardState("inner-access", self.reactor),
                           self.reactor)
        self.runtime = ListenerRuntime.build(
            "inner-access", config.services["edge"], load_registry().detectors, 5.0,
            self.reactor, guard=self.guard)

    def request(self, client_ip: str, host: str) -> tuple[bytes, SniffingProtocol]:
        client = MemoryClient(host, [b"http/1.1"], ca=self.ca)
        protocol = SniffingProtocol(self.runtime)
        transport = StringTransport(peerAddress=IPv4Address("TCP", client_ip, 5000),
                                    hostAddress=IPv4Address("TCP", "127.0.0.1", 443))
        protocol.makeConnection(transport)
        protocol.dataReceived(client.hello())
        client.pump(transport, protocol, self.reactor)
        client.pump(transport, protocol, self.reactor,
                    send=b"GET / HTTP/1.1\r\nHost: " + host.encode() + b"\r\n\r\n")
        return client.received, protocol

    def test_inner_route_rule_is_enforced(self) -> None:
        before = metrics.value("gatekeep_refusals_total", listener="inner-access",
                               reason="access:inside")
        received, protocol = self.request("198.51.100.4", "admin.example.test")
        self.assertTrue(received.startswith(b"HTTP/1.1 403 Forbidden\r\n"), received)
        protocol.connectionLost(connectionDone)
        assert protocol.record is not None
        self.assertEqual(protocol.record.close_reason, "refused: access rule inside denies it")
        self.assertEqual(metrics.value("gatekeep_refusals_total", listener="inner-access",
                                       reason="access:inside"), before + 1)
        self.assertEqual(self.request("10.1.2.3", "admin.example.test")[0], b"admin")
        self.assertEqual(self.request("198.51.100.4", "www.example.test")[0], b"site")

    def test_the_inner_chain_shares_the_outer_shaping(self) -> None:
        from gatekeep.shapers.bucket import TokenBucket
        from gatekeep.shapers.shaping import ShaperSpec
        from gatekeep.targets._inner import InnerSniffer
        from gatekeep.values import ConnectionRecord, Inbound

        route = self.runtime.service.routes[0]
        shaping = ShaperSpec("s", "connection", lambda: TokenBucket(rate=1.0)).open(
            "inner-access", "10.0.0.1", self.reactor)
        outer = Inbound(
            listener="inner-access", client=IPv4Address("TCP", "10.0.0.1", 1),
            server=IPv4Address("TCP", "127.0.0.1", 443), transport=StringTransport(),
            detector="tls", facts={}, prefix=b"", route=route,
            record=ConnectionRecord("inner-access", "10.0.0.1:1", 0.0), reactor=self.reactor,
            shaping=shaping, guard=self.guard)
        inner = InnerSniffer(route.target, outer, "example.test")  # type: ignore[arg-type]
        self.assertIs(inner._shaping, shaping)
        assert inner.runtime.guard is not None
        self.assertIs(inner.runtime.guard.state, self.guard.state)
        self.assertFalse(inner.runtime.guard.active)  # no listener rule or limits again
