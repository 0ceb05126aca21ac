"""Tampering with a recorded log: every kind of change is detected and the record named.

The log is written by the real writer, then changed with plain SQL the way someone with
access to the database file would change it; `verify_session` must say what happened and
point at the first record that does not hold.
"""

from __future__ import annotations

import base64
import json
import sqlite3
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from corridor.audit.chain import canonical, genesis, link
from corridor.audit.events import Event, Kind
from corridor.audit.keys import Signer, Statement, checkpoint_data, load_or_create_signer
from corridor.audit.store import DB_FILENAME, EventWriter, read_records
from corridor.audit.verify import Problem, Status, Verdict, verify_session

T0 = 1795749300.0
SID = "20261127T031500Z-3f9a2c"
OTHER = "20261127T031501Z-aaaaaa"
SPACING = 10  # seq values are spread out so a forged row can be slipped between two


def session_events(session: str) -> list[Event]:
    """7 records; the checkpoint becomes #7."""
    return [
        Event(session, Kind.SESSION_START, T0, data={"command": ["make"], "policy_hash": "ab"}),
        Event(session, Kind.DNS, T0 + 1, decision="allow", host="allowed.test", qtype="A"),
        Event(session, Kind.CONNECTION, T0 + 2, decision="allow", host="allowed.test", port=443,
              conn_id=1, protocol="tls", reason="allowed by rule"),
        Event(session, Kind.CONNECTION, T0 + 3, decision="deny", host="denied.test", port=443,
              conn_id=2, protocol="tls", reason="no rule allows this host"),
        Event(session, Kind.CONNECTION_END, T0 + 4, host="allowed.test", port=443, conn_id=1,
              bytes_up=100, bytes_down=5000, duration_ms=20.5),
        Event(session, Kind.DNS, T0 + 5, decision="deny", host="exfil.test", qtype="TXT"),
        Event(session, Kind.SESSION_END, T0 + 6, data={"exit_code": 0}),
    ]  # fmt: skip


@pytest.fixture
def signer(tmp_path: Path) -> Signer:
    return load_or_create_signer(tmp_path / "state")


@pytest.fixture
def db(tmp_path: Path, signer: Signer) -> Path:
    path = tmp_path / "state" / DB_FILENAME
    with EventWriter(path, signer) as writer:
        # Two sessions interleaved, as two corridor processes would write them.
        for mine, theirs in zip(session_events(SID), session_events(OTHER), strict=True):
            writer.emit(mine)
            writer.emit(theirs)
        writer.seal(SID)
        writer.seal(OTHER)
    with sqlite3.connect(path) as conn:
        conn.execute("UPDATE events SET seq = -seq")  # in two steps: no collision on the way
        conn.execute(f"UPDATE events SET seq = -seq * {SPACING}")
    return path


def seq_of(conn: sqlite3.Connection, n: int, session: str = SID) -> int:
    return conn.execute(
        "SELECT seq FROM events WHERE session = ? AND n = ?", (session, n)
    ).fetchone()[0]


def verdict(db: Path, signer: Signer, session: str = SID) -> Verdict:
    return verify_session(session, read_records(db, session), signer.public)


def rechain(conn: sqlite3.Connection, session: str, resign: Signer | None = None) -> None:
    """What an attacker with the database can do: recompute every index and hash, and
    (with some key) a new checkpoint."""
    conn.commit()
    records = read_records(Path(conn.execute("PRAGMA database_list").fetchone()[2]), session)
    previous = genesis(session)
    for n, record in enumerate(records):
        event = record.event
        if event.kind is Kind.CHECKPOINT and resign is not None:
            statement = Statement(session, n, previous.hex(), event.ts, False)
            data = checkpoint_data(statement, resign, {})
            event = Event(session, Kind.CHECKPOINT, event.ts, data=data)
            conn.execute(
                "UPDATE events SET data = ? WHERE seq = ?",
                (json.dumps(data, sort_keys=True, separators=(",", ":")), record.seq),
            )
        previous = link(previous, n, canonical(event))
        conn.execute("UPDATE events SET n = ?, hash = ? WHERE seq = ?", (n, previous, record.seq))


def forged_row(conn: sqlite3.Connection, seq: int, n: int, digest: bytes) -> None:
    conn.execute(
        "INSERT INTO events (seq, session, kind, ts, decision, host, port, conn_id, protocol, "
        "n, hash) VALUES (?, ?, 'connection', ?, 'allow', 'innocent.test', 443, 9, 'tls', ?, ?)",
        (seq, SID, T0 + 2.5, n, digest),
    )


def forged_event() -> Event:
    return Event(SID, Kind.CONNECTION, T0 + 2.5, decision="allow", host="innocent.test",
                 port=443, conn_id=9, protocol="tls")  # fmt: skip


# -- the tampering table ------------------------------------------------------------------


def edit_a_field(conn: sqlite3.Connection) -> int:
    conn.execute(f"UPDATE events SET host = 'other.test' WHERE session = '{SID}' AND n = 2")
    return seq_of(conn, 2)


def edit_the_recorded_policy(conn: sqlite3.Connection) -> int:
    data = '{"command":["make"],"policy_hash":"ff"}'
    conn.execute(f"UPDATE events SET data = ? WHERE session = '{SID}' AND n = 0", (data,))
    return seq_of(conn, 0)


def edit_a_byte_count(conn: sqlite3.Connection) -> int:
    conn.execute(f"UPDATE events SET bytes_up = 1 WHERE session = '{SID}' AND n = 4")
    return seq_of(conn, 4)


def delete_a_middle_record(conn: sqlite3.Connection) -> int:
    conn.execute(f"DELETE FROM events WHERE session = '{SID}' AND n = 3")
    return seq_of(conn, 4)


def delete_the_last_records(conn: sqlite3.Connection) -> int:
    conn.execute(f"DELETE FROM events WHERE session = '{SID}' AND n IN (5, 6)")
    return seq_of(conn, 7)  # the checkpoint, where the chain jumps


def swap_two_records(conn: sqlite3.Connection) -> int:
    a, b = seq_of(conn, 2), seq_of(conn, 4)
    conn.execute("UPDATE events SET seq = -1 WHERE seq = ?", (a,))
    conn.execute("UPDATE events SET seq = ? WHERE seq = ?", (a, b))
    conn.execute("UPDATE events SET seq = ? WHERE seq = -1", (b,))
    return a  # where #4 now sits, before #2


def insert_a_forged_record(conn: sqlite3.Connection) -> int:
    seq = seq_of(conn, 3) - 1
    forged_row(conn, seq, 3, b"\x00" * 32)
    return seq


def insert_a_forged_record_with_a_valid_link(conn: sqlite3.Connection) -> int:
    # The chain is no secret: the forger computes a hash that links to #2.
    previous = bytes(
        conn.execute(f"SELECT hash FROM events WHERE session = '{SID}' AND n = 2").fetchone()[0]
    )
    seq = seq_of(conn, 3) - 1
    forged_row(conn, seq, 3, link(previous, 3, canonical(forged_event())))
    return seq


def append_after_the_checkpoint(conn: sqlite3.Connection) -> int:
    seq = seq_of(conn, 7) + 1
    forged_row(conn, seq, 8, b"\x00" * 32)
    return seq


def edit_the_checkpoint(conn: sqlite3.Connection) -> int:
    row = conn.execute(f"SELECT seq, data FROM events WHERE session = '{SID}' AND n = 7")
    seq, data = row.fetchone()
    conn.execute(
        "UPDATE events SET data = ? WHERE seq = ?", (data.replace('"count":7', '"count":6'), seq)
    )
    return seq


def replace_the_checkpoint_with_another_sessions(conn: sqlite3.Connection) -> int:
    theirs = conn.execute(f"SELECT data FROM events WHERE session = '{OTHER}' AND n = 7")
    conn.execute(f"UPDATE events SET data = ? WHERE session = '{SID}' AND n = 7", theirs.fetchone())
    rechain(conn, SID)
    return seq_of(conn, 7)


def rewrite_and_keep_the_old_checkpoint(conn: sqlite3.Connection) -> int:
    conn.execute(f"UPDATE events SET host = 'other.test' WHERE session = '{SID}' AND n = 2")
    rechain(conn, SID)
    return seq_of(conn, 7)


def forge_the_signature(conn: sqlite3.Connection) -> int:
    conn.execute(f"UPDATE events SET host = 'other.test' WHERE session = '{SID}' AND n = 2")
    stranger = Signer(Ed25519PrivateKey.generate())
    rechain(conn, SID, resign=stranger)
    # ... and pass the stranger's signature off as the pinned key's.
    seq = seq_of(conn, 7)
    data = json.loads(conn.execute("SELECT data FROM events WHERE seq = ?", (seq,)).fetchone()[0])
    data["key"] = PINNED[0]
    conn.execute("UPDATE events SET data = ? WHERE seq = ?", (json.dumps(data), seq))
    rechain(conn, SID)
    return seq


def resign_with_another_key(conn: sqlite3.Connection) -> int:
    conn.execute(f"UPDATE events SET host = 'other.test' WHERE session = '{SID}' AND n = 2")
    rechain(conn, SID, resign=Signer(Ed25519PrivateKey.generate()))
    return seq_of(conn, 7)


PINNED: list[str] = []  # the pinned fingerprint, for the signature forger


CASES: list[tuple[str, Callable[[sqlite3.Connection], int], Problem, str]] = [
    ("edit-a-field", edit_a_field, Problem.ALTERED,
     "record #2 (seq {seq}, connection other.test:443, 2026-11-27 03:15:02 UTC) was altered: "
     "its contents do not match its hash"),
    ("edit-the-recorded-policy", edit_the_recorded_policy, Problem.ALTERED,
     "record #0 (seq {seq}, session_start, 2026-11-27 03:15:00 UTC) was altered: its contents "
     "do not match its hash"),
    ("edit-a-byte-count", edit_a_byte_count, Problem.ALTERED,
     "record #4 (seq {seq}, connection_end allowed.test:443, 2026-11-27 03:15:04 UTC) was "
     "altered: its contents do not match its hash"),
    ("delete-a-middle-record", delete_a_middle_record, Problem.REMOVED,
     "record #3 of the session was removed (the chain jumps to record #4 (seq {seq}, "
     "connection_end allowed.test:443, 2026-11-27 03:15:04 UTC))"),
    ("delete-the-last-records", delete_the_last_records, Problem.REMOVED,
     "record #5 to #6 of the session was removed (the chain jumps to record #7 (seq {seq}, "
     "checkpoint, {cp_when}))"),
    ("swap-two-records", swap_two_records, Problem.REORDERED,
     "record #4 (seq {seq}, connection_end allowed.test:443, 2026-11-27 03:15:04 UTC) is out "
     "of order: #2 should come before it but comes later (record #2 (seq {other}, connection "
     "allowed.test:443, 2026-11-27 03:15:02 UTC))"),
    ("insert-a-forged-record", insert_a_forged_record, Problem.INSERTED,
     "record #3 (seq {seq}, connection innocent.test:443, 2026-11-27 03:15:02 UTC) was "
     "inserted: it is not part of the chain, and the real #3 follows it (record #3 (seq "
     "{other}, connection denied.test:443, 2026-11-27 03:15:03 UTC))"),
    ("insert-a-forged-record-with-a-valid-link", insert_a_forged_record_with_a_valid_link,
     Problem.INSERTED,
     "record #3 (seq {seq}, connection innocent.test:443, 2026-11-27 03:15:02 UTC) was "
     "inserted: the real #3 comes after it (record #3 (seq {other}, connection "
     "denied.test:443, 2026-11-27 03:15:03 UTC))"),
    ("append-after-the-checkpoint", append_after_the_checkpoint, Problem.AFTER_CHECKPOINT,
     "record #8 (seq {seq}, connection innocent.test:443, 2026-11-27 03:15:02 UTC) was added "
     "after the session's signed checkpoint (record #7 (seq {other}, checkpoint, {cp_when}))"),
    ("edit-the-checkpoint", edit_the_checkpoint, Problem.ALTERED,
     "record #7 (seq {seq}, checkpoint, {cp_when}) was altered: its contents "
     "do not match its hash"),
    ("replace-the-checkpoint", replace_the_checkpoint_with_another_sessions, Problem.CHECKPOINT,
     "the checkpoint (record #7 (seq {seq}, checkpoint, {cp_when})) signs 7 "
     "records ending in {their_head}..., but the chain has 7 ending in {our_head}..."),
    ("rewrite-and-keep-the-old-checkpoint", rewrite_and_keep_the_old_checkpoint,
     Problem.CHECKPOINT,
     "the checkpoint (record #7 (seq {seq}, checkpoint, {cp_when})) signs 7 "
     "records ending in {signed_head}..., but the chain has 7 ending in {our_head}..."),
    ("forge-the-signature", forge_the_signature, Problem.SIGNATURE,
     "the checkpoint's signature (record #7 (seq {seq}, checkpoint, {cp_when})) "
     "does not verify with key {pinned}: the chain was rewritten after it was signed, or the "
     "checkpoint was forged"),
    ("re-sign-with-another-key", resign_with_another_key, Problem.WRONG_KEY,
     "the checkpoint (record #7 (seq {seq}, checkpoint, {cp_when})) was signed "
     "by key {stranger}, not by the pinned key {pinned}: the records it covers cannot be "
     "trusted"),
]  # fmt: skip


@pytest.mark.parametrize(
    ("tamper", "problem", "message"),
    [pytest.param(c[1], c[2], c[3], id=c[0]) for c in CASES],
)
def test_tampering_is_detected_and_named(
    db: Path,
    signer: Signer,
    tamper: Callable[[sqlite3.Connection], int],
    problem: Problem,
    message: str,
) -> None:
    PINNED[:] = [signer.fingerprint]
    original = read_records(db, SID)
    with sqlite3.connect(db) as conn:
        seq = tamper(conn)
    found = verdict(db, signer)
    assert (found.status, found.problem, found.seq) == (Status.TAMPERED, problem, seq)
    after = read_records(db, SID)
    checkpoint = after[-1].event.data or {}
    expected = message.format(
        seq=seq,
        other=_other_seq(after, seq, problem),
        pinned=signer.fingerprint,
        stranger=checkpoint.get("key"),
        their_head=str(checkpoint.get("head"))[:16],
        signed_head=str((original[-1].event.data or {}).get("head"))[:16],
        our_head=(after[-2].hash or b"").hex()[:16],
        cp_when=time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(original[-1].event.ts)),
    )
    assert found.message == expected
    assert not found.ok
    # The other session, interleaved in the same table, is untouched and still verifies.
    assert verdict(db, signer, OTHER).status is Status.OK


def _other_seq(records: list, seq: int, problem: Problem) -> int | None:
    """The second record a message names."""
    if problem is Problem.REORDERED:
        return next(r.seq for r in records if r.n == 2)
    if problem is Problem.INSERTED:
        return next(r.seq for r in records if r.n == 3 and r.seq != seq)
    if problem is Problem.AFTER_CHECKPOINT:
        return next(r.seq for r in records if r.event.kind is Kind.CHECKPOINT)
    return None


# -- sessions that are not closed ---------------------------------------------------------


def test_cut_off_at_the_end_says_where_the_chain_ends(db: Path, signer: Signer) -> None:
    with sqlite3.connect(db) as conn:
        conn.execute(f"DELETE FROM events WHERE session = '{SID}' AND n >= 6")
        last = seq_of(conn, 5)
    found = verdict(db, signer)
    assert (found.status, found.problem, found.seq) == (
        Status.NOT_CLOSED, Problem.NO_CHECKPOINT, last,
    )  # fmt: skip
    assert found.message == (
        f"not closed: no checkpoint; the chain holds for all 6 records, up to record #5 (seq "
        f"{last}, dns exfil.test, 2026-11-27 03:15:05 UTC), where it ends (cut off after it, or "
        "corridor was killed and no command has recovered the session since)"
    )
    assert not found.ok


def test_a_running_session_is_fine_so_far(db: Path, signer: Signer) -> None:
    with sqlite3.connect(db) as conn:
        conn.execute(f"DELETE FROM events WHERE session = '{SID}' AND n = 7")
    found = verify_session(SID, read_records(db, SID), signer.public, running=True)
    assert found.status is Status.RUNNING and found.ok
    assert found.message.startswith("still running: the chain holds for all 7 records")


def test_an_intact_session(db: Path, signer: Signer) -> None:
    found = verdict(db, signer)
    assert found.status is Status.OK and found.ok and found.problem is None
    assert found.message == f"7 records, signed by {signer.fingerprint}"
    assert found.checkpoint is not None and found.checkpoint.count == 7


def test_the_signature_covers_the_statement(signer: Signer) -> None:
    # A valid signature over one statement does not verify another.
    from corridor.audit.keys import signature_valid

    statement = Statement(SID, 7, "ab" * 32, T0, False)
    signature = base64.b64encode(signer.sign(statement.message())).decode()
    assert signature_valid(signer.public, statement, signature)
    for other in (
        Statement(OTHER, 7, "ab" * 32, T0, False),
        Statement(SID, 6, "ab" * 32, T0, False),
        Statement(SID, 7, "cd" * 32, T0, False),
        Statement(SID, 7, "ab" * 32, T0 + 1, False),
        Statement(SID, 7, "ab" * 32, T0, True),
    ):
        assert not signature_valid(signer.public, other, signature)
    assert not signature_valid(signer.public, statement, "not base64!")
    assert not signature_valid(signer.public, statement, None)
