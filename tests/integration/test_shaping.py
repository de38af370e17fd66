"""
A shaped transfer over real sockets: 20 MiB each way through a 2 MiB/s shaper takes
the time the rate says (within 5 %), every byte arrives, and gatekeep's buffers stay
small while it waits.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from twisted.internet import defer, reactor, task
from twisted.trial.unittest import TestCase

from tests.helpers import LinePeer, captured_log, start_gatekeep
from tests.test_relay import _buffered, _live_relays

PEER = str(Path(__file__).parent.parent / "relay_peer.py")
KiB = 1024
MiB = 1024 * KiB

CONFIG = """
[[listener]]
name = "shaped"
endpoint = "tcp:0:interface=127.0.0.1"
service = "svc"
detect_timeout = "200ms"
shaper = "two"

[service.svc]
default = "rest"

[[service.svc.route]]
name = "rest"
forward = {{ to = "tcp:127.0.0.1:{port}" }}

[shaper.two]
rate = "{rate}"
burst = "{burst}"
"""


@pytest.mark.slow
class ShapedTransferTests(TestCase):
    timeout = 120

    @defer.inlineCallbacks
    def test_20MiB_at_2MiB_per_second(self) -> Any:
        size, rate, burst = 20 * MiB, 2 * MiB, 256 * KiB
        backend = LinePeer(reactor, [PEER, "backend", "5", str(size)])
        port = int((yield backend.next_line()))
        ports = start_gatekeep(self, CONFIG.format(port=port, rate="2MiB/s", burst="256KiB"))
        peak = 0

        def sample() -> None:
            nonlocal peak
            for relay in _live_relays():
                peak = max(peak, _buffered(relay.client), _buffered(relay.backend))

        sampler = task.LoopingCall(sample)
        sampler.start(0.05)
        with captured_log("gatekeep.connection") as events:
            client = LinePeer(reactor, [PEER, "client", str(ports["shaped"]), "6", str(size)])
            client_report = json.loads((yield client.next_line()))
            backend_report = json.loads((yield backend.next_line()))
            yield client.ended
            yield backend.ended
            while not events:
                yield task.deferLater(reactor, 0.01, lambda: None)
        sampler.stop()
        self.assertEqual(client_report["received_sha256"], backend_report["sent_sha256"])
        self.assertEqual(backend_report["received_sha256"], client_report["sent_sha256"])
        [event] = events
        # Both directions are shaped on their own, at the same time; the service has
        # only a catch-all route, so the relay starts at once.
        expected = (size - burst) / rate
        took = event["duration"]
        print(f"shaped 20 MiB each way at 2 MiB/s: {took:.3f}s, expected {expected:.3f}s "
              f"({(took / expected - 1) * 100:+.2f}%), peak buffer {peak} bytes")
        self.assertLess(abs(took - expected), expected * 0.05, took)
        self.assertLessEqual(peak, 512 * KiB)
