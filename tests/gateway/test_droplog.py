"""The nfnetlink_log parser: real captured bytes, hand-built messages, fuzzing."""

from __future__ import annotations

import asyncio
import ipaddress
import socket
import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from corridor.audit.events import Kind
from corridor.gateway.droplog import (
    DROP_REASON,
    Drop,
    drain_drops,
    drop_event,
    parse_datagram,
    parse_ip_packet,
    watch_drops,
)

# One datagram read from an NFLOG group-7 socket inside a bwrap network namespace (kernel
# 6.18) after `sendto(b"hello", ("192.0.2.9", 443))` and `sendto(b"hello6",
# ("2001:db8::9", 4433))` from 127.0.0.1 / ::1: two packet messages (hook 3, LOCAL_OUT;
# prefix "", outdev 1, uid 0, gid 0, payload) and the NLMSG_DONE that closes the batch.
CAPTURED = bytes.fromhex(
    "6400000000040000000000000000000002000007080001000800030005000a0000000000"
    "080005000000000108000b000000000008000e00000000002500090045000021d7324000"
    "4011228f7f000001c0000209865201bb000d412968656c6c6f000000780000000004000000"
    "000000000000000a0000070800010086dd030005000a000000000008000500000000010800"
    "0b000000000008000e00000000003a00090060008114000e11400000000000000000000000"
    "000000000120010db8000000000000000000000009bfe11151000e2de268656c6c6f360000"
    "1400000003000000000000000000000000000007"
)


def test_a_captured_batch_gives_both_drops() -> None:
    assert parse_datagram(CAPTURED) == [
        Drop("udp", 4, "127.0.0.1", "192.0.2.9", 443, None, 33),
        Drop("udp", 6, "::1", "2001:db8::9", 4433, None, 54),
    ]


# ---- hand-built messages, from the layouts in linux/netlink.h and nfnetlink_log.h -------


def nla(attr_type: int, payload: bytes) -> bytes:
    raw = struct.pack("=HH", 4 + len(payload), attr_type) + payload
    return raw + b"\0" * (-len(raw) % 4)


def nlmsg(msg_type: int, body: bytes, flags: int = 0) -> bytes:
    raw = struct.pack("=IHHII", 16 + len(body), msg_type, flags, 0, 0) + body
    return raw + b"\0" * (-len(raw) % 4)


def packet_msg(ip: bytes, family: int = 2, extra_attrs: bytes = b"") -> bytes:
    nfgen = struct.pack("=BBH", family, 0, socket.htons(7))
    hdr = nla(1, struct.pack(">HBx", 0x0800 if family == 2 else 0x86DD, 3))
    return nlmsg(0x0400, nfgen + hdr + extra_attrs + nla(9, ip))


def ipv4(proto: int, dst: str, l4: bytes, frag: int = 0, total: int | None = None) -> bytes:
    length = 20 + len(l4) if total is None else total
    header = struct.pack(
        ">BBHHHBBH4s4s",
        0x45,
        0,
        length,
        1,
        frag,
        64,
        proto,
        0,
        ipaddress.IPv4Address("10.9.9.9").packed,
        ipaddress.IPv4Address(dst).packed,
    )
    return header + l4


def ipv6(next_header: int, dst: str, rest: bytes, payload_len: int | None = None) -> bytes:
    plen = len(rest) if payload_len is None else payload_len
    return (
        struct.pack(">IHBB", 0x60000000, plen, next_header, 64)
        + ipaddress.IPv6Address("fd00::1").packed
        + ipaddress.IPv6Address(dst).packed
        + rest
    )


def udp(dport: int, data: bytes = b"") -> bytes:
    return struct.pack(">HHHH", 40000, dport, 8 + len(data), 0) + data


def icmp(icmp_type: int) -> bytes:
    return struct.pack(">BBHHH", icmp_type, 0, 0, 1, 1)


HOP_BY_HOP = bytes([17, 0]) + b"\0" * 6  # next = UDP, 8 octets
FRAGMENT_FIRST = bytes([17, 0]) + struct.pack(">HI", 0x0001, 99)  # offset 0, more fragments
FRAGMENT_LATER = bytes([17, 0]) + struct.pack(">HI", 185 << 3, 99)  # offset 1480

# fmt: off
CASES = [
    ("udp v4 (QUIC)", packet_msg(ipv4(17, "192.0.2.9", udp(443, b"q"))),
     [Drop("udp", 4, "10.9.9.9", "192.0.2.9", 443, None, 29)]),
    ("icmp echo v4", packet_msg(ipv4(1, "192.0.2.9", icmp(8))),
     [Drop("icmp", 4, "10.9.9.9", "192.0.2.9", None, 8, 28)]),
    ("icmpv6 echo", packet_msg(ipv6(58, "2001:db8::9", icmp(128)), family=10),
     [Drop("icmpv6", 6, "fd00::1", "2001:db8::9", None, 128, 48)]),
    ("later v4 fragment has no port", packet_msg(ipv4(17, "192.0.2.9", b"xxxx", frag=185)),
     [Drop("udp", 4, "10.9.9.9", "192.0.2.9", None, None, 24)]),
    ("v6 hop-by-hop then udp",
     packet_msg(ipv6(0, "2001:db8::9", HOP_BY_HOP + udp(53)), family=10),
     [Drop("udp", 6, "fd00::1", "2001:db8::9", 53, None, 56)]),
    ("v6 first fragment",
     packet_msg(ipv6(44, "2001:db8::9", FRAGMENT_FIRST + udp(4433)), family=10),
     [Drop("udp", 6, "fd00::1", "2001:db8::9", 4433, None, 56)]),
    ("v6 later fragment has no port",
     packet_msg(ipv6(44, "2001:db8::9", FRAGMENT_LATER + b"data"), family=10),
     [Drop("udp", 6, "fd00::1", "2001:db8::9", None, None, 52)]),
    ("cut by the snaplen: the header's length counts",
     packet_msg(ipv4(17, "192.0.2.9", udp(443)[:3], total=1350)),
     [Drop("udp", 4, "10.9.9.9", "192.0.2.9", None, None, 1350)]),
    ("other protocol", packet_msg(ipv4(47, "192.0.2.9", b"gre!")),
     [Drop("gre", 4, "10.9.9.9", "192.0.2.9", None, None, 24)]),
    ("unnamed protocol", packet_msg(ipv4(253, "192.0.2.9", b"")),
     [Drop("ip proto 253", 4, "10.9.9.9", "192.0.2.9", None, None, 20)]),
    ("attribute type with NLA_F_NET_BYTEORDER set",
     nlmsg(0x0400, struct.pack("=BBH", 2, 0, 0) + nla(0x4000 | 9, ipv4(17, "192.0.2.1", udp(9)))),
     [Drop("udp", 4, "10.9.9.9", "192.0.2.1", 9, None, 28)]),
    ("packet after NLMSG_DONE and an error message",
     nlmsg(3, b"\0" * 4) + nlmsg(2, b"\0" * 20) + packet_msg(ipv4(17, "192.0.2.2", udp(1)), 2),
     [Drop("udp", 4, "10.9.9.9", "192.0.2.2", 1, None, 28)]),
    ("config ack is no drop", nlmsg(0x0401, b"\0" * 4), []),
    ("no payload attribute", nlmsg(0x0400, struct.pack("=BBH", 2, 0, 0) + nla(10, b"pfx\0")), []),
    ("payload not IP", packet_msg(b"\x20" + b"\0" * 40), []),
    ("payload too short for IPv4", packet_msg(b"\x45" + b"\0" * 10), []),
    ("IPv4 header length below 20", packet_msg(b"\x44" + b"\0" * 30), []),
    ("payload too short for IPv6", packet_msg(b"\x60" + b"\0" * 30, family=10), []),
    ("empty payload", packet_msg(b""), []),
    ("message shorter than nfgenmsg", nlmsg(0x0400, b"\0\0"), []),
    ("message length zero stops the parse", struct.pack("=IHHII", 0, 0x0400, 0, 0, 0) * 3, []),
    ("message longer than the datagram stops the parse",
     packet_msg(ipv4(17, "192.0.2.9", udp(443)))[:-4], []),
    ("attribute longer than its message",
     nlmsg(0x0400, struct.pack("=BBH", 2, 0, 0) + struct.pack("=HH", 200, 9) + b"\0" * 8), []),
    ("empty datagram", b"", []),
]
# fmt: on


@pytest.mark.parametrize(("name", "data", "expected"), CASES, ids=[c[0] for c in CASES])
def test_hand_built_messages(name: str, data: bytes, expected: list[Drop]) -> None:
    assert parse_datagram(data) == expected


def test_the_message_count_is_bounded() -> None:
    one = packet_msg(ipv4(17, "192.0.2.9", udp(443)))
    assert len(parse_datagram(one * 2000)) == 1024


@pytest.mark.parametrize(
    ("drop", "text"),
    [
        (Drop("udp", 4, "10.0.0.1", "1.1.1.1", 443, None, 1200), "udp to 1.1.1.1:443"),
        (Drop("udp", 6, "::1", "2001:db8::1", 443, None, 1200), "udp to [2001:db8::1]:443"),
        (Drop("icmp", 4, "10.0.0.1", "1.1.1.1", None, 8, 84), "icmp echo-request to 1.1.1.1"),
        (Drop("icmpv6", 6, "::1", "2001:db8::1", None, 128, 64),
         "icmpv6 echo-request to 2001:db8::1"),
        (Drop("icmp", 4, "10.0.0.1", "1.1.1.1", None, 42, 28), "icmp type 42 to 1.1.1.1"),
        (Drop("gre", 4, "10.0.0.1", "1.1.1.1", None, None, 24), "gre to 1.1.1.1"),
    ],
)  # fmt: skip
def test_describe(drop: Drop, text: str) -> None:
    assert drop.describe() == text


def test_drop_event_is_a_denied_connection_without_a_rule() -> None:
    drop = Drop("udp", 4, "127.0.0.1", "1.1.1.1", 443, None, 1252)
    event = drop_event("s1", drop, ts=5.0)
    assert event.kind is Kind.CONNECTION
    assert event.blocked
    assert event.reason == (
        "udp to 1.1.1.1:443 dropped: only TCP and DNS leave the sandbox, through the gateway"
    )
    assert event.reason.endswith(DROP_REASON)
    assert (event.rule, event.host, event.conn_id) == (None, None, None)
    assert (event.protocol, event.address, event.port, event.ts) == ("udp", "1.1.1.1", 443, 5.0)
    assert event.data == {"family": 4, "length": 1252}


def test_drop_event_of_icmp_keeps_its_type() -> None:
    event = drop_event("s1", Drop("icmp", 4, "127.0.0.1", "1.1.1.1", None, 8, 84), ts=1.0)
    assert event.port is None
    assert event.data == {"family": 4, "length": 84, "icmp_type": 8}
    assert event.reason == (
        "icmp echo-request to 1.1.1.1 dropped: only TCP and DNS leave the sandbox, "
        "through the gateway"
    )


def test_watch_drops_reads_datagrams_until_the_peer_closes() -> None:
    # A real datagram socket carrying the captured bytes, as the netlink socket would.
    a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    seen: list[Drop] = []

    async def main() -> None:
        task = asyncio.create_task(watch_drops(b, seen.append))
        a.send(CAPTURED)
        a.send(b"\x00garbage")
        a.send(packet_msg(ipv4(1, "192.0.2.7", icmp(8))))
        await asyncio.sleep(0.05)
        a.close()
        await asyncio.wait_for(task, 2)

    asyncio.run(main())
    b.close()
    assert [(d.proto, d.dst) for d in seen] == [
        ("udp", "192.0.2.9"),
        ("udp", "2001:db8::9"),
        ("icmp", "192.0.2.7"),
    ]


# ---- fuzzing: any bytes give a list, never an exception ---------------------------------


@settings(max_examples=400, deadline=None)
@given(st.binary(max_size=512))
def test_any_bytes_parse_without_error(data: bytes) -> None:
    assert isinstance(parse_datagram(data), list)
    assert parse_ip_packet(data) is None or isinstance(parse_ip_packet(data), Drop)


@settings(max_examples=400, deadline=None)
@given(
    st.lists(st.binary(max_size=80), max_size=5),
    st.integers(0, 255),
    st.sampled_from([2, 10]),
)
def test_framed_messages_with_random_payloads_parse(
    payloads: list[bytes], first: int, family: int
) -> None:
    data = b"".join(packet_msg(bytes([first]) + p, family) for p in payloads)
    drops = parse_datagram(data)
    assert len(drops) <= len(payloads)
    for d in drops:
        assert d.family in (4, 6) and d.length >= 0


@settings(max_examples=200, deadline=None)
@given(st.binary(min_size=1, max_size=300), st.integers(0, 299))
def test_a_captured_batch_cut_or_corrupted_anywhere_never_raises(noise: bytes, at: int) -> None:
    data = bytearray(CAPTURED)
    data[at % len(data) : at % len(data) + len(noise)] = noise
    parse_datagram(bytes(data))
    parse_datagram(CAPTURED[:at])


def test_a_cancelled_watch_first_reads_what_is_queued() -> None:
    # The gateway stops once the command has ended; what it sent last is already queued.
    a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    seen: list[Drop] = []

    async def main() -> None:
        task = asyncio.create_task(watch_drops(b, seen.append))
        await asyncio.sleep(0)  # the watch waits for data
        for port in range(1, 6):
            a.send(packet_msg(ipv4(17, "192.0.2.9", udp(port))))
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    asyncio.run(main())
    assert [d.dport for d in seen] == [1, 2, 3, 4, 5]
    a.close()
    b.close()


def test_drain_reads_without_waiting() -> None:
    a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    seen: list[Drop] = []
    assert drain_drops(b, seen.append) == 0
    a.send(CAPTURED)
    assert drain_drops(b, seen.append) == 2
    a.close()
    assert drain_drops(b, seen.append) == 0
    b.close()
    assert len(seen) == 2
