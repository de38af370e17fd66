"""
``workers = N``: a supervising parent and N worker processes sharing the listeners.

The parent binds every listener (before twistd drops privileges; ``systemd:``
endpoints adopt what systemd passed), never accepts on them, and starts N workers
(:mod:`gatekeep.worker`) that inherit the listening sockets: the kernel hands each
new connection to one of the workers waiting in ``accept``. The parent

- restarts a worker that dies (after 0.5 s, doubling up to 30 s while it keeps
  dying young), and logs why;
- gives each worker its log destination (stdout or the log file) as the worker's
  stdout: workers write their own lines, with their name (``[gatekeep.connection#info
  worker-2]`` in the text log, ``"worker": 2`` in JSON lines), and the parent alone
  rotates the file, telling the workers to follow (:mod:`gatekeep.sharedlog`);
- on ``SIGHUP``, checks the file and forwards the reload to every worker; when the
  listeners or the number of workers changed, binds the new listeners, starts a new
  generation of workers and lets the old one drain;
- on ``SIGTERM``, stops the workers (each drains its connections for
  ``drain_timeout``) and exits when they have;
- serves ``[admin]`` itself: ``/metrics`` merges every worker's series with a
  ``worker`` label (sum them in queries), ``/health`` is ok while all workers run,
  ``/status`` shows worker 1's page (``/status?worker=N`` another's).

``workers = 1`` runs everything in one process, as without this module.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import sys
import tempfile
from collections.abc import Callable, Mapping
from typing import Any

import attrs
from twisted.application.service import MultiService
from twisted.internet import defer, protocol, task, threads
from twisted.internet.endpoints import serverFromString
from twisted.internet.error import ProcessExitedAlready
from twisted.logger import (
    ILogObserver,
    InvalidLogLevelError,
    LogEvent,
    Logger,
    LogLevel,
    globalLogPublisher,
)
from twisted.python.components import Componentized
from twisted.python.failure import Failure

from gatekeep import systemd
from gatekeep.addresses import format_address
from gatekeep.config.errors import ConfigErrors
from gatekeep.config.model import AdminConfig, Config
from gatekeep.sharedlog import REOPEN, SharedLog
from gatekeep.worker import ENVIRONMENT

__all__ = ["INHERITED", "SupervisorService", "as_worker", "worker_count"]

log = Logger()

#: In a worker: listening sockets passed by the parent, by endpoint string (fd, family).
INHERITED: dict[str, tuple[int, int]] = {}

_RESTART_FIRST = 0.5
_RESTART_MAX = 30.0
_ROTATION_CHECK = 0.2  # seconds between looks at the shared log file's size
_YOUNG = 10.0  # a worker that dies sooner than this was probably broken from the start
# Environment the parent consumed (systemd's) or that a worker must not inherit.
_NOT_INHERITED = ("NOTIFY_SOCKET", "LISTEN_FDS", "LISTEN_PID", "LISTEN_FDNAMES", ENVIRONMENT)


def worker_count(config: Config, environ: Mapping[str, str] | None = None) -> int:
    """
    ``workers``; else ``$GATEKEEP_WORKERS``; else the number of cores. 1 while an
    onion listener is configured.
    """
    environ = os.environ if environ is None else environ
    wanted = config.settings.workers
    if wanted is None:
        try:
            wanted = max(1, int(environ.get("GATEKEEP_WORKERS", "")))
        except ValueError:
            wanted = os.cpu_count() or 1
    if wanted > 1 and any(listener.tor is not None for listener in config.listeners):
        return 1
    return wanted


def as_worker(config: Config, admin: str | None) -> Config:
    """A worker's view of the config: its admin listener is the private one."""
    return attrs.evolve(config, admin=AdminConfig(endpoint=admin) if admin else None)


def _announcer(name: str, service: str) -> Callable[[str], None]:
    # Not "listening on": each worker says that once it accepts on the socket.
    def announce(address: str) -> None:
        log.info("listener {listener} bound to {address} (service {service}) for the "
                 "workers", listener=name, address=address, service=service)

    return announce


class _Refuse(protocol.Factory):
    """The parent's factory on the listeners: it never accepts (workers do)."""

    noisy = False

    def buildProtocol(self, addr: Any) -> None:
        return None


def relayed_event(record: bytes, index: int, now: float) -> LogEvent:
    """A worker's JSON log record (from :class:`gatekeep.worker._ToParent`) as an event."""
    event: LogEvent
    try:
        data = json.loads(record)
        fields = dict(data["fields"])
        event = {**fields, "log_format": "{log_text}", "log_text": data["text"],
                 "log_time": float(data["time"] or now),
                 "log_level": LogLevel.levelWithName(data["level"]),
                 "log_namespace": data["namespace"]}
    except (ValueError, KeyError, TypeError, InvalidLogLevelError):
        event = {"log_format": "{log_text}", "log_text": record.decode("utf-8", "replace"),
                 "log_level": LogLevel.info, "log_namespace": "gatekeep.worker",
                 "log_time": now}
    level = event["log_level"]
    event["log_system"] = f"{event['log_namespace']}#{level.name} worker-{index}"
    event["worker"] = index
    return event


class _Worker(protocol.ProcessProtocol):
    """
    One worker process: reads its control pipe (it says when it serves) and, when the
    log cannot be shared, relays its JSON log records to the parent's log.
    """

    def __init__(self, supervisor: SupervisorService, index: int, generation: int,
                 control: int) -> None:
        self.supervisor = supervisor
        self.index = index
        self.generation = generation
        self.control = control
        self._said = b""
        self.started = supervisor.reactor.seconds()
        self.ended: defer.Deferred[None] = defer.Deferred()
        self.running = True
        self.ready = False
        self._buffer = b""

    def makeConnection(self, transport: Any) -> None:
        self.pid: int | None = getattr(transport, "pid", None)
        super().makeConnection(transport)

    def childDataReceived(self, childFD: int, data: bytes) -> None:  # noqa: N803
        if childFD != self.control:
            super().childDataReceived(childFD, data)
            return
        self._said += data
        *messages, self._said = self._said.split(b"\n")
        if b"ready" in messages and not self.ready:
            self.ready = True
            self.supervisor.worker_ready(self)

    def reopen_log(self) -> None:
        """Ask the worker to open the (just rotated) log file again."""
        if self.running and self.transport is not None:
            with contextlib.suppress(OSError):
                self.transport.write(REOPEN)

    def outReceived(self, data: bytes) -> None:
        self._buffer += data
        *records, self._buffer = self._buffer.split(b"\n")
        for record in records:
            if record.strip(b"\x1e \r"):
                self._relay(record.strip(b"\x1e"))

    def _relay(self, record: bytes) -> None:
        globalLogPublisher(relayed_event(record, self.index, self.supervisor.reactor.seconds()))

    def processEnded(self, reason: Failure) -> None:
        if self._buffer.strip():
            self._relay(self._buffer)
        self.running = False
        self.supervisor.ended(self, reason)
        self.ended.callback(None)

    def signal(self, signum: int) -> None:
        if self.running and self.transport is not None:
            with contextlib.suppress(OSError, ProcessExitedAlready):  # processEnded follows
                self.transport.signalProcess(signum)


class SupervisorService(MultiService):
    """The parent of ``workers = N`` (N > 1)."""

    def __init__(
        self, config: Config, reactor: Any, *, loader: Callable[[], Config],
        options: dict[str, Any], log_observer: ILogObserver | None = None,
        shared_log: SharedLog | None = None,
    ) -> None:
        super().__init__()
        self.config = config
        self.reactor = reactor
        self.loader = loader
        self.options = options
        #: The log destination the workers write to themselves; None: they relay.
        self.shared_log = shared_log
        self.log_observer = shared_log.observer if shared_log is not None else log_observer
        self.count = worker_count(config)
        self.ports: dict[str, Any] = {}
        self.workers: dict[int, _Worker] = {}
        self.generation = 0
        self.stopping = False
        self._backoff: dict[int, float] = {}
        self._admin: Any = None
        self._private = tempfile.mkdtemp(prefix="gatekeep-workers-")
        self._reloading = False
        self._announced = -1
        self._previous_handler: Any = None
        self._previous_usr1: Any = None
        self._rotation: task.LoopingCall | None = None

    def setServiceParent(self, parent: Any) -> Any:
        if self.log_observer is not None and isinstance(parent, Componentized):
            parent.setComponent(ILogObserver, self.log_observer)
        return super().setServiceParent(parent)

    # ------------------------------------------------------------ listening

    def _bind(self, endpoint: str, label: str, announce: Callable[[str], None]) -> Any:
        failures: list[Failure] = []
        ports: list[Any] = []
        try:
            serverFromString(self.reactor, endpoint).listen(_Refuse()).addCallbacks(
                ports.append, failures.append)
        except Exception as error:  # noqa: BLE001 - endpoint parsers raise anything
            failures.append(Failure(error))
        if failures or not ports:
            why = failures[0].getErrorMessage() if failures else "no port"
            raise OSError(f"{label} cannot listen on {endpoint}: {why}")
        port = ports[0]
        port.stopReading()  # the workers accept
        announce(format_address(port.getHost()))
        return port

    def _bind_listeners(self, config: Config) -> dict[str, Any]:
        """Bind what ``config`` needs and is not bound yet; all or nothing."""
        new: dict[str, Any] = {}
        try:
            for listener in config.listeners:
                endpoint = listener.endpoint
                if endpoint is None or endpoint in self.ports or endpoint in new:
                    continue
                new[endpoint] = self._bind(endpoint, f"listener {listener.name}",
                                           _announcer(listener.name, listener.service))
        except OSError:
            for port in new.values():
                port.stopListening()
            raise
        return new

    def privilegedStartService(self) -> None:
        try:
            self.ports = self._bind_listeners(self.config)
        except OSError as error:
            log.critical("{message}", message=str(error))
            print(f"gatekeep: {error}", file=sys.stderr)
            raise SystemExit(1) from None
        if self.config.admin is not None:
            self._start_admin(self.config.admin.endpoint)
        super().privilegedStartService()

    def _start_admin(self, endpoint: str) -> None:
        from gatekeep.workers_admin import supervisor_site

        site = supervisor_site(self)
        try:
            serverFromString(self.reactor, endpoint).listen(site).addCallback(
                self._admin_listening)
        except Exception as error:  # noqa: BLE001
            log.critical("admin cannot listen on {endpoint}: {error}", endpoint=endpoint,
                         error=str(error))
            raise SystemExit(1) from None

    def _admin_listening(self, port: Any) -> None:
        self._admin = port
        log.info("admin listening on {address}", address=format_address(port.getHost()))

    def private_admin(self, index: int) -> str:
        return os.path.join(self._private, f"worker-{self.generation}-{index}.sock")

    # ------------------------------------------------------------ workers

    def startService(self) -> None:
        super().startService()
        for index in range(1, self.count + 1):
            self._spawn(index)
        self._previous_handler = signal.signal(signal.SIGHUP, self._on_sighup)
        shared = self.shared_log
        if shared is not None and shared.path is not None:
            shared.on_rotation(self._log_rotated)
            self._rotation = task.LoopingCall(shared.check_rotation)
            self._rotation.clock = self.reactor
            self._rotation.start(_ROTATION_CHECK, now=False)
            # As twistd does for its log file: SIGUSR1 rotates it now.
            self._previous_usr1 = signal.signal(signal.SIGUSR1, self._on_sigusr1)
        log.info("starting {count} workers (workers = {count})", count=self.count)

    def _on_sigusr1(self, signum: int, frame: Any) -> None:
        assert self.shared_log is not None
        self.reactor.callFromThread(self.shared_log.rotate)

    def _log_rotated(self) -> None:
        for worker in self.alive():
            worker.reopen_log()

    def worker_ready(self, worker: _Worker) -> None:
        if self._announced == self.generation or not all(
                w.ready for w in self.workers.values()):
            return
        self._announced = self.generation
        names = ", ".join(listener.name for listener in self.config.listeners)
        log.info("all {count} workers are serving", count=self.count)
        systemd.notify(f"READY=1\nSTATUS=listening: {names} ({self.count} workers)")

    def _spawn(self, index: int) -> None:
        config = self.config
        fds: dict[str, list[int]] = {}
        shared = self.shared_log
        # The worker's stdout: the log itself, or a pipe for relayed records.
        child_fds: dict[int, Any] = {0: "w", 1: shared.fileno() if shared else "r", 2: 2}
        number = 2
        for number, listener in enumerate(config.listeners, start=3):
            assert listener.endpoint is not None
            port = self.ports[listener.endpoint]
            child_fds[number] = port.fileno()
            fds[listener.endpoint] = [number, port.socket.family]
        control = number + 1
        child_fds[control] = "r"
        private = self.private_admin(index)
        if os.path.exists(private):
            os.unlink(private)
        spec = {"index": index, "fds": fds, "config": self.options.get("config"),
                "demo_port": self.options.get("demo-port", 8443),
                "admin": f"unix:{private}:mode=600", "control": control}
        if shared is not None:
            spec["log"] = {"format": shared.log_format, "path": shared.path}
        env = {k: v for k, v in os.environ.items() if k not in _NOT_INHERITED}
        env[ENVIRONMENT] = json.dumps(spec)
        worker = _Worker(self, index, self.generation, control)
        self.reactor.spawnProcess(worker, sys.executable,
                                  [sys.executable, "-m", "gatekeep.worker"],
                                  env=env, childFDs=child_fds)
        self.workers[index] = worker

    def ended(self, worker: _Worker, reason: Failure) -> None:
        if self.workers.get(worker.index) is not worker:
            return  # an old generation's worker finishing its drain
        code = getattr(reason.value, "exitCode", None)
        signum = getattr(reason.value, "signal", None)
        how = f"signal {signum}" if signum else f"exit code {code}"
        if self.stopping:
            return
        lived = self.reactor.seconds() - worker.started
        delay = self._backoff.get(worker.index, _RESTART_FIRST)
        delay = min(delay * 2, _RESTART_MAX) if lived < _YOUNG else _RESTART_FIRST
        self._backoff[worker.index] = delay
        log.error("worker {index} (pid {pid}) ended ({how}) after {lived:.1f}s; starting "
                  "it again in {delay}s", index=worker.index, pid=worker.pid, how=how,
                  lived=lived, delay=delay)
        self.reactor.callLater(delay, self._respawn, worker)

    def _respawn(self, worker: _Worker) -> None:
        if not self.stopping and self.workers.get(worker.index) is worker:
            self._spawn(worker.index)

    def alive(self) -> list[_Worker]:
        return [w for w in self.workers.values() if w.running]

    # ------------------------------------------------------------ reload

    def _on_sighup(self, signum: int, frame: Any) -> None:
        self.reactor.callFromThread(self.reload)

    @defer.inlineCallbacks
    def reload(self) -> Any:
        """Check the file, then forward the reload (or start a new generation)."""
        if self.stopping or self._reloading:
            return False
        self._reloading = True
        systemd.notify(systemd.reloading_message())
        try:
            try:
                config = yield threads.deferToThreadPool(
                    self.reactor, self.reactor.getThreadPool(), self.loader)
            except ConfigErrors as errors:
                log.error("reload rejected; the running config is kept:\n{why}",
                          why=errors.render())
                return False
            count = worker_count(config)
            same = ([lc.endpoint for lc in config.listeners]
                    == [lc.endpoint for lc in self.config.listeners] and count == self.count)
            if same:
                self.config = config
                log.info("reload: forwarded to {count} workers", count=len(self.alive()))
                for worker in self.alive():
                    worker.signal(signal.SIGHUP)
                return True
            try:
                new = self._bind_listeners(config)
            except OSError as error:
                log.error("reload rejected; the running config is kept:\n{why}",
                          why=str(error))
                return False
            self._new_generation(config, count, new)
            return True
        finally:
            self._reloading = False
            systemd.notify("READY=1")

    def _new_generation(self, config: Config, count: int, new: dict[str, Any]) -> None:
        old_workers = list(self.workers.values())
        wanted = {lc.endpoint for lc in config.listeners}
        self.ports.update(new)
        self.config, self.count = config, count
        self.generation += 1
        self.workers = {}
        for index in range(1, count + 1):
            self._spawn(index)
        for worker in old_workers:
            worker.signal(signal.SIGTERM)
        for endpoint in [e for e in self.ports if e not in wanted]:
            self.ports.pop(endpoint).stopListening()
        log.info("reload: listeners changed; {count} new workers started, the old ones "
                 "finish their connections", count=count)

    # ------------------------------------------------------------ stop

    def stopService(self) -> Any:
        self.stopping = True
        systemd.notify("STOPPING=1\nSTATUS=draining connections")
        if self._previous_handler is not None:
            signal.signal(signal.SIGHUP, self._previous_handler)
        if self._previous_usr1 is not None:
            signal.signal(signal.SIGUSR1, self._previous_usr1)
        if self._rotation is not None and self._rotation.running:
            self._rotation.stop()
        super().stopService()
        waiting = [w.ended for w in self.alive()]
        for worker in self.alive():
            worker.signal(signal.SIGTERM)
        deadline = self.config.settings.drain_timeout + 5.0
        timer = self.reactor.callLater(deadline, self._kill_all)

        def done(_: object) -> None:
            if timer.active():
                timer.cancel()
            for port in self.ports.values():
                port.stopListening()
            self.ports = {}
            if self._admin is not None:
                self._admin.stopListening()
            shutil.rmtree(self._private, ignore_errors=True)
            log.info("all workers stopped")

        return defer.DeferredList(waiting).addCallback(done)

    def _kill_all(self) -> None:
        for worker in self.alive():
            log.warn("worker {index} still running past the drain: killing it",
                     index=worker.index)
            worker.signal(signal.SIGKILL)
