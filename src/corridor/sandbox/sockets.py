"""The host's listening unix sockets, which the sandbox must not be able to connect to.

A network namespace does not cover unix sockets bound to a path: they are files, and a
read-only view of `/` still lets `connect()` through (write permission on the socket
file is all it takes). /run, /tmp and /var/tmp are replaced wholesale, which hides the
usual ones (Docker, containerd, systemd, the user's /run/user), but daemons put sockets
elsewhere too: ~/.colima/default/docker.sock, ~/.rd/docker.sock, /var/snap/lxd/...,
password-manager agents under the home. So every listening pathname socket the host's
kernel knows of is masked: the init binds /dev/null over each one the sandbox can see.

/proc/net/unix lists only the sockets of the reader's network namespace, but a socket
bound in another one (a container runtime's, a second corridor run's, a test lab's) is
just as reachable by its path. So the table is read once per network namespace on the
machine, through one process in each (/proc/PID/net/unix for one PID per distinct
/proc/PID/ns/net); as root that is all of them, rootless those of the user's own
processes (other users' namespace links cannot be read, and their sockets are theirs to
protect with file permissions). A path only counts if it is a socket in corridor's own
view of the file system: one bound in another mount namespace may not exist here.
Parsing is pure; reading /proc is the only I/O here (~10 ms for a few hundred processes).
"""

from __future__ import annotations

import os
import stat

PROC = "/proc"
PROC_NET_UNIX = "/proc/net/unix"
SO_ACCEPTCON = 0x10000  # the "listening" bit of the Flags column (__SO_ACCEPTCON)
_FIELDS_BEFORE_PATH = 7  # Num RefCount Protocol Flags Type St Inode


def listening_socket_paths(table: str) -> list[str]:
    """Paths of listening pathname sockets in a /proc/net/unix text, sorted, no repeats.

    Abstract sockets ('@name') live in the network namespace, which the sandbox does not
    share: they are left out, as are sockets that are not listening (clients, datagram
    sockets and the like have no one to accept a connect).
    """
    found: set[str] = set()
    for line in table.splitlines()[1:]:
        parts = line.split(None, _FIELDS_BEFORE_PATH)
        if len(parts) <= _FIELDS_BEFORE_PATH:
            continue  # unbound: no path
        try:
            flags = int(parts[3], 16)
        except ValueError:
            continue
        path = parts[_FIELDS_BEFORE_PATH]
        if flags & SO_ACCEPTCON and path.startswith("/"):
            found.add(path)
    return sorted(found)


def _read(path: str) -> str | None:
    try:
        with open(path) as f:
            return f.read()
    except OSError:  # gone, or not ours to read
        return None


def unix_tables(proc: str = PROC) -> list[str]:
    """The /proc/net/unix text of every network namespace this process can look into.

    Our own first, then one process's view per other namespace (namespaces are told
    apart by the device and inode of their /proc/PID/ns/net link).
    """
    tables: list[str] = []
    seen: set[tuple[int, int]] = set()
    try:
        own = os.stat(f"{proc}/self/ns/net")
        seen.add((own.st_dev, own.st_ino))
    except OSError:
        pass
    table = _read(f"{proc}/self/net/unix")
    if table is not None:
        tables.append(table)
    with os.scandir(proc) as entries:
        pids = [e.name for e in entries if e.name.isdigit()]
    for pid in pids:
        try:
            ns = os.stat(f"{proc}/{pid}/ns/net")
        except OSError:
            continue  # exited, a kernel thread, or another user's process (rootless)
        if (ns.st_dev, ns.st_ino) in seen:
            continue
        table = _read(f"{proc}/{pid}/net/unix")
        if table is not None:
            seen.add((ns.st_dev, ns.st_ino))
            tables.append(table)
    return tables


def is_socket(path: str) -> bool:
    """True when `path` names a socket file in this process's view of the file system."""
    try:
        return stat.S_ISSOCK(os.lstat(path).st_mode)
    except OSError:
        return False


def host_socket_paths(proc: str = PROC) -> list[str]:
    """Listening pathname sockets of every visible network namespace that exist here as
    socket files: sorted, no repeats (empty if /proc cannot be read)."""
    found: set[str] = set()
    try:
        tables = unix_tables(proc)
    except OSError:
        return []
    for table in tables:
        found.update(listening_socket_paths(table))
    return sorted(p for p in found if is_socket(p))
