"""A session's events as rows: one per DNS query or connection, and the run's summary line.

A connection is recorded twice (its decision, then its close with bytes and duration);
`connection_rows` joins the two by `(session, conn_id)`. A connection whose close was
never recorded (the gateway was killed) keeps unknown byte counts rather than zeros.

Data only, no terminal: `corridor run` counts and summarises a session with this module
without loading the table renderer (`corridor.audit.render`, rich).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, replace
from typing import Any

from corridor.audit.events import (
    ALLOW,
    BLOCKED_DECISIONS,
    DENY,
    WOULD_DENY,
    Event,
    Kind,
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
