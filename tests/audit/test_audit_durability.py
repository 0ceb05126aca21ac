"""Nothing lost: the spool, `kill -9` of a writer, recovery, rotation, sealing, migration."""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from corridor.audit.events import Event, Kind
from corridor.audit.keys import Signer, load_or_create_signer
from corridor.audit.store import (
    DB_FILENAME,
    MIGRATIONS,
    EventWriter,
    live_sessions,
    read_events,
    read_records,
    recover,
    session_ids,
)
from corridor.audit.verify import Status, verify_session


@pytest.fixture
def state(tmp_path: Path) -> Path:
    return tmp_path / "state"


@pytest.fixture
def signer(state: Path) -> Signer:
    return load_or_create_signer(state)


def conn(session: str, i: int) -> Event:
    return Event(session, Kind.CONNECTION, 1000.0 + i, decision="allow", host="h.test", conn_id=i)


def spools(state: Path) -> list[str]:
    directory = state / "spool"
    return sorted(p.name for p in directory.iterdir()) if directory.is_dir() else []


# -- a writer killed with SIGKILL ---------------------------------------------------------

KILLED_WRITER = textwrap.dedent(
    """
    import os, signal, sys
    from pathlib import Path
    from corridor.audit.events import Event, Kind
    from corridor.audit.keys import load_or_create_signer
    from corridor.audit.store import EventWriter

    state, committed, spooled, limit = Path(sys.argv[1]), *map(int, sys.argv[2:])
    writer = EventWriter(state / "events.db", load_or_create_signer(state), spool_limit=limit)
    for i in range(committed):
        writer.emit(Event("k", Kind.CONNECTION, 1000.0 + i, decision="allow", conn_id=i))
    writer.flush()
    print("committed", flush=True)
    sys.stdin.readline()  # the test now holds the database's write lock
    # These return once they are in the spool; the writer thread cannot commit them.
    for i in range(committed, committed + spooled):
        writer.emit(Event("k", Kind.CONNECTION, 1000.0 + i, decision="allow", conn_id=i))
    os.kill(os.getpid(), signal.SIGKILL)
    """
)


def kill_a_writer(state: Path, committed: int, spooled: int, limit: int = 1 << 30) -> None:
    """A writer commits `committed` events, spools `spooled` more it can never commit (the
    database is locked), then dies of SIGKILL."""
    args = [str(state), str(committed), str(spooled), str(limit)]
    proc = subprocess.Popen(
        [sys.executable, "-c", KILLED_WRITER, *args],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    assert proc.stdout is not None and proc.stdin is not None
    assert proc.stdout.readline() == "committed\n"
    lock = sqlite3.connect(state / DB_FILENAME, isolation_level=None)
    lock.execute("BEGIN IMMEDIATE")
    try:
        proc.stdin.write("go\n")
        proc.stdin.flush()
        assert proc.wait(timeout=60) == -signal.SIGKILL
    finally:
        lock.execute("ROLLBACK")
        lock.close()


@pytest.mark.parametrize(
    ("committed", "spooled", "limit"),
    [
        pytest.param(10, 500, 1 << 30, id="one-spool"),
        pytest.param(0, 300, 1 << 30, id="nothing-committed"),
        pytest.param(200, 0, 1 << 30, id="all-committed-no-checkpoint"),
        pytest.param(100, 2_000, 8 * 1024, id="rotated-spools"),
    ],
)
def test_every_emitted_event_survives_kill_9(
    state: Path, signer: Signer, committed: int, spooled: int, limit: int
) -> None:
    kill_a_writer(state, committed, spooled, limit)
    assert spools(state)  # what the writer left behind
    assert live_sessions(state / DB_FILENAME) == set()  # its lock died with it
    recovered = recover(state / DB_FILENAME, signer)
    assert [(r.session, r.imported, r.sealed) for r in recovered] == [("k", spooled, True)]
    db = state / DB_FILENAME
    records = read_records(db, "k")
    events = [r.event for r in records]
    assert [e.conn_id for e in events[:-1]] == list(range(committed + spooled))
    assert events[-1].kind is Kind.CHECKPOINT and events[-1].data["recovered"] is True
    assert recovered[0].imported == events[-1].data["imported"]
    verdict = verify_session("k", records, signer.public)
    assert verdict.status is Status.RECOVERED, verdict.message
    assert spools(state) == []
    assert recover(db, signer) == []  # imported once, never twice


def test_a_live_writer_is_not_recovered(state: Path, signer: Signer) -> None:
    db = state / DB_FILENAME
    writer = EventWriter(db, signer)
    writer.emit(conn(session="live", i=1))
    writer.flush()
    assert recover(db, signer) == []  # another command while the session runs
    assert live_sessions(db) == {"live"}
    writer.emit(conn(session="live", i=2))
    writer.close()
    assert live_sessions(db) == set()
    records = read_records(db, "live")
    assert [r.event.kind for r in records] == [Kind.CONNECTION, Kind.CONNECTION, Kind.CHECKPOINT]
    assert verify_session("live", records, signer.public).status is Status.OK


def test_the_next_writer_recovers_before_it_writes(state: Path, signer: Signer) -> None:
    kill_a_writer(state, committed=3, spooled=4)
    db = state / DB_FILENAME
    with EventWriter(db, signer) as writer:
        writer.flush()
        assert [(r.session, r.imported) for r in writer.recovered] == [("k", 4)]
        writer.emit(conn("next", 1))
    assert session_ids(db) == ["k", "next"]
    assert [e.conn_id for e in read_events(db, "k")[:-1]] == list(range(7))


def test_a_torn_last_line_is_reported_and_the_rest_kept(state: Path, signer: Signer) -> None:
    kill_a_writer(state, committed=0, spooled=5)
    (spool,) = (state / "spool").iterdir()
    data = spool.read_bytes()
    spool.write_bytes(data[:-20])  # as a write cut short by a full disk would leave it
    (recovered,) = recover(state / DB_FILENAME, signer)
    assert recovered.imported == 4
    assert recovered.damaged_bytes == len(data.splitlines(keepends=True)[-1]) - 20
    assert [e.conn_id for e in read_events(state / DB_FILENAME, "k")][:-1] == [0, 1, 2, 3]


# -- rotation, sealing --------------------------------------------------------------------


def test_rotation_keeps_order_and_leaves_no_spool(state: Path, signer: Signer) -> None:
    db = state / DB_FILENAME
    with EventWriter(db, signer, spool_limit=4096) as writer:
        for i in range(3_000):
            writer.emit(conn("r", i))
            if i % 700 == 0:
                writer.flush()
                assert len(spools(state)) <= 2  # committed spools are deleted as it goes
    records = read_records(db, "r")
    assert [r.event.conn_id for r in records[:-1]] == list(range(3_000))
    assert verify_session("r", records, signer.public).status is Status.OK
    assert spools(state) == []
    assert sqlite3.connect(db).execute("SELECT count(*) FROM spools").fetchone() == (0,)


def test_seal_and_close_sign_every_session(state: Path, signer: Signer) -> None:
    db = state / DB_FILENAME
    with EventWriter(db, signer) as writer:
        writer.emit(conn("a", 1))
        writer.seal("a")
        writer.emit(conn("b", 1))  # not sealed explicitly: close() does it
    for session in ("a", "b"):
        records = read_records(db, session)
        assert [r.n for r in records] == [0, 1]
        assert records[-1].event.kind is Kind.CHECKPOINT
        assert verify_session(session, records, signer.public).status is Status.OK


def test_seal_needs_a_signer(state: Path) -> None:
    with (
        EventWriter(state / DB_FILENAME) as writer,
        pytest.raises(RuntimeError, match=r"seal\(\) needs a signer"),
    ):
        writer.seal("a")


def test_a_second_writer_continues_the_sessions_chain(state: Path, signer: Signer) -> None:
    db = state / DB_FILENAME
    with EventWriter(db) as writer:
        writer.emit(conn("a", 1))
    with EventWriter(db, signer) as writer:
        writer.emit(conn("a", 2))
    records = read_records(db, "a")
    assert [r.n for r in records] == [0, 1, 2]
    assert verify_session("a", records, signer.public).status is Status.OK


# -- migration ----------------------------------------------------------------------------


def test_a_schema_1_database_gains_the_chain_columns(state: Path, signer: Signer) -> None:
    db = state / DB_FILENAME  # the signer fixture made the directory
    old = sqlite3.connect(db)
    for sql in MIGRATIONS[0]:
        old.execute(sql)
    old.execute("INSERT INTO events (session, kind, ts) VALUES ('old', 'session_start', 1.0)")
    old.execute("PRAGMA user_version = 1")
    old.commit()
    old.close()
    assert read_events(db) == [Event("old", Kind.SESSION_START, 1.0)]  # reading migrates
    with EventWriter(db, signer) as writer:
        writer.emit(conn("new", 1))
    (legacy,) = read_records(db, "old")
    assert (legacy.n, legacy.hash) == (None, None)
    verdict = verify_session("old", [legacy], signer.public)
    assert verdict.status is Status.UNCHAINED and not verdict.ok
    assert verify_session("new", read_records(db, "new"), signer.public).ok


def test_spool_files_are_private(state: Path) -> None:
    writer = EventWriter(state / DB_FILENAME)
    (name,) = spools(state)
    mode = os.stat(state / "spool" / name).st_mode & 0o777
    assert mode == 0o600 and (os.stat(state / "spool").st_mode & 0o777) == 0o700
    writer.close()
