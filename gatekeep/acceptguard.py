"""
Listening under descriptor exhaustion: pause accepting, back off, log sparingly.

When a process runs out of file descriptors (``EMFILE``, or the system does:
``ENFILE``, ``ENOBUFS``, ``ENOMEM``), Twisted's ``tcp.Port`` frees a reserved
descriptor, accepts every waiting connection and closes it at once, logging a line
for each one: a connection flood against ``ulimit -n`` turns into a log flood and
into work proportional to the flood (sslh's CVE-2025-46807 is the same trap).

:func:`guard_port` makes a listening port stop reading instead: the first accept that
fails for lack of descriptors removes the port from the reactor for a short delay
(doubling up to :data:`MAX_PAUSE` while it keeps failing, reset by an accept that
works), so waiting clients stay in the kernel's backlog and are served once
connections end. At most one log line per :data:`LOG_INTERVAL` says so.
"""

from __future__ import annotations

import errno
import os
import socket
from typing import Any

from twisted.internet import tcp
from twisted.internet.interfaces import IDelayedCall
from twisted.logger import Logger

__all__ = ["LOG_INTERVAL", "MAX_PAUSE", "MIN_PAUSE", "AcceptGuard", "guard_port"]

log = Logger()

MIN_PAUSE = 0.05
MAX_PAUSE = 1.0
LOG_INTERVAL = 1.0
EXHAUSTED = frozenset({errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM})


class AcceptGuard:
    """Pauses one listening port while accepting fails for lack of resources."""

    def __init__(self, port: Any, reactor: Any, label: str) -> None:
        self.port = port
        self.reactor = reactor
        self.label = label
        self.pause = MIN_PAUSE
        self.paused = 0  # pauses since the last log line
        self._resume: IDelayedCall | None = None
        self._logged = float("-inf")

    def accepted(self) -> None:
        self.pause = MIN_PAUSE

    def exhausted(self, code: int) -> None:
        """An accept failed with ``code``: stop reading the port for a while."""
        if self._resume is not None:
            return
        delay = self.pause
        self.pause = min(MAX_PAUSE, self.pause * 2)
        self.port.stopReading()
        self._resume = self.reactor.callLater(delay, self._resumed)
        self.paused += 1
        now = self.reactor.seconds()
        if now - self._logged >= LOG_INTERVAL:
            self._logged = now
            log.warn(
                "{label}: cannot accept ({error}: {reason}); accepts paused {count} time(s) "
                "since the last message, next retry in {delay:.2f}s",
                label=self.label, error=errno.errorcode.get(code, str(code)),
                reason=os.strerror(code), count=self.paused, delay=delay)
            self.paused = 0

    def _resumed(self) -> None:
        self._resume = None
        port = self.port
        if getattr(port, "connected", False) and not getattr(port, "disconnecting", False):
            port.startReading()

    def stop(self) -> None:
        if self._resume is not None:
            self._resume.cancel()
            self._resume = None


class _GuardedSocket:
    """
    A listening socket whose ``accept`` reports exhaustion to the guard and then looks
    like "no connection waiting" (EAGAIN) to Twisted, which ends its accept loop.
    """

    def __init__(self, sock: socket.socket, guard: AcceptGuard) -> None:
        self._sock = sock
        self._guard = guard
        # What socket.accept asks the listening socket for every connection, through
        # enum conversions (a few microseconds): it never changes.
        self._kind: tuple[int, int, int] | None = ((int(sock.family), int(sock.type), sock.proto)
                      if isinstance(sock, socket.socket) else None)

    def accept(self) -> tuple[socket.socket, Any]:
        try:
            if self._kind is None:
                return self._accepted(self._sock.accept())
            fd, address = self._sock._accept()  # type: ignore[attr-defined]
        except OSError as error:
            if error.errno in EXHAUSTED:
                self._guard.exhausted(error.errno)
                raise BlockingIOError(errno.EAGAIN, "accepts paused") from None
            raise
        # As socket.accept does for a listening socket that does not block (Twisted's):
        # the new socket's blocking mode is left to the transport.
        family, kind, proto = self._kind
        return self._accepted((socket.socket(family, kind, proto, fileno=fd), address))

    def _accepted(self, accepted: tuple[socket.socket, Any]) -> tuple[socket.socket, Any]:
        self._guard.accepted()
        return accepted

    def __getattr__(self, name: str) -> Any:
        return getattr(self._sock, name)


def guard_port(port: Any, reactor: Any, label: str) -> AcceptGuard | None:
    """Guard a listening ``tcp.Port`` (TCP or UNIX); other ports are left alone."""
    if not isinstance(port, tcp.Port) or not isinstance(
            getattr(port, "socket", None), socket.socket):
        return None
    guard = AcceptGuard(port, reactor, label)
    port.socket = _GuardedSocket(port.socket, guard)
    return guard
