"""The audit trail in the lab: `kill -9` of corridor mid-traffic loses no event, recorded
sessions verify and report, and `suggest` learns a policy that then works."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from tests.lab.config import CORRIDOR_LAB_FLAGS

from corridor.policy import load_policy

pytestmark = pytest.mark.lab

CORRIDOR = [sys.executable, "-m", "corridor"]
REQUESTS_BEFORE_KILL = 20  # enough that the writer thread is mid-stream when it dies
TRAFFIC_TIMEOUT_S = 90


@pytest.fixture
def ws(tmp_path, lab) -> Path:
    d = tmp_path / "ws"
    d.mkdir()
    shutil.copy(lab.ca_pem, d / "lab-ca.pem")
    return d


@pytest.fixture
def state(tmp_path) -> Path:
    return tmp_path / "state"


def run_argv(state: Path, ws: Path, *args: str) -> list[str]:
    # CORRIDOR_LAB_FLAGS: the world's services live in documentation ranges.
    return [*CORRIDOR, "run", "--state-dir", str(state), "--workspace", str(ws),
            *CORRIDOR_LAB_FLAGS, *args]  # fmt: skip


def cli(lab, state: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return lab.run([*CORRIDOR, *args, "--state-dir", str(state)])


def events_of(lab, state: Path, session: str | None = None) -> list[dict]:
    args = ["log", "--format", "jsonl", *(["--session", session] if session else [])]
    r = cli(lab, state, *args)
    assert r.returncode == 0, r.stderr
    return [json.loads(line) for line in r.stdout.splitlines()]


def world_requests(cap, host: str) -> list[dict]:
    return [r for r in cap.http_requests() if (r.get("host") or "").split(":")[0] == host]


def test_kill_9_of_corridor_during_traffic_loses_no_event(lab, ws, state):
    loop = (
        "i=0; while [ $i -lt 5000 ]; do "
        "curl -s -o /dev/null -m 5 --cacert lab-ca.pem https://allowed.test/; i=$((i+1)); done"
    )
    argv = run_argv(state, ws, "--allow", "allowed.test", "--", "sh", "-c", loop)
    with lab.capture() as cap:
        proc = lab.popen(argv, cwd=str(ws))
        try:
            deadline = time.monotonic() + TRAFFIC_TIMEOUT_S
            while len(world_requests(cap, "allowed.test")) < REQUESTS_BEFORE_KILL:
                assert proc.poll() is None, proc.communicate()
                assert time.monotonic() < deadline, "no traffic reached the world"
                time.sleep(0.05)
            os.kill(proc.pid, signal.SIGKILL)  # corridor itself: gateway and writer die
            proc.wait(timeout=30)
        finally:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.communicate(timeout=30)
        assert proc.returncode == -signal.SIGKILL
        time.sleep(0.5)  # requests already on the wire land in the world's log
        requests = world_requests(cap, "allowed.test")
    assert len(requests) >= REQUESTS_BEFORE_KILL

    # Any corridor command first imports the dead writer's spool, then verifies.
    r = cli(lab, state, "verify")
    assert r.returncode == 0, r.stdout + r.stderr
    assert "RECOVERED" in r.stdout and "recovered after corridor was killed" in r.stdout
    assert "recovered session" in r.stderr
    assert cli(lab, state, "verify").stderr == ""  # imported once

    rows = events_of(lab, state)
    conns = sorted(
        row["ts"]
        for row in rows
        if row["kind"] == "conn" and row["host"] == "allowed.test" and row["decision"] == "allow"
    )
    # Every request the world saw came over a connection whose event was recorded before
    # it was dialled: the k-th request has at least k connection events at or before it.
    for k, request in enumerate(sorted(r["t"] for r in requests), start=1):
        assert sum(ts <= request for ts in conns) >= k, (k, request, len(conns))
    assert rows[0]["kind"] == "session_start"
    assert not any(row["kind"] == "session_end" for row in rows)  # it never got to end


def test_sessions_verify_report_and_feed_suggest(lab, ws, state, tmp_path):
    fetch = "curl -s -o /dev/null -m 5 --cacert lab-ca.pem"
    audit = tmp_path / "audit.yaml"
    audit.write_text("version: 1\nmode: audit\n")
    enforce = tmp_path / "enforce.yaml"
    enforce.write_text("version: 1\nallow:\n  - host: allowed.test\n  - host: gone.test\n")

    # Audit mode: nothing is allowed, everything would be denied and goes through.
    learn = f"{fetch} https://allowed.test/ && {fetch} https://other.test/ && echo learned"
    r = lab.run(run_argv(state, ws, "--policy", str(audit), "--", "sh", "-c", learn), cwd=ws)
    assert "learned" in r.stdout, r.stderr
    # Enforce mode: one host allowed, a refusal that recurs.
    work = (
        f"{fetch} https://allowed.test/; {fetch} https://denied.test/; {fetch} https://denied.test/"
    )
    r = lab.run(run_argv(state, ws, "--policy", str(enforce), "--", "sh", "-c", work), cwd=ws)

    r = cli(lab, state, "verify", "--all")
    assert r.returncode == 0, r.stdout + r.stderr
    assert r.stdout.splitlines()[-1] == "2 sessions: 2 verified, 0 failed"

    r = cli(lab, state, "report", "--format", "json")
    assert r.returncode == 0, r.stderr
    report = json.loads(r.stdout)
    assert [(h["host"], h["port"]) for h in report["hosts"]] == [("allowed.test", 443)]
    assert {(x["kind"], x["host"]) for x in report["refusals"]} >= {("connection", "denied.test")}
    assert report["checkpoint"]["count"] == len(report["records"]) - 1

    r = cli(lab, state, "suggest", "--since", "1h", "--policy", str(enforce))
    assert r.returncode == 0, r.stderr
    suggested = tmp_path / "suggested.yaml"
    suggested.write_text(r.stdout)
    policy = load_policy(suggested)
    assert sorted((rule.host, rule.ports) for rule in policy.allow) == [
        ("allowed.test", [443]),
        ("other.test", [443]),
    ]
    assert "gone.test" in r.stdout.split("rules never used")[1]
    assert "denied.test:443 (connection, deny): no rule allows this host - 2 times" in r.stdout

    # The learned policy lets the audited work through in enforce mode.
    r = lab.run(run_argv(state, ws, "--policy", str(suggested), "--", "sh", "-c", learn), cwd=ws)
    assert "learned" in r.stdout, r.stderr


def test_the_sandbox_sees_neither_the_signing_key_nor_the_log(lab, ws, tmp_path):
    home = tmp_path / "home"
    home.mkdir()
    env = {"HOME": str(home), "XDG_STATE_HOME": None, "CORRIDOR_STATE_DIR": None}
    argv = [*CORRIDOR, "run", "--workspace", str(ws), *CORRIDOR_LAB_FLAGS, "--"]
    assert lab.run([*argv, "true"], cwd=ws, env=env).returncode == 0  # creates key and log
    state = home / ".local" / "state" / "corridor"
    assert (state / "keys" / "audit-signing-key.pem").exists()
    look = f"cat {state}/keys/audit-signing-key.pem; ls {state}; echo done"
    r = lab.run([*argv, "sh", "-c", look], cwd=ws, env=env)
    assert "done" in r.stdout
    assert "PRIVATE KEY" not in r.stdout and "events.db" not in r.stdout
