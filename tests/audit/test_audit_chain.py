"""The canonical encoding and the chain: what is hashed when writing is what verify rebuilds."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from corridor.audit.chain import EncodingError, canonical, genesis, link
from corridor.audit.events import DECISIONS, Event, Kind
from corridor.audit.store import EventWriter, read_records

SID = "20261127T031500Z-3f9a2c"


def test_canonical_form_is_sorted_ascii_json_and_a_line_feed() -> None:
    event = Event(SID, Kind.DNS, 1.5, decision="deny", host="caf\u00e9.test", qtype="A")
    assert canonical(event) == (
        b'{"decision":"deny","host":"caf\\u00e9.test","kind":"dns","qtype":"A",'
        b'"session":"20261127T031500Z-3f9a2c","ts":1.5}\n'
    )


@pytest.mark.parametrize(
    ("given_event", "stored_event"),
    [
        # What SQLite hands back for each column type must encode to the same bytes.
        pytest.param(Event(SID, Kind.DNS, 5), Event(SID, Kind.DNS, 5.0), id="int-time"),
        pytest.param(
            Event(SID, Kind.CONNECTION_END, 1.0, duration_ms=3),
            Event(SID, Kind.CONNECTION_END, 1.0, duration_ms=3.0),
            id="int-duration",
        ),
        pytest.param(
            Event(SID, Kind.CONNECTION, 1.0, port=True),  # type: ignore[arg-type]
            Event(SID, Kind.CONNECTION, 1.0, port=1),
            id="bool-port",
        ),
        pytest.param(
            Event(SID, Kind.SESSION_START, 1.0, data={"command": ("a", "b")}),
            Event(SID, Kind.SESSION_START, 1.0, data={"command": ["a", "b"]}),
            id="tuple-in-data",
        ),
    ],
)
def test_equal_stored_values_encode_equally(given_event: Event, stored_event: Event) -> None:
    assert canonical(given_event) == canonical(stored_event)


@pytest.mark.parametrize(
    ("event", "message"),
    [
        (Event(SID, Kind.DNS, float("nan")), "ts=nan is not a finite number"),
        (Event(SID, Kind.DNS, float("inf")), "ts=inf is not a finite number"),
        (Event(SID, Kind.DNS, 1.0, port=1.5), "port=1.5 is not a whole number"),  # type: ignore[arg-type]
        (Event(SID, Kind.DNS, 1.0, port="x"), "port='x' is not a number"),  # type: ignore[arg-type]
        (Event(SID, Kind.DNS, 1.0, conn_id=-(2**63) - 1), "conn_id=-9223372036854775809 does "
         "not fit in 64 bits"),
        (Event(SID, Kind.DNS, 1.0, reason=b"x"), "reason=b'x' is not text"),  # type: ignore[arg-type]
        (Event(SID, Kind.DNS, 1.0, data={1: "a", "b": 2}), "dns event cannot be recorded: '<' "
         "not supported between instances of 'str' and 'int'"),
    ],
)  # fmt: skip
def test_values_that_cannot_be_recorded_exactly(event: Event, message: str) -> None:
    with pytest.raises(EncodingError) as info:
        canonical(event)
    assert str(info.value) == message


def test_genesis_is_per_session() -> None:
    assert genesis(SID) != genesis(SID + "x")
    assert len(genesis(SID)) == 32


def test_link_binds_previous_index_and_record() -> None:
    record = b'{"kind":"dns"}\n'
    base = link(genesis(SID), 0, record)
    assert link(genesis(SID), 1, record) != base
    assert link(genesis("other"), 0, record) != base
    assert link(genesis(SID), 0, record + b" ") != base


valid_text = st.text(
    alphabet=st.characters(blacklist_categories=("Cs",)), max_size=20
)  # SQLite stores UTF-8: no lone surrogates
ints = st.integers(min_value=-(2**63), max_value=2**63 - 1)
floats = st.floats(allow_nan=False, allow_infinity=False)
json_values = st.recursive(
    st.none() | st.booleans() | ints | floats | valid_text,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(valid_text, inner, max_size=3),
    max_leaves=8,
)
events = st.builds(
    Event,
    session=valid_text.filter(bool),
    kind=st.sampled_from(list(Kind)),
    ts=floats,
    decision=st.none() | st.sampled_from(sorted(DECISIONS)),
    reason=st.none() | valid_text,
    host=st.none() | valid_text,
    port=st.none() | ints,
    address=st.none() | valid_text,
    conn_id=st.none() | ints,
    bytes_up=st.none() | ints,
    duration_ms=st.none() | floats,
    method=st.none() | valid_text,
    status=st.none() | ints,
    data=st.none() | st.dictionaries(valid_text, json_values, max_size=4),
)


@settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(batch=st.lists(events, min_size=1, max_size=6))
def test_what_is_read_back_encodes_to_what_was_hashed(tmp_path: Path, batch: list[Event]) -> None:
    db = tmp_path / f"{len(list(tmp_path.iterdir()))}" / "events.db"
    with EventWriter(db) as writer:
        for event in batch:
            writer.emit(event)
    for event in batch:
        stored = read_records(db, event.session)
        assert stored, event
    for session in {e.session for e in batch}:
        previous = genesis(session)
        for n, record in enumerate(read_records(db, session)):
            assert record.n == n
            previous = link(previous, n, canonical(record.event))
            assert record.hash == previous
    sent = [json.loads(canonical(e)) for e in batch]
    assert sent  # the JSON form parses back
