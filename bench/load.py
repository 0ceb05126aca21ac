"""The load client: new connections per second, latency, bulk MB/s, idle tunnels.

Standard library only, and one file, so that it runs unchanged inside any sandbox
(corridor's, srt's) with whatever Python is there:

    python bench/load.py SPEC.json [OUT.json]   # a JSON list of specs, run in order

A spec says how to reach the upstream:
- `direct`: TCP to the upstream itself (inside corridor's sandbox this is the
  transparent path: nft sends the connect to the gateway);
- `connect`: a CONNECT tunnel through the proxy at `proxy`, then TLS or HTTP inside;
- `absolute`: plain HTTP with an absolute-form request to the proxy at `proxy`.

`kind` is `conns` (one small GET per new connection, `conc` at a time, for a window of
`window` seconds after `warmup`), `bulk` (one download, timed, optionally hashed) or
`idle` (open `count` keep-alive tunnels, print a line, hold them until stdin closes).

The `conc` connections are spread over `procs` worker processes with threads in each:
sockets and TLS release the GIL, and several processes keep the client off the
critical path on a 2-core machine (the report gives the client's CPU).
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import socket
import ssl
import subprocess
import sys
import threading
import time
from typing import Any

RECV_BYTES = 64 * 1024
BULK_BUFFER = 1024 * 1024  # one large buffer for recv_into: few Python-level calls per MB
IO_TIMEOUT_S = 15.0  # a stuck connection fails the request instead of hanging the run
# Time the coordinator leaves for worker processes to start before the first request.
SPAWN_MARGIN_S = 0.6
IDLE_OPENERS = 16  # threads opening idle tunnels in parallel


class ProtocolError(Exception):
    """The proxy or upstream answered something other than what was expected."""


# ---- one exchange ---------------------------------------------------------------------


def _request(spec: dict[str, Any], keep_alive: bool = False) -> bytes:
    host, port, path = spec["host"], spec["port"], spec["path"]
    default = 443 if spec["scheme"] == "https" else 80
    authority = host if port == default else f"{host}:{port}"
    target = path
    if spec["mode"] == "absolute":
        target = f"{spec['scheme']}://{authority}{path}"
    conn = "keep-alive" if keep_alive else "close"
    return (
        f"GET {target} HTTP/1.1\r\nHost: {authority}\r\nUser-Agent: corridor-bench\r\n"
        f"Accept: */*\r\nConnection: {conn}\r\n\r\n"
    ).encode()


def _read_head(sock: socket.socket) -> tuple[int, dict[bytes, bytes], bytes]:
    """Status, headers (lower-case names) and whatever body bytes came with the head."""
    buf = b""
    while b"\r\n\r\n" not in buf:
        chunk = sock.recv(RECV_BYTES)
        if not chunk:
            raise ProtocolError(f"connection closed before the response head ({len(buf)} B)")
        buf += chunk
        if len(buf) > 64 * 1024:
            raise ProtocolError("response head over 64 KiB")
    head, _, rest = buf.partition(b"\r\n\r\n")
    lines = head.split(b"\r\n")
    parts = lines[0].split(b" ", 2)
    if len(parts) < 2 or not parts[1].isdigit():
        raise ProtocolError(f"bad status line {lines[0][:80]!r}")
    headers = {}
    for line in lines[1:]:
        name, _, value = line.partition(b":")
        headers[name.strip().lower()] = value.strip()
    return int(parts[1]), headers, rest


def _open(spec: dict[str, Any], addr: tuple[str, int], ctx: ssl.SSLContext | None):
    """TCP (+ CONNECT) (+ TLS) to the upstream; returns the socket to speak HTTP on."""
    sock = socket.create_connection(addr, timeout=IO_TIMEOUT_S)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    try:
        if spec["mode"] == "connect":
            hp = f"{spec['host']}:{spec['port']}"
            sock.sendall(f"CONNECT {hp} HTTP/1.1\r\nHost: {hp}\r\n\r\n".encode())
            status, _, rest = _read_head(sock)
            if status != 200:
                raise ProtocolError(f"CONNECT answered {status}")
            if rest:
                raise ProtocolError("bytes after the CONNECT response")
        if ctx is not None:
            sock = ctx.wrap_socket(sock, server_hostname=spec["host"])
    except BaseException:
        sock.close()
        raise
    return sock


def _read_body(sock: socket.socket, headers: dict[bytes, bytes], rest: bytes) -> int:
    length = headers.get(b"content-length")
    if length is None:
        raise ProtocolError("response without Content-Length")
    want = int(length)
    got = len(rest)
    while got < want:
        chunk = sock.recv(RECV_BYTES)
        if not chunk:
            raise ProtocolError(f"body cut at {got} of {want} bytes")
        got += len(chunk)
    if got != want:
        raise ProtocolError(f"body of {got} bytes, Content-Length {want}")
    return got


def _drain_to_eof(sock: socket.socket) -> None:
    """The server closes (Connection: close): read its FIN so that it closes first."""
    try:
        while sock.recv(RECV_BYTES):
            pass
    except (ssl.SSLError, OSError):
        pass  # a TLS peer may close without close_notify; the response was complete


def one_request(spec: dict[str, Any], addr: tuple[str, int], ctx: ssl.SSLContext | None) -> float:
    """One connection, one GET; returns seconds from connect() to the last body byte."""
    t0 = time.perf_counter()
    sock = _open(spec, addr, ctx)
    try:
        sock.sendall(_request(spec))
        status, headers, rest = _read_head(sock)
        if status != 200:
            raise ProtocolError(f"GET answered {status}")
        size = _read_body(sock, headers, rest)
        elapsed = time.perf_counter() - t0
        if size != spec["expect_bytes"]:
            raise ProtocolError(f"got {size} bytes, expected {spec['expect_bytes']}")
        _drain_to_eof(sock)
    finally:
        sock.close()
    return elapsed


# ---- worker process: `conc / procs` threads each looping over one_request ---------------


def _context(spec: dict[str, Any]) -> ssl.SSLContext | None:
    if spec["scheme"] != "https":
        return None
    # No cafile: the default trust (SSL_CERT_FILE), which corridor points at its bundle.
    return ssl.create_default_context(cafile=spec.get("cafile"))


def _address(spec: dict[str, Any]) -> tuple[str, int]:
    """Where TCP goes: the proxy, or the upstream (resolved once, outside the timing)."""
    if spec["mode"] in ("connect", "absolute"):
        host, port = spec["proxy"]
        return host, int(port)
    info = socket.getaddrinfo(spec["host"], spec["port"], socket.AF_INET, socket.SOCK_STREAM)
    return info[0][4][0], int(spec["port"])


def run_worker(spec: dict[str, Any]) -> dict[str, Any]:
    """Run `threads` request loops until `end`; count what completed in [begin, end]."""
    ctx = _context(spec)
    addr = _address(spec)
    begin, end = spec["begin"], spec["end"]
    latencies: list[float] = []
    errors: list[str] = []
    lock = threading.Lock()

    def loop() -> None:
        mine: list[float] = []
        mine_err: list[str] = []
        while time.time() < end:
            try:
                lat = one_request(spec, addr, ctx)
                ok = True
            except (OSError, ProtocolError, ValueError) as e:
                ok = False
                why = f"{type(e).__name__}: {e}"
            done = time.time()
            if begin <= done <= end:
                if ok:
                    mine.append(lat)
                else:
                    mine_err.append(why)
        with lock:
            latencies.extend(mine)
            errors.extend(mine_err)

    threads = [threading.Thread(target=loop) for _ in range(spec["threads"])]
    _sleep_until(spec["start"])
    for t in threads:
        t.start()
    _sleep_until(begin)
    cpu0 = time.process_time()
    _sleep_until(end)
    cpu1 = time.process_time()
    for t in threads:
        t.join()
    return {
        "latencies": latencies,
        "errors": len(errors),
        "error_sample": errors[0] if errors else None,
        "cpu_s": cpu1 - cpu0,
    }


def _sleep_until(t: float) -> None:
    delay = t - time.time()
    if delay > 0:
        time.sleep(delay)


# ---- coordinator ------------------------------------------------------------------------


def percentile(sorted_values: list[float], q: float) -> float | None:
    """Nearest-rank percentile (q in 0..100) of an already sorted list."""
    if not sorted_values:
        return None
    rank = max(1, min(len(sorted_values), math.ceil(q / 100 * len(sorted_values))))
    return sorted_values[rank - 1]


def split_concurrency(conc: int, max_procs: int) -> tuple[int, int]:
    """(processes, threads each) for `conc` concurrent connections."""
    procs = max(1, min(max_procs, conc))
    while conc % procs:
        procs -= 1
    return procs, conc // procs


def run_conns(spec: dict[str, Any]) -> dict[str, Any]:
    procs, threads = split_concurrency(spec["conc"], spec.get("procs", 4))
    start = time.time() + SPAWN_MARGIN_S
    begin = start + spec["warmup"]
    end = begin + spec["window"]
    wspec = {**spec, "threads": threads, "start": start, "begin": begin, "end": end}
    workers = [
        subprocess.Popen(
            [sys.executable, os.path.abspath(__file__), "--worker"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        for _ in range(procs)
    ]
    for w in workers:
        assert w.stdin is not None
        w.stdin.write(json.dumps(wspec))
        w.stdin.close()
    latencies: list[float] = []
    errors = 0
    sample = None
    cpu = 0.0
    for w in workers:
        assert w.stdout is not None
        out = w.stdout.read()
        if w.wait() != 0:
            raise RuntimeError(f"load worker failed (exit {w.returncode})")
        r = json.loads(out)
        latencies.extend(r["latencies"])
        errors += r["errors"]
        sample = sample or r["error_sample"]
        cpu += r["cpu_s"]
    latencies.sort()
    ms = [x * 1000 for x in latencies]
    return {
        "name": spec["name"],
        "kind": "conns",
        "begin": begin,
        "end": end,
        "ok": len(latencies),
        "errors": errors,
        "error_sample": sample,
        "conn_per_s": len(latencies) / spec["window"],
        "p50_ms": percentile(ms, 50),
        "p99_ms": percentile(ms, 99),
        "mean_ms": sum(ms) / len(ms) if ms else None,
        "client_cpu_s": cpu,
        "procs": procs,
        "threads": threads,
    }


def run_bulk(spec: dict[str, Any]) -> dict[str, Any]:
    """One download of the big body; MB/s from request sent to last byte (1 MB = 10^6 B)."""
    ctx = _context(spec)
    addr = _address(spec)
    digest = hashlib.sha256() if spec.get("sha256") else None
    cpu0 = time.process_time()
    t0 = time.time()
    sock = _open(spec, addr, ctx)
    try:
        sock.sendall(_request(spec))
        status, headers, rest = _read_head(sock)
        if status != 200:
            raise ProtocolError(f"GET answered {status}")
        want = int(headers.get(b"content-length", b"-1"))
        got = len(rest)
        if digest is not None:
            digest.update(rest)
        buf = bytearray(BULK_BUFFER)
        view = memoryview(buf)
        while got < want:
            n = sock.recv_into(buf, BULK_BUFFER)
            if n == 0:
                break
            if digest is not None:
                digest.update(view[:n])
            got += n
        t1 = time.time()
    finally:
        sock.close()
    cpu = time.process_time() - cpu0
    result = {
        "name": spec["name"],
        "kind": "bulk",
        "begin": t0,
        "end": t1,
        "bytes": got,
        "expected": spec["expect_bytes"],
        "complete": got == spec["expect_bytes"],
        "mb_per_s": got / 1e6 / (t1 - t0),
        "client_cpu_s": cpu,
    }
    if digest is not None:
        result["sha256_ok"] = digest.hexdigest() == spec["sha256"]
    return result


def run_idle(spec: dict[str, Any]) -> None:
    """Open `count` tunnels, each with one keep-alive GET done, then hold them open.

    Prints one JSON line when all are open; closes them when stdin reaches EOF.
    """
    ctx = _context(spec)
    addr = _address(spec)
    held: list[socket.socket] = []
    errors: list[str] = []
    lock = threading.Lock()
    per = -(-spec["count"] // IDLE_OPENERS)

    def opener(n: int) -> None:
        for _ in range(n):
            try:
                sock = _open(spec, addr, ctx)
                sock.sendall(_request(spec, keep_alive=True))
                status, headers, rest = _read_head(sock)
                _read_body(sock, headers, rest)
                if status != 200:
                    raise ProtocolError(f"GET answered {status}")
            except (OSError, ProtocolError, ValueError) as e:
                with lock:
                    errors.append(f"{type(e).__name__}: {e}")
                continue
            with lock:
                held.append(sock)

    left = spec["count"]
    threads = []
    for _ in range(IDLE_OPENERS):
        n = min(per, left)
        left -= n
        threads.append(threading.Thread(target=opener, args=(n,)))
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    print(
        json.dumps({"open": len(held), "errors": len(errors), "error_sample": errors[:1]}),
        flush=True,
    )
    sys.stdin.read()
    for sock in held:
        sock.close()


def run_spec(spec: dict[str, Any]) -> dict[str, Any]:
    if spec["kind"] == "conns":
        return run_conns(spec)
    if spec["kind"] == "bulk":
        return run_bulk(spec)
    raise ValueError(f"unknown kind {spec['kind']!r}")


def _raise_fd_limit() -> None:
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def main(argv: list[str]) -> int:
    if argv[1:2] == ["--worker"]:
        print(json.dumps(run_worker(json.loads(sys.stdin.read()))))
        return 0
    if argv[1:2] == ["--idle"]:
        _raise_fd_limit()
        run_idle(json.loads(argv[2]))
        return 0
    if len(argv) not in (2, 3):
        print(__doc__, file=sys.stderr)
        return 2
    with open(argv[1]) as f:
        specs = json.load(f)
    results = []
    for spec in specs:
        try:
            results.append(run_spec(spec))
        except (OSError, ProtocolError, RuntimeError, ValueError) as e:
            results.append({"name": spec["name"], "kind": spec["kind"], "failed": str(e)})
    text = json.dumps(results)
    if len(argv) == 3:
        with open(argv[2], "w") as f:
            f.write(text)
    else:
        print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
