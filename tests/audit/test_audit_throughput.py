"""Recording must never be the gateway's bottleneck: events per second and cost per emit.

The goal is 50,000 events/s sustained on the project's 2-core machine (measured: 54,000 to
72,000/s while other work shared the cores). The floor asserted here is half the goal, so
a loaded CI machine does not fail it, while a regression that makes recording several
times slower does.
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from corridor.audit.events import Event, Kind
from corridor.audit.keys import load_or_create_signer
from corridor.audit.store import DB_FILENAME, EventWriter, read_records
from corridor.audit.verify import Status, verify_session

pytestmark = pytest.mark.slow

EVENTS = 100_000
FLOOR_PER_S = 25_000  # half the goal, see above
EMIT_P50_CEILING_US = 50.0  # measured ~5 us; ten times that is a regression, not noise


def test_sustained_events_per_second(tmp_path: Path) -> None:
    state = tmp_path / "state"
    signer = load_or_create_signer(state)
    events = [
        Event("bench", Kind.CONNECTION, 1795749300.0 + i / 1000, decision="allow",
              reason="allowed by rule", rule="--allow allowed.test", host="allowed.test",
              port=443, address="203.0.113.10", protocol="tls", conn_id=i)
        for i in range(EVENTS)
    ]  # fmt: skip
    writer = EventWriter(state / DB_FILENAME, signer)
    writer.flush()
    samples: list[int] = []
    clock = time.perf_counter_ns
    started = time.perf_counter()
    for i, event in enumerate(events):
        if i % 100 == 0:
            before = clock()
            writer.emit(event)
            samples.append(clock() - before)
        else:
            writer.emit(event)
    writer.flush()  # sustained: every event committed, not merely queued
    elapsed = time.perf_counter() - started
    writer.seal("bench")
    writer.close()
    rate = EVENTS / elapsed
    samples.sort()
    p50_us = samples[len(samples) // 2] / 1000
    print(f"\n{rate:,.0f} events/s sustained; emit p50 {p50_us:.1f} us")
    assert rate >= FLOOR_PER_S
    assert p50_us <= EMIT_P50_CEILING_US
    records = read_records(state / DB_FILENAME, "bench")
    assert len(records) == EVENTS + 1
    assert verify_session("bench", records, signer.public).status is Status.OK
