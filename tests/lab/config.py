"""The world's table: names, addresses and services, as data.

The harness writes a `WorldConfig` to a JSON file; the world process reads it back and
serves exactly what it says. To give tests a new name (say `metadata.test` ->
169.254.169.254), add a `HostEntry` to `DEFAULT_HOSTS` or pass `hosts=` to the harness.
"""

from __future__ import annotations

import ipaddress
import json
import os
import sys
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
# The interpreter that test scripts run with inside the sandbox: the real one behind the
# test venv, since the venv may sit where the sandbox cannot see it (a checkout under the
# host's /tmp, which the sandbox replaces with its own).
SANDBOX_PYTHON = os.path.realpath(sys.executable)

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
# Package registries the world can serve on a name's HTTPS port (tests/lab/world_pkg.py);
# pypi-private is the simple index behind basic auth (PRIVATE_INDEX_USER/PASSWORD).
PACKAGE_SITES = ("pypi", "npm", "pypi-private")
# A git host over smart HTTP that requires GIT_TOKEN (tests/lab/world_git.py).
GIT_SITE = "git"
# A WebSocket echo on GET /ws (tests/lab/world_ws.py).
WS_SITE = "ws"
# Everything a name may serve on its HTTPS port instead of the ordinary web routes.
HTTPS_SITES = (*PACKAGE_SITES, GIT_SITE, WS_SITE)

# Secrets the world's private services demand. Tests hand them to corridor as the real
# credential values (from env: or file:) and check the sandbox never holds them.
GIT_TOKEN = "lab-git-token-Wc4Tn8Qe2Yr6Ux1Ko5Jm"
PRIVATE_INDEX_USER = "ci-bot"
PRIVATE_INDEX_PASSWORD = "lab-index-pw-Hs3Dv7Fa9Gb2Lq"

# Where the world must never be: the product's synthetic ranges (a lab address there would
# hide a leak behind a product answer), the lab link itself (it would be reached on the
# link, not routed to the world), and loopback.
SYNTHETIC_NETWORKS = tuple(
    ipaddress.ip_network(n) for n in ("198.18.0.0/15", "fd63:6f72:7269:646f::/64")
)
FORBIDDEN_NETWORKS = (
    *SYNTHETIC_NETWORKS,
    *(
        ipaddress.ip_network(n, strict=False)
        for n in (
            f"{LAB_V4}/{LINK_V4_PREFIX}",
            f"{LAB_V6}/{LINK_V6_PREFIX}",
            "127.0.0.0/8",
            "::1/128",
        )
    ),
)

# The ranges the world's services live in: documentation ranges, which corridor's gateway
# refuses to dial unless told. corridor runs in the lab pass CORRIDOR_LAB_FLAGS so allowed
# lab names may resolve there (connecting to them by number stays refused).
LAB_SERVICE_RANGES = ("203.0.113.0/24", "2001:db8:10::/48")
CORRIDOR_LAB_FLAGS = tuple(
    arg for cidr in LAB_SERVICE_RANGES for arg in ("--unsafe-allow-private", cidr)
)


def normalize_name(name: str) -> str:
    """DNS names compare case-insensitively and with or without the root dot."""
    return name.rstrip(".").lower()


def _check_address(text: str, version: int, trap: bool = False) -> None:
    addr = ipaddress.ip_address(text)
    if addr.version != version:
        raise ValueError(f"{text} is not an IPv{version} address")
    for net in SYNTHETIC_NETWORKS if trap else FORBIDDEN_NETWORKS:
        if addr.version == net.version and addr in net:
            raise ValueError(f"{text} is in {net}, which the lab must not use")


@dataclass(frozen=True)
class HostEntry:
    """One `.test` name: its DNS records and what the world serves on its addresses."""

    a: tuple[str, ...] = ()
    aaaa: tuple[str, ...] = ()
    http: bool = True  # HTTP on 80 and HTTPS on 443 on every address of the name
    echo_ports: tuple[int, ...] = ()
    site: str | None = None  # a package registry or git host (HTTPS_SITES) on HTTPS instead
    # A trap: the world answers DNS for the name and serves nothing on its addresses,
    # which may be where corridor must never dial (metadata, loopback, private, the lab's
    # own address). A connection that gets there is a leak the catch-all (or a test's
    # listener, for loopback and the lab's own address) records.
    trap: bool = False
    # A rebinding name: every second A query is answered with these instead of `a` (the
    # first with `a`). They are trap addresses: never served.
    rebind_a: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if self.site is not None and (self.site not in HTTPS_SITES or not self.http):
            raise ValueError(f"site {self.site!r} needs http and one of {HTTPS_SITES}")
        if self.trap and (self.http or self.echo_ports):
            raise ValueError("a trap name serves nothing: set http=False and no echo_ports")
        for text, version in [*((t, 4) for t in self.a), *((t, 6) for t in self.aaaa)]:
            _check_address(text, version, trap=self.trap)
        for text in self.rebind_a:
            _check_address(text, 4, trap=True)
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
    # Names a policy may allow that resolve where the gateway must refuse to dial.
    "metadata.test": HostEntry(a=("169.254.169.254",), http=False, trap=True),
    "metadata6.test": HostEntry(aaaa=("fd00:ec2::254",), http=False, trap=True),
    "loopback.test": HostEntry(a=("127.0.0.1",), aaaa=("::1",), http=False, trap=True),
    "private.test": HostEntry(a=("10.0.0.5",), http=False, trap=True),
    "cgnat.test": HostEntry(a=("100.100.100.200",), http=False, trap=True),
    "nat64.test": HostEntry(aaaa=("64:ff9b::a9fe:a9fe",), http=False, trap=True),
    "mapped.test": HostEntry(aaaa=("::ffff:10.0.0.5",), http=False, trap=True),
    "sixtofour.test": HostEntry(aaaa=("2002:a00:5::1",), http=False, trap=True),
    "self.test": HostEntry(a=(LAB_V4,), aaaa=(LAB_V6,), http=False, trap=True),
    "rebind.test": HostEntry(a=("203.0.113.60",), rebind_a=("169.254.169.254",)),
    # git:// (port 9418) answered by an echo: enough to see a git client's request arrive.
    "git.test": HostEntry(a=("203.0.113.61",), http=False, echo_ports=(9418,)),
    # Package registries for real pip and npm (tests/lab/world_pkg.py); pypi-files.test
    # holds the files of a project whose index page links them there. The npm registry is
    # dual-stack like the public ones, the Python index IPv4-only like many mirrors.
    "pypi-mirror.test": HostEntry(a=("203.0.113.30",), site="pypi"),
    "pypi-files.test": HostEntry(a=("203.0.113.32",), site="pypi"),
    "npm-mirror.test": HostEntry(a=("203.0.113.31",), aaaa=("2001:db8:10::31",), site="npm"),
    # A private index that answers 401 without PRIVATE_INDEX_USER:PRIVATE_INDEX_PASSWORD.
    "pypi-private.test": HostEntry(a=("203.0.113.33",), site="pypi-private"),
    # A GitHub-like git host: smart HTTP on HTTPS, 401 without GIT_TOKEN.
    "forge.test": HostEntry(a=("203.0.113.40",), site=GIT_SITE),
    # A WebSocket echo on HTTPS (wss://ws.test/ws).
    "ws.test": HostEntry(a=("203.0.113.41",), site=WS_SITE),
}


@dataclass(frozen=True)
class Service:
    """A (protocol, address, port) the world listens on; everything else is caught."""

    proto: str  # "tcp" or "udp"
    addr: str
    port: int
    kind: str  # "dns", "http", "https", "echo", or a site (HTTPS_SITES) served on HTTPS


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
                    "site": h.site,
                    "trap": h.trap,
                    "rebind_a": list(h.rebind_a),
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
                site=h.get("site"),
                trap=bool(h.get("trap", False)),
                rebind_a=tuple(h.get("rebind_a", ())),
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
                wanted = (
                    [(HTTP_PORT, "http"), (HTTPS_PORT, host.site or "https")] if host.http else []
                )
                wanted += [(port, "echo") for port in host.echo_ports]
                for port, kind in wanted:
                    found.setdefault(("tcp", addr, port), Service("tcp", addr, port, kind))
        return list(found.values())
