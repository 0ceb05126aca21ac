"""The session report: what a security team keeps. Pure (records in, data or text out).

`build_report` summarises one session's records: who ran what, when, under which policy
(and its hash), the hosts reached with counts and bytes, every refusal with its reason, the
packages fetched, the credentials used (names only), exfiltration flags, and the signed
checkpoint. The JSON form also carries every record with its index and hash, so
`corridor verify --report FILE --key PUBKEY` can check it on another machine: the chain and
signature prove the records, and the summary is recomputed from them and compared.
"""

from __future__ import annotations

import base64
import html
import json
import time
from collections.abc import Iterable, Sequence
from typing import Any

from corridor.audit.chain import Record
from corridor.audit.events import ALLOW, DENY, WOULD_DENY, Event, Kind, format_command
from corridor.audit.render import human_bytes, human_duration
from corridor.audit.rows import ROW_CONN, connection_rows
from corridor.audit.verify import Verdict

REPORT_FORMAT = "corridor-report/1"
ENV_NAMES_SHOWN = 6  # the text names a few dropped variables; the JSON has them all
# The parts recomputed from the records when a report is verified. "verification" is
# excluded: it says what was found when the report was written, not a fact of the records.
DERIVED_KEYS = (
    "session", "who", "what", "when", "policy", "environment", "hosts", "refusals",
    "dns", "packages", "credentials", "exfiltration", "checkpoint",
)  # fmt: skip


def build_report(session: str, records: Sequence[Record], verdict: Verdict | None) -> dict:
    """The report of one session as JSON-ready data."""
    events = [r.event for r in records]
    report: dict[str, Any] = {"format": REPORT_FORMAT, **summarize(session, events)}
    if verdict is not None:
        report["verification"] = {
            "status": verdict.status.value,
            "ok": verdict.ok,
            "message": verdict.message,
            "problem": None if verdict.problem is None else verdict.problem.value,
            "seq": verdict.seq,
        }
    report["records"] = [record_to_dict(r) for r in records]
    return report


def summarize(session: str, events: Sequence[Event]) -> dict[str, Any]:
    """The derived parts of a report (DERIVED_KEYS), from the session's events."""
    start = _first(events, Kind.SESSION_START)
    end = _first(events, Kind.SESSION_END)
    start_data = dict(start.data or {}) if start else {}
    end_data = dict(end.data or {}) if end else {}
    policy = start_data.get("policy")
    return {
        "session": session,
        "who": {k: start_data.get(k) for k in ("user", "uid", "rootless")},
        "what": {
            "command": start_data.get("command"),
            "command_line": format_command(start_data.get("command")),
            "workspace": start_data.get("workspace"),
            "cwd": start_data.get("cwd"),
        },
        "when": {
            "started": start.ts if start else None,
            "ended": end.ts if end else None,
            "duration_ms": end_data.get("duration_ms"),
            "exit_code": end_data.get("exit_code"),
            "signal": end_data.get("signal"),
            # Set when the gateway died before the command ended (the command was ended).
            "gateway_error": end_data.get("gateway_error")
            if end_data.get("gateway_failed")
            else None,
        },
        "policy": {
            "hash": start_data.get("policy_hash"),
            "mode": policy.get("mode") if isinstance(policy, dict) else None,
            "document": policy,
        },
        "environment": {
            "passed": start_data.get("env_passed"),
            "dropped": start_data.get("env_dropped"),
        },
        "hosts": _hosts(events),
        "refusals": _refusals(events),
        "dns": _dns(events),
        "packages": _packages(events),
        "credentials": _credentials(events),
        "exfiltration": _exfiltration(events),
        "checkpoint": _checkpoint(events),
    }


def record_to_dict(record: Record) -> dict[str, Any]:
    """A record in the report: table position, chain index and hash, and the event."""
    return {
        "seq": record.seq,
        "n": record.n,
        "hash": None if record.hash is None else record.hash.hex(),
        "event": record.event.to_dict(),
    }


def records_from_report(report: dict[str, Any]) -> list[Record]:
    """The records a report carries. Raises ValueError when they are malformed."""
    raw = report.get("records")
    if not isinstance(raw, list):
        raise ValueError("the report has no 'records' list")
    records = []
    for i, item in enumerate(raw):
        if not isinstance(item, dict):
            raise ValueError(f"records[{i}] is not an object")
        digest, n, seq = item.get("hash"), item.get("n"), item.get("seq")
        try:
            event = Event.from_dict(item.get("event") or {})
            hash_bytes = None if digest is None else bytes.fromhex(digest)
        except (TypeError, ValueError) as exc:
            raise ValueError(f"records[{i}]: {exc}") from None
        if (n is not None and type(n) is not int) or type(seq) is not int:
            raise ValueError(f"records[{i}]: 'n' and 'seq' must be whole numbers")
        records.append(Record(seq, n, hash_bytes, event))
    return records


def mismatched_sections(report: dict[str, Any], records: Sequence[Record]) -> list[str]:
    """The derived sections of a report that differ from what its records say."""
    session = report.get("session")
    if not isinstance(session, str):
        return ["session"]
    # Compared as JSON text: what a reader of the file sees, tuples and lists alike.
    fresh = json.loads(json.dumps(summarize(session, [r.event for r in records])))
    return [key for key in DERIVED_KEYS if report.get(key) != fresh[key]]


# -- the summary's parts ------------------------------------------------------------------


def _first(events: Iterable[Event], kind: Kind) -> Event | None:
    return next((e for e in events if e.kind is kind), None)


def _hosts(events: Sequence[Event]) -> list[dict[str, Any]]:
    """Hosts reached (allowed, or let through in audit mode) with counts and bytes."""
    groups: dict[tuple[str, int | None], dict[str, Any]] = {}
    for row in connection_rows(events):
        if row.kind != ROW_CONN or row.decision not in (ALLOW, WOULD_DENY):
            continue
        key = (row.host or row.address or "?", row.port)
        entry = groups.setdefault(
            key,
            {
                "host": key[0], "port": key[1], "connections": 0, "bytes_up": 0,
                "bytes_down": 0, "protocols": [], "would_deny": 0, "first": row.ts,
                "last": row.ts, "unclosed": 0,
            },
        )  # fmt: skip
        entry["connections"] += 1
        entry["bytes_up"] += row.bytes_up or 0
        entry["bytes_down"] += row.bytes_down or 0
        entry["would_deny"] += row.decision == WOULD_DENY
        entry["unclosed"] += not row.closed
        if row.protocol and row.protocol not in entry["protocols"]:
            entry["protocols"].append(row.protocol)
        entry["first"], entry["last"] = min(entry["first"], row.ts), max(entry["last"], row.ts)
    return sorted(groups.values(), key=lambda e: (-e["connections"], e["host"], e["port"] or 0))


_REFUSAL_FIELDS = (
    "ts", "kind", "decision", "host", "port", "address", "qtype", "method", "path", "reason",
    "rule",
)  # fmt: skip


def _refusals(events: Sequence[Event]) -> list[dict[str, Any]]:
    """Every refused (or, in audit mode, would-be refused) DNS query, connection, request."""
    out = []
    for event in events:
        if event.decision not in (DENY, WOULD_DENY) or event.kind is Kind.CONNECTION_END:
            continue
        entry = {name: getattr(event, name) for name in _REFUSAL_FIELDS}
        entry["kind"] = event.kind.value
        out.append(entry)
    return out


def _dns(events: Sequence[Event]) -> dict[str, int]:
    queries = [e for e in events if e.kind is Kind.DNS]
    return {
        "queries": len(queries),
        "refused": sum(e.decision == DENY for e in queries),
        "names": len({(e.host or "").lower() for e in queries}),
    }


def _packages(events: Sequence[Event]) -> list[dict[str, Any]]:
    found: dict[tuple[Any, Any, Any], dict[str, Any]] = {}
    for event in events:
        if event.kind is not Kind.PACKAGE:
            continue
        data = dict(event.data or {})
        key = (data.get("ecosystem"), data.get("name"), data.get("version"))
        entry = found.setdefault(
            key,
            {
                "ecosystem": key[0], "name": key[1], "version": key[2],
                "files": [], "host": event.host, "downloads": 0, "first": event.ts,
            },
        )  # fmt: skip
        entry["downloads"] += 1
        if data.get("file") and data["file"] not in entry["files"]:
            entry["files"].append(data["file"])
    return sorted(found.values(), key=lambda p: (str(p["ecosystem"]), str(p["name"])))


def _credentials(events: Sequence[Event]) -> list[dict[str, Any]]:
    found: dict[tuple[Any, Any], dict[str, Any]] = {}
    for event in events:
        if event.kind is not Kind.CREDENTIAL:
            continue
        name = (event.data or {}).get("name")
        entry = found.setdefault((name, event.host), {"name": name, "host": event.host, "uses": 0})
        entry["uses"] += 1
    return list(found.values())


def _exfiltration(events: Sequence[Event]) -> list[dict[str, Any]]:
    flags = [e for e in events if e.kind is Kind.EXFILTRATION]
    keys = ("ts", "host", "port", "reason")
    return [{"name": (e.data or {}).get("name"), **{k: getattr(e, k) for k in keys}} for e in flags]


def _checkpoint(events: Sequence[Event]) -> dict[str, Any] | None:
    last = events[-1] if events else None
    if last is None or last.kind is not Kind.CHECKPOINT:
        return None
    data = dict(last.data or {})
    keys = ("count", "head", "key", "signature", "recovered", "imported")
    return {"ts": last.ts, **{k: data.get(k) for k in keys if k in data}}


# -- text ---------------------------------------------------------------------------------


def render_text(report: dict[str, Any]) -> str:
    """The report as plain text (no terminal styling: it is meant to be kept and read)."""
    lines: list[str] = []
    add = lines.append
    what, when, who, policy = report["what"], report["when"], report["who"], report["policy"]
    add(f"corridor session report: {report['session']}")
    add("")
    add(f"  command    {_safe(what.get('command_line') or '(not recorded)')}")
    add(f"  user       {_safe(str(who.get('user')))} (uid {who.get('uid')})")
    add(f"  workspace  {_safe(str(what.get('workspace')))}")
    add(f"  started    {_when(when.get('started'))}")
    add(f"  ended      {_when(when.get('ended'))}  {_outcome(when)}")
    add(f"  policy     {policy.get('mode') or '?'} mode, sha256 {policy.get('hash') or '?'}")
    dropped = (report.get("environment") or {}).get("dropped") or []
    if dropped:
        shown = ", ".join(map(str, dropped[:ENV_NAMES_SHOWN]))
        more = (
            f" and {len(dropped) - ENV_NAMES_SHOWN} more" if len(dropped) > ENV_NAMES_SHOWN else ""
        )
        add(f"  env        dropped {len(dropped)}: {_safe(shown)}{more}")
    _section(lines, "Hosts reached", report["hosts"], _host_line)
    _section(lines, "Refusals", report["refusals"], _refusal_line)
    dns = report["dns"]
    add("")
    add(f"DNS: {dns['queries']} queries for {dns['names']} names, {dns['refused']} refused")
    _section(lines, "Packages", report["packages"], _package_line)
    _section(lines, "Credentials used", report["credentials"], _credential_line)
    _section(lines, "Exfiltration flags", report["exfiltration"], _exfil_line)
    add("")
    add("Checkpoint")
    checkpoint = report.get("checkpoint")
    if checkpoint is None:
        add("  none: the session is not closed (still running, or cut off)")
    else:
        recovered = (
            " (written by recovery: corridor was killed)" if checkpoint.get("recovered") else ""
        )
        add(f"  {checkpoint.get('count')} records, head {checkpoint.get('head')}{recovered}")
        add(f"  signed by {checkpoint.get('key')} at {_when(checkpoint.get('ts'))}")
    verification = report.get("verification")
    if verification:
        add("")
        add(f"Verification: {verification['status']}: {_safe(verification['message'])}")
    return "\n".join(lines) + "\n"


def _section(lines: list[str], title: str, items: list[dict], line_of: Any) -> None:
    lines.append("")
    lines.append(f"{title} ({len(items)})" if items else f"{title}: none")
    lines.extend(f"  {line_of(item)}" for item in items)


def _host_line(h: dict[str, Any]) -> str:
    port = "" if h["port"] is None else f":{h['port']}"
    conns = f"{h['connections']} connection{'' if h['connections'] == 1 else 's'}"
    extra = f", {h['would_deny']} would be denied" if h["would_deny"] else ""
    traffic = f"up {human_bytes(h['bytes_up'])}, down {human_bytes(h['bytes_down'])}"
    protocols = ",".join(h["protocols"])
    return f"{_safe(h['host'])}{port}  {conns} ({protocols}){extra}  {traffic}"


def _refusal_line(r: dict[str, Any]) -> str:
    target = r["host"] or r["address"] or "?"
    if r["port"] is not None:
        target += f":{r['port']}"
    if r["kind"] == Kind.DNS:
        target += f" {r['qtype'] or ''}".rstrip()
    if r["method"]:
        target = f"{r['method']} {target}{r['path'] or ''}"
    return (
        f"{_clock(r['ts'])}  {r['kind']:<10} {r['decision']:<10} {_safe(target)}  "
        f"{_safe(r['reason'] or '')}"
    )


def _package_line(p: dict[str, Any]) -> str:
    version = p["version"] or "(no version in the URL)"
    times = f"  x{p['downloads']}" if p["downloads"] > 1 else ""
    return f"{p['ecosystem']:<7} {_safe(str(p['name']))} {_safe(str(version))}{times}"


def _credential_line(c: dict[str, Any]) -> str:
    return f"{_safe(str(c['name']))} -> {_safe(str(c['host']))} ({c['uses']} uses)"


def _exfil_line(x: dict[str, Any]) -> str:
    return f"{_clock(x['ts'])}  {_safe(str(x['name']))} -> {_safe(str(x['host']))}"


def _outcome(when: dict[str, Any]) -> str:
    if when.get("ended") is None:
        return "(no end recorded)"
    duration = when.get("duration_ms")
    took = f" after {human_duration(duration)}" if isinstance(duration, int | float) else ""
    if when.get("gateway_error"):
        return f"ended{took}: {_safe(str(when['gateway_error']))}; the command was stopped"
    if when.get("signal") is not None:
        return f"killed by signal {when['signal']}{took}"
    return f"exit {when.get('exit_code')}{took}"


def _when(ts: object) -> str:
    if not isinstance(ts, int | float):
        return "(not recorded)"
    return time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(ts))


def _clock(ts: float) -> str:
    return time.strftime("%H:%M:%S", time.gmtime(ts))


def _safe(text: str) -> str:
    """Recorded text may come from the agent: control characters are shown escaped."""
    if text.isprintable():
        return text
    return "".join(c if c.isprintable() else c.encode("unicode_escape").decode() for c in text)


# -- JSON and HTML ------------------------------------------------------------------------


def render_json(report: dict[str, Any]) -> str:
    """The report as JSON (ASCII, indented): the form `verify --report` reads."""
    return json.dumps(report, indent=2, ensure_ascii=True) + "\n"


def render_html(report: dict[str, Any]) -> str:
    """A self-contained HTML page of the report (everything escaped, no scripts)."""
    e = html.escape
    text = render_text(report)
    embedded = base64.b64encode(render_json(report).encode()).decode()
    return (
        "<!doctype html>\n<html><head><meta charset='utf-8'>"
        f"<title>corridor report {e(report['session'])}</title>"
        "<style>body{font-family:monospace;margin:2em}pre{white-space:pre-wrap}</style>"
        "</head><body>\n"
        f"<h1>corridor session report</h1>\n<pre>{e(text)}</pre>\n"
        # The JSON report travels with the page (base64, so nothing in it can end the tag):
        # save it with `corridor report --format json` to verify it elsewhere.
        f"<script type='application/json' id='corridor-report-base64'>{embedded}</script>\n"
        "</body></html>\n"
    )
