"""The world's table: names, addresses and services, as data.

The harness writes a `WorldConfig` to a JSON file; the world process reads it back and
serves exactly what it says. To give tests a new name (say `metadata.test` ->
169.254.169.254), add a `HostEntry` to `DEFAULT_HOSTS` or pass `hosts=` to the harness.
"""

from __future__ import annotations

import ipaddress
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

# The one link of the lab: a veth pair. Documentation ranges only (RFC 5737, RFC 3849).
LAB_V4 = "192.0.2.2"
WORLD_V4 = "192.0.2.1"
LINK_V4_PREFIX = 24
LAB_V6 = "2001:db8:1::2"
WORLD_V6 = "2001:db8:1::1"
LINK_V6_PREFIX = 64

# The world's DNS server; the lab's resolv.conf points at the IPv4 one.
DNS_V4 = "203.0.113.53"
DNS_V6 = "2001:db8:53::53"

# Every TCP connection and UDP datagram that is not for a listed service is diverted
# (nft tproxy) to this port. Port 1 (tcpmux) is nothing any test would serve on.
CATCHALL_PORT = 1

# Harness <-> world: the world prints READY_LINE once it serves; on its control socket it
# answers SYNC_COMMAND with SYNC_REPLY once everything received before is logged.
READY_LINE = "ready"
SYNC_COMMAND = b"sync\n"
SYNC_REPLY = b"ok\n"

HTTP_PORT = 80
HTTPS_PORT = 443
DNS_PORT = 53
ECHO_PORTS = (7, 5432)  # the classic echo port, and a "database-like" one

# Where the world must never be: the product's synthetic ranges (a lab address there would
# hide a leak behind a product answer), the lab link itself (it would be reached on the
# link, not routed to the world), and loopback.
FORBIDDEN_NETWORKS = tuple(
    ipaddress.ip_network(n, strict=False)
    for n in (
        "198.18.0.0/15",
        "fd63:6f72:7269:646f::/64",
        f"{LAB_V4}/{LINK_V4_PREFIX}",
        f"{LAB_V6}/{LINK_V6_PREFIX}",
        "127.0.0.0/8",
        "::1/128",
    )
)


def normalize_name(name: str) -> str:
    """DNS names compare case-insensitively and with or without the root dot."""
    return name.rstrip(".").lower()


def _check_address(text: str, version: int) -> None:
    addr = ipaddress.ip_address(text)
    if addr.version != version:
        raise ValueError(f"{text} is not an IPv{version} address")
    for net in FORBIDDEN_NETWORKS:
        if addr.version == net.version and addr in net:
            raise ValueError(f"{text} is in {net}, which the lab must not use")


@dataclass(frozen=True)
class HostEntry:
    """One `.test` name: its DNS records and what the world serves on its addresses."""

    a: tuple[str, ...] = ()
    aaaa: tuple[str, ...] = ()
    http: bool = True  # HTTP on 80 and HTTPS on 443 on every address of the name
    echo_ports: tuple[int, ...] = ()

    def __post_init__(self) -> None:
        for text, version in [*((t, 4) for t in self.a), *((t, 6) for t in self.aaaa)]:
            _check_address(text, version)
        for port in self.echo_ports:
            if not 0 < port < 65536 or port == CATCHALL_PORT:
                raise ValueError(f"echo port {port} is not usable")

    @property
    def addresses(self) -> tuple[str, ...]:
        return (*self.a, *self.aaaa)


DEFAULT_HOSTS: Mapping[str, HostEntry] = {
    "allowed.test": HostEntry(a=("203.0.113.10",)),
    "denied.test": HostEntry(a=("203.0.113.11",)),
    "other.test": HostEntry(a=("203.0.113.12",)),
    "echo.test": HostEntry(a=("203.0.113.7",), http=False, echo_ports=ECHO_PORTS),
    "v6only.test": HostEntry(aaaa=("2001:db8:10::6",)),
    "dual.test": HostEntry(a=("203.0.113.20",), aaaa=("2001:db8:10::20",)),
}


@dataclass(frozen=True)
class Service:
    """A (protocol, address, port) the world listens on; everything else is caught."""

    proto: str  # "tcp" or "udp"
    addr: str
    port: int
    kind: str  # "dns", "http", "https", "echo"


@dataclass(frozen=True)
class WorldConfig:
    """Everything the world process needs, written to a JSON file by the harness."""

    log_dir: str
    control_socket: str
    cert_pem: str
    key_pem: str
    hosts: Mapping[str, HostEntry] = field(default_factory=lambda: dict(DEFAULT_HOSTS))
    dns_v4: str = DNS_V4
    dns_v6: str = DNS_V6
    catchall_port: int = CATCHALL_PORT

    def __post_init__(self) -> None:
        _check_address(self.dns_v4, 4)
        _check_address(self.dns_v6, 6)
        for name in self.hosts:
            if name != normalize_name(name):
                raise ValueError(f"host {name!r} must be lower case without a trailing dot")

    def to_json(self) -> str:
        data: dict[str, Any] = {
            "log_dir": self.log_dir,
            "control_socket": self.control_socket,
            "cert_pem": self.cert_pem,
            "key_pem": self.key_pem,
            "dns_v4": self.dns_v4,
            "dns_v6": self.dns_v6,
            "catchall_port": self.catchall_port,
            "hosts": {
                name: {
                    "a": list(h.a),
                    "aaaa": list(h.aaaa),
                    "http": h.http,
                    "echo_ports": list(h.echo_ports),
                }
                for name, h in self.hosts.items()
            },
        }
        return json.dumps(data, indent=2)

    @classmethod
    def from_json(cls, text: str) -> WorldConfig:
        data = json.loads(text)
        hosts = {
            name: HostEntry(
                a=tuple(h.get("a", ())),
                aaaa=tuple(h.get("aaaa", ())),
                http=bool(h.get("http", True)),
                echo_ports=tuple(h.get("echo_ports", ())),
            )
            for name, h in data.pop("hosts").items()
        }
        return cls(hosts=hosts, **data)

    def services(self) -> list[Service]:
        """Every listening endpoint, without duplicates, in a stable order."""
        found: dict[tuple[str, str, int], Service] = {}
        for addr in (self.dns_v4, self.dns_v6):
            for proto in ("udp", "tcp"):
                found.setdefault((proto, addr, DNS_PORT), Service(proto, addr, DNS_PORT, "dns"))
        for host in self.hosts.values():
            for addr in host.addresses:
                wanted = [(HTTP_PORT, "http"), (HTTPS_PORT, "https")] if host.http else []
                wanted += [(port, "echo") for port in host.echo_ports]
                for port, kind in wanted:
                    found.setdefault(("tcp", addr, port), Service("tcp", addr, port, kind))
        return list(found.values())
