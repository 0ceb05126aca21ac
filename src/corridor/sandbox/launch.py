"""Starting a sandbox and receiving the gateway's listening sockets from it.

The I/O edge of the sandbox package: find the tools, spawn bwrap with the init, take
the listener file descriptors the init sends over the control socket, and later tell
the init to start the command or relay a signal to it. Once the command has ended,
read the firewall's drop counters (`Sandbox.drops`) through the namespace handles the
init sent: corridor holds the sandbox's network namespace open until then.
"""

from __future__ import annotations

import contextlib
import marshal
import os
import shutil
import signal
import socket
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from corridor.errors import UserError
from corridor.sandbox.bwrap import VIEWS_MOUNT, SandboxSpec, bwrap_argv
from corridor.sandbox.home import home_masks, scratch_dirs
from corridor.sandbox.nft import (
    LOG_GROUP,
    LOG_SNAPLEN,
    SANDBOX_V4_LOCAL,
    SANDBOX_V6_LOCAL,
    TABLE,
    Ports,
    parse_counters,
    ruleset,
)
from corridor.sandbox.sockets import host_socket_paths

# Where the system tools live even when the user's PATH lacks the sbin directories.
TOOL_PATH = os.pathsep.join(
    [os.environ.get("PATH", ""), "/usr/local/sbin", "/usr/sbin", "/sbin", "/usr/bin", "/bin"]
)
SETUP_TIMEOUT_S = 10.0  # bwrap + init normally hand over the sockets in ~50 ms
EXPECTED_LISTENERS = ("transparent", "proxy", "dns_udp", "dns_tcp")
# Sent with the listeners when the kernel lets the init log drops: the gateway reads it.
DROP_LOG = "drop_log"
# Handles of the sandbox's network and user namespaces (init.NS_HANDLES): kept by corridor,
# not by the gateway, to read the drop counters after the command.
NAMESPACE_HANDLES = ("netns", "userns")
MAX_HANDED_FDS = len(EXPECTED_LISTENERS) + 1 + len(NAMESPACE_HANDLES)
COUNTERS_TIMEOUT_S = 5.0  # `nft list counters` takes ~5 ms; a hung one must not hang the run
INIT_SCRIPT = Path(__file__).with_name("init.py")
# The init's command line: read its code (marshalled, behind a 4-byte length) from the
# control socket, the descriptor in argv[1], and run it as __main__. corridor compiles
# init.py while bwrap and the interpreter start, so the init does not have to (~3 ms).
INIT_BOOT = """\
import marshal, os, sys
def take(n, fd=int(sys.argv[1])):
    data = b""
    while len(data) < n:
        chunk = os.read(fd, n - len(data))
        if not chunk:
            print("corridor: sandbox setup: corridor went away", file=sys.stderr, flush=True)
            os._exit(125)
        data += chunk
    return data
exec(marshal.loads(take(int.from_bytes(take(4), "big"))), {"__name__": "__main__"})
"""


@dataclass(frozen=True, slots=True)
class Tools:
    bwrap: str
    nft: str
    ip: str
    setpriv: str
    nsenter: str | None = None  # util-linux too; without it the drop counters stay unread


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
    found["nsenter"] = shutil.which("nsenter", path=TOOL_PATH)
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
    """A started sandbox whose command waits for `start()`.

    `listeners` are the sockets for the gateway, by name (EXPECTED_LISTENERS, plus
    DROP_LOG when the kernel lets the sandbox log its drops). `drops` holds the firewall's
    drop counters (packets per nft.DROP_COUNTERS name) once `collect_drops()` has read
    them after the command ended; None until then, or when they could not be read.
    """

    def __init__(
        self,
        proc: subprocess.Popen,
        ctl: socket.socket,
        listeners: dict[str, socket.socket],
        namespaces: dict[str, int] | None = None,
        nsenter: str | None = None,
        nft: str | None = None,
    ):
        self.proc = proc
        self.ctl = ctl
        self.listeners = listeners
        self.namespaces = namespaces or {}
        self.drops: dict[str, int] | None = None
        self.drops_error: str | None = None  # why `drops` stayed None, for the session end
        self._nsenter = nsenter
        self._nft = nft
        self._counting: subprocess.Popen | None = None  # the counter read, once started

    def begin_collect_drops(self) -> None:
        """Start reading the drop counters once the sandbox has exited, without waiting:
        `collect_drops` (or `close`) takes the result. The read (nsenter + nft, ~4 ms)
        then overlaps whatever the caller does meanwhile, e.g. stopping the gateway."""
        if self.drops is not None or self._counting is not None or self.proc.poll() is None:
            return
        netns, userns = self.namespaces.get("netns"), self.namespaces.get("userns")
        if netns is None or self._nsenter is None or self._nft is None:
            self.drops_error = "no namespace handle or no nsenter"
            return
        argv = [self._nsenter, "--preserve-credentials"]
        if userns is not None and os.fstat(userns).st_ino != os.stat("/proc/self/ns/user").st_ino:
            argv.append(f"--user=/proc/self/fd/{userns}")
        argv += [f"--net=/proc/self/fd/{netns}", "--", self._nft, "-j", "list", "counters"]
        argv += ["table", "inet", TABLE]
        fds = [fd for fd in (netns, userns) if fd is not None]
        try:
            self._counting = subprocess.Popen(
                argv, pass_fds=fds, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
            )
        except OSError as e:
            self.drops_error = str(e)

    def collect_drops(self) -> dict[str, int] | None:
        """Read the drop counters once the sandbox has exited (idempotent; never raises).

        The network namespace outlives the sandbox's processes while corridor holds its
        handle, so the counters are still there; `nft` reads them from inside it, entering
        the sandbox's user namespace first when rootless (its owner may).
        """
        if self.drops is not None or self.proc.poll() is None:
            return self.drops
        self.begin_collect_drops()
        reader, self._counting = self._counting, None
        if reader is None:  # it could not start: drops_error says why
            return None
        try:
            out, err = reader.communicate(timeout=COUNTERS_TIMEOUT_S)
        except subprocess.TimeoutExpired as e:
            reader.kill()
            reader.communicate()
            self.drops_error = str(e)
            return None
        counters = parse_counters(out) if reader.returncode == 0 else {}
        if not counters:
            self.drops_error = err.strip() or "nft printed no drop counters"
            return None
        self.drops = counters
        return counters

    def start(self) -> None:
        self.ctl.sendall(b"go")

    def relay_signal(self, sig: int) -> None:
        with contextlib.suppress(OSError):
            self.ctl.sendall(f"{int(sig)}\n".encode())

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)

    def close(self) -> None:
        """Close what corridor holds; reads the drop counters first if the sandbox ended."""
        self.collect_drops()
        for s in self.listeners.values():
            s.close()
        for fd in self.namespaces.values():
            with contextlib.suppress(OSError):
                os.close(fd)
        self.namespaces = {}
        self.ctl.close()


def code_message(script: Path) -> bytes:
    """`script` compiled, as INIT_BOOT reads it: a 4-byte length, then the marshalled code."""
    code = marshal.dumps(compile(script.read_text(), str(script), "exec"))
    return len(code).to_bytes(4, "big") + code


def config_message(cfg: dict) -> bytes:
    """The init's configuration as sent on the control socket (init.read_config): a 4-byte
    length, then marshal data, which the init reads without importing anything. Both
    ends run the same interpreter (see `init_argv` in start_sandbox)."""
    blob = marshal.dumps(cfg)
    return len(blob).to_bytes(4, "big") + blob


def start_sandbox(
    tools: Tools, spec: SandboxSpec, command: list[str], env: dict[str, str], ports: Ports
) -> Sandbox:
    """Spawn bwrap + init; return once the listeners have been handed over."""
    parent, child = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    # The init uses only the standard library: its code comes over the control socket
    # (the sandbox may not see where corridor is installed, e.g. under the host's /tmp),
    # run by the real interpreter behind any venv (the one that compiled it), isolated
    # (-I) and without site-packages (-S).
    init_argv = [
        os.path.realpath(sys.executable),
        "-I",
        "-S",
        "-c",
        INIT_BOOT,
        # Only the control socket's number: the code and the configuration follow over
        # the socket, as the configuration can outgrow one argument's 128 KiB (thousands
        # of host sockets to mask).
        str(child.fileno()),
    ]
    argv = bwrap_argv(tools.bwrap, spec, init_argv)
    # Its own process group: a terminal's Ctrl-C goes to corridor's group, and corridor
    # relays it to the command; bwrap itself must not die of it first.
    proc = subprocess.Popen(argv, pass_fds=[child.fileno()], env=env, process_group=0)
    child.close()
    parent.settimeout(SETUP_TIMEOUT_S)
    fds: list[int] = []
    try:
        # Built while bwrap and the init's interpreter start: compiling the init (~3 ms)
        # and the host socket scan, which reads /proc (~1 ms, ~10 ms with hundreds of
        # processes), would otherwise come first.
        cfg = init_config(tools, spec, command, ports)
        parent.sendall(code_message(INIT_SCRIPT) + config_message(cfg))
        msg, fds, _flags, _addr = socket.recv_fds(parent, 4096, MAX_HANDED_FDS)
    except (BrokenPipeError, ConnectionResetError):
        pass  # the init is gone before it took its configuration: bwrap says why, below
    except (TimeoutError, OSError) as e:
        proc.kill()
        proc.wait()
        raise UserError(f"sandbox setup failed: {e}") from None
    except BaseException:
        proc.kill()
        proc.wait()
        parent.close()
        raise
    if not fds:
        code = proc.wait()
        parent.close()
        raise UserError(
            f"sandbox setup failed (bwrap exited with {code}); see the message above",
            hint="bwrap, nft and user namespaces must work on this machine; "
            "try `bwrap --unshare-all --ro-bind / / true`",
        )
    parent.settimeout(None)
    # The init names the descriptors, space-separated, in their order (init.hand_over_listeners).
    handed = dict(zip(msg.decode().split(), fds, strict=True))
    namespaces = {name: handed.pop(name) for name in NAMESPACE_HANDLES if name in handed}
    listeners = {name: socket.socket(fileno=fd) for name, fd in handed.items()}
    for s in listeners.values():
        s.setblocking(False)
    return Sandbox(proc, parent, listeners, namespaces, nsenter=tools.nsenter, nft=tools.nft)


def init_config(tools: Tools, spec: SandboxSpec, command: list[str], ports: Ports) -> dict:
    """What the init needs to set the sandbox up and run `command` (init.read_config)."""
    in_home = spec.workspace.is_relative_to(spec.home)
    shown = {path for path, _ in spec.views}
    return {
        "ip": tools.ip,
        "nft": tools.nft,
        "setpriv": tools.setpriv,
        "nft_rules": ruleset(ports, LOG_GROUP),
        "nft_rules_unlogged": ruleset(ports, None),
        "log_group": LOG_GROUP,
        "log_snaplen": LOG_SNAPLEN,
        "ports": {"transparent": ports.transparent, "proxy": ports.proxy, "dns": ports.dns},
        "v6_local": f"{SANDBOX_V6_LOCAL}/128",
        "v4_local": f"{SANDBOX_V4_LOCAL}/32",
        "uid": os.getuid(),
        "gid": os.getgid(),
        "command": command,
        "home": str(spec.home) if spec.home.is_dir() else None,
        "workspace_in_home": str(spec.workspace) if in_home else None,
        "masks": [[m.path, m.is_dir] for m in home_masks(str(spec.home)) if m.path not in shown]
        + [[str(p), True] for p in spec.hidden if p.is_dir()],
        # Filtered copies stand in for these originals (sandbox/views.py).
        "views": [[path, f"{VIEWS_MOUNT}/{name}"] for path, name in spec.views],
        "scratch": scratch_dirs(str(spec.home)),
        "socket_masks": host_socket_paths(),
    }
