"""The home inside the sandbox: readable, writable everywhere, thrown away afterwards."""

from __future__ import annotations

import sys

import pytest

pytestmark = pytest.mark.lab


def test_home_writes_are_throwaway_and_secrets_masked(lab, tmp_path):
    home = tmp_path / "home"
    (home / ".agent-state").mkdir(parents=True)
    (home / ".agent-state" / "config.json").write_text('{"v": 1}\n')
    (home / ".aws").mkdir()
    (home / ".aws" / "credentials").write_text("aws_secret_access_key = hunter2\n")
    (home / ".git-credentials").write_text("https://u:tok@git.test\n")
    ws = home / "project"  # the usual layout: the workspace inside the home
    ws.mkdir()
    script = (
        "cat ~/.agent-state/config.json; echo '{\"v\": 2}' > ~/.agent-state/config.json; "
        "cat ~/.agent-state/config.json; mkdir -p ~/.cache/tool && echo c > ~/.cache/tool/x; "
        "ls -A ~/.aws | wc -l; cat ~/.git-credentials | wc -c; echo ws > out.txt; echo end"
    )
    r = lab.run(
        [
            sys.executable,
            "-m",
            "corridor",
            "run",
            "-q",
            "--state-dir",
            str(tmp_path / "st"),
            "--",
            "sh",
            "-c",
            script,
        ],
        env={"HOME": str(home)},
        cwd=str(ws),
    )
    assert r.returncode == 0, r.stderr
    assert r.stdout.split() == ['{"v":', "1}", '{"v":', "2}", "0", "0", "end"]
    # Nothing the command wrote in the home survived; the workspace write did.
    assert (home / ".agent-state" / "config.json").read_text() == '{"v": 1}\n'
    assert not (home / ".cache").exists()
    assert (ws / "out.txt").read_text() == "ws\n"
    assert "hunter2" in (home / ".aws" / "credentials").read_text()  # untouched on the host
