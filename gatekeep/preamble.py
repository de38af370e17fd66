"""
Receiving the PROXY protocol: who may send it, and what the chain does with it.

The spec's security rule is that a receiver never guesses whether a header is
there. Here a listener says ``off``, ``required`` or ``optional``; a header is only
ever honoured from ``trusted_proxies``:

- ``required``: a trusted peer must start with a valid header; anyone else is
  refused on accept.
- ``optional``: a trusted peer may start with a header (or not: a health check or
  a local client); from anyone else, bytes starting with a PROXY signature are
  refused (a client trying to forge its address), other bytes are the client's.

The signatures (``PROXY``, v2's 12 bytes) cannot start TLS, HTTP, XMPP or SSH, so
"optional" never takes a real protocol for a header or the reverse.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable
from typing import Literal

import attrs
from twisted.internet.address import IPv4Address, IPv6Address, UNIXAddress
from twisted.internet.interfaces import IAddress

from gatekeep.proxyproto import (
    Family,
    Incomplete,
    InetAddress,
    Invalid,
    NotProxy,
    ProxyHeader,
    UnixAddress,
    has_signature,
    parse,
)

__all__ = [
    "Done",
    "ProxyMode",
    "ProxyPolicy",
    "Refuse",
    "Waiting",
    "endpoints_from",
    "plain_ip",
    "step",
]

ProxyMode = Literal["off", "optional", "required"]
Network = ipaddress.IPv4Network | ipaddress.IPv6Network

#: The ``trusted_proxies`` entry that trusts every peer of a UNIX socket listener
#: (who may connect is then up to the socket file's permissions).
UNIX_PEERS = "unix"


def plain_ip(host: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    """An address as :mod:`ipaddress` sees it, IPv4-mapped IPv6 as IPv4, no scope."""
    try:
        ip = ipaddress.ip_address(host.partition("%")[0])
    except ValueError:
        return None
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    return ip


@attrs.frozen
class ProxyPolicy:
    """A listener's ``proxy_protocol`` and ``trusted_proxies``."""

    mode: ProxyMode = "off"
    trusted: tuple[Network, ...] = ()
    trust_unix: bool = False

    @classmethod
    def from_settings(cls, mode: ProxyMode, entries: Iterable[str]) -> ProxyPolicy:
        networks = tuple(ipaddress.ip_network(e) for e in entries if e != UNIX_PEERS)
        return cls(mode, networks, UNIX_PEERS in entries)

    def trusts(self, peer: IAddress | object) -> bool:
        if isinstance(peer, UNIXAddress):
            return self.trust_unix
        if not isinstance(peer, IPv4Address | IPv6Address):
            return False
        ip = plain_ip(peer.host)
        return ip is not None and any(ip in network for network in self.trusted)


@attrs.frozen
class Waiting:
    """More bytes are needed before the preamble is decided."""


@attrs.frozen
class Done:
    """The preamble is over: ``consumed`` bytes were a header (``header``), or none."""

    header: ProxyHeader | None
    consumed: int


@attrs.frozen
class Refuse:
    """Close the connection; ``reason`` is what its log line says."""

    reason: str
    #: For ``gatekeep_refusals_total``: a fixed word, never the client's bytes.
    metric: str
    signature: bool = True


Step = Waiting | Done | Refuse


def step(mode: ProxyMode, trusted: bool, buffered: bytes, final: str | None) -> Step:
    """
    Decide the preamble from the bytes so far.

    ``final`` is None while more bytes may come, else why none will (e.g. "the
    detect_timeout passed"), which then ends up in the refusal reason.
    """
    if not trusted:
        signature = has_signature(buffered)
        if signature:
            return Refuse("PROXY header from an untrusted source", "proxy_untrusted")
        if signature is None and final is None:
            return Waiting()
        return Done(None, 0)
    result = parse(buffered)
    if isinstance(result, ProxyHeader):
        return Done(result, result.length)
    if isinstance(result, Invalid):
        return Refuse(f"malformed PROXY header: {result.reason}", "proxy_malformed")
    if isinstance(result, NotProxy) or (final is not None and not has_signature(buffered)):
        if mode == "required":
            return Refuse("no PROXY header (required on this listener)"
                          + (f"; {final}" if final and not buffered else ""),
                          "proxy_missing", signature=False)
        return Done(None, 0)
    assert isinstance(result, Incomplete)
    if final is not None:
        return Refuse(f"incomplete PROXY header: {final}", "proxy_incomplete")
    return Waiting()


def _twisted(address: InetAddress | UnixAddress | None) -> IAddress | None:
    if isinstance(address, InetAddress):
        host = str(address.host)
        if address.host.version == 4:
            return IPv4Address("TCP", host, address.port)
        return IPv6Address("TCP", host, address.port)
    if isinstance(address, UnixAddress):
        return UNIXAddress(address.path or None)
    return None


def endpoints_from(
    header: ProxyHeader | None, peer: IAddress, host: IAddress,
) -> tuple[IAddress, IAddress]:
    """
    The (client, server) a connection is taken to be between after its preamble.

    A PROXY command for a stream family replaces both; LOCAL, UNSPEC/UNKNOWN and
    datagram families (which a TCP connection cannot be) keep the real endpoints,
    as the spec requires.
    """
    if header is None or not header.relayed or header.family not in (
            Family.TCP4, Family.TCP6, Family.UNIX_STREAM):
        return peer, host
    client, server = _twisted(header.source), _twisted(header.destination)
    assert client is not None and server is not None
    return client, server
