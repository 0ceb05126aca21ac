"""`corridor verify`, `report`, `key show`, `suggest` and `log --format/--follow`, as a user
runs them: exit codes, what they print, and a report verified in another state directory."""

from __future__ import annotations

import json
import sqlite3
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from corridor.audit.events import Event, Kind
from corridor.audit.keys import load_or_create_signer
from corridor.audit.store import DB_FILENAME, EventWriter
from corridor.policy import load_policy

CORRIDOR = [sys.executable, "-m", "corridor"]
T0 = 1700000000.0  # 2023-11-14 22:13:20 UTC: long before any test runs


def corridor(*args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*CORRIDOR, *args], capture_output=True, text=True, timeout=timeout)


def record(state: Path, session: str, *middle: Event, seal: bool = True) -> None:
    start = Event(session, Kind.SESSION_START, T0, data={"command": ["make"], "user": "dev"})
    end = Event(session, Kind.SESSION_END, T0 + 9, data={"exit_code": 0})
    with EventWriter(state / DB_FILENAME, load_or_create_signer(state) if seal else None) as w:
        for event in (start, *middle, end):
            w.emit(event)


def conn(session: str, i: int, host: str = "allowed.test", decision: str = "allow") -> Event:
    reason = "allowed by rule" if decision == "allow" else "no rule allows this host"
    return Event(
        session, Kind.CONNECTION, T0 + i, decision=decision, host=host, port=443, conn_id=i,
        protocol="tls", reason=reason,
    )  # fmt: skip


@pytest.fixture
def state(tmp_path: Path) -> Path:
    path = tmp_path / "state"
    record(path, "s1", conn("s1", 1), conn("s1", 2, "denied.test", "deny"))
    record(path, "s2", conn("s2", 1), conn("s2", 2))
    return path


def tamper(state: Path, sql: str) -> None:
    with sqlite3.connect(state / DB_FILENAME) as db:
        db.execute(sql)


# -- verify -------------------------------------------------------------------------------


def test_verify_the_last_session_and_all(state: Path) -> None:
    r = corridor("verify", "--state-dir", str(state))
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith("s2  OK          4 records, signed by SHA256:")
    r = corridor("verify", "--all", "--state-dir", str(state))
    assert r.returncode == 0
    assert r.stdout.splitlines()[-1] == "2 sessions: 2 verified, 0 failed"


def test_verify_names_the_altered_record_and_exits_1(state: Path) -> None:
    tamper(state, "UPDATE events SET host = 'innocent.test' WHERE session = 's1' AND n = 2")
    r = corridor("verify", "--all", "--state-dir", str(state))
    assert r.returncode == 1
    lines = r.stdout.splitlines()
    assert lines[0].startswith("s1  TAMPERED    record #2 (seq ")
    assert lines[0].endswith("connection innocent.test:443, 2023-11-14 22:13:22 UTC) was altered: "
                             "its contents do not match its hash")  # fmt: skip
    assert lines[1].startswith("s2  OK")
    assert lines[2] == "2 sessions: 1 verified, 1 failed"


def test_verify_an_unclosed_session_exits_1(state: Path) -> None:
    tamper(state, "DELETE FROM events WHERE session = 's2' AND kind = 'checkpoint'")
    r = corridor("verify", "--session", "s2", "--state-dir", str(state))
    assert r.returncode == 1
    assert "NOT CLOSED  not closed: no checkpoint; the chain holds for all 4 records" in r.stdout


def test_verify_against_a_pinned_key_that_did_not_sign(state: Path, tmp_path: Path) -> None:
    other = tmp_path / "other-state"
    pinned = tmp_path / "pinned.pub"
    pinned.write_text(corridor("key", "show", "--state-dir", str(other)).stdout)
    r = corridor("verify", "--key", str(pinned), "--state-dir", str(state))
    assert r.returncode == 1
    assert "was signed by key SHA256:" in r.stdout and "not by the pinned key" in r.stdout


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--session", "s1", "--all"], "--session and --all exclude each other"),
        (["--session", "nope"], "--session nope: no such session in"),
        (["--key", "/nonexistent.pub"], "--key /nonexistent.pub: No such file or directory"),
        (["--report", "/nonexistent.json", "--all"], "--report verifies the one session"),
    ],
)
def test_verify_usage_errors_exit_2(state: Path, args: list[str], message: str) -> None:
    r = corridor("verify", *args, "--state-dir", str(state))
    assert r.returncode == 2, r.stdout
    assert r.stderr.startswith(f"corridor: error: {message}")


def test_verify_without_any_key(tmp_path: Path) -> None:
    state = tmp_path / "state"
    record(state, "s1", seal=False)
    r = corridor("verify", "--state-dir", str(state))
    assert r.returncode == 2
    assert "no signing key in" in r.stderr and "--key FILE" in r.stderr


# -- report, on this machine and another ---------------------------------------------------


def test_report_verified_elsewhere_with_only_the_public_key(state: Path, tmp_path: Path) -> None:
    pub = tmp_path / "team.pub"
    pub.write_text(corridor("key", "show", "--state-dir", str(state)).stdout)
    r = corridor("report", "s1", "--format", "json", "--state-dir", str(state))
    assert r.returncode == 0, r.stderr
    saved = tmp_path / "s1.json"
    saved.write_text(r.stdout)
    elsewhere = tmp_path / "elsewhere"  # no log, no private key
    r = corridor("verify", "--report", str(saved), "--key", str(pub), "--state-dir", str(elsewhere))
    assert r.returncode == 0, r.stdout + r.stderr
    assert r.stdout.startswith("s1  OK          4 records, signed by SHA256:")
    assert not elsewhere.exists()

    data = json.loads(saved.read_text())
    data["refusals"] = []  # hide a refusal from the summary
    saved.write_text(json.dumps(data))
    r = corridor("verify", "--report", str(saved), "--key", str(pub))
    assert r.returncode == 1
    assert r.stdout.splitlines()[-1] == (
        "s1  TAMPERED    the report's refusals do not match its signed records"
    )

    data["records"][2]["event"]["host"] = "innocent.test"  # and from the records
    saved.write_text(json.dumps(data))
    r = corridor("verify", "--report", str(saved), "--key", str(pub))
    assert r.returncode == 1 and "record #2" in r.stdout and "was altered" in r.stdout


def test_report_html_verifies_too(state: Path, tmp_path: Path) -> None:
    pub = tmp_path / "team.pub"
    pub.write_text(corridor("key", "show", "--state-dir", str(state)).stdout)
    page = tmp_path / "s1.html"
    page.write_text(corridor("report", "s1", "--format", "html", "--state-dir", str(state)).stdout)
    assert page.read_text().startswith("<!doctype html>")
    r = corridor("verify", "--report", str(page), "--key", str(pub))
    assert r.returncode == 0, r.stdout + r.stderr


def test_report_text_and_exit_1_when_tampered(state: Path) -> None:
    r = corridor("report", "--state-dir", str(state))
    assert r.returncode == 0 and r.stdout.startswith("corridor session report: s2")
    tamper(state, "DELETE FROM events WHERE session = 's2' AND n = 1")
    r = corridor("report", "--state-dir", str(state))
    assert r.returncode == 1
    assert "Verification: tampered: record #1 of the session was removed" in r.stdout
    assert r.stderr.startswith("corridor: warning: s2 tampered: record #1")


# -- key show -----------------------------------------------------------------------------


def test_key_show(tmp_path: Path) -> None:
    state = tmp_path / "fresh"
    r = corridor("key", "show", "--state-dir", str(state))
    assert r.returncode == 0
    lines = r.stdout.splitlines()
    assert lines[0] == "# corridor audit signing key (Ed25519)"
    assert lines[1] == f"# fingerprint {load_or_create_signer(state).fingerprint}"
    assert lines[3] == "-----BEGIN PUBLIC KEY-----" and lines[-1] == "-----END PUBLIC KEY-----"
    assert corridor("key", "show", "--state-dir", str(state)).stdout == r.stdout  # same key


# -- suggest ------------------------------------------------------------------------------


def test_suggest_writes_a_policy_that_loads(state: Path, tmp_path: Path) -> None:
    existing = tmp_path / "policy.yaml"
    existing.write_text(
        "version: 1\nallow:\n  - host: allowed.test\n    ports: [443]\n  - host: old.test\n"
    )
    r = corridor(
        "suggest", "--since", "100000w", "--policy", str(existing), "--state-dir", str(state)
    )
    assert r.returncode == 0, r.stderr
    out = tmp_path / "suggested.yaml"
    out.write_text(r.stdout)
    policy = load_policy(out)
    assert [(rule.host, rule.ports) for rule in policy.allow] == [("allowed.test", [443])]
    assert "  # 3 uses in 2 sessions, last 2023-11-14 22:13 UTC" in r.stdout
    assert f"#     {existing}:5 allow[1]: old.test" in r.stdout
    assert "no refusal recurs" in r.stdout


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--since", "soon"], "--since 'soon': not a duration"),
        (["--policy", "/nonexistent.yaml"], "/nonexistent.yaml"),
    ],
)
def test_suggest_usage_errors(state: Path, args: list[str], message: str) -> None:
    r = corridor("suggest", *args, "--state-dir", str(state))
    assert r.returncode == 2 and message in r.stderr


def test_suggest_with_no_recent_session(state: Path) -> None:
    r = corridor("suggest", "--since", "1h", "--state-dir", str(state))  # recorded in 2023
    assert r.returncode == 0
    assert "allow: []  # nothing was used" in r.stdout
    assert "no session started in the last 1h" in r.stderr


# -- log ----------------------------------------------------------------------------------


def test_log_formats(state: Path) -> None:
    jsonl = corridor("log", "--format", "jsonl", "--session", "s1", "--state-dir", str(state))
    assert (
        jsonl.stdout
        == corridor("log", "--json", "--session", "s1", "--state-dir", str(state)).stdout
    )
    ocsf = corridor("log", "--format", "ocsf", "--session", "s1", "--state-dir", str(state))
    records = [json.loads(line) for line in ocsf.stdout.splitlines()]
    assert [(r["class_uid"], r["activity_id"]) for r in records] == [(4001, 1), (4001, 5)]
    blocked = corridor(
        "log", "--format", "ocsf", "--blocked", "--session", "s1", "--state-dir", str(state)
    )
    assert [
        json.loads(line)["dst_endpoint"]["hostname"] for line in blocked.stdout.splitlines()
    ] == ["denied.test"]
    r = corridor("log", "--json", "--format", "ocsf", "--state-dir", str(state))
    assert r.returncode == 2 and "--json and --format ocsf exclude each other" in r.stderr


SLOW_WRITER = textwrap.dedent(
    """
    import sys, time
    from pathlib import Path
    from corridor.audit.events import Event, Kind
    from corridor.audit.keys import load_or_create_signer
    from corridor.audit.store import EventWriter

    state = Path(sys.argv[1])
    with EventWriter(state / "events.db", load_or_create_signer(state)) as w:
        w.emit(Event("live", Kind.SESSION_START, time.time(), data={"command": ["sleep"]}))
        w.flush()
        print("started", flush=True)
        sys.stdin.readline()  # the test says when to go on
        for i in range(3):
            w.emit(Event("live", Kind.DNS, time.time(), decision="allow", host=f"h{i}.test"))
            w.flush()
            time.sleep(0.2)
        w.emit(Event("live", Kind.SESSION_END, time.time(), data={"exit_code": 0}))
    """
)


def test_log_follow_streams_until_the_session_ends(tmp_path: Path) -> None:
    state = tmp_path / "state"
    writer = subprocess.Popen(
        [sys.executable, "-c", SLOW_WRITER, str(state)],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    assert writer.stdout is not None and writer.stdin is not None
    assert writer.stdout.readline().strip() == "started"
    follow = subprocess.Popen(
        [*CORRIDOR, "log", "--follow", "--format", "jsonl", "--state-dir", str(state)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    assert follow.stdout is not None
    first = json.loads(follow.stdout.readline())  # printed while the session still runs
    assert (first["kind"], first["n"]) == ("session_start", 0)
    assert follow.poll() is None
    writer.stdin.write("go\n")
    writer.stdin.flush()
    started = time.monotonic()
    rest, _ = follow.communicate(timeout=30)
    assert follow.returncode == 0
    assert [json.loads(line)["kind"] for line in rest.splitlines()] == [
        "dns", "dns", "dns", "session_end",
    ]  # fmt: skip
    assert time.monotonic() - started < 10
    writer.wait(timeout=30)
