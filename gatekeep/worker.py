"""
One worker process of ``workers = N`` (started by :mod:`gatekeep.workers`, never by hand).

The supervising parent passes the listening sockets as inherited descriptors and
describes them in ``$GATEKEEP_WORKER`` (JSON: the worker's index, each endpoint's
descriptor and address family, the private admin endpoint, the config path). The
worker runs the same :class:`~gatekeep.service.GatekeepService` as a single process,
adopting those sockets instead of binding.

It writes its own log lines to its stdout, which is the parent's log destination
(see :mod:`gatekeep.sharedlog`), and opens the log file again when the parent says it
rotated it. Only when the parent logs somewhere a worker cannot write (``--syslog``,
``--logger``), the worker sends its events as JSON records to the parent instead,
through a pipe on stdout. It tells the parent it serves through a control pipe, and
exits when the parent goes away (its stdin, a pipe from the parent, ends).
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Callable
from typing import IO, Any

from twisted.internet.interfaces import IReadDescriptor
from twisted.logger import ILogObserver, LogEvent, eventAsText, formatEvent
from zope.interface import implementer

from gatekeep.sharedlog import REOPEN

__all__ = ["ENVIRONMENT", "main"]

#: The environment variable that carries a worker's instructions.
ENVIRONMENT = "GATEKEEP_WORKER"


@implementer(ILogObserver)
class _ToParent:
    """Each log event as one record for the parent: the text, and the plain fields."""

    def __init__(self, output: IO[str]) -> None:
        self.output = output

    def __call__(self, event: LogEvent) -> None:
        from gatekeep.logformat import plain_fields

        level = event.get("log_level")
        text = formatEvent(event)
        if "log_failure" in event:
            text = eventAsText(event, includeTimestamp=False, includeSystem=False)
        record = {"time": event.get("log_time"), "level": level.name if level else "info",
                  "namespace": event.get("log_namespace", "-"), "text": text,
                  "fields": plain_fields(event)}
        self.output.write("\x1e" + json.dumps(record, default=str) + "\n")
        self.output.flush()


@implementer(IReadDescriptor)
class _ParentWatch:
    """
    Reads the stdin pipe from the parent: :data:`~gatekeep.sharedlog.REOPEN` asks
    to open the log file again; the pipe's end (EOF) means the parent is gone.
    """

    def __init__(self, reactor: Any, reopen: Callable[[], None] | None = None) -> None:
        self.reactor = reactor
        self.reopen = reopen

    def fileno(self) -> int:
        return 0

    def logPrefix(self) -> str:
        return "parent"

    def doRead(self) -> None:
        try:
            data = os.read(0, 4096)
        except BlockingIOError:
            return
        except OSError:
            data = b""
        if not data:
            self.reactor.removeReader(self)
            self._gone()
        elif self.reopen is not None and REOPEN in data:
            self.reopen()

    def connectionLost(self, reason: Any) -> None:
        # epoll reports the pipe's end as a hang-up: the reactor calls this instead.
        self._gone()

    def _gone(self) -> None:
        if self.reactor.running:
            self.reactor.stop()


def main() -> None:
    from twisted.internet import epollreactor

    epollreactor.install()
    from twisted.internet import reactor

    from gatekeep.eventloop import coalesce

    coalesce(reactor)
    from twisted.logger import Logger, globalLogBeginner

    from gatekeep import workers
    from gatekeep.config.errors import ConfigErrors
    from gatekeep.service import GatekeepService
    from gatekeep.tap import load

    spec = json.loads(os.environ.pop(ENVIRONMENT))
    shared = spec.get("log")
    reopen: Callable[[], None] | None = None
    if shared is not None:
        from gatekeep.sharedlog import WorkerLog

        writer = WorkerLog(int(spec["index"]), shared["format"], shared["path"])
        writer.batch.start(reactor)
        reopen = writer.reopen
        globalLogBeginner.beginLoggingTo([writer], redirectStandardIO=False)
    else:
        globalLogBeginner.beginLoggingTo([_ToParent(sys.stdout)], redirectStandardIO=False)
    control = int(spec["control"])
    os.set_inheritable(control, False)
    for endpoint, (fd, family) in spec["fds"].items():
        workers.INHERITED[endpoint] = (int(fd), int(family))
    options = {"config": spec["config"], "demo-port": spec["demo_port"]}
    admin = spec.get("admin")
    try:
        config, registry = load(options)
    except ConfigErrors as errors:
        print(errors.render(), file=sys.stderr)
        raise SystemExit(1) from None

    def loader() -> Any:
        return workers.as_worker(load(options, registry)[0], admin)

    service = GatekeepService(workers.as_worker(config, admin), registry, reactor,
                              loader=loader, handle_signals=True)
    os.set_blocking(0, False)
    reactor.addReader(_ParentWatch(reactor, reopen))

    def start() -> None:
        service.startService()
        Logger().info("worker {index} serving (pid {pid})", index=spec["index"],
                      pid=os.getpid(), worker_ready=True)
        os.write(control, b"ready\n")

    reactor.callWhenRunning(start)
    reactor.addSystemEventTrigger("before", "shutdown", service.stopService)
    reactor.run()


if __name__ == "__main__":
    main()
