"""The gateway process: a fresh interpreter that serves the sandbox's listeners.

`corridor run` starts it (`gateway/process.py`) as

    python -I -S -c BOOT --parent PID --hand FD --stop FD --report FD

where BOOT puts corridor's own import path first and calls `main`. It is started first
thing in `corridor run`, so that its imports overlap corridor's own work (loading the
policy, starting the sandbox). A fresh interpreter
rather than a fork of `corridor run`: the gateway holds only what it needs to serve (no
pydantic, click, rich or YAML; cryptography only to inspect TLS), which is most of its
memory, and it shares nothing with the parent by accident (no inherited locks, threads or
buffers). `-I` keeps the working directory (the workspace, writable by the agent) and the
PYTHON* variables off its import path.

Everything it needs arrives as data, in one JSON document: a memfd sent on `--hand`
(SCM_RIGHTS; the document carries the brokered credentials' real values, so it is never
on a file system): the session, the event store, the compiled policy, the
`--unsafe-allow-private` ranges, the session CA and the upstream CAs, and the broker. The
sandbox's listening sockets arrive after it on `--hand`, once the sandbox runs. The
parent closing `--hand` first means that nothing is to be served (a user error, a
sandbox that did not start): the child ends.
`--stop` reaching end of file asks it to finish; `--report` carries JSON lines back
(`{"ready": true}`, then `{"stats": {...}}` or `{"error": "..."}`).
"""

from __future__ import annotations

import contextlib
import ctypes
import gc
import json
import os
import signal
import socket
import sys
from collections.abc import Callable
from dataclasses import asdict
from typing import TYPE_CHECKING, Any

from corridor.errors import UserError

if TYPE_CHECKING:
    from corridor.audit.events import Event
    from corridor.gateway.server import Gateway

PROCESS_NAME = b"corridor-gw"  # /proc/PID/comm holds at most 15 bytes
CONFIG_VERSION = 1  # the document's shape; parent and child come from one installation
_PR_SET_PDEATHSIG = 1
_PR_SET_NAME = 15
# Signals sent to a whole process group or service (a terminal's Ctrl-C, a service
# manager's stop): they are meant for the command, which corridor relays them to, and
# which may still need the network to shut down cleanly. The gateway ends when corridor
# closes its stop pipe (or dies: PR_SET_PDEATHSIG).
GROUP_SIGNALS = (signal.SIGINT, signal.SIGQUIT, signal.SIGHUP, signal.SIGTERM)
_MAX_LISTENERS = 16  # the sandbox hands over a handful (sandbox/launch.py)
_FLAGS = ("--parent", "--hand", "--stop", "--report")


def main(argv: list[str] | None = None) -> None:  # pragma: no cover - a child process
    """Serve until told to stop; never returns (exit code 0 after a clean end)."""
    for sig in GROUP_SIGNALS:  # first: a group signal must not end the gateway
        signal.signal(sig, signal.SIG_IGN)
    fds = _parse_argv(sys.argv[1:] if argv is None else argv)
    report_w = fds["--report"]
    code = 1
    try:
        _name_and_tie_to(fds["--parent"])
        raise_open_file_limit()
        # Loaded while the parent still loads the policy: everything that serves.
        import asyncio

        import corridor.audit.store
        import corridor.gateway.server
        import corridor.policy.compiled  # noqa: F401

        hand = socket.socket(fileno=fds["--hand"])
        config = receive_config(hand)
        emit, close_log = _open_log(config)
        try:
            gateway = build_gateway(config, emit)
            # What exists now (modules, policy tables, contexts) lives as long as the
            # process: out of the collector's sight, each collection has less to walk.
            gc.freeze()
            listeners = receive_listeners(hand)
            asyncio.run(_serve(gateway, listeners, fds["--stop"], report_w))
        finally:
            close_log()
        _report(report_w, {"stats": asdict(gateway.stats)})
        code = 0
    except _NothingToServe:
        _report(report_w, {"error": "the sandbox did not start"})
    except UserError as exc:
        _report(report_w, {"error": exc.message})
    except BaseException as exc:  # the parent prints it; a traceback here would be lost
        _report(report_w, {"error": f"{type(exc).__name__}: {exc}"})
    finally:
        os._exit(code)


def raise_open_file_limit() -> None:
    """Every tunnel holds two sockets: the common soft limit (1024) would refuse new
    connections near 500 tunnels, so take the hard limit the system grants."""
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY or hard > soft:
        target = hard if hard != resource.RLIM_INFINITY else max(soft, 1 << 20)
        # On failure the soft limit stays; the gateway then refuses with a reason.
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))


def _parse_argv(argv: list[str]) -> dict[str, int]:
    values: dict[str, int] = {}
    pairs = iter(argv)
    for flag in pairs:
        value = next(pairs, None)
        if flag not in _FLAGS or value is None or not value.isdigit():
            raise SystemExit(f"corridor-gw: unexpected argument {flag!r} (started by corridor)")
        values[flag] = int(value)
    missing = [flag for flag in _FLAGS if flag not in values]
    if missing:
        raise SystemExit(f"corridor-gw: missing {', '.join(missing)} (started by corridor)")
    return values


def receive_config(hand: socket.socket) -> dict[str, Any]:
    """The parent's document: a memfd on `hand`, read whole from its start."""
    message, fds, _flags, _addr = socket.recv_fds(hand, 64, 1)
    if not message or len(fds) != 1:
        for fd in fds:
            os.close(fd)
        raise _NothingToServe
    chunks = []
    with open(fds[0], "rb", closefd=True) as f:
        f.seek(0)
        while chunk := f.read(1 << 20):
            chunks.append(chunk)
    config = json.loads(b"".join(chunks))
    if not isinstance(config, dict) or config.get("version") != CONFIG_VERSION:
        raise UserError("the gateway was started with a configuration it cannot read")
    return config


class _NothingToServe(Exception):
    """The parent closed the hand-over pair before sending the document."""


def _open_log(config: dict[str, Any]) -> tuple[Callable[[Event], None], Callable[[], None]]:
    """The event writer: its own spool and thread; it never seals (the parent does)."""
    log = config.get("log")
    if log is None:  # the benchmark's gateway without audit: what the audit costs
        return (lambda event: None), (lambda: None)
    from pathlib import Path

    from corridor.audit.store import EventWriter

    writer = EventWriter(Path(log["db"]), None, keep_open={config["session"]})
    return writer.emit, writer.close


def build_gateway(config: dict[str, Any], emit: Callable[[Event], None]) -> Gateway:
    """The gateway the document describes (the parent's `gateway_config` is its inverse)."""
    from ipaddress import ip_network
    from pathlib import Path

    from corridor.gateway.addresses import UnsafeRange
    from corridor.gateway.server import Gateway
    from corridor.policy.compiled import from_wire

    ca = None
    if config.get("ca") is not None:
        from corridor.gateway.tlsca import SessionCA

        ca = SessionCA.from_wire(config["ca"])
    broker = None
    if config.get("broker") is not None:
        from corridor.gateway.credentials import Broker

        broker = Broker.from_wire(config["broker"])
    return Gateway(
        policy=from_wire(config["policy"]),
        session=config["session"],
        emit=emit,
        unsafe=tuple(
            UnsafeRange(ip_network(r["network"]), r["origin"]) for r in config.get("unsafe", ())
        ),
        ca=ca,
        upstream_cas=tuple(Path(p) for p in config.get("upstream_cas", ())),
        broker=broker,
    )


def receive_listeners(hand: socket.socket) -> dict[str, socket.socket]:
    """The sockets `hand_over` sent; the parent closing the pair instead means that the
    sandbox did not start: nothing to serve."""
    message, fds, _flags, _addr = socket.recv_fds(hand, 65536, _MAX_LISTENERS)
    hand.close()
    if not message:
        raise _NothingToServe
    names = json.loads(message)
    if not isinstance(names, list) or len(names) != len(fds):
        for fd in fds:
            os.close(fd)
        raise UserError("the listening sockets did not arrive whole")
    return {str(name): socket.socket(fileno=fd) for name, fd in zip(names, fds, strict=True)}


def _name_and_tie_to(parent: int) -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(_PR_SET_NAME, ctypes.c_char_p(PROCESS_NAME), 0, 0, 0)
    libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    if os.getppid() != parent:  # the parent died before the line above: do not serve
        os._exit(1)


async def _serve(
    gateway: Gateway, listeners: dict[str, socket.socket], stop_r: int, report_w: int
) -> None:
    import asyncio

    loop = asyncio.get_running_loop()
    await gateway.start(listeners)
    stopped = loop.create_future()

    def on_stop() -> None:
        if not stopped.done():
            stopped.set_result(None)

    loop.add_reader(stop_r, on_stop)  # readable = end of file: the parent closed it or died
    _report(report_w, {"ready": True})
    try:
        await stopped
    finally:
        loop.remove_reader(stop_r)
        await gateway.stop()


def _report(fd: int, message: dict) -> None:
    with contextlib.suppress(OSError):
        os.write(fd, json.dumps(message).encode() + b"\n")
