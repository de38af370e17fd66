"""Shapers on a fake clock: the bucket, the gates, the relay's pauses, the config."""

from __future__ import annotations

import textwrap
from typing import Any

import pytest
from twisted.internet.address import IPv4Address
from twisted.internet.protocol import connectionDone
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.trial.unittest import SynchronousTestCase
from zope.interface.verify import verifyObject

from gatekeep.config.errors import ConfigErrors
from gatekeep.config.loader import load_config
from gatekeep.interfaces import IShaper
from gatekeep.registry import load_registry
from gatekeep.relay import Relay
from gatekeep.shapers.bucket import Bucket, TokenBucket
from gatekeep.shapers.shaping import Gate, ShaperSpec, Shaping
from gatekeep.sniff import ListenerRuntime, SniffingProtocol
from gatekeep.values import ConnectionRecord, Route, Service
from tests.helpers import RecordingTarget

KiB = 1024
MiB = 1024 * KiB


def test_bucket_lets_the_burst_through_then_paces() -> None:
    shaper = TokenBucket(rate=1000.0, burst=500)
    verifyObject(IShaper, shaper)
    assert shaper.admit(500, 10.0) == 0.0
    assert shaper.admit(250, 10.0) == pytest.approx(0.25)  # 250 bytes of debt
    assert shaper.admit(0, 10.25) == 0.0  # paid
    assert shaper.admit(1000, 20.0) == pytest.approx(0.5)  # refilled to 500, not more
    bucket = Bucket(2.0, 3.0, 0.0)
    assert [bucket.take(0.0) for _ in range(4)] == [True, True, True, False]
    assert not bucket.full(1.0)
    assert bucket.full(1.5)


def test_default_burst_is_one_second() -> None:
    shaper = TokenBucket(rate=100.0)
    assert shaper.admit(100, 0.0) == 0.0
    assert shaper.admit(50, 0.0) == pytest.approx(0.5)
    assert shaper.describe() == "100B/s, burst 1s"
    assert TokenBucket(rate=MiB, burst=4 * MiB).describe() == "1MiB/s, burst 4MiB"


class GateTests(SynchronousTestCase):
    def test_held_and_flow_paused_both_keep_it_paused(self) -> None:
        clock = Clock()
        transport = StringTransport()
        gate = Gate(transport)
        gate.hold(1.0, clock)
        self.assertEqual(transport.producerState, "paused")
        gate.pauseProducing()  # the consumer's buffer is full, too
        clock.advance(1.0)  # the shaper lets go ...
        self.assertEqual(transport.producerState, "paused")  # ... flow control does not
        gate.resumeProducing()
        self.assertEqual(transport.producerState, "producing")
        gate.hold(1.0, clock)
        gate.resumeProducing()  # the consumer drained, but the shaper still holds
        self.assertEqual(transport.producerState, "paused")
        clock.advance(1.0)
        self.assertEqual(transport.producerState, "producing")

    def test_a_later_answer_moves_the_release(self) -> None:
        clock = Clock()
        transport = StringTransport()
        gate = Gate(transport)
        gate.hold(1.0, clock)
        clock.advance(0.5)
        gate.hold(2.0, clock)
        clock.advance(1.9)
        self.assertEqual(transport.producerState, "paused")
        clock.advance(0.1)
        self.assertEqual(transport.producerState, "producing")
        self.assertEqual(clock.getDelayedCalls(), [])

    def test_eof_is_never_read_twice(self) -> None:
        clock = Clock()
        transport = StringTransport()
        gate = Gate(transport)
        gate.hold(1.0, clock)
        gate.done = True
        gate.cancel()
        gate.resumeProducing()
        self.assertEqual(transport.producerState, "paused")
        self.assertEqual(clock.getDelayedCalls(), [])


def shaped_relay(clock: Clock, rate: float, burst: int, scope: Any = "connection",
                 spec: ShaperSpec | None = None) -> tuple[Relay, StringTransport,
                                                          StringTransport, Shaping]:
    spec = spec or ShaperSpec("s", scope, lambda: TokenBucket(rate=rate, burst=burst))
    shaping = spec.open("l", "198.51.100.1", clock)
    client, backend = StringTransport(), StringTransport()
    client.pauseProducing()  # as the forward target does until the backend answers
    relay = Relay(client, ConnectionRecord("l", "c", 0.0), shaping)
    relay.joined(backend, [])
    return relay, client, backend, shaping


class RelayShapingTests(SynchronousTestCase):
    def test_each_direction_pauses_its_own_reader(self) -> None:
        clock = Clock()
        relay, client, backend, _ = shaped_relay(clock, 1000.0, 1000)
        self.assertEqual(client.producerState, "producing")
        relay.from_client(b"x" * 1500)  # 500 bytes over the burst: 0.5 s
        self.assertEqual(backend.value(), b"x" * 1500)  # passed on, not held back
        self.assertEqual(client.producerState, "paused")
        self.assertEqual(backend.producerState, "producing")
        relay.from_backend(b"y" * 800)
        self.assertEqual(backend.producerState, "producing")
        clock.advance(0.5)
        self.assertEqual(client.producerState, "producing")

    def test_unshaped_relays_are_plain(self) -> None:
        client, backend = StringTransport(), StringTransport()
        relay = Relay(client, ConnectionRecord("l", "c", 0.0))
        relay.joined(backend, [])
        self.assertIsNone(relay.shaping)
        self.assertIs(client.producer, backend)
        self.assertIs(backend.producer, client)

    def test_client_eof_while_held(self) -> None:
        clock = Clock()
        relay, client, _, shaping = shaped_relay(clock, 1000.0, 1000)
        relay.from_client(b"x" * 2000)
        relay.client_read_done()
        clock.advance(5)
        self.assertEqual(client.producerState, "paused")
        shaping.stop()
        self.assertEqual(clock.getDelayedCalls(), [])

    def test_rate_over_a_long_transfer(self) -> None:
        """20 MiB at 2 MiB/s with a 64 KiB burst: read as fast as allowed, 64 KiB a read."""
        clock = Clock()
        rate, burst, size, step = 2 * MiB, 64 * KiB, 20 * MiB, 0.001
        relay, client, backend, _ = shaped_relay(clock, rate, burst)
        sent = 0
        while sent < size:
            if client.producerState == "producing":
                chunk = min(64 * KiB, size - sent)
                relay.from_client(b"\0" * chunk)
                sent += chunk
                backend.clear()
            else:
                clock.advance(step)
        # The last read is passed on at once: its debt is not waited for.
        expected = (size - burst - 64 * KiB) / rate
        self.assertLess(abs(clock.seconds() - expected), expected * 0.01, clock.seconds())

    def test_ip_scope_shares_one_budget(self) -> None:
        clock = Clock()
        spec = ShaperSpec("s", "ip", lambda: TokenBucket(rate=1000.0, burst=1000))
        one, c1, _, s1 = shaped_relay(clock, 0, 0, spec=spec)
        two, c2, _, s2 = shaped_relay(clock, 0, 0, spec=spec)
        one.from_client(b"x" * 1000)  # the shared burst is used up
        self.assertEqual(c1.producerState, "producing")
        two.from_client(b"x" * 100)
        self.assertEqual(c2.producerState, "paused")
        other = spec.open("l", "198.51.100.2", clock)  # another client: its own budget
        self.assertIsNot(other.shapers["in"], s1.shapers["in"])
        self.assertIs(s1.shapers["in"], s2.shapers["in"])
        for shaping in (s1, s2, other):
            shaping.stop()
        self.assertEqual(spec._shared, {})


def test_listener_scope_is_one_budget() -> None:
    spec = ShaperSpec("s", "listener", lambda: TokenBucket(rate=1.0))
    clock = Clock()
    a, b = spec.open("l", "1.1.1.1", clock), spec.open("l", "2.2.2.2", clock)
    assert a.shapers["out"] is b.shapers["out"]
    assert a.shapers["in"] is not a.shapers["out"]
    c = ShaperSpec("s", "connection", lambda: TokenBucket(rate=1.0)).open("l", None, clock)
    assert c.shapers["in"] is not a.shapers["in"]


BASE = """
[[listener]]
name = "l"
endpoint = "tcp:8443"
service = "s"
shaper = "slow"

[service.s]
[[service.s.route]]
name = "web"
forward = { to = "tcp:127.0.0.1:8080" }
"""


def load(text: str) -> Any:
    return load_config(textwrap.dedent(BASE) + textwrap.dedent(text), load_registry())


def test_config_builds_fresh_shapers() -> None:
    config = load("""
        [shaper.slow]
        rate = "1MiB/s"
        burst = "4MiB"
        scope = "ip"
    """)
    spec = config.shapers["slow"]
    assert spec.scope == "ip"
    first, second = spec.make(), spec.make()
    assert first is not second
    assert (first.rate, first.burst) == (MiB, 4 * MiB)
    assert spec.describe() == "slow: 1MiB/s, burst 4MiB per ip, each direction"


@pytest.mark.parametrize(("table", "message"), [
    ('rate = "fast"', "shaper.slow.rate: 'fast' is not a rate"),
    ('rate = "20/s"', "shaper.slow.rate: '20/s' counts events"),
    ('rate = "1MiB/s"\nscope = "planet"', "shaper.slow.scope: expected"),
    ('rate = "1MiB/s"\nkind = "leaky"', "shaper.slow.kind: unknown kind 'leaky'"),
    ("burst = 5", "shaper.slow.rate: missing required key"),
])
def test_config_errors(table: str, message: str) -> None:
    with pytest.raises(ConfigErrors) as caught:
        load("[shaper.slow]\n" + table + "\n")
    assert str(caught.value.errors[0]).startswith(message), caught.value.errors


def test_dangling_shaper_name() -> None:
    with pytest.raises(ConfigErrors) as caught:
        load_config(BASE, load_registry())
    assert str(caught.value.errors[0]).startswith("listener[0].shaper: no shaper named 'slow'")


class ChainTests(SynchronousTestCase):
    def test_routed_connections_get_their_shaping_and_release_it(self) -> None:
        clock = Clock()
        spec = ShaperSpec("s", "ip", lambda: TokenBucket(rate=1000.0))
        target = RecordingTarget()
        runtime = ListenerRuntime.build("l", Service("svc", (Route("web", None, (), target),)),
                                        {}, 2.0, clock, shaper=spec)
        protocol = SniffingProtocol(runtime)
        protocol.makeConnection(StringTransport(peerAddress=IPv4Address("TCP", "10.1.2.3", 5)))
        [attached] = target.attached
        shaping = attached.inbound.shaping
        self.assertIsInstance(shaping, Shaping)
        self.assertEqual(list(spec._shared), [("l", "10.1.2.3")])
        protocol.connectionLost(connectionDone)
        self.assertEqual(spec._shared, {})


class BrokenShaperTests(SynchronousTestCase):
    def test_a_raising_shaper_leaves_the_connection_unshaped(self) -> None:
        from zope.interface import implementer

        @implementer(IShaper)
        class Raising:
            def admit(self, nbytes: int, now: float) -> float:
                raise RuntimeError("bug")

        clock = Clock()
        spec = ShaperSpec("s", "connection", Raising)
        relay, client, backend, _ = shaped_relay(clock, 0, 0, spec=spec)
        relay.from_client(b"x")
        relay.from_client(b"y")
        self.assertEqual(backend.value(), b"xy")
        self.assertEqual(client.producerState, "producing")
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 1)

    def test_huge_delays_are_capped(self) -> None:
        from gatekeep.shapers.shaping import MAX_PAUSE

        clock = Clock()
        relay, client, _, _ = shaped_relay(clock, 1.0, 1)
        relay.from_client(b"x" * 10**9)
        clock.advance(MAX_PAUSE)
        self.assertEqual(client.producerState, "producing")
