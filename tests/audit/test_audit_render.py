"""Rows, the table, JSON lines and the end-of-run summary."""

from __future__ import annotations

import io
import json
import time
from collections.abc import Iterator

import pytest
from rich.console import Console

from corridor.audit.events import FIELD_NAMES, Event, Kind
from corridor.audit.render import (
    event_line,
    human_bytes,
    human_duration,
    render_jsonl,
    render_table,
)
from corridor.audit.rows import CONN_KEYS, DNS_KEYS, Row, connection_rows, summary_line

SID = "20261127T031500Z-3f9a2c"
T0 = 1795749300.0  # 2026-11-27 03:15:00 UTC


@pytest.fixture(autouse=True)
def utc(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    # Times are shown in local time; pin it so the expected texts are exact.
    monkeypatch.setenv("TZ", "UTC")
    time.tzset()
    yield
    monkeypatch.undo()
    time.tzset()


def session(*middle: Event, end: bool = True) -> list[Event]:
    start = Event(
        SID,
        Kind.SESSION_START,
        T0,
        data={"command": ["claude", "-p", "fix the [bold]tests[/bold]"], "workspace": "/w"},
    )
    tail = [Event(SID, Kind.SESSION_END, T0 + 60, data={"exit_code": 0})] if end else []
    return [start, *middle, *tail]


def dns(ts: float, name: str, decision: str, reason: str, qtype: str = "A") -> Event:
    return Event(
        SID, Kind.DNS, T0 + ts, decision=decision, reason=reason, host=name, qtype=qtype,
        protocol="dns-udp",
    )  # fmt: skip


def conn(ts: float, conn_id: int, host: str, decision: str, reason: str, **kw: object) -> Event:
    return Event(
        SID, Kind.CONNECTION, T0 + ts, decision=decision, reason=reason, host=host, port=443,
        address="192.0.2.10", protocol="tls", conn_id=conn_id, **kw,  # type: ignore[arg-type]
    )  # fmt: skip


def end(ts: float, conn_id: int, up: int, down: int, ms: float, sid: str = SID) -> Event:
    return Event(
        sid, Kind.CONNECTION_END, T0 + ts, conn_id=conn_id, bytes_up=up, bytes_down=down,
        duration_ms=ms,
    )  # fmt: skip


EVENTS = session(
    dns(0.1, "api.example.test", "allow", "rule api", qtype="AAAA"),
    conn(0.2, 1, "api.example.test", "allow", "rule api", rule="api"),
    dns(0.3, "exfil.evil.test", "deny", "no rule matches exfil.evil.test", qtype="TXT"),
    conn(0.4, 2, "evil.test", "deny", "no rule matches evil.test"),
    conn(0.5, 3, "audit.example.test", "would-deny", "no rule matches audit.example.test"),
    conn(0.6, 4, "killed.example.test", "allow", "rule api", rule="api"),  # never ends
    end(2.7, 1, 1536, 5 * 1024 * 1024, 2500.0),
    end(3.0, 3, 10, 20, 2000.0),
)


# -- rows ---------------------------------------------------------------------------------


def test_rows_merge_connections_and_keep_dns_queries() -> None:
    rows = connection_rows(EVENTS)
    assert [(r.kind, r.host, r.decision, r.closed) for r in rows] == [
        ("dns", "api.example.test", "allow", False),
        ("conn", "api.example.test", "allow", True),
        ("dns", "exfil.evil.test", "deny", False),
        ("conn", "evil.test", "deny", False),
        ("conn", "audit.example.test", "would-deny", True),
        ("conn", "killed.example.test", "allow", False),
    ]
    merged = rows[1]
    assert merged == Row(
        session=SID, kind="conn", ts=T0 + 0.2, decision="allow", reason="rule api",
        rule="api", protocol="tls", host="api.example.test", port=443,
        address="192.0.2.10", conn_id=1, bytes_up=1536, bytes_down=5 * 1024 * 1024,
        duration_ms=2500.0, closed=True,
    )  # fmt: skip
    killed = rows[5]
    assert (killed.bytes_up, killed.bytes_down, killed.duration_ms) == (None, None, None)


def test_same_conn_id_in_two_sessions_is_two_connections() -> None:
    other = Event("other", Kind.CONNECTION, T0 + 1, decision="allow", conn_id=1, host="b.test")
    rows = connection_rows([conn(0, 1, "a.test", "allow", "r"), other, end(2, 1, 5, 6, 7.0)])
    assert [(r.host, r.bytes_up, r.closed) for r in rows] == [
        ("a.test", 5, True),
        ("b.test", None, False),
    ]


def test_close_without_its_decision_record_still_shows() -> None:
    rows = connection_rows([end(5.0, 9, 1, 2, 2000.0)])
    assert [(r.kind, r.conn_id, r.ts, r.decision, r.bytes_down) for r in rows] == [
        ("conn", 9, T0 + 3.0, None, 2)  # started duration_ms before its close
    ]


def test_rows_are_in_time_order() -> None:
    rows = connection_rows(
        [dns(0.5, "late.test", "allow", "r"), dns(0.1, "early.test", "allow", "r")]
    )
    assert [r.host for r in rows] == ["early.test", "late.test"]


# -- JSON lines ---------------------------------------------------------------------------


def jsonl(events: list[Event], *, blocked_only: bool) -> list[dict[str, object]]:
    out = io.StringIO()
    render_jsonl(events, out, blocked_only=blocked_only)
    text = out.getvalue()
    assert text.endswith("\n")
    return [json.loads(line) for line in text.splitlines()]


def test_jsonl_keys_are_stable_per_kind() -> None:
    lines = jsonl(EVENTS, blocked_only=False)
    assert [line["kind"] for line in lines] == [
        "session_start", "dns", "conn", "dns", "conn", "conn", "conn", "session_end",
    ]  # fmt: skip
    for line in lines:
        if line["kind"] == "conn":
            assert list(line) == list(CONN_KEYS)
        elif line["kind"] == "dns":
            assert list(line) == list(DNS_KEYS)
    assert lines[1] == {
        "session": SID, "kind": "dns", "ts": T0 + 0.1, "protocol": "dns-udp",
        "name": "api.example.test", "qtype": "AAAA", "address": None, "decision": "allow",
        "reason": "rule api", "rule": None,
    }  # fmt: skip
    killed = lines[6]
    assert killed["host"] == "killed.example.test"
    assert (killed["bytes_up"], killed["closed"]) == (None, False)


def test_jsonl_session_records_carry_every_field() -> None:
    first, last = jsonl(EVENTS, blocked_only=True)[0], jsonl(EVENTS, blocked_only=True)[-1]
    assert first["kind"] == "session_start" and first["session"] == SID
    assert first["data"] == {
        "command": ["claude", "-p", "fix the [bold]tests[/bold]"],
        "workspace": "/w",
    }
    assert first["ts"] == T0 and first["host"] is None and first["conn_id"] is None
    assert last["kind"] == "session_end" and last["data"] == {"exit_code": 0}
    assert len(first) == len(last) == len(FIELD_NAMES)


def test_jsonl_blocked_only() -> None:
    lines = jsonl(EVENTS, blocked_only=True)
    assert [(line["kind"], line.get("decision")) for line in lines] == [
        ("session_start", None),
        ("dns", "deny"),
        ("conn", "deny"),
        ("conn", "would-deny"),
        ("session_end", None),
    ]


def test_jsonl_escapes_control_characters() -> None:
    out = io.StringIO()
    render_jsonl([dns(0, "evil\x1b]8;;x\x07.test", "deny", "r")], out, blocked_only=False)
    assert "\x1b" not in out.getvalue() and "\\u001b]8;;x\\u0007" in out.getvalue()


# -- the table ----------------------------------------------------------------------------


def table_text(events: list[Event], *, blocked_only: bool) -> str:
    console = Console(record=True, width=160)
    render_table(events, console, blocked_only=blocked_only)
    return console.export_text()


def line_with(text: str, needle: str) -> str:
    found = [line for line in text.splitlines() if needle in line]
    assert len(found) == 1, (needle, text)
    return found[0]


def test_table_shows_header_and_every_row() -> None:
    text = table_text(EVENTS, blocked_only=False)
    header = text.splitlines()[0]
    assert header.startswith(f"session {SID}")
    # The command's brackets are shown as typed, not taken as rich markup.
    assert "claude -p 'fix the [bold]tests[/bold]'" in header
    assert "started 2026-11-27 03:15:00 UTC" in header and header.endswith("exit 0")
    for column in ("time", "protocol", "destination", "decision", "reason", "up", "down"):
        assert column in text

    api = line_with(text, "api.example.test:443")
    for cell in ("03:15:00.200", "conn", "tls", "192.0.2.10", "allow", "1.5 KiB", "5.0 MiB"):
        assert cell in api
    assert "2.5 s" in api

    query = line_with(text, "exfil.evil.test TXT")
    assert "dns" in query and "deny" in query and "no rule matches exfil.evil.test" in query

    refused = line_with(text, "evil.test:443")
    assert "deny" in refused and "?" not in refused  # nothing was sent: no unknowns

    killed = line_with(text, "killed.example.test:443")
    assert killed.rstrip().endswith("?")  # gateway gone before the close: bytes unknown
    assert killed.count("?") == 3

    assert "would-deny" in line_with(text, "audit.example.test:443")


def test_table_rows_in_time_order() -> None:
    text = table_text(EVENTS, blocked_only=False)
    order = [text.index(name) for name in ("api.example.test A", "exfil", "killed")]
    assert order == sorted(order)


def test_table_blocked_only() -> None:
    text = table_text(EVENTS, blocked_only=True)
    assert "exfil.evil.test" in text and "evil.test:443" in text and "audit.example" in text
    assert "api.example.test" not in text and "killed.example.test" not in text


def test_table_with_nothing_blocked() -> None:
    text = table_text(session(dns(0.1, "ok.test", "allow", "r")), blocked_only=True)
    assert "no blocked DNS queries or connections recorded" in text
    assert "ok.test" not in text


def test_blocked_rows_are_highlighted() -> None:
    console = Console(record=True, width=160, force_terminal=True, file=io.StringIO())
    render_table(EVENTS, console, blocked_only=False)
    text = console.export_text(styles=True)
    red, yellow = "\x1b[31m", "\x1b[33m"
    assert red in line_with(text, "evil.test:443") and red in line_with(text, "exfil.evil")
    assert yellow in line_with(text, "audit.example.test:443")
    for allowed in ("api.example.test:443", "killed.example.test:443"):
        line = line_with(text, allowed)
        assert red not in line and yellow not in line


def test_session_still_running_or_killed() -> None:
    text = table_text(session(end=False), blocked_only=False)
    assert "no end recorded (still running, or corridor was killed)" in text
    assert "no network activity recorded" in text


@pytest.mark.parametrize(
    ("recorded", "shown"),
    [("SIGTERM", "killed by SIGTERM"), (9, "killed by SIGKILL"), (999, "killed by signal 999")],
)
def test_killed_by_signal(recorded: object, shown: str) -> None:
    data = {"exit_code": 137, "signal": recorded}
    events = [*session(end=False), Event(SID, Kind.SESSION_END, T0 + 1, data=data)]
    assert table_text(events, blocked_only=False).splitlines()[0].endswith(shown)


def test_recorded_text_cannot_drive_the_terminal() -> None:
    console = Console(record=True, width=160, force_terminal=True, file=io.StringIO())
    hostile = "evil\x1b[2J\x1b]8;;https://x.test\x07.test"
    render_table(session(dns(0.1, hostile, "deny", "[red]fake[/red]")), console, blocked_only=False)
    text = console.export_text()
    assert "\x1b" not in text and "\x07" not in text
    assert "evil\\x1b[2J\\x1b]8;;https://x.test\\x07.test" in text.replace("\n", "")
    assert "[red]fake[/red]" in text


@pytest.mark.parametrize(
    ("count", "shown"),
    [(0, "0 B"), (1023, "1023 B"), (1024, "1.0 KiB"), (1536, "1.5 KiB"),
     (5 * 1024**2, "5.0 MiB"), (3 * 1024**3, "3.0 GiB"), (2 * 1024**5, "2048.0 TiB")],
)  # fmt: skip
def test_human_bytes(count: int, shown: str) -> None:
    assert human_bytes(count) == shown


@pytest.mark.parametrize(
    ("ms", "shown"),
    [(0.4, "0.4 ms"), (9.94, "9.9 ms"), (85.2, "85 ms"), (1200, "1.2 s"), (59_900, "59.9 s"),
     (123_000, "2m 03s"), (3_720_000, "1h 02m")],
)  # fmt: skip
def test_human_duration(ms: float, shown: str) -> None:
    assert human_duration(ms) == shown


# -- summary ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("events", "line"),
    [
        pytest.param(
            EVENTS,
            f"corridor: session {SID} - 2 connections allowed, 1 blocked, 1 would be blocked, "
            "2 DNS queries (1 refused) - `corridor log` to see them",
            id="mixed",
        ),
        pytest.param(
            session(
                conn(0.1, 1, "a.test", "allow", "r"),
                dns(0.2, "a.test", "allow", "r"),
                dns(0.3, "b.test", "would-deny", "r"),
            ),
            f"corridor: session {SID} - 1 connection allowed, 0 blocked, "
            "2 DNS queries (0 refused, 1 would be refused) - `corridor log` to see them",
            id="singular-and-audit-mode",
        ),
        pytest.param(
            session(),
            f"corridor: session {SID} - 0 connections allowed, 0 blocked, "
            "0 DNS queries (0 refused) - `corridor log` to see them",
            id="quiet",
        ),
        pytest.param([], "corridor: no events recorded", id="nothing"),
    ],
)
def test_summary_line(events: list[Event], line: str) -> None:
    assert summary_line(events) == line


# -- HTTP requests, packages, and one line per event ---------------------------------------

URL = "https://npm-mirror.test/lodash/-/lodash-4.17.21.tgz"
PACKAGE = Event(
    SID, Kind.PACKAGE, T0 + 1, host="npm-mirror.test", port=443, conn_id=1,
    data={"ecosystem": "npm", "name": "lodash", "version": "4.17.21",
          "file": "lodash-4.17.21.tgz", "url": URL},
)  # fmt: skip
REQUEST = Event(
    SID, Kind.HTTP, T0 + 0.9, decision="allow", host="npm-mirror.test", port=443, conn_id=1,
    method="GET", path="/lodash/-/lodash-4.17.21.tgz", status=200, protocol="https",
)  # fmt: skip


def test_http_and_package_rows() -> None:
    lines = jsonl(session(REQUEST, PACKAGE), blocked_only=False)
    request, package = lines[1], lines[2]
    assert request == {
        "session": SID, "kind": "http", "ts": T0 + 0.9, "conn_id": 1, "protocol": "https",
        "host": "npm-mirror.test", "port": 443, "method": "GET",
        "path": "/lodash/-/lodash-4.17.21.tgz", "status": 200, "decision": "allow",
        "reason": None, "rule": None,
    }  # fmt: skip
    assert package == {
        "session": SID, "kind": "package", "ts": T0 + 1, "conn_id": 1,
        "host": "npm-mirror.test", "port": 443, "ecosystem": "npm", "name": "lodash",
        "version": "4.17.21", "file": "lodash-4.17.21.tgz", "url": URL,
    }  # fmt: skip
    text = table_text(session(REQUEST, PACKAGE), blocked_only=False)
    # The destination column wraps at spaces: method, target and status on their lines.
    assert "GET" in line_with(text, "03:15:00.900")
    line_with(text, "npm-mirror.test:443/lodash/-/lodash-4.17.21.tgz")
    line_with(text, "-> 200")
    assert "npm: lodash 4.17.21" in text


@pytest.mark.parametrize(
    ("event", "line"),
    [
        (EVENTS[0], "03:15:00.000  session_start  -  claude -p 'fix the [bold]tests[/bold]'"),
        (EVENTS[3],
         "03:15:00.300  dns  deny  exfil.evil.test TXT  no rule matches exfil.evil.test"),
        (EVENTS[4], "03:15:00.400  connection  deny  evil.test:443  no rule matches evil.test"),
        (EVENTS[7], "03:15:02.700  connection_end  -  ?  up 1.5 KiB down 5.0 MiB"),
        (REQUEST, "03:15:00.900  http  allow  GET npm-mirror.test:443/lodash/-/lodash-4.17.21.tgz"),
        (PACKAGE, "03:15:01.000  package  -  npm: lodash 4.17.21"),
        (Event(SID, Kind.DNS, T0, decision="deny", host="evil\x1b[2J.test"),
         "03:15:00.000  dns  deny  evil\\x1b[2J.test"),
    ],
)  # fmt: skip
def test_event_line(event: Event, line: str) -> None:
    assert event_line(event) == line


# -- credentials swapped in, and credentials caught leaving ---------------------------------

INJECTED = Event(
    SID, Kind.CREDENTIAL, T0 + 2, conn_id=3, protocol="https", host="git.test", port=443,
    data={"name": "GITHUB_TOKEN"},
)  # fmt: skip
LEAK = Event(
    SID, Kind.EXFILTRATION, T0 + 3, conn_id=4, protocol="https", host="paste.test", port=443,
    decision="deny", reason="the placeholder of GITHUB_TOKEN (base64) in the body; it is "
    "bound to git.test", data={"name": "GITHUB_TOKEN", "what": "placeholder", "where": "body"},
)  # fmt: skip


def test_credential_and_exfiltration_rows() -> None:
    lines = jsonl(session(INJECTED, LEAK), blocked_only=False)
    assert lines[1] == {
        "session": SID, "kind": "credential", "ts": T0 + 2, "conn_id": 3, "protocol": "https",
        "host": "git.test", "port": 443, "credential": "GITHUB_TOKEN",
    }  # fmt: skip
    assert lines[2] == {
        "session": SID, "kind": "exfiltration", "ts": T0 + 3, "conn_id": 4,
        "protocol": "https", "host": "paste.test", "port": 443, "credential": "GITHUB_TOKEN",
        "found": "placeholder in body", "decision": "deny", "reason": LEAK.reason, "rule": None,
    }  # fmt: skip
    # --blocked keeps the exfiltration attempt and drops the injection.
    blocked = jsonl(session(INJECTED, LEAK), blocked_only=True)
    assert [line["kind"] for line in blocked[1:-1]] == ["exfiltration"]
    text = table_text(session(INJECTED, LEAK), blocked_only=False)
    assert "injected" in line_with(text, "03:15:02.000")
    assert "deny" in line_with(text, "03:15:03.000")
    assert "GITHUB_TOKEN" in text and "paste.test:443" in text and "git.test:443" in text


def test_a_session_ended_by_the_gateway_dying_says_so() -> None:
    data = {"exit_code": 137, "signal": 9, "gateway_failed": True,
            "gateway_error": "the gateway process was killed by SIGKILL (signal 9)"}  # fmt: skip
    events = [*session(end=False), Event(SID, Kind.SESSION_END, T0 + 1, data=data)]
    header = table_text(events, blocked_only=False).splitlines()[0]
    assert header.endswith("ended: the gateway process was killed by SIGKILL (signal 9)")
