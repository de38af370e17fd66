"""
Access rules and connection limits in the chain, on in-memory transports and a
fake clock: who is refused, when, how it is counted and logged.
"""

from __future__ import annotations

from typing import Any

from twisted.internet.address import IPv4Address, IPv6Address
from twisted.internet.protocol import connectionDone
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.trial.unittest import SynchronousTestCase

from gatekeep import metrics
from gatekeep.guard import Guard, GuardState, Limits, NamedRule, client_key
from gatekeep.preamble import ProxyPolicy
from gatekeep.refusals import LINES_PER_WINDOW, WINDOW
from gatekeep.rules.cidr import CIDRRule, Clause, parse_networks
from gatekeep.sniff import ListenerRuntime, SniffingFactory, SniffingProtocol
from gatekeep.values import Condition, Decision, Route, Service
from tests.helpers import MagicDetector, RecordingTarget, captured_log

V1 = b"PROXY TCP4 %s 192.0.2.1 4242 443\r\n"


def refusals(listener: str, reason: str) -> float:
    return metrics.value("gatekeep_refusals_total", listener=listener, reason=reason)


class GuardTests(SynchronousTestCase):
    listener = "guarded"

    def setUp(self) -> None:
        self.clock = Clock()
        self.clock.advance(1000)
        self.target = RecordingTarget("web")
        self.admin = RecordingTarget("admin")
        self.state = GuardState(self.listener, self.clock)
        self.transports: list[StringTransport] = []

    def factory(self, limits: Limits | None = None, access: CIDRRule | None = None,
                route_access: CIDRRule | None = None, proxy: ProxyPolicy | None = None,
                ) -> SniffingFactory:
        routes = (
            Route("admin", "abc", (Condition("kind", ("A",)),), self.admin,
                  access=NamedRule("inside", route_access) if route_access else None),
            Route("web", None, (), self.target),
        )
        guard = Guard(self.listener, self.state, self.clock, limits or Limits(),
                      NamedRule("world", access) if access else None)
        runtime = ListenerRuntime.build(
            self.listener, Service("svc", routes, "web"), {"abc": MagicDetector("abc", b"ABC")},
            2.0, self.clock, proxy=proxy, guard=guard)
        return SniffingFactory(runtime)

    def connect(self, factory: SniffingFactory, host: str = "198.51.100.7",
                data: bytes = b"") -> tuple[SniffingProtocol | None, StringTransport]:
        peer: Any = IPv6Address("TCP", host, 4711) if ":" in host \
            else IPv4Address("TCP", host, 4711)
        transport = StringTransport(peerAddress=peer)
        protocol = factory.buildProtocol(peer)
        if protocol is not None:
            protocol.makeConnection(transport)
            if data:
                protocol.dataReceived(data)
        self.transports.append(transport)
        return protocol, transport

    def close(self, protocol: SniffingProtocol | None) -> None:
        assert protocol is not None
        protocol.connectionLost(connectionDone)

    # ---------------------------------------------------------------- max_connections

    def test_max_connections_refuses_at_once(self) -> None:
        factory = self.factory(Limits(max_connections=3))
        before = refusals(self.listener, "max_connections")
        open_ = [self.connect(factory, f"198.51.100.{i}")[0] for i in range(3)]
        self.assertTrue(all(p is not None for p in open_))
        # The fourth gets no protocol: Twisted closes the socket right after accept.
        self.assertIsNone(factory.buildProtocol(IPv4Address("TCP", "198.51.100.9", 1)))
        self.assertEqual(refusals(self.listener, "max_connections"), before + 1)
        self.assertEqual(self.state.open, 3)
        self.close(open_[0])
        self.assertEqual(self.state.open, 2)
        self.assertIsNotNone(self.connect(factory, "198.51.100.9")[0])

    def test_counts_survive_a_reload(self) -> None:
        old = self.factory(Limits(max_connections=2))
        first, _ = self.connect(old)
        self.connect(old)
        new = self.factory(Limits(max_connections=2))  # same GuardState: a reload
        self.assertIsNone(new.buildProtocol(IPv4Address("TCP", "198.51.100.9", 1)))
        self.close(first)  # a connection of the old generation ends
        self.assertIsNotNone(self.connect(new)[0])

    # ---------------------------------------------------------------- per IP

    def test_concurrent_per_ip(self) -> None:
        factory = self.factory(Limits(per_ip=2))
        before = refusals(self.listener, "max_connections_per_ip")
        a, _ = self.connect(factory, "203.0.113.1")
        self.connect(factory, "203.0.113.1")
        refused, transport = self.connect(factory, "203.0.113.1")
        self.assertTrue(transport.disconnecting)
        assert refused is not None and refused.record is not None
        self.assertTrue(refused.record.close_reason.startswith(  # type: ignore[union-attr]
            "refused: max_connections_per_ip (2) reached for 203.0.113.1"))
        self.assertEqual(refusals(self.listener, "max_connections_per_ip"), before + 1)
        # Another address is not affected; closing one makes room.
        self.assertFalse(self.connect(factory, "203.0.113.2")[1].disconnecting)
        self.close(refused)
        self.close(a)
        self.assertFalse(self.connect(factory, "203.0.113.1")[1].disconnecting)
        self.assertEqual(self.state.per_ip, {"203.0.113.1": 2, "203.0.113.2": 1})

    def test_ipv6_grouped_by_prefix(self) -> None:
        factory = self.factory(Limits(per_ip=1, prefix_v6=64))
        self.assertFalse(self.connect(factory, "2001:db8:1:2::1")[1].disconnecting)
        self.assertTrue(self.connect(factory, "2001:db8:1:2:ffff::9")[1].disconnecting)
        self.assertFalse(self.connect(factory, "2001:db8:1:3::1")[1].disconnecting)
        self.assertEqual(client_key(IPv6Address("TCP", "2001:db8:1:2::1", 1), 48),
                         "2001:db8:1::/48")
        self.assertEqual(client_key(IPv6Address("TCP", "2001:db8:1:2::1", 1), 64, whole=True),
                         "2001:db8:1:2::1")
        self.assertEqual(client_key(IPv6Address("TCP", "::ffff:10.0.0.1", 1), 64), "10.0.0.1")

    def test_onion_circuits_are_clients_of_their_own(self) -> None:
        # tor's PROXY line names each circuit fc00:dead:beef:4dad::ID: one /64.
        tor = ProxyPolicy.from_settings("required", ["127.0.0.1/32"])
        factory = self.factory(Limits(per_ip=1, whole_address=True), proxy=tor)
        line = b"PROXY TCP6 fc00:dead:beef:4dad::%d ::1 %d 80\r\n"
        _, one = self.connect(factory, "127.0.0.1", line % (1, 1))
        _, two = self.connect(factory, "127.0.0.1", line % (2, 2))
        _, again = self.connect(factory, "127.0.0.1", line % (1, 3))
        self.assertFalse(one.disconnecting)
        self.assertFalse(two.disconnecting)
        self.assertTrue(again.disconnecting)

    def test_rate_per_ip_token_bucket(self) -> None:
        factory = self.factory(Limits(rate=2.0, burst=3))
        before = refusals(self.listener, "connection_rate_per_ip")
        results = [self.connect(factory, "203.0.113.5")[1].disconnecting for _ in range(5)]
        self.assertEqual(results, [False, False, False, True, True])
        self.assertEqual(refusals(self.listener, "connection_rate_per_ip"), before + 2)
        self.clock.advance(0.49)
        self.assertTrue(self.connect(factory, "203.0.113.5")[1].disconnecting)
        self.clock.advance(0.01)  # one token after 0.5 s at 2/s
        self.assertFalse(self.connect(factory, "203.0.113.5")[1].disconnecting)
        self.assertTrue(self.connect(factory, "203.0.113.5")[1].disconnecting)
        self.assertFalse(self.connect(factory, "203.0.113.6")[1].disconnecting)
        self.clock.advance(10)  # refilled, but never above the burst
        results = [self.connect(factory, "203.0.113.5")[1].disconnecting for _ in range(4)]
        self.assertEqual(results, [False, False, False, True])

    def test_quiet_buckets_are_forgotten(self) -> None:
        from gatekeep import guard as guard_module

        self.patch(guard_module, "SWEEP_AT", 10)
        factory = self.factory(Limits(rate=1.0, burst=1))
        for i in range(10):
            self.connect(factory, f"203.0.113.{i}")
        self.assertEqual(len(self.state.buckets), 10)
        self.clock.advance(5)
        self.connect(factory, "203.0.113.200")
        self.assertEqual(list(self.state.buckets), ["203.0.113.200"])

    def test_per_ip_limits_use_the_proxy_client(self) -> None:
        lb = ProxyPolicy.from_settings("required", ["10.0.0.0/8"])
        factory = self.factory(Limits(per_ip=1), proxy=lb)
        _, first = self.connect(factory, "10.0.0.2", V1 % b"203.0.113.7")
        _, other = self.connect(factory, "10.0.0.2", V1 % b"203.0.113.8")
        _, second = self.connect(factory, "10.0.0.3", V1 % b"203.0.113.7")
        self.assertFalse(first.disconnecting)
        self.assertFalse(other.disconnecting)  # same balancer, another client
        self.assertTrue(second.disconnecting)
        self.assertEqual(self.state.per_ip, {"203.0.113.7": 1, "203.0.113.8": 1})

    # ---------------------------------------------------------------- access

    def test_listener_rule_on_accept(self) -> None:
        rule = CIDRRule(deny=parse_networks(["192.0.2.0/24"]))
        factory = self.factory(access=rule)
        before = refusals(self.listener, "access:world")
        protocol, transport = self.connect(factory, "192.0.2.1")
        self.assertTrue(transport.disconnecting)
        self.assertEqual(transport.value(), b"")
        self.assertEqual(refusals(self.listener, "access:world"), before + 1)
        assert protocol is not None
        protocol.dataReceived(b"ABCA")  # nothing is detected for a refused client
        self.assertEqual(self.admin.attached + self.target.attached, [])
        self.assertFalse(self.connect(factory, "198.51.100.1")[1].disconnecting)

    def test_listener_rule_after_the_proxy_header(self) -> None:
        lb = ProxyPolicy.from_settings("required", ["10.0.0.0/8"])
        rule = CIDRRule(deny=parse_networks(["203.0.113.0/24"]))
        factory = self.factory(access=rule, proxy=lb)
        _, bad = self.connect(factory, "10.0.0.2", V1 % b"203.0.113.7")
        _, good = self.connect(factory, "10.0.0.2", V1 % b"198.51.100.7")
        self.assertTrue(bad.disconnecting)
        self.assertFalse(good.disconnecting)

    def test_fact_clause_on_the_listener(self) -> None:
        rule = CIDRRule(when=(Clause((Condition("kind", ("A",)),),
                                     allow=parse_networks(["10.0.0.0/8"]),
                                     default=Decision.DENY),))
        factory = self.factory(access=rule)
        _, outside = self.connect(factory, "198.51.100.1", b"ABCA")
        _, inside = self.connect(factory, "10.1.1.1", b"ABCA")
        _, web = self.connect(factory, "198.51.100.1", b"ABCB")
        self.assertTrue(outside.disconnecting)
        self.assertEqual(len(self.admin.attached), 1)
        self.assertEqual(self.admin.attached[0].inbound.client,
                         IPv4Address("TCP", "10.1.1.1", 4711))
        self.assertFalse(inside.disconnecting)
        self.assertFalse(web.disconnecting)

    def test_route_rule_after_detection(self) -> None:
        inside = CIDRRule(allow=parse_networks(["10.0.0.0/8"]), default=Decision.DENY)
        factory = self.factory(route_access=inside)
        before = refusals(self.listener, "access:inside")
        with captured_log("gatekeep.connection") as lines:
            protocol, transport = self.connect(factory, "198.51.100.1", b"ABCA")
            self.close(protocol)
        self.assertTrue(transport.disconnecting)
        self.assertEqual(refusals(self.listener, "access:inside"), before + 1)
        self.assertEqual(self.admin.attached, [])
        self.assertEqual(lines, [])  # no per-connection line: the refusal log has it
        # Another route of the same connection's service is not affected.
        self.assertFalse(self.connect(factory, "198.51.100.1", b"ABCB")[1].disconnecting)
        self.assertFalse(self.connect(factory, "10.0.0.1", b"ABCA")[1].disconnecting)

    def test_http_clients_get_a_403(self) -> None:
        from gatekeep.detectors.http import HTTPDetector

        inside = CIDRRule(allow=parse_networks(["10.0.0.0/8"]), default=Decision.DENY)
        guard = Guard(self.listener, self.state, self.clock)
        route = Route("site", "http", (), self.target, access=NamedRule("inside", inside))
        runtime = ListenerRuntime.build(self.listener, Service("svc", (route,)),
                                        {"http": HTTPDetector()}, 2.0, self.clock, guard=guard)
        _, transport = self.connect(SniffingFactory(runtime), "198.51.100.1",
                                    b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        self.assertTrue(transport.value().startswith(b"HTTP/1.1 403 Forbidden\r\n"))
        self.assertTrue(transport.disconnecting)

    # ---------------------------------------------------------------- logging

    def test_refusals_are_logged_at_a_bounded_rate(self) -> None:
        factory = self.factory(Limits(max_connections=1))
        self.connect(factory)
        with captured_log("gatekeep.refusal") as lines:
            for _ in range(1000):
                factory.buildProtocol(IPv4Address("TCP", "198.51.100.50", 1))
            self.assertEqual(len(lines), LINES_PER_WINDOW)
            self.clock.advance(WINDOW)  # the window's summary comes even if the flood stops
            self.assertEqual(len(lines), LINES_PER_WINDOW + 1)
            summary = lines[-1]
            self.assertEqual(summary["count"], 1000 - LINES_PER_WINDOW)
            self.assertIn("max_connections", summary["reasons"])
            factory.buildProtocol(IPv4Address("TCP", "198.51.100.50", 1))
            self.assertEqual(len(lines), LINES_PER_WINDOW + 2)
        first = lines[0]
        self.assertEqual((first["client"], first["reason"]),
                         ("198.51.100.50:1", "max_connections"))


class BrokenRuleTests(SynchronousTestCase):
    def test_a_raising_rule_denies_and_logs_once_in_a_while(self) -> None:
        from zope.interface import implementer

        from gatekeep.interfaces import IAccessRule

        @implementer(IAccessRule)
        class Raising:
            def decide(self, peer: Any, match: Any) -> Decision:
                raise RuntimeError("bug in a plugin")

            def describe(self) -> str:
                return "raising"

        @implementer(IAccessRule)
        class Sloppy(Raising):
            def decide(self, peer: Any, match: Any) -> Decision:
                return True  # type: ignore[return-value]

        peer = IPv4Address("TCP", "192.0.2.1", 1)
        rule = NamedRule("broken", Raising())
        for _ in range(100):
            self.assertIs(rule.decide(peer, None), Decision.DENY)
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 1)
        with captured_log() as events:
            self.assertIs(NamedRule("sloppy", Sloppy()).decide(peer, None), Decision.DENY)
        self.assertTrue(any("not a Decision" in str(e.get("log_format")) for e in events))
