"""Audit throughput: how many events per second corridor's EventWriter stores.

    python -m bench.audit_bench COUNT DIR     # prints one JSON object

The events are the gateway's own kind (a `connection` decision with host, port, address,
reason and rule). Two costs are separated:
- on the hot path: building the Event and `emit()` (what a connection waits for);
- sustained: from the first emit until `flush()` returns, i.e. until SQLite has committed
  them all (the background writer's rate, the figure the issue asks >= 50,000/s for).
"""

from __future__ import annotations

import json
import sys
import tempfile
import time
from pathlib import Path

from corridor.audit import Event, EventWriter, Kind, new_session_id


def _event(session: str, i: int) -> Event:
    return Event(
        session=session,
        kind=Kind.CONNECTION,
        ts=time.time(),
        conn_id=i,
        protocol="tls",
        host="bench.test",
        port=443,
        address="192.0.2.80",
        decision="allow",
        reason="allowed by --allow bench.test",
        rule="--allow bench.test",
    )


def measure(count: int, directory: Path) -> dict[str, float | int | str | None]:
    session = new_session_id()
    writer = EventWriter(directory / "events.db")
    writer.flush()  # the database exists and is migrated before the clock starts
    t0 = time.perf_counter()
    for i in range(count):
        writer.emit(_event(session, i))
    t_emit = time.perf_counter() - t0
    error = None
    try:
        writer.flush()
    except Exception as e:
        error = f"{type(e).__name__}: {e}"
    t_total = time.perf_counter() - t0
    written = writer.written
    try:
        writer.close()
    except Exception as e:
        error = error or f"{type(e).__name__}: {e}"
    return {
        "events": count,
        "written": written,
        "hot_path_us_per_event": t_emit / count * 1e6,
        "events_per_s": written / t_total if written else 0.0,
        "seconds": t_total,
        "error": error,
    }


def main(argv: list[str]) -> int:
    count = int(argv[1])
    if len(argv) > 2:
        directory = Path(argv[2])
        directory.mkdir(parents=True, exist_ok=True)
        print(json.dumps(measure(count, directory)))
    else:
        with tempfile.TemporaryDirectory() as d:
            print(json.dumps(measure(count, Path(d))))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
