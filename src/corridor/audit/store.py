"""The append-only event store: SQLite in WAL mode, a hash chain, written off the hot path.

`EventWriter.emit()` is what the gateway calls before it dials upstream. It encodes the
event (audit/chain.py), appends the line to the writer's spool file with one `write()`
(audit/spool.py: from then on the event survives `kill -9` of corridor) and queues it.
One background thread takes what is queued every `COMMIT_INTERVAL_S` (at once when
asked to flush, seal or close; up to `MAX_BATCH` events at a time), chains each record
to the previous one of its session, inserts the batch and the spool's new committed
offset in one transaction, and repeats (group commit).

WAL with `synchronous=NORMAL` keeps every committed transaction through a crash or kill
of the process (only a power loss can drop the last few), and lets `corridor log` read
while a session is still writing.

`seal(session)` appends the session's checkpoint: record count and head hash, signed with
the state directory's Ed25519 key (audit/keys.py). Spools of writers that died are
imported by the next corridor command that opens the store (`recover`): their missing
records are chained in, and each of their sessions gets a checkpoint marked `recovered`.

The schema is versioned with `PRAGMA user_version`; `MIGRATIONS[n]` takes a database
from version n to n + 1.
"""

from __future__ import annotations

import json
import os
import secrets
import sqlite3
import threading
import time
from collections import deque
from collections.abc import Collection, Sequence
from contextlib import closing
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from corridor.audit import spool as spools
from corridor.audit.chain import Record, canonical, genesis, link
from corridor.audit.events import FIELD_NAMES, Event, Kind, format_command
from corridor.errors import UserError

if TYPE_CHECKING:  # keys (cryptography) load where a checkpoint is signed: the gateway
    # process writes events and never signs
    from corridor.audit.keys import Signer

DB_FILENAME = "events.db"
STATE_DIR_MODE = 0o700  # the log names every host the agent reached: owner only
DB_FILE_MODE = 0o600  # SQLite gives the -wal and -shm files the database file's mode
# Large enough that a commit's fixed cost is shared by thousands of events, small enough
# that one transaction stays a few milliseconds and `flush()` returns promptly.
MAX_BATCH = 4096
# Several sessions may write the same database; SQLite has one writer at a time, and a
# batch commit takes milliseconds, so waiting this long means something is really stuck.
BUSY_TIMEOUT_MS = 10_000
# How often the writer thread looks for new events when nobody asked it to hurry: the
# delay before `corridor log --follow` sees an event, and the number of wake-ups per
# second of an idle writer.
COMMIT_INTERVAL_S = 0.05
# How often a waiting `flush()` checks that the writer thread is still alive.
FLUSH_POLL_S = 1.0
# A spool holds the same bytes as the rows it fed; past this size the writer starts a new
# one and deletes the old once all of it is committed, so a long session does not keep
# a second copy of its whole log. ~100,000 events.
SPOOL_ROTATE_BYTES = 32 * 1024 * 1024

SCHEMA_VERSION = 2
# MIGRATIONS[n] takes a database from user_version n to n + 1. Never edit a released
# entry: add a new one.
MIGRATIONS: tuple[tuple[str, ...], ...] = (
    (
        """
        CREATE TABLE events (
            seq INTEGER PRIMARY KEY AUTOINCREMENT,  -- never reused, even after a delete
            session TEXT NOT NULL,
            kind TEXT NOT NULL,
            ts REAL NOT NULL,
            decision TEXT,
            reason TEXT,
            rule TEXT,
            host TEXT,
            port INTEGER,
            address TEXT,
            protocol TEXT,
            conn_id INTEGER,
            bytes_up INTEGER,
            bytes_down INTEGER,
            duration_ms REAL,
            qtype TEXT,
            data TEXT  -- JSON object
        )
        """,
        "CREATE INDEX events_by_session ON events (session, seq)",
        # Partial: only session boundaries are indexed, so listing sessions stays fast on
        # a large log while each ordinary insert pays nothing for it.
        """
        CREATE INDEX events_bounds ON events (kind, seq)
        WHERE kind IN ('session_start', 'session_end')
        """,
    ),
    (
        # HTTP request fields, then the chain: the record's index in its session and its
        # hash (audit/chain.py). Added columns, no rewrite: rows of schema 1 keep NULLs.
        "ALTER TABLE events ADD COLUMN method TEXT",
        "ALTER TABLE events ADD COLUMN path TEXT",
        "ALTER TABLE events ADD COLUMN status INTEGER",
        "ALTER TABLE events ADD COLUMN n INTEGER",
        "ALTER TABLE events ADD COLUMN hash BLOB",
        # Per spool file: how many of its bytes are in `events` (committed with them).
        "CREATE TABLE spools (name TEXT PRIMARY KEY, committed INTEGER NOT NULL)",
    ),
)
assert len(MIGRATIONS) == SCHEMA_VERSION

_COLUMNS = ", ".join(FIELD_NAMES)
_ROW_COLUMNS = (*FIELD_NAMES, "n", "hash")
_PLACES = ", ".join("?" * len(_ROW_COLUMNS))
_INSERT = f"INSERT INTO events ({', '.join(_ROW_COLUMNS)}) VALUES ({_PLACES})"
_SELECT = f"SELECT {_COLUMNS} FROM events"
_SELECT_RECORDS = f"SELECT seq, n, hash, {_COLUMNS} FROM events"
_HEAD = "SELECT n, hash, kind FROM events WHERE session = ? ORDER BY seq DESC LIMIT 1"
_SET_COMMITTED = (
    "INSERT INTO spools (name, committed) VALUES (?, ?) "
    "ON CONFLICT (name) DO UPDATE SET committed = excluded.committed"
)
_BOUNDS = f"kind IN ('{Kind.SESSION_START}', '{Kind.SESSION_END}')"  # matches events_bounds
_RUN_HINT = "run `corridor run -- COMMAND` to record a session"


class StoreError(UserError):
    """The event store could not be written or read."""


def default_state_dir() -> Path:
    """`$XDG_STATE_HOME/corridor`, or `~/.local/state/corridor`. Does not create it."""
    base = os.environ.get("XDG_STATE_HOME", "")
    # The XDG spec says a relative value is invalid and must be ignored.
    root = Path(base) if os.path.isabs(base) else Path.home() / ".local" / "state"
    return root / "corridor"


def default_db_path() -> Path:
    """The event database in the default state directory."""
    return default_state_dir() / DB_FILENAME


def new_session_id() -> str:
    """A unique id that sorts by start time (UTC, to the second), e.g. 20261127T031500Z-3f9a2c01.

    The id names the session's hash chain: 32 random bits make two sessions started in the
    same second share one with odds of one in four billion.
    """
    return time.strftime("%Y%m%dT%H%M%SZ", time.gmtime()) + "-" + secrets.token_hex(4)


# -- writing ------------------------------------------------------------------------------

_STOP = object()  # queued by close(): the writer thread ends after the batch before it


@dataclass(frozen=True, slots=True)
class _Seal:
    session: str


@dataclass(frozen=True, slots=True)
class _Rotate:
    old: spools.Spool
    new: spools.Spool


@dataclass
class _Chains:
    """Each session's next index and head hash, as the writer thread knows them."""

    conn: sqlite3.Connection
    heads: dict[str, tuple[int, bytes]] = field(default_factory=dict)
    sealed: dict[str, bool] = field(default_factory=dict)  # session -> last record is a seal

    def head(self, session: str) -> tuple[int, bytes]:
        found = self.heads.get(session)
        if found is None:
            # A session this process has not written yet: continue its chain if it has one.
            row = self.conn.execute(_HEAD, (session,)).fetchone()
            if row is None or row[0] is None:
                found = (0, genesis(session))
            else:
                found = (row[0] + 1, bytes(row[1]))
            self.sealed[session] = row is not None and row[2] == Kind.CHECKPOINT
            self.heads[session] = found
        return found

    def append(self, event: Event, line: bytes) -> tuple[Any, ...]:
        """Chain one record; return its INSERT row."""
        n, previous = self.head(event.session)
        digest = link(previous, n, line)
        self.heads[event.session] = (n + 1, digest)
        self.sealed[event.session] = event.kind is Kind.CHECKPOINT
        return (*_to_row(event), n, digest)

    def checkpoint(self, session: str, signer: Signer, **extra: Any) -> tuple[Any, ...]:
        """Sign the session's current head and chain the checkpoint record."""
        count, head = self.head(session)
        ts = time.time()
        from corridor.audit.keys import Statement, checkpoint_data

        statement = Statement(session, count, head.hex(), ts, bool(extra.get("recovered")))
        event = Event(session, Kind.CHECKPOINT, ts, data=checkpoint_data(statement, signer, extra))
        return self.append(event, canonical(event))

    def snapshot(self) -> tuple[dict[str, tuple[int, bytes]], dict[str, bool]]:
        return dict(self.heads), dict(self.sealed)

    def restore(self, saved: tuple[dict[str, tuple[int, bytes]], dict[str, bool]]) -> None:
        self.heads, self.sealed = dict(saved[0]), dict(saved[1])


class EventWriter:
    """Appends events to the store: durable on `emit()`, committed from a background thread.

    `emit()` is cheap and thread-safe; it raises only when the event cannot be recorded
    (a value that cannot be stored, a spool that cannot be written): then the caller must
    not forward the connection. If the database cannot be written, the events stay in the
    spool file for the next corridor command to import, and `flush()` and `close()` raise
    `StoreError`. Construction raises `StoreError` when the spool cannot be created.
    `signer` is needed to `seal()` sessions; `close()` seals every session this writer
    wrote to that is not sealed yet, except those in `keep_open` (a session that another
    writer goes on with: `corridor run` writes one session from two processes in turn);
    the spools of dead writers it imports are sealed the same way.
    """

    def __init__(
        self,
        db_path: Path | str,
        signer: Signer | None = None,
        *,
        spool_limit: int = SPOOL_ROTATE_BYTES,
        keep_open: Collection[str] = (),
    ) -> None:
        self.db_path = Path(db_path)
        self._signer = signer
        self._keep_open = frozenset(keep_open)
        self._spool_dir = spools.spool_dir(self.db_path)
        self._stem = f"{os.getpid()}-{secrets.token_hex(4)}"
        self._index = 0
        self._spool = self._new_spool()
        self._fd = self._spool.fd
        self._spool_size = 0
        self._spool_limit = spool_limit
        # Events wait here for the thread, which takes them every COMMIT_INTERVAL_S (or at
        # once on flush/seal/close): appending wakes no one, so the gateway's hot path
        # pays no thread switch per event (deque appends and pops are thread-safe).
        self._pending: deque[object] = deque()
        self._put = self._pending.append  # bound once: emit() sits on the gateway's hot path
        self._wake = threading.Event()
        self._emit_lock = threading.Lock()  # spool order == queue order == chain order
        self._lock = threading.Lock()
        self._error: BaseException | None = None
        self._lost = 0
        self._written = 0
        self._closed = False
        self._conn: sqlite3.Connection | None = None
        self._recovered: list[Recovered] = []
        # Written by the thread only: the spool whose offsets it accounts for, and how far.
        self._wspool = self._spool
        self._committed = 0
        self._thread = threading.Thread(target=self._run, name="corridor-audit", daemon=True)
        self._thread.start()

    def _new_spool(self) -> spools.Spool:
        try:
            if not self.db_path.parent.is_dir():
                self.db_path.parent.mkdir(mode=STATE_DIR_MODE, parents=True)
            return spools.create(self._spool_dir, f"{self._stem}-{self._index:06d}")
        except OSError as exc:
            raise StoreError(
                f"cannot create the audit spool in {self._spool_dir}: {exc.strerror or exc}",
                hint=f"check that {self.db_path.parent} is writable (or set XDG_STATE_HOME)",
            ) from exc

    def __enter__(self) -> EventWriter:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    @property
    def written(self) -> int:
        """How many events have been committed to the database so far."""
        return self._written

    @property
    def recovered(self) -> list[Recovered]:
        """Sessions of killed writers this writer imported when it opened the store."""
        return list(self._recovered)

    def emit(self, event: Event) -> None:
        """Make `event` durable (spool) and queue it for the database.

        Raises TypeError (not an Event), `EncodingError` (a ValueError: a value that cannot
        be stored exactly), `StoreError` (the spool cannot be written) or RuntimeError
        (after close()).
        """
        if not isinstance(event, Event):
            raise TypeError(f"expected an Event, got {type(event).__name__}")
        line = canonical(event)
        with self._emit_lock:
            # Checked under the lock: close() queues its stop under it too, so an event is
            # either queued before the stop or refused, never spooled and then forgotten.
            if self._closed:
                raise RuntimeError("EventWriter.emit() after close()")
            try:
                written = os.write(self._fd, line)
            except OSError as exc:
                raise StoreError(f"cannot write the audit spool {self._spool.path}: {exc}") from exc
            if written != len(line):
                # A short write (full disk) leaves half a line: nothing may follow it.
                self._fd = -1
                raise StoreError(f"the audit spool {self._spool.path} is full")
            self._put((event, line))
            self._spool_size += written
            if self._spool_size >= self._spool_limit:
                self._rotate()

    def _rotate(self) -> None:
        """Start a new spool (under the emit lock); the thread deletes the old one."""
        self._index += 1
        try:
            new = self._new_spool()
        except StoreError:
            self._index -= 1
            self._spool_size = 0  # try again after another spool's worth
            return
        self._put(_Rotate(self._spool, new))
        self._spool, self._fd, self._spool_size = new, new.fd, 0

    def seal(self, session: str) -> None:
        """Queue the session's signed checkpoint, after every event emitted before this call."""
        if self._signer is None:
            raise RuntimeError("EventWriter.seal() needs a signer")
        with self._emit_lock:
            if self._closed:
                raise RuntimeError("EventWriter.seal() after close()")
            self._put(_Seal(session))
        self._wake.set()

    def flush(self) -> None:
        """Wait until every event emitted before this call is committed (or failed)."""
        if self._thread.is_alive():
            done = threading.Event()
            self._put(done)
            self._wake.set()
            while not done.wait(FLUSH_POLL_S):
                if not self._thread.is_alive():
                    break
        self._raise_if_failed()

    def close(self) -> None:
        """Commit everything queued, seal, stop the thread; raise `StoreError` on failure."""
        with self._emit_lock:
            stopping = not self._closed
            if stopping:
                self._closed = True
                self._put(_STOP)
                self._wake.set()
        if stopping:
            self._thread.join()
            # Only now: while emit() could still run, its descriptor had to stay open (a
            # closed number could be reused by another file and written to).
            self._spool.close()
        self._raise_if_failed()

    # The rest runs on the writer thread.

    def _run(self) -> None:
        chains = None
        try:
            self._conn = _open_for_writing(self.db_path)
            self._recovered = recover_with(
                self._conn, self._spool_dir, self._signer, self._keep_open
            )
            chains = _Chains(self._conn)
        except Exception as exc:
            self._fail(exc, 0)
        try:
            while self._drain_once(chains):
                pass
            self._finish(chains)
        except Exception as exc:  # a bug here must reach close(), not die with the thread
            self._fail(exc, 0)
        finally:
            if self._conn is not None:
                self._conn.close()

    def _drain_once(self, chains: _Chains | None) -> bool:
        """Write one batch; False once close() asked to stop."""
        pending = self._pending
        if not pending:
            # Cleared after the wait: anything queued before a set() is in `pending` by
            # now and is taken below; a set() after the clear makes the next wait return.
            self._wake.wait(COMMIT_INTERVAL_S)
            self._wake.clear()
        work: list[object] = []
        flushes: list[threading.Event] = []
        running = True
        events = 0
        while pending and events < MAX_BATCH:
            item = pending.popleft()
            if type(item) is tuple:
                work.append(item)
                events += 1
            elif item is _STOP:
                running = False
                break
            elif isinstance(item, threading.Event):
                flushes.append(item)
            else:
                work.append(item)
        if work:
            self._commit(chains, work, events)
        for done in flushes:
            done.set()
        return running

    def _commit(self, chains: _Chains | None, work: list[object], events: int) -> None:
        if chains is None or self._error is not None:
            # The database is unusable: the events wait in the spool for the next command.
            self._fail(None, events)
            return
        saved = chains.snapshot()
        rows: list[tuple[Any, ...]] = []
        offsets: list[tuple[str, int]] = []
        retired: list[spools.Spool] = []
        spool, committed = self._wspool, self._committed
        for item in work:
            if type(item) is tuple:
                event, line = item
                rows.append(chains.append(event, line))
                committed += len(line)
            elif isinstance(item, _Seal):
                assert self._signer is not None  # checked by seal()
                rows.append(chains.checkpoint(item.session, self._signer))
            elif isinstance(item, _Rotate):
                offsets.append((spool.name, committed))  # all of the old spool
                retired.append(spool)
                spool, committed = item.new, 0
        offsets.append((spool.name, committed))
        conn = chains.conn
        try:
            conn.execute("BEGIN IMMEDIATE")
            conn.executemany(_INSERT, rows)
            conn.executemany(_SET_COMMITTED, offsets)
            conn.execute("COMMIT")
        except Exception as exc:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            chains.restore(saved)
            self._fail(exc, events)
            return
        self._written += events
        self._wspool, self._committed = spool, committed
        for old in retired:
            _retire(conn, old)

    def _finish(self, chains: _Chains | None) -> None:
        """After the last batch: seal what is unsealed, then drop the spool if all is in."""
        if chains is None or self._error is not None:
            return
        if self._signer is not None:
            unsealed = [
                s for s, sealed in chains.sealed.items() if not sealed and s not in self._keep_open
            ]
            if unsealed:
                self._commit(chains, [_Seal(s) for s in unsealed], 0)
        if self._error is None:
            _retire(chains.conn, self._wspool)

    def _fail(self, exc: BaseException | None, lost: int) -> None:
        with self._lock:
            if self._error is None and exc is not None:
                self._error = exc
            self._lost += lost

    def _raise_if_failed(self) -> None:
        with self._lock:
            error, lost = self._error, self._lost
        if error is None and lost == 0:
            return
        kept = f"; they are kept in {self._spool_dir} for the next corridor command to import"
        if isinstance(error, UserError):  # our own check (a newer schema, say) names the path
            what = f"could not store {_events(lost)}" if lost else "could not open the event store"
            raise StoreError(
                f"{what}: {error.message}{kept if lost else ''}", hint=error.hint
            ) from error
        what = f"could not store {_events(lost)} in" if lost else "could not open"
        raise StoreError(
            f"{what} {self.db_path}: {error}{kept if lost else ''}",
            hint=f"check that {self.db_path.parent} is writable (or set XDG_STATE_HOME)",
        ) from error


def _retire(conn: sqlite3.Connection, old: spools.Spool) -> None:
    """Delete a fully committed spool, then its row (a crash in between leaves a stale row,
    never a file that would be imported twice)."""
    old.remove()
    conn.execute("DELETE FROM spools WHERE name = ?", (old.name,))


def _events(count: int) -> str:
    return f"{count} audit event{'' if count == 1 else 's'}"


def _to_row(event: Event) -> tuple[Any, ...]:
    """The event's column values, in FIELD_NAMES order (data as JSON text)."""
    data = event.data
    encoded = None if data is None else _encode_data(data)
    return (
        event.session, event.kind.value, event.ts, event.decision, event.reason, event.rule,
        event.host, event.port, event.address, event.protocol, event.conn_id,
        event.bytes_up, event.bytes_down, event.duration_ms, event.qtype, event.method,
        event.path, event.status, encoded,
    )  # fmt: skip


def _encode_data(data: Any) -> str:
    # Sorted keys, ASCII, no NaN: one text per value, read back to exactly the same value.
    return json.dumps(
        dict(data), sort_keys=True, separators=(",", ":"), ensure_ascii=True, allow_nan=False
    )


WRITER_CACHE_KIB = 256  # SQLite page cache of a writing connection (negative size: KiB)


def _open_for_writing(path: Path) -> sqlite3.Connection:
    """Create (if needed) and migrate the database; return a connection in autocommit mode."""
    if not path.parent.is_dir():
        path.parent.mkdir(mode=STATE_DIR_MODE, parents=True)
    # Create the file ourselves so it is born private; SQLite would use 0644.
    os.close(os.open(path, os.O_WRONLY | os.O_CREAT, DB_FILE_MODE))
    # isolation_level=None: we issue BEGIN/COMMIT ourselves, no hidden transactions.
    # check_same_thread=False: recovery may open it on one thread and write on another.
    conn = sqlite3.connect(
        path, isolation_level=None, timeout=BUSY_TIMEOUT_MS / 1000, check_same_thread=False
    )
    try:
        mode = conn.execute("PRAGMA journal_mode=WAL").fetchone()[0]
        if mode != "wal":
            raise StoreError(f"{path}: SQLite refused WAL mode (got {mode!r})")
        conn.execute("PRAGMA synchronous=NORMAL")
        # A writer appends: it touches the rightmost pages of each index and the page
        # it checks a session's head in. SQLite's default cache (2 MB) only holds pages
        # read once, in the gateway process that serves for hours.
        conn.execute(f"PRAGMA cache_size = -{WRITER_CACHE_KIB}")
        _migrate(conn, path)
    except BaseException:
        conn.close()
        raise
    return conn


def _migrate(conn: sqlite3.Connection, path: Path) -> None:
    # IMMEDIATE: two sessions starting at once must not both run the same migration.
    conn.execute("BEGIN IMMEDIATE")
    try:
        version = conn.execute("PRAGMA user_version").fetchone()[0]
        _check_not_newer(version, path)
        for statements in MIGRATIONS[version:]:
            for sql in statements:
                conn.execute(sql)
        conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
        conn.execute("COMMIT")
    except BaseException:
        conn.execute("ROLLBACK")
        raise


def _check_not_newer(version: int, path: Path) -> None:
    if version > SCHEMA_VERSION:
        raise StoreError(
            f"{path} was written by a newer corridor (schema {version}, "
            f"this one knows {SCHEMA_VERSION})",
            hint="upgrade corridor",
        )


# -- recovery -----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Recovered:
    """A session of a killed writer, completed from its spool."""

    session: str
    imported: int  # records that were only in the spool
    sealed: bool  # a recovered checkpoint was signed
    damaged_bytes: int = 0  # an unreadable tail of the spool (a write cut short)


def recover(
    db_path: Path, signer: Signer | None, keep_open: Collection[str] = ()
) -> list[Recovered]:
    """Import the spools of writers that died (any corridor command calls this first).

    Their sessions are sealed (a checkpoint marked `recovered`) except those in
    `keep_open`, which their owner is still writing. Returns what was recovered; an
    empty list (and nothing opened for writing) when no dead spool exists.
    """
    directory = spools.spool_dir(Path(db_path))
    if not any(p.suffix in (spools.SPOOL_SUFFIX, spools.TMP_SUFFIX) for p in _listdir(directory)):
        return []
    conn = _open_for_writing(Path(db_path))
    try:
        return recover_with(conn, directory, signer, keep_open)
    finally:
        conn.close()


def _listdir(directory: Path) -> list[Path]:
    return list(directory.iterdir()) if directory.is_dir() else []


def recover_with(
    conn: sqlite3.Connection,
    directory: Path,
    signer: Signer | None,
    keep_open: Collection[str] = (),
) -> list[Recovered]:
    """`recover` on an open connection (the writer thread's)."""
    dead = spools.dead_spools(directory)
    if not dead:
        return []
    try:
        return _import(conn, dead, signer, frozenset(keep_open))
    finally:
        for spool in dead:
            spool.close()


def _import(
    conn: sqlite3.Connection,
    dead: list[spools.Spool],
    signer: Signer | None,
    keep_open: frozenset[str],
) -> list[Recovered]:
    committed = dict(conn.execute("SELECT name, committed FROM spools").fetchall())
    chains = _Chains(conn)
    imported: dict[str, int] = {}
    damaged: dict[str, int] = {}
    sizes: list[tuple[str, int]] = []
    rows: list[tuple[Any, ...]] = []
    for spool in dead:
        data = spool.read()
        sizes.append((spool.name, len(data)))
        for session in spools.sessions_in(data):
            imported.setdefault(session, 0)
        lines, tail = spools.split_lines(data, committed.get(spool.name, 0))
        bad = [data[len(data) - tail :]] if tail else []
        for line in lines:
            event = _parse_line(line)
            if event is None:  # damaged: keep what is readable, say what was not
                bad.append(line)
                continue
            rows.append(chains.append(event, canonical(event)))
            imported[event.session] = imported.get(event.session, 0) + 1
        for chunk in bad:
            # A torn line may have lost its session id: it is then the spool's (one writer
            # runs one session; a writer of several cannot say which).
            for session in spools.sessions_in(chunk) or spools.sessions_in(data):
                damaged[session] = damaged.get(session, 0) + len(chunk)
    sealed = []
    if signer is not None:
        for session, count in imported.items():
            if session in keep_open:
                continue
            chains.head(session)
            if not chains.sealed.get(session):
                rows.append(chains.checkpoint(session, signer, recovered=True, imported=count))
                sealed.append(session)
    conn.execute("BEGIN IMMEDIATE")
    try:
        conn.executemany(_INSERT, rows)
        conn.executemany(_SET_COMMITTED, sizes)
        conn.execute("COMMIT")
    except BaseException:
        conn.execute("ROLLBACK")
        raise
    for spool in dead:
        _retire(conn, spool)
    return [
        Recovered(session, count, session in sealed, damaged.get(session, 0))
        for session, count in imported.items()
        if count or session in sealed
    ]


def _parse_line(line: bytes) -> Event | None:
    try:
        raw = json.loads(line)
        return Event.from_dict(raw) if isinstance(raw, dict) else None
    except (ValueError, TypeError):
        return None


# -- reading ------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class SessionSummary:
    """One recorded session, from its start and end records."""

    id: str
    start_ts: float | None
    command: str | None  # shell-quoted
    end_ts: float | None = None  # None: still running, or the gateway was killed
    exit_code: int | None = None
    signal: str | int | None = None


def read_events(db_path: Path | str, session: str | None = None) -> list[Event]:
    """All events (or one session's) in the order they were written."""
    with _open_for_reading(Path(db_path)) as conn:
        if session is None:
            rows = conn.execute(f"{_SELECT} ORDER BY seq").fetchall()
        else:
            rows = conn.execute(f"{_SELECT} WHERE session = ? ORDER BY seq", (session,))
        return [_from_row(row) for row in rows]


def read_records(db_path: Path | str, session: str, after_seq: int = 0) -> list[Record]:
    """One session's records with their place in the table and the chain, in write order."""
    with _open_for_reading(Path(db_path)) as conn:
        return records_after(conn, session, after_seq)


def records_after(conn: sqlite3.Connection, session: str, after_seq: int) -> list[Record]:
    """The session's records with seq > after_seq, on an open connection (for following)."""
    rows = conn.execute(
        f"{_SELECT_RECORDS} WHERE session = ? AND seq > ? ORDER BY seq", (session, after_seq)
    )
    return [_record(row) for row in rows]


def session_ids(db_path: Path | str) -> list[str]:
    """Every session that has records, in the order of its first record."""
    with _open_for_reading(Path(db_path)) as conn:
        rows = conn.execute("SELECT session FROM events GROUP BY session ORDER BY MIN(seq)")
        return [row[0] for row in rows]


def live_sessions(db_path: Path | str) -> set[str]:
    """Sessions whose writer is still running (its spool is locked)."""
    found: set[str] = set()
    for path in spools.live_spools(spools.spool_dir(Path(db_path))):
        try:
            found.update(spools.sessions_in(path.read_bytes()))
        except FileNotFoundError:  # its writer finished while we looked
            continue
    return found


def sessions(db_path: Path | str) -> list[SessionSummary]:
    """Every recorded session, oldest first (newest last)."""
    starts: dict[str, Event] = {}
    ends: dict[str, Event] = {}
    order: dict[str, None] = {}  # sessions by their first boundary record, normally the start
    with _open_for_reading(Path(db_path)) as conn:
        for row in conn.execute(f"{_SELECT} WHERE {_BOUNDS} ORDER BY seq"):
            event = _from_row(row)
            seen = starts if event.kind is Kind.SESSION_START else ends
            seen.setdefault(event.session, event)
            order.setdefault(event.session, None)
    return [_summary(s, starts.get(s), ends.get(s)) for s in order]


def last_session(db_path: Path | str) -> str | None:
    """The most recently started session (or, lacking any start record, the last written)."""
    with _open_for_reading(Path(db_path)) as conn:
        row = conn.execute(
            f"SELECT session FROM events WHERE {_BOUNDS} AND kind = ? ORDER BY seq DESC LIMIT 1",
            (str(Kind.SESSION_START),),
        ).fetchone()
        if row is None:
            row = conn.execute("SELECT session FROM events ORDER BY seq DESC LIMIT 1").fetchone()
    return None if row is None else row[0]


def _summary(session: str, start: Event | None, end: Event | None) -> SessionSummary:
    start_data = (start.data if start else None) or {}
    end_data = (end.data if end else None) or {}
    return SessionSummary(
        id=session,
        start_ts=start.ts if start else None,
        command=format_command(start_data.get("command")),
        end_ts=end.ts if end else None,
        exit_code=end_data.get("exit_code"),
        signal=end_data.get("signal"),
    )


def _from_row(row: Sequence[Any]) -> Event:
    data = row[-1]
    return Event(*row[:-1], data=None if data is None else json.loads(data))


def _record(row: Sequence[Any]) -> Record:
    seq, n, digest = row[0], row[1], row[2]
    return Record(seq, n, None if digest is None else bytes(digest), _from_row(row[3:]))


def open_for_reading(path: Path) -> closing[sqlite3.Connection]:
    """A read-only connection (for callers that poll, like `corridor log --follow`)."""
    return _open_for_reading(path)


def _open_for_reading(path: Path) -> closing[sqlite3.Connection]:
    """Open read-only; a missing or empty store is the user's first run, said plainly."""
    if not path.exists():
        raise UserError(f"no sessions recorded yet in {path.parent}", hint=_RUN_HINT)
    # mode=ro: reading never creates or changes the database; WAL lets it run beside
    # a writer.
    uri = path.absolute().as_uri() + "?mode=ro"
    try:
        conn = sqlite3.connect(uri, uri=True, timeout=BUSY_TIMEOUT_MS / 1000)
    except sqlite3.Error as exc:
        raise StoreError(f"cannot open the event store {path}: {exc}") from exc
    try:
        version = conn.execute("PRAGMA user_version").fetchone()[0]
    except sqlite3.DatabaseError as exc:
        conn.close()
        raise StoreError(f"{path} is not a corridor event store: {exc}") from exc
    if version == 0:  # created, but no session got as far as its first write
        conn.close()
        raise UserError(f"no sessions recorded yet in {path.parent}", hint=_RUN_HINT)
    try:
        _check_not_newer(version, path)
    except StoreError:
        conn.close()
        raise
    if version < SCHEMA_VERSION:
        # Reading needs the current columns: migrate once (columns are only added).
        conn.close()
        _open_for_writing(path).close()
        return _open_for_reading(path)
    return closing(conn)  # closed, not merely committed, when the block ends
