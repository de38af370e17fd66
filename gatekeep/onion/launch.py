"""
Launching a tor of our own, and stopping it.

gatekeep starts tor itself rather than with ``txtorcon.launch``: that one connects
when tor *announces* its control listener, can lose the race against the socket
and then waits for ever. Here tor is spawned with its control port on a free
loopback port, gatekeep connects once tor logs that the port is ready, and a tor
that exits early is reported with the last lines it printed.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import tempfile
from collections import deque
from typing import Any

from twisted.internet import defer
from twisted.internet.error import ProcessDone
from twisted.internet.protocol import ProcessProtocol
from twisted.logger import Logger
from twisted.python.failure import Failure

from gatekeep.onion.control import TorControl, TorError, connect_control
from gatekeep.onion.hsconf import quote

__all__ = ["LaunchedTor", "launch_tor"]

log = Logger()

#: tor prints this once its control port accepts connections (not at "Opening ...").
_READY = re.compile(r"Opened Control listener connection \(ready\) on (\S+)")
#: What tor says about its problems; kept to explain an early exit.
_PROBLEM = re.compile(r"\[(warn|err)\]")

_TORRC = """\
# Written by gatekeep for the onion listener {listener}; rewritten at each start.
DataDirectory {data_dir}
# Only onion services: no SOCKS for local applications.
SocksPort 0
# A free loopback port; gatekeep learns it from the log line below and
# authenticates with the cookie file, readable only by this user.
ControlPort auto
CookieAuthentication 1
Log notice stdout
"""


class _TorProcess(ProcessProtocol):
    """Watches a launched tor's output for its control port and for its exit."""

    def __init__(self, listener: str) -> None:
        self.listener = listener
        self.lines: deque[str] = deque(maxlen=60)
        self.ready: defer.Deferred[str] = defer.Deferred()
        #: Fires (with None) when tor has exited; ``reason`` then says how.
        self.ended: defer.Deferred[None] = defer.Deferred()
        self.reason: Failure | None = None
        self._partial = b""

    def outReceived(self, data: bytes) -> None:
        *complete, self._partial = (self._partial + data).split(b"\n")
        for raw in complete:
            line = raw.decode("utf-8", "replace").rstrip("\r")
            self.lines.append(line)
            if _PROBLEM.search(line):
                log.warn("listener {listener}: tor: {line}", listener=self.listener,
                         line=line.partition("] ")[2] or line)
            found = _READY.search(line)
            if found and not self.ready.called:
                self.ready.callback(found.group(1))

    errReceived = outReceived

    def processEnded(self, reason: Failure) -> None:
        if not self.ready.called:
            self.ready.errback(TorError(f"tor exited before opening its control port "
                                        f"({_exit_text(reason)}){self.problems()}"))
        self.reason = reason
        self.ended.callback(None)

    def problems(self) -> str:
        """tor's warnings and errors so far, for an error message."""
        said = [line.partition("] ")[2] or line for line in self.lines if _PROBLEM.search(line)]
        return (": " + " | ".join(said[-4:])) if said else ""


def _exit_text(reason: Failure) -> str:
    if reason.check(ProcessDone):
        return "exit status 0"
    value = reason.value
    signal = getattr(value, "signal", None)
    if signal:
        return f"killed by signal {signal}"
    return f"exit status {getattr(value, 'exitCode', '?')}"


class LaunchedTor:
    """A running tor that gatekeep started, and the control connection to it."""

    def __init__(self, process: _TorProcess, transport: Any, control: TorControl,
                 data_dir: str, temporary: bool, reactor: Any) -> None:
        self.process = process
        self.transport = transport
        self.control = control
        self.data_dir = data_dir
        self.temporary = temporary
        self.reactor = reactor

    @property
    def pid(self) -> int | None:
        pid: int | None = self.transport.pid
        return pid

    async def exit_reason(self, otherwise: str, wait: float = 5.0) -> str:
        """Why the control connection closed: tor's exit if it exits soon, else ``otherwise``."""
        try:
            await _observe(self.process.ended).addTimeout(wait, self.reactor)
        except defer.TimeoutError:
            return otherwise
        assert self.process.reason is not None
        return f"tor exited ({_exit_text(self.process.reason)}){self.process.problems()}"

    async def stop(self, timeout: float = 10.0) -> None:
        """TERM tor (KILL it after ``timeout``), wait for it, remove a temporary data dir."""
        self.control.close()
        await _terminate(self.process, self.transport, self.reactor, timeout)
        if self.temporary:
            shutil.rmtree(self.data_dir, ignore_errors=True)


async def _terminate(process: _TorProcess, transport: Any, reactor: Any,
                     timeout: float) -> None:
    if process.ended.called:
        return
    ended = _observe(process.ended)
    _signal(transport, "TERM")
    timer = reactor.callLater(timeout, _signal, transport, "KILL")
    await ended
    if timer.active():
        timer.cancel()


def _observe(source: defer.Deferred[None]) -> defer.Deferred[None]:
    """A Deferred firing when ``source`` does, leaving ``source`` as it is."""
    copy: defer.Deferred[None] = defer.Deferred()

    def notify(result: None) -> None:
        if not copy.called:
            copy.callback(None)
        return result

    source.addCallback(notify)
    return copy


def _signal(transport: Any, name: str) -> None:
    # ProcessExitedAlready when it exited meanwhile: nothing left to do.
    with contextlib.suppress(Exception):
        transport.signalProcess(name)


async def launch_tor(
    reactor: Any, listener: str, tor_binary: str | None, data_dir: str | None,
    timeout: float = 60.0,
) -> LaunchedTor:
    """
    Start tor and return it with an authenticated control connection whose closing
    makes tor exit (TAKEOWNERSHIP). Raises :class:`TorError` with tor's own words.
    """
    binary = shutil.which(tor_binary or "tor")
    if binary is None:
        raise TorError(f"cannot find the tor program {tor_binary or 'tor'!r}")
    temporary = data_dir is None
    if data_dir is None:
        data_dir = tempfile.mkdtemp(prefix="gatekeep-tor-")
    else:
        os.makedirs(data_dir, mode=0o700, exist_ok=True)
    torrc = os.path.join(data_dir, "gatekeep-torrc")
    with open(torrc, "w", encoding="utf-8") as file:
        file.write(_TORRC.format(listener=listener, data_dir=quote(data_dir)))
    process = _TorProcess(listener)
    # If gatekeep dies without stopping it, tor notices and exits by itself.
    argv = [binary, "-f", torrc, "--__OwningControllerProcess", str(os.getpid())]
    transport = reactor.spawnProcess(process, binary, argv, env=dict(os.environ), path=data_dir)
    transport.closeStdin()
    log.info("listener {listener}: launched tor (pid {pid}, data in {data_dir})",
             listener=listener, pid=transport.pid, data_dir=data_dir)
    try:
        address = await process.ready.addTimeout(timeout, reactor)
        host, _, port = address.rpartition(":")
        control = await connect_control(reactor, f"tcp:{host}:{port}")
        await control.take_ownership()
    except BaseException as error:
        await _terminate(process, transport, reactor, 5.0)
        if temporary:
            shutil.rmtree(data_dir, ignore_errors=True)
        if isinstance(error, defer.TimeoutError):
            raise TorError(f"tor did not open its control port within {timeout:g}s"
                           f"{process.problems()}") from None
        raise
    return LaunchedTor(process, transport, control, data_dir, temporary, reactor)
