"""Running escape attempts in the lab: many attempts per corridor run, one window each.

`run_batch` starts one `corridor run` whose command is driver.py; the driver runs the
attempts one by one and, before and after each, waits for this side to mark the world's
logs. So every attempt gets exactly the DNS queries, web requests and catch-all records
the world saw while it ran, and the gateway events logged in its time window, while the
batch pays for one sandbox start only.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tests.lab.config import CORRIDOR_LAB_FLAGS, SANDBOX_PYTHON
from tests.lab.harness import Lab
from tests.lab.records import Mark

HERE = Path(__file__).resolve().parent
CORRIDOR = [sys.executable, "-m", "corridor"]
POLL_S = 0.005
BATCH_TIMEOUT_S = 300.0

Records = list[dict[str, Any]]


@dataclass(frozen=True)
class Attempt:
    """One way out tried from inside the sandbox.

    Exactly one of `py` (run with the sandbox's Python, after `from sandbox_lib import *`)
    or `sh` (run by sh; $PY is the Python). It prints `BLOCKED ...` per closed way and
    `ESCAPED ...` per open one. `reason`: a substring some refusal logged in the attempt's
    window must carry. `world_hosts`: hosts the world may serve requests for during the
    attempt (only controls and partial attempts need any). `after`: a command line that
    must not be running once the session is over.
    """

    name: str
    py: str | None = None
    sh: str | None = None
    reason: str | None = None
    world_hosts: tuple[str, ...] = ()
    after: str | None = None
    timeout: float = 30.0

    def argv(self) -> list[str]:
        if self.py is not None:
            return [SANDBOX_PYTHON, "-c", "from sandbox_lib import *\n" + self.py]
        assert self.sh is not None
        return ["sh", "-c", self.sh]


@dataclass
class Outcome:
    """What one attempt printed, and what the world and the gateway saw meanwhile."""

    rc: int | None
    out: str
    err: str
    t0: float
    t1: float
    dns: Records = field(default_factory=list)
    http: Records = field(default_factory=list)
    catchall: Records = field(default_factory=list)
    events: Records = field(default_factory=list)

    def refusals(self) -> Records:
        return [e for e in self.events if e.get("decision") == "deny"]


@dataclass
class Batch:
    outcomes: dict[str, Outcome]
    returncode: int
    stderr: str
    catchall: Records  # the whole run, start to end
    events: Records


def run_batch(
    lab: Lab,
    workdir: Path,
    attempts: Sequence[Attempt],
    args: Sequence[str],
    env: Mapping[str, str | None] | None = None,
) -> Batch:
    """Run `attempts` in one corridor session started with `args` (policy flags)."""
    ws = workdir / "ws"
    ctl = ws / "ctl"
    state = workdir / "state"
    ctl.mkdir(parents=True)
    shutil.copy(lab.ca_pem, ws / "lab-ca.pem")
    shutil.copy(HERE / "sandbox_lib.py", ws / "sandbox_lib.py")
    shutil.copy(HERE / "driver.py", ws / "driver.py")
    plan = [{"name": _key(a.name), "argv": a.argv(), "timeout": a.timeout} for a in attempts]
    (ctl / "plan.json").write_text(json.dumps(plan))
    argv = [*CORRIDOR, "run", *CORRIDOR_LAB_FLAGS, "--state-dir", str(state), "--workspace",
            str(ws), *args, "--", SANDBOX_PYTHON, "driver.py", str(ctl)]  # fmt: skip
    begin = lab.mark()
    proc = lab.popen(argv, env=env, cwd=str(ws))
    marks: dict[str, tuple[Mark, Mark]] = {}
    try:
        for a in attempts:
            key = _key(a.name)
            start = _handshake(lab, proc, ctl, key, "start")
            end = _handshake(lab, proc, ctl, key, "end")
            marks[key] = (start, end)
        _, err = proc.communicate(timeout=BATCH_TIMEOUT_S)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    events = _events(lab, state)
    outcomes = {}
    for a in attempts:
        key = _key(a.name)
        result = json.loads((ctl / f"{key}.result").read_text())
        start, end = marks[key]
        outcomes[a.name] = Outcome(
            rc=result["rc"],
            out=result["out"],
            err=result["err"],
            t0=result["t0"],
            t1=result["t1"],
            dns=_between(lab.dns_queries, start, end),
            http=_between(lab.http_requests, start, end),
            catchall=_between(lab.catchall, start, end),
            events=[e for e in events if result["t0"] <= e["ts"] <= result["t1"]],
        )
    return Batch(outcomes, proc.returncode, err, lab.catchall(since=begin), events)


def _key(name: str) -> str:
    return "".join(c if c.isalnum() else "_" for c in name)


def _handshake(lab: Lab, proc: subprocess.Popen[str], ctl: Path, key: str, what: str) -> Mark:
    signal = ctl / f"{key}.{what}"
    deadline = time.monotonic() + BATCH_TIMEOUT_S
    while not signal.exists():
        if proc.poll() is not None:
            _, err = proc.communicate()
            raise AssertionError(f"corridor ended before {key}.{what}: {proc.returncode}\n{err}")
        if time.monotonic() > deadline:
            raise AssertionError(f"no {key}.{what} within {BATCH_TIMEOUT_S}s")
        time.sleep(POLL_S)
    mark = lab.mark()  # syncs with the world first: all it got so far is logged
    (ctl / f"{key}.{what}-ok").touch()
    return mark


def _between(read: Callable[..., Records], start: Mark, end: Mark) -> Records:
    after_start = read(since=start)
    after_end = read(since=end)
    return after_start[: len(after_start) - len(after_end)]


def _events(lab: Lab, state: Path) -> Records:
    r = lab.run([*CORRIDOR, "log", "--json", "--state-dir", str(state)])
    assert r.returncode == 0, r.stderr
    return [json.loads(line) for line in r.stdout.splitlines() if line.strip()]


def running(pattern: str) -> list[str]:
    """Processes anywhere on the machine whose command line holds `pattern`."""
    r = subprocess.run(["pgrep", "-af", pattern], capture_output=True, text=True)
    return [line for line in r.stdout.splitlines() if "pgrep" not in line]


def fake_home(base: Path, marker: str) -> Path:
    """A home holding secrets (each containing `marker`) where tools look for them."""
    home = base / "home"
    secrets = {
        ".ssh/id_ed25519": f"-----BEGIN OPENSSH PRIVATE KEY----- {marker}",
        ".aws/credentials": f"[default]\naws_secret_access_key = {marker}",
        ".netrc": f"machine git.test login me password {marker}",
        ".docker/config.json": f'{{"auths": {{"r.test": {{"auth": "{marker}"}}}}}}',
        ".kube/config": f"users:\n- user:\n    token: {marker}",
        ".config/gh/hosts.yml": f"github.com:\n  oauth_token: {marker}",
        ".git-credentials": f"https://me:{marker}@git.test",
        ".npmrc": f"//registry.test/:_authToken={marker}",
        ".pypirc": f"[pypi]\npassword = {marker}",
    }
    for rel, content in secrets.items():
        path = home / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(content + "\n")
    (home / "notes.txt").write_text("not a secret\n")
    os.chmod(home, 0o755)
    return home
