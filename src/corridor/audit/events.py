"""The audit event: one record per DNS query, connection decision, connection close,
HTTP request, package download, credential use, exfiltration flag, session boundary and
the signed checkpoint that closes a session.

This module imports nothing of corridor's so that every part (gateway, store, review,
exporters) can share it without import cycles. An event is a flat, frozen record; the
optional fields a kind does not use stay `None` and are omitted from `to_dict()`.
"""

from __future__ import annotations

import shlex
from collections.abc import Mapping
from dataclasses import dataclass, fields
from enum import StrEnum
from typing import Any


class Kind(StrEnum):
    """What an event records."""

    SESSION_START = "session_start"
    SESSION_END = "session_end"
    DNS = "dns"
    CONNECTION = "connection"  # the decision, taken before any byte goes upstream
    CONNECTION_END = "connection_end"  # bytes and duration of an allowed connection
    # One HTTP request seen in clear text (plain HTTP, or HTTPS under inspection): host,
    # port, method, path (without the query), status, conn_id; protocol "http" | "https".
    HTTP = "http"
    # A package download recognised from a request URL (audit/packages.py): host, port,
    # conn_id, and data {"ecosystem", "name", "version", "file", "url"}.
    PACKAGE = "package"
    # A credential the gateway injected: host, port, conn_id, data {"name"} (never the value).
    CREDENTIAL = "credential"
    # A credential placeholder seen on its way to a host it is not bound to: host, port,
    # decision "deny", reason, data {"name"}.
    EXFILTRATION = "exfiltration"
    # Written by the store, never by the gateway: the session's last record, holding the
    # record count and head hash, signed (data: see audit/keys.py).
    CHECKPOINT = "checkpoint"


# Decisions, as the gateway records them.
ALLOW = "allow"
DENY = "deny"
WOULD_DENY = "would-deny"  # audit mode: let through, but enforce mode would have denied
DECISIONS = frozenset({ALLOW, DENY, WOULD_DENY})
# The decisions a reader wants flagged: what was refused or would have been.
BLOCKED_DECISIONS = frozenset({DENY, WOULD_DENY})


@dataclass(frozen=True, slots=True)
class Event:
    """One audit record. `kind` and `decision` are checked at construction."""

    session: str
    kind: Kind
    ts: float  # unix time, seconds
    decision: str | None = None  # ALLOW | DENY | WOULD_DENY
    reason: str | None = None
    rule: str | None = None
    host: str | None = None
    port: int | None = None
    # The upstream address dialled (or the sandbox-side destination when refused).
    address: str | None = None
    protocol: str | None = None  # "tls" | "http" | "connect" | "tcp" | "dns-udp" | "dns-tcp"
    conn_id: int | None = None  # ties CONNECTION and CONNECTION_END within a session
    bytes_up: int | None = None  # sandbox -> upstream
    bytes_down: int | None = None  # upstream -> sandbox
    duration_ms: float | None = None
    qtype: str | None = None  # DNS query type, e.g. "A", "AAAA"
    method: str | None = None  # HTTP method, when the request was seen
    path: str | None = None  # HTTP path without the query string
    status: int | None = None  # HTTP response status
    # Session start: command, workspace, user, uid, policy, policy_hash, env_dropped (names).
    # Session end: exit_code, signal, duration_ms, counts.
    data: Mapping[str, Any] | None = None

    def __post_init__(self) -> None:
        # Accept the plain string too (from JSON or SQLite), but store the enum member.
        if not isinstance(self.kind, Kind):
            object.__setattr__(self, "kind", Kind(self.kind))
        if self.decision is not None and self.decision not in DECISIONS:
            raise ValueError(
                f"unknown decision {self.decision!r}; expected one of {sorted(DECISIONS)}"
            )

    @property
    def blocked(self) -> bool:
        """True when the decision was deny or would-deny."""
        return self.decision in BLOCKED_DECISIONS

    def to_dict(self) -> dict[str, Any]:
        """The event as JSON-ready data; fields that are `None` are left out."""
        out: dict[str, Any] = {}
        for name in FIELD_NAMES:
            value = getattr(self, name)
            if value is None:
                continue
            if name == "kind":
                value = str(value)
            elif name == "data":
                value = dict(value)
            out[name] = value
        return out

    @classmethod
    def from_dict(cls, raw: Mapping[str, Any]) -> Event:
        """Rebuild an event from `to_dict()` output. Unknown keys are an error, not noise."""
        unknown = set(raw) - _FIELD_SET
        if unknown:
            raise ValueError(f"unknown event fields: {', '.join(sorted(unknown))}")
        missing = _REQUIRED - set(raw)
        if missing:
            raise ValueError(f"missing event fields: {', '.join(sorted(missing))}")
        return cls(**raw)


# Field order is the column order of the store and the key order of exports.
FIELD_NAMES: tuple[str, ...] = tuple(f.name for f in fields(Event))
_FIELD_SET = frozenset(FIELD_NAMES)
_REQUIRED = frozenset({"session", "kind", "ts"})


def format_command(command: object) -> str | None:
    """A recorded command (argv list or string) as one shell-quoted line."""
    if command is None:
        return None
    if isinstance(command, list | tuple):
        return shlex.join(str(arg) for arg in command)
    return str(command)
