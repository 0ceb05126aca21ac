"""Building and removing the lab's network namespaces.

Everything here acts on namespaces this module creates: the veth pair is created inside
the lab namespace with its peer placed straight into the world namespace, so no interface
of the lab ever exists in, or links to, the machine's own namespace.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import subprocess
import time
from collections.abc import Iterable
from pathlib import Path

from tests.lab.config import (
    CATCHALL_PORT,
    DNS_V4,
    LAB_V4,
    LAB_V6,
    LINK_V4_PREFIX,
    LINK_V6_PREFIX,
    WORLD_V4,
    WORLD_V6,
)
from tests.lab.world_catchall import nft_ruleset

PREFIX = "cor-"
# Names this module creates: cor-<role>-<pid>-<n>. Only these are ever cleaned up.
_NAME = re.compile(r"^cor-(lab|world|probe)-(\d+)-(\d+)$")
ETC_NETNS = Path("/etc/netns")
LAB_IF = "to-world"  # the lab's end of the veth pair
WORLD_IF = "to-lab"
LAB_HOSTS = "127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n"
_SBIN = "/usr/sbin:/sbin"
# A veth pair usually gets its carrier within milliseconds; the bound only turns a
# broken link into an error.
LINK_UP_TIMEOUT = 5.0
LINK_POLL = 0.005


class NetnsError(RuntimeError):
    """An `ip` or `nft` command failed while building or removing the lab."""


def tool(name: str) -> str | None:
    """Path of a system tool, looking in sbin too (not on a plain user's PATH)."""
    return shutil.which(name) or shutil.which(name, path=_SBIN)


def ip(*args: str, stdin: str | None = None) -> str:
    """Run `ip` and return its output; NetnsError (with its message) when it fails."""
    done = subprocess.run([tool("ip") or "ip", *args], input=stdin, text=True, capture_output=True)
    if done.returncode != 0:
        raise NetnsError(f"ip {' '.join(args)}: {done.stderr.strip()}")
    return done.stdout


def namespace_name(role: str, pid: int, n: int) -> str:
    return f"{PREFIX}{role}-{pid}-{n}"


def list_namespaces() -> list[str]:
    """Names of all named network namespaces (`ip netns list` prints "name (id: N)")."""
    return [line.split()[0] for line in ip("netns", "list").splitlines() if line.strip()]


def stale_names(names: Iterable[str], alive: set[int] | None = None) -> list[str]:
    """Lab names whose creating process is dead (`alive`: pids known alive, for tests)."""
    found = []
    for name in names:
        match = _NAME.match(name)
        if match is None:
            continue
        pid = int(match.group(2))
        if not (pid in alive if alive is not None else pid_alive(pid)):
            found.append(name)
    return found


def pid_alive(pid: int) -> bool:
    """True if the process runs; a zombie (killed, not yet reaped) counts as dead."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"  # the state follows "(comm)"


def remove_stale() -> list[str]:
    """Remove namespaces and /etc/netns dirs left by crashed runs; returns what went."""
    in_etc = [p.name for p in ETC_NETNS.iterdir()] if ETC_NETNS.is_dir() else []
    stale = stale_names(sorted(set(list_namespaces()) | set(in_etc)))
    for name in stale:
        delete_namespace(name)
    return stale


def create_namespace(name: str) -> None:
    ip("netns", "add", name)


def delete_namespace(name: str) -> None:
    """Kill what runs inside, delete the namespace and its /etc/netns dir; idempotent."""
    if name in list_namespaces():
        for pid in ip("netns", "pids", name).split():
            with contextlib.suppress(ProcessLookupError):
                os.kill(int(pid), signal.SIGKILL)
        ip("netns", "delete", name)
    shutil.rmtree(ETC_NETNS / name, ignore_errors=True)


def link(lab: str, world: str) -> None:
    """Wire lab to world: one veth pair, lab routes everything (v4 and v6) to world,
    and world takes every address as its own.

    Duplicate address detection is switched off first: it would hold every IPv6 address,
    link-local ones included (neighbour discovery answers from those), tentative for
    about a second, and stall the first IPv6 connection by as much. The world's catch-all
    routes go into table main, not local: the local table is searched first, so there
    they would also claim the lab's own address and the world could never answer it.
    """
    for name in (lab, world):
        _no_dad(name)
    _batch(lab, [
        "link set lo up",
        f"link add {LAB_IF} type veth peer name {WORLD_IF} netns {world}",
        f"addr add {LAB_V4}/{LINK_V4_PREFIX} dev {LAB_IF}",
        f"addr add {LAB_V6}/{LINK_V6_PREFIX} dev {LAB_IF}",
        f"link set {LAB_IF} up",
        f"route add default via {WORLD_V4}",
        f"route add default via {WORLD_V6}",
    ])  # fmt: skip
    _batch(world, [
        "link set lo up",
        f"addr add {WORLD_V4}/{LINK_V4_PREFIX} dev {WORLD_IF}",
        f"addr add {WORLD_V6}/{LINK_V6_PREFIX} dev {WORLD_IF}",
        f"link set {WORLD_IF} up",
        "route add local 0.0.0.0/0 dev lo table main",
        "route add local ::/0 dev lo table main",
    ])  # fmt: skip


def _batch(ns: str, commands: list[str]) -> None:
    """Several `ip` commands in one run inside `ns` (it stops at the first failure)."""
    ip("-n", ns, "-batch", "-", stdin="\n".join(commands) + "\n")


def wait_link_up(lab: str, world: str, timeout: float = LINK_UP_TIMEOUT) -> float:
    """Wait until both ends of the veth pair report `state UP`; returns the seconds waited.

    A veth end gets its carrier asynchronously after both ends are up; until then its
    queue discards packets (the first neighbour solicitation would be lost and the first
    IPv6 connection stall for a second).
    """
    start = time.monotonic()
    while True:
        states = [
            ip("-n", ns, "-o", "link", "show", "dev", dev)
            for ns, dev in ((lab, LAB_IF), (world, WORLD_IF))
        ]
        if all(" state UP " in s for s in states):
            return time.monotonic() - start
        if time.monotonic() - start > timeout:
            raise NetnsError(f"the lab link did not come up in {timeout}s: {states}")
        time.sleep(LINK_POLL)


def _no_dad(name: str) -> None:
    """accept_dad=0 for interfaces created in the namespace from now on (and existing)."""
    # /proc/sys/net shows the namespace of the process that opens it, hence `netns exec`.
    script = "; ".join(
        f"echo 0 > /proc/sys/net/ipv6/conf/{c}/accept_dad" for c in ("all", "default")
    )
    done = subprocess.run(
        [tool("ip") or "ip", "netns", "exec", name, "sh", "-c", script],
        text=True,
        capture_output=True,
    )
    if done.returncode != 0:
        raise NetnsError(f"cannot turn off IPv6 DAD in {name}: {done.stderr.strip()}")


def write_resolver(lab: str, nameserver: str = DNS_V4) -> Path:
    """/etc/netns/<lab>/: `ip netns exec` binds these over /etc/resolv.conf and /etc/hosts,
    so every program in the lab resolves through the world's DNS with the system resolver.
    """
    directory = ETC_NETNS / lab
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "resolv.conf").write_text(f"nameserver {nameserver}\n")
    (directory / "hosts").write_text(LAB_HOSTS)
    return directory


def unavailable_reason(pid: int) -> str | None:
    """Why the lab cannot be built here (None: it can), saying what would fix it."""
    if os.geteuid() != 0:
        return (
            "lab tests need root to create network namespaces "
            "(run as root, as CI does: sudo .venv/bin/pytest)"
        )
    for name, package, use in (
        ("ip", "iproute2", "build the namespaces"),
        ("nft", "nftables", "build the world's catch-all"),
        ("bwrap", "bubblewrap", "run corridor's sandbox"),
    ):
        if tool(name) is None:
            return f"lab tests need `{name}` to {use} (apt-get install {package})"
    probe = namespace_name("probe", pid, 0)
    try:
        create_namespace(probe)
    except NetnsError as e:
        return (
            f"cannot create a network namespace ({e}); lab tests need CAP_SYS_ADMIN "
            "and kernel netns support (run as root on a VM or a privileged container)"
        )
    try:
        # The very rules the world loads, with no services: they need nf_tables tproxy.
        done = subprocess.run(
            [tool("ip") or "ip", "netns", "exec", probe, tool("nft") or "nft", "-f", "-"],
            input=nft_ruleset([], CATCHALL_PORT),
            text=True,
            capture_output=True,
        )
        if done.returncode != 0:
            first = (done.stderr.strip().splitlines() or ["no message"])[0]
            return (
                f"nft refused the world's catch-all rules in a namespace ({first}); "
                "they need a kernel with nf_tables tproxy (CONFIG_NFT_TPROXY, "
                "module nft_tproxy)"
            )
    finally:
        delete_namespace(probe)
    return None
