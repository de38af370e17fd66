"""The onion listener's life cycle on a fake clock: start, retries, loss, stop."""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path
from typing import Any

import attrs
from twisted.internet import defer
from twisted.internet.testing import MemoryReactorClock
from twisted.trial.unittest import SynchronousTestCase

from gatekeep.config.model import ListenerConfig
from gatekeep.config.tor import TorSettings
from gatekeep.onion.control import TorControl, TorError
from gatekeep.onion.listener import SLOW_PUBLISH, OnionListenerService
from gatekeep.sniff import ListenerRuntime, SniffingFactory
from gatekeep.values import Service
from tests.helpers import captured_log
from tests.onion.fakes import FakeControlProtocol

ADDRESS = "b" * 56


class OnionListenerTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.reactor = MemoryReactorClock()
        # Not trial's mktemp(): under pytest it writes into the working tree.
        scratch = tempfile.mkdtemp(prefix="gatekeep-onion-test-")
        self.addCleanup(shutil.rmtree, scratch, True)
        self.key_dir = Path(scratch) / "onion"
        self.protocols: list[FakeControlProtocol] = []
        self.outcomes: list[Any] = []  # what each connect attempt does, in order
        tor = TorSettings(ports=(80, 5222), key_dir=str(self.key_dir),
                          control="tcp:127.0.0.1:9051", control_password="pw")
        listener = ListenerConfig(name="hidden", service="edge", tor=tor)
        runtime = ListenerRuntime.build("hidden", Service("edge", ()), {}, 5.0, self.reactor)
        self.service = OnionListenerService(listener, SniffingFactory(runtime), self.reactor,
                                            retry_delays=(1.0, 2.0), connect=self.connect)

    async def connect(self, reactor: Any, description: str, password: str | None,
                      cookie: str | None) -> TorControl:
        self.assertEqual((description, password, cookie), ("tcp:127.0.0.1:9051", "pw", None))
        outcome = self.outcomes.pop(0)
        if isinstance(outcome, Exception):
            raise outcome
        proto = FakeControlProtocol()
        original = proto.queue_command

        def tor_writes_hostname(line: str) -> defer.Deferred[str]:
            if line.startswith("SETCONF"):  # as tor does: the address exists at once
                self.key_dir.mkdir(exist_ok=True)
                (self.key_dir / "hostname").write_text(f"{ADDRESS}.onion\n")
                if outcome == "instant":  # uploaded before gatekeep has read the address
                    proto.emit("HS_DESC", f"UPLOADED {ADDRESS} UNKNOWN $AAAA~relay0")
            return original(line)

        proto.queue_command = tor_writes_hostname  # type: ignore[method-assign]
        self.protocols.append(proto)
        return TorControl(proto, reactor, description)

    def messages(self, events: list[Any]) -> list[str]:
        from twisted.logger import formatEvent

        return [formatEvent(e) for e in events if e.get("log_namespace", "").startswith(
            "gatekeep.onion")]

    def test_binds_at_once_then_publishes_and_announces(self) -> None:
        self.outcomes = ["ok"]
        with captured_log() as events:
            self.service.startService()
            [(port, _factory, _backlog, interface)] = self.reactor.tcpServers
            self.assertEqual((port, interface), (0, "127.0.0.1"))
            proto = self.protocols[0]
            self.assertIn('HiddenServicePort="5222 127.0.0.1:0"', proto.commands[-1])
            self.assertIn('HiddenServiceExportCircuitID="haproxy"', proto.commands[-1])
            self.assertFalse(self.service.published)
            proto.emit("HS_DESC", f"UPLOADED {ADDRESS} UNKNOWN $AAAA~relay0")
            self.assertTrue(self.service.published)
        self.assertEqual(self.messages(events), [
            f"listener hidden: onion address {ADDRESS}.onion (ports 80,5222 -> 127.0.0.1:0), "
            "tor 0.4.9-fake; publishing",
            f"listener hidden listening on {ADDRESS}.onion:80,5222 (service edge)",
        ])
        self.successResultOf(self.service.stopService())
        self.assertEqual(proto.commands[-1], "RESETCONF HiddenServiceDir")  # unpublished
        self.assertIsNone(proto.transport)  # and disconnected
        self.assertEqual(self.reactor.getDelayedCalls(), [])

    def test_an_upload_before_the_address_was_read_is_not_missed(self) -> None:
        self.outcomes = ["instant"]
        self.service.startService()
        self.assertTrue(self.service.published)
        self.successResultOf(self.service.stopService())

    def test_failures_are_logged_and_retried_with_growing_delays(self) -> None:
        self.outcomes = [TorError("cannot connect to tor's control port: refused"),
                         TorError("still refused"), TorError("refused again"), "ok"]
        with captured_log() as events:
            self.service.startService()
            self.assertEqual(self.protocols, [])
            self.reactor.advance(1.0)
            self.assertEqual(self.protocols, [])
            self.reactor.advance(2.0)
            self.assertEqual(self.protocols, [])
            self.reactor.advance(1.9)
            self.assertEqual(self.protocols, [])  # the last delay repeats: 2 s
            self.reactor.advance(0.1)
            self.assertEqual(len(self.protocols), 1)
        errors = [e for e in self.messages(events) if "onion service down" in e]
        self.assertEqual(errors, [
            "listener hidden: onion service down: cannot connect to tor's control port: "
            "refused; trying again in 1s",
            "listener hidden: onion service down: still refused; trying again in 2s",
            "listener hidden: onion service down: refused again; trying again in 2s",
        ])
        self.successResultOf(self.service.stopService())

    def test_a_lost_tor_is_reported_and_the_service_published_again(self) -> None:
        self.outcomes = ["ok", "ok"]
        with captured_log() as events:
            self.service.startService()
            self.protocols[0].lose()
            self.assertFalse(self.service.published)
            self.reactor.advance(1.0)
        self.assertEqual(len(self.protocols), 2)
        self.assertIn("listener hidden: onion service down: the connection to tor closed; "
                      "trying again in 1s", self.messages(events))
        self.assertIn("HiddenServiceExportCircuitID", self.protocols[1].hidden_services)
        self.successResultOf(self.service.stopService())

    def test_slow_publication_says_what_tor_is_doing(self) -> None:
        self.outcomes = ["ok"]
        with captured_log() as events:
            self.service.startService()
            self.protocols[0].bootstrap = 'NOTICE BOOTSTRAP PROGRESS=5 SUMMARY="Connecting"'
            self.reactor.advance(SLOW_PUBLISH)
        self.assertIn('listener hidden: onion service not published after 60s; tor: NOTICE '
                      'BOOTSTRAP PROGRESS=5 SUMMARY="Connecting"', self.messages(events))
        self.successResultOf(self.service.stopService())

    def test_stop_while_waiting_to_retry(self) -> None:
        self.outcomes = [TorError("refused")]
        self.service.startService()
        self.successResultOf(self.service.stopService())
        self.assertEqual(self.reactor.getDelayedCalls(), [])
        self.assertEqual(self.protocols, [])

    def test_reload_with_new_tor_settings_publishes_again(self) -> None:
        self.outcomes = ["ok", "ok"]
        self.service.startService()
        first = self.protocols[0]
        runtime = self.service.sniffing.runtime
        same = self.service.listener
        self.service.update(same, runtime)  # routes only: the same tor session
        self.assertEqual(len(self.protocols), 1)
        assert same.tor is not None
        changed = attrs.evolve(same, tor=attrs.evolve(same.tor, ports=(443,)))
        self.service.update(changed, runtime)
        self.assertIsNone(first.transport)
        self.assertEqual(len(self.protocols), 2)
        self.assertIn('HiddenServicePort="443 127.0.0.1:0"', self.protocols[1].commands[-1])
        self.assertNotIn("HiddenServicePort=\"80 ", self.protocols[1].commands[-1])
        self.reactor.advance(60)  # the old session is gone for good: no second republisher
        self.assertEqual(len(self.protocols), 2)
        self.assertIsNotNone(self.protocols[1].transport)
        self.successResultOf(self.service.stopService())
