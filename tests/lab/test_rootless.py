"""corridor run by an unprivileged user (rootless: bwrap creates the user namespace).

The test's own interpreter may live where an unprivileged user cannot read (e.g. under
/root), so corridor and its dependencies are copied to a world-readable directory and
run with the system's python3 as `nobody`.
"""

from __future__ import annotations

import os
import shutil
import site
import sys
from pathlib import Path

import pytest
from tests.lab.config import CORRIDOR_LAB_FLAGS

import corridor

pytestmark = pytest.mark.lab

NOBODY = 65534
SYSTEM_PYTHON = "/usr/bin/python3"
SKIP_PACKAGES = {"pip", "setuptools", "_pytest", "pytest", "hypothesis", "__pycache__"}


@pytest.fixture(scope="module")
def rootless_env(tmp_path_factory) -> dict[str, str]:
    if not os.path.exists(SYSTEM_PYTHON):
        pytest.skip(f"rootless test needs {SYSTEM_PYTHON} (apt-get install python3)")
    base = tmp_path_factory.mktemp("rootless")
    lib = base / "lib"
    lib.mkdir()
    for sp in site.getsitepackages():
        for entry in Path(sp).iterdir():
            if entry.name in SKIP_PACKAGES or entry.name.endswith((".pth", ".dist-info")):
                continue
            dest = lib / entry.name
            if entry.is_dir():
                shutil.copytree(
                    entry, dest, dirs_exist_ok=True, ignore=shutil.ignore_patterns("__pycache__")
                )
            else:
                shutil.copy2(entry, dest)
    shutil.copytree(
        Path(corridor.__file__).parent,
        lib / "corridor",
        dirs_exist_ok=True,
        ignore=shutil.ignore_patterns("__pycache__"),
    )
    home = base / "home"
    (home / ".ssh").mkdir(parents=True)
    (home / ".ssh" / "id_rsa").write_text("NOBODY PRIVATE KEY\n")
    # Shown filtered (sandbox/views.py): the name stays, the header with a token goes.
    (home / ".gitconfig").write_text(
        "[user]\n\tname = Nobody\n[http]\n\textraHeader = X-Token: NOBODY-GIT-TOKEN\n"
    )
    ws = base / "ws"
    ws.mkdir()
    for p in (base, *base.rglob("*")):
        os.chmod(p, 0o755 if p.is_dir() else 0o644)
    os.chown(home, NOBODY, NOBODY)
    os.chown(home / ".ssh", NOBODY, NOBODY)
    os.chown(home / ".gitconfig", NOBODY, NOBODY)
    os.chown(ws, NOBODY, NOBODY)
    # tmp_path_factory's parents are 0700 for root: open the path down to `base`.
    for parent in base.parents:
        if str(parent).startswith(str(Path(tmp_path_factory.getbasetemp()).parent)):
            os.chmod(parent, os.stat(parent).st_mode | 0o711)
    return {
        "PYTHONPATH": str(lib),
        "HOME": str(home),
        "WS": str(ws),
        "BASE": str(base),
        "PATH": "/usr/local/bin:/usr/bin:/bin",
    }


def test_rootless_run_is_contained_and_runs_as_the_user(lab, rootless_env):
    ws = rootless_env["WS"]
    state = str(Path(rootless_env["BASE"]) / "state")
    os.makedirs(state, exist_ok=True)
    os.chown(state, NOBODY, NOBODY)
    script = (
        "id -u; grep -E 'CapEff|NoNewPrivs' /proc/self/status; "
        "cat ~/.ssh/id_rsa 2>&1 | head -1; echo data > out.txt; "
        "git config --global user.name; cat ~/.gitconfig | grep -c NOBODY-GIT-TOKEN; "
        "git config --global user.email n@agent.test && git config --global user.email; "
        "curl -sS -m 10 http://allowed.test/; curl -sS -m 10 -o /dev/null "
        "-w '%{http_code}\\n' http://denied.test/"
    )
    env = {k: v for k, v in rootless_env.items() if k not in ("WS", "BASE")}
    with lab.capture() as cap:
        r = lab.run(
            [
                SYSTEM_PYTHON,
                "-m",
                "corridor",
                "run",
                *CORRIDOR_LAB_FLAGS,  # the lab's services live in documentation ranges
                "--state-dir",
                state,
                "--allow",
                "allowed.test",
                "--",
                "sh",
                "-c",
                script,
            ],
            user=NOBODY,
            env=env,
            cwd=ws,
            timeout=60,
        )
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    assert lines[0] == str(NOBODY)
    assert "CapEff:\t0000000000000000" in r.stdout and "NoNewPrivs:\t1" in r.stdout
    assert "NOBODY PRIVATE KEY" not in r.stdout
    assert lines[lines.index("Nobody") :][:3] == ["Nobody", "0", "n@agent.test"]
    assert "hello from allowed.test" in r.stdout
    assert lines[-1] == "403"
    out = Path(ws) / "out.txt"
    assert out.read_text() == "data\n" and out.stat().st_uid == NOBODY
    assert cap.catchall() == []
    assert sys.executable  # the root test interpreter was not used by the sandbox
