"""
Transparent forwarding: connect to the backend *from the client's own address*.

For backends that speak no PROXY protocol. Linux lets a socket with
``IP_TRANSPARENT`` (``IPV6_TRANSPARENT``) bind an address that is not local, as
HAProxy's ``usesrc clientip`` and sslh's ``transparent`` do; the kernel picks the
port. It needs CAP_NET_ADMIN, and routing that brings the backend's replies (sent
to the client's address) back to this host's socket instead of out towards the
client: see docs/recipes/transparent.md.

Twisted's TCP endpoints cannot set a socket option before ``bind``, so this
endpoint makes the non-blocking connect itself, watches for writability on the
reactor, and makes the connected socket a Twisted TCP transport (as
``IReactorSocket.adoptStreamConnection`` would, but without duplicating it).
"""

from __future__ import annotations

import errno
import ipaddress
import os
import socket
from typing import Any, Final

import attrs
from twisted.internet import defer, error, tcp
from twisted.internet.address import IPv4Address, IPv6Address
from twisted.internet.interfaces import IProtocol, IProtocolFactory, IStreamClientEndpoint
from twisted.python.failure import Failure
from zope.interface import implementer

__all__ = ["TransparentEndpoint", "parse_tcp_destination"]

_IP_TRANSPARENT: Final = getattr(socket, "IP_TRANSPARENT", 19)
_IPV6_TRANSPARENT: Final = 75  # linux/in6.h; not exported by the socket module

IP = ipaddress.IPv4Address | ipaddress.IPv6Address


def _split(description: str) -> list[str]:
    r"""Split an endpoint string on ``:``, honouring ``\:`` escapes."""
    parts, current, escaped = [], "", False
    for char in description:
        if escaped:
            current += char
            escaped = False
        elif char == "\\":
            escaped = True
        elif char == ":":
            parts.append(current)
            current = ""
        else:
            current += char
    parts.append(current)
    return parts


def parse_tcp_destination(description: str) -> tuple[IP, int]:
    """
    The backend of a ``tcp:HOST:PORT`` (or ``tcp:host=..:port=..``) endpoint string.

    Raises ValueError unless HOST is an IP address literal: the source address has
    to be of the same family, and name resolution per connection would be a
    blocking surprise.
    """
    kind, *args = _split(description)
    if kind not in ("tcp", "tcp6"):
        raise ValueError(f"transparent mode needs a tcp: backend, not {kind}:")
    positional = [a for a in args if "=" not in a]
    named = dict(a.split("=", 1) for a in args if "=" in a)
    host = named.get("host", positional[0] if positional else "")
    port = named.get("port", positional[1] if len(positional) > 1 else "")
    try:
        return ipaddress.ip_address(host), int(port)
    except ValueError:
        raise ValueError(f"transparent mode needs an IP address and a port as the backend "
                         f"(tcp:192.0.2.10:8080 or 'tcp:host=2001\\:db8\\:\\:10:port=8080'), "
                         f"not {host!r}") from None


@implementer(IStreamClientEndpoint)
@attrs.frozen
class TransparentEndpoint:
    """
    Connects to ``host:port`` from ``source`` (any port), with IP_TRANSPARENT.

    ``source`` is None when the client has no IP address (a UNIX socket listener):
    the connection then fails, saying so.
    """

    reactor: Any
    host: IP
    port: int
    source: IP | None

    def connect(self, factory: IProtocolFactory) -> defer.Deferred[IProtocol]:
        if self.source is None:
            return defer.fail(error.ConnectError(
                string="transparent: the client has no IP address to connect from"))
        if self.source.version != self.host.version:
            return defer.fail(error.ConnectError(
                string=f"transparent: the client is IPv{self.source.version} but the backend "
                       f"is IPv{self.host.version}"))
        family = socket.AF_INET if self.host.version == 4 else socket.AF_INET6
        sock = socket.socket(family, socket.SOCK_STREAM)
        try:
            if family == socket.AF_INET:
                sock.setsockopt(socket.SOL_IP, _IP_TRANSPARENT, 1)
            else:
                sock.setsockopt(socket.IPPROTO_IPV6, _IPV6_TRANSPARENT, 1)
            sock.setblocking(False)
            sock.bind((str(self.source), 0))
            code = sock.connect_ex((str(self.host), self.port))
        except OSError as failure:
            sock.close()
            hint = " (IP_TRANSPARENT needs CAP_NET_ADMIN)" if failure.errno == errno.EPERM else ""
            return defer.fail(error.ConnectError(string=f"transparent: {failure}{hint}"))
        if code not in (0, errno.EINPROGRESS):
            sock.close()
            return defer.fail(error.getConnectError((code, os.strerror(code))))
        attempt = _Attempt(self.reactor, sock, family, factory)
        self.reactor.addWriter(attempt)
        return attempt.deferred


class _Attempt:
    """One non-blocking connect, watched by the reactor until it completes."""

    def __init__(self, reactor: Any, sock: socket.socket, family: int,
                 factory: IProtocolFactory) -> None:
        self.reactor = reactor
        self.sock: socket.socket | None = sock
        self.family = family
        self.factory = factory
        self.deferred: defer.Deferred[IProtocol] = defer.Deferred(self._cancel)

    def fileno(self) -> int:
        return self.sock.fileno() if self.sock is not None else -1

    def logPrefix(self) -> str:
        return "TransparentConnect"

    def doWrite(self) -> None:
        sock = self.sock
        if sock is None:
            return
        self.reactor.removeWriter(self)
        code = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
        if code:
            self.sock = None
            sock.close()
            self.deferred.errback(Failure(error.getConnectError((code, os.strerror(code)))))
            return
        try:
            peer = sock.getpeername()
        except OSError as failure:  # reset already: the peer is gone
            self.sock = None
            sock.close()
            self.deferred.errback(Failure(error.getConnectError(failure)))
            return
        kind = IPv4Address if self.family == socket.AF_INET else IPv6Address
        protocol = self.factory.buildProtocol(kind("TCP", *peer))
        if protocol is None:
            self.sock = None
            sock.close()
            self.deferred.errback(Failure(error.ConnectError(string="the factory refused")))
            return
        # The connection takes this socket itself, as it is (what adoptStreamConnection
        # would make, but from a duplicate: on gatekeep's event loop, this socket's
        # number, closed with epoll still watching it for the duplicate, would stay
        # registered and report the connection writable on every turn).
        transport = tcp.Server(sock, protocol, peer, None, peer[1],  # type: ignore[arg-type]
                               self.reactor)  # no listening port, as adopted ones
        transport.repstr = f"<{type(protocol).__name__} #{peer[1]} on {sock.getsockname()[1]}>"
        self.sock = None  # only now: the event loop saw the socket change hands
        protocol.makeConnection(transport)
        self.deferred.callback(protocol)

    def connectionLost(self, reason: Failure) -> None:
        # The reactor reports a failed connect (EPOLLERR/HUP) here, not to doWrite.
        sock = self.sock
        if sock is None:
            return
        code = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
        self._close()
        if code:
            reason = Failure(error.getConnectError((code, os.strerror(code))))
        if not self.deferred.called:
            self.deferred.errback(reason)

    def _close(self) -> None:
        if self.sock is not None:
            self.reactor.removeWriter(self)
            self.sock.close()
            self.sock = None

    def _cancel(self, deferred: defer.Deferred[IProtocol]) -> None:
        self._close()
        deferred.errback(Failure(error.ConnectingCancelledError(None)))
