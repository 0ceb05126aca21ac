"""The nftables ruleset loaded inside the sandbox's network namespace.

Pure text generation: the in-sandbox init pipes it to `nft -f -`. The rules make the
gateway the only way out:

- every TCP connection to a non-loopback address is redirected to the gateway's
  transparent port (its original destination stays readable with SO_ORIGINAL_DST);
- DNS over UDP and TCP to any address is redirected to the gateway's resolver;
- anything else that would leave loopback (other UDP incl. QUIC, ICMP, raw IP) is
  dropped and counted (counters dropped_udp, dropped_icmp, dropped_other: every packet),
  and logged to an NFLOG group at most LOG_RATE per second: the sandbox's init reads
  that group's netlink socket and hands it to the gateway, which turns each logged drop
  into a deny event (gateway/droplog.py). The limit keeps a flood from flooding the log;
  the counters keep the totals.

Loopback stays usable for the agent's own local servers: the sandbox has its own
network namespace, so its 127.0.0.1 is not the host's.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

TABLE = "corridor"
DROP_COUNTERS = ("dropped_udp", "dropped_icmp", "dropped_other")
# The NFLOG group is per network namespace: the sandbox has its own, any number will do.
LOG_GROUP = 7
# A program that sends UDP in a loop must not turn into thousands of events a second; 50
# a second (after a burst of 100) still shows every distinct attempt a person would read.
LOG_RATE = "50/second"
LOG_BURST = 100
# Enough of each packet for an IPv6 header (40), a few extension headers and the
# transport header: the port or ICMP type is all an event needs, never the data.
LOG_SNAPLEN = 128


@dataclass(frozen=True, slots=True)
class Ports:
    """Ports of the gateway's listeners inside the sandbox (all on loopback)."""

    transparent: int = 15001
    proxy: int = 3128
    dns: int = 53


# Addresses on the sandbox's lo beside 127.0.0.1 and ::1: getaddrinfo(AI_ADDRCONFIG)
# (Node's net.connect, glibc's default for many tools) returns answers of a family only
# when a non-loopback address of that family exists. The last of each synthetic range,
# which gateway/names.py never hands out.
SANDBOX_V4_LOCAL = "198.19.255.254"
SANDBOX_V6_LOCAL = "fd63:6f72:7269:646f:ffff:ffff:ffff:fffe"


def ruleset(ports: Ports, log_group: int | None = LOG_GROUP) -> str:
    """The ruleset for `nft -f -`, for IPv4 and IPv6 alike (family inet).

    `log_group` None leaves the drops unlogged (counted only): for a kernel without
    nfnetlink_log, where a `log group` rule would not load.
    """
    log = (
        f"limit rate {LOG_RATE} burst {LOG_BURST} packets "
        f"log group {log_group} snaplen {LOG_SNAPLEN}\n    "
        if log_group is not None
        else ""
    )
    return f"""\
table inet {TABLE} {{
  counter dropped_udp {{}}
  counter dropped_icmp {{}}
  counter dropped_other {{}}

  chain redirect_out {{
    type nat hook output priority -100; policy accept;
    ip daddr {{ 127.0.0.0/8, {SANDBOX_V4_LOCAL} }} return
    ip6 daddr {{ ::1, {SANDBOX_V6_LOCAL} }} return
    meta l4proto {{ tcp, udp }} th dport 53 redirect to :{ports.dns}
    meta l4proto tcp redirect to :{ports.transparent}
  }}

  chain filter_out {{
    type filter hook output priority 0; policy drop;
    ip daddr {{ 127.0.0.0/8, {SANDBOX_V4_LOCAL} }} accept
    ip6 daddr {{ ::1, {SANDBOX_V6_LOCAL} }} accept
    meta l4proto udp counter name dropped_udp goto drop_logged
    meta l4proto {{ icmp, ipv6-icmp }} counter name dropped_icmp goto drop_logged
    counter name dropped_other goto drop_logged
  }}

  chain drop_logged {{
    {log}drop
  }}
}}
"""


def parse_counters(nft_json: str) -> dict[str, int]:
    """Packets per drop counter from `nft -j list counters table inet corridor`.

    Counters the output lacks are left out; output that is not nft's JSON gives {}.
    """
    try:
        items = json.loads(nft_json).get("nftables", [])
    except (ValueError, AttributeError):
        return {}
    found: dict[str, int] = {}
    for item in items if isinstance(items, list) else []:
        counter = item.get("counter") if isinstance(item, dict) else None
        if not isinstance(counter, dict) or counter.get("table") != TABLE:
            continue
        name, packets = counter.get("name"), counter.get("packets")
        if name in DROP_COUNTERS and isinstance(packets, int):
            found[name] = packets
    return found
