"""CPU time and memory of a process, read from /proc, and sampled over time.

A load run reports the window it measured (wall-clock start and end); the sampler has
recorded the proxy's CPU time every few milliseconds meanwhile, so the CPU the proxy spent
inside exactly that window is read off by interpolation. This works the same for a proxy
the harness started and for corridor's gateway serving a load client inside its sandbox.
"""

from __future__ import annotations

import bisect
import os
import threading
import time
from dataclasses import dataclass, field

CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
PAGE_BYTES = os.sysconf("SC_PAGE_SIZE")
# Fine enough to place a 3 s window's edges well inside one tick of CPU accounting (10 ms).
SAMPLE_INTERVAL_S = 0.02


def cpu_times(pid: int) -> tuple[float, float]:
    """(utime, stime) of the process (all its threads), in seconds."""
    with open(f"/proc/{pid}/stat", "rb") as f:
        raw = f.read()
    # The command name (field 2) may hold spaces and parentheses: split after its last ')'.
    fields = raw[raw.rindex(b")") + 2 :].split()
    return int(fields[11]) / CLOCK_TICKS, int(fields[12]) / CLOCK_TICKS  # stat(5) 14, 15


def cpu_seconds(pid: int) -> float:
    """utime + stime of the process (all its threads), in seconds."""
    user, system = cpu_times(pid)
    return user + system


def children(pid: int) -> list[int]:
    """Direct children of a process (nginx's workers under its master)."""
    try:
        with open(f"/proc/{pid}/task/{pid}/children") as f:
            return [int(p) for p in f.read().split()]
    except OSError:
        return []


def comm(pid: int) -> str:
    """The process's name (/proc/<pid>/comm: what PR_SET_NAME set), or "" once it ended."""
    try:
        with open(f"/proc/{pid}/comm") as f:
            return f.read().rstrip("\n")
    except OSError:
        return ""


def children_named(pid: int, name: str) -> list[int]:
    """Direct children of a process whose name is `name` (corridor's `corridor-gw`)."""
    return [c for c in children(pid) if comm(c) == name]


def machine_busy() -> tuple[float, float]:
    """(busy, kernel) CPU seconds all tasks of the machine have used, from /proc/stat.

    Interrupt and softirq time are left out: with IRQ time accounting the kernel does not
    charge them to any task, so they could not be told apart from the bench's own.
    """
    with open("/proc/stat") as f:
        user, nice, system = (int(x) for x in f.readline().split()[1:4])
    return (user + nice + system) / CLOCK_TICKS, system / CLOCK_TICKS


def rss_bytes(pid: int) -> int:
    """Resident set size of the process."""
    with open(f"/proc/{pid}/statm", "rb") as f:
        return int(f.read().split()[1]) * PAGE_BYTES


def interpolate(times: list[float], values: list[float], t: float) -> float:
    """The value at time `t` on the piecewise-linear curve through the samples."""
    if not times:
        raise ValueError("no samples")
    i = bisect.bisect_left(times, t)
    if i == 0:
        return values[0]
    if i >= len(times):
        return values[-1]
    t0, t1 = times[i - 1], times[i]
    v0, v1 = values[i - 1], values[i]
    if t1 == t0:
        return v1
    return v0 + (v1 - v0) * (t - t0) / (t1 - t0)


@dataclass
class Series:
    """Samples of one process: wall time, CPU seconds (all, and in the kernel), RSS bytes."""

    times: list[float] = field(default_factory=list)
    cpu: list[float] = field(default_factory=list)
    sys_cpu: list[float] = field(default_factory=list)
    rss: list[int] = field(default_factory=list)

    def cpu_between(self, start: float, end: float) -> float:
        """CPU seconds spent between two wall-clock times."""
        return interpolate(self.times, self.cpu, end) - interpolate(self.times, self.cpu, start)

    def sys_cpu_between(self, start: float, end: float) -> float:
        """The part of cpu_between spent in the kernel (system calls, the TCP stack)."""
        return interpolate(self.times, self.sys_cpu, end) - interpolate(
            self.times, self.sys_cpu, start
        )

    def peak_rss_between(self, start: float, end: float) -> int:
        lo = bisect.bisect_left(self.times, start)
        hi = bisect.bisect_right(self.times, end)
        return max(self.rss[lo:hi], default=self.rss[-1] if self.rss else 0)


MACHINE = "machine"  # the series of the whole machine's busy CPU
MACHINE_PID = 0  # stands for the whole machine in the sampler's table


class Sampler:
    """A background thread sampling the processes it is told to watch (a process with its
    children, or with its children of one name, when asked), and the whole machine's busy
    time under MACHINE."""

    def __init__(self, interval: float = SAMPLE_INTERVAL_S) -> None:
        self.interval = interval
        self.series: dict[str, Series] = {}
        self._pids: dict[str, int] = {MACHINE: MACHINE_PID}
        self._with_children: set[str] = set()
        self._child_names: dict[str, str] = {}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="bench-sampler", daemon=True)
        self.series[MACHINE] = Series()

    def start(self) -> None:
        self._thread.start()

    def watch(
        self, name: str, pid: int, with_children: bool = False, child_named: str | None = None
    ) -> Series:
        """Start sampling `pid` under `name` (a new pid under a known name starts afresh).

        `with_children`: its direct children are added in; `child_named`: only those of
        its direct children with that process name, looked up at every sample (a child
        forked later is counted from then on; its CPU before the first sample it is seen
        in counts too, so start watching before the child is forked).
        """
        with self._lock:
            self._pids[name] = pid
            self.series[name] = Series()
            if with_children:
                self._with_children.add(name)
            if child_named is not None:
                self._child_names[name] = child_named
        self._sample_one(name, pid)
        return self.series[name]

    def forget(self, name: str) -> None:
        with self._lock:
            self._pids.pop(name, None)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            with self._lock:
                pids = list(self._pids.items())
            for name, pid in pids:
                self._sample_one(name, pid)

    def _sample_one(self, name: str, pid: int) -> None:
        try:
            now = time.time()
            if pid == MACHINE_PID:
                busy, system = machine_busy()
                user, rss = busy - system, 0
            else:
                pids = [pid]
                if name in self._with_children:
                    pids += children(pid)
                elif name in self._child_names:
                    pids += children_named(pid, self._child_names[name])
                user = system = 0.0
                rss = 0
                for p in pids:
                    u, k = cpu_times(p)
                    user, system, rss = user + u, system + k, rss + rss_bytes(p)
        except (OSError, ValueError, IndexError):
            return  # the process ended; its series keeps what was seen
        with self._lock:
            s = self.series.get(name)
            if s is not None and self._pids.get(name) == pid:
                s.times.append(now)
                s.cpu.append(user + system)
                s.sys_cpu.append(system)
                s.rss.append(rss)
