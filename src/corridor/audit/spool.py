"""Write-ahead spool files: what makes an emitted event survive `kill -9` of corridor.

`EventWriter.emit()` appends each event's canonical line to its spool file with one
`write()` on an `O_APPEND` descriptor before it returns. Once `write()` returned, the
bytes are in the kernel's page cache and belong to the file, whatever happens to the
process next; the background thread later moves them into SQLite. (Like SQLite's WAL
with `synchronous=NORMAL`, a power loss can still drop the last moments: neither is
fsynced per event.)

Each spool is locked with `flock()` for as long as its writer lives. The kernel drops
the lock when the process dies, however it dies, so "I can take the lock" means "its
writer is gone": any later corridor command imports what the database lacks.

A spool is created under a temporary name, locked, then renamed into place, so a
recovering process never sees an unlocked spool whose writer is alive.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import re
from dataclasses import dataclass, field
from pathlib import Path

SPOOL_DIR = "spool"
SPOOL_SUFFIX = ".spool"
TMP_SUFFIX = ".tmp"
DIR_MODE = 0o700
FILE_MODE = 0o600  # a spool holds the same records as the database: owner only
# Reading a spool back is rare (recovery) and spools are rotated at a few tens of MiB:
# reading one whole is fine.
_SESSION = re.compile(rb'"session":"((?:[^"\\]|\\.)*)"')


@dataclass
class Spool:
    """One open, locked spool file. `fd` is append-only for the writer, read-only otherwise."""

    path: Path
    fd: int
    closed: bool = field(default=False)

    @property
    def name(self) -> str:
        """The file name: the key of its row in the database's `spools` table."""
        return self.path.name

    def read(self) -> bytes:
        """The whole file."""
        with open(self.path, "rb") as f:  # a second descriptor: `fd` may be write-only
            return f.read()

    def remove(self) -> None:
        """Delete the file, then release the lock (in that order: no one imports it twice)."""
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.path)
        self.close()

    def close(self) -> None:
        """Close the descriptor, which releases the lock."""
        if not self.closed:
            self.closed = True
            os.close(self.fd)


def spool_dir(db_path: Path) -> Path:
    """The spool directory beside a database."""
    return db_path.parent / SPOOL_DIR


def create(directory: Path, stem: str) -> Spool:
    """Create, lock and publish `directory/stem.spool`. Raises OSError."""
    directory.mkdir(mode=DIR_MODE, parents=True, exist_ok=True)
    final = directory / (stem + SPOOL_SUFFIX)
    tmp = directory / (stem + TMP_SUFFIX)
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_APPEND | os.O_CLOEXEC
    fd = os.open(tmp, flags, FILE_MODE)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)  # new file: nobody else can hold it
        os.rename(tmp, final)
    except BaseException:
        os.close(fd)
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    return Spool(final, fd)


def dead_spools(directory: Path) -> list[Spool]:
    """The spools whose writers are gone, locked by us, oldest name first.

    Temporary files of writers that died while creating their spool are removed.
    The caller must `remove()` or `close()` each one.
    """
    if not directory.is_dir():
        return []
    found: list[Spool] = []
    for path in sorted(directory.iterdir()):
        if path.suffix not in (SPOOL_SUFFIX, TMP_SUFFIX):
            continue
        spool = _lock_if_dead(path)
        if spool is None:
            continue
        if path.suffix == TMP_SUFFIX:
            spool.remove()  # never published: it holds nothing that was emitted
        else:
            found.append(spool)
    return found


def live_spools(directory: Path) -> list[Path]:
    """The spools whose writers are still running."""
    if not directory.is_dir():
        return []
    live = []
    for path in sorted(directory.glob("*" + SPOOL_SUFFIX)):
        spool = _lock_if_dead(path)
        if spool is None:
            if path.exists():
                live.append(path)
        else:
            spool.close()
    return live


def sessions_in(data: bytes) -> list[str]:
    """The session ids a spool's lines name, in order of first appearance."""
    seen: dict[str, None] = {}
    for match in _SESSION.finditer(data):
        seen.setdefault(match.group(1).decode("ascii", "replace"), None)
    return list(seen)


def split_lines(data: bytes, start: int) -> tuple[list[bytes], int]:
    """Complete lines from byte `start` on (each with its LF), and the length of a partial
    last line (a write cut short by a full disk; a killed process cannot cut a write)."""
    body = data[start:]
    end = body.rfind(b"\n") + 1
    lines = [line + b"\n" for line in body[:end].split(b"\n")[:-1]]
    return lines, len(body) - end


def _lock_if_dead(path: Path) -> Spool | None:
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except FileNotFoundError:
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        return None
    # Another recovering process may have imported and unlinked it before we locked it.
    if os.fstat(fd).st_nlink == 0:
        os.close(fd)
        return None
    return Spool(path, fd)
