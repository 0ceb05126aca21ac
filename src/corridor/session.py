"""One contained run: policy, sandbox, gateway and event log tied together.

Order matters for failing closed: the policy is loaded and the event store opened
before anything starts; the sandbox's network exists only as listening sockets the
gateway holds; the command starts only after the gateway is serving; when the
command ends, the gateway stops and the log is flushed.
"""

from __future__ import annotations

import contextlib
import getpass
import os
import select
import shutil
import signal
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from corridor.audit import (
    Event,
    EventWriter,
    Kind,
    load_or_create_signer,
    new_session_id,
    read_events,
    recover,
)
from corridor.audit.keys import Signer
from corridor.errors import UserError
from corridor.gateway.addresses import UnsafeRange
from corridor.gateway.credentials import Broker
from corridor.gateway.process import GatewayFailed, GatewayProcess, gateway_config
from corridor.policy.compiled import CompiledPolicy
from corridor.policy.decide import wants_inspection
from corridor.policy.flags import describe
from corridor.sandbox.bwrap import TRUST_MOUNT, SandboxSpec
from corridor.sandbox.env import build_env
from corridor.sandbox.home import is_secret
from corridor.sandbox.launch import Sandbox, check_user_namespaces, find_tools, start_sandbox
from corridor.sandbox.nft import Ports
from corridor.sandbox.views import View, build_views

if TYPE_CHECKING:  # imported where used: the gateway's modules load in its own process
    from corridor.gateway.tlsca import SessionCA
    from corridor.policy.model import Policy

RELAYED_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGQUIT)
EVENTS_DB = "events.db"
# corridor itself failed (here: the gateway died), as distinct from the command's own code.
EXIT_GATEWAY_FAILED = 125


@dataclass
class RunOptions:
    command: list[str]
    policy: Policy | CompiledPolicy  # compiled: a run with --allow flags and no file
    workspace: Path
    state_dir: Path
    quiet: bool = False
    upstream_ca: Path | None = None
    pass_env: list[str] = field(default_factory=list)
    # --unsafe-allow-private: ranges allowed names may resolve into (gateway/addresses.py)
    unsafe_allow_private: tuple[UnsafeRange, ...] = ()


@dataclass(frozen=True, slots=True)
class RunResult:
    session: str
    exit_code: int
    allowed: int
    blocked: int


def check_workspace(workspace: Path, home: Path) -> Path:
    """The workspace must exist and must not expose the home's secrets."""
    try:
        ws = workspace.resolve(strict=True)
    except (FileNotFoundError, NotADirectoryError):
        raise UserError(
            f"--workspace {workspace}: no such directory",
            hint="create it, or pass an existing directory",
        ) from None
    if not ws.is_dir():
        raise UserError(f"--workspace {workspace}: not a directory")
    home = home.resolve()
    if ws == Path("/") or ws == home or home.is_relative_to(ws):
        raise UserError(
            f"--workspace {workspace}: contains your home directory, whose secrets would be "
            "writable and visible in the sandbox",
            hint="run corridor from a project directory, or pass --workspace PROJECT_DIR",
        )
    if is_secret(str(home), str(ws)):
        raise UserError(f"--workspace {workspace}: is inside a masked secret directory")
    return ws


def check_state_dir(state_dir: Path, workspace: Path) -> Path:
    """The log must live outside the workspace, where the sandbox could rewrite it."""
    state_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    resolved = state_dir.resolve()
    if resolved.is_relative_to(workspace) or workspace.is_relative_to(resolved):
        raise UserError(
            f"--state-dir {state_dir}: inside the workspace {workspace}, where the sandboxed "
            "command could read and rewrite the event log",
            hint="keep the state directory outside the workspace (the default is "
            "$XDG_STATE_HOME/corridor)",
        )
    return resolved


def run(opts: RunOptions, gateway: GatewayProcess | None = None) -> RunResult:
    """Run the command contained; `gateway` is the gateway process if the caller started
    it already (first thing, so that its imports overlap the caller's)."""
    gateway = gateway if gateway is not None else GatewayProcess.spawn()
    try:
        return _run(opts, gateway)
    except BaseException:
        if gateway.pidfd >= 0:  # not handed to `contain` yet, which ends it in any case
            gateway.stop()
            gateway.close()
        raise


def _run(opts: RunOptions, gateway: GatewayProcess) -> RunResult:
    home = Path(os.environ.get("HOME") or os.path.expanduser("~"))
    workspace = check_workspace(opts.workspace, home)
    state_dir = check_state_dir(opts.state_dir, workspace)
    tools = find_tools()
    rootless = os.getuid() != 0
    if rootless:
        check_user_namespaces()
    cwd = Path.cwd().resolve()
    if not cwd.is_relative_to(workspace):
        cwd = workspace
    ports = Ports()
    senv = build_env(
        os.environ,
        proxy_port=ports.proxy,
        home=str(home),
        workspace=str(cwd),
        extra_names=opts.pass_env,
    )
    # Real values are read once, here; the sandbox gets placeholders (set last, over
    # anything else), and a real value that would still reach it stops the run.
    broker = Broker.start(opts.policy.credentials or (), time.monotonic(), os.environ)
    if not opts.quiet:
        for warning in broker.warnings:  # names and lengths only, never a value
            print(f"corridor: warning: {warning}", file=sys.stderr)
    session = new_session_id()
    upstream_cas = (opts.upstream_ca,) if opts.upstream_ca is not None else ()
    senv.env.update(broker.sandbox_env())
    check_no_secret(broker, senv.env, opts.command)
    opts.state_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    db = opts.state_dir / EVENTS_DB
    # The signing key closes the session with a signed checkpoint (audit/keys.py); read
    # now so that an unusable key stops the run before anything starts.
    signer = load_or_create_signer(opts.state_dir)
    # Read before the start is recorded, which names what they leave out.
    views = build_views(shutil.which("git"), str(home.resolve()), dict(os.environ))
    record, digest = describe(opts.policy)
    started = time.time()
    # This writer records the start; it does not seal: the session goes on.
    with EventWriter(db, signer, keep_open={session}) as writer:
        writer.flush()  # an unusable state directory stops the run before anything starts
        writer.emit(
            Event(
                session=session,
                kind=Kind.SESSION_START,
                ts=started,
                data={
                    "command": opts.command,
                    "workspace": str(workspace),
                    "cwd": str(cwd),
                    "user": _user_name(),
                    "uid": os.getuid(),
                    "rootless": rootless,
                    "policy": record,
                    "policy_hash": digest,
                    "unsafe_allow_private": [str(r.network) for r in opts.unsafe_allow_private],
                    "env_passed": sorted(senv.env),
                    "env_dropped": list(senv.dropped),
                    "credentials": broker.describe(),
                    # Configuration files shown filtered, and the names taken out of each.
                    "config_filtered": {view.path: list(view.dropped) for view in views},
                },
            )
        )
    # Made last before the sandbox: nothing can fail between this and the `finally`
    # that removes the trust directory.
    ca: SessionCA | None = None
    trust_parent: Path | None = None
    if inspects(opts.policy):
        ca, trust_parent, trust_env = make_trust(session, upstream_cas)
        senv.env.update(trust_env)
        senv.env.update(broker.sandbox_env())  # the placeholders win, as before

    config = gateway_config(
        session=session,
        db=db,
        policy=opts.policy,
        unsafe=opts.unsafe_allow_private,
        ca=ca,
        upstream_cas=upstream_cas,
        broker=broker if broker.credentials else None,
    )

    outcome = Outcome(exit_code=125)
    views_parent: Path | None = None
    try:
        if views:
            views_parent = write_views(views)
        # The event log and the signing key must be neither readable nor writable inside.
        spec = SandboxSpec(
            workspace=workspace,
            home=home.resolve(),
            cwd=cwd,
            rootless=rootless,
            hidden=(state_dir,),
            trust_dir=trust_parent / "trust" if trust_parent else None,
            views_dir=views_parent / "views" if views_parent else None,
            views=tuple((view.path, str(i)) for i, view in enumerate(views)),
        )
        gateway.configure(config)  # it builds its tables while the sandbox starts
        try:
            sandbox = start_sandbox(tools, spec, opts.command, senv.env, ports)
        except BaseException:
            gateway.stop()  # it never got its sockets: it ends at once
            gateway.close()
            raise
        outcome = contain(sandbox, gateway)
        outcome.drops = sandbox.drops  # the firewall's counters, read once it ended
    finally:
        end_session(db, signer, session, started, outcome)
        for directory in (trust_parent, views_parent):
            if directory is not None:
                shutil.rmtree(directory, ignore_errors=True)
    if outcome.failed:
        raise GatewayFailed(
            f"{outcome.gateway_error}: the sandbox was ended, since it has no network "
            "without the gateway",
            hint=f"the session's events up to then are in the log: corridor log --session "
            f"{session}",
            exit_code=EXIT_GATEWAY_FAILED,
        )
    if outcome.gateway_error and not opts.quiet:
        print(f"corridor: warning: {outcome.gateway_error}", file=sys.stderr)
    return RunResult(session, outcome.exit_code, outcome.allowed, outcome.blocked)


@dataclass
class Outcome:
    """How a contained run ended: the command's exit code and the gateway's account."""

    exit_code: int
    stats: dict[str, int] | None = None
    gateway_error: str | None = None
    failed: bool = False  # the gateway ended before the command: the command was killed
    drops: dict[str, int] | None = None  # packets the sandbox's firewall dropped, by kind

    @property
    def allowed(self) -> int:
        return (self.stats or {}).get("allowed", 0)

    @property
    def blocked(self) -> int:
        return (self.stats or {}).get("blocked", 0)


def contain(sandbox: Sandbox, gateway: GatewayProcess) -> Outcome:
    """Hand the sandbox's listeners to the gateway, release the command, and watch both
    until the command ends (then stop the gateway) or the gateway ends (then kill the
    command: without the gateway the sandbox has no way out)."""
    gateway.hand_over(sandbox.listeners)
    for listener in sandbox.listeners.values():
        listener.close()  # the gateway holds them now, and only it: its death closes them
    sandbox_fd = os.pidfd_open(sandbox.proc.pid)
    previous = {sig: signal.signal(sig, _relay_to(sandbox)) for sig in RELAYED_SIGNALS}
    try:
        gateway.wait_ready()
        with contextlib.suppress(OSError):  # a sandbox that already died is seen below
            sandbox.start()
        poller = select.poll()
        poller.register(sandbox_fd, select.POLLIN)
        poller.register(gateway.pidfd, select.POLLIN)
        ended = {fd for fd, _ in poller.poll()}
        if gateway.pidfd in ended:
            sandbox.kill()
            code = _exit_code(sandbox.proc.wait())
            end = gateway.wait(deadline=time.monotonic() + 1.0)
            return Outcome(code, end.stats, end.error or "the gateway stopped", failed=True)
        code = _exit_code(sandbox.proc.wait())
        sandbox.begin_collect_drops()  # read while the gateway stops; close() takes them
        end = gateway.stop()
        return Outcome(code, end.stats, end.error)
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        os.close(sandbox_fd)
        sandbox.kill()
        sandbox.proc.wait()
        gateway.kill()
        gateway.wait(deadline=time.monotonic())
        gateway.close()
        sandbox.close()


def _relay_to(sandbox: Sandbox) -> Callable[[int, object], None]:
    def relay(sig: int, _frame: object) -> None:
        sandbox.relay_signal(sig)

    return relay


def end_session(db: Path, signer: Signer, session: str, started: float, outcome: Outcome) -> None:
    """Close the session's log: import a dead gateway's spool, record the end, seal."""
    # The session is not over: its checkpoint comes after session_end.
    recover(db, signer, keep_open={session})
    stats = outcome.stats
    if stats is None:  # the gateway died: count what its events say
        stats = _counts_from_log(db, session)
    data: dict[str, object] = {
        "exit_code": outcome.exit_code,
        "signal": outcome.exit_code - 128 if outcome.exit_code > 128 else None,
        "duration_ms": round((time.time() - started) * 1000, 3),
        "connections_allowed": stats.get("allowed", 0),
        "connections_blocked": stats.get("blocked", 0),
        "dns_queries": stats.get("dns", 0),
        "dns_refused": stats.get("dns_refused", 0),
        "dns_dropped": stats.get("dns_dropped", 0),
    }
    if outcome.drops is not None:
        data["drops"] = outcome.drops
    if outcome.gateway_error:
        data["gateway_error"] = outcome.gateway_error
    if outcome.failed:
        data["gateway_failed"] = True
    with EventWriter(db, signer) as writer:
        writer.emit(Event(session=session, kind=Kind.SESSION_END, ts=time.time(), data=data))
        writer.seal(session)  # the signed checkpoint: the session's last record


def _counts_from_log(db: Path, session: str) -> dict[str, int]:
    from corridor.audit.events import ALLOW, DENY
    from corridor.audit.rows import ROW_CONN, ROW_DNS, connection_rows

    rows = connection_rows(read_events(db, session=session))
    conns = [row for row in rows if row.kind == ROW_CONN]
    queries = [row for row in rows if row.kind == ROW_DNS]
    return {
        "allowed": sum(row.decision == ALLOW for row in conns),
        "blocked": sum(row.decision == DENY for row in conns),
        "dns": len(queries),
        "dns_refused": sum(row.decision == DENY for row in queries),
    }


def make_trust(session: str, upstream_cas: tuple[Path, ...]) -> tuple[SessionCA, Path, dict]:
    """The session CA (in memory only) and the trust files the sandbox reads it from.

    The files (system roots, --upstream-ca certificates and the session CA: all public)
    go in a fresh 0700 directory, bound read-only at TRUST_MOUNT; returns the CA, that
    directory (the caller removes it at the end) and the trust variables for the sandbox.
    """
    from corridor.gateway.tlsca import SessionCA
    from corridor.sandbox.trust import write_trust

    ca = SessionCA.generate(session)
    parent = Path(tempfile.mkdtemp(prefix="corridor-trust-"))
    try:
        trust = write_trust(
            parent / "trust",
            ca.cert_pem(),
            sandbox_root=TRUST_MOUNT,
            extra_ca_pems=[p.read_bytes() for p in upstream_cas],
        )
    except BaseException:
        shutil.rmtree(parent, ignore_errors=True)
        raise
    return ca, parent, trust.env


def write_views(views: list[View]) -> Path:
    """The filtered configuration copies in a fresh 0700 directory (`views/N` for the
    N-th view), bound read-only into the sandbox; the caller removes it at the end."""
    parent = Path(tempfile.mkdtemp(prefix="corridor-views-"))
    try:
        directory = parent / "views"
        directory.mkdir(mode=0o755)
        for i, view in enumerate(views):
            (directory / str(i)).write_text(view.text, encoding="utf-8", errors="surrogateescape")
    except BaseException:
        shutil.rmtree(parent, ignore_errors=True)
        raise
    return parent


def check_no_secret(broker: Broker, env: dict[str, str], command: list[str]) -> None:
    """Refuse to start when a real credential value would reach the sandbox."""
    names = broker.values_in(env)
    if names:
        raise UserError(
            f"the sandbox environment would hold a real credential value in {', '.join(names)}",
            hint="drop that variable from --pass-env; the sandbox gets placeholders only",
        )
    if broker.values_in({str(i): arg for i, arg in enumerate(command)}):
        raise UserError(
            "the command line holds a real credential value",
            hint="pass the credential's variable name instead; the sandbox gets a placeholder",
        )


def inspects(policy: Policy | CompiledPolicy) -> bool:
    """Whether anything is inspected (a rule asks, or a credential is bound to some host):
    the session then needs a CA."""
    return bool(policy.credentials) or any(wants_inspection(rule) for rule in policy.allow)


def _exit_code(status: int) -> int:
    # Popen.wait gives -N for death by signal N; shells report 128+N.
    return 128 - status if status < 0 else status


def _user_name() -> str:
    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return str(os.getuid())


def print_summary(line: str) -> None:
    print(line, file=sys.stderr)
