"""The CLI's quick exit (cli.leave) and its lazily imported commands."""

from __future__ import annotations

import os
import subprocess
import sys

import click
import pytest

from corridor import cli


@pytest.mark.parametrize(
    ("case", "code", "status", "stderr"),
    [
        ("None is success", None, 0, ""),
        ("zero", 0, 0, ""),
        ("the command's code", 3, 3, ""),
        ("signal-style code", 130, 130, ""),
        ("a bool is an int", True, 1, ""),
        ("a message is printed, status 1", "corridor: gone", 1, "corridor: gone\n"),
    ],
)
def test_exit_status_is_the_interpreters(capsys, case, code, status, stderr) -> None:
    assert cli.exit_status(code) == status, case
    assert capsys.readouterr().err == stderr, case


def python(code: str, **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=30, **kwargs
    )


def test_leave_runs_the_exit_handlers_and_flushes_with_the_status() -> None:
    r = python(
        "import atexit, sys\n"
        "from corridor.cli import leave\n"
        "atexit.register(lambda: print('handler ran'))\n"
        "print('buffered', end=' ')\n"
        "sys.stderr.write('err buffered')\n"
        "leave(7)\n"
    )
    assert (r.returncode, r.stdout, r.stderr) == (7, "buffered handler ran\n", "err buffered")


def test_leave_waits_for_a_running_thread_as_a_normal_exit_does() -> None:
    r = python(
        "import threading, time\n"
        "from corridor.cli import leave\n"
        "threading.Thread(target=lambda: (time.sleep(0.2), print('thread done'))).start()\n"
        "leave(4)\n"
    )
    assert (r.returncode, r.stdout) == (4, "thread done\n")


def test_leave_reports_a_failed_flush_as_the_interpreter_does() -> None:
    # stdout is a pipe whose reader has gone by the time leave() flushes it.
    proc = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys\n"
            "from corridor.cli import leave\n"
            "sys.stdin.readline()\n"
            "print('x' * 100)\n"
            "leave(0)\n",
        ],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
        # Buffered, as by default: the write fails only when leave() flushes.
        env={k: v for k, v in os.environ.items() if k != "PYTHONUNBUFFERED"},
    )
    proc.stdout.close()
    proc.stdin.write("go\n")
    proc.stdin.close()
    assert proc.wait(timeout=30) == cli.EXIT_FLUSH_FAILED


def test_the_audit_and_policy_commands_load_only_when_used() -> None:
    r = python(
        "import sys\n"
        "import corridor.cli\n"
        "print(sorted(m for m in sys.modules if m.startswith('corridor.cli_')))\n"
    )
    assert r.stdout == "[]\n", r.stderr


def test_every_lazy_command_is_listed_and_found() -> None:
    ctx = click.Context(cli.cli)
    assert set(cli.LAZY_COMMANDS) <= set(cli.cli.list_commands(ctx))
    assert cli.cli.list_commands(ctx) == sorted(cli.cli.list_commands(ctx))
    for name in cli.LAZY_COMMANDS:
        command = cli.cli.get_command(ctx, name)
        assert command is not None and command.name == name
    assert cli.cli.get_command(ctx, "frob") is None
