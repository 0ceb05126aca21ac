"""The bubblewrap command line for one sandbox.

bwrap gives the namespaces (user, mount, pid, ipc, uts, net, cgroup), a read-only view
of `/`, fresh /dev, /proc and /tmp, a masked /run (host sockets such as a Docker API
socket live there and a read-only mount does not stop connect()), the home view from
home.py and the workspace read-write. The in-sandbox init (init.py) runs as PID 1 with
just the capabilities it needs to set up the network, and drops them before the
command runs.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from corridor.sandbox.home import SCRATCH_PATHS, SECRET_PATHS, HomeEntry, plan_home

# What the init needs inside, and nothing more: NET_ADMIN for lo/routes/nft,
# NET_BIND_SERVICE for the resolver on port 53, SETFCAP to write the nested uid_map
# (rootless), SETUID/SETGID are implied by being uid 0 in the namespace.
INIT_CAPS = ("CAP_NET_ADMIN", "CAP_NET_BIND_SERVICE", "CAP_SETFCAP")
SANDBOX_HOSTNAME = "corridor"


@dataclass(frozen=True, slots=True)
class SandboxSpec:
    workspace: Path
    home: Path
    cwd: Path
    rootless: bool  # invoked by a non-root user: bwrap must create the user namespace


def home_listing(home: Path) -> tuple[list[HomeEntry], list[str]]:
    """Top-level entries of `home`, and which nested secret/scratch paths exist."""
    entries: list[HomeEntry] = []
    try:
        with os.scandir(home) as it:
            for e in it:
                entries.append(HomeEntry(e.name, e.is_dir(follow_symlinks=False)))
    except FileNotFoundError:
        pass
    nested = [
        rel for rel in (*SECRET_PATHS, *SCRATCH_PATHS) if "/" in rel and os.path.lexists(home / rel)
    ]
    return entries, nested


def bwrap_argv(bwrap: str, spec: SandboxSpec, init_argv: list[str]) -> list[str]:
    """argv that starts `init_argv` (the in-sandbox init) inside a fresh sandbox."""
    argv = [bwrap]
    if spec.rootless:
        argv.append("--unshare-user")
    argv += [
        "--unshare-all",
        "--die-with-parent",
        "--new-session",
        "--as-pid-1",
        "--hostname",
        SANDBOX_HOSTNAME,
        "--ro-bind",
        "/",
        "/",
        "--dev",
        "/dev",
        "--proc",
        "/proc",
        "--tmpfs",
        "/tmp",
        "--tmpfs",
        "/run",
        "--tmpfs",
        "/var/tmp",
    ]
    if os.path.islink("/var/run") is False and os.path.isdir("/var/run"):
        argv += ["--tmpfs", "/var/run"]
    entries, nested = home_listing(spec.home)
    for m in plan_home(str(spec.home), entries, nested):
        if m.op == "tmpfs":
            argv += ["--tmpfs", m.path]
        elif m.op == "ro-bind":
            argv += ["--ro-bind", m.path, m.path]
        elif os.path.isdir(m.path):  # mask a nested secret directory
            argv += ["--tmpfs", m.path, "--chmod", "0000", m.path]
        else:  # mask a nested secret file
            argv += ["--ro-bind", "/dev/null", m.path]
    argv += ["--bind", str(spec.workspace), str(spec.workspace)]
    argv += ["--chdir", str(spec.cwd), "--uid", "0", "--gid", "0"]
    for cap in INIT_CAPS:
        argv += ["--cap-add", cap]
    argv += ["--", *init_argv]
    return argv
