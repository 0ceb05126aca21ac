"""Which host unix sockets the init masks: listening pathname sockets from /proc/net/unix."""

from __future__ import annotations

from corridor.sandbox.sockets import host_socket_paths, listening_socket_paths

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
