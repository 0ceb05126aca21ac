"""The event record: construction checks and the dict round trip."""

from __future__ import annotations

import json

import pytest

from corridor.audit.events import FIELD_NAMES, Event, Kind, format_command

FULL = Event(
    session="20261127T031500Z-3f9a2c",
    kind=Kind.CONNECTION_END,
    ts=1795749300.123456,
    decision="would-deny",
    reason="no rule matches host",
    rule="github-read",
    host="api.example.test",
    port=443,
    address="2001:db8::7",
    protocol="tls",
    conn_id=42,
    bytes_up=1234,
    bytes_down=2**40,
    duration_ms=12.5,
    qtype="AAAA",
    method="GET",
    path="/simple/",
    status=200,
    data={"command": ["claude", "-p", "hi"], "env_dropped": ["AWS_SECRET_ACCESS_KEY"], "n": 1},
)


def test_full_event_sets_every_field() -> None:
    # Guards the round-trip tests: a field added later must be added to FULL as well.
    assert all(getattr(FULL, name) is not None for name in FIELD_NAMES)


def test_dict_round_trip_of_every_field() -> None:
    raw = FULL.to_dict()
    assert list(raw) == list(FIELD_NAMES)
    assert raw["kind"] == "connection_end" and type(raw["kind"]) is str
    assert Event.from_dict(raw) == FULL


def test_dict_round_trip_through_json_text() -> None:
    assert Event.from_dict(json.loads(json.dumps(FULL.to_dict()))) == FULL


def test_to_dict_leaves_out_unset_fields() -> None:
    event = Event("s", Kind.DNS, 1.0, decision="deny", host="x.test")
    assert event.to_dict() == {
        "session": "s",
        "kind": "dns",
        "ts": 1.0,
        "decision": "deny",
        "host": "x.test",
    }


def test_kind_given_as_string_becomes_the_enum() -> None:
    event = Event("s", "session_start", 1.0)  # type: ignore[arg-type]
    assert event.kind is Kind.SESSION_START


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        pytest.param(
            {"session": "s", "kind": "dns", "ts": 1.0, "colour": "red"},
            "unknown event fields: colour",
            id="unknown-field",
        ),
        pytest.param({"session": "s", "ts": 1.0}, "missing event fields: kind", id="no-kind"),
        pytest.param(
            {"session": "s", "kind": "dns", "ts": 1.0, "decision": "maybe"},
            "unknown decision 'maybe'; expected one of ['allow', 'deny', 'would-deny']",
            id="bad-decision",
        ),
        pytest.param(
            {"session": "s", "kind": "telemetry", "ts": 1.0},
            "'telemetry' is not a valid Kind",
            id="bad-kind",
        ),
    ],
)
def test_from_dict_rejects(raw: dict[str, object], message: str) -> None:
    with pytest.raises(ValueError) as info:
        Event.from_dict(raw)
    assert str(info.value) == message


@pytest.mark.parametrize(
    ("decision", "blocked"),
    [("allow", False), ("deny", True), ("would-deny", True), (None, False)],
)
def test_blocked(decision: str | None, blocked: bool) -> None:
    assert Event("s", Kind.DNS, 1.0, decision=decision).blocked is blocked


@pytest.mark.parametrize(
    ("command", "line"),
    [
        (["claude", "--print", "fix it"], "claude --print 'fix it'"),
        (("ls",), "ls"),
        ("make test", "make test"),
        (None, None),
    ],
)
def test_format_command(command: object, line: str | None) -> None:
    assert format_command(command) == line
