"""The bubblewrap command line for one sandbox.

bwrap gives the namespaces (user, mount, pid, ipc, uts, net, cgroup), a read-only view
of `/`, fresh /dev, /proc and /tmp, a masked /run (host sockets such as a Docker API
socket live there and a read-only mount does not stop connect()), the home view from
home.py and the workspace read-write. The in-sandbox init (init.py) runs as PID 1 with
just the capabilities it needs to set up the network and the home view (home.py), and
drops them before the command runs.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

# What the init needs inside, and nothing more: NET_ADMIN for lo/routes/nft,
# NET_BIND_SERVICE for the resolver on port 53, SETFCAP to write the nested uid_map
# (rootless), SYS_ADMIN + DAC_OVERRIDE to mount the home overlay and the masks (overlayfs
# in a user namespace refuses the mount without DAC_OVERRIDE). All are dropped before
# the command runs; when rootless they only ever applied inside the sandbox's namespace.
INIT_CAPS = (
    "CAP_NET_ADMIN",
    "CAP_NET_BIND_SERVICE",
    "CAP_SETFCAP",
    "CAP_SYS_ADMIN",
    "CAP_DAC_OVERRIDE",
)
SANDBOX_HOSTNAME = "corridor"
# Where the session's trust files (CA bundle with the session CA) appear inside: under the
# private /run tmpfs, read-only, so the sandbox can read but never replace them.
TRUST_MOUNT = "/run/corridor/trust"
# Where the filtered copies of configuration files (sandbox/views.py) appear for the init,
# which puts each in the home view in place of the original.
VIEWS_MOUNT = "/run/corridor/views"


@dataclass(frozen=True, slots=True)
class SandboxSpec:
    workspace: Path
    home: Path
    cwd: Path
    rootless: bool  # invoked by a non-root user: bwrap must create the user namespace
    hidden: tuple[Path, ...] = ()  # directories masked by an empty tmpfs (corridor's state)
    trust_dir: Path | None = None  # the session's trust files, bound at TRUST_MOUNT
    views_dir: Path | None = None  # filtered configuration copies, bound at VIEWS_MOUNT
    # (host path, file name in views_dir): what the init shows in place of each original
    views: tuple[tuple[str, str], ...] = ()


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
    if spec.trust_dir is not None:
        argv += ["--ro-bind", str(spec.trust_dir), TRUST_MOUNT]  # after the /run tmpfs
    if spec.views_dir is not None:
        argv += ["--ro-bind", str(spec.views_dir), VIEWS_MOUNT]
    # The home view (overlay + masks) is mounted by the init, which also puts the
    # workspace back on top when it lies inside the home. Bound here read-only so that a
    # home under a path the sandbox replaces (/tmp, /run) is still there to overlay.
    if spec.home.is_dir():
        argv += ["--ro-bind", str(spec.home), str(spec.home)]
    argv += ["--bind", str(spec.workspace), str(spec.workspace)]
    argv += ["--chdir", str(spec.cwd), "--uid", "0", "--gid", "0"]
    for cap in INIT_CAPS:
        argv += ["--cap-add", cap]
    argv += ["--", *init_argv]
    return argv
