"""
The transport of an accepted TCP connection, made with less work per connection.

Twisted's :class:`~twisted.internet.tcp.Server` formats two strings as it is made
(the log prefix and the ``repr``), asking the protocol for its prefix on the way,
for every connection; gatekeep's listeners make :class:`AcceptedServer` instead,
which makes them only when asked, and reads and closes with a few calls less.
Everything else is Twisted's.
"""

from __future__ import annotations

import functools
from errno import EWOULDBLOCK
from typing import Any

from twisted.internet import abstract, address, error, main, tcp
from twisted.python.failure import Failure

__all__ = ["AcceptedServer", "use_for"]


class AcceptedServer(tcp.Server):
    """``tcp.Server``, with its log prefix and ``repr`` made on first use."""

    def __init__(self, sock: Any, protocol: Any, client: tuple[Any, ...], server: Any,
                 sessionno: int, reactor: Any) -> None:
        tcp.Connection.__init__(self, sock, protocol, reactor)
        if len(client) != 2:
            self._addressType = address.IPv6Address
        self.server = server
        self.client = client
        self.sessionno = sessionno
        self.hostname = client[0]
        reactor.addReader(self)  # (what startReading does)
        self.connected = 1

    def doRead(self) -> Any:
        # Connection.doRead and its _dataReceived in one: a call less per read.
        try:
            data = self.socket.recv(self.bufferSize)
        except OSError as problem:
            return None if problem.errno == EWOULDBLOCK else main.CONNECTION_LOST
        if not data:
            return main.CONNECTION_DONE
        self.protocol.dataReceived(data)
        return None

    def connectionLost(self, reason: Failure) -> None:
        # Connection.connectionLost, asking the reason's type directly (Failure.check
        # makes the qualified names of the classes it is given, on every call).
        if not hasattr(self, "socket"):
            return  # lost already (abortConnection, then an error)
        abstract.FileDescriptor.connectionLost(self, reason)
        self._closeSocket(not isinstance(reason.value, error.ConnectionAborted))
        protocol = self.protocol
        del self.protocol, self.socket, self.fileno
        protocol.connectionLost(reason)

    @functools.cached_property
    def logstr(self) -> str:  # type: ignore[override]
        prefix = abstract.FileDescriptor._getLogPrefix(self, self.protocol)
        return f"{prefix},{self.sessionno},{self.hostname}"

    @functools.cached_property
    def repstr(self) -> str:  # type: ignore[override]
        return (f"<{self.protocol.__class__.__name__} #{self.sessionno} on "
                f"{self.server._realPortNumber}>")


def use_for(port: Any) -> None:
    """Make ``port`` (a listening ``tcp.Port``) accept into :class:`AcceptedServer`."""
    if type(port) is tcp.Port and port.transport is tcp.Server:
        port.transport = AcceptedServer
