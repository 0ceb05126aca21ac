"""The gateway in a process of its own, so that corridor can say why when it dies.

`corridor run` starts the gateway (`gateway/child.py`: a fresh interpreter, named
`corridor-gw`) before the sandbox, hands it the sandbox's listening sockets once the
sandbox has made them, then closes its own copies: from then on the gateway process is
the only holder of the sandbox's way out. If it dies, however it dies (a bug, the OOM
killer, `kill -9`), the kernel closes those sockets, every connect inside is refused, and
corridor, which only watches (`session.py`), ends the sandbox and records why.

The child gets everything it needs as one JSON document (`gateway_config`) in a memfd,
writes events with its own `EventWriter` (its own spool: an event is durable before the
dial, and survives the child's death for `recover` to import) and never seals: the
parent writes `session_end` and the signed checkpoint after it.

It talks to the parent through two pipes: the parent holds the write end of `stop`
(closing it, or dying, asks the gateway to finish), the child writes JSON lines to
`report` (`{"ready": true}` once serving; `{"stats": {...}}` or `{"error": ...}` at the
end). The child runs in a process group of its own, gets SIGKILL if the parent dies
(PR_SET_PDEATHSIG) and ignores SIGINT/SIGQUIT/SIGHUP/SIGTERM, which corridor relays to
the sandboxed command instead.
"""

from __future__ import annotations

import contextlib
import json
import os
import select
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from corridor.errors import UserError
from corridor.gateway.memfile import memory_file

if TYPE_CHECKING:
    from corridor.gateway.addresses import UnsafeRange
    from corridor.gateway.credentials import Broker
    from corridor.gateway.tlsca import SessionCA

# The gateway binds nothing and loads nothing slow before it serves: this only catches
# a child that is stuck.
READY_TIMEOUT_S = 15.0
# After the command ended: time for open connections to be cancelled and the events to
# be committed before the child is killed (its spool still holds every event).
STOP_TIMEOUT_S = 15.0
_REPORT_LIMIT = 1 << 20
# The child's first lines: corridor's own import path first (the one this process
# imported corridor from), whatever the working directory or PYTHONPATH say (-I -S).
_BOOT = "import sys; sys.path[:0] = {path!r}; from corridor.gateway.child import main; main()"


class GatewayFailed(UserError):
    """The gateway could not start, or stopped before the command ended."""


@dataclass(frozen=True, slots=True)
class GatewayEnd:
    """How the gateway process ended: `stats` from a clean end, else `error` says why."""

    stats: dict[str, int] | None
    error: str | None


class GatewayProcess:
    """The parent's handle on the gateway process."""

    def __init__(
        self, proc: subprocess.Popen, stop_w: int, report_r: int, hand: socket.socket
    ) -> None:
        self._proc = proc
        self.pid = proc.pid
        self.pidfd = os.pidfd_open(proc.pid)
        self._stop_w = stop_w
        self._report_r = report_r
        self._hand: socket.socket | None = hand
        self._configured = False
        self._buffer = b""
        self._status: int | None = None
        self._ready = False
        self._stats: dict[str, int] | None = None
        self._error: str | None = None

    @classmethod
    def spawn(cls, config: dict[str, Any] | None = None) -> GatewayProcess:
        """Start the gateway process, which imports its modules while the caller goes on
        (loading the policy, starting the sandbox), then waits for `configure` (now, if
        `config` is given) and for `hand_over`."""
        stop_r, stop_w = os.pipe2(os.O_CLOEXEC)
        report_r, report_w = os.pipe2(os.O_CLOEXEC)
        hand, hand_child = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        ends = {"--hand": hand_child.fileno(), "--stop": stop_r, "--report": report_w}
        argv = [sys.executable, "-I", "-S", "-c", _BOOT.format(path=_import_path())]
        argv += ["--parent", str(os.getpid())]
        for flag, fd in ends.items():
            argv += [flag, str(fd)]
        try:
            proc = subprocess.Popen(
                argv,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                pass_fds=tuple(ends.values()),
                process_group=0,  # a terminal's Ctrl-C is the command's, not the gateway's
            )
        except OSError as e:
            os.close(stop_w)
            os.close(report_r)
            hand.close()
            raise GatewayFailed(
                f"cannot start the gateway process ({sys.executable}): {e.strerror}",
                hint="nothing was run: the command reaches the network only through the gateway",
            ) from None
        finally:
            os.close(stop_r)
            os.close(report_w)
            hand_child.close()
        gateway = cls(proc, stop_w, report_r, hand)
        if config is not None:
            gateway.configure(config)
        return gateway

    def configure(self, config: dict[str, Any]) -> None:
        """Send the gateway its document (`gateway_config`), in a memfd (SCM_RIGHTS): it
        carries the brokered credentials' real values, so it is never on a file system."""
        assert self._hand is not None and not self._configured, "configure() after hand_over"
        fd = memory_file("corridor-gw-config", json.dumps(config).encode())
        try:
            with contextlib.suppress(OSError):  # a gateway that died is seen by wait_ready
                socket.send_fds(self._hand, [b"config"], [fd])
        finally:
            os.close(fd)
        self._configured = True

    def hand_over(self, listeners: dict[str, socket.socket]) -> None:
        """Send the sandbox's listening sockets to the gateway (SCM_RIGHTS). The caller
        then closes its own copies, so that the gateway is their only holder."""
        assert self._hand is not None, "hand_over() twice"
        assert self._configured, "hand_over() before configure()"
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
        pair it waits on for its document or the sockets) and wait for its end."""
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
            self._status = _wait_status(self._proc.wait())
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


def _wait_status(returncode: int) -> int:
    """`Popen.returncode` (negative: killed by that signal) as a `waitpid` status."""
    return -returncode if returncode < 0 else returncode << 8


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


def gateway_config(
    *,
    session: str,
    db: Path | None,
    policy: Any,
    unsafe: Iterable[UnsafeRange] = (),
    ca: SessionCA | None = None,
    upstream_cas: Iterable[Path] = (),
    broker: Broker | None = None,
) -> dict[str, Any]:
    """The document `child.build_gateway` reads: all the gateway needs, as plain data.

    `db` None: no event log (the benchmark's measure of what the audit costs). `broker`
    carries real credential values: the document goes only to the child, in a memfd.
    """
    from corridor.gateway.child import CONFIG_VERSION
    from corridor.policy.compiled import compile_policy, to_wire

    return {
        "version": CONFIG_VERSION,
        "session": session,
        "log": None if db is None else {"db": str(db)},
        "policy": to_wire(compile_policy(policy)),
        "unsafe": [{"network": str(r.network), "origin": r.origin} for r in unsafe],
        "ca": None if ca is None else ca.to_wire(),
        "upstream_cas": [str(p) for p in upstream_cas],
        "broker": None if broker is None else broker.to_wire(),
    }


def _import_path() -> list[str]:
    """Where this process found corridor, then the rest of its path (the child runs
    without `site`: the same directories, found without it), less the script's directory
    or working directory Python put first (the workspace, perhaps: the agent writes there)."""
    import corridor

    root = str(Path(next(iter(corridor.__path__))).parent)
    rest = sys.path if sys.flags.safe_path else sys.path[1:]
    return [root, *(p for p in rest if p and p != root)]
