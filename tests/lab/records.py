"""The world's logs: one JSON object per line, appended by the world, read by tests.

Each kind of traffic has its own file. The world appends whole lines with one `write`
on an O_APPEND descriptor, so a reader never sees two records interleaved; a reader that
catches a line half written leaves it for the next read.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

DNS_LOG = "dns.jsonl"
HTTP_LOG = "http.jsonl"
CATCHALL_LOG = "catchall.jsonl"
LOG_FILES = (DNS_LOG, HTTP_LOG, CATCHALL_LOG)


class JsonlWriter:
    """Appends records to one file; every record gets the time it was written."""

    def __init__(self, path: Path) -> None:
        self._fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)

    def write(self, record: dict[str, Any]) -> None:
        line = json.dumps({"t": round(time.time(), 6), **record}, separators=(",", ":"))
        os.write(self._fd, line.encode() + b"\n")

    def close(self) -> None:
        os.close(self._fd)


@dataclass(frozen=True)
class Mark:
    """A point in the logs: the size of each file when it was taken."""

    offsets: tuple[tuple[str, int], ...]

    def offset(self, log: str) -> int:
        return dict(self.offsets).get(log, 0)


def take_mark(log_dir: Path) -> Mark:
    """The current end of every log file."""
    return Mark(tuple((name, _size(log_dir / name)) for name in LOG_FILES))


def read_records(log_dir: Path, log: str, since: Mark | None = None) -> list[dict[str, Any]]:
    """Complete records of one log written after `since` (all of them without a mark)."""
    path = log_dir / log
    start = since.offset(log) if since else 0
    try:
        with path.open("rb") as f:
            f.seek(start)
            data = f.read()
    except FileNotFoundError:
        return []
    complete = data[: data.rfind(b"\n") + 1]
    return [json.loads(line) for line in complete.splitlines() if line.strip()]


def _size(path: Path) -> int:
    try:
        return path.stat().st_size
    except FileNotFoundError:
        return 0
