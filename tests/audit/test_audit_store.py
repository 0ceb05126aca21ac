"""The SQLite event store: writing from threads, failures that must surface, reading."""

from __future__ import annotations

import re
import sqlite3
import stat
import threading
import time
from pathlib import Path

import pytest

from corridor.audit.chain import EncodingError
from corridor.audit.events import Event, Kind
from corridor.audit.store import (
    DB_FILENAME,
    MAX_BATCH,
    SCHEMA_VERSION,
    EventWriter,
    SessionSummary,
    StoreError,
    default_db_path,
    default_state_dir,
    last_session,
    new_session_id,
    read_events,
    recover,
    sessions,
)
from corridor.errors import UserError

FULL = Event(
    session="s-full",
    kind=Kind.CONNECTION,
    ts=1795749300.123456,
    decision="allow",
    reason="matched rule github-read",
    rule="github-read",
    host="api.example.test",
    port=443,
    address="2001:db8::7",
    protocol="tls",
    conn_id=7,
    bytes_up=1,
    bytes_down=2**62,
    duration_ms=0.25,
    qtype="A",
    data={"nested": {"list": [1, "two", None]}, "unicode": "é✓", "flag": True},
)


@pytest.fixture
def db(tmp_path: Path) -> Path:
    return tmp_path / "state" / DB_FILENAME


def write(db: Path, *events: Event) -> None:
    with EventWriter(db) as writer:
        for event in events:
            writer.emit(event)


def conn_event(session: str, conn_id: int, ts: float = 1.0) -> Event:
    return Event(session, Kind.CONNECTION, ts, decision="allow", host="h.test", conn_id=conn_id)


# -- round trip ---------------------------------------------------------------------------


def test_every_field_survives_the_database(db: Path) -> None:
    minimal = Event("s-min", Kind.SESSION_END, 2.0)
    write(db, FULL, minimal)
    assert read_events(db) == [FULL, minimal]


def test_events_of_one_session_in_write_order(db: Path) -> None:
    events = [conn_event("a", 1), conn_event("b", 1), conn_event("a", 2, ts=0.5)]
    write(db, *events)
    assert read_events(db, "a") == [events[0], events[2]]  # seq order, not ts order
    assert read_events(db, "nope") == []


def test_database_layout(db: Path) -> None:
    write(db, FULL)
    assert stat.S_IMODE(db.parent.stat().st_mode) == 0o700
    assert stat.S_IMODE(db.stat().st_mode) == 0o600
    conn = sqlite3.connect(db)
    try:
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        assert conn.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
        indexes = {row[1] for row in conn.execute("PRAGMA index_list(events)")}
        assert "events_by_session" in indexes
        stored = conn.execute("SELECT data FROM events").fetchone()[0]
        # Canonical JSON: sorted keys, no spaces, ASCII (read back to exactly the same value).
        assert stored == '{"flag":true,"nested":{"list":[1,"two",null]},"unicode":"\\u00e9\\u2713"}'
    finally:
        conn.close()


def test_reopening_keeps_appending(db: Path) -> None:
    write(db, conn_event("a", 1))
    write(db, conn_event("a", 2))
    assert [e.conn_id for e in read_events(db)] == [1, 2]


# -- the writer ---------------------------------------------------------------------------


def test_many_threads_then_flush(db: Path) -> None:
    threads, per_thread = 8, 2_500  # 20,000 events: several full batches
    assert threads * per_thread > 4 * MAX_BATCH
    writer = EventWriter(db)

    def produce(k: int) -> None:
        for i in range(per_thread):
            writer.emit(conn_event(f"t{k}", i))

    workers = [threading.Thread(target=produce, args=(k,)) for k in range(threads)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    writer.flush()
    # Everything emitted before flush() is readable, before close().
    events = read_events(db)
    assert len(events) == threads * per_thread == writer.written
    for k in range(threads):  # each thread's events keep their order
        assert [e.conn_id for e in events if e.session == f"t{k}"] == list(range(per_thread))
    writer.close()


def test_read_while_writing(db: Path) -> None:
    writer = EventWriter(db)
    writer.emit(Event("live", Kind.SESSION_START, 1.0, data={"command": ["sleep", "9"]}))
    writer.flush()
    seen: list[int] = []
    stop = threading.Event()

    def reader() -> None:
        while not stop.is_set():
            seen.append(len(read_events(db, "live")))

    thread = threading.Thread(target=reader)
    thread.start()
    for i in range(5_000):
        writer.emit(conn_event("live", i))
        if i % 1_000 == 0:
            writer.flush()
    writer.flush()
    stop.set()
    thread.join()
    # The session is listed while its writer is still open (no end recorded yet).
    assert sessions(db) == [SessionSummary("live", 1.0, "sleep 9")]
    assert len(read_events(db, "live")) == 5_001
    writer.close()
    assert seen and seen == sorted(seen)  # readers only ever saw the log grow


def test_construction_fails_when_the_directory_cannot_exist(tmp_path: Path) -> None:
    # A regular file where the state directory should be: fails even for root.
    blocker = tmp_path / "state"
    blocker.write_text("not a directory")
    with pytest.raises(StoreError) as info:
        EventWriter(blocker / DB_FILENAME)
    assert info.value.message.startswith(f"cannot create the audit spool in {blocker / 'spool'}: ")
    assert info.value.hint == f"check that {blocker} is writable (or set XDG_STATE_HOME)"


def test_an_unusable_database_keeps_the_events_in_the_spool(db: Path) -> None:
    db.parent.mkdir(mode=0o700)
    db.mkdir()  # a directory where the database file should be
    writer = EventWriter(db)
    writer.emit(conn_event("a", 1))
    writer.emit(conn_event("a", 2))
    with pytest.raises(StoreError) as info:
        writer.close()
    assert info.value.message.startswith(f"could not store 2 audit events in {db}: ")
    assert info.value.message.endswith(
        f"; they are kept in {db.parent / 'spool'} for the next corridor command to import"
    )
    # Nothing was lost: once the database is usable, the next command imports them.
    db.rmdir()
    recovered = recover(db, None)
    assert [(r.session, r.imported, r.sealed) for r in recovered] == [("a", 2, False)]
    assert [e.conn_id for e in read_events(db)] == [1, 2]
    assert list((db.parent / "spool").iterdir()) == []


def test_flush_right_after_opening_fails_early(db: Path) -> None:
    db.parent.mkdir(mode=0o700)
    db.mkdir()
    writer = EventWriter(db)
    with pytest.raises(StoreError, match=r"^could not open .*state/events\.db: "):
        writer.flush()
    with pytest.raises(StoreError):  # and it stays failed
        writer.close()


@pytest.mark.parametrize(
    ("event", "message"),
    [
        pytest.param(
            Event("a", Kind.SESSION_START, 2.0, data={"bad": object()}),
            "session_start event cannot be recorded: Object of type object is not JSON "
            "serializable",
            id="object-in-data",
        ),
        pytest.param(
            Event("a", Kind.SESSION_END, 3.0, data={"nan": float("nan")}),
            "session_end event cannot be recorded: Out of range float values are not JSON "
            "compliant",
            id="nan-in-data",
        ),
        pytest.param(
            Event("a", Kind.CONNECTION_END, 2.0, conn_id=1, bytes_up=2**64),
            "bytes_up=18446744073709551616 does not fit in 64 bits",
            id="too-large-for-sqlite",
        ),
        pytest.param(
            Event("a", Kind.DNS, 2.0, host="evil\udcff.test"),
            "host is not valid text: surrogates not allowed",
            id="lone-surrogate",
        ),
        pytest.param(
            Event("a", Kind.DNS, 2.0, host=5),  # type: ignore[arg-type]
            "host=5 is not text",
            id="number-as-text",
        ),
    ],
)
def test_emit_refuses_what_cannot_be_stored_exactly(db: Path, event: Event, message: str) -> None:
    writer = EventWriter(db)
    writer.emit(conn_event("a", 1))
    with pytest.raises(EncodingError) as info:
        writer.emit(event)  # raised to the caller: the gateway must not forward
    assert str(info.value) == message
    writer.emit(conn_event("a", 2))
    writer.close()  # nothing was queued that could not be written
    assert [e.conn_id for e in read_events(db)] == [1, 2]


def test_emit_after_close_is_a_bug(db: Path) -> None:
    writer = EventWriter(db)
    writer.close()
    writer.close()  # twice is harmless
    with pytest.raises(RuntimeError, match=r"emit\(\) after close\(\)"):
        writer.emit(conn_event("a", 1))


def test_emit_only_takes_events(db: Path) -> None:
    with EventWriter(db) as writer, pytest.raises(TypeError, match="expected an Event, got dict"):
        writer.emit({"session": "a"})  # type: ignore[arg-type]


# -- reading ------------------------------------------------------------------------------


@pytest.mark.parametrize("reader", [read_events, sessions, last_session])
def test_missing_database_says_so(tmp_path: Path, reader) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(UserError) as info:
        reader(tmp_path / "state" / DB_FILENAME)
    assert info.value.message == f"no sessions recorded yet in {tmp_path / 'state'}"
    assert info.value.hint == "run `corridor run -- COMMAND` to record a session"


def test_reading_does_not_create_anything(tmp_path: Path) -> None:
    with pytest.raises(UserError):
        read_events(tmp_path / DB_FILENAME)
    assert list(tmp_path.iterdir()) == []


def test_not_a_database(tmp_path: Path) -> None:
    path = tmp_path / DB_FILENAME
    path.write_bytes(b"this is not sqlite" * 100)
    with pytest.raises(StoreError, match=r"is not a corridor event store"):
        read_events(path)


def test_database_from_a_newer_corridor(db: Path) -> None:
    write(db, FULL)
    conn = sqlite3.connect(db)
    conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    conn.commit()
    conn.close()
    with pytest.raises(StoreError, match=r"was written by a newer corridor"):
        read_events(db)
    newer = f"{db} was written by a newer corridor (schema 3, this one knows 2)"
    with pytest.raises(StoreError) as info:
        write(db, FULL)
    kept = f"; they are kept in {db.parent / 'spool'} for the next corridor command to import"
    assert info.value.message == f"could not store 1 audit event: {newer}{kept}"
    assert info.value.hint == "upgrade corridor"
    with pytest.raises(StoreError) as info:
        EventWriter(db).close()
    assert info.value.message == f"could not open the event store: {newer}"


def test_sessions_and_last_session(db: Path) -> None:
    write(
        db,
        Event("old", Kind.SESSION_START, 10.0, data={"command": ["make", "test"]}),
        Event("new", Kind.SESSION_START, 20.0, data={"command": ["claude", "-p", "a b"]}),
        conn_event("old", 1),
        Event("old", Kind.SESSION_END, 30.0, data={"exit_code": 3}),
        Event("new", Kind.SESSION_END, 40.0, data={"exit_code": None, "signal": "SIGKILL"}),
    )
    assert sessions(db) == [
        SessionSummary("old", 10.0, "make test", 30.0, 3),
        SessionSummary("new", 20.0, "claude -p 'a b'", 40.0, None, "SIGKILL"),
    ]
    assert last_session(db) == "new"


def test_last_session_without_start_records(db: Path) -> None:
    write(db, conn_event("x", 1), conn_event("y", 1))
    assert last_session(db) == "y"
    assert sessions(db) == []


# -- ids and paths ------------------------------------------------------------------------


def test_session_ids_are_unique_and_sort_by_time() -> None:
    before = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    first = new_session_id()
    after = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    assert re.fullmatch(r"\d{8}T\d{6}Z-[0-9a-f]{8}", first)
    assert before <= first[:16] <= after
    # 200 ids in one second: the odds of a false failure are about 5 in a million.
    ids = {new_session_id() for _ in range(200)}
    assert len(ids) == 200
    earlier = "20000101T000000Z-ffffffff"
    assert sorted([first, earlier]) == [earlier, first]


@pytest.mark.parametrize(
    ("xdg", "expected"),
    [
        pytest.param("/var/xdg", Path("/var/xdg/corridor"), id="absolute"),
        pytest.param("relative/dir", None, id="relative-ignored"),
        pytest.param("", None, id="empty"),
    ],
)
def test_default_state_dir(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, xdg: str, expected: Path | None
) -> None:
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.setenv("XDG_STATE_HOME", xdg)
    want = expected or tmp_path / ".local" / "state" / "corridor"
    assert default_state_dir() == want
    assert default_db_path() == want / "events.db"
    assert not want.exists()  # asking for the path creates nothing
