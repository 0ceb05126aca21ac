"""Packets the sandbox's firewall dropped, read from its nfnetlink_log socket.

The sandbox's nft ruleset (sandbox/nft.py) drops everything that is neither loopback
nor redirected to the gateway (UDP incl. QUIC, ICMP, other IP protocols), counts every
drop, and logs at most LOG_RATE of them per second to an NFLOG group. The sandbox's
init opens the netlink socket bound to that group inside the sandbox's network
namespace and hands it to corridor with the listeners; this module turns what arrives
on it into `Drop` records and deny events.

The parser is sans-IO and total: any byte string gives a (possibly empty) list of
drops, never an exception, in time linear in its length. `watch_drops` is the only I/O.

Layouts (include/uapi/linux/netlink.h, netfilter/nfnetlink.h, nfnetlink_log.h): a
datagram holds netlink messages, each a 16-byte `nlmsghdr` (len, type, flags, seq, pid;
host byte order) then a 4-byte `nfgenmsg` (family, version, res_id big-endian) then
attributes (`nlattr`: u16 len, u16 type; payload padded to 4 bytes). NFULA_PAYLOAD
holds the packet from its IP header on, cut at the rule's snaplen.
"""

from __future__ import annotations

import asyncio
import errno
import ipaddress
import socket
import struct
import time
from collections.abc import Callable
from dataclasses import dataclass

from corridor.audit.events import DENY, Event, Kind

NFNL_SUBSYS_ULOG = 4
NFULNL_MSG_PACKET = 0
ULOG_PACKET_TYPE = (NFNL_SUBSYS_ULOG << 8) | NFULNL_MSG_PACKET
NFULA_PAYLOAD = 9
NFGEN_FAMILY_V4 = 2  # NFPROTO_IPV4
NFGEN_FAMILY_V6 = 10  # NFPROTO_IPV6
NLMSG_HDR = struct.Struct("=IHHII")  # host byte order, as the kernel writes it
NLA_HDR = struct.Struct("=HH")
NFGENMSG_LEN = 4
NLA_TYPE_MASK = 0x3FFF  # the top two bits are NLA_F_NESTED / NLA_F_NET_BYTEORDER
# nfnetlink_log sends one message per datagram here (the init sets its queue threshold
# to 1) and batches of at most a buffer's worth otherwise; no real datagram holds more.
MAX_MESSAGES_PER_DATAGRAM = 1024
# IPv6 extension headers walked to find the transport header; the snaplen (nft.py) cuts
# the packet anyway, and a real packet has one or two.
MAX_V6_EXTENSION_HEADERS = 8
# Larger than any datagram the kernel sends: its batch buffer is NLMSG_GOODSIZE (a page or
# two) unless configured, which the init does not do.
RECV_BUFSIZE = 64 * 1024

# The reason every drop event carries: what the sandbox's firewall lets out.
DROP_REASON = "only TCP and DNS leave the sandbox, through the gateway"

# IP protocol numbers -> the names events use; others are "ip proto N".
_PROTO_NAMES = {
    1: "icmp",
    6: "tcp",
    17: "udp",
    47: "gre",
    50: "esp",
    51: "ah",
    58: "icmpv6",
    132: "sctp",
    136: "udplite",
}
_PORTED = frozenset({6, 17, 132, 136})  # destination port at offset 2 of the header
_ICMP = frozenset({1, 58})
# IPv6 extension headers: hop-by-hop, routing, destination options (8-octet units after
# the first 8), fragment (fixed 8), AH (4-octet units, +2).
_V6_EXT_UNITS8 = frozenset({0, 43, 60})
_V6_FRAGMENT = 44
_V6_AH = 51
_ICMP_NAMES = {
    (4, 0): "echo-reply",
    (4, 3): "destination-unreachable",
    (4, 8): "echo-request",
    (4, 11): "time-exceeded",
    (6, 1): "destination-unreachable",
    (6, 3): "time-exceeded",
    (6, 128): "echo-request",
    (6, 129): "echo-reply",
}


@dataclass(frozen=True, slots=True)
class Drop:
    """One packet the sandbox's firewall dropped (as far as its first bytes tell).

    `dport` is set for TCP, UDP, SCTP and UDP-Lite, `icmp_type` for ICMP and ICMPv6,
    both only when the packet is the first fragment and its header was captured.
    `length` is the packet's length as its IP header states it (not the captured part).
    """

    proto: str  # "udp" | "tcp" | "icmp" | "icmpv6" | "sctp" | ... | "ip proto N"
    family: int  # 4 | 6
    src: str
    dst: str
    dport: int | None
    icmp_type: int | None
    length: int

    def describe(self) -> str:
        """E.g. `udp to 192.0.2.9:443`, `icmp echo-request to 2001:db8::9`."""
        if self.dport is not None:
            where = f"[{self.dst}]:{self.dport}" if self.family == 6 else f"{self.dst}:{self.dport}"
            return f"{self.proto} to {where}"
        if self.icmp_type is not None:
            name = _ICMP_NAMES.get((self.family, self.icmp_type), f"type {self.icmp_type}")
            return f"{self.proto} {name} to {self.dst}"
        return f"{self.proto} to {self.dst}"


def parse_datagram(data: bytes) -> list[Drop]:
    """The drops in one datagram read from an nfnetlink_log socket.

    Messages of other types (NLMSG_DONE closing a batch, errors) are skipped, as are
    packet messages whose payload is not an IPv4/IPv6 header; a message whose length
    runs past the datagram ends the parse (nothing after it can be framed).
    """
    drops: list[Drop] = []
    offset = 0
    for _ in range(MAX_MESSAGES_PER_DATAGRAM):
        if offset + NLMSG_HDR.size > len(data):
            break
        length, msg_type, _flags, _seq, _pid = NLMSG_HDR.unpack_from(data, offset)
        if length < NLMSG_HDR.size or offset + length > len(data):
            break
        if msg_type == ULOG_PACKET_TYPE:
            drop = _parse_packet_message(data[offset + NLMSG_HDR.size : offset + length])
            if drop is not None:
                drops.append(drop)
        offset += _align4(length)
    return drops


def _align4(n: int) -> int:
    return (n + 3) & ~3


def _parse_packet_message(body: bytes) -> Drop | None:
    if len(body) < NFGENMSG_LEN:
        return None
    payload = _attribute(body[NFGENMSG_LEN:], NFULA_PAYLOAD)
    return None if payload is None else parse_ip_packet(payload)


def _attribute(attrs: bytes, wanted: int) -> bytes | None:
    offset = 0
    while offset + NLA_HDR.size <= len(attrs):
        length, attr_type = NLA_HDR.unpack_from(attrs, offset)
        if length < NLA_HDR.size or offset + length > len(attrs):
            return None
        if attr_type & NLA_TYPE_MASK == wanted:
            return attrs[offset + NLA_HDR.size : offset + length]
        offset += _align4(length)
    return None


def parse_ip_packet(packet: bytes) -> Drop | None:
    """A Drop from the first bytes of an IP packet, or None if they are not one."""
    if not packet:
        return None
    version = packet[0] >> 4
    if version == 4:
        return _parse_v4(packet)
    if version == 6:
        return _parse_v6(packet)
    return None


def _parse_v4(p: bytes) -> Drop | None:
    if len(p) < 20:
        return None
    ihl = (p[0] & 0x0F) * 4
    if ihl < 20:
        return None
    total = int.from_bytes(p[2:4], "big")
    fragment_offset = int.from_bytes(p[6:8], "big") & 0x1FFF
    proto = p[9]
    transport = p[ihl:] if fragment_offset == 0 else b""
    return _drop(4, proto, p[12:16], p[16:20], transport, total)


def _parse_v6(p: bytes) -> Drop | None:
    if len(p) < 40:
        return None
    total = 40 + int.from_bytes(p[4:6], "big")
    proto, offset, first_fragment = p[6], 40, True
    for _ in range(MAX_V6_EXTENSION_HEADERS):
        if proto not in _V6_EXT_UNITS8 and proto not in (_V6_FRAGMENT, _V6_AH):
            break
        if offset + 8 > len(p):
            return _drop(6, proto, p[8:24], p[24:40], b"", total)  # header cut: no L4
        next_proto = p[offset]
        if proto == _V6_FRAGMENT:
            first_fragment = int.from_bytes(p[offset + 2 : offset + 4], "big") >> 3 == 0
            size = 8
        elif proto == _V6_AH:
            size = (p[offset + 1] + 2) * 4
        else:
            size = (p[offset + 1] + 1) * 8
        proto, offset = next_proto, offset + size
    transport = p[offset:] if first_fragment else b""
    return _drop(6, proto, p[8:24], p[24:40], transport, total)


def _drop(family: int, proto: int, src: bytes, dst: bytes, transport: bytes, total: int) -> Drop:
    dport = icmp_type = None
    if proto in _PORTED and len(transport) >= 4:
        dport = int.from_bytes(transport[2:4], "big")
    elif proto in _ICMP and len(transport) >= 1:
        icmp_type = transport[0]
    return Drop(
        proto=_PROTO_NAMES.get(proto, f"ip proto {proto}"),
        family=family,
        src=str(ipaddress.ip_address(src)),
        dst=str(ipaddress.ip_address(dst)),
        dport=dport,
        icmp_type=icmp_type,
        length=total,
    )


def drop_event(session: str, drop: Drop, ts: float | None = None) -> Event:
    """The deny event for a dropped packet, shaped like a refused TCP connection's.

    No rule decided it (the sandbox's firewall did), so `rule` stays empty; `port` is the
    destination port where the protocol has one.
    """
    data: dict[str, int | str] = {"family": drop.family, "length": drop.length}
    if drop.icmp_type is not None:
        data["icmp_type"] = drop.icmp_type
    return Event(
        session=session,
        kind=Kind.CONNECTION,
        ts=time.time() if ts is None else ts,
        decision=DENY,
        reason=f"{drop.describe()} dropped: {DROP_REASON}",
        protocol=drop.proto,
        port=drop.dport,
        address=drop.dst,
        data=data,
    )


async def watch_drops(
    sock: socket.socket,
    on_drop: Callable[[Drop], None],
    on_overrun: Callable[[], None] | None = None,
) -> None:
    """Call `on_drop` for every drop logged on `sock` until it closes or the task is cancelled.

    Cancelling it first reads what is already queued (`drain_drops`): the sandbox logs
    each drop while its sender is still sending, so nothing it did is left unread.
    The kernel drops log messages when the socket's buffer is full and says so with
    ENOBUFS on the next read: that calls `on_overrun` (the counters still hold the totals)
    and the watch goes on.
    """
    loop = asyncio.get_running_loop()
    sock.setblocking(False)
    while True:
        try:
            data = await loop.sock_recv(sock, RECV_BUFSIZE)
        except asyncio.CancelledError:
            # Stopped once the command has ended: what it sent last is queued already.
            drain_drops(sock, on_drop)
            raise
        except OSError as e:
            if e.errno == errno.ENOBUFS:
                if on_overrun is not None:
                    on_overrun()
                continue
            if e.errno in (errno.EBADF, errno.ENOTSOCK):
                return  # closed under us: the session is ending
            raise
        if not data:
            return
        for drop in parse_datagram(data):
            on_drop(drop)


def drain_drops(sock: socket.socket, on_drop: Callable[[Drop], None]) -> int:
    """Call `on_drop` for every drop already queued on `sock`, without waiting; the count.

    Bounded by what the socket holds (its receive buffer): the rate limit keeps that small.
    """
    count = 0
    while True:
        try:
            data = sock.recv(RECV_BUFSIZE, socket.MSG_DONTWAIT)
        except OSError as e:
            if e.errno == errno.ENOBUFS:
                continue  # an overrun note; what follows is still queued
            return count  # EAGAIN: empty (or closed)
        if not data:
            return count
        for drop in parse_datagram(data):
            on_drop(drop)
            count += 1
