"""
The client's bytes from a packet capture, so ``gatekeep explain`` can take what tcpdump
or Wireshark saw of a connection that was routed wrongly.

Standard library only: ``explain`` needs one direction of one TCP connection, not a
dissector, and a file from a bug report must not reach a large parser's attack surface.
Whatever the input, the only exception is :class:`ValueError`; what was read but not
used (fragments, bytes after a gap) is told as a :class:`CaptureWarning`.

Reads classic pcap (either byte order, micro- or nanosecond) and pcapng (each section
in its own byte order; enhanced, simple and obsolete packet blocks). Link types:
Ethernet with 802.1Q/802.1ad tags (1), raw IP (101, and 12 and 14, which old files use
for raw IP), Linux cooked SLL (113) and SLL2 (276), BSD loopback NULL (0) and LOOP (108).
"""

from __future__ import annotations

import struct
import warnings
from collections import Counter
from collections.abc import Iterator
from collections.abc import Set as AbstractSet
from dataclasses import dataclass, field
from typing import NamedTuple

__all__ = ["CaptureWarning", "client_payload", "is_capture"]

_PCAP_MAGIC = {
    b"\xa1\xb2\xc3\xd4": ">", b"\xd4\xc3\xb2\xa1": "<",  # microsecond
    b"\xa1\xb2\x3c\x4d": ">", b"\x4d\x3c\xb2\xa1": "<",  # nanosecond
}
_SHB = b"\x0a\x0d\x0d\x0a"
_PCAPNG_ORDER = {b"\x1a\x2b\x3c\x4d": ">", b"\x4d\x3c\x2b\x1a": "<"}

_ETHERNET, _SLL, _SLL2 = 1, 113, 276
_LOOPBACK = (0, 108)  # a 4-byte address family; the IP version nibble says more
_RAW = (101, 12, 14)
_SUPPORTED = frozenset((_ETHERNET, _SLL, _SLL2, *_LOOPBACK, *_RAW))
_IP_ETHERTYPES = (0x0800, 0x86DD)
_VLAN_ETHERTYPES = (0x8100, 0x88A8, 0x9100)
_IPV6_SKIPPED_HEADERS = (0, 43, 60)  # hop-by-hop, routing, destination options
_SYN, _ACK = 0x02, 0x10
_SEQ_MOD = 1 << 32

_Endpoint = tuple[bytes, int]


class CaptureWarning(UserWarning):
    """Part of the capture was left out, so the payload may be shorter than what was sent."""


class _Segment(NamedTuple):
    src: _Endpoint
    dst: _Endpoint
    seq: int
    ack: int
    flags: int
    payload: bytes


@dataclass
class _Connection:
    """One TCP connection; ``start`` is the sequence number of the client's first byte."""

    client: _Endpoint
    server: _Endpoint
    start: int
    segments: list[tuple[int, bytes]] = field(default_factory=list)


def is_capture(data: bytes) -> bool:
    """
    Whether ``data`` is a pcap or pcapng file rather than raw client bytes.

    pcapng needs its byte-order magic too: the block type alone is ``\\n\\r\\r\\n``,
    which a text protocol's client could plausibly send first.
    """
    head = bytes(data[:12])
    return head[:4] in _PCAP_MAGIC or (head[:4] == _SHB and head[8:12] in _PCAPNG_ORDER)


def client_payload(data: bytes, *, connection: int = 0) -> bytes:
    """
    What the client of the ``connection``-th TCP connection sent, in order.

    Connections are numbered in the order they first appear. The client is the side
    that sent the SYN (or did not send the SYN-ACK); a connection already open when the
    capture started is taken from its first packet with payload, whose sender is taken
    for the client. The stream is rebuilt by sequence number, so reordered, repeated and
    overlapping segments (``-i any`` may see each packet twice) give each byte once; it
    stops at the first gap, since bytes after a hole would mislead detectors. Raises
    :class:`ValueError` for anything that cannot give an answer.
    """
    if not is_capture(data):
        raise ValueError("not a pcap or pcapng capture (no magic number at the start)")
    data = bytes(data)
    notes: Counter[str] = Counter()
    connections: list[_Connection] = []
    flows: dict[tuple[_Endpoint, _Endpoint], _Connection] = {}
    unsupported: set[int] = set()
    packets = 0
    for link_type, frame in _frames(data):
        packets += 1
        if link_type not in _SUPPORTED:
            unsupported.add(link_type)
            continue
        ip = _ip_packet(link_type, frame)
        segment = _tcp_segment(ip, notes) if ip else None
        if segment is not None:
            _track(segment, connections, flows)
    if unsupported:
        if not connections:
            raise ValueError(f"unsupported link type {_names(unsupported)}; "
                             f"supported: {_names(_SUPPORTED)}")
        notes[f"packets of unsupported link type {_names(unsupported)} (skipped)"] += 1
    if not connections:
        raise ValueError(f"no TCP connection in the capture ({packets} packets read)")
    if not 0 <= connection < len(connections):
        raise ValueError(f"connection {connection} is out of range: the capture has "
                         f"{len(connections)} TCP connection(s), numbered from 0")
    chosen = connections[connection]
    payload, beyond = _reassemble(chosen)
    if beyond:
        notes[f"stopped at a gap after byte {len(payload)} of the client's stream; "
              f"{beyond} later bytes not used"] += 1
    if notes:
        listed = "; ".join(f"{text} x{count}" if count > 1 else text
                           for text, count in sorted(notes.items()))
        warnings.warn(f"capture, connection {connection}: {listed}", CaptureWarning,
                      stacklevel=2)
    return payload


def _names(link_types: AbstractSet[int]) -> str:
    return ", ".join(str(n) for n in sorted(link_types))


def _frames(data: bytes) -> Iterator[tuple[int, bytes]]:
    """
    Each packet's link type and captured bytes, in file order.

    Not timestamp order: clocks of several interfaces need not agree, and reassembly
    goes by sequence number anyway.
    """
    if data[:4] == _SHB:
        yield from _pcapng_frames(data)
    else:
        yield from _pcap_frames(data)


def _pcap_frames(data: bytes) -> Iterator[tuple[int, bytes]]:
    """Classic pcap; the link type is checked up front since one type covers the file."""
    order = _PCAP_MAGIC[data[:4]]
    if len(data) < 24:
        raise ValueError(f"truncated pcap: the file header needs 24 bytes, got {len(data)}")
    # The upper bits of the link-type field carry FCS information, not the type.
    link_type = struct.unpack_from(order + "I", data, 20)[0] & 0xFFFF
    if link_type not in _SUPPORTED:
        raise ValueError(f"unsupported link type {link_type}; "
                         f"supported: {_names(_SUPPORTED)}")
    pos, number = 24, 0
    while pos < len(data):
        number += 1
        if len(data) - pos < 16:
            raise ValueError(f"truncated pcap: packet {number} at byte {pos} has only "
                             f"{len(data) - pos} of its 16-byte record header")
        caplen = struct.unpack_from(order + "I", data, pos + 8)[0]
        pos += 16
        if caplen > len(data) - pos:
            raise ValueError(f"truncated or corrupt pcap: packet {number} claims {caplen} "
                             f"bytes, {len(data) - pos} left in the file")
        yield link_type, data[pos:pos + caplen]
        pos += caplen


def _pcapng_frames(data: bytes) -> Iterator[tuple[int, bytes]]:
    """pcapng: blocks in the byte order of their section, interfaces numbered per section."""
    pos = 0
    order = ""  # set by the section header block, which is_capture saw first
    interfaces: list[tuple[int, int]] = []  # (link type, snap length)
    while pos < len(data):
        if len(data) - pos < 12:
            raise ValueError(f"truncated pcapng: {len(data) - pos} stray bytes at byte {pos}")
        if data[pos:pos + 4] == _SHB:
            if data[pos + 8:pos + 12] not in _PCAPNG_ORDER:
                raise ValueError(f"corrupt pcapng: bad byte-order magic in the section "
                                 f"header at byte {pos}")
            order = _PCAPNG_ORDER[data[pos + 8:pos + 12]]
            interfaces = []
        kind, length = struct.unpack_from(order + "II", data, pos)
        if length < 12 or length % 4 or length > len(data) - pos:
            raise ValueError(f"truncated or corrupt pcapng: block at byte {pos} claims "
                             f"{length} bytes, {len(data) - pos} left in the file")
        if struct.unpack_from(order + "I", data, pos + length - 4)[0] != length:
            raise ValueError(f"corrupt pcapng: block at byte {pos} has mismatched lengths")
        body = data[pos + 8:pos + length - 4]
        frame = _pcapng_packet(kind, body, order, interfaces, pos)
        if frame is not None:
            yield frame
        pos += length


def _pcapng_packet(kind: int, body: bytes, order: str, interfaces: list[tuple[int, int]],
                   pos: int) -> tuple[int, bytes] | None:
    """A packet block's link type and bytes; records interface blocks; ignores the rest."""
    if kind == 1:  # interface description
        if len(body) < 8:
            raise ValueError(f"corrupt pcapng: short interface block at byte {pos}")
        link_type, _, snaplen = struct.unpack_from(order + "HHI", body)
        interfaces.append((link_type, snaplen))
        return None
    if kind not in (2, 3, 6):
        return None
    header = 4 if kind == 3 else 20
    if len(body) < header:
        raise ValueError(f"corrupt pcapng: packet block at byte {pos} is too short")
    if kind == 6:  # enhanced packet
        interface, _, _, caplen, _ = struct.unpack_from(order + "IIIII", body)
    elif kind == 2:  # obsolete packet
        interface, _, _, _, caplen, _ = struct.unpack_from(order + "HHIIII", body)
    else:  # simple packet: interface 0; the length is implied, less the block's padding
        interface, original = 0, struct.unpack_from(order + "I", body)[0]
        snaplen = interfaces[0][1] if interfaces else 0
        caplen = min(original, len(body) - header, snaplen or original)
    if interface >= len(interfaces):
        raise ValueError(f"corrupt pcapng: packet block at byte {pos} names interface "
                         f"{interface}, but its section describes {len(interfaces)}")
    if caplen > len(body) - header:
        raise ValueError(f"corrupt pcapng: packet block at byte {pos} claims {caplen} "
                         f"bytes, holds {len(body) - header}")
    return interfaces[interface][0], body[header:header + caplen]


def _ip_packet(link_type: int, frame: bytes) -> bytes | None:
    """The IP packet inside a frame, or None for anything that is not IP."""
    if link_type == _ETHERNET:
        pos = 12
        while frame[pos:pos + 2] and int.from_bytes(frame[pos:pos + 2]) in _VLAN_ETHERTYPES:
            pos += 4
        ethertype, start = frame[pos:pos + 2], pos + 2
    elif link_type == _SLL:
        ethertype, start = frame[14:16], 16
    elif link_type == _SLL2:
        ethertype, start = frame[0:2], 20
    else:
        return frame[4:] if link_type in _LOOPBACK else frame
    if len(ethertype) < 2 or int.from_bytes(ethertype) not in _IP_ETHERTYPES:
        return None
    return frame[start:]


def _tcp_segment(packet: bytes, notes: Counter[str]) -> _Segment | None:
    """The TCP segment in an IP packet, or None (not TCP, unusable or damaged)."""
    version = packet[0] >> 4
    if version == 4 and len(packet) >= 20:
        header = (packet[0] & 0x0F) * 4
        # 0 is what a sender doing segmentation offload records; use what was captured.
        end = int.from_bytes(packet[2:4]) or len(packet)
        if header < 20 or end < header or packet[9] != 6:
            return None
        fragment = int.from_bytes(packet[6:8])
        if fragment & 0x1FFF:
            notes["IPv4 fragments after the first (skipped)"] += 1
            return None
        if fragment & 0x2000:
            notes["fragmented IPv4 packets (only their first fragment used)"] += 1
        src, dst = packet[12:16], packet[16:20]
    elif version == 6 and len(packet) >= 40:
        # A payload length of 0 means a jumbogram: the captured length is all there is.
        end = 40 + (int.from_bytes(packet[4:6]) or len(packet) - 40)
        src, dst = packet[8:24], packet[24:40]
        following, header = packet[6], 40
        while following in _IPV6_SKIPPED_HEADERS and len(packet) >= header + 2:
            following, header = packet[header], header + (packet[header + 1] + 1) * 8
        if following == 44:
            notes["IPv6 fragments (not supported, skipped)"] += 1
            return None
        if following != 6:
            return None
    else:
        return None
    tcp = packet[header:end]
    if len(tcp) < 20 or not 20 <= (tcp[12] >> 4) * 4 <= len(tcp):
        return None
    if end > len(packet):
        notes["packets cut short by the capture's snap length"] += 1
    sport, dport, seq, ack = struct.unpack_from("!HHII", tcp)
    return _Segment((src, sport), (dst, dport), seq, ack, tcp[13], tcp[(tcp[12] >> 4) * 4:])


def _track(segment: _Segment, connections: list[_Connection],
           flows: dict[tuple[_Endpoint, _Endpoint], _Connection]) -> None:
    """Attribute a segment to its connection, opening one when a connection starts."""
    key = min((segment.src, segment.dst), (segment.dst, segment.src))
    current = flows.get(key)
    syn, ack = segment.flags & _SYN, segment.flags & _ACK
    new: _Connection | None = None
    if syn and not ack:
        start = (segment.seq + 1) % _SEQ_MOD
        # A repeated SYN is the same connection; a new initial sequence number is a new
        # connection reusing the ports.
        if current is None or current.client != segment.src or current.start != start:
            new = _Connection(segment.src, segment.dst, start)
    elif current is None and syn:  # a SYN-ACK whose SYN was not captured
        new = _Connection(segment.dst, segment.src, segment.ack)
    elif current is None and segment.payload:  # the capture began mid-connection
        new = _Connection(segment.src, segment.dst, segment.seq)
    if new is not None:
        connections.append(new)
        flows[key] = current = new
    if current is not None and segment.src == current.client and segment.payload:
        # Data on a SYN (TCP Fast Open) starts after the SYN's own sequence number.
        seq = (segment.seq + 1) % _SEQ_MOD if syn else segment.seq
        current.segments.append((seq, segment.payload))


def _reassemble(connection: _Connection) -> tuple[bytes, int]:
    """The contiguous stream from the client's first byte, and how many bytes lie beyond."""
    half = _SEQ_MOD // 2
    # Offsets are signed, so a segment from just before the start (a capture begun
    # mid-connection) sorts first and is cut, instead of landing 4 GiB later.
    placed = sorted(
        (((seq - connection.start + half) % _SEQ_MOD - half, payload)
         for seq, payload in connection.segments),
        key=lambda item: item[0])  # stable, so of equal starts the first captured wins
    stream = bytearray()
    for index, (offset, payload) in enumerate(placed):
        if offset > len(stream):
            end, beyond = len(stream), 0
            for later, data in placed[index:]:  # overlaps counted once
                if later + len(data) > end:
                    beyond += later + len(data) - max(later, end)
                    end = later + len(data)
            return bytes(stream), beyond
        stream += payload[len(stream) - offset:] if offset + len(payload) > len(stream) else b""
    return bytes(stream), 0
