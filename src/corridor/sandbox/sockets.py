"""The host's listening unix sockets, which the sandbox must not be able to connect to.

A network namespace does not cover unix sockets bound to a path: they are files, and a
read-only view of `/` still lets `connect()` through (write permission on the socket
file is all it takes). /run, /tmp and /var/tmp are replaced wholesale, which hides the
usual ones (Docker, containerd, systemd, the user's /run/user), but daemons put sockets
elsewhere too: ~/.colima/default/docker.sock, ~/.rd/docker.sock, /var/snap/lxd/...,
password-manager agents under the home. So every listening pathname socket the host's
kernel knows of is masked: the init binds /dev/null over each one the sandbox can see.

/proc/net/unix lists the sockets of corridor's own network namespace: the one the user's
daemons run in. Parsing is pure; reading the file is the only I/O here.
"""

from __future__ import annotations

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


def host_socket_paths() -> list[str]:
    """The listening pathname sockets of this network namespace (empty if unreadable)."""
    try:
        with open(PROC_NET_UNIX) as f:
            return listening_socket_paths(f.read())
    except OSError:
        return []
