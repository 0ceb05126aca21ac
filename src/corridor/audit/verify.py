"""Verification of one session's records: chain, checkpoint, signature. Pure.

`verify_session` walks the records in the order they were written, recomputes each hash
from the record's contents and the hash before it, and stops at the first record that
does not hold. It then says what happened there, from what the records still show:

- altered:    the record keeps its place (index) but its contents no longer match its hash;
- inserted:   a record that is not part of the chain sits where the real one follows;
- removed:    the index jumps ahead and the missing indexes appear nowhere;
- reordered:  the index jumps ahead and the missing index appears later;
- after the checkpoint: records follow the signed end of the session;
- not closed: the chain holds but no checkpoint ends it (cut off at the end, or the
  session is still running);
- checkpoint: the signed statement does not match the chain, is not signed by the pinned
  key, or its signature is invalid.

A chain is not a secret: whoever can write the database can also recompute every hash
after a change. What such a rewrite cannot redo is the signature, so a rewritten chain is
caught at the checkpoint (without knowing which record was changed).
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from enum import StrEnum

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from corridor.audit.chain import EncodingError, Record, canonical, genesis, link
from corridor.audit.events import Kind
from corridor.audit.keys import fingerprint, signature_valid, statement_of


class Status(StrEnum):
    """The outcome for one session."""

    OK = "ok"  # chain holds, checkpoint signed by the pinned key
    RECOVERED = "recovered"  # ok, closed by recovery after corridor was killed
    RUNNING = "running"  # chain holds so far; its writer is still running
    NOT_CLOSED = "not closed"  # chain holds, but no checkpoint ends it
    TAMPERED = "tampered"  # a record or the checkpoint does not hold
    UNCHAINED = "unchained"  # written before corridor chained its records


GOOD = frozenset({Status.OK, Status.RECOVERED, Status.RUNNING})


class Problem(StrEnum):
    """What was found at the first record that does not hold."""

    ALTERED = "altered"
    INSERTED = "inserted"
    REMOVED = "removed"
    REORDERED = "reordered"
    AFTER_CHECKPOINT = "after checkpoint"
    CHECKPOINT = "checkpoint"
    WRONG_KEY = "wrong key"
    SIGNATURE = "signature"
    NO_CHECKPOINT = "no checkpoint"


@dataclass(frozen=True, slots=True)
class Checkpoint:
    """The signed statement a session ends with."""

    count: int
    head: str
    key: str | None  # the signer's fingerprint, as recorded
    signature: str | None
    recovered: bool
    ts: float


@dataclass(frozen=True, slots=True)
class Verdict:
    """What `verify_session` found."""

    session: str
    status: Status
    records: int  # records found
    intact: int  # records from the start whose chain holds
    problem: Problem | None = None
    seq: int | None = None  # the record the problem is about (its place in the table)
    message: str = ""
    checkpoint: Checkpoint | None = None

    @property
    def ok(self) -> bool:
        """True when nothing was found wrong (a running session included)."""
        return self.status in GOOD


def verify_session(
    session: str,
    records: Sequence[Record],
    public: Ed25519PublicKey,
    *,
    running: bool = False,
) -> Verdict:
    """Verify one session's records (in write order) against the pinned public key.

    `running`: the session's writer is alive, so a missing checkpoint is expected.
    """
    if not records:
        return Verdict(session, Status.NOT_CLOSED, 0, 0, Problem.NO_CHECKPOINT, None, "no records")
    unchained = [r for r in records if r.n is None or r.hash is None]
    if len(unchained) == len(records):
        return Verdict(
            session, Status.UNCHAINED, len(records), 0, None, records[0].seq,
            "recorded before corridor chained and signed its log: cannot be verified",
        )  # fmt: skip
    walk = _Walk(session, records)
    found = walk.run()
    if found is not None:
        problem, seq, message = found
        return Verdict(session, Status.TAMPERED, len(records), walk.intact, problem, seq, message)
    last = records[-1]
    if last.event.kind is not Kind.CHECKPOINT:
        return _unclosed(session, records, running)
    return _check_checkpoint(session, records, walk.hashes, public)


class _Walk:
    """The chain walk: `hashes[i]` is the verified hash of index i."""

    def __init__(self, session: str, records: Sequence[Record]) -> None:
        self.session = session
        self.records = records
        self.hashes: list[bytes] = []

    @property
    def intact(self) -> int:
        return len(self.hashes)

    def previous(self, index: int) -> bytes:
        return self.hashes[index - 1] if index > 0 else genesis(self.session)

    def holds(self, record: Record, index: int) -> bool:
        """Whether `record` is a valid record number `index` after the verified prefix."""
        if record.n != index or record.hash is None or record.event.session != self.session:
            return False
        try:
            line = canonical(record.event)
        except EncodingError:  # a value no writer could have recorded
            return False
        return link(self.previous(index), index, line) == record.hash

    def run(self) -> tuple[Problem, int, str] | None:
        for position, record in enumerate(self.records):
            index = len(self.hashes)
            if not self.holds(record, index):
                return self.diagnose(position, record, index)
            if record.event.kind is Kind.CHECKPOINT and position + 1 < len(self.records):
                after = self.records[position + 1]
                return (
                    Problem.AFTER_CHECKPOINT, after.seq,
                    f"{_name(after)} was added after the session's signed checkpoint "
                    f"({_name(record)})",
                )  # fmt: skip
            assert record.hash is not None  # holds() checked it
            self.hashes.append(record.hash)
        return None

    def diagnose(self, position: int, record: Record, index: int) -> tuple[Problem, int, str]:
        """Say what happened at the first record that does not hold."""
        rest = self.records[position + 1 :]
        claimed = record.n
        if claimed is None or record.hash is None:
            return (Problem.ALTERED, record.seq, f"{_name(record)} lost its chain fields")
        if claimed == index:
            if rest and self.holds(rest[0], index):
                return (
                    Problem.INSERTED, record.seq,
                    f"{_name(record)} was inserted: it is not part of the chain, and the "
                    f"real #{index} follows it ({_name(rest[0])})",
                )  # fmt: skip
            return (
                Problem.ALTERED, record.seq,
                f"{_name(record)} was altered: its contents do not match its hash",
            )  # fmt: skip
        if claimed > index:
            later = next((r for r in rest if r.n == index), None)
            if later is not None:
                return (
                    Problem.REORDERED, record.seq,
                    f"{_name(record)} is out of order: #{index} should come before it but "
                    f"comes later ({_name(later)})",
                )  # fmt: skip
            missing = f"#{index}" if claimed == index + 1 else f"#{index} to #{claimed - 1}"
            return (
                Problem.REMOVED, record.seq,
                f"record {missing} of the session was removed (the chain jumps to "
                f"{_name(record)})",
            )  # fmt: skip
        # The record claims an index the chain already passed.
        if 0 <= claimed < len(self.hashes) and self._holds_after(record, claimed):
            forged = self.records[claimed]
            return (
                Problem.INSERTED, forged.seq,
                f"{_name(forged)} was inserted: the real #{claimed} comes after it "
                f"({_name(record)})",
            )  # fmt: skip
        return (
            Problem.INSERTED, record.seq,
            f"{_name(record)} repeats #{claimed}, which came already: it was inserted",
        )  # fmt: skip

    def _holds_after(self, record: Record, index: int) -> bool:
        """Whether `record` is the valid #index chained to the verified #index-1."""
        try:
            line = canonical(record.event)
        except EncodingError:
            return False
        return link(self.previous(index), index, line) == record.hash


def _check_checkpoint(
    session: str, records: Sequence[Record], hashes: list[bytes], public: Ed25519PublicKey
) -> Verdict:
    record = records[-1]
    event = record.event
    data = dict(event.data or {})
    count = len(records) - 1  # the checkpoint's own index: the records before it
    head = (hashes[-2] if count else genesis(session)).hex()

    def tampered(problem: Problem, message: str, cp: Checkpoint | None = None) -> Verdict:
        return Verdict(
            session, Status.TAMPERED, len(records), len(records), problem, record.seq, message, cp
        )

    try:
        statement = statement_of(session, event.ts, data)
    except ValueError as exc:
        return tampered(Problem.CHECKPOINT, f"the checkpoint ({_name(record)}) is malformed: {exc}")
    checkpoint = Checkpoint(
        statement.count,
        statement.head,
        data.get("key") if isinstance(data.get("key"), str) else None,
        data.get("signature") if isinstance(data.get("signature"), str) else None,
        statement.recovered,
        event.ts,
    )
    if statement.count != count or statement.head != head:
        return tampered(
            Problem.CHECKPOINT,
            f"the checkpoint ({_name(record)}) signs {statement.count} records ending in "
            f"{statement.head[:16]}..., but the chain has {count} ending in {head[:16]}...",
            checkpoint,
        )
    pinned = fingerprint(public)
    if checkpoint.key != pinned:
        return tampered(
            Problem.WRONG_KEY,
            f"the checkpoint ({_name(record)}) was signed by key {checkpoint.key}, not by the "
            f"pinned key {pinned}: the records it covers cannot be trusted",
            checkpoint,
        )
    if not signature_valid(public, statement, checkpoint.signature):
        return tampered(
            Problem.SIGNATURE,
            f"the checkpoint's signature ({_name(record)}) does not verify with key {pinned}: "
            "the chain was rewritten after it was signed, or the checkpoint was forged",
            checkpoint,
        )
    status = Status.RECOVERED if statement.recovered else Status.OK
    how = "recovered after corridor was killed, " if statement.recovered else ""
    message = f"{count} records, {how}signed by {pinned}"
    return Verdict(session, status, len(records), len(records), None, None, message, checkpoint)


def _unclosed(session: str, records: Sequence[Record], running: bool) -> Verdict:
    last = records[-1]
    where = f"the chain holds for all {len(records)} records, up to {_name(last)}"
    if running:
        return Verdict(
            session, Status.RUNNING, len(records), len(records), None, None,
            f"still running: {where}",
        )  # fmt: skip
    return Verdict(
        session, Status.NOT_CLOSED, len(records), len(records), Problem.NO_CHECKPOINT, last.seq,
        f"not closed: no checkpoint; {where}, where it ends (cut off after it, or corridor "
        "was killed and no command has recovered the session since)",
    )  # fmt: skip


def _name(record: Record) -> str:
    """`record #5 (seq 812, connection allowed.test:443, 2026-11-27 03:15:00 UTC)`."""
    event = record.event
    what = event.kind.value
    if event.host:
        what += f" {event.host}" + (f":{event.port}" if event.port is not None else "")
    when = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(event.ts))
    index = "record" if record.n is None else f"record #{record.n}"
    return f"{index} (seq {record.seq}, {what}, {when})"
