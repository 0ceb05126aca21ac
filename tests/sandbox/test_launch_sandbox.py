"""start_sandbox against a real bwrap: the network the init sets up, a bwrap that fails,
and the drop counters read in the background.

Needs root and bwrap (the lab's requirements). Nothing leaves the machine: the sandbox's
network namespace has only `lo`.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from corridor.errors import UserError
from corridor.sandbox.bwrap import SandboxSpec
from corridor.sandbox.launch import Sandbox, find_tools, start_sandbox
from corridor.sandbox.nft import SANDBOX_V4_LOCAL, SANDBOX_V6_LOCAL, Ports

# Real bwrap and network namespaces: the lab's requirements (and its skip/fail rule in CI).
pytestmark = pytest.mark.lab
PATH_ENV = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin"}
NO_DROPS = {"dropped_udp": 0, "dropped_icmp": 0, "dropped_other": 0}


def _spec(tmp_path: Path) -> SandboxSpec:
    home = tmp_path / "home"
    ws = home / "ws"
    ws.mkdir(parents=True)
    return SandboxSpec(workspace=ws, home=home, cwd=ws, rootless=False)


def _run(tmp_path: Path, command: list[str]) -> tuple[Sandbox, str]:
    """Start `command` in a sandbox and wait for it; returns the sandbox and its stdout."""
    spec = _spec(tmp_path)
    wrapped = ["sh", "-c", f'"$@" > {spec.workspace}/out', "sh", *command]
    sandbox = start_sandbox(find_tools(), spec, wrapped, PATH_ENV, Ports())
    sandbox.start()
    sandbox.proc.wait()
    return sandbox, (spec.workspace / "out").read_text()


def test_lo_carries_every_route_and_both_local_addresses(tmp_path: Path) -> None:
    ip = shutil.which("ip", path=PATH_ENV["PATH"])
    assert ip is not None
    sandbox, out = _run(
        tmp_path, ["sh", "-c", f"{ip} -br addr show lo; {ip} route; {ip} -6 route show default"]
    )
    sandbox.close()
    lines = out.splitlines()
    assert lines[0].split()[:2] == ["lo", "UNKNOWN"]
    assert {"127.0.0.1/8", f"{SANDBOX_V4_LOCAL}/32", f"{SANDBOX_V6_LOCAL}/128"} <= set(
        lines[0].split()[2:]
    )
    assert "default dev lo scope link src 127.0.0.1" in out
    assert lines[-1].startswith("default dev lo metric 1024")


def test_drop_counters_read_in_the_background_are_collected_later(tmp_path: Path) -> None:
    sandbox, _out = _run(tmp_path, ["true"])
    try:
        sandbox.begin_collect_drops()
        assert sandbox.drops is None  # started, not waited for
        assert sandbox.collect_drops() == NO_DROPS
        assert sandbox.collect_drops() == NO_DROPS  # idempotent
    finally:
        sandbox.close()
    assert sandbox.drops == NO_DROPS


def test_the_background_read_waits_for_the_sandbox_to_end(tmp_path: Path) -> None:
    spec = _spec(tmp_path)
    sandbox = start_sandbox(find_tools(), spec, ["true"], PATH_ENV, Ports())
    try:
        sandbox.begin_collect_drops()  # still running: nothing to read yet
        assert sandbox.collect_drops() is None
        sandbox.start()
        sandbox.proc.wait()
        assert sandbox.collect_drops() == NO_DROPS
    finally:
        sandbox.kill()
        sandbox.close()


def test_a_bwrap_that_fails_is_reported_with_its_exit_code(tmp_path: Path, capfd) -> None:
    gone = tmp_path / "gone"
    spec = SandboxSpec(workspace=gone, home=tmp_path, cwd=tmp_path, rootless=False)
    with pytest.raises(UserError) as e:
        start_sandbox(find_tools(), spec, ["true"], PATH_ENV, Ports())
    assert e.value.message == "sandbox setup failed (bwrap exited with 1); see the message above"
    assert f"Can't find source path {gone}" in capfd.readouterr().err
