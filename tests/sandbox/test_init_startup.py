"""The init's lean start: what it imports, and the parts that stand in for heavier modules
(the marshalled configuration, `ip -batch`, posix_spawn'd tools, `which`)."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from corridor.sandbox import init
from corridor.sandbox.launch import INIT_BOOT, INIT_SCRIPT, code_message, config_message

# The sandbox runs the init with the real interpreter behind the venv (launch.py).
INTERPRETER = os.path.realpath(sys.executable)
# Modules whose import cost the init's start used to pay (init.py, START-UP).
HEAVY = (
    "enum",
    "re",
    "json",
    "subprocess",
    "shutil",
    "contextlib",
    "socket",
    "signal",
    "threading",
)
# Loads init.py as the sandbox does (source on the command line, -I -S) without running
# main(), then names the heavy modules it brought in.
LOADED_PROBE = (
    "import sys, types\n"
    "m = types.ModuleType('corridor_init')\n"
    "exec(compile(sys.argv[1], 'init.py', 'exec'), m.__dict__)\n"
    "print(' '.join(sorted(set(sys.argv[2].split()) & set(sys.modules))))\n"
)


def test_the_init_loads_none_of_the_heavy_modules() -> None:
    r = subprocess.run(
        [INTERPRETER, "-I", "-S", "-c", LOADED_PROBE, INIT_SCRIPT.read_text(), " ".join(HEAVY)],
        capture_output=True, text=True, cwd="/",
    )  # fmt: skip
    assert r.returncode == 0, r.stderr
    assert r.stdout == "\n"


def test_the_configuration_arrives_as_sent() -> None:
    cfg = {
        "command": ["git", "status", "--short"],
        "uid": 1000,
        "home": None,
        "masks": [["/home/u/.ssh", True], ["/home/u/.netrc", False]],
        "ports": {"transparent": 15001, "proxy": 3128, "dns": 53},
        "nft_rules": "table inet corridor {\n}\n" * 2000,  # more than one recv
    }
    parent, child = socket.socketpair()
    with parent, child:
        parent.sendall(config_message(cfg))
        assert init.read_config(child) == cfg


def test_ip_batch_brings_lo_up_and_routes_both_families_to_it() -> None:
    assert init.ip_batch("198.19.255.254/32", "fd63::fffe/128") == (
        "link set lo up\n"
        "route add default dev lo src 127.0.0.1\n"
        "route add ::/0 dev lo\n"
        "addr add fd63::fffe/128 dev lo nodad\n"
        "addr add 198.19.255.254/32 dev lo\n"
    )


def _executable(path: Path) -> Path:
    path.write_text("#!/bin/sh\n")
    path.chmod(0o755)
    return path


@pytest.mark.parametrize(
    ("case", "layout", "path_dirs", "expected"),
    [
        ("first executable wins", {"a": "exec", "b": "exec"}, ["a", "b"], "a"),
        ("not executable is skipped", {"a": "plain", "b": "exec"}, ["a", "b"], "b"),
        ("directory is skipped", {"a": "dir", "b": "exec"}, ["a", "b"], "b"),
        ("missing everywhere", {"a": "plain"}, ["a"], None),
        ("duplicate directory looked at once", {"a": "none", "b": "exec"}, ["a", "a", "b"], "b"),
        ("empty PATH finds nothing", {"a": "exec"}, [], None),
    ],
)
def test_which_finds_what_shutil_which_finds(
    tmp_path: Path, case: str, layout: dict, path_dirs: list[str], expected: str | None
) -> None:
    for name, kind in layout.items():
        directory = tmp_path / name
        directory.mkdir()
        if kind == "exec":
            _executable(directory / "tool")
        elif kind == "plain":
            (directory / "tool").write_text("data\n")
        elif kind == "dir":
            (directory / "tool").mkdir(mode=0o755)
    path = os.pathsep.join(str(tmp_path / d) for d in path_dirs)
    found = init.which("tool", path)
    assert found == (str(tmp_path / expected / "tool") if expected else None), case
    assert found == shutil.which("tool", path=path), case


def test_which_without_path_uses_the_system_default() -> None:
    assert init.which("sh", None) == shutil.which("sh", path=os.confstr("CS_PATH"))
    assert init.which("sh", None) is not None


def test_a_spawned_tool_reads_its_input(tmp_path: Path) -> None:
    out = tmp_path / "got"
    argv = ["/bin/sh", "-c", f"cat > {out}"]
    init.finish(argv, *init.spawn(argv, "link set lo up\n"))
    assert out.read_text() == "link set lo up\n"


# A failing tool stops the setup: the init exits 125 (os._exit), so this runs apart.
FAILING_PROBE = (
    "from corridor.sandbox import init\n"
    "argv = ['/bin/sh', '-c', 'cat >&2; exit 3', 'tool']\n"
    "init.finish(argv, *init.spawn(argv, 'Error: bad rule'))\n"
    "print('not reached')\n"
)


def test_a_failing_tool_stops_the_setup_with_its_message() -> None:
    r = subprocess.run([sys.executable, "-c", FAILING_PROBE], capture_output=True, text=True)
    assert r.returncode == init.EXIT_SETUP_FAILED
    assert r.stdout == ""
    assert r.stderr == (
        "corridor: sandbox setup: /bin/sh -c cat >&2; exit 3 tool failed: Error: bad rule\n"
    )


MISSING_PROBE = (
    "from corridor.sandbox import init\n"
    "init.spawn(['/nonexistent/ip', '-batch', '-'], '')\n"
    "print('not reached')\n"
)


def test_a_missing_tool_stops_the_setup() -> None:
    r = subprocess.run([sys.executable, "-c", MISSING_PROBE], capture_output=True, text=True)
    assert r.returncode == init.EXIT_SETUP_FAILED
    assert r.stderr == (
        "corridor: sandbox setup: /nonexistent/ip -batch - failed: No such file or directory\n"
    )


def _boot(send: bytes) -> subprocess.CompletedProcess:
    """Run INIT_BOOT as the sandbox does, with `send` then end of file on its socket."""
    parent, child = socket.socketpair()
    with parent, child:
        proc = subprocess.Popen(
            [INTERPRETER, "-I", "-S", "-c", INIT_BOOT, str(child.fileno())],
            pass_fds=[child.fileno()], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )  # fmt: skip
        child.close()
        parent.sendall(send)
        parent.shutdown(socket.SHUT_WR)
        out, err = proc.communicate(timeout=30)
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)


def test_the_boot_runs_the_shipped_code_as_main(tmp_path: Path) -> None:
    script = tmp_path / "init.py"
    script.write_text("import os, sys\nprint(__name__, os.read(int(sys.argv[1]), 100))\n")
    # What follows the code stays on the socket for the init to read.
    r = _boot(code_message(script) + b"the configuration")
    assert (r.returncode, r.stdout, r.stderr) == (0, "__main__ b'the configuration'\n", "")


def test_the_boot_runs_the_real_init(tmp_path: Path) -> None:
    # The init reads its configuration next; none comes, so it stops with its own message.
    r = _boot(code_message(INIT_SCRIPT))
    assert r.returncode == init.EXIT_SETUP_FAILED
    assert r.stderr == (
        "corridor: sandbox setup: corridor went away before sending the configuration\n"
    )


def test_the_boot_stops_when_corridor_goes_away_before_the_code() -> None:
    r = _boot(code_message(INIT_SCRIPT)[:100])
    assert r.returncode == init.EXIT_SETUP_FAILED
    assert r.stderr == "corridor: sandbox setup: corridor went away\n"


def test_the_control_socket_is_kept_from_the_tools() -> None:
    parent, child = socket.socketpair()
    with parent, child:
        fd = os.dup(child.fileno())
        os.set_inheritable(fd, True)  # as the init finds it, passed through bwrap
        ctl = init.control_socket(fd)
        try:
            assert os.get_inheritable(ctl.fileno()) is False
            ctl.sendall(b"go")
            assert parent.recv(2) == b"go"
        finally:
            ctl.close()
