"""The gateway's CPU per connection, quickly: the figure to watch while changing its code.

    sudo .venv/bin/python -m bench.cpu_per_conn [--rounds N] [--window S] [--no-audit]
                                                [--inspect] [--profile OUT.json]
                                                [--compare SRC_DIR [--idle]]
                                                [--transparent] [--idle]

Runs only corridor's proxy rows of the full bench (`bench.run`), in a bench namespace of
its own: nginx upstream, `gateway_host.py`, the load client at C=64 for HTTPS
passthrough (CONNECT) and plain HTTP (absolute-form), and one single-stream download of
the big body over each (SHA-256 checked). Prints one line per cell: the gateway's CPU
per connection (median over the rounds) and its kernel share. On a shared machine the
connections per second move with the neighbours' load; CPU per connection moves much
less, which is why it is the figure this script reports first.

`--inspect` adds the inspected HTTPS row (a gateway with `inspect: true`); `--profile`
records the gateway with py-spy (bench tools venv) during the first cell's first round.
`--compare SRC_DIR`
runs the CONNECT row of this tree and of corridor imported from SRC_DIR (e.g. `git
archive HEAD src | tar -x -C /tmp/base`, then `--compare /tmp/base/src`) round by
round alternately: the before/after of a change on a shared machine.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

from bench import netns, peers, upstream
from bench.config import (
    BIG_BYTES,
    BIG_PATH,
    HTTP_PORT,
    HTTPS_PORT,
    REPO_ROOT,
    SMALL_BYTES,
    SMALL_PATH,
    TOOLS_VENV,
    UPSTREAM_NAME,
    WORK_DIR,
)
from bench.procstat import Sampler

LOAD_PY = Path(__file__).resolve().parent / "load.py"
QUICK_DIR = WORK_DIR / "cpu-per-conn"
WARMUP_S = 0.5
CONC = 64
# py-spy: only the thread holding the GIL (Python work; the kernel's share is left out)
SPY_FLAGS = ("--gil",)


def _spec(name: str, kind: str, scheme: str, mode: str, proxy, ca: Path, window: float) -> dict:
    return {
        "name": name,
        "kind": kind,
        "mode": mode,
        "scheme": scheme,
        "host": UPSTREAM_NAME,
        "port": HTTPS_PORT if scheme == "https" else HTTP_PORT,
        "path": SMALL_PATH if kind == "conns" else BIG_PATH,
        "expect_bytes": SMALL_BYTES if kind == "conns" else BIG_BYTES,
        "cafile": str(ca),
        "conc": CONC if kind == "conns" else 1,
        "procs": 4,
        "warmup": WARMUP_S,
        "window": window,
        "proxy": list(proxy),
    }


def _bench_upstream() -> tuple[upstream.Pki, str, upstream.Nginx, Sampler]:
    """The upstream every mode measures against (certificates, bodies, nginx, running)
    and a started CPU sampler; returns (pki, the big body's SHA-256, nginx, sampler)."""
    QUICK_DIR.mkdir(parents=True, exist_ok=True)
    pki = upstream.make_pki(QUICK_DIR / "pki")
    sha = upstream.make_bodies(WORK_DIR / "www")
    nginx = upstream.Nginx(QUICK_DIR / "nginx", WORK_DIR / "www", pki)
    nginx.start()
    sampler = Sampler()
    sampler.start()
    return pki, sha, nginx, sampler


def _load(spec: dict) -> dict:
    path = QUICK_DIR / "spec.json"
    path.write_text(json.dumps([spec]))
    done = subprocess.run(
        [sys.executable, str(LOAD_PY), str(path)], capture_output=True, text=True, check=True
    )
    return json.loads(done.stdout)[0]


def _profiler(pid: int, out: Path, seconds: float) -> subprocess.Popen | None:
    """py-spy recording the gateway (speedscope), when the bench's tools venv has it."""
    spy = TOOLS_VENV / "bin" / "py-spy"
    if not spy.exists():
        print("no py-spy in the bench tools venv: not profiling", flush=True)
        return None
    argv = [str(spy), "record", "--pid", str(pid), "--duration", str(int(seconds) + 1),
            *SPY_FLAGS, "--rate", "500", "--format", "speedscope", "--output", str(out),
            "--nonblocking"]  # fmt: skip
    return subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def _conns(name: str, gw: peers.Peer, series, spec: dict, rounds: int, profile) -> None:
    per_conn, kernel, rates = [], [], []
    spy = _profiler(gw.pid, profile, spec["window"] + WARMUP_S + 1) if profile else None
    for _ in range(rounds):
        r = _load(spec)
        if spy is not None:
            spy.wait()
            print(f"profile of the first round: {profile}", flush=True)
            spy = None
        if "failed" in r or not r["ok"]:
            print(f"{name}: failed: {r.get('failed') or r.get('error_sample')}", flush=True)
            return
        cpu = series.cpu_between(r["begin"], r["end"])
        per_conn.append(cpu / r["ok"] * 1e6)
        kernel.append(series.sys_cpu_between(r["begin"], r["end"]) / cpu)
        rates.append(r["conn_per_s"])
    print(
        f"{name} c{CONC}: {statistics.median(per_conn):.0f} us/conn "
        f"(rounds {', '.join(f'{x:.0f}' for x in per_conn)}; "
        f"kernel {statistics.median(kernel):.0%}), {statistics.median(rates):.0f} conn/s",
        flush=True,
    )


def _bulk(name: str, series, spec: dict) -> None:
    r = _load(spec)
    if "failed" in r:
        print(f"{name} bulk: failed: {r['failed']}", flush=True)
        return
    cpu = series.cpu_between(r["begin"], r["end"])
    print(
        f"{name} bulk: {r['mb_per_s']:.0f} MB/s, sha256 "
        f"{'ok' if r.get('sha256_ok') else 'WRONG'}, complete {r['complete']}, "
        f"gateway {cpu:.2f} s CPU",
        flush=True,
    )


def compare(rounds: int, window: float, audit: bool, other: Path, idle: bool) -> int:
    """CONNECT rows of this tree and of `other` (a src/ directory), round by round
    alternately, so that a shared machine's drift hits both alike."""
    pki, _, nginx, sampler = _bench_upstream()
    gateways = {
        "this": peers.start_gateway(QUICK_DIR, audit, name="this"),
        "other": peers.start_gateway(QUICK_DIR, audit, src=other, name="other"),
    }
    series = {name: sampler.watch(name, gw.pid) for name, gw in gateways.items()}
    per_conn: dict[str, list[float]] = {name: [] for name in gateways}
    try:
        for _ in range(rounds):
            for name, gw in gateways.items():
                spec = _spec(name, "conns", "https", "connect", gw.proxy, pki.ca_pem, window)
                r = _load(spec)
                if "failed" in r or not r["ok"]:
                    print(f"{name}: failed: {r.get('failed') or r.get('error_sample')}")
                    return 1
                cpu = series[name].cpu_between(r["begin"], r["end"])
                per_conn[name].append(cpu / r["ok"] * 1e6)
        for name, values in per_conn.items():
            print(
                f"https/connect c{CONC} {name}: {statistics.median(values):.0f} us/conn "
                f"(rounds {', '.join(f'{x:.0f}' for x in values)})",
                flush=True,
            )
        if idle:
            for name, gw in gateways.items():
                _print_idle(name, gw, pki.ca_pem)
    finally:
        for gw in gateways.values():
            gw.stop()
        sampler.stop()
        nginx.stop()
    return 0


def transparent(window: float) -> int:
    """The transparent rows: `corridor run` with the load client inside its sandbox, CPU
    of corridor and its gateway process (bench.run's own cell, once)."""
    from bench.config import QUICK
    from bench.run import _transparent

    pki, sha, nginx, sampler = _bench_upstream()
    d = dataclasses.replace(QUICK, window_s=window)
    ctx = {"ca": pki.ca_pem, "sha256": sha}
    try:
        conns, bulk, info = _transparent(0, d, ctx, sampler, QUICK_DIR)
    finally:
        sampler.stop()
        nginx.stop()
    if info["exit_code"] != 0:
        print(f"corridor run failed: {info.get('output')}", flush=True)
        return 1
    for row in conns:
        print(
            f"{row['measure']}/transparent c{row['conc']}: "
            f"{row.get('proxy_cpu_us_per_conn', float('nan')):.0f} us/conn "
            f"(corridor + corridor-gw), {row.get('conn_per_s', 0):.0f} conn/s",
            flush=True,
        )
    for row in bulk:
        print(f"{row['measure']}/transparent bulk: {row.get('mb_per_s', 0):.0f} MB/s", flush=True)
    return 0


def _print_idle(name: str, gw: peers.Peer, ca: Path, start: int | None = None) -> None:
    from bench.procstat import rss_bytes
    from bench.run import _idle

    after_load = rss_bytes(gw.pid)
    m = _idle(gw, {"ca": ca})
    began = f"{start / 1e6:.1f} MB at start, " if start is not None else ""
    print(
        f"{name}: RSS {began}{after_load / 1e6:.1f} MB before the idle tunnels, "
        f"{m['idle'] / 1e6:.1f} MB with {m['open']} idle tunnels ({m['errors']} errors), "
        f"{m['after'] / 1e6:.1f} MB after",
        flush=True,
    )


def inside(
    rounds: int, window: float, audit: bool, profile: Path | None, inspect: bool, idle: bool
) -> int:
    pki, sha, nginx, sampler = _bench_upstream()
    gateways = {"plain": peers.start_gateway(QUICK_DIR, audit=audit)}
    cells = [
        ("https/connect", "plain", "https", "connect", pki.ca_pem),
        ("http/absolute", "plain", "http", "absolute", pki.ca_pem),
    ]
    if inspect:
        gateways["inspect"] = gw = peers.start_gateway(QUICK_DIR, audit, pki.ca_pem)
        assert gw.cafile is not None
        cells.append(("https-inspected/connect", "inspect", "https", "connect", gw.cafile))
    series = {name: sampler.watch(name, gw.pid) for name, gw in gateways.items()}
    from bench.procstat import rss_bytes

    start_rss = rss_bytes(gateways["plain"].pid)
    try:
        for name, which, scheme, mode, ca in cells:
            gw = gateways[which]
            spec = _spec(name, "conns", scheme, mode, gw.proxy, ca, window)
            _conns(name, gw, series[which], spec, rounds, profile)
            profile = None
        for name, which, scheme, mode, ca in cells:
            spec = _spec(name, "bulk", scheme, mode, gateways[which].proxy, ca, window)
            spec["sha256"] = sha
            _bulk(name, series[which], spec)
        if idle:
            _print_idle("plain gateway", gateways["plain"], pki.ca_pem, start_rss)
    finally:
        for gw in gateways.values():
            gw.stop()
        sampler.stop()
        nginx.stop()
    return 0


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--window", type=float, default=3.0)
    parser.add_argument("--no-audit", action="store_true")
    parser.add_argument("--profile", type=Path, help="py-spy speedscope file (first cell)")
    parser.add_argument("--inspect", action="store_true", help="add the inspected row")
    parser.add_argument(
        "--compare", type=Path, metavar="SRC", help="alternate with corridor from SRC"
    )
    parser.add_argument("--idle", action="store_true", help="RSS after load, with idle tunnels")
    parser.add_argument("--transparent", action="store_true", help="the `corridor run` rows")
    parser.add_argument("--inside", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv[1:])
    if args.inside and args.transparent:
        return transparent(args.window)
    if args.inside and args.compare is not None:
        other = args.compare.resolve()
        return compare(args.rounds, args.window, not args.no_audit, other, args.idle)
    if args.inside:
        return inside(
            args.rounds, args.window, not args.no_audit, args.profile, args.inspect, args.idle
        )
    os.environ.pop("PYTHONDONTWRITEBYTECODE", None)  # as bench.run: cached bytecode
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}
    with netns.bench_namespace() as ns:
        argv_in = [sys.executable, "-m", "bench.cpu_per_conn", "--inside", *argv[1:]]
        return subprocess.run(
            ["ip", "netns", "exec", ns, *argv_in], cwd=REPO_ROOT, env=env
        ).returncode


if __name__ == "__main__":
    sys.exit(main(sys.argv))
