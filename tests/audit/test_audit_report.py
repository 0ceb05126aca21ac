"""The session report: its sections, its text, and what makes it verifiable elsewhere."""

from __future__ import annotations

import base64
import json
from pathlib import Path

import pytest

from corridor.audit.events import Event, Kind
from corridor.audit.keys import Signer, load_or_create_signer
from corridor.audit.report import (
    build_report,
    mismatched_sections,
    records_from_report,
    render_html,
    render_json,
    render_text,
)
from corridor.audit.store import DB_FILENAME, EventWriter, read_records
from corridor.audit.verify import Status, verify_session

SID = "20261127T031500Z-3f9a2c"
T0 = 1795749300.0
URL = "https://npm-mirror.test/lodash/-/lodash-4.17.21.tgz"


def events() -> list[Event]:
    start = {
        "command": ["npm", "install"], "workspace": "/w", "cwd": "/w", "user": "dev",
        "uid": 1000, "rootless": True, "policy": {"mode": "enforce", "allow": []},
        "policy_hash": "9f" * 32, "env_passed": ["HOME", "PATH"], "env_dropped": ["AWS_SECRET"],
    }  # fmt: skip
    conn = Kind.CONNECTION
    return [
        Event(SID, Kind.SESSION_START, T0, data=start),
        Event(SID, Kind.DNS, T0 + 1, decision="allow", host="npm-mirror.test", qtype="A"),
        Event(SID, Kind.DNS, T0 + 1.1, decision="deny", host="evil.test", qtype="TXT",
              reason="no rule allows this host"),
        Event(SID, conn, T0 + 2, decision="allow", host="npm-mirror.test", port=443, conn_id=1,
              protocol="tls", reason="allowed by rule"),
        Event(SID, Kind.PACKAGE, T0 + 2.5, host="npm-mirror.test", port=443, conn_id=1,
              data={"ecosystem": "npm", "name": "lodash", "version": "4.17.21",
                    "file": "lodash-4.17.21.tgz", "url": URL}),
        Event(SID, Kind.CREDENTIAL, T0 + 2.6, host="npm-mirror.test", port=443,
              data={"name": "NPM_TOKEN"}),
        Event(SID, conn, T0 + 3, decision="deny", host="evil.test", port=443, conn_id=2,
              protocol="tls", reason="no rule allows this host"),
        Event(SID, Kind.EXFILTRATION, T0 + 3.5, decision="deny", host="paste.test", port=443,
              reason="placeholder for NPM_TOKEN sent to a host it is not bound to",
              data={"name": "NPM_TOKEN"}),
        Event(SID, Kind.CONNECTION_END, T0 + 4, host="npm-mirror.test", port=443, conn_id=1,
              bytes_up=700, bytes_down=120_000, duration_ms=2000.0),
        Event(SID, conn, T0 + 5, decision="allow", host="npm-mirror.test", port=443, conn_id=3,
              protocol="tls", reason="allowed by rule"),
        Event(SID, Kind.SESSION_END, T0 + 9, data={"exit_code": 0, "duration_ms": 9000.0}),
    ]  # fmt: skip


@pytest.fixture
def signer(tmp_path: Path) -> Signer:
    return load_or_create_signer(tmp_path / "state")


@pytest.fixture
def recorded(tmp_path: Path, signer: Signer) -> list:
    db = tmp_path / "state" / DB_FILENAME
    with EventWriter(db, signer) as writer:
        for event in events():
            writer.emit(event)
    return read_records(db, SID)


def test_sections(recorded: list, signer: Signer) -> None:
    verdict = verify_session(SID, recorded, signer.public)
    report = build_report(SID, recorded, verdict)
    assert report["format"] == "corridor-report/1"
    assert report["who"] == {"user": "dev", "uid": 1000, "rootless": True}
    assert report["what"]["command_line"] == "npm install"
    assert report["when"]["started"] == T0 and report["when"]["exit_code"] == 0
    assert report["policy"]["hash"] == "9f" * 32 and report["policy"]["mode"] == "enforce"
    assert report["environment"]["dropped"] == ["AWS_SECRET"]
    assert report["hosts"] == [
        {
            "host": "npm-mirror.test", "port": 443, "connections": 2, "bytes_up": 700,
            "bytes_down": 120_000, "protocols": ["tls"], "would_deny": 0, "first": T0 + 2,
            "last": T0 + 5, "unclosed": 1,
        }
    ]  # fmt: skip
    assert [(r["kind"], r["host"], r["reason"]) for r in report["refusals"]] == [
        ("dns", "evil.test", "no rule allows this host"),
        ("connection", "evil.test", "no rule allows this host"),
        (
            "exfiltration",
            "paste.test",
            "placeholder for NPM_TOKEN sent to a host it is not bound to",
        ),
    ]
    assert report["dns"] == {"queries": 2, "refused": 1, "names": 2}
    assert report["packages"] == [
        {
            "ecosystem": "npm", "name": "lodash", "version": "4.17.21",
            "files": ["lodash-4.17.21.tgz"], "host": "npm-mirror.test", "downloads": 1,
            "first": T0 + 2.5,
        }
    ]  # fmt: skip
    assert report["credentials"] == [{"name": "NPM_TOKEN", "host": "npm-mirror.test", "uses": 1}]
    assert [x["name"] for x in report["exfiltration"]] == ["NPM_TOKEN"]
    checkpoint = report["checkpoint"]
    assert checkpoint["count"] == 11 and checkpoint["key"] == signer.fingerprint
    assert report["verification"]["status"] == "ok"
    assert len(report["records"]) == 12


def test_text(recorded: list, signer: Signer) -> None:
    text = render_text(build_report(SID, recorded, verify_session(SID, recorded, signer.public)))
    for expected in (
        f"corridor session report: {SID}",
        "  command    npm install",
        "  user       dev (uid 1000)",
        "  ended      2026-11-27 03:15:09 UTC  exit 0 after 9.0 s",
        f"  policy     enforce mode, sha256 {'9f' * 32}",
        "  env        dropped 1: AWS_SECRET",
        "Hosts reached (1)",
        "  npm-mirror.test:443  2 connections (tls)  up 700 B, down 117.2 KiB",
        "  03:15:03  connection deny       evil.test:443  no rule allows this host",
        "DNS: 2 queries for 2 names, 1 refused",
        "  npm     lodash 4.17.21",
        "  NPM_TOKEN -> npm-mirror.test (1 uses)",
        "  03:15:03  NPM_TOKEN -> paste.test",
        f"  signed by {signer.fingerprint} at ",
        f"Verification: ok: 11 records, signed by {signer.fingerprint}",
    ):
        assert expected in text.splitlines() or any(
            line.startswith(expected) for line in text.splitlines()
        ), expected


def test_json_round_trip_verifies_with_only_the_public_key(recorded: list, signer: Signer) -> None:
    report = json.loads(render_json(build_report(SID, recorded, None)))
    records = records_from_report(report)
    assert records == recorded
    assert verify_session(SID, records, signer.public).status is Status.OK
    assert mismatched_sections(report, records) == []


def test_an_edited_summary_is_caught(recorded: list) -> None:
    report = json.loads(render_json(build_report(SID, recorded, None)))
    report["hosts"][0]["bytes_down"] = 1
    report["packages"] = []
    assert mismatched_sections(report, records_from_report(report)) == ["hosts", "packages"]


def test_html_is_escaped_and_carries_the_json(recorded: list) -> None:
    hostile = [*recorded]
    report = build_report(SID, hostile, None)
    report["what"]["command_line"] = "</pre><script>alert(1)</script>"
    page = render_html(report)
    assert "<script>alert" not in page and "&lt;/pre&gt;&lt;script&gt;" in page
    marker = "id='corridor-report-base64'>"
    start = page.index(marker) + len(marker)
    embedded = json.loads(base64.b64decode(page[start : page.index("<", start)]))
    assert embedded["session"] == SID and len(embedded["records"]) == len(recorded)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda r: r.pop("records"), "the report has no 'records' list"),
        (lambda r: r["records"].__setitem__(0, 5), "records[0] is not an object"),
        (lambda r: r["records"][0].__setitem__("hash", "zz"), "records[0]: non-hexadecimal"),
        (lambda r: r["records"][0]["event"].pop("kind"), "records[0]: missing event fields: kind"),
    ],
)
def test_malformed_records_are_named(recorded: list, change, message: str) -> None:  # type: ignore[no-untyped-def]
    report = json.loads(render_json(build_report(SID, recorded, None)))
    change(report)
    with pytest.raises(ValueError) as info:
        records_from_report(report)
    assert str(info.value).startswith(message)
