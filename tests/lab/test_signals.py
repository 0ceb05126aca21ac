"""Ctrl-C, SIGTERM and SIGHUP sent to corridor reach the contained command."""

from __future__ import annotations

import signal
import sys

import pytest

pytestmark = pytest.mark.lab


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGHUP])
def test_signal_is_relayed_to_the_command(lab, tmp_path, sig):
    ws = tmp_path / "ws"
    ws.mkdir()
    script = (
        f"trap 'echo got-{sig.name}; exit 42' {sig.name.removeprefix('SIG')}; "
        "echo ready; while :; do sleep 0.1; done"
    )
    argv = [
        sys.executable,
        "-m",
        "corridor",
        "run",
        "-q",
        "--state-dir",
        str(tmp_path / "st"),
        "--workspace",
        str(ws),
        "--",
        "sh",
        "-c",
        script,
    ]
    p = lab.popen(argv, cwd=str(ws))
    assert p.stdout.readline().strip() == "ready"
    p.send_signal(sig)
    out, err = p.communicate(timeout=20)
    assert f"got-{sig.name}" in out
    assert p.returncode == 42, err
