"""The gateway runs in its own process (`corridor-gw`), watched by corridor.

Killing it is the failure corridor must survive to tell about: the sandbox loses its
way out at once (the listening sockets die with the gateway), the command is ended
within a second, corridor exits 125 and says why, and the log records the end and
still verifies. The terminal's Ctrl-C, sent to the whole process group, reaches the
command and not the gateway.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from tests.lab.config import CORRIDOR_LAB_FLAGS
from tests.lab.harness import Lab

pytestmark = pytest.mark.lab

GATEWAY_NAME = "corridor-gw"


def _corridor(*args: str) -> list[str]:
    return [sys.executable, "-m", "corridor", *args]


def _children(pid: int) -> list[tuple[int, str]]:
    """(pid, comm) of the processes whose parent is `pid`."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        comm = stat[stat.index("(") + 1 : stat.rindex(")")]
        ppid = int(stat[stat.rindex(")") + 2 :].split()[1])
        if ppid == pid:
            found.append((int(entry.name), comm))
    return found


def _gateway_of(pid: int) -> int:
    gateways = [child for child, comm in _children(pid) if comm == GATEWAY_NAME]
    assert len(gateways) == 1, _children(pid)
    return gateways[0]


def _running(marker: str) -> list[str]:
    r = subprocess.run(["pgrep", "-af", marker], capture_output=True, text=True)
    return [line for line in r.stdout.splitlines() if "pgrep" not in line]


def _start(lab: Lab, tmp_path: Path, script: str) -> subprocess.Popen:
    ws = tmp_path / "ws"
    ws.mkdir(exist_ok=True)
    argv = _corridor("run", *CORRIDOR_LAB_FLAGS, "--state-dir", str(tmp_path / "state"),
                     "--workspace", str(ws), "--allow", "allowed.test", "--", "sh", "-c",
                     script)  # fmt: skip
    return lab.popen(argv, cwd=str(ws))


def test_killing_the_gateway_ends_the_command_and_says_why(lab: Lab, tmp_path: Path) -> None:
    marker = "sleep 61.2345"
    # Proves the network worked before the kill, then waits: the kill must end it.
    p = _start(lab, tmp_path, f"curl -sS -m 5 http://allowed.test/ && echo ready; {marker}")
    assert p.stdout is not None and p.stdout.readline().strip() == "hello from allowed.test"
    assert p.stdout.readline().strip() == "ready"
    gateway = _gateway_of(p.pid)
    killed = time.monotonic()
    os.kill(gateway, signal.SIGKILL)
    _out, err = p.communicate(timeout=10)
    assert time.monotonic() - killed < 2.0
    assert p.returncode == 125, err
    assert "corridor: error: the gateway process was killed by SIGKILL (signal 9)" in err
    assert "the sandbox was ended" in err and "corridor log --session" in err
    assert _running(marker) == []

    state = str(tmp_path / "state")
    r = lab.run(_corridor("verify", "--state-dir", state))
    assert r.returncode == 0 and " OK " in r.stdout, r.stdout + r.stderr
    assert "RECOVERED" not in r.stdout  # corridor sealed it itself, after the end
    r = lab.run(_corridor("log", "--state-dir", state, "--format", "jsonl"))
    rows = [json.loads(line) for line in r.stdout.splitlines()]
    kinds = [row["kind"] for row in rows]
    assert kinds[0] == "session_start" and kinds[-1] == "session_end", kinds
    end = rows[-1]["data"]
    assert end["gateway_failed"] is True
    assert end["gateway_error"] == "the gateway process was killed by SIGKILL (signal 9)"
    assert end["connections_allowed"] == 1  # counted from the gateway's own events
    assert any(row["kind"] == "conn" and row["host"] == "allowed.test" for row in rows)


def test_no_connection_gets_through_after_the_gateway_died(lab: Lab, tmp_path: Path) -> None:
    """Between the gateway's death and the command's, connects are refused, not sent
    anywhere else: the sockets the sandbox could reach died with the gateway."""
    script = (
        "echo ready; read _; "
        "curl -sS -m 3 http://allowed.test/ >/dev/null 2>&1 && echo LEAK; echo tried"
    )
    ws = tmp_path / "ws"
    ws.mkdir()
    argv = _corridor("run", *CORRIDOR_LAB_FLAGS, "--state-dir", str(tmp_path / "state"),
                     "--workspace", str(ws), "--allow", "allowed.test", "--", "sh", "-c",
                     script)  # fmt: skip
    with lab.capture() as cap:
        p = lab.popen(argv, cwd=str(ws), stdin=subprocess.PIPE)
        assert p.stdout is not None and p.stdout.readline().strip() == "ready"
        gateway = _gateway_of(p.pid)
        # Stop corridor from noticing (SIGSTOP), kill the gateway, let the command try.
        os.kill(p.pid, signal.SIGSTOP)
        try:
            os.kill(gateway, signal.SIGKILL)
            time.sleep(0.3)
            assert p.stdin is not None
            p.stdin.write("go\n")
            p.stdin.flush()
            time.sleep(1.0)
        finally:
            os.kill(p.pid, signal.SIGCONT)
        out, err = p.communicate(timeout=10)
    assert "LEAK" not in out
    assert p.returncode == 125, err
    assert cap.http_requests() == [] and cap.catchall() == []


@pytest.mark.parametrize(
    "sig",
    [signal.SIGINT, signal.SIGTERM],
    ids=["Ctrl-C from a terminal", "a service manager stopping the group"],
)
def test_a_signal_to_the_process_group_reaches_the_command_not_the_gateway(
    lab: Lab, tmp_path: Path, sig: signal.Signals
) -> None:
    """The command may still need the network to shut down: the gateway stays."""
    name = sig.name.removeprefix("SIG")
    script = (
        f"trap 'curl -sS -m 5 http://allowed.test/; exit 42' {name}; "
        "echo ready; while :; do sleep 0.1; done"
    )
    p = _start(lab, tmp_path, script)
    assert p.stdout is not None and p.stdout.readline().strip() == "ready"
    gateway = _gateway_of(p.pid)
    os.killpg(p.pid, sig)
    out, err = p.communicate(timeout=20)
    assert p.returncode == 42, err
    assert "hello from allowed.test" in out  # the gateway still served after Ctrl-C
    with pytest.raises(ProcessLookupError):
        os.kill(gateway, 0)  # and then ended with the session


def test_the_gateway_process_is_gone_after_a_normal_end(lab: Lab, tmp_path: Path) -> None:
    p = _start(lab, tmp_path, "echo ready; sleep 0.5")
    assert p.stdout is not None and p.stdout.readline().strip() == "ready"
    gateway = _gateway_of(p.pid)
    _, err = p.communicate(timeout=20)
    assert p.returncode == 0, err
    with pytest.raises(ProcessLookupError):
        os.kill(gateway, 0)
