"""Reading a process's CPU and memory, and the CPU spent inside a window."""

from __future__ import annotations

import os
import subprocess
import sys
import time

import pytest

from bench import procstat


@pytest.mark.parametrize(
    ("t", "expected"),
    [(0.0, 10.0), (1.0, 10.0), (1.5, 15.0), (2.0, 20.0), (2.25, 20.0), (3.0, 20.0), (9.0, 20.0)],
    ids=["before", "first", "between", "second", "flat", "third", "after"],
)
def test_interpolate(t, expected):
    times, values = [1.0, 2.0, 3.0], [10.0, 20.0, 20.0]
    assert procstat.interpolate(times, values, t) == pytest.approx(expected)


def test_cpu_between_counts_only_the_window():
    s = procstat.Series(
        times=[0.0, 1.0, 2.0], cpu=[0.0, 0.5, 0.5], sys_cpu=[0.0, 0.1, 0.3], rss=[1, 2, 3]
    )
    assert s.cpu_between(0.5, 1.5) == pytest.approx(0.25)
    assert s.sys_cpu_between(1.0, 2.0) == pytest.approx(0.2)
    assert s.peak_rss_between(0.5, 2.0) == 3


def test_own_process_cpu_grows_while_busy():
    before = procstat.cpu_seconds(os.getpid())
    deadline = time.process_time() + 0.1
    while time.process_time() < deadline:
        pass
    assert procstat.cpu_seconds(os.getpid()) - before >= 0.05
    assert procstat.rss_bytes(os.getpid()) > 1024 * 1024


def test_sampler_follows_a_process():
    sampler = procstat.Sampler(interval=0.01)
    sampler.start()
    series = sampler.watch("me", os.getpid())
    time.sleep(0.1)
    sampler.stop()
    assert len(series.times) >= 3
    assert series.times == sorted(series.times)


def test_sampler_adds_the_child_of_the_given_name():
    # A child that names itself (PR_SET_NAME, as corridor's gateway does) and spins.
    code = (
        "import ctypes, time\n"
        "ctypes.CDLL(None).prctl(15, b'bench-named', 0, 0, 0)\n"
        "end = time.monotonic() + 10\n"
        "while time.monotonic() < end: pass\n"
    )
    child = subprocess.Popen([sys.executable, "-c", code])
    try:
        deadline = time.monotonic() + 5
        while procstat.comm(child.pid) != "bench-named" and time.monotonic() < deadline:
            time.sleep(0.01)
        assert procstat.children_named(os.getpid(), "bench-named") == [child.pid]
        assert procstat.children_named(os.getpid(), "other") == []
        sampler = procstat.Sampler(interval=0.01)
        sampler.start()
        both = sampler.watch("both", os.getpid(), child_named="bench-named")
        alone = sampler.watch("alone", os.getpid())
        time.sleep(0.6)
        sampler.stop()
        spent = both.cpu[-1] - both.cpu[0]
        assert spent - (alone.cpu[-1] - alone.cpu[0]) >= 0.05  # the child's spinning
    finally:
        child.kill()
        child.wait()
