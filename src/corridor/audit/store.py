"""The append-only event store: SQLite in WAL mode, written off the hot path.

The gateway calls `EventWriter.emit()` for every DNS query and connection; that only
puts the event on a queue. One background thread takes whatever is queued (up to
`MAX_BATCH` events), inserts it in one transaction and repeats (group commit), so the
cost of a commit is shared by every event that arrived while the previous one ran.

WAL with `synchronous=NORMAL` keeps every committed transaction through a crash or kill
of the process (only a power loss can drop the last few), and lets `corridor log` read
while a session is still writing.

The schema is versioned with `PRAGMA user_version`; `MIGRATIONS[n]` takes a database
from version n to n + 1. The hash chain (each record carrying the SHA-256 of the previous
one) and signed checkpoints are planned as the next migration: new columns and a
checkpoints table, added without rewriting existing rows.
"""

from __future__ import annotations

import json
import os
import queue
import secrets
import sqlite3
import threading
import time
from collections.abc import Sequence
from contextlib import closing
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from corridor.audit.events import FIELD_NAMES, Event, Kind, format_command
from corridor.errors import UserError

DB_FILENAME = "events.db"
STATE_DIR_MODE = 0o700  # the log names every host the agent reached: owner only
DB_FILE_MODE = 0o600  # SQLite gives the -wal and -shm files the database file's mode
# Large enough that a commit's fixed cost is shared by thousands of events, small enough
# that one transaction stays a few milliseconds and `flush()` returns promptly.
MAX_BATCH = 4096
# Several sessions may write the same database; SQLite has one writer at a time, and a
# batch commit takes milliseconds, so waiting this long means something is really stuck.
BUSY_TIMEOUT_MS = 10_000
# How often a waiting `flush()` checks that the writer thread is still alive.
FLUSH_POLL_S = 1.0

SCHEMA_VERSION = 1
# MIGRATIONS[n] takes a database from user_version n to n + 1. Never edit a released
# entry: add a new one (the hash chain and checkpoints will be version 2).
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
)
assert len(MIGRATIONS) == SCHEMA_VERSION

_COLUMNS = ", ".join(FIELD_NAMES)
_INSERT = f"INSERT INTO events ({_COLUMNS}) VALUES ({', '.join('?' * len(FIELD_NAMES))})"
_SELECT = f"SELECT {_COLUMNS} FROM events"
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
    """A unique id that sorts by start time (UTC, to the second), e.g. 20261127T031500Z-3f9a2c."""
    return time.strftime("%Y%m%dT%H%M%SZ", time.gmtime()) + "-" + secrets.token_hex(3)


# -- writing ------------------------------------------------------------------------------

_STOP = object()  # queued by close(): the writer thread ends after the batch before it


class EventWriter:
    """Appends events to the store from a background thread.

    `emit()` is cheap, thread-safe and never blocks or touches the disk. If the database
    cannot be opened or written, the writer keeps draining the queue, counts what it could
    not store, and `flush()` and `close()` raise `StoreError`: events never vanish
    silently. Call `flush()` right after construction to fail early on an unusable path.
    """

    def __init__(self, db_path: Path | str) -> None:
        self.db_path = Path(db_path)
        self._queue: queue.SimpleQueue[object] = queue.SimpleQueue()
        self._put = self._queue.put  # bound once: emit() sits on the gateway's hot path
        self._lock = threading.Lock()
        self._error: BaseException | None = None
        self._lost = 0
        self._written = 0
        self._closed = False
        self._conn: sqlite3.Connection | None = None
        self._thread = threading.Thread(target=self._run, name="corridor-audit", daemon=True)
        self._thread.start()

    def __enter__(self) -> EventWriter:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    @property
    def written(self) -> int:
        """How many events have been committed so far."""
        return self._written

    def emit(self, event: Event) -> None:
        """Queue `event` for writing. Raises only on misuse (not an Event, writer closed)."""
        if self._closed:
            raise RuntimeError("EventWriter.emit() after close()")
        if not isinstance(event, Event):
            raise TypeError(f"expected an Event, got {type(event).__name__}")
        self._put(event)

    def flush(self) -> None:
        """Wait until every event emitted before this call is committed (or failed)."""
        if self._thread.is_alive():
            done = threading.Event()
            self._put(done)
            while not done.wait(FLUSH_POLL_S):
                if not self._thread.is_alive():
                    break
        self._raise_if_failed()

    def close(self) -> None:
        """Write everything queued, stop the thread; raise `StoreError` if anything was lost."""
        if not self._closed:
            self._closed = True
            self._put(_STOP)
            self._thread.join()
        self._raise_if_failed()

    # The rest runs on the writer thread.

    def _run(self) -> None:
        try:
            self._conn = _open_for_writing(self.db_path)
        except Exception as exc:
            self._fail(exc, 0)
        try:
            while self._drain_once():
                pass
        except Exception as exc:  # a bug here must reach close(), not die with the thread
            self._fail(exc, 0)
        finally:
            if self._conn is not None:
                self._conn.close()

    def _drain_once(self) -> bool:
        """Write one batch; False once close() asked to stop."""
        item = self._queue.get()
        batch: list[Event] = []
        flushes: list[threading.Event] = []
        running = True
        while True:
            if isinstance(item, Event):
                batch.append(item)
            elif item is _STOP:
                running = False
                break
            elif isinstance(item, threading.Event):
                flushes.append(item)
            if len(batch) >= MAX_BATCH:
                break
            try:
                item = self._queue.get_nowait()
            except queue.Empty:
                break
        self._write(batch)
        for done in flushes:
            done.set()
        return running

    def _write(self, batch: list[Event]) -> None:
        rows: list[tuple[Any, ...]] = []
        for event in batch:
            try:
                rows.append(_to_row(event))
            except (TypeError, ValueError) as exc:  # data that JSON cannot encode
                self._fail(exc, 1)
        if not rows:
            return
        if self._conn is None:
            self._fail(None, len(rows))
            return
        self._insert(self._conn, rows)

    def _insert(self, conn: sqlite3.Connection, rows: Sequence[tuple[Any, ...]]) -> None:
        try:
            conn.execute("BEGIN IMMEDIATE")
            conn.executemany(_INSERT, rows)
            conn.execute("COMMIT")
        except Exception as exc:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            if len(rows) == 1 or isinstance(exc, sqlite3.OperationalError):
                # The database itself refused (locked, read-only, full): the batch is lost.
                self._fail(exc, len(rows))
                return
            # One bad value (an integer too large, say) must not cost the whole batch.
            for row in rows:
                self._insert(conn, [row])
            return
        self._written += len(rows)

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
        if isinstance(error, UserError):  # our own check (a newer schema, say) names the path
            what = f"could not record {_events(lost)}" if lost else "could not open the event store"
            raise StoreError(f"{what}: {error.message}", hint=error.hint) from error
        what = f"could not record {_events(lost)} in" if lost else "could not open"
        raise StoreError(
            f"{what} {self.db_path}: {error}",
            hint=f"check that {self.db_path.parent} is writable (or set XDG_STATE_HOME)",
        ) from error


def _events(count: int) -> str:
    return f"{count} audit event{'' if count == 1 else 's'}"


def _to_row(event: Event) -> tuple[Any, ...]:
    """The event as an INSERT row, in FIELD_NAMES order (data as JSON text)."""
    data = event.data
    encoded = None if data is None else _encode_data(data)
    return (
        event.session, str(event.kind), event.ts, event.decision, event.reason, event.rule,
        event.host, event.port, event.address, event.protocol, event.conn_id,
        event.bytes_up, event.bytes_down, event.duration_ms, event.qtype, encoded,
    )  # fmt: skip


def _encode_data(data: Any) -> str:
    # Sorted keys and no NaN: one canonical text per value, ready for hashing later.
    return json.dumps(
        dict(data), sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False
    )


def _open_for_writing(path: Path) -> sqlite3.Connection:
    """Create (if needed) and migrate the database; return a connection in autocommit mode."""
    if not path.parent.is_dir():
        path.parent.mkdir(mode=STATE_DIR_MODE, parents=True)
    # Create the file ourselves so it is born private; SQLite would use 0644.
    os.close(os.open(path, os.O_WRONLY | os.O_CREAT, DB_FILE_MODE))
    # isolation_level=None: we issue BEGIN/COMMIT ourselves, no hidden transactions.
    conn = sqlite3.connect(path, isolation_level=None, timeout=BUSY_TIMEOUT_MS / 1000)
    try:
        mode = conn.execute("PRAGMA journal_mode=WAL").fetchone()[0]
        if mode != "wal":
            raise StoreError(f"{path}: SQLite refused WAL mode (got {mode!r})")
        conn.execute("PRAGMA synchronous=NORMAL")
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
    return closing(conn)  # closed, not merely committed, when the block ends
