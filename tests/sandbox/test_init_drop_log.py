"""The init's drop log: without CAP_NET_ADMIN it is refused, and the init falls back."""

from __future__ import annotations

import os
import shutil
import subprocess

import pytest

from corridor.sandbox.launch import INIT_SCRIPT

NOBODY = 65534
SYSTEM_PYTHON = "/usr/bin/python3"
# Load init.py as a module (its __main__ guard keeps main() from running) and try.
PROBE = (
    "import sys, types\n"
    "m = types.ModuleType('corridor_init')\n"
    "exec(compile(sys.argv[1], 'init.py', 'exec'), m.__dict__)\n"
    "print(m.open_drop_log(7, 128))\n"
)


def test_without_cap_net_admin_there_is_no_drop_log() -> None:
    setpriv = shutil.which("setpriv")
    if os.geteuid() != 0 or setpriv is None or not os.path.exists(SYSTEM_PYTHON):
        pytest.skip("needs root (to become nobody), setpriv and python3")
    r = subprocess.run(
        [setpriv, f"--reuid={NOBODY}", f"--regid={NOBODY}", "--clear-groups",
         SYSTEM_PYTHON, "-I", "-S", "-c", PROBE, INIT_SCRIPT.read_text()],
        capture_output=True, text=True, cwd="/",
    )  # fmt: skip
    assert r.returncode == 0, r.stderr
    assert r.stdout == "None\n"
