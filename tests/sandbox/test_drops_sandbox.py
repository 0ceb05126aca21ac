"""A real sandbox: its firewall logs drops to the socket it hands out, and counts them all.

Needs root and bwrap (the lab's requirements). Nothing leaves the machine: the sandbox's
network namespace has only `lo`, and the addresses are documentation ranges.
"""

from __future__ import annotations

import asyncio
import os
import sys
import time
from pathlib import Path

import pytest

from corridor.gateway.droplog import Drop, watch_drops
from corridor.sandbox.bwrap import SandboxSpec
from corridor.sandbox.launch import DROP_LOG, EXPECTED_LISTENERS, find_tools, start_sandbox
from corridor.sandbox.nft import LOG_BURST, Ports

# Real bwrap and network namespaces: the lab's requirements (and its skip/fail rule in CI).
pytestmark = pytest.mark.lab
PYTHON = os.path.realpath(sys.executable)
# The run's length bounds what the limit lets through: burst + rate x seconds.
LOG_RATE_PER_S = 50


def sender(sends: str) -> list[str]:
    code = (
        "import socket\n"
        "u4 = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)\n"
        "u6 = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)\n"
        "def send(s, dst):\n"
        "    try:\n"
        "        s.sendto(b'x' * 20, dst)\n"
        "    except OSError:\n"
        "        pass  # EPERM: the firewall said no\n"
        f"{sends}\n"
    )
    return [PYTHON, "-I", "-S", "-c", code]


def run_sandbox(tmp_path: Path, command: list[str]) -> tuple[list[Drop], dict | None, float]:
    """Run `command` in a sandbox (as a gateway would), collecting logged drops."""
    home = tmp_path / "home"
    ws = home / "ws"
    ws.mkdir(parents=True)
    spec = SandboxSpec(workspace=ws, home=home, cwd=ws, rootless=False)
    env = {"PATH": "/usr/bin:/bin", "HOME": str(home)}
    sandbox = start_sandbox(find_tools(), spec, command, env, Ports())
    assert set(sandbox.listeners) == {*EXPECTED_LISTENERS, DROP_LOG}
    assert set(sandbox.namespaces) == {"netns", "userns"}
    drops: list[Drop] = []

    async def serve() -> float:
        task = asyncio.create_task(watch_drops(sandbox.listeners[DROP_LOG], drops.append))
        started = time.monotonic()
        sandbox.start()
        await asyncio.get_running_loop().run_in_executor(None, sandbox.proc.wait)
        elapsed = time.monotonic() - started
        await asyncio.sleep(0.5)  # the kernel hands a batch over within 0.1 s
        task.cancel()
        return elapsed

    try:
        elapsed = asyncio.run(serve())
        assert sandbox.proc.returncode == 0
        sandbox.close()
    finally:
        sandbox.kill()
    return drops, sandbox.drops, elapsed


def test_udp_drops_are_logged_and_counted(tmp_path: Path) -> None:
    drops, counters, _ = run_sandbox(
        tmp_path,
        sender(
            "for _ in range(3):\n"
            "    send(u4, ('192.0.2.9', 443))\n"
            "send(u6, ('2001:db8::9', 4433))\n"
            "send(u4, ('127.0.0.1', 9))  # the sandbox's own loopback: not a drop\n"
        ),
    )
    assert [(d.proto, d.family, d.dst, d.dport) for d in drops] == [
        ("udp", 4, "192.0.2.9", 443),
        ("udp", 4, "192.0.2.9", 443),
        ("udp", 4, "192.0.2.9", 443),
        ("udp", 6, "2001:db8::9", 4433),
    ]
    assert drops[0].length == 48 and drops[3].length == 68
    assert counters == {"dropped_udp": 4, "dropped_icmp": 0, "dropped_other": 0}


def test_a_flood_is_counted_whole_but_logged_at_the_limit(tmp_path: Path) -> None:
    drops, counters, elapsed = run_sandbox(
        tmp_path, sender("for _ in range(10_000):\n    send(u4, ('192.0.2.9', 443))\n")
    )
    assert counters == {"dropped_udp": 10_000, "dropped_icmp": 0, "dropped_other": 0}
    # The burst, plus what the rate refills while the flood lasts (one second of slack).
    assert LOG_BURST <= len(drops) <= LOG_BURST + LOG_RATE_PER_S * (elapsed + 1)
    assert {(d.dst, d.dport) for d in drops} == {("192.0.2.9", 443)}


def test_counters_are_unread_while_the_sandbox_runs(tmp_path: Path) -> None:
    home = tmp_path / "home"
    ws = home / "ws"
    ws.mkdir(parents=True)
    spec = SandboxSpec(workspace=ws, home=home, cwd=ws, rootless=False)
    sandbox = start_sandbox(find_tools(), spec, ["true"], {"PATH": "/usr/bin:/bin"}, Ports())
    try:
        assert sandbox.collect_drops() is None  # not started, still running
        sandbox.start()
        sandbox.proc.wait()
        assert sandbox.collect_drops() == {
            "dropped_udp": 0,
            "dropped_icmp": 0,
            "dropped_other": 0,
        }
    finally:
        sandbox.kill()
        sandbox.close()
    assert sandbox.namespaces == {}
