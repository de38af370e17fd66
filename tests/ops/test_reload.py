"""Reload: all or nothing, sockets kept by endpoint, runtimes swapped for new connections."""

from __future__ import annotations

import os
import signal
import socket
from typing import Any

from twisted.internet import defer, reactor
from twisted.internet.testing import MemoryReactorClock
from twisted.trial.unittest import SynchronousTestCase, TestCase

from gatekeep import metrics
from gatekeep.config.errors import ConfigError, ConfigErrors
from gatekeep.config.loader import load_config
from gatekeep.config.model import Config
from gatekeep.registry import load_registry
from gatekeep.service import GatekeepService, ListenerService, ReloadError

REGISTRY = load_registry()


def config(*listeners: tuple[str, str], route: str = "web", admin: str | None = None,
           extra: str = "") -> Config:
    text = f'drain_timeout = "1s"\n{extra}\n'
    if admin is not None:
        text += f'[admin]\nendpoint = "{admin}"\n'
    for name, endpoint in listeners:
        text += f'[[listener]]\nname = "{name}"\nendpoint = "{endpoint}"\nservice = "edge"\n'
    text += ('[service.edge]\n[[service.edge.route]]\n'
             f'name = "{route}"\nrespond = {{ data = "{route}" }}\n')
    return load_config(text, REGISTRY, source="test")


def by_name(service: GatekeepService) -> dict[str, ListenerService]:
    return {s.listener.name: s for s in service.listeners()}


class ApplyTests(SynchronousTestCase):
    """The switch itself, on a memory reactor."""

    def setUp(self) -> None:
        self.reactor = MemoryReactorClock()
        self.service = GatekeepService(config(("a", "tcp:8001"), ("b", "tcp:8002")),
                                       REGISTRY, self.reactor)
        self.service.startService()

    def test_unchanged_endpoint_keeps_its_port_and_gets_the_new_runtime(self) -> None:
        before = by_name(self.service)["a"]
        port, old_runtime = before.port, before.sniffing.runtime
        existing = before.sniffing.buildProtocol(None)  # a connection accepted before
        assert existing is not None
        self.service.apply(config(("a", "tcp:8001"), ("b", "tcp:8002"), route="web2"))
        after = by_name(self.service)["a"]
        self.assertIs(after, before)
        self.assertIs(after.port, port)
        self.assertEqual(len(self.reactor.tcpServers), 2)  # nothing re-bound
        self.assertEqual(after.sniffing.runtime.service.routes[0].name, "web2")
        self.assertIs(existing.runtime, old_runtime)
        later = after.sniffing.buildProtocol(None)
        assert later is not None
        self.assertEqual(later.runtime.service.routes[0].name, "web2")
        self.assertIs(after.sniffing.runtime.tracker, self.service.tracker)

    def test_listeners_added_removed_changed_and_renamed(self) -> None:
        old = by_name(self.service)
        self.service.apply(config(("a2", "tcp:8001"), ("b", "tcp:8003"), ("c", "tcp:8004")))
        now = by_name(self.service)
        self.assertEqual(sorted(now), ["a2", "b", "c"])
        self.assertIs(now["a2"], old["a"])  # renamed, same socket
        self.assertIsNot(now["b"], old["b"])  # endpoint changed: a new socket
        self.assertIsNone(old["b"].port)  # ... and the old one closed
        self.assertFalse(old["b"].running)
        self.assertEqual([p for p, *_ in self.reactor.tcpServers], [8001, 8002, 8003, 8004])
        self.assertEqual(self.service.reloads, 1)

    def test_admin_listener_comes_and_goes(self) -> None:
        self.service.apply(config(("a", "tcp:8001"), admin="tcp:9100"))
        self.assertEqual(self.service.admin.endpoint if self.service.admin else None, "tcp:9100")
        self.assertEqual(self.reactor.tcpServers[-1][0], 9100)
        self.service.apply(config(("a", "tcp:8001")))
        self.assertIsNone(self.service.admin)


class ReloadTests(TestCase):
    """Loading off the reactor thread, bind failures, SIGHUP, on the real reactor."""

    def start(self, first: Config, loader: Any) -> GatekeepService:
        service = GatekeepService(first, REGISTRY, reactor, loader=loader)
        service.startService()
        self.addCleanup(service.stopService)
        return service

    @defer.inlineCallbacks
    def test_a_bad_config_is_logged_and_the_old_one_kept(self) -> Any:
        first = config(("a", "tcp:0:interface=127.0.0.1"))

        def bad() -> Config:
            raise ConfigErrors([ConfigError("listener[0].endpoint", "bad endpoint")], "gk.toml")

        service = self.start(first, bad)
        rejected = metrics.value("gatekeep_reloads_total", outcome="rejected")
        applied = yield service.reload()
        self.assertFalse(applied)
        self.assertIs(service.config, first)
        self.assertTrue(service.last_reload.startswith("rejected"))
        self.assertEqual(metrics.value("gatekeep_reloads_total", outcome="rejected"),
                         rejected + 1)
        self.assertIn("bad endpoint", service.recent.lines[-1].text)

    @defer.inlineCallbacks
    def test_a_port_that_cannot_be_bound_changes_nothing(self) -> Any:
        taken = socket.socket()
        self.addCleanup(taken.close)
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        busy = taken.getsockname()[1]
        first = config(("a", "tcp:0:interface=127.0.0.1"))
        second = config(("a", "tcp:0:interface=127.0.0.1"), ("new", "tcp:0:interface=127.0.0.2"),
                        ("clash", f"tcp:{busy}:interface=127.0.0.1"))
        service = self.start(first, lambda: second)
        applied = yield service.reload()
        self.assertFalse(applied)
        self.assertEqual(sorted(by_name(service)), ["a"])
        self.assertIs(service.config, first)
        self.assertIn("cannot listen on", service.recent.lines[-1].text)
        with self.assertRaises(ReloadError):
            service.apply(second)

    @defer.inlineCallbacks
    def test_sighup_reloads_and_requests_meanwhile_fold_into_one(self) -> Any:
        first = config(("a", "tcp:0:interface=127.0.0.1"))
        loads: list[int] = []

        def loader() -> Config:
            loads.append(1)
            return config(("a", "tcp:0:interface=127.0.0.1"), route=f"r{len(loads)}")

        service = GatekeepService(first, REGISTRY, reactor, loader=loader, handle_signals=True)
        service.startService()
        self.addCleanup(service.stopService)
        first_reload = service.reload()
        service.reload()
        service.reload()
        yield first_reload
        while service._reloading is not None:
            yield service._reloading
        self.assertEqual(len(loads), 2)
        done: defer.Deferred[None] = defer.Deferred()
        original = service.apply

        def apply(new: Config) -> None:
            original(new)
            reactor.callLater(0, done.callback, None)

        service.apply = apply  # type: ignore[method-assign,assignment]
        os.kill(os.getpid(), signal.SIGHUP)
        yield done
        self.assertEqual(len(loads), 3)
        self.assertEqual(service.config.services["edge"].routes[0].name, "r3")
        yield service.stopService()
        self.assertIsNot(signal.getsignal(signal.SIGHUP), service._on_sighup)
