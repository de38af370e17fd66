"""
A ``tcp:`` backend connected with a bare non-blocking socket, for relays that splice.

When a ``forward`` relay will take the splice fast path anyway (Linux, the client a
plain socket, an IPv4 literal backend, no shaper: :func:`gatekeep.splice.enabled`),
the backend's Twisted transport would never carry a byte: :mod:`gatekeep.splice`
takes its socket as soon as it connects. So the backend is connected directly
(:class:`RawConnect`: one ``connect`` and one ``SO_ERROR`` check, watched by the
reactor as a plain descriptor) and handed over as a :class:`RawBackend`, which
offers the relay and the splicer just what they use of a transport. Compared with
``reactor.connectTCP`` this leaves out, per connection, the connector and its
resolution turn (a ``callLater(0)``), the client transport and its address objects,
the second ``connect`` Twisted makes to check the first, the protocol, a turn of
the reactor before splicing starts, and the transport's own teardown.

Errors are reported as ``connectTCP`` reports them (the same exception types and
messages), so close reasons, metrics and logs are the same on both paths.
"""

from __future__ import annotations

import errno
import os
import socket
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from twisted.internet import error
from twisted.internet.address import IPv4Address
from twisted.internet.interfaces import IReadWriteDescriptor
from twisted.internet.protocol import connectionDone
from twisted.python.failure import Failure
from zope.interface import implementer

if TYPE_CHECKING:
    from gatekeep.relay import Relay

__all__ = ["RawBackend", "RawConnect"]

# Linux makes a socket non-blocking (and close-on-exec) as it creates it.
_NONBLOCK = getattr(socket, "SOCK_NONBLOCK", 0) | getattr(socket, "SOCK_CLOEXEC", 0)
_STREAM = socket.SOCK_STREAM | _NONBLOCK
_UNDER_WAY = (0, errno.EINPROGRESS, errno.EWOULDBLOCK, errno.EAGAIN, errno.EINTR)


def _connect_error(code: int) -> Failure:
    """The failure ``connectTCP`` reports for the ``connect`` error ``code``."""
    return Failure(error.getConnectError((code, os.strerror(code))))


def _connected(sock: socket.socket) -> bool:
    """Whether a non-blocking connect has completed (and not failed)."""
    try:
        sock.getpeername()
    except OSError:
        return False
    return True


class RawBackend:
    """
    The connected backend socket: what :class:`~gatekeep.relay.Relay` and
    :class:`~gatekeep.splice.Splicer` use of a transport. It is always spliced
    (:attr:`spliced_only`); closing it closes the socket (nothing is ever buffered
    in user space for it) and tells the relay, as a transport's ``connectionLost``
    would.
    """

    __slots__ = ("connected", "disconnected", "disconnecting", "host", "port", "relay",
                 "socket")

    #: The relay must splice this backend: it has no user-space write path.
    spliced_only = True

    def __init__(self, sock: socket.socket, relay: Relay, host: str, port: int) -> None:
        self.socket = sock
        self.relay = relay
        self.host = host
        self.port = port
        self.connected = True
        self.disconnecting = False
        self.disconnected = False

    def getPeer(self) -> IPv4Address:
        return IPv4Address("TCP", self.host, self.port)

    def getHost(self) -> IPv4Address:
        host, port = self.socket.getsockname()[:2]
        return IPv4Address("TCP", host, port)

    def loseConnection(self) -> None:
        self.connectionLost(connectionDone)

    def abortConnection(self) -> None:
        self.connectionLost(Failure(error.ConnectionAborted()))

    def unregisterProducer(self) -> None:
        pass

    def connectionLost(self, reason: Failure) -> None:
        if self.disconnected:
            return
        relay = self.relay
        if relay.splicer is not None:
            relay.splicer.abandon()  # the reactor stops watching the socket first
        self.disconnected = True
        self.connected = False
        self.socket.close()
        relay.backend_lost(reason)


@implementer(IReadWriteDescriptor)
class RawConnect:
    """
    One non-blocking ``connect`` to ``host:port`` (an IPv4 literal), watched for
    writability; then ``joined(RawBackend)`` or ``failed(Failure)``, exactly once.
    """

    __slots__ = ("done", "failed", "fd", "host", "joined", "port", "reactor", "ready",
                 "relay", "sock", "wrap")

    def __init__(self, reactor: Any, relay: Relay, host: str, port: int,
                 joined: Callable[[Any], None],
                 failed: Callable[[Failure], None],
                 wrap: Callable[[socket.socket], Any] | None = None) -> None:
        self.reactor = reactor
        #: Makes the connected socket what ``joined`` gets (default: a RawBackend).
        self.wrap = wrap
        self.relay = relay
        self.host = host
        self.port = port
        self.joined = joined
        self.failed = failed
        self.done = False
        #: Connected by ``connect`` itself; :meth:`finish` hands it over.
        self.ready = False
        self.sock: socket.socket | None = None
        self.fd = -1

    def start(self, finish_soon: bool = False) -> None:
        """
        Start connecting. With ``finish_soon`` the caller promises to call
        :meth:`finish` before returning to the reactor: a connect that completed
        within the ``connect`` call (a loopback backend does) is then not watched at
        all (:attr:`ready`), and ``finish`` hands it over.
        """
        try:
            sock = socket.socket(socket.AF_INET, _STREAM)
        except OSError as problem:
            # Out of descriptors, typically: reported as connectTCP reports it, from
            # the reactor and not from this call.
            self.done = True
            self.reactor.callLater(0, self.failed, Failure(
                error.ConnectBindError(problem.errno, problem.strerror)))
            return
        self.sock = sock
        self.fd = sock.fileno()
        if not _NONBLOCK:
            sock.setblocking(False)
        code = sock.connect_ex((self.host, self.port))
        if code in _UNDER_WAY:
            if finish_soon and _connected(sock):
                self.ready = True
                return
            self.reactor.addWriter(self)
        else:
            # As connectTCP: the failure arrives from the reactor, not from this call.
            self.done = True
            sock.close()
            self.reactor.callLater(0, self.failed, _connect_error(code))

    def finish(self) -> None:
        """If the connect is :attr:`ready`, hand the connection over now."""
        if self.ready and not self.done:
            self.done = True
            assert self.sock is not None
            self.joined(self._backend(self.sock))

    # IReadWriteDescriptor

    def fileno(self) -> int:
        return self.fd

    def logPrefix(self) -> str:
        return "RawConnect"

    def doRead(self) -> None:
        pass  # never registered for reading

    def doWrite(self) -> None:
        if self.done:
            return
        self._settle(None)

    def _backend(self, sock: socket.socket) -> Any:
        if self.wrap is not None:
            return self.wrap(sock)
        return RawBackend(sock, self.relay, self.host, self.port)

    def connectionLost(self, reason: Failure) -> None:
        # The reactor gave up on the descriptor: epoll reported an error or hang-up
        # (a refused or unreachable connect: SO_ERROR says which), or it is shutting down.
        if self.done:
            return
        self._settle(reason)

    def _settle(self, lost: Failure | None) -> None:
        """
        The connect's outcome, once the reactor reported the socket: SO_ERROR says
        whether it failed; else it is connected, unless the reactor gave up on it
        (``lost``: a hang-up without an error, or the reactor shutting down).
        """
        self.done = True
        self.reactor.removeWriter(self)
        sock = self.sock
        assert sock is not None  # watched only once connecting
        code = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
        failure = _connect_error(code) if code else lost
        if failure is not None:
            sock.close()
            self.failed(failure)
            return
        self.joined(self._backend(sock))

    def cancel(self) -> None:
        """Stop connecting: fails with ``ConnectingCancelledError``, as an endpoint's."""
        if self.done:
            return
        self.done = True
        self.reactor.removeWriter(self)
        if self.sock is not None:
            self.sock.close()
        self.failed(Failure(error.ConnectingCancelledError(
            IPv4Address("TCP", self.host, self.port))))
