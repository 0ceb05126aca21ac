"""The gateway in a process of its own, so that corridor can say why when it dies.

`corridor run` forks the gateway once the sandbox has handed over its listening
sockets, then closes its own copies: from then on the gateway process is the only
holder of the sandbox's way out. If it dies, however it dies (a bug, the OOM killer,
`kill -9`), the kernel closes those sockets, every connect inside is refused, and
corridor, which only watches (`session.py`), ends the sandbox and records why.

The child writes events with its own `EventWriter` (its own spool: an event is durable
before the dial, and survives the child's death for `recover` to import) and never
seals: the parent writes `session_end` and the signed checkpoint after it.

It talks to the parent through two pipes: the parent holds the write end of `stop`
(closing it, or dying, asks the gateway to finish), the child writes JSON lines to
`report` (`{"ready": true}` once serving; `{"stats": {...}}` or `{"error": ...}` at the
end). The child is named `corridor-gw` (ps, top, /proc/PID/comm) and gets SIGKILL if the
parent dies (PR_SET_PDEATHSIG); it ignores SIGINT/SIGQUIT/SIGHUP/SIGTERM, which corridor
relays to the sandboxed command instead.
"""

from __future__ import annotations

import contextlib
import ctypes
import gc
import json
import os
import select
import signal
import socket
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING

from corridor.errors import UserError

if TYPE_CHECKING:  # the parent never needs them: the child imports them after the fork
    from corridor.audit import Event, EventWriter
    from corridor.gateway.server import Gateway

PROCESS_NAME = b"corridor-gw"  # /proc/PID/comm holds at most 15 bytes
# The gateway binds nothing and loads nothing slow before it serves: this only catches
# a child that is stuck.
READY_TIMEOUT_S = 15.0
# After the command ended: time for open connections to be cancelled and the events to
# be committed before the child is killed (its spool still holds every event).
STOP_TIMEOUT_S = 15.0
_PR_SET_PDEATHSIG = 1
_PR_SET_NAME = 15
# Signals sent to a whole process group or service (a terminal's Ctrl-C, a service
# manager's stop): they are meant for the command, which corridor relays them to, and
# which may still need the network to shut down cleanly. The gateway ends when corridor
# closes its stop pipe (or dies: PR_SET_PDEATHSIG).
_GROUP_SIGNALS = (signal.SIGINT, signal.SIGQUIT, signal.SIGHUP, signal.SIGTERM)
_REPORT_LIMIT = 1 << 20
_MAX_LISTENERS = 16  # the sandbox hands over a handful (sandbox/launch.py)


class GatewayFailed(UserError):
    """The gateway could not start, or stopped before the command ended."""


@dataclass(frozen=True, slots=True)
class GatewayEnd:
    """How the gateway process ended: `stats` from a clean end, else `error` says why."""

    stats: dict[str, int] | None
    error: str | None


BuildGateway = Callable[[Callable[["Event"], None]], "Gateway"]


class GatewayProcess:
    """The parent's handle on the forked gateway."""

    def __init__(self, pid: int, stop_w: int, report_r: int, hand: socket.socket) -> None:
        self.pid = pid
        self.pidfd = os.pidfd_open(pid)
        self._stop_w = stop_w
        self._report_r = report_r
        self._hand: socket.socket | None = hand
        self._buffer = b""
        self._status: int | None = None
        self._ready = False
        self._stats: dict[str, int] | None = None
        self._error: str | None = None

    @classmethod
    def spawn(cls, build: BuildGateway, open_log: Callable[[], EventWriter]) -> GatewayProcess:
        """Fork the gateway, which gets ready (imports, policy tables, TLS contexts, its
        event writer) while the caller starts the sandbox, then waits for `hand_over`.

        The caller must hold no other thread (fork copies only this one, and a lock held
        by another would stay locked in the child).
        """
        stop_r, stop_w = os.pipe2(os.O_CLOEXEC)
        report_r, report_w = os.pipe2(os.O_CLOEXEC)
        hand, hand_child = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        parent = os.getpid()
        pid = os.fork()
        if pid == 0:  # pragma: no cover - runs in the child, which never returns
            os.close(stop_w)
            os.close(report_r)
            hand.close()
            _child(build, open_log, hand_child, stop_r, report_w, parent)
        os.close(stop_r)
        os.close(report_w)
        hand_child.close()
        return cls(pid, stop_w, report_r, hand)

    def hand_over(self, listeners: dict[str, socket.socket]) -> None:
        """Send the sandbox's listening sockets to the gateway (SCM_RIGHTS). The caller
        then closes its own copies, so that the gateway is their only holder."""
        assert self._hand is not None, "hand_over() twice"
        names = list(listeners)
        with contextlib.suppress(OSError):  # a gateway that died is seen by wait_ready
            socket.send_fds(
                self._hand, [json.dumps(names).encode()], [listeners[n].fileno() for n in names]
            )
        self._hand.close()
        self._hand = None

    def wait_ready(self, timeout: float = READY_TIMEOUT_S) -> None:
        """Return once the gateway serves; raise `GatewayFailed` if it ended or hung."""
        deadline = time.monotonic() + timeout
        while not self._ready and self._read_line(deadline):
            pass
        if self._ready:
            return
        end = self.wait(deadline=time.monotonic() + 1.0)
        raise GatewayFailed(
            f"the gateway did not start: {end.error}",
            hint="nothing was run: the command reaches the network only through the gateway",
        )

    def stop(self, timeout: float = STOP_TIMEOUT_S) -> GatewayEnd:
        """Ask the gateway to finish (close the stop pipe; or, before `hand_over`, the
        pair it waits on for the sockets) and wait for its end."""
        if self._hand is not None:
            self._hand.close()
            self._hand = None
        self._close_stop()
        return self.wait(deadline=time.monotonic() + timeout)

    def wait(self, deadline: float) -> GatewayEnd:
        """Reap the child (killing it at `deadline`) and say how it ended."""
        while self._read_line(deadline):
            pass
        status = self._reap(deadline)
        if self._stats is not None and self._error is None and status == 0:
            return GatewayEnd(self._stats, None)
        cause = describe_status(status)
        return GatewayEnd(self._stats, f"{self._error}; {cause}" if self._error else cause)

    def close(self) -> None:
        """Release the pipes and the pidfd (after `wait`)."""
        self._close_stop()
        if self._hand is not None:
            self._hand.close()
            self._hand = None
        for fd in (self._report_r, self.pidfd):
            if fd >= 0:
                os.close(fd)
        self._report_r = self.pidfd = -1

    def kill(self) -> None:
        """SIGKILL the child if it still runs."""
        if self._status is None:
            with contextlib.suppress(ProcessLookupError):
                signal.pidfd_send_signal(self.pidfd, signal.SIGKILL)

    def _close_stop(self) -> None:
        if self._stop_w >= 0:
            os.close(self._stop_w)
            self._stop_w = -1

    def _reap(self, deadline: float) -> int:
        if self._status is None:
            remaining = max(0.0, deadline - time.monotonic())
            if not select.select([self.pidfd], [], [], remaining)[0]:
                self.kill()
            _, status = os.waitpid(self.pid, 0)
            self._status = status
        return self._status

    def _read_line(self, deadline: float) -> bool:
        """Take in the child's next JSON line; False at end of file or at the deadline."""
        while b"\n" not in self._buffer:
            remaining = deadline - time.monotonic()
            if remaining <= 0 or not select.select([self._report_r], [], [], remaining)[0]:
                return False
            chunk = os.read(self._report_r, 65536)
            if not chunk or len(self._buffer) > _REPORT_LIMIT:
                return False
            self._buffer += chunk
        line, self._buffer = self._buffer.split(b"\n", 1)
        with contextlib.suppress(ValueError):
            value = json.loads(line)
            if isinstance(value, dict):
                self._ready = self._ready or value.get("ready") is True
                if isinstance(value.get("stats"), dict):
                    self._stats = value["stats"]
                if isinstance(value.get("error"), str):
                    self._error = value["error"]
        return True


def describe_status(status: int) -> str:
    """A `waitpid` status in words."""
    if os.WIFSIGNALED(status):
        sig = os.WTERMSIG(status)
        try:
            name = f"{signal.Signals(sig).name} (signal {sig})"
        except ValueError:
            name = f"signal {sig}"
        return f"the gateway process was killed by {name}"
    code = os.waitstatus_to_exitcode(status)
    return "the gateway process ended" if code == 0 else f"the gateway process exited {code}"


# ---- the child ------------------------------------------------------------------------


def _child(  # pragma: no cover - covered by the lab tests, in a forked process
    build: BuildGateway,
    open_log: Callable[[], EventWriter],
    hand: socket.socket,
    stop_r: int,
    report_w: int,
    parent: int,
) -> None:
    code = 1
    try:
        _name_and_tie_to(parent)
        writer = open_log()  # its own spool and thread; it does not seal the session
        try:
            gateway = build(writer.emit)
            # What exists now (modules, policy tables, contexts) lives as long as the
            # process: out of the collector's sight, each collection has less to walk.
            gc.freeze()
            listeners = _receive_listeners(hand)
            import asyncio  # here: the parent does not need the event loop machinery

            asyncio.run(_serve(gateway, listeners, stop_r, report_w))
        finally:
            writer.close()
        _report(report_w, {"stats": asdict(gateway.stats)})
        code = 0
    except UserError as exc:
        _report(report_w, {"error": exc.message})
    except BaseException as exc:  # the parent prints it; a traceback here would be lost
        _report(report_w, {"error": f"{type(exc).__name__}: {exc}"})
    finally:
        os._exit(code)  # never run the parent's cleanup (finally blocks, atexit) here


def _receive_listeners(hand: socket.socket) -> dict[str, socket.socket]:
    """The sockets `hand_over` sent; the parent closing the pair instead means that the
    sandbox did not start: nothing to serve."""
    message, fds, _flags, _addr = socket.recv_fds(hand, 65536, _MAX_LISTENERS)
    hand.close()
    if not message:
        raise GatewayFailed("the sandbox did not start")
    names = json.loads(message)
    if not isinstance(names, list) or len(names) != len(fds):
        for fd in fds:
            os.close(fd)
        raise GatewayFailed("the listening sockets did not arrive whole")
    return {str(name): socket.socket(fileno=fd) for name, fd in zip(names, fds, strict=True)}


def _name_and_tie_to(parent: int) -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(_PR_SET_NAME, ctypes.c_char_p(PROCESS_NAME), 0, 0, 0)
    libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    if os.getppid() != parent:  # the parent died before the line above: do not serve
        os._exit(1)
    for sig in _GROUP_SIGNALS:
        signal.signal(sig, signal.SIG_IGN)


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
