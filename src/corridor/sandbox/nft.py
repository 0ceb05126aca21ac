"""The nftables ruleset loaded inside the sandbox's network namespace.

Pure text generation: the in-sandbox init pipes it to `nft -f -`. The rules make the
gateway the only way out:

- every TCP connection to a non-loopback address is redirected to the gateway's
  transparent port (its original destination stays readable with SO_ORIGINAL_DST);
- DNS over UDP and TCP to any address is redirected to the gateway's resolver;
- anything else that would leave loopback (other UDP incl. QUIC, ICMP, raw IP) is
  dropped and counted.

Loopback stays usable for the agent's own local servers: the sandbox has its own
network namespace, so its 127.0.0.1 is not the host's.
"""

from __future__ import annotations

from dataclasses import dataclass

TABLE = "corridor"


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


def ruleset(ports: Ports) -> str:
    """The ruleset for `nft -f -`, for IPv4 and IPv6 alike (family inet)."""
    return f"""\
table inet {TABLE} {{
  counter dropped_udp {{}}
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
    meta l4proto udp counter name dropped_udp drop
    counter name dropped_other drop
  }}
}}
"""
