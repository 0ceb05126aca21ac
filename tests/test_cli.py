"""Bad input gets one clear line and exit 2, never a traceback."""

from __future__ import annotations

import subprocess
import sys

import pytest

CORRIDOR = [sys.executable, "-m", "corridor"]


def corridor(*args: str, cwd=None) -> subprocess.CompletedProcess:
    return subprocess.run([*CORRIDOR, *args], capture_output=True, text=True, cwd=cwd, timeout=30)


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["run", "--frobnicate", "--", "true"], "No such option '--frobnicate'"),
        (["run", "--allow", "exa mple.test", "--", "true"], "--allow 'exa mple.test'"),
        (["run", "--allow", "allowed.test:99999", "--", "true"], "--allow 'allowed.test:99999'"),
        (["run", "--policy", "/nonexistent/policy.yaml", "--", "true"], "/nonexistent/policy.yaml"),
        (["run", "--workspace", "/nonexistent-dir", "--", "true"], "--workspace /nonexistent-dir"),
        (["run"], "Missing argument"),
        (["frob"], "No such command"),
    ],
)
def test_bad_input_is_one_clear_error(args, expected, tmp_path):
    r = corridor(*args, cwd=tmp_path)
    assert r.returncode == 2, r.stderr
    assert expected in r.stderr
    assert "Traceback" not in r.stderr
    assert r.stderr.startswith("corridor: error:")


def test_invalid_policy_file_names_file_line_and_field(tmp_path):
    p = tmp_path / "policy.yaml"
    p.write_text("version: 1\nallow:\n  - host: ok.test\n    ports: [70000]\n")
    r = corridor("run", "--policy", str(p), "--", "true", cwd=tmp_path)
    assert r.returncode == 2
    assert f"{p}:4:" in r.stderr
    assert "allow[0].ports[0]" in r.stderr
    assert "Traceback" not in r.stderr


def test_log_without_sessions_says_what_to_do(tmp_path):
    r = corridor("log", "--state-dir", str(tmp_path / "empty"))
    assert r.returncode == 2
    assert "no sessions recorded yet" in r.stderr
    assert "Traceback" not in r.stderr


def test_help_and_version():
    assert corridor("--help").returncode == 0
    assert "corridor" in corridor("--version").stdout


def test_state_dir_inside_the_workspace_is_refused(tmp_path):
    r = corridor(
        "run",
        "--workspace",
        str(tmp_path),
        "--state-dir",
        str(tmp_path / "st"),
        "--",
        "true",
        cwd=tmp_path,
    )
    assert r.returncode == 2
    assert "inside the workspace" in r.stderr
    assert "Traceback" not in r.stderr
