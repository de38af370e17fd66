"""
The Twisted service tree: one :class:`ListenerService` per ``[[listener]]``, the
optional admin listener, and what outlives a config: reload, readiness, drain.

Listening happens in ``privilegedStartService`` so that port 443 is bound before
twistd drops privileges (``--uid/--gid``).

A reload (:meth:`GatekeepService.reload`, on ``SIGHUP``) is all or nothing: the
new file is loaded off the reactor thread, every new endpoint is bound, and only
then is anything changed. A listener is identified by its endpoint string: while
that stays the same, its socket stays open and only its runtime (service, routes,
detectors, timeout) is swapped, which new connections pick up; connections
already accepted keep the runtime they started with until they end. An onion
listener is identified by its key_dir, and keeps its tor unless its tor settings
changed.
"""

from __future__ import annotations

import os
import signal
import sys
import time
from collections.abc import Callable
from typing import Any

from twisted.application.service import MultiService, Service
from twisted.internet import defer, threads
from twisted.internet.endpoints import serverFromString
from twisted.internet.interfaces import IListeningPort
from twisted.logger import ILogObserver, Logger, globalLogPublisher
from twisted.python.components import Componentized
from twisted.python.failure import Failure

from gatekeep import __version__, metrics, splice, systemd
from gatekeep.accepted import use_for
from gatekeep.acceptguard import AcceptGuard, guard_port
from gatekeep.addresses import format_address
from gatekeep.cli import describe_match
from gatekeep.config.errors import ConfigErrors
from gatekeep.config.model import Config, ListenerConfig
from gatekeep.guard import Guard, GuardState, limits_of
from gatekeep.preamble import ProxyPolicy
from gatekeep.registry import Registry
from gatekeep.sniff import ListenerRuntime, SniffingFactory, fixed_local_address
from gatekeep.status import ListenerStatus, RecentErrors, RouteStatus, ServiceStatus, Snapshot
from gatekeep.timeouts import Timeouts, wheel_for
from gatekeep.tracker import ConnectionTracker

__all__ = ["AdminService", "BindError", "GatekeepService", "ListenerService"]

log = Logger()


class BindError(Exception):
    """An endpoint could not be listened on; the message says which and why."""


class PortService(Service):
    """Listens on one endpoint string with one factory, from start until stop."""

    label = "port"

    def __init__(self, endpoint: str, factory: Any, reactor: Any) -> None:
        self.endpoint = endpoint
        self.factory = factory
        self.reactor = reactor
        self.port: IListeningPort | None = None
        self._guard: AcceptGuard | None = None

    def privilegedStartService(self) -> None:
        self._listen_or_exit()
        super().privilegedStartService()

    def startService(self) -> None:
        self._listen_or_exit()
        super().startService()

    def _listen_or_exit(self) -> None:
        if self.port is not None:
            return
        try:
            self.bind()
        except BindError as error:
            # At start-up a port we cannot bind is the user's to fix: one clear line.
            log.critical("{message}", message=str(error))
            print(f"gatekeep: {error}", file=sys.stderr)
            raise SystemExit(1) from None

    def bind(self) -> None:
        """Listen now (binding is synchronous for every stream endpoint we know)."""
        from gatekeep.workers import INHERITED

        inherited = INHERITED.pop(self.endpoint, None)
        if inherited is not None:  # a worker: the parent bound it
            fd, family = inherited
            try:
                self._listening(self.reactor.adoptStreamPort(fd, family, self.factory))
            finally:
                os.close(fd)
            return
        failures: list[Failure] = []
        try:
            endpoint = serverFromString(self.reactor, self.endpoint)
            endpoint.listen(self.factory).addCallbacks(self._listening, failures.append)
        except Exception as error:  # noqa: BLE001 - endpoint parsers raise anything
            failures.append(Failure(error))
        if failures:
            raise BindError(f"{self.label} cannot listen on {self.endpoint}: "
                            f"{failures[0].getErrorMessage()}")

    def _listening(self, port: IListeningPort) -> None:
        self.port = port
        self._guard = guard_port(port, self.reactor, self.label)
        use_for(port)
        if isinstance(self.factory, SniffingFactory):
            self.factory.local = fixed_local_address(port)
        self.announce(format_address(port.getHost()))

    def announce(self, address: str) -> None:
        log.info("{label} listening on {address}", label=self.label, address=address)

    def address(self) -> str:
        return format_address(self.port.getHost()) if self.port is not None else "-"

    def stopService(self) -> Any:
        super().stopService()
        port, self.port = self.port, None
        if self._guard is not None:
            self._guard.stop()
            self._guard = None
        if port is not None:
            return port.stopListening()
        return None


def listener_identity(listener: ListenerConfig) -> str:
    """What makes a listener the same one across a reload: its endpoint, or onion key."""
    if listener.tor is not None:
        return "onion:" + os.path.normpath(listener.tor.key_dir)
    assert listener.endpoint is not None
    return listener.endpoint


class ListenerService(PortService):
    """Listens on one ``[[listener]]`` endpoint and feeds the sniffing chain."""

    def __init__(self, listener: ListenerConfig, factory: SniffingFactory, reactor: Any) -> None:
        super().__init__(self.endpoint_of(listener), factory, reactor)
        self.listener = listener
        self.sniffing = factory
        self.label = f"listener {listener.name}"

    @staticmethod
    def endpoint_of(listener: ListenerConfig) -> str:
        assert listener.endpoint is not None
        return listener.endpoint

    @property
    def identity(self) -> str:
        return listener_identity(self.listener)

    def announce(self, address: str) -> None:
        log.info("listener {listener} listening on {address} (service {service})",
                 listener=self.listener.name, address=address, service=self.listener.service)

    def update(self, listener: ListenerConfig, runtime: ListenerRuntime) -> None:
        """Serve new connections with ``runtime``; the socket stays as it is."""
        self.listener = listener
        self.label = f"listener {listener.name}"
        self.sniffing.runtime = runtime


class AdminService(PortService):
    label = "admin"


class ReloadError(Exception):
    pass


class GatekeepService(MultiService):
    """Everything one process runs, across config reloads."""

    def __init__(
        self, config: Config, registry: Registry, reactor: Any, *,
        loader: Callable[[], Config] | None = None, handle_signals: bool = False,
        log_observer: ILogObserver | None = None,
    ) -> None:
        super().__init__()
        self.config = config
        self.registry = registry
        self.reactor = reactor
        self.loader = loader
        self.handle_signals = handle_signals
        self.log_observer = log_observer
        self.tracker = ConnectionTracker()
        #: Per listener name: the guard's counters, which outlive reloads.
        self.guard_states: dict[str, GuardState] = {}
        self.recent = RecentErrors()
        self.started_at = reactor.seconds()
        self.reloads = 0
        self.last_reload = "none"
        self.admin: AdminService | None = None
        self._reloading: defer.Deferred[bool] | None = None
        self._again = False
        self._previous_handler: Any = None
        for warning in config.warnings:
            log.warn("config: {warning}", warning=warning)
        splice.configure(config.settings.splice)
        for listener in config.listeners:
            self._listener_service(listener, config).setServiceParent(self)
        if config.admin is not None:
            self.admin = self._admin_service(config.admin.endpoint)
            self.admin.setServiceParent(self)

    # ------------------------------------------------------------ building

    def _runtime(self, listener: ListenerConfig, config: Config) -> ListenerRuntime:
        return ListenerRuntime.build(
            listener.name, config.services[listener.service], self.registry.detectors,
            listener.detect_timeout, self.reactor, self.tracker,
            self._proxy_policy(listener), guard=self._guard(listener, config),
            shaper=config.shapers.get(listener.shaper) if listener.shaper else None,
            timeouts=self._timeouts(listener))

    def _timeouts(self, listener: ListenerConfig) -> Timeouts | None:
        if listener.idle_timeout is None and listener.max_lifetime is None:
            return None
        return Timeouts(wheel_for(self.reactor), listener.idle_timeout, listener.max_lifetime)

    def _guard(self, listener: ListenerConfig, config: Config) -> Guard:
        state = self.guard_states.get(listener.name)
        if state is None:
            state = self.guard_states[listener.name] = GuardState(listener.name, self.reactor)
        return Guard(listener.name, state, self.reactor, limits_of(listener),
                     config.access.get(listener.access) if listener.access else None)

    @staticmethod
    def _proxy_policy(listener: ListenerConfig) -> ProxyPolicy:
        if listener.tor is not None:
            # tor delivers every stream over loopback with a PROXY v1 line naming the
            # circuit (HiddenServiceExportCircuitID haproxy): that is the client.
            return ProxyPolicy.from_settings(listener.proxy_mode, ["127.0.0.1/32", "::1/128"])
        return ProxyPolicy.from_settings(listener.proxy_protocol, listener.trusted_proxies)

    def _listener_service(self, listener: ListenerConfig, config: Config) -> ListenerService:
        factory = SniffingFactory(self._runtime(listener, config))
        if listener.tor is not None:
            from gatekeep.onion.listener import OnionListenerService

            return OnionListenerService(listener, factory, self.reactor)
        return ListenerService(listener, factory, self.reactor)

    def _admin_service(self, endpoint: str) -> AdminService:
        from gatekeep.admin import admin_site

        return AdminService(endpoint, admin_site(self.snapshot), self.reactor)

    def listeners(self) -> list[ListenerService]:
        return [child for child in self if isinstance(child, ListenerService)]

    # ------------------------------------------------------------ lifecycle

    def setServiceParent(self, parent: Any) -> Any:
        # twistd starts logging after making the application, with the observer
        # found as the application's ILogObserver component, if there is one.
        if self.log_observer is not None and isinstance(parent, Componentized):
            parent.setComponent(ILogObserver, self.log_observer)
        return super().setServiceParent(parent)

    def startService(self) -> None:
        super().startService()
        globalLogPublisher.addObserver(self.recent)
        if self.handle_signals:
            self._previous_handler = signal.signal(signal.SIGHUP, self._on_sighup)
        names = ", ".join(s.listener.name for s in self.listeners())
        systemd.notify(f"READY=1\nSTATUS=listening: {names}")

    def _on_sighup(self, signum: int, frame: Any) -> None:
        # Signal handlers interrupt the reactor anywhere: only schedule from here.
        self.reactor.callFromThread(self.reload)

    def stopService(self) -> defer.Deferred[None]:
        systemd.notify("STOPPING=1\nSTATUS=draining connections")
        if self.handle_signals and self._previous_handler is not None:
            signal.signal(signal.SIGHUP, self._previous_handler)
        globalLogPublisher.removeObserver(self.recent)
        stopped: defer.Deferred[Any] = defer.maybeDeferred(super().stopService)
        timeout = self.config.settings.drain_timeout

        def drain(_: object) -> defer.Deferred[int]:
            return self.tracker.drain(timeout, self.reactor)

        def drained(aborted: int) -> None:
            log.info("stopped; {aborted} connection(s) closed at the drain deadline",
                     aborted=aborted)

        return stopped.addCallback(drain).addCallback(drained)

    # ------------------------------------------------------------ reload

    def reload(self) -> defer.Deferred[bool]:
        """
        Re-read the config file and apply it; True if applied. A bad file is logged
        and the running config stays. Reloads requested meanwhile are folded into
        one more after the current one.
        """
        if not self.running:
            return defer.succeed(False)  # stopping: the drain must see a stable config
        if self._reloading is not None:
            self._again = True
            return self._reloading
        if self.loader is None:
            log.warn("reload requested, but this gatekeep has no config file to re-read")
            return defer.succeed(False)
        systemd.notify(systemd.reloading_message())
        log.info("reloading the config")
        loading = threads.deferToThreadPool(self.reactor, self.reactor.getThreadPool(),
                                            self.loader)
        self._reloading = done = loading.addCallbacks(self._loaded, self._load_failed)
        done.addBoth(self._reload_finished)
        return done

    def _loaded(self, config: Config) -> bool:
        try:
            self.apply(config)
        except ReloadError as error:
            self._rejected(str(error))
            return False
        return True

    def _load_failed(self, failure: Failure) -> bool:
        if failure.check(ConfigErrors):
            self._rejected(failure.value.render())  # type: ignore[union-attr]
        else:
            log.failure("reload failed", failure)
            self._rejected(failure.getErrorMessage())
        return False

    def _rejected(self, why: str) -> None:
        log.error("reload rejected; the running config is kept:\n{why}", why=why)
        metrics.reloaded(False)
        self.last_reload = f"rejected at {self._clock_text()}"

    def _reload_finished(self, applied: bool) -> bool:
        self._reloading = None
        names = ", ".join(s.listener.name for s in self.listeners())
        systemd.notify(f"READY=1\nSTATUS=listening: {names}")
        if self._again:
            self._again = False
            self.reload()
        return applied

    def _clock_text(self) -> str:
        return time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(self.reactor.seconds())) + " UTC"

    def apply(self, config: Config) -> None:
        """Switch to ``config`` now, or raise :class:`ReloadError` having changed nothing."""
        old = {service.identity: service for service in self.listeners()}
        keep: list[tuple[ListenerService, ListenerConfig]] = []
        new: list[ListenerService] = []
        for listener in config.listeners:
            service = old.pop(listener_identity(listener), None)
            if service is not None:
                keep.append((service, listener))
            else:
                new.append(self._listener_service(listener, config))
        admin_endpoint = config.admin.endpoint if config.admin is not None else None
        old_admin = self.admin
        new_admin = None
        if admin_endpoint is not None and (old_admin is None or
                                           old_admin.endpoint != admin_endpoint):
            new_admin = self._admin_service(admin_endpoint)
        bound: list[PortService] = []
        opening: list[PortService] = [*new, *([new_admin] if new_admin else [])]
        try:
            for port_service in opening:
                port_service.bind()
                bound.append(port_service)
        except BindError as error:
            for port_service in bound:
                port_service.stopService()
            raise ReloadError(str(error)) from None
        # Nothing below can fail: the switch is all or nothing.
        for warning in config.warnings:
            log.warn("config: {warning}", warning=warning)
        splice.configure(config.settings.splice)
        for service, listener in keep:
            service.update(listener, self._runtime(listener, config))
        for service in old.values():
            log.info("listener {listener} closed (removed from the config); its open "
                     "connections continue", listener=service.listener.name)
            service.disownServiceParent()
        for service in new:
            service.setServiceParent(self)
        if old_admin is not None and (new_admin is not None or admin_endpoint is None):
            old_admin.disownServiceParent()
            self.admin = None
        if new_admin is not None:
            new_admin.setServiceParent(self)
            self.admin = new_admin
        self.config = config
        self.reloads += 1
        metrics.reloaded(True)
        self.last_reload = f"applied at {self._clock_text()}"
        log.info("reload applied: {listeners} listener(s), {added} opened, {removed} closed; "
                 "new connections use the new config",
                 listeners=len(config.listeners), added=len(new), removed=len(old))

    # ------------------------------------------------------------ status

    def snapshot(self) -> Snapshot:
        totals = metrics.connections_by_route()
        live = metrics.open_by_route()
        config = self.config
        listeners = tuple(
            ListenerStatus(s.listener.name, s.listener.where, s.address(), s.listener.service,
                           self.tracker.count(s.listener.name),
                           self.tracker.total_accepted[s.listener.name])
            for s in self.listeners())
        services = []
        for service in config.services.values():
            using = [lc.name for lc in config.listeners if lc.service == service.name]
            routes = tuple(
                RouteStatus(r.name, describe_match(r), r.target.describe(),
                            sum(totals.get((name, r.name), 0) for name in using),
                            sum(live.get((name, r.name), 0) for name in using))
                for r in service.routes)
            services.append(ServiceStatus(service.name, service.default, routes))
        return Snapshot(
            version=__version__, source=config.source, started=self.started_at,
            now=self.reactor.seconds(), reloads=self.reloads, last_reload=self.last_reload,
            listeners=listeners, services=tuple(services), errors=tuple(self.recent.lines),
            admin=self.admin.address() if self.admin is not None else "-")
