"""
The PROXY header ``forward`` sends before the client's bytes.

It describes the connection as gatekeep knows it: the real client (a trusted
proxy's header already replaced the peer in :attr:`Inbound.client`) and the
address it connected to. IPv4-mapped IPv6 addresses are sent as IPv4, as a
backend would see them from a direct IPv4 client.

TLVs (v2) come from the best source there is: the TLS session when gatekeep
terminated TLS, the ClientHello on passthrough (its first ALPN offered and its
SNI, exact copies), and otherwise what a trusted proxy in front told us.
"""

from __future__ import annotations

import ipaddress
import uuid
from typing import Any, Final

from twisted.internet.address import IPv4Address, IPv6Address, UNIXAddress
from twisted.internet.interfaces import IAddress

from gatekeep.detectors._clienthello import ClientHello, parse_client_hello
from gatekeep.detectors.tls import TLSDetector, host_name
from gatekeep.preamble import plain_ip
from gatekeep.proxyproto import (
    TLV,
    Address,
    Command,
    Family,
    InetAddress,
    ProxyHeader,
    SSLInfo,
    UnixAddress,
    build,
)
from gatekeep.proxyproto import tlv as t
from gatekeep.values import Inbound

__all__ = ["TLV_NAMES", "outgoing_header", "proxy_address", "tls_session_ssl"]

#: ``proxy_tlvs`` names, in the order the TLVs are written.
TLV_NAMES: Final = ("alpn", "authority", "ssl", "unique_id", "crc32c")


def proxy_address(address: IAddress | object | None) -> Address | None:
    if isinstance(address, IPv4Address | IPv6Address):
        ip = plain_ip(address.host)
        return None if ip is None else InetAddress(ip, address.port)
    if isinstance(address, UNIXAddress):
        name: Any = address.name or b""  # bytes, though some code passes str
        if isinstance(name, str):
            name = name.encode("utf-8", "surrogateescape")
        return UnixAddress(name)
    return None


def _as_ipv6(address: InetAddress) -> InetAddress:
    if address.host.version == 6:
        return address
    return InetAddress(ipaddress.IPv6Address(f"::ffff:{address.host}"), address.port)


def _addresses(inbound: Inbound) -> tuple[Family, Address | None, Address | None]:
    source, destination = proxy_address(inbound.client), proxy_address(inbound.server)
    if isinstance(source, InetAddress):
        if not isinstance(destination, InetAddress):
            # The client's address is what matters; say nothing false about the server.
            unspecified = "0.0.0.0" if source.host.version == 4 else "::"
            destination = InetAddress(ipaddress.ip_address(unspecified), 0)
        if source.host.version != destination.host.version:
            source, destination = _as_ipv6(source), _as_ipv6(destination)
        return (Family.TCP4 if source.host.version == 4 else Family.TCP6), source, destination
    if isinstance(source, UnixAddress) and isinstance(destination, UnixAddress):
        return Family.UNIX_STREAM, source, destination
    return Family.UNSPEC, None, None


def _tls_connection(inbound: Inbound) -> Any:
    """
    The OpenSSL connection when gatekeep itself terminated the client's TLS.

    Any transport whose ``getHandle()`` is a pyOpenSSL connection counts (Twisted's
    ISSLTransport ones, and ``terminate``'s own); a TCP transport's handle is a socket.
    """
    from OpenSSL import SSL

    get_handle = getattr(inbound.transport, "getHandle", None)
    if get_handle is None:
        return None
    handle = get_handle()
    return handle if isinstance(handle, SSL.Connection) else None


def _client_hello(inbound: Inbound) -> ClientHello | None:
    if inbound.detector != "tls":
        return None
    hello = parse_client_hello(inbound.prefix, TLSDetector.max_prefix)
    return hello if isinstance(hello, ClientHello) else None


def tls_session_ssl(connection: Any) -> SSLInfo:
    """The SSL TLV for a TLS session gatekeep terminated (a pyOpenSSL connection)."""
    from cryptography.x509.oid import NameOID
    from OpenSSL import SSL

    certificate = connection.get_peer_certificate(as_cryptography=True)
    client = t.CLIENT_SSL
    verified = False
    common_name = None
    if certificate is not None:
        client |= t.CLIENT_CERT_CONN | t.CLIENT_CERT_SESS
        # A certificate only gets this far unverified when the context did not ask
        # for verification.
        verified = bool(connection.get_context().get_verify_mode() & SSL.VERIFY_PEER)
        names = certificate.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
        common_name = str(names[0].value) if names else None
    return SSLInfo(client, 0 if verified else 1, version=connection.get_protocol_version_name(),
                   cn=common_name, cipher=connection.get_cipher_name())


def _tlv(name: str, inbound: Inbound, tls: Any, hello: ClientHello | None) -> TLV | None:
    received = inbound.proxy
    if name == "alpn":
        value = tls.get_alpn_proto_negotiated() if tls is not None else None
        if not value and hello is not None and hello.alpn:
            value = hello.alpn[0]
        if not value and received is not None:
            value = received.tlv(t.ALPN)
        return TLV(t.ALPN, value) if value else None
    if name == "authority":
        value = tls.get_servername() if tls is not None else None
        if not value and hello is not None and hello.server_name is not None \
                and host_name(hello.server_name) is not None:
            value = hello.server_name
        if not value and received is not None:
            value = received.tlv(t.AUTHORITY)
        return TLV(t.AUTHORITY, value) if value else None
    if name == "ssl":
        if tls is not None:
            return TLV(t.SSL, tls_session_ssl(tls).encode())
        value = received.tlv(t.SSL) if received is not None else None
        return TLV(t.SSL, value) if value else None
    if name == "unique_id":
        value = received.tlv(t.UNIQUE_ID) if received is not None else None
        if value is None:
            value = uuid.uuid4().hex.encode("ascii")
        inbound.record.facts = {**inbound.record.facts,
                                "unique_id": value.decode("ascii", "backslashreplace")}
        return TLV(t.UNIQUE_ID, value)
    assert name == "crc32c"
    return TLV(t.CRC32C, bytes(4))  # the builder computes it over the whole header


def outgoing_header(inbound: Inbound, version: int, tlv_names: tuple[str, ...] = ()) -> bytes:
    """The PROXY v1 or v2 header for ``inbound``'s backend connection."""
    family, source, destination = _addresses(inbound)
    if version == 1:
        if family is Family.UNIX_STREAM:
            family, source, destination = Family.UNSPEC, None, None
        return build(ProxyHeader(1, Command.PROXY, family, source, destination))
    tls = _tls_connection(inbound) if tlv_names else None
    hello = _client_hello(inbound) if {"alpn", "authority"} & set(tlv_names) else None
    entries = [_tlv(name, inbound, tls, hello) for name in TLV_NAMES if name in tlv_names]
    return build(ProxyHeader(2, Command.PROXY, family, source, destination,
                             tuple(e for e in entries if e is not None)))
