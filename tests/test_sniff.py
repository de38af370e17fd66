"""The detection chain, on in-memory transports and a fake clock."""

from __future__ import annotations

from twisted.internet.address import IPv4Address
from twisted.internet.protocol import connectionDone
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.trial.unittest import SynchronousTestCase

from gatekeep.interfaces import IDetector
from gatekeep.sniff import SNIFF_CAP, ListenerRuntime, SniffingProtocol, run_detectors
from gatekeep.targets.respond import RejectTarget
from gatekeep.values import Condition, Match, NeedMore, NoMatch, Route, Service, Verdict
from tests.helpers import MagicDetector, RecordingTarget, captured_log


class Raising:
    name = "boom"
    max_prefix = 10

    def detect(self, prefix: bytes) -> Match:
        raise RuntimeError("bug in a plugin")


class ChainTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.clock = Clock()
        self.abc = MagicDetector("abc", b"ABC")
        self.xyz = MagicDetector("xyz", b"XYZ")
        self.first = RecordingTarget("first")
        self.second = RecordingTarget("second")
        self.fallback = RecordingTarget("fallback")

    def connect(
        self, routes: tuple[Route, ...], default: str | None = "fallback",
        detectors: dict[str, IDetector] | None = None,
    ) -> tuple[SniffingProtocol, StringTransport]:
        service = Service("svc", (*routes, Route("fallback", "xyz", (), self.fallback)), default)
        runtime = ListenerRuntime.build(
            "test", service, detectors or {"abc": self.abc, "xyz": self.xyz}, 2.0, self.clock)
        protocol = SniffingProtocol(runtime)
        transport = StringTransport(peerAddress=IPv4Address("TCP", "192.0.2.7", 4711))
        protocol.makeConnection(transport)
        return protocol, transport

    def routes(self) -> tuple[Route, ...]:
        return (
            Route("first", "abc", (Condition("kind", ("1",)),), self.first),
            Route("second", "abc", (), self.second),
        )

    def test_every_split_gives_the_same_route(self) -> None:
        data = b"ABC2 and the rest of the stream"
        for cut in range(len(data) + 1):
            self.second.attached.clear()
            protocol, _ = self.connect(self.routes())
            for i in range(0, cut):
                protocol.dataReceived(data[i:i + 1])
            protocol.dataReceived(data[cut:])
            [attached] = self.second.attached
            self.assertEqual(attached.received, data)
            self.assertEqual(attached.inbound.facts, {"kind": "2"})
            self.assertEqual(self.first.attached, [])

    def test_facts_select_among_routes(self) -> None:
        protocol, _ = self.connect(self.routes())
        protocol.dataReceived(b"ABC1")
        [attached] = self.first.attached
        self.assertEqual(attached.inbound.route.name, "first")
        self.assertEqual(attached.inbound.detector, "abc")
        self.assertEqual(attached.inbound.client, IPv4Address("TCP", "192.0.2.7", 4711))

    def test_later_bytes_after_routing_reach_the_target_in_order(self) -> None:
        protocol, _ = self.connect(self.routes())
        for chunk in (b"AB", b"C2", b"x", b"yz"):
            protocol.dataReceived(chunk)
        self.assertEqual(self.second.attached[0].received, b"ABC2xyz")

    def test_silence_until_the_deadline_takes_the_default_route(self) -> None:
        _protocol, _ = self.connect(self.routes())
        self.clock.advance(1.9)
        self.assertEqual(self.fallback.attached, [])
        self.clock.advance(0.1)
        [attached] = self.fallback.attached
        self.assertEqual(attached.received, b"")
        self.assertEqual(attached.inbound.prefix, b"")

    def test_deadline_is_total_not_idle(self) -> None:
        # A trickle of still-undecidable bytes must not extend detection.
        slow = MagicDetector("abc", b"A" * 100)
        protocol, _ = self.connect(self.routes(), detectors={"abc": slow, "xyz": self.xyz})
        for _ in range(19):
            self.clock.advance(0.1)
            protocol.dataReceived(b"A")
        self.assertEqual(self.fallback.attached, [])
        self.clock.advance(0.1)
        [attached] = self.fallback.attached
        self.assertEqual(attached.received, b"A" * 19)

    def test_undecided_at_deadline_with_partial_bytes(self) -> None:
        protocol, _ = self.connect(self.routes())
        protocol.dataReceived(b"AB")
        self.clock.advance(2.0)
        [attached] = self.fallback.attached
        self.assertEqual(attached.received, b"AB")

    def test_no_route_and_no_default_closes(self) -> None:
        protocol, transport = self.connect(self.routes(), default=None)
        with captured_log("gatekeep.connection") as events:
            protocol.dataReceived(b"nothing known")
            self.assertTrue(transport.disconnecting)
            protocol.connectionLost(connectionDone)
        [event] = events
        self.assertEqual(event["close_reason"], "no route")
        self.assertEqual(event["client"], "192.0.2.7:4711")

    def test_cap_ends_detection(self) -> None:
        endless = MagicDetector("abc", b"A" * (SNIFF_CAP * 2))
        protocol, _transport = self.connect(
            self.routes(), detectors={"abc": endless, "xyz": self.xyz})
        protocol.dataReceived(b"A" * (SNIFF_CAP - 1))
        self.assertEqual(self.fallback.attached, [])
        protocol.dataReceived(b"A" * 10)
        [attached] = self.fallback.attached
        self.assertEqual(len(attached.received), SNIFF_CAP + 9)
        self.assertEqual(attached.inbound.prefix, b"A" * (SNIFF_CAP + 9))
        # Detectors never saw more than the cap.
        self.assertLessEqual(max(map(len, endless.calls)), SNIFF_CAP)

    def test_client_eof_before_detection_decides_now(self) -> None:
        protocol, _ = self.connect(self.routes())
        protocol.dataReceived(b"AB")
        protocol.readConnectionLost()
        [attached] = self.fallback.attached
        self.assertEqual(attached.received, b"AB")

    def test_client_gone_before_detection_is_logged(self) -> None:
        protocol, _ = self.connect(self.routes())
        with captured_log("gatekeep.connection") as events:
            protocol.dataReceived(b"AB")
            protocol.connectionLost(connectionDone)
        self.assertEqual(events[0]["close_reason"], "client closed before detection")
        self.assertEqual(events[0]["route"], "-")
        self.assertEqual(events[0]["bytes_in"], 2)
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_reject_route_writes_protocol_error(self) -> None:
        service = Service("svc", (Route("no", "abc", (), RejectTarget()),), None)
        runtime = ListenerRuntime.build("t", service, {"abc": self.abc}, 2.0, self.clock)
        protocol = SniffingProtocol(runtime)
        transport = StringTransport()
        protocol.makeConnection(transport)
        protocol.dataReceived(b"ABC1")
        self.assertTrue(transport.disconnecting)
        self.assertEqual(transport.value(), b"")  # unknown protocol: a plain close

    def test_detector_results_are_final(self) -> None:
        protocol, _ = self.connect(self.routes())
        protocol.dataReceived(b"Q")
        calls = len(self.abc.calls)
        protocol.dataReceived(b"more")
        self.assertEqual(len(self.abc.calls), calls)


class RunDetectorsTests(SynchronousTestCase):
    def test_a_raising_detector_counts_as_no_match(self) -> None:
        verdicts: dict[str, Verdict] = {}
        with captured_log() as events:
            run_detectors({"boom": Raising()}, b"x", verdicts, final=False)  # type: ignore[dict-item]
        self.assertIsInstance(verdicts["boom"], NoMatch)
        self.assertTrue(any(e.get("log_failure") for e in events))
        self.flushLoggedErrors(RuntimeError)

    def test_past_max_prefix_needmore_becomes_no_match(self) -> None:
        verdicts: dict[str, Verdict] = {}
        detector = MagicDetector("abc", b"ABC")
        run_detectors({"abc": detector}, b"AB", verdicts, final=False)
        self.assertIsInstance(verdicts["abc"], NeedMore)
        run_detectors({"abc": detector}, b"ABC", verdicts, final=True)
        self.assertIsInstance(verdicts["abc"], NoMatch)
