"""Metrics: names and labels as CONFIG.md promises, counted from real chain events."""

from __future__ import annotations

from typing import Any

from twisted.internet.address import IPv4Address
from twisted.internet.error import ConnectionRefusedError
from twisted.internet.protocol import connectionDone
from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase

from gatekeep import metrics
from gatekeep.detectors.http import HTTPDetector
from gatekeep.sniff import ListenerRuntime, SniffingProtocol
from gatekeep.targets.forward import ForwardTarget
from gatekeep.targets.respond import RespondTarget
from gatekeep.tracker import ConnectionTracker
from gatekeep.values import ConnectionRecord, Route, Service

REQUEST = b"GET / HTTP/1.1\r\nHost: example.test\r\n\r\n"


class Delta:
    """Counter values relative to when it was made (the registry is process-wide)."""

    def __init__(self, name: str, **labels: str) -> None:
        self.name, self.labels = name, labels
        self.start = metrics.value(name, **labels)

    def __call__(self) -> float:
        return metrics.value(self.name, **self.labels) - self.start


class ChainMetricsTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.reactor = MemoryReactorClock()
        self.tracker = ConnectionTracker()

    def runtime(self, listener: str, route: Route, default: str | None = None) -> ListenerRuntime:
        return ListenerRuntime.build(listener, Service("svc", (route,), default),
                                     {"http": HTTPDetector()}, 5.0, self.reactor, self.tracker)

    def connect(self, runtime: ListenerRuntime) -> tuple[SniffingProtocol, StringTransport]:
        protocol = SniffingProtocol(runtime)
        transport = StringTransport(peerAddress=IPv4Address("TCP", "198.51.100.4", 5000))
        protocol.makeConnection(transport)
        return protocol, transport

    def test_a_responded_connection_is_counted_with_its_bytes(self) -> None:
        runtime = self.runtime("m-respond", Route("web", "http", (), RespondTarget(data="hi")))
        done = Delta("gatekeep_connections_total", listener="m-respond", route="web",
                     protocol="http", outcome="responded")
        bytes_in = Delta("gatekeep_bytes_total", listener="m-respond", route="web",
                         direction="in")
        bytes_out = Delta("gatekeep_bytes_total", listener="m-respond", route="web",
                          direction="out")
        detect = Delta("gatekeep_detect_seconds_count", listener="m-respond")
        protocol, _ = self.connect(runtime)
        self.assertEqual(metrics.value("gatekeep_connections_open", listener="m-respond"), 1)
        self.assertEqual(self.tracker.count("m-respond"), 1)
        self.reactor.advance(0.25)
        protocol.dataReceived(REQUEST)
        protocol.connectionLost(Failure(Exception("gone")))
        self.assertEqual((done(), bytes_in(), bytes_out(), detect()), (1, len(REQUEST), 2, 1))
        self.assertEqual(metrics.value("gatekeep_detect_seconds_sum", listener="m-respond"),
                         0.25)
        self.assertEqual(metrics.value("gatekeep_connections_open", listener="m-respond"), 0)
        self.assertEqual(self.tracker.count(), 0)

    def test_bytes_of_open_connections_show_at_each_scrape(self) -> None:
        route = Route("app", "http", (), ForwardTarget(to="tcp:127.0.0.1:8080"))
        runtime = self.runtime("m-live", route)
        bytes_in = Delta("gatekeep_bytes_total", listener="m-live", route="app", direction="in")
        bytes_out = Delta("gatekeep_bytes_total", listener="m-live", route="app",
                          direction="out")
        protocol, _ = self.connect(runtime)
        protocol.dataReceived(REQUEST)
        factory: Any = self.reactor.tcpClients[-1][2]
        factory.buildProtocol(None).makeConnection(StringTransport())
        assert protocol.record is not None
        protocol.record.bytes_out += 1000  # as the relay counts what it writes to the client
        # Nothing is counted while bytes flow: a scrape adds them.
        self.assertEqual(metrics.BYTES.values.get(("m-live", "app", "out"), 0), 0)
        metrics.exposition()
        self.assertEqual((bytes_in(), bytes_out()), (len(REQUEST), 1000))
        protocol.dataReceived(b"more")
        protocol.record.bytes_out += 500
        metrics.exposition()
        metrics.exposition()  # counted once, however often scraped
        self.assertEqual((bytes_in(), bytes_out()), (len(REQUEST) + 4, 1500))
        protocol.record.bytes_out += 1
        protocol.connectionLost(connectionDone)
        self.assertEqual((bytes_in(), bytes_out()), (len(REQUEST) + 4, 1501))
        metrics.exposition()
        self.assertEqual((bytes_in(), bytes_out()), (len(REQUEST) + 4, 1501))
        self.assertEqual(metrics.value("gatekeep_connections_open", listener="m-live"), 0)

    def test_a_record_never_opened_does_not_unbalance_the_gauge(self) -> None:
        record = ConnectionRecord("m-foreign", "1.2.3.4:5", 0.0, route="r", bytes_in=3)
        record.close("done")
        metrics.connection_ended(record)
        self.assertEqual(metrics.value("gatekeep_connections_open", listener="m-foreign"), 0)
        self.assertEqual(metrics.value("gatekeep_bytes_total", listener="m-foreign", route="r",
                                       direction="in"), 3)

    def test_no_route_is_a_refusal(self) -> None:
        runtime = self.runtime("m-noroute", Route("web", "http", (), RespondTarget(data="x")))
        refused = Delta("gatekeep_refusals_total", listener="m-noroute", reason="no_route")
        done = Delta("gatekeep_connections_total", listener="m-noroute", route="-",
                     protocol="unknown", outcome="no_route")
        protocol, _ = self.connect(runtime)
        protocol.dataReceived(b"\x00\x01 not http\r\n\r\n")
        protocol.connectionLost(connectionDone)
        self.assertEqual((refused(), done()), (1, 1))

    def test_backend_connect_latency_and_failures(self) -> None:
        route = Route("app", "http", (), ForwardTarget(to="tcp:127.0.0.1:8080"),
                      connect_timeout=3.0)
        runtime = self.runtime("m-forward", route)
        latency = Delta("gatekeep_backend_connect_seconds_count", listener="m-forward",
                        route="app")
        refused = Delta("gatekeep_backend_connect_failures_total", listener="m-forward",
                        route="app", reason="refused")
        timeouts = Delta("gatekeep_backend_connect_failures_total", listener="m-forward",
                         route="app", reason="timeout")
        errors = Delta("gatekeep_connections_total", listener="m-forward", route="app",
                       protocol="http", outcome="backend_error")
        # 1: connects after 40 ms.
        protocol, _ = self.connect(runtime)
        protocol.dataReceived(REQUEST)
        factory: Any = self.reactor.tcpClients[-1][2]
        self.reactor.advance(0.04)
        factory.buildProtocol(None).makeConnection(StringTransport())
        self.assertEqual(latency(), 1)
        self.assertAlmostEqual(metrics.value(
            "gatekeep_backend_connect_seconds_sum", listener="m-forward", route="app"), 0.04)
        # 2: refused.
        protocol, _ = self.connect(runtime)
        protocol.dataReceived(REQUEST)
        connector = self.reactor.connectors[-1]
        self.reactor.tcpClients[-1][2].clientConnectionFailed(
            connector, Failure(ConnectionRefusedError()))
        protocol.connectionLost(connectionDone)
        # 3: never answers.
        protocol, _ = self.connect(runtime)
        protocol.dataReceived(REQUEST)
        self.reactor.advance(3.0)
        protocol.connectionLost(connectionDone)
        self.assertEqual((refused(), timeouts(), errors()), (1, 1, 2))


class FunctionsTests(SynchronousTestCase):
    def test_outcomes(self) -> None:
        def outcome(reason: str | None, route: str | None = "r") -> str:
            record = ConnectionRecord("l", "1.2.3.4:5", 0.0, route=route)
            record.close_reason = reason
            return metrics.outcome_of(record)

        self.assertEqual(outcome("done"), "ok")
        self.assertEqual(outcome("client reset"), "ok")
        self.assertEqual(outcome("no route", None), "no_route")
        self.assertEqual(outcome("client closed before detection", None), "abandoned")
        self.assertEqual(outcome("backend unreachable: Connection refused"), "backend_error")
        self.assertEqual(outcome("backend connect timeout"), "backend_error")
        self.assertEqual(outcome("rejected"), "rejected")
        self.assertEqual(outcome("idle_timeout (5m) passed"), "timeout")
        self.assertEqual(outcome("drain_timeout (30s) passed"), "timeout")  # a stop's

    def test_api_for_other_features(self) -> None:
        refusals = Delta("gatekeep_refusals_total", listener="m-api", reason="access")
        tls = Delta("gatekeep_tls_handshakes_total", listener="m-api", route="web",
                    outcome="ok")
        tls_time = Delta("gatekeep_tls_handshake_seconds_count", listener="m-api", route="web")
        applied = Delta("gatekeep_reloads_total", outcome="applied")
        rejected = Delta("gatekeep_reloads_total", outcome="rejected")
        metrics.refused("m-api", "access")
        metrics.tls_handshake("m-api", "web", "ok", 0.01)
        metrics.tls_handshake("m-api", "web", "failed")
        metrics.reloaded(True)
        self.assertEqual(metrics.value("gatekeep_config_last_reload_successful"), 1)
        metrics.reloaded(False)
        self.assertEqual(metrics.value("gatekeep_config_last_reload_successful"), 0)
        metrics.reloaded(True)
        self.assertEqual((refusals(), tls(), tls_time(), applied(), rejected()), (1, 1, 1, 2, 1))

    def test_exposition_uses_the_contract_names(self) -> None:
        text = metrics.exposition().decode()
        for name in ("gatekeep_connections_total", "gatekeep_bytes_total",
                     "gatekeep_refusals_total", "gatekeep_reloads_total",
                     "gatekeep_detect_seconds", "gatekeep_backend_connect_failures_total",
                     "gatekeep_backend_connect_seconds", "gatekeep_tls_handshakes_total"):
            self.assertIn(f"# TYPE {name} ", text)
        self.assertNotIn("_created", text)
