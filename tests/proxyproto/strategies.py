"""Hypothesis strategies for PROXY headers of every family, with any TLV set."""

from __future__ import annotations

import ipaddress

from hypothesis import strategies as st

from gatekeep.proxyproto import TLV, Command, Family, InetAddress, ProxyHeader, UnixAddress
from gatekeep.proxyproto import tlv as t
from gatekeep.proxyproto.model import Address

ports = st.integers(0, 0xFFFF)
ipv4 = st.builds(ipaddress.IPv4Address, st.integers(0, 2**32 - 1))
ipv6 = st.builds(ipaddress.IPv6Address, st.integers(0, 2**128 - 1))
unix = st.builds(UnixAddress, st.binary(max_size=108).map(lambda p: p.rstrip(b"\x00")))
text = st.text(st.characters(codec="utf-8", exclude_categories=["Cs"]), min_size=1,
               max_size=40)

ssl_info = st.builds(
    t.SSLInfo, st.integers(0, 7), st.integers(0, 2**32 - 1),
    version=st.none() | text, cn=st.none() | text, cipher=st.none() | text,
    sig_alg=st.none() | text, key_alg=st.none() | text,
    other=st.lists(st.builds(TLV, st.integers(0x26, 0xFF), st.binary(max_size=20)),
                   max_size=2).map(tuple))

registered_tlv = st.one_of(
    st.builds(TLV, st.just(t.ALPN), st.binary(min_size=1, max_size=20)),
    st.builds(TLV, st.just(t.AUTHORITY), text.map(lambda s: s.encode())),
    st.builds(TLV, st.just(t.NOOP), st.binary(max_size=10)),
    st.builds(TLV, st.just(t.UNIQUE_ID), st.binary(min_size=1, max_size=128)),
    st.builds(TLV, st.just(t.SSL), ssl_info.map(lambda i: i.encode())),
    st.builds(TLV, st.just(t.NETNS), text.map(lambda s: s.encode())),
    st.builds(TLV, st.sampled_from([0x06, 0x31, 0xE0, 0xEA, 0xF0, 0xFF]),
              st.binary(max_size=30)),
)


@st.composite
def tlv_sets(draw: st.DrawFn) -> tuple[TLV, ...]:
    entries = draw(st.lists(registered_tlv, max_size=6))
    if draw(st.booleans()):
        entries.insert(draw(st.integers(0, len(entries))), TLV(t.CRC32C, bytes(4)))
    return tuple(entries)


def _addresses(family: Family) -> st.SearchStrategy[tuple[Address | None, Address | None]]:
    if family in (Family.TCP4, Family.UDP4):
        one: st.SearchStrategy[Address] = st.builds(InetAddress, ipv4, ports)
    elif family in (Family.TCP6, Family.UDP6):
        one = st.builds(InetAddress, ipv6, ports)
    elif family in (Family.UNIX_STREAM, Family.UNIX_DGRAM):
        one = unix
    else:
        return st.just((None, None))
    return st.tuples(one, one)


@st.composite
def v2_headers(draw: st.DrawFn) -> ProxyHeader:
    if draw(st.integers(0, 9)) == 0:
        return ProxyHeader(2, Command.LOCAL, Family.UNSPEC)
    family = draw(st.sampled_from(list(Family)))
    source, destination = draw(_addresses(family))
    return ProxyHeader(2, Command.PROXY, family, source, destination, draw(tlv_sets()))


@st.composite
def v1_headers(draw: st.DrawFn) -> ProxyHeader:
    family = draw(st.sampled_from([Family.TCP4, Family.TCP6, Family.UNSPEC]))
    source, destination = draw(_addresses(family))
    return ProxyHeader(1, Command.PROXY, family, source, destination)


headers = st.one_of(v1_headers(), v2_headers())


def without_checksum_values(header: ProxyHeader) -> ProxyHeader:
    """The builder computes CRC32C values: compare headers with them zeroed."""
    import attrs

    entries = tuple(TLV(e.type, bytes(4)) if e.type == t.CRC32C else e for e in header.tlvs)
    return attrs.evolve(header, tlvs=entries)
