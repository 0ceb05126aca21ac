"""Showing a session's events: one row per DNS query or connection, as a table or JSON lines.

A connection is recorded twice (its decision, then its close with bytes and duration);
`connection_rows` joins the two by `(session, conn_id)`. A connection whose close was
never recorded (the gateway was killed) keeps unknown byte counts rather than zeros.

Host names, reasons and commands may come from the agent (an SNI, a Host header, a DNS
query), so the table shows them as plain text with control characters escaped: nothing
recorded can style, link or move the reader's terminal.
"""

from __future__ import annotations

import json
import signal
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, replace
from datetime import datetime
from typing import Any, TextIO

from rich.console import Console
from rich.table import Table
from rich.text import Text

from corridor.audit.events import (
    ALLOW,
    BLOCKED_DECISIONS,
    DENY,
    FIELD_NAMES,
    WOULD_DENY,
    Event,
    Kind,
    format_command,
)

ROW_CONN = "conn"
ROW_DNS = "dns"
ROW_HTTP = "http"
ROW_PACKAGE = "package"
ROW_CREDENTIAL = "credential"  # a credential swapped in (its name, never its value)
ROW_EXFILTRATION = "exfiltration"  # a credential seen going to a host it is not bound to
# JSON-lines keys per row kind: every key is always present (null when unknown), in this
# order, so `jq` filters and column-based tools see one shape per kind.
CONN_KEYS = (
    "session", "kind", "ts", "conn_id", "protocol", "host", "port", "address",
    "decision", "reason", "rule", "bytes_up", "bytes_down", "duration_ms", "closed",
)  # fmt: skip
DNS_KEYS = (
    "session", "kind", "ts", "protocol", "name", "qtype", "address",
    "decision", "reason", "rule",
)  # fmt: skip
HTTP_KEYS = (
    "session", "kind", "ts", "conn_id", "protocol", "host", "port", "method", "path",
    "status", "decision", "reason", "rule",
)  # fmt: skip
PACKAGE_KEYS = (
    "session", "kind", "ts", "conn_id", "host", "port", "ecosystem", "name", "version",
    "file", "url",
)  # fmt: skip
_PACKAGE_FIELDS = ("ecosystem", "name", "version", "file", "url")
CREDENTIAL_KEYS = (
    "session", "kind", "ts", "conn_id", "protocol", "host", "port", "credential",
)  # fmt: skip
EXFILTRATION_KEYS = (
    "session", "kind", "ts", "conn_id", "protocol", "host", "port", "credential", "found",
    "decision", "reason", "rule",
)  # fmt: skip

DECISION_STYLES = {ALLOW: "green", DENY: "bold red", WOULD_DENY: "bold yellow"}
ROW_STYLES = {DENY: "red", WOULD_DENY: "yellow"}
UNKNOWN = "?"  # an allowed connection whose close was never recorded
LOG_HINT = "`corridor log` to see them"


@dataclass(frozen=True, slots=True)
class Row:
    """One DNS query or one connection (decision and close merged)."""

    session: str
    kind: str  # ROW_CONN | ROW_DNS
    ts: float
    decision: str | None = None
    reason: str | None = None
    rule: str | None = None
    protocol: str | None = None
    host: str | None = None  # the connection's host, or the DNS query name
    port: int | None = None
    address: str | None = None
    conn_id: int | None = None
    qtype: str | None = None
    bytes_up: int | None = None
    bytes_down: int | None = None
    duration_ms: float | None = None
    closed: bool = False  # a CONNECTION_END was recorded for this connection
    method: str | None = None  # HTTP rows
    path: str | None = None
    status: int | None = None
    package: tuple[tuple[str, Any], ...] = ()  # package rows: ecosystem, name, version, ...
    credential: str | None = None  # credential and exfiltration rows: the credential's name
    found: str | None = None  # exfiltration rows: what was seen where (e.g. "base64 in body")

    @property
    def blocked(self) -> bool:
        """True when the decision was deny or would-deny."""
        return self.decision in BLOCKED_DECISIONS

    def to_dict(self) -> dict[str, Any]:
        """The row with its kind's stable key set (see CONN_KEYS and DNS_KEYS)."""
        if self.kind == ROW_DNS:
            values = {name: getattr(self, name) for name in DNS_KEYS if name != "name"}
            values["name"] = self.host
            return {name: values[name] for name in DNS_KEYS}
        if self.kind == ROW_HTTP:
            return {name: getattr(self, name) for name in HTTP_KEYS}
        if self.kind == ROW_CREDENTIAL:
            return {name: getattr(self, name) for name in CREDENTIAL_KEYS}
        if self.kind == ROW_EXFILTRATION:
            return {name: getattr(self, name) for name in EXFILTRATION_KEYS}
        if self.kind == ROW_PACKAGE:
            package = dict(self.package)
            return {
                name: package.get(name) if name in _PACKAGE_FIELDS else getattr(self, name)
                for name in PACKAGE_KEYS
            }
        return {name: getattr(self, name) for name in CONN_KEYS}


def connection_rows(events: Iterable[Event]) -> list[Row]:
    """DNS queries, connections, HTTP requests and package downloads as rows in time order;
    session boundaries and checkpoints are not rows."""
    rows: list[Row] = []
    open_rows: dict[tuple[str, int], int] = {}  # (session, conn_id) -> index in rows
    for event in events:
        if event.kind is Kind.DNS:
            rows.append(_dns_row(event))
        elif event.kind is Kind.HTTP:
            rows.append(_http_row(event))
        elif event.kind is Kind.PACKAGE:
            rows.append(_package_row(event))
        elif event.kind in (Kind.CREDENTIAL, Kind.EXFILTRATION):
            rows.append(_credential_row(event))
        elif event.kind is Kind.CONNECTION:
            if event.conn_id is not None:
                open_rows[(event.session, event.conn_id)] = len(rows)
            rows.append(_conn_row(event))
        elif event.kind is Kind.CONNECTION_END:
            index = None
            if event.conn_id is not None:
                index = open_rows.pop((event.session, event.conn_id), None)
            if index is None:  # its decision record is missing: show what the close says
                rows.append(_closed(_conn_row(event, ts=_start_ts(event)), event))
            else:
                rows[index] = _closed(rows[index], event)
    rows.sort(key=lambda row: row.ts)  # stable: equal times keep the order written
    return rows


def _dns_row(event: Event) -> Row:
    return Row(
        session=event.session, kind=ROW_DNS, ts=event.ts, decision=event.decision,
        reason=event.reason, rule=event.rule, protocol=event.protocol, host=event.host,
        address=event.address, qtype=event.qtype,
    )  # fmt: skip


def _http_row(event: Event) -> Row:
    return Row(
        session=event.session, kind=ROW_HTTP, ts=event.ts, decision=event.decision,
        reason=event.reason, rule=event.rule, protocol=event.protocol, host=event.host,
        port=event.port, address=event.address, conn_id=event.conn_id, method=event.method,
        path=event.path, status=event.status,
    )  # fmt: skip


def _package_row(event: Event) -> Row:
    data = event.data or {}
    package = tuple((name, data.get(name)) for name in _PACKAGE_FIELDS)
    return Row(
        session=event.session, kind=ROW_PACKAGE, ts=event.ts, host=event.host, port=event.port,
        conn_id=event.conn_id, package=package,
    )  # fmt: skip


def _credential_row(event: Event) -> Row:
    data = event.data or {}
    name = data.get("name")
    found = " in ".join(str(data[key]) for key in ("what", "where") if data.get(key))
    exfiltration = event.kind is Kind.EXFILTRATION
    return Row(
        session=event.session, kind=ROW_EXFILTRATION if exfiltration else ROW_CREDENTIAL,
        ts=event.ts, decision=event.decision if exfiltration else None, reason=event.reason,
        rule=event.rule, protocol=event.protocol, host=event.host, port=event.port,
        conn_id=event.conn_id, credential=None if name is None else str(name),
        found=(found or None) if exfiltration else None,
    )  # fmt: skip


def _conn_row(event: Event, ts: float | None = None) -> Row:
    return Row(
        session=event.session, kind=ROW_CONN, ts=event.ts if ts is None else ts,
        decision=event.decision, reason=event.reason, rule=event.rule,
        protocol=event.protocol, host=event.host, port=event.port, address=event.address,
        conn_id=event.conn_id,
    )  # fmt: skip


def _closed(row: Row, end: Event) -> Row:
    return replace(
        row, bytes_up=end.bytes_up, bytes_down=end.bytes_down,
        duration_ms=end.duration_ms, closed=True,
    )  # fmt: skip


def _start_ts(end: Event) -> float:
    return end.ts - end.duration_ms / 1000 if end.duration_ms is not None else end.ts


# -- the table ----------------------------------------------------------------------------


def render_table(events: Sequence[Event], console: Console, *, blocked_only: bool) -> None:
    """Print each session's header line and a table of its DNS queries and connections."""
    for session_events in _by_session(events):
        # soft_wrap: a long command runs on rather than being cut into fake lines.
        console.print(_header(session_events), soft_wrap=True)
        rows = [r for r in connection_rows(session_events) if r.blocked or not blocked_only]
        if not rows:
            what = "blocked DNS queries or connections" if blocked_only else "network activity"
            console.print(Text(f"no {what} recorded", style="dim"))
            continue
        console.print(_table(rows))


def _by_session(events: Sequence[Event]) -> list[list[Event]]:
    groups: dict[str, list[Event]] = {}
    for event in events:
        groups.setdefault(event.session, []).append(event)
    return list(groups.values())


def _header(events: Sequence[Event]) -> Text:
    start = _first(events, Kind.SESSION_START)
    end = _first(events, Kind.SESSION_END)
    command = format_command(start.data.get("command")) if start and start.data else None
    header = Text()
    header.append("session ", style="bold")
    header.append(_printable(events[0].session), style="bold cyan")
    header.append(f"  {_printable(command or '(command not recorded)')}")
    started = _datetime(start.ts) if start else "(start not recorded)"
    header.append(f"  started {started}  ", style="dim")
    header.append(_outcome(end))
    return header


def _outcome(end: Event | None) -> Text:
    if end is None:
        return Text("no end recorded (still running, or corridor was killed)", style="yellow")
    data = end.data or {}
    if data.get("gateway_failed"):
        # The command was ended because the gateway died: that is the outcome to see.
        return Text(f"ended: {_printable(str(data.get('gateway_error')))}", style="red")
    if data.get("signal") is not None:
        return Text(f"killed by {_signal_name(data['signal'])}", style="yellow")
    code = data.get("exit_code")
    return Text(f"exit {code}", style="green" if code == 0 else "red")


def _signal_name(value: object) -> str:
    """`SIGKILL` for 9 or "SIGKILL"; anything unknown as recorded."""
    if isinstance(value, int) and not isinstance(value, bool):
        try:
            return signal.Signals(value).name
        except ValueError:
            return f"signal {value}"
    return _printable(str(value))


def _table(rows: Sequence[Row]) -> Table:
    table = Table(show_edge=False, pad_edge=False, header_style="bold")
    table.add_column("time", no_wrap=True)
    table.add_column("kind", no_wrap=True)
    table.add_column("protocol", no_wrap=True)
    table.add_column("destination", overflow="fold", min_width=16)
    table.add_column("address", overflow="fold", min_width=9)
    table.add_column("decision", no_wrap=True)
    table.add_column("reason", overflow="fold", min_width=16)
    table.add_column("rule", overflow="fold", min_width=8)
    table.add_column("up", justify="right", no_wrap=True)
    table.add_column("down", justify="right", no_wrap=True)
    table.add_column("duration", justify="right", no_wrap=True)
    for row in rows:
        table.add_row(*_cells(row), style=ROW_STYLES.get(row.decision or ""))
    return table


def _cells(row: Row) -> list[Text]:
    decision = row.decision or UNKNOWN
    if row.kind == ROW_DNS:
        destination = f"{row.host or UNKNOWN} {row.qtype or ''}".rstrip()
        traffic = ["", "", ""]
    elif row.kind == ROW_HTTP:
        status = "" if row.status is None else f" -> {row.status}"
        destination = f"{row.method or UNKNOWN} {_destination(row)}{row.path or ''}{status}"
        traffic = ["", "", ""]
    elif row.kind == ROW_CREDENTIAL:
        destination = f"{row.credential or UNKNOWN} -> {_destination(row)}"
        decision = "injected"
        traffic = ["", "", ""]
    elif row.kind == ROW_EXFILTRATION:
        found = f" ({row.found})" if row.found else ""
        destination = f"{row.credential or UNKNOWN}{found} -> {_destination(row)}"
        traffic = ["", "", ""]
    elif row.kind == ROW_PACKAGE:
        package = dict(row.package)
        version = f" {package['version']}" if package.get("version") else ""
        destination = f"{package.get('ecosystem')}: {package.get('name')}{version}"
        decision = ""
        traffic = ["", "", ""]
    else:
        destination = _destination(row)
        traffic = _traffic(row)
    texts = [
        _time(row.ts), row.kind, row.protocol or "", destination, row.address or "",
        decision, row.reason or "", row.rule or "", *traffic,
    ]  # fmt: skip
    cells = [Text(_printable(text)) for text in texts]
    cells[5].stylize(DECISION_STYLES.get(decision, ""))
    return cells


def _destination(row: Row) -> str:
    host = row.host or row.address or UNKNOWN
    if row.port is None:
        return host
    return f"[{host}]:{row.port}" if ":" in host else f"{host}:{row.port}"


def _traffic(row: Row) -> list[str]:
    """Up, down, duration cells: unknown for an allowed connection whose close is missing."""
    if not row.closed:
        return ["", "", ""] if row.decision == DENY else [UNKNOWN] * 3
    return [
        UNKNOWN if row.bytes_up is None else human_bytes(row.bytes_up),
        UNKNOWN if row.bytes_down is None else human_bytes(row.bytes_down),
        UNKNOWN if row.duration_ms is None else human_duration(row.duration_ms),
    ]


def human_bytes(count: int) -> str:
    """`512 B`, `1.5 KiB`, `3.2 MiB`..."""
    if count < 1024:
        return f"{count} B"
    value = float(count)
    for unit in ("KiB", "MiB", "GiB", "TiB"):
        value /= 1024
        if value < 1024 or unit == "TiB":
            break
    return f"{value:.1f} {unit}"


def human_duration(ms: float) -> str:
    """`0.4 ms`, `85 ms`, `1.2 s`, `2m 03s`, `1h 02m`."""
    if ms < 10:
        return f"{ms:.1f} ms"
    if ms < 1000:
        return f"{ms:.0f} ms"
    seconds = ms / 1000
    if seconds < 60:
        return f"{seconds:.1f} s"
    minutes, secs = divmod(int(seconds), 60)
    if minutes < 60:
        return f"{minutes}m {secs:02d}s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h {minutes:02d}m"


def _time(ts: float) -> str:
    # The header carries the date; rows need only the time of day, to the millisecond.
    return datetime.fromtimestamp(ts).astimezone().strftime("%H:%M:%S.%f")[:-3]


def _datetime(ts: float) -> str:
    return datetime.fromtimestamp(ts).astimezone().strftime("%Y-%m-%d %H:%M:%S %Z")


def _printable(text: str) -> str:
    """Escape control characters (ESC, CSI...) so recorded text cannot drive the terminal."""
    if text.isprintable():
        return text
    return "".join(c if c.isprintable() else c.encode("unicode_escape").decode() for c in text)


def _first(events: Iterable[Event], kind: Kind) -> Event | None:
    return next((event for event in events if event.kind is kind), None)


# -- one line per event (corridor log --follow) ------------------------------------------


def event_line(event: Event) -> str:
    """One event as one plain line: time, kind, decision, destination, reason."""
    parts = [_time(event.ts), event.kind.value, event.decision or "-"]
    if event.kind is Kind.DNS:
        parts.append(f"{event.host or UNKNOWN} {event.qtype or ''}".rstrip())
    elif event.kind is Kind.PACKAGE:
        data = event.data or {}
        parts.append(f"{data.get('ecosystem')}: {data.get('name')} {data.get('version') or ''}")
    elif event.kind in (Kind.SESSION_START, Kind.SESSION_END, Kind.CHECKPOINT):
        parts.append(_boundary_text(event))
    else:
        host = event.host or event.address or UNKNOWN
        target = f"{host}:{event.port}" if event.port is not None else host
        if event.method:
            target = f"{event.method} {target}{event.path or ''}"
        parts.append(target)
    if event.kind is Kind.CONNECTION_END:
        up, down = event.bytes_up or 0, event.bytes_down or 0
        parts.append(f"up {human_bytes(up)} down {human_bytes(down)}")
    if event.reason:
        parts.append(event.reason)
    return _printable("  ".join(p.strip() for p in parts))


def _boundary_text(event: Event) -> str:
    data = event.data or {}
    if event.kind is Kind.SESSION_START:
        return format_command(data.get("command")) or ""
    if event.kind is Kind.SESSION_END:
        return f"exit {data.get('exit_code')}"
    return f"{data.get('count')} records signed by {data.get('key')}"


# -- JSON lines ---------------------------------------------------------------------------


def render_jsonl(events: Sequence[Event], out: TextIO, *, blocked_only: bool) -> None:
    """Write each session's start record, its rows and its end record, one JSON per line."""
    for session_events in _by_session(events):
        start = _first(session_events, Kind.SESSION_START)
        end = _first(session_events, Kind.SESSION_END)
        lines: list[dict[str, Any]] = []
        if start is not None:
            lines.append(_boundary_dict(start))
        for row in connection_rows(session_events):
            if row.blocked or not blocked_only:
                lines.append(row.to_dict())
        if end is not None:
            lines.append(_boundary_dict(end))
        for line in lines:
            # ASCII-only: escapes every control character, so the output is safe to cat.
            out.write(json.dumps(line) + "\n")


def _boundary_dict(event: Event) -> dict[str, Any]:
    """Every field of a session start/end record, null when unset."""
    out = {name: getattr(event, name) for name in FIELD_NAMES}
    out["kind"] = str(event.kind)
    out["data"] = None if event.data is None else dict(event.data)
    return out


# -- the line at the end of `corridor run` ------------------------------------------------


def summary_line(events: Sequence[Event]) -> str:
    """E.g. `corridor: session ID - 3 connections allowed, 1 blocked, 5 DNS queries
    (1 refused) - `corridor log` to see them`."""
    if not events:
        return "corridor: no events recorded"
    rows = connection_rows(events)
    conns = [row for row in rows if row.kind == ROW_CONN]
    queries = [row for row in rows if row.kind == ROW_DNS]
    allowed = sum(row.decision == ALLOW for row in conns)
    blocked = sum(row.decision == DENY for row in conns)
    would = sum(row.decision == WOULD_DENY for row in conns)
    refused = sum(row.decision == DENY for row in queries)
    would_refuse = sum(row.decision == WOULD_DENY for row in queries)

    conn_part = f"{_count(allowed, 'connection')} allowed, {blocked} blocked"
    if would:
        conn_part += f", {would} would be blocked"
    dns_notes = [f"{refused} refused"]
    if would_refuse:
        dns_notes.append(f"{would_refuse} would be refused")
    dns_part = f"{_count(len(queries), 'DNS query', 'DNS queries')} ({', '.join(dns_notes)})"
    return f"corridor: session {events[0].session} - {conn_part}, {dns_part} - {LOG_HINT}"


def _count(n: int, singular: str, plural: str | None = None) -> str:
    return f"{n} {singular if n == 1 else plural or singular + 's'}"
