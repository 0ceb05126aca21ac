"""Starting a sandbox and receiving the gateway's listening sockets from it.

The I/O edge of the sandbox package: find the tools, spawn bwrap with the init, take
the listener file descriptors the init sends over the control socket, and later tell
the init to start the command or relay a signal to it.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from corridor.errors import UserError
from corridor.sandbox.bwrap import SandboxSpec, bwrap_argv
from corridor.sandbox.home import home_masks, scratch_dirs
from corridor.sandbox.nft import SANDBOX_V4_LOCAL, SANDBOX_V6_LOCAL, Ports, ruleset
from corridor.sandbox.sockets import host_socket_paths

# Where the system tools live even when the user's PATH lacks the sbin directories.
TOOL_PATH = os.pathsep.join(
    [os.environ.get("PATH", ""), "/usr/local/sbin", "/usr/sbin", "/sbin", "/usr/bin", "/bin"]
)
SETUP_TIMEOUT_S = 10.0  # bwrap + init normally hand over the sockets in ~50 ms
EXPECTED_LISTENERS = ("transparent", "proxy", "dns_udp", "dns_tcp")
INIT_SCRIPT = Path(__file__).with_name("init.py")


@dataclass(frozen=True, slots=True)
class Tools:
    bwrap: str
    nft: str
    ip: str
    setpriv: str


def find_tools() -> Tools:
    """Locate bwrap, nft, ip and setpriv, or say what to install."""
    missing = {}
    found = {}
    for name, pkg in (
        ("bwrap", "bubblewrap"),
        ("nft", "nftables"),
        ("ip", "iproute2"),
        ("setpriv", "util-linux"),
    ):
        path = shutil.which(name, path=TOOL_PATH)
        if path is None:
            missing[name] = pkg
        else:
            found[name] = path
    if missing:
        names = ", ".join(missing)
        pkgs = " ".join(sorted(set(missing.values())))
        raise UserError(
            f"cannot build the sandbox: {names} not found",
            hint=f"install them, e.g. `sudo apt-get install {pkgs}`",
        )
    return Tools(**found)


def check_user_namespaces() -> None:
    """Rootless sandboxes need unprivileged user namespaces; say how to enable them."""
    checks = (
        (
            "/proc/sys/kernel/unprivileged_userns_clone",
            "1",
            "sysctl kernel.unprivileged_userns_clone=1",
        ),
        ("/proc/sys/user/max_user_namespaces", None, "sysctl user.max_user_namespaces=15000"),
        (
            "/proc/sys/kernel/apparmor_restrict_unprivileged_userns",
            "0",
            "allow bwrap in AppArmor or sysctl kernel.apparmor_restrict_unprivileged_userns=0",
        ),
    )
    for path, want, fix in checks:
        try:
            value = Path(path).read_text().strip()
        except OSError:
            continue
        bad = value == "0" if want is None else value != want
        if bad:
            raise UserError(
                f"cannot build a rootless sandbox: user namespaces are disabled ({path} = {value})",
                hint=f"enable them: `sudo {fix}`, or run corridor as root",
            )


class Sandbox:
    """A started sandbox whose command waits for `start()`."""

    def __init__(
        self, proc: subprocess.Popen, ctl: socket.socket, listeners: dict[str, socket.socket]
    ):
        self.proc = proc
        self.ctl = ctl
        self.listeners = listeners

    def start(self) -> None:
        self.ctl.sendall(b"go")

    def relay_signal(self, sig: int) -> None:
        with contextlib.suppress(OSError):
            self.ctl.sendall(f"{int(sig)}\n".encode())

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)

    def close(self) -> None:
        for s in self.listeners.values():
            s.close()
        self.ctl.close()


def start_sandbox(
    tools: Tools, spec: SandboxSpec, command: list[str], env: dict[str, str], ports: Ports
) -> Sandbox:
    """Spawn bwrap + init; return once the listeners have been handed over."""
    parent, child = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    in_home = spec.workspace.is_relative_to(spec.home)
    cfg = {
        "ctl_fd": child.fileno(),
        "ip": tools.ip,
        "nft": tools.nft,
        "setpriv": tools.setpriv,
        "nft_rules": ruleset(ports),
        "ports": {"transparent": ports.transparent, "proxy": ports.proxy, "dns": ports.dns},
        "v6_local": f"{SANDBOX_V6_LOCAL}/128",
        "v4_local": f"{SANDBOX_V4_LOCAL}/32",
        "uid": os.getuid(),
        "gid": os.getgid(),
        "command": command,
        "home": str(spec.home) if spec.home.is_dir() else None,
        "workspace_in_home": str(spec.workspace) if in_home else None,
        "masks": [[m.path, m.is_dir] for m in home_masks(str(spec.home))]
        + [[str(p), True] for p in spec.hidden if p.is_dir()],
        "scratch": scratch_dirs(str(spec.home)),
        "socket_masks": host_socket_paths(),
    }
    # The init uses only the standard library: its source goes on the command line (the
    # sandbox may not see where corridor is installed, e.g. under the host's /tmp), run by
    # the real interpreter behind any venv, isolated (-I) and without site-packages (-S).
    init_argv = [
        os.path.realpath(sys.executable),
        "-I",
        "-S",
        "-c",
        INIT_SCRIPT.read_text(),
        json.dumps(cfg),
    ]
    argv = bwrap_argv(tools.bwrap, spec, init_argv)
    # Its own process group: a terminal's Ctrl-C goes to corridor's group, and corridor
    # relays it to the command; bwrap itself must not die of it first.
    proc = subprocess.Popen(argv, pass_fds=[child.fileno()], env=env, process_group=0)
    child.close()
    parent.settimeout(SETUP_TIMEOUT_S)
    try:
        msg, fds, _flags, _addr = socket.recv_fds(parent, 4096, len(EXPECTED_LISTENERS))
    except (TimeoutError, OSError) as e:
        proc.kill()
        proc.wait()
        raise UserError(f"sandbox setup failed: {e}") from None
    if not fds:
        code = proc.wait()
        parent.close()
        raise UserError(
            f"sandbox setup failed (bwrap exited with {code}); see the message above",
            hint="bwrap, nft and user namespaces must work on this machine; "
            "try `bwrap --unshare-all --ro-bind / / true`",
        )
    parent.settimeout(None)
    names = json.loads(msg)
    listeners = {name: socket.socket(fileno=fd) for name, fd in zip(names, fds, strict=True)}
    for s in listeners.values():
        s.setblocking(False)
    return Sandbox(proc, parent, listeners)
