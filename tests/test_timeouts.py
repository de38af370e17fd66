"""idle_timeout and max_lifetime on one timer wheel, on a fake clock."""

from __future__ import annotations

from collections.abc import Callable

from twisted.internet.address import IPv4Address
from twisted.internet.protocol import connectionDone
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.trial.unittest import SynchronousTestCase

from gatekeep import metrics
from gatekeep.sniff import ListenerRuntime, SniffingProtocol
from gatekeep.timeouts import Timeouts, TimerWheel
from gatekeep.values import ConnectionRecord, Route, Service
from tests.helpers import MagicDetector, RecordingTarget, captured_log


class Item:
    def __init__(self) -> None:
        self.fired: list[float] = []

    def expired(self, now: float) -> None:
        self.fired.append(now)


class WheelTests(SynchronousTestCase):
    def test_one_delayed_call_for_many_deadlines(self) -> None:
        clock = Clock()
        wheel = TimerWheel(clock, resolution=0.25)
        items = [Item() for _ in range(1000)]
        for number, item in enumerate(items):
            wheel.add(10 + number % 7, item)
        self.assertEqual(len(clock.getDelayedCalls()), 1)
        self.assertEqual(len(wheel), 1000)
        clock.advance(9.99)
        self.assertEqual(sum(len(i.fired) for i in items), 0)
        clock.advance(0.01)
        self.assertEqual(sum(len(i.fired) for i in items), len(items[::7]))
        clock.advance(7)
        self.assertTrue(all(i.fired for i in items))
        self.assertEqual(clock.getDelayedCalls(), [])

    def test_deadlines_round_up_and_removal(self) -> None:
        clock = Clock()
        wheel = TimerWheel(clock, resolution=1.0)
        late, gone, early = Item(), Item(), Item()
        wheel.add(5.2, late)
        tick = wheel.add(3.0, gone)
        wheel.add(2.5, early)  # an earlier deadline re-arms the one call
        wheel.remove(tick, gone)
        clock.advance(3.0)
        self.assertEqual(early.fired, [3.0])
        clock.advance(2.9)
        self.assertEqual(late.fired, [])
        clock.advance(0.1)
        self.assertEqual(late.fired, [6.0])
        self.assertEqual(gone.fired, [])
        self.assertEqual(len(wheel), 0)


class ConnectionTimeoutTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.clock = Clock()
        self.wheel = TimerWheel(self.clock)
        self.target = RecordingTarget()

    def connect(self, idle: float | None = None, lifetime: float | None = None,
                route: Route | None = None) -> tuple[SniffingProtocol, StringTransport]:
        route = route or Route("web", None, (), self.target)
        runtime = ListenerRuntime.build(
            "t", Service("svc", (route,)), {}, 2.0, self.clock,
            timeouts=Timeouts(self.wheel, idle, lifetime))
        protocol = SniffingProtocol(runtime)
        transport = StringTransport(peerAddress=IPv4Address("TCP", "192.0.2.7", 1))
        protocol.makeConnection(transport)
        return protocol, transport

    def lost(self, protocol: SniffingProtocol) -> list[str]:
        with captured_log("gatekeep.connection") as events:
            protocol.connectionLost(connectionDone)
        return [event["close_reason"] for event in events]

    def test_idle_timeout_closes_a_quiet_connection(self) -> None:
        protocol, transport = self.connect(idle=60)
        self.clock.advance(59.9)
        self.assertFalse(transport.disconnecting)
        self.clock.advance(0.1)
        self.assertTrue(transport.disconnecting)
        self.assertEqual(self.lost(protocol), ["idle_timeout (1m) passed"])

    def test_traffic_keeps_it_open(self) -> None:
        protocol, transport = self.connect(idle=60)
        for _ in range(20):  # a byte every 50 s, for 1000 s
            self.clock.advance(50)
            protocol.dataReceived(b"x")
        self.assertFalse(transport.disconnecting)
        # Quiet from now: closed between 60 s and 75 s later.
        self.clock.pump([1.0] * 59)
        self.assertFalse(transport.disconnecting)
        self.clock.pump([1.0] * 16)
        self.assertTrue(transport.disconnecting)
        assert protocol.record is not None
        self.assertTrue(protocol.record.close_reason.startswith(  # type: ignore[union-attr]
            "idle_timeout"))

    def test_bytes_to_the_client_count_too(self) -> None:
        protocol, transport = self.connect(idle=10)
        assert protocol.record is not None
        for _ in range(10):
            self.clock.advance(2.5)
            protocol.record.bytes_out += 100  # as the relay counts them
        self.assertFalse(transport.disconnecting)

    def test_max_lifetime_ends_a_busy_connection(self) -> None:
        protocol, transport = self.connect(idle=60, lifetime=3600)
        for _ in range(3599):
            self.clock.advance(1)
            protocol.dataReceived(b"x")
        self.assertFalse(transport.disconnecting)
        self.clock.advance(1)
        self.assertTrue(transport.disconnecting)
        before = metrics.value("gatekeep_connections_total", listener="t", route="web",
                               protocol="unknown", outcome="timeout")
        self.assertEqual(self.lost(protocol), ["max_lifetime (1h) reached"])
        self.assertEqual(metrics.value("gatekeep_connections_total", listener="t", route="web",
                                       protocol="unknown", outcome="timeout"), before + 1)

    def test_closed_connections_leave_the_wheel(self) -> None:
        protocols = [self.connect(idle=300, lifetime=86400)[0] for _ in range(100)]
        self.assertEqual(len(self.wheel), 100)
        for protocol in protocols:
            protocol.connectionLost(connectionDone)
        self.assertEqual(len(self.wheel), 0)

    def test_a_route_sets_its_own(self) -> None:
        detector = MagicDetector("abc", b"ABC")
        route = Route("slow", "abc", (), self.target, idle_timeout=5.0)
        runtime = ListenerRuntime.build(
            "t", Service("svc", (route,)), {"abc": detector}, 2.0, self.clock,
            timeouts=Timeouts(self.wheel, 600.0, None))
        protocol = SniffingProtocol(runtime)
        transport = StringTransport()
        protocol.makeConnection(transport)
        protocol.dataReceived(b"ABCD")
        self.clock.advance(6.25)
        self.assertTrue(transport.disconnecting)

    def test_a_route_timeout_without_listener_timeouts(self) -> None:
        detector = MagicDetector("abc", b"ABC")
        route = Route("short", "abc", (), self.target, max_lifetime=30.0)
        runtime = ListenerRuntime.build("t", Service("svc", (route,)), {"abc": detector},
                                        2.0, self.clock)
        protocol = SniffingProtocol(runtime)
        transport = StringTransport()
        protocol.makeConnection(transport)
        self.clock.advance(1)
        protocol.dataReceived(b"ABCD")
        self.clock.advance(28.9)
        self.assertFalse(transport.disconnecting)
        self.clock.advance(0.1)  # 30 s from accept, not from routing
        self.assertTrue(transport.disconnecting)

    def test_detect_timeout_is_named_when_nothing_matches(self) -> None:
        runtime = ListenerRuntime.build(
            "t", Service("svc", (Route("abc", "abc", (), self.target),)),
            {"abc": MagicDetector("abc", b"ABC")}, 2.0, self.clock)
        protocol = SniffingProtocol(runtime)
        transport = StringTransport()
        protocol.makeConnection(transport)
        self.clock.advance(2.0)
        self.assertTrue(transport.disconnecting)
        self.assertEqual(self.lost(protocol), ["no route (detect_timeout passed)"])


def test_record_deadline_ignores_unknown_transports() -> None:
    clock = Clock()
    record = ConnectionRecord("l", "c", 0.0)

    class Plain:
        closed = False

        def loseConnection(self) -> None:
            self.closed = True

    plain = Plain()
    Timeouts(TimerWheel(clock), 1.0, None).start(record, plain)
    clock.advance(1.0)
    assert plain.closed



class DeadlineQueueTests(SynchronousTestCase):
    def test_exact_deadlines_on_one_delayed_call(self) -> None:
        from gatekeep.timeouts import DeadlineQueue

        clock = Clock()
        queue = DeadlineQueue(clock, 5.0)
        fired: list[tuple[int, float]] = []
        entries = []

        def firing(number: int) -> Callable[[], None]:
            return lambda: fired.append((number, clock.seconds()))

        for number in range(8):  # one every 0.25 s (exact in binary: no float drift)
            entries.append(queue.callLater(firing(number)))
            clock.advance(0.25)
        self.assertEqual(len(clock.getDelayedCalls()), 1)
        entries[1].cancel()
        entries[2].cancel()
        self.assertFalse(entries[1].active())
        clock.advance(2.75)  # t = 4.75: nothing due yet
        self.assertEqual(fired, [])
        clock.advance(0.25)  # t = 5.0: the first one, exactly
        self.assertEqual(fired, [(0, 5.0)])
        clock.pump([0.25] * 7)
        self.assertEqual([n for n, _ in fired], [0, *range(3, 8)])
        self.assertEqual([when for _, when in fired], [5.0 + n * 0.25 for n, _ in fired])
        self.assertEqual(clock.getDelayedCalls(), [])
        self.assertEqual(len(queue), 0)

    def test_no_timer_left_when_every_deadline_is_cancelled(self) -> None:
        from gatekeep.timeouts import deadlines_for

        clock = Clock()
        queue = deadlines_for(clock, 2.0)
        self.assertIs(deadlines_for(clock, 2.0), queue)
        self.assertIsNot(deadlines_for(clock, 3.0), queue)
        first, second = queue.callLater(lambda: None), queue.callLater(lambda: None)
        first.cancel()
        self.assertEqual(len(clock.getDelayedCalls()), 1)
        second.cancel()
        second.cancel()  # twice is harmless
        self.assertEqual(clock.getDelayedCalls(), [])
        fired: list[float] = []
        clock.advance(1)
        queue.callLater(lambda: fired.append(clock.seconds()))
        clock.advance(2)
        self.assertEqual(fired, [3.0])

    def test_a_raising_callback_does_not_stop_the_rest(self) -> None:
        from gatekeep.timeouts import DeadlineQueue

        clock = Clock()
        queue = DeadlineQueue(clock, 1.0)
        fired: list[int] = []

        def boom() -> None:
            raise RuntimeError("bug")

        queue.callLater(boom)
        queue.callLater(lambda: fired.append(1))
        clock.advance(1)
        self.assertEqual(fired, [1])
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 1)
