"""A unix socket bound in another network namespace, at a path the sandbox can see.

Its listing is in that namespace's /proc/net/unix, not in corridor's (a container
runtime's socket, another test run's): corridor must still find it and mask it.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from tests.lab.config import CORRIDOR_LAB_FLAGS, SANDBOX_PYTHON
from tests.lab.harness import Lab

pytestmark = pytest.mark.lab

# Outside /tmp, /run and /var/tmp (replaced inside) and outside the home: visible as-is.
SOCKET_DIR = Path(f"/var/lib/corridor-test-netns-{os.getpid()}")
# Accepts forever, writing one line per connection to the log (argv: socket, log).
ACCEPTER = (
    "import socket, sys\n"
    "s = socket.socket(socket.AF_UNIX)\n"
    "s.bind(sys.argv[1]); s.listen()\n"
    "import os; os.chmod(sys.argv[1], 0o666)\n"
    "print('ready', flush=True)\n"
    "while True:\n"
    "    c, _ = s.accept()\n"
    "    with open(sys.argv[2], 'a') as f:\n"
    "        f.write('accepted\\n')\n"
    "    c.close()\n"
)
PROBE = (
    "import socket, sys\n"
    "s = socket.socket(socket.AF_UNIX)\n"
    "try:\n"
    "    s.connect(sys.argv[1]); print('ESCAPED', sys.argv[1])\n"
    "except OSError as e:\n"
    "    print('BLOCKED', sys.argv[1], e.strerror)\n"
)


@pytest.fixture
def foreign_socket(tmp_path: Path):
    """(socket path, accept log) of a listener in a network namespace of its own."""
    if shutil.which("unshare") is None:
        pytest.skip("needs unshare(1)")
    SOCKET_DIR.mkdir(mode=0o755)
    path, accepted = SOCKET_DIR / "runtime.sock", tmp_path / "accepted.log"
    proc = subprocess.Popen(
        ["unshare", "--net", sys.executable, "-c", ACCEPTER, str(path), str(accepted)],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None and proc.stdout.readline() == "ready\n"
        yield path, accepted
    finally:
        proc.kill()
        proc.wait()
        shutil.rmtree(SOCKET_DIR, ignore_errors=True)


def accepted_count(log: Path) -> int:
    return len(log.read_text().splitlines()) if log.exists() else 0


def test_a_socket_of_another_network_namespace_is_masked(
    lab: Lab, tmp_path: Path, foreign_socket: tuple[Path, Path]
) -> None:
    path, accepted = foreign_socket
    # Control: by its path the socket is live, from corridor's own namespace too.
    with socket.socket(socket.AF_UNIX) as s:
        s.connect(str(path))
    deadline = time.monotonic() + 5
    while accepted_count(accepted) < 1 and time.monotonic() < deadline:
        time.sleep(0.02)
    assert accepted_count(accepted) == 1
    ws = tmp_path / "ws"
    ws.mkdir()
    r = lab.run(
        [sys.executable, "-m", "corridor", "run", *CORRIDOR_LAB_FLAGS, "--state-dir",
         str(tmp_path / "state"), "--workspace", str(ws), "--",
         SANDBOX_PYTHON, "-c", PROBE, str(path)],
        cwd=str(ws),
    )  # fmt: skip
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith(f"BLOCKED {path}"), r.stdout
    time.sleep(0.2)
    assert accepted_count(accepted) == 1  # only the control's
