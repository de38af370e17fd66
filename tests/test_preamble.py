"""Receiving the PROXY protocol in the chain, on in-memory transports and a fake clock."""

from __future__ import annotations

import ipaddress
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from twisted.internet.address import IPv4Address, IPv6Address, UNIXAddress
from twisted.internet.protocol import connectionDone
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.trial.unittest import SynchronousTestCase

from gatekeep.detectors.proxy import ProxyDetector
from gatekeep.preamble import ProxyPolicy
from gatekeep.proxyproto import TLV, Command, Family, InetAddress, ProxyHeader, build
from gatekeep.proxyproto import tlv as t
from gatekeep.sniff import ListenerRuntime, SniffingProtocol
from gatekeep.values import Condition, Route, Service
from tests.helpers import MagicDetector, RecordingTarget, captured_log

LB = IPv4Address("TCP", "10.0.0.5", 40000)
STRANGER = IPv4Address("TCP", "198.51.100.66", 50000)
V1 = b"PROXY TCP4 203.0.113.7 192.0.2.1 4242 443\r\n"
CLIENT = IPv4Address("TCP", "203.0.113.7", 4242)
SERVER = IPv4Address("TCP", "192.0.2.1", 443)


def v2(*tlvs: TLV, family: Family = Family.TCP4) -> bytes:
    if family is Family.TCP6:
        src = InetAddress(ipaddress.IPv6Address("2001:db8::7"), 4242)
        dst = InetAddress(ipaddress.IPv6Address("2001:db8::1"), 443)
    else:
        src = InetAddress(ipaddress.IPv4Address("203.0.113.7"), 4242)
        dst = InetAddress(ipaddress.IPv4Address("192.0.2.1"), 443)
    return build(ProxyHeader(2, Command.PROXY, family, src, dst, tlvs))


class PreambleTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.clock = Clock()
        self.abc = MagicDetector("abc", b"ABC")
        self.target = RecordingTarget("abc")
        self.fallback = RecordingTarget("fallback")
        self.by_authority = RecordingTarget("by-authority")

    def connect(
        self, mode: str = "required", peer: Any = LB, routes: tuple[Route, ...] | None = None,
        trusted: tuple[str, ...] = ("10.0.0.0/8",),
    ) -> tuple[SniffingProtocol, StringTransport]:
        if routes is None:
            routes = (Route("abc", "abc", (), self.target),
                      Route("fallback", None, (), self.fallback))
        service = Service("svc", routes, "fallback")
        runtime = ListenerRuntime.build(
            "edge", service, {"abc": self.abc, "proxy": ProxyDetector()}, 2.0, self.clock,
            proxy=ProxyPolicy.from_settings(mode, trusted))  # type: ignore[arg-type]
        protocol = SniffingProtocol(runtime)
        transport = StringTransport(peerAddress=peer,
                                    hostAddress=IPv4Address("TCP", "10.0.0.1", 443))
        protocol.makeConnection(transport)
        self.protocol = protocol
        return protocol, transport

    def closed(self, protocol: SniffingProtocol) -> dict[str, Any]:
        with captured_log("gatekeep.connection") as events:
            protocol.connectionLost(connectionDone)
        [event] = events
        return event

    def test_v1_header_replaces_client_and_server(self) -> None:
        protocol, _ = self.connect()
        protocol.dataReceived(V1 + b"ABC1 payload")
        [attached] = self.target.attached
        inbound = attached.inbound
        self.assertEqual((inbound.client, inbound.server), (CLIENT, SERVER))
        self.assertEqual(attached.received, b"ABC1 payload")  # the header is consumed
        self.assertEqual(inbound.prefix, b"ABC1 payload")
        self.assertEqual(inbound.facts, {"kind": "1"})
        assert inbound.proxy is not None and inbound.proxy.version == 1
        event = self.closed(protocol)
        self.assertEqual(event["client"], "203.0.113.7:4242")
        self.assertEqual(event["facts"]["proxy_via"], "10.0.0.5:40000")
        self.assertEqual(event["facts"]["proxy_version"], 1)
        self.assertEqual(event["facts"]["kind"], "1")
        self.assertEqual(event["bytes_in"], len(V1) + 12)

    def test_every_split_of_header_and_payload(self) -> None:
        for header in (V1, v2(), v2(TLV(t.AUTHORITY, b"xmpp.example.org"), TLV(t.CRC32C, bytes(4)),
                                    family=Family.TCP6)):
            data = header + b"ABC2 the rest"
            for cut in range(len(data) + 1):
                self.target.attached.clear()
                protocol, _ = self.connect()
                for i in range(cut):
                    protocol.dataReceived(data[i:i + 1])
                if cut < len(data):
                    protocol.dataReceived(data[cut:])
                [attached] = self.target.attached
                self.assertEqual(attached.received, b"ABC2 the rest", (header, cut))
                self.assertIn(attached.inbound.client,
                              (CLIENT, IPv6Address("TCP", "2001:db8::7", 4242)))

    def test_header_byte_by_byte_then_silence_takes_the_default_route(self) -> None:
        protocol, _ = self.connect()
        for byte in V1:
            protocol.dataReceived(bytes([byte]))
            self.clock.advance(0.01)
        self.assertEqual(self.fallback.attached, [])
        self.clock.advance(2.0)
        [attached] = self.fallback.attached
        self.assertEqual(attached.inbound.client, CLIENT)

    def test_deadline_is_total_for_header_and_detection(self) -> None:
        protocol, _ = self.connect()
        self.clock.advance(1.5)
        protocol.dataReceived(V1 + b"AB")
        self.clock.advance(0.4)
        self.assertEqual(self.fallback.attached, [])
        self.clock.advance(0.1)
        [attached] = self.fallback.attached
        self.assertEqual(attached.received, b"AB")
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_incomplete_header_at_the_deadline_closes(self) -> None:
        protocol, transport = self.connect()
        protocol.dataReceived(V1[:20])
        self.clock.advance(2.0)
        self.assertTrue(transport.disconnecting)
        self.assertEqual(self.fallback.attached, [])  # never the default route
        event = self.closed(protocol)
        self.assertEqual(event["close_reason"],
                         "incomplete PROXY header: the detect_timeout passed")
        self.assertEqual(event["client"], "10.0.0.5:40000")
        self.assertEqual(event["protocol"], "proxy")

    def test_silent_trusted_peer_on_required_closes(self) -> None:
        protocol, transport = self.connect()
        self.clock.advance(2.0)
        self.assertTrue(transport.disconnecting)
        self.assertEqual(self.closed(protocol)["close_reason"],
                         "no PROXY header (required on this listener); "
                         "the detect_timeout passed")

    def test_client_closing_mid_header(self) -> None:
        protocol, transport = self.connect()
        protocol.dataReceived(V1[:30])
        protocol.readConnectionLost()
        self.assertTrue(transport.disconnecting)
        self.assertEqual(self.closed(protocol)["close_reason"],
                         "incomplete PROXY header: the client closed")

    def test_header_then_eof_routes_at_once(self) -> None:
        protocol, _ = self.connect()
        protocol.dataReceived(V1)
        protocol.readConnectionLost()
        [attached] = self.fallback.attached
        self.assertEqual(attached.inbound.client, CLIENT)

    def test_malformed_header_closes_with_the_reason(self) -> None:
        cases = {
            b"PROXY TCP4 203.0.113.7 192.0.2.1 4242 443\n": "bare LF",
            b"PROXY TCP4 1.2.3.4 1.2.3.4 1 99999\r\n": "bad destination port",
            v2()[:12] + b"\x31": "version 3",
        }
        for data, why in cases.items():
            protocol, transport = self.connect()
            protocol.dataReceived(data)
            self.assertTrue(transport.disconnecting, data)
            event = self.closed(protocol)
            self.assertIn("malformed PROXY header: ", event["close_reason"])
            self.assertIn(why, event["close_reason"])
            self.assertEqual(self.target.attached + self.fallback.attached, [])

    def test_bytes_after_a_refusal_are_ignored(self) -> None:
        protocol, _ = self.connect()
        protocol.dataReceived(b"PROXY TCP9 ")
        protocol.dataReceived(b"ABC1")
        protocol.readConnectionLost()
        self.assertEqual(self.target.attached + self.fallback.attached, [])

    def test_required_refuses_untrusted_peers_on_accept(self) -> None:
        protocol, transport = self.connect(peer=STRANGER)
        self.assertTrue(transport.disconnecting)
        self.assertEqual(self.clock.getDelayedCalls(), [])
        event = self.closed(protocol)
        self.assertEqual(event["close_reason"],
                         "PROXY header required, but the peer is not in trusted_proxies")
        self.assertEqual(event["client"], "198.51.100.66:50000")

    def test_refusals_are_counted(self) -> None:
        from gatekeep import metrics

        def count(reason: str) -> float:
            return metrics.value("gatekeep_refusals_total", listener="edge", reason=reason)

        before = {r: count(r) for r in ("proxy_untrusted", "proxy_malformed", "proxy_missing")}
        self.connect(peer=STRANGER)
        protocol, _ = self.connect()
        protocol.dataReceived(b"PROXY TCP4 x")
        protocol, _ = self.connect()
        protocol.dataReceived(b"ABC1")
        for reason, old in before.items():
            self.assertEqual(count(reason), old + 1, reason)
        self.assertEqual(metrics.outcome_of(protocol.record), "refused")  # type: ignore[arg-type]

    def test_required_trusted_without_header_is_refused(self) -> None:
        protocol, transport = self.connect()
        protocol.dataReceived(b"ABC1")
        self.assertTrue(transport.disconnecting)
        self.assertEqual(self.closed(protocol)["close_reason"],
                         "no PROXY header (required on this listener)")

    def test_optional_trusted_with_and_without_header(self) -> None:
        protocol, _ = self.connect("optional")
        protocol.dataReceived(b"ABC1")
        self.assertEqual(self.target.attached[0].inbound.client, LB)
        protocol, _ = self.connect("optional")
        protocol.dataReceived(V1 + b"ABC1")
        self.assertEqual(self.target.attached[1].inbound.client, CLIENT)

    def test_optional_untrusted_cannot_forge_an_address(self) -> None:
        for header in (V1, v2()):
            protocol, transport = self.connect("optional", peer=STRANGER)
            for byte in header[:12]:
                protocol.dataReceived(bytes([byte]))
            self.assertTrue(transport.disconnecting)
            self.assertEqual(self.closed(protocol)["close_reason"],
                             "PROXY header from an untrusted source")
        self.assertEqual(self.target.attached + self.fallback.attached, [])

    def test_optional_untrusted_payload_is_the_clients(self) -> None:
        protocol, _ = self.connect("optional", peer=STRANGER)
        protocol.dataReceived(b"ABC1")
        [attached] = self.target.attached
        self.assertEqual(attached.inbound.client, STRANGER)
        self.assertEqual(attached.received, b"ABC1")
        # Bytes that only start like a signature are the client's once they differ...
        protocol, _ = self.connect("optional", peer=STRANGER)
        protocol.dataReceived(b"PRO")
        self.assertEqual(self.fallback.attached, [])
        protocol.dataReceived(b"PAGANDA")
        # ...or when the deadline passes.
        protocol, _ = self.connect("optional", peer=STRANGER)
        protocol.dataReceived(b"PROX")
        self.clock.advance(2.0)
        self.assertEqual([a.received for a in self.fallback.attached],
                         [b"PROPAGANDA", b"PROX"])

    def test_local_and_unknown_keep_the_real_endpoints(self) -> None:
        local = build(ProxyHeader(2, Command.LOCAL, Family.UNSPEC))
        for header in (local, b"PROXY UNKNOWN\r\n",
                       build(ProxyHeader(2, Command.PROXY, Family.UNSPEC))):
            self.target.attached.clear()
            protocol, _ = self.connect()
            protocol.dataReceived(header + b"ABC1")
            [attached] = self.target.attached
            self.assertEqual(attached.inbound.client, LB)
            self.assertEqual(attached.inbound.server, IPv4Address("TCP", "10.0.0.1", 443))
            self.assertEqual(attached.received, b"ABC1")

    def test_ipv6_and_unix_sources(self) -> None:
        protocol, _ = self.connect()
        protocol.dataReceived(v2(family=Family.TCP6) + b"ABC1")
        self.assertEqual(self.target.attached[0].inbound.client,
                         IPv6Address("TCP", "2001:db8::7", 4242))
        from gatekeep.proxyproto import UnixAddress
        unix = build(ProxyHeader(2, Command.PROXY, Family.UNIX_STREAM,
                                 UnixAddress(b"/run/client"), UnixAddress(b"/run/gk.sock")))
        protocol, _ = self.connect()
        protocol.dataReceived(unix + b"ABC1")
        self.assertEqual(self.target.attached[1].inbound.client, UNIXAddress(b"/run/client"))
        self.assertEqual(self.closed(protocol)["client"], "unix:/run/client")

    def test_trust_by_v4_mapped_peer_and_unix_socket(self) -> None:
        protocol, _ = self.connect(peer=IPv6Address("TCP", "::ffff:10.1.2.3", 5))
        protocol.dataReceived(V1 + b"ABC1")
        self.assertEqual(self.target.attached[0].inbound.client, CLIENT)
        protocol, transport = self.connect(peer=UNIXAddress(None))
        self.assertTrue(transport.disconnecting)  # "unix" not listed
        protocol, _ = self.connect(peer=UNIXAddress(None), trusted=("unix",))
        protocol.dataReceived(V1 + b"ABC1")
        self.assertEqual(self.target.attached[1].inbound.client, CLIENT)

    def test_tlvs_are_facts_for_routes_and_logs(self) -> None:
        routes = (
            Route("abc", "abc", (), self.target),
            Route("by-authority", "proxy", (Condition("authority", ("*.example.org",)),
                                            Condition("ssl", (True,))), self.by_authority),
            Route("fallback", None, (), self.fallback),
        )
        ssl = t.SSLInfo(t.CLIENT_SSL, 0, version="TLSv1.3", cipher="TLS_AES_128_GCM_SHA256")
        header = v2(TLV(t.ALPN, b"h2"), TLV(t.AUTHORITY, b"Chat.Example.org"),
                    TLV(t.UNIQUE_ID, b"abc-123"), TLV(t.SSL, ssl.encode()))
        protocol, _ = self.connect(routes=routes)
        protocol.dataReceived(header + b"no protocol we know")
        self.clock.advance(2.0)
        [attached] = self.by_authority.attached
        self.assertEqual(attached.inbound.detector, "proxy")
        event = self.closed(protocol)
        facts = event["facts"]
        self.assertEqual((facts["proxy_alpn"], facts["proxy_authority"], facts["proxy_unique_id"],
                          facts["proxy_ssl"], facts["proxy_ssl_version"]),
                         ("h2", "chat.example.org", "abc-123", True, "TLSv1.3"))
        self.assertEqual(facts["proxy_ssl_verified"], False)
        self.assertIn("proxy_authority=chat.example.org", event["facts_text"])

    def test_match_proxy_without_a_header_does_not_match(self) -> None:
        routes = (Route("by-authority", "proxy", (), self.by_authority),
                  Route("fallback", None, (), self.fallback))
        protocol, _ = self.connect("optional", routes=routes)
        protocol.dataReceived(b"hello")
        self.assertEqual(self.by_authority.attached, [])
        self.assertEqual(len(self.fallback.attached), 1)
        protocol, _ = self.connect("off", routes=routes)
        self.assertEqual(len(self.fallback.attached), 2)  # no detectors left: at once

    def test_catch_all_service_waits_for_the_header(self) -> None:
        routes = (Route("fallback", None, (), self.fallback),)
        protocol, _ = self.connect(routes=routes)
        self.assertEqual(self.fallback.attached, [])
        protocol.dataReceived(V1[:10])
        self.assertEqual(self.fallback.attached, [])
        protocol.dataReceived(V1[10:] + b"data")
        [attached] = self.fallback.attached
        self.assertEqual((attached.inbound.client, attached.received), (CLIENT, b"data"))


_FUZZ_SERVICE = Service("svc", (Route("abc", "abc", (), RecordingTarget("abc")),
                                Route("fallback", None, (), RecordingTarget("fallback"))),
                        "fallback")


def _outcome(mode: str, peer: Any, chunks: list[bytes]) -> tuple[str, Any, bytes]:
    clock = Clock()
    runtime = ListenerRuntime.build(
        "fuzz", _FUZZ_SERVICE, {"abc": MagicDetector("abc", b"ABC")}, 2.0, clock,
        proxy=ProxyPolicy.from_settings(mode, ["10.0.0.0/8"]))  # type: ignore[arg-type]
    protocol = SniffingProtocol(runtime)
    transport = StringTransport(peerAddress=peer)
    protocol.makeConnection(transport)
    for target in _FUZZ_SERVICE.routes:
        target.target.attached.clear()  # type: ignore[attr-defined]
    for chunk in chunks:
        protocol.dataReceived(chunk)
    clock.advance(2.0)
    assert clock.getDelayedCalls() == []
    for route in _FUZZ_SERVICE.routes:
        attached = route.target.attached  # type: ignore[attr-defined]
        if attached:
            assert not transport.disconnecting
            return route.name, attached[0].inbound.client, attached[0].received
    assert transport.disconnecting
    assert protocol.record is not None
    return "closed", protocol.record.close_reason, b""

_STARTS = [b"", V1, V1[:20], v2(), v2()[:14], b"PROXY ", b"PROXY UNKNOWN\r\n", b"ABC"]


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.sampled_from(["required", "optional"]), st.sampled_from([LB, STRANGER]),
       st.sampled_from(_STARTS), st.binary(max_size=120), st.lists(st.integers(0, 250)))
def test_any_bytes_any_split_same_outcome(
    mode: str, peer: Any, start: bytes, tail: bytes, cuts: list[int],
) -> None:
    data = start + tail
    points = sorted({c for c in cuts if 0 < c < len(data)})
    chunks = [data[a:b] for a, b in zip([0, *points], [*points, len(data)], strict=True)]
    assert _outcome(mode, peer, chunks) == _outcome(mode, peer, [data])


def test_onion_listeners_take_tors_proxy_line() -> None:
    from gatekeep.config.loader import load_config
    from gatekeep.registry import load_registry
    from gatekeep.service import GatekeepService

    text = """
[[listener]]
name = "onion"
service = "edge"
[listener.tor]
ports = [80]
key_dir = "/var/lib/gatekeep/onion"

[[listener]]
name = "tcp"
endpoint = "tcp:8080"
service = "edge"

[service.edge]
[[service.edge.route]]
name = "all"
reject = {}
"""
    registry = load_registry()
    onion, tcp = load_config(text, registry).listeners
    from gatekeep.config.errors import ConfigErrors

    try:
        load_config(text.replace('name = "onion"', 'name = "onion"\nproxy_protocol = "off"\n'
                                 'trusted_proxies = ["127.0.0.1"]'), registry)
    except ConfigErrors as errors:
        [error] = errors.errors
        assert str(error).startswith("listener[0].proxy_protocol: not used on an onion "
                                     "listener")
    else:
        raise AssertionError("accepted PROXY keys on an onion listener")
    policy = GatekeepService._proxy_policy(onion)
    assert policy.mode == "required"
    assert policy.trusts(IPv4Address("TCP", "127.0.0.1", 5)) and policy.trusts(
        IPv6Address("TCP", "::1", 5))
    assert not policy.trusts(IPv4Address("TCP", "127.0.0.2", 5))
    assert GatekeepService._proxy_policy(tcp).mode == "off"
    # What tor writes (HiddenServiceExportCircuitID haproxy): the circuit is the client.
    clock = Clock()
    target = RecordingTarget()
    runtime = ListenerRuntime.build(
        "onion", Service("svc", (Route("all", None, (), target),)), {}, 5.0, clock,
        proxy=policy)
    protocol = SniffingProtocol(runtime)
    protocol.makeConnection(StringTransport(peerAddress=IPv4Address("TCP", "127.0.0.1", 4000)))
    protocol.dataReceived(b"PROXY TCP6 fc00:dead:beef:4dad::0:29 ::1 65535 80\r\nGET /")
    [attached] = target.attached
    client: Any = attached.inbound.client
    assert client == IPv6Address("TCP", "fc00:dead:beef:4dad::29", 65535)
    assert attached.received == b"GET /"
