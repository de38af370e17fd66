"""
Fewer system calls per connection in Twisted's epoll reactor.

A proxied connection changes what the reactor watches many times in its short life:
reading stops while a backend connects and starts again, writing is watched while
bytes are queued, a closing connection stops reading and starts writing in one go.
Twisted's :class:`~twisted.internet.epollreactor.EPollReactor` makes one
``epoll_ctl`` call for each change (16 per short forwarded connection, measured).
:class:`CoalescingEPollReactor` notes the changes and hands the kernel only each
descriptor's final interest, once, just before it waits for events: a descriptor
added and given up again within one turn costs no call at all, nor does a closed
connection (epoll forgets a socket when it is closed). A listening socket still
leaves epoll at once, because epoll forgets a closed socket only when no other
process holds it open, and workers share their listening sockets. The same holds
within this process: code that gives a watched socket to another object gives the
socket itself, never a duplicate (``os.dup``, ``adoptStreamConnection``), or the
closed original's number stays registered for the duplicate (see
gatekeep.targets.transparent).

Each event is also dispatched without Twisted's per-event logging context (four
Python calls around every read and write); what that context added was the
``system`` prefix of Twisted's own legacy log lines during the event, e.g. the
"Unhandled Error" of a protocol that raised, which now shows ``-``. gatekeep's own
log lines carry their fields explicitly.

What the reactor reports (``getReaders``, ``getWriters``, ``removeAll``) and which
events reach which descriptor are Twisted's. ``GATEKEEP_EVENTLOOP=twisted`` keeps
Twisted's reactor as it is.
"""

from __future__ import annotations

import errno
import os
import socket
import sys
from collections.abc import Callable
from select import EPOLLERR, EPOLLHUP, EPOLLIN, EPOLLOUT, EPOLLRDHUP
from typing import Any

from twisted.internet.epollreactor import EPollReactor
from twisted.internet.error import ConnectionLost
from twisted.internet.interfaces import IListeningPort
from twisted.internet.posixbase import _NO_FILEDESC
from twisted.logger import Logger
from twisted.python import log as legacy_log
from twisted.python.failure import Failure

from gatekeep.streamerror import stream_error

__all__ = ["CoalescingEPollReactor", "before_wait", "coalesce"]

log = Logger()
_MAIN_LOOP_ERRORS = log.failureHandler("Unexpected error in main loop")


# Reading is watched with EPOLLRDHUP: the event then says whether the peer's FIN has
# arrived, so a reader that got less than it asked for knows whether to read on (to
# the end of the stream) or to wait for the next event (gatekeep.splice uses it).
_READ = EPOLLIN | EPOLLRDHUP
_HANGUP = EPOLLHUP | EPOLLERR


class CoalescingEPollReactor(EPollReactor):
    """An epoll reactor that tells the kernel each descriptor's interest once per turn."""

    #: The epoll event being dispatched (0 between events).
    last_event = 0

    # What the kernel watches for each registered descriptor; the descriptors whose
    # wanted interest may differ from it since the last wait; and the objects that
    # gave up a descriptor this turn (to tell a closed socket from an open one).
    _kernel: dict[int, int]
    _changed: set[int]
    _gone: dict[int, Any]
    # Called at the start of every turn's wait (see before_wait).
    _before_wait: tuple[Callable[[], None], ...] = ()

    def _add(self, xer: Any, primary: set[int], other: set[int],
             selectables: dict[int, Any], event: int, antievent: int) -> None:
        fd = xer.fileno()
        if fd not in primary:
            primary.add(fd)
            selectables[fd] = xer
            self._changed.add(fd)
            if fd in self._gone and _same_socket(self._gone[fd], xer):
                # The socket was handed to another object this turn (a splice taking
                # a connection from its transport): epoll watches it already.
                del self._gone[fd]

    def _remove(self, xer: Any, primary: set[int], other: set[int],
                selectables: dict[int, Any], event: int, antievent: int) -> None:
        fd = xer.fileno()
        if fd not in primary:
            if fd != -1:
                return  # not watched for this: nothing to do (the common case)
            for known, fdes in selectables.items():
                if xer is fdes:
                    fd = known
                    break
            else:
                return
            if fd not in primary:
                return
        primary.remove(fd)
        if fd not in other:
            del selectables[fd]
            if _listening(type(xer)):
                # A listening socket may be open in other processes too (workers,
                # systemd): closing it here would leave epoll watching it, so it
                # leaves epoll now, before anyone closes it.
                # What the kernel watches under this number may still be a socket
                # given up and closed this turn (epoll forgot it): not this one.
                self._changed.discard(fd)
                left = self._gone.get(fd)
                if self._kernel.pop(fd, 0) and (left is None or not _closed(left)):
                    self._poller.unregister(fd)
                return
            self._gone.setdefault(fd, xer)
        self._changed.add(fd)

    # Twisted's four wrappers, without their try/except and continuous-polling check
    # per call (a regular file, which epoll refuses, is moved to continuous polling
    # when the change reaches the kernel: see _refused). A splice relay changes what
    # is watched half a dozen times per connection.
    def addReader(self, reader: Any) -> None:
        self._add(reader, self._reads, self._writes, self._selectables, EPOLLIN, EPOLLOUT)

    def addWriter(self, writer: Any) -> None:
        self._add(writer, self._writes, self._reads, self._selectables, EPOLLOUT, EPOLLIN)

    def hand_over(self, old: Any, new: Any) -> tuple[bool, bool] | None:
        """
        Let ``new`` take ``old``'s place for the same descriptor, as it is watched
        (gatekeep.splice taking a socket from its transport): no removal and adding,
        and nothing for the kernel to hear. Returns whether it is watched for reading
        and for writing, or None if ``old`` is not the descriptor's object.
        """
        fd = old.fileno()
        selectables = self._selectables
        if fd == -1 or selectables.get(fd) is not old:
            return None
        selectables[fd] = new
        return fd in self._reads, fd in self._writes

    # (a connection's close stops reading and writing, most often of a descriptor no
    # longer watched: that case returns before any further call)
    def removeReader(self, reader: Any) -> None:
        if reader in self._continuousPolling._readers:
            self._continuousPolling.removeReader(reader)
            return
        fd = reader.fileno()
        if fd in self._reads or fd == -1:
            self._remove(reader, self._reads, self._writes, self._selectables, EPOLLIN,
                         EPOLLOUT)

    def removeWriter(self, writer: Any) -> None:
        if writer in self._continuousPolling._writers:
            self._continuousPolling.removeWriter(writer)
            return
        fd = writer.fileno()
        if fd in self._writes or fd == -1:
            self._remove(writer, self._writes, self._reads, self._selectables, EPOLLOUT,
                         EPOLLIN)

    def _flush(self) -> None:
        """Tell the kernel what changed since the last wait."""
        changed, self._changed = self._changed, set()
        gone, self._gone = self._gone, {}
        reads, writes, kernel = self._reads, self._writes, self._kernel
        selectables, poller = self._selectables, self._poller
        for fd in changed:
            wanted = (_READ if fd in reads else 0) | (EPOLLOUT if fd in writes else 0)
            has = kernel.get(fd, 0)
            left = gone.get(fd)
            if not wanted:
                if has:
                    del kernel[fd]
                    # A closed connection left epoll with its socket; an open one
                    # (or one whose object cannot tell) is taken out.
                    if left is None or not _closed(left):
                        try:
                            poller.unregister(fd)
                        except OSError as error:
                            if error.errno not in (errno.EBADF, errno.ENOENT):
                                raise
                continue
            if wanted == has and (left is None or selectables[fd] is left):
                continue
            # Another object may hold the number now: the same socket handed over
            # (splicing), or a new one after the old was closed (epoll forgot it).
            try:
                if has:
                    try:
                        poller.modify(fd, wanted)
                    except FileNotFoundError:
                        poller.register(fd, wanted)
                else:
                    try:
                        poller.register(fd, wanted)
                    except FileExistsError:
                        poller.modify(fd, wanted)
            except OSError as error:
                kernel.pop(fd, None)
                self._refused(fd, error)
            else:
                kernel[fd] = wanted

    def _refused(self, fd: int, error: OSError) -> None:
        selectable = self._selectables.pop(fd)
        reading, writing = fd in self._reads, fd in self._writes
        self._reads.discard(fd)
        self._writes.discard(fd)
        if error.errno == errno.EPERM:
            # Not pollable (a regular file): polled continuously, as Twisted does.
            if reading:
                self._continuousPolling.addReader(selectable)
            if writing:
                self._continuousPolling.addWriter(selectable)
            return
        # Twisted would have raised from startReading/startWriting: here the
        # descriptor is disconnected with the error, as a failed read would be.
        log.error("epoll refused descriptor {fd}: {error}", fd=fd, error=error)
        self._disconnectSelectable(selectable, error, reading)

    def doPoll(self, timeout: float | None) -> None:
        for hook in self._before_wait:
            hook()
        if self._changed:
            self._flush()
        if timeout is None:
            timeout = -1
        try:
            events = self._poller.poll(timeout, len(self._selectables))
        except OSError as error:
            if error.errno == errno.EINTR:
                return
            raise
        selectables = self._selectables
        for fd, event in events:
            selectable = selectables.get(fd)
            if selectable is None:
                continue
            self.last_event = event
            if event & _HANGUP and not event & EPOLLIN:
                # A hang-up with nothing left to read. Twisted would call it a clean
                # end for a reader, but it may be a reset the kernel is still handling
                # (gatekeep.streamerror): a peek tells, for every reader (TLS too).
                code = fd in self._reads and _pending_error(selectable)
                if code:  # (as _disconnectSelectable, keeping the error's text)
                    self.removeReader(selectable)
                    self.removeWriter(selectable)
                    selectable.connectionLost(Failure(ConnectionLost(os.strerror(code))))
                else:
                    self._doReadOrWrite(selectable, fd, event)
                continue
            # What Twisted's _doReadOrWrite does with a read or write event, written
            # out here: one call less per event.
            why: Any = None
            reading = False
            try:
                if selectable.fileno() == -1:
                    why = _NO_FILEDESC
                else:
                    if event & EPOLLIN:
                        why = selectable.doRead()
                        reading = True
                    if not why and event & EPOLLOUT:
                        why = selectable.doWrite()
                        reading = False
            except BaseException:  # noqa: BLE001 - as Twisted: logged, then disconnected
                why = sys.exc_info()[1]
                legacy_log.err()
            if why:
                self._disconnectSelectable(selectable, why, reading)
        self.last_event = 0

    doIteration = doPoll

    # A relay turns the loop twice per round trip: what Twisted's main loop does every
    # turn is kept short. Its error handler is entered once, not per turn (an error
    # is logged, and the loop goes on, as Twisted's); the timed calls are asked about
    # without their bookkeeping while nothing new was scheduled and nothing is due.

    def mainLoop(self) -> None:
        while self._started:
            with _MAIN_LOOP_ERRORS:
                while self._started:
                    self.runUntilCurrent()
                    timeout = self.timeout()
                    self.doIteration(self.running and timeout)
        log.info("Main loop terminated.")

    def timeout(self) -> float | None:
        if self._newTimedCalls:
            return super().timeout()
        pending = self._pendingTimedCalls
        if not pending:
            return None
        # (Twisted's bounds: not in the past, and what epoll_wait's int of ms holds)
        return max(0.0, min(2147483.0, pending[0].time - self.seconds()))

    def runUntilCurrent(self) -> None:
        pending = self._pendingTimedCalls
        if (not self.threadCallQueue and not self._newTimedCalls
                and (not pending or pending[0].time > self.seconds())):
            return
        super().runUntilCurrent()


_LISTENING: dict[type, bool] = {}


def _listening(kind: type) -> bool:
    """Whether objects of this class are listening ports (asked once per class)."""
    known = _LISTENING.get(kind)
    if known is None:
        known = _LISTENING[kind] = IListeningPort.implementedBy(kind)
    return known


def _socket_of(selectable: Any) -> Any:
    """The socket object behind a descriptor: a transport's, or a splice end's."""
    return getattr(selectable, "socket", None) or getattr(selectable, "sock", None)


def _pending_error(selectable: Any) -> int:
    """
    The error a read of the descriptor's socket would report now, if it has one and
    is connected (a connecting client's failure is Twisted's to tell, by its type).
    """
    if not getattr(selectable, "connected", True):
        return 0
    sock = _socket_of(selectable)
    return stream_error(sock) if isinstance(sock, socket.socket) else 0


def _same_socket(left: Any, taker: Any) -> bool:
    sock = _socket_of(left)
    return sock is not None and sock is _socket_of(taker)


def _closed(selectable: Any) -> bool:
    """
    Whether a descriptor's socket is closed: Twisted's transports then report -1,
    gatekeep's splice and raw-connect ends keep their number but hold the socket.
    """
    try:
        if selectable.fileno() == -1:
            return True
    except Exception:  # noqa: BLE001 - e.g. Twisted's wakers once closed (no number left)
        return False  # not known: epoll is asked to forget it (a closed one is ignored)
    sock = _socket_of(selectable)
    return sock is not None and sock.fileno() == -1


def coalesce(reactor: Any) -> bool:
    """
    Make a running Twisted epoll reactor a :class:`CoalescingEPollReactor` (what is
    registered stays registered); anything else is left alone. True if it changed.
    """
    if os.environ.get("GATEKEEP_EVENTLOOP", "") == "twisted":
        return False
    if type(reactor) is not EPollReactor:
        return type(reactor) is CoalescingEPollReactor
    epoll: Any = reactor
    epoll._kernel = {fd: (EPOLLIN if fd in epoll._reads else 0)
                     | (EPOLLOUT if fd in epoll._writes else 0)
                     for fd in epoll._selectables}
    epoll._changed = set()
    epoll._gone = {}
    epoll.__class__ = CoalescingEPollReactor
    return True


def before_wait(reactor: Any, hook: Callable[[], None]) -> bool:
    """
    Call ``hook`` every time ``reactor`` is about to wait for events, if it is
    gatekeep's event loop (True); anything else is left alone (False). What a turn
    of the reactor left to do in bulk (gatekeep.logbatch: its log lines) is done
    there, before the process may sleep.
    """
    if type(reactor) is not CoalescingEPollReactor:
        return False
    reactor._before_wait = (*reactor._before_wait, hook)
    return True
