"""The bench's own network namespace: only `lo`, the upstream's address on it.

`ip netns exec` runs the inner harness with /etc/netns/<name>/hosts and resolv.conf
bound over the machine's, so every program in it (nginx, squid, tinyproxy, mitmproxy,
corridor's gateway, curl, the load client) finds `bench.test` at the upstream address and
has no DNS server but an unused loopback port. The namespace has no other interface:
nothing run in it can reach any address outside it.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import subprocess
from collections.abc import Iterator
from pathlib import Path

from bench.config import LOCAL_PORT_RANGE, NAMESPACE_PREFIX, UPSTREAM_NAME, UPSTREAM_V4

ETC_NETNS = Path("/etc/netns")
_NAME = re.compile(rf"^{re.escape(NAMESPACE_PREFIX)}(\d+)$")
HOSTS = (
    "127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n"
    f"{UPSTREAM_V4}\t{UPSTREAM_NAME}\n"
)
# Nothing listens there: a lookup of any other name fails at once, inside the namespace.
RESOLV = "nameserver 127.0.0.1\noptions timeout:1 attempts:1\n"
SYSCTLS = {
    "net.ipv4.ip_local_port_range": LOCAL_PORT_RANGE,
    "net.ipv4.tcp_tw_reuse": "1",
    "net.core.somaxconn": "4096",
}


class NetnsError(RuntimeError):
    """Creating or entering the bench namespace failed."""


def _ip(*args: str, stdin: str | None = None) -> str:
    ip = shutil.which("ip") or shutil.which("ip", path="/usr/sbin:/sbin") or "ip"
    done = subprocess.run([ip, *args], input=stdin, text=True, capture_output=True)
    if done.returncode != 0:
        raise NetnsError(f"ip {' '.join(args)}: {done.stderr.strip()}")
    return done.stdout


def namespaces() -> list[str]:
    return [line.split()[0] for line in _ip("netns", "list").splitlines() if line.strip()]


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def remove_stale() -> list[str]:
    """Delete bench namespaces left by a harness that died (its pid is gone)."""
    removed = []
    for name in namespaces():
        m = _NAME.match(name)
        if m and not _alive(int(m.group(1))):
            delete(name)
            removed.append(name)
    return removed


def create(name: str) -> None:
    _ip("netns", "add", name)
    try:
        _ip("-n", name, "-batch", "-", stdin=f"link set lo up\naddr add {UPSTREAM_V4}/32 dev lo\n")
        directory = ETC_NETNS / name
        directory.mkdir(parents=True, exist_ok=True)
        (directory / "hosts").write_text(HOSTS)
        (directory / "resolv.conf").write_text(RESOLV)
        for key, value in SYSCTLS.items():
            exec_in(name, ["sysctl", "-q", "-w", f"{key}={value}"], check=True)
    except BaseException:
        delete(name)
        raise


def delete(name: str) -> None:
    """Kill whatever still runs inside, delete the namespace and its /etc/netns dir."""
    if name in namespaces():
        for pid in _ip("netns", "pids", name).split():
            with contextlib.suppress(ProcessLookupError):
                os.kill(int(pid), signal.SIGKILL)
        _ip("netns", "delete", name)
    shutil.rmtree(ETC_NETNS / name, ignore_errors=True)


def exec_in(name: str, argv: list[str], check: bool = False) -> int:
    ip = shutil.which("ip") or shutil.which("ip", path="/usr/sbin:/sbin") or "ip"
    done = subprocess.run([ip, "netns", "exec", name, *argv])
    if check and done.returncode != 0:
        raise NetnsError(f"{' '.join(argv)} in {name}: exit {done.returncode}")
    return done.returncode


@contextlib.contextmanager
def bench_namespace() -> Iterator[str]:
    """A fresh `cor-bench-<pid>` namespace, deleted when the block ends, however it ends."""
    if os.geteuid() != 0:
        raise NetnsError("the benchmark needs root (network namespaces, peers started as root)")
    remove_stale()
    name = f"{NAMESPACE_PREFIX}{os.getpid()}"
    create(name)
    try:
        yield name
    finally:
        delete(name)
