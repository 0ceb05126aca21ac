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
from datetime import datetime
from typing import Any, TextIO

from rich.console import Console
from rich.table import Table
from rich.text import Text

from corridor.audit.events import (
    ALLOW,
    DENY,
    FIELD_NAMES,
    WOULD_DENY,
    Event,
    Kind,
    format_command,
)
from corridor.audit.rows import (
    ROW_CREDENTIAL,
    ROW_DNS,
    ROW_EXFILTRATION,
    ROW_HTTP,
    ROW_PACKAGE,
    UNKNOWN,
    Row,
    connection_rows,
)

DECISION_STYLES = {ALLOW: "green", DENY: "bold red", WOULD_DENY: "bold yellow"}
ROW_STYLES = {DENY: "red", WOULD_DENY: "yellow"}


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
