"""Which host unix sockets the init masks: listening pathname sockets from /proc/net/unix."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys

import pytest

from corridor.sandbox.sockets import (
    PROC_NET_UNIX,
    host_socket_paths,
    is_socket,
    listening_socket_paths,
    unix_tables,
)

HEADER = "Num       RefCount Protocol Flags    Type St Inode Path\n"
# fmt: off
TABLE = HEADER + "".join([
    "0000000000000000: 00000002 00000000 00010000 0001 01 20001 /run/docker.sock\n",
    "0000000000000000: 00000002 00000000 00010000 0001 01 20002 /home/u/.colima/d.sock\n",
    "0000000000000000: 00000002 00000000 00010000 0001 01 20003 @/tmp/.X11-unix/X0\n",
    "0000000000000000: 00000003 00000000 00000000 0001 03 20004 /run/systemd/client\n",
    "0000000000000000: 00000002 00000000 00000000 0002 01 20005 /run/systemd/notify\n",
    "0000000000000000: 00000002 00000000 00010000 0001 01 20006\n",
    "0000000000000000: 00000002 00000000 00010000 0001 01 20007 /srv/with space.sock\n",
    "0000000000000000: 00000002 00000000 00010000 0001 01 20008 /run/docker.sock\n",
    "garbage line\n",
])
# fmt: on


def test_only_listening_pathname_sockets_are_kept() -> None:
    assert listening_socket_paths(TABLE) == [
        "/home/u/.colima/d.sock",
        "/run/docker.sock",
        "/srv/with space.sock",
    ]


def test_empty_table() -> None:
    assert listening_socket_paths(HEADER) == []


def test_this_machine_lists_a_socket_it_listens_on(tmp_path) -> None:
    import socket

    path = str(tmp_path / "probe.sock")
    with socket.socket(socket.AF_UNIX) as s:
        s.bind(path)
        s.listen()
        assert path in host_socket_paths()


# ---- every network namespace, not only corridor's ----------------------------------------

BINDER = (
    "import socket, sys\n"
    "s = socket.socket(socket.AF_UNIX)\n"
    "s.bind(sys.argv[1]); s.listen()\n"
    "print('ready', flush=True)\n"
    "sys.stdin.read()\n"
)


@pytest.fixture
def other_netns_socket(tmp_path):
    """A listening socket bound at a path by a process in a network namespace of its own."""
    if os.geteuid() != 0 or shutil.which("unshare") is None:
        pytest.skip("needs root and unshare(1) to create a network namespace")
    path = str(tmp_path / "other-netns.sock")
    proc = subprocess.Popen(
        ["unshare", "--net", sys.executable, "-c", BINDER, path],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None and proc.stdout.readline() == "ready\n"
    try:
        yield path, proc.pid
    finally:
        proc.kill()
        proc.wait()


def test_a_socket_bound_in_another_network_namespace_is_found(other_netns_socket) -> None:
    path, _pid = other_netns_socket
    with open(PROC_NET_UNIX) as f:
        assert path not in listening_socket_paths(f.read())  # what the old reading missed
    assert path in host_socket_paths()


def test_a_listed_path_that_is_no_socket_here_is_left_out(other_netns_socket) -> None:
    path, _pid = other_netns_socket
    os.unlink(path)
    with open(path, "w") as f:
        f.write("a regular file now")
    assert path not in host_socket_paths()
    assert not is_socket(path)


def test_each_namespace_is_read_once(other_netns_socket) -> None:
    path, _pid = other_netns_socket
    tables = unix_tables()
    assert sum(path in t for t in tables) == 1
    assert len(tables) >= 2  # ours and the other one, at least


def test_an_unreadable_proc_gives_nothing(tmp_path) -> None:
    assert host_socket_paths(str(tmp_path / "no-proc")) == []
