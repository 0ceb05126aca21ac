"""The lab as tests see it: build it, run programs in it, read what the world saw.

    with lab_session() as lab:
        r = lab.run(["curl", "-sS", "--cacert", str(lab.ca_pem), "https://allowed.test/"])
        with lab.capture() as cap:
            ...
        assert cap.catchall() == []

`lab_session` removes everything it created when it ends, however it ends.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import pwd
import selectors
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tests.lab import netns
from tests.lab.ca import write_lab_pki
from tests.lab.config import (
    DEFAULT_HOSTS,
    READY_LINE,
    SYNC_COMMAND,
    SYNC_REPLY,
    HostEntry,
    WorldConfig,
)
from tests.lab.records import CATCHALL_LOG, DNS_LOG, HTTP_LOG, Mark, read_records, take_mark

REPO_ROOT = Path(__file__).resolve().parents[2]
# The world binds a few dozen sockets and loads nft: well under a second; this bound only
# turns a hang into an error that shows the world's stderr.
WORLD_START_TIMEOUT = 10.0
WORLD_STOP_TIMEOUT = 3.0
SYNC_TIMEOUT = 10.0
# After a timeout kill, how long to wait for the output pipes to close.
KILL_GRACE = 5.0
_counter = itertools.count()

Records = list[dict[str, Any]]


@dataclass(frozen=True)
class Capture:
    """Records the world logged after a point: `lab.capture()` yields one."""

    lab: Lab
    mark: Mark

    def dns_queries(self) -> Records:
        return self.lab.dns_queries(since=self.mark)

    def http_requests(self) -> Records:
        return self.lab.http_requests(since=self.mark)

    def catchall(self) -> Records:
        return self.lab.catchall(since=self.mark)


@dataclass
class Lab:
    """A built lab: the namespaces, the world's table and logs, and ways to use them."""

    ns: str
    world_ns: str
    ca_pem: Path
    dir: Path
    hosts: Mapping[str, HostEntry]
    control_socket: Path
    world: subprocess.Popen[str] | None = field(default=None, repr=False)

    @property
    def log_dir(self) -> Path:
        return self.dir / "logs"

    def addr(self, name: str, family: int = 4) -> str:
        """The first IPv4 (family=4) or IPv6 (family=6) address of a name in the table."""
        host = self.hosts[name]
        found = host.a if family == 4 else host.aaaa if family == 6 else None
        if found is None:
            raise ValueError(f"family must be 4 or 6, not {family!r}")
        if not found:
            raise LookupError(f"{name} has no IPv{family} address in the lab table")
        return found[0]

    # --- running programs in the lab namespace -----------------------------------------

    def command(self, argv: Sequence[str], user: int | None = None) -> list[str]:
        """The argv that runs `argv` in the lab namespace (as `user` when given)."""
        cmd = [netns.tool("ip") or "ip", "netns", "exec", self.ns]
        if user is not None:
            gid = _primary_gid(user)
            cmd += [
                netns.tool("setpriv") or "setpriv",
                f"--reuid={user}",
                f"--regid={gid}",
                "--clear-groups",
            ]
        return [*cmd, *argv]

    def popen(
        self,
        argv: Sequence[str],
        *,
        env: Mapping[str, str | None] | None = None,
        user: int | None = None,
        cwd: str | Path | None = None,
        stdin: Any = subprocess.DEVNULL,
        stdout: Any = subprocess.PIPE,
        stderr: Any = subprocess.PIPE,
        text: bool = True,
    ) -> subprocess.Popen[Any]:
        """Start `argv` in the lab namespace, in its own session and process group.

        env: variables set on top of this process's environment (None removes one).
        user: run as this uid (its passwd group, or the same number, and no supplementary
        groups); HOME and the rest of the environment are not changed for it.
        """
        return subprocess.Popen(
            self.command(argv, user),
            env=_environment(env),
            cwd=cwd,
            stdin=stdin,
            stdout=stdout,
            stderr=stderr,
            text=text,
            start_new_session=True,
        )

    def run(
        self,
        argv: Sequence[str],
        *,
        env: Mapping[str, str | None] | None = None,
        user: int | None = None,
        timeout: float = 60,
        input: str | None = None,
        cwd: str | Path | None = None,
    ) -> subprocess.CompletedProcess[str]:
        """Run `argv` in the lab namespace and capture its output as text.

        On timeout the whole process group is killed and TimeoutExpired raised.
        """
        proc = self.popen(
            argv,
            env=env,
            user=user,
            cwd=cwd,
            stdin=subprocess.DEVNULL if input is None else subprocess.PIPE,
        )
        try:
            out, err = proc.communicate(input, timeout=timeout)
        except subprocess.TimeoutExpired:
            _kill_group(proc)
            try:
                out, err = proc.communicate(timeout=KILL_GRACE)
            except subprocess.TimeoutExpired:  # something that left the group holds a pipe
                proc.wait()
                out, err = "", ""
            raise subprocess.TimeoutExpired(proc.args, timeout, out, err) from None
        return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)

    # --- what the world saw --------------------------------------------------------------

    def sync(self) -> None:
        """Return once the world has logged everything that reached it before this call."""
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
            s.settimeout(SYNC_TIMEOUT)
            s.connect(str(self.control_socket))
            s.sendall(SYNC_COMMAND)
            if s.recv(len(SYNC_REPLY)) != SYNC_REPLY:
                raise RuntimeError("the world did not answer sync: is it still running?")

    def mark(self) -> Mark:
        """The current end of the world's logs, for `since=` (after a sync)."""
        self.sync()
        return take_mark(self.log_dir)

    @contextlib.contextmanager
    def capture(self) -> Iterator[Capture]:
        """Records logged from entry on (reading them syncs with the world first)."""
        cap = Capture(self, self.mark())
        yield cap
        self.sync()

    def dns_queries(self, since: Mark | None = None) -> Records:
        """World DNS log: {name, type, proto, src, sport, dst, rcode, t} per question."""
        return self._read(DNS_LOG, since)

    def http_requests(self, since: Mark | None = None) -> Records:
        """World web log: {scheme, host, sni, method, path, headers, src, sport, dst, dport}."""
        return self._read(HTTP_LOG, since)

    def catchall(self, since: Mark | None = None) -> Records:
        """Catch-all log: {proto (tcp/udp/icmp/icmpv6), src, sport, dst, dport, data, ...}."""
        return self._read(CATCHALL_LOG, since)

    def _read(self, log: str, since: Mark | None) -> Records:
        self.sync()
        return read_records(self.log_dir, log, since)


@contextlib.contextmanager
def lab_session(hosts: Mapping[str, HostEntry] | None = None) -> Iterator[Lab]:
    """Build a lab (after clearing stale ones), yield it, and remove all of it at the end.

    hosts: the world's name table (default: config.DEFAULT_HOSTS). CORRIDOR_LAB_KEEP=1
    keeps the lab directory (logs, world.json, world.stderr) for a post-mortem.
    """
    netns.remove_stale()
    remove_stale_dirs()
    n = next(_counter)
    lab_ns = netns.namespace_name("lab", os.getpid(), n)
    world_ns = netns.namespace_name("world", os.getpid(), n)
    table = dict(DEFAULT_HOSTS if hosts is None else hosts)
    with contextlib.ExitStack() as cleanup:
        # World-readable: tests running as another uid read the CA (the key stays 0600).
        directory = Path(tempfile.mkdtemp(prefix=f"{lab_ns}-"))
        directory.chmod(0o755)
        if not os.environ.get("CORRIDOR_LAB_KEEP"):
            cleanup.callback(shutil.rmtree, directory, ignore_errors=True)
        (directory / "logs").mkdir()
        pki = write_lab_pki(directory, table)
        lab = Lab(
            ns=lab_ns,
            world_ns=world_ns,
            ca_pem=pki.ca_pem,
            dir=directory,
            hosts=table,
            control_socket=directory / "control.sock",
        )
        for name in (world_ns, lab_ns):
            cleanup.callback(netns.delete_namespace, name)
            netns.create_namespace(name)
        netns.link(lab_ns, world_ns)
        netns.write_resolver(lab_ns)
        config = WorldConfig(
            log_dir=str(lab.log_dir),
            control_socket=str(lab.control_socket),
            cert_pem=str(pki.cert_pem),
            key_pem=str(pki.key_pem),
            hosts=table,
        )
        config_path = directory / "world.json"
        config_path.write_text(config.to_json())
        lab.world = _start_world(world_ns, config_path, directory / "world.stderr")
        cleanup.callback(_stop_world, lab.world)
        netns.wait_link_up(lab_ns, world_ns)
        yield lab


def remove_stale_dirs(base: Path | None = None) -> list[Path]:
    """Remove lab directories (`<lab ns>-<random>` in the temp dir) of dead runs."""
    base = Path(tempfile.gettempdir()) if base is None else base
    found = {p.name.rsplit("-", 1)[0]: p for p in base.glob(f"{netns.PREFIX}lab-*-*-*")}
    stale = [found[name] for name in netns.stale_names(found)]
    for path in stale:
        shutil.rmtree(path, ignore_errors=True)
    return stale


def _start_world(world_ns: str, config: Path, stderr_path: Path) -> subprocess.Popen[str]:
    argv = [
        netns.tool("ip") or "ip",
        "netns",
        "exec",
        world_ns,
        sys.executable,
        "-m",
        "tests.lab.world",
        "--config",
        str(config),
    ]
    with stderr_path.open("w") as stderr:
        proc = subprocess.Popen(
            argv,
            cwd=REPO_ROOT,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=stderr,
            text=True,
        )
    assert proc.stdout is not None
    with selectors.DefaultSelector() as sel:
        sel.register(proc.stdout, selectors.EVENT_READ)
        ready = sel.select(WORLD_START_TIMEOUT)
    line = proc.stdout.readline().strip() if ready else ""
    if line != READY_LINE:
        _stop_world(proc)
        raise RuntimeError(f"the lab world did not start: {stderr_path.read_text().strip()}")
    return proc


def _stop_world(proc: subprocess.Popen[str]) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(WORLD_STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    if proc.stdout is not None:
        proc.stdout.close()


def _kill_group(proc: subprocess.Popen[Any]) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)


def _environment(extra: Mapping[str, str | None] | None) -> dict[str, str]:
    env = dict(os.environ)
    for key, value in (extra or {}).items():
        if value is None:
            env.pop(key, None)
        else:
            env[key] = value
    return env


def _primary_gid(uid: int) -> int:
    """The user's group from the password database, or a group of the same number."""
    try:
        return pwd.getpwuid(uid).pw_gid
    except KeyError:
        return uid
