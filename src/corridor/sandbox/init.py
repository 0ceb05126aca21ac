"""The in-sandbox init: PID 1 of the sandbox.

Runs inside bwrap as uid 0 of the sandbox's user namespace, holding only the
capabilities bwrap.INIT_CAPS. In order it:

1. brings `lo` up, routes every address (IPv4 and IPv6) to `lo` and loads the nft
   ruleset (nft.py) that redirects all TCP and DNS to the gateway and drops the rest;
   mounts the home view (home.py): an overlay whose writes die with the session, the
   secret paths masked, the workspace put back on top;
2. creates the gateway's listening sockets in this network namespace and hands their
   file descriptors to corridor over the control socket (SCM_RIGHTS), then closes its
   copies: only the gateway, outside, can accept on them. With them go the netlink
   socket the firewall logs its drops to (the gateway reads it; opened in step 1, before
   the rules that log to it) and handles of this network and user namespace, which let
   corridor read the drop counters once the command has ended (reading them takes
   CAP_NET_ADMIN, which this init no longer holds by then);
3. waits for corridor's go-ahead; then forks the command, which becomes the invoking
   user's uid (a nested user namespace when rootless), drops every capability, sets
   no_new_privs (setpriv) and execs;
4. stays PID 1: forwards the signals corridor relays, reaps orphans, and exits with the
   command's status (128+N for signal N). When PID 1 exits the kernel kills everything
   left in the PID namespace, so nothing outlives the session. If the control socket
   closes (corridor and its gateway are gone), the command is killed: fail closed.

Standard library only: this runs before anything else and must start fast. It is on
the path of every run, so it imports only modules that cost next to nothing to load
(START-UP below); `python -I -S` adds no site-packages.
"""

from __future__ import annotations

# START-UP: every run waits for this init to start, imports included. The C cores of
# socket and signal stand in for their Python modules (which build enums), marshal for
# json, os.posix_spawn for subprocess, `which` below for shutil, try/except for contextlib:
# ~3 ms of imports where those took ~17 ms. tests/unit/test_init_startup.py keeps it so.
import _signal as signal
import _socket as socket
import ctypes
import marshal
import os
import select
import stat
import struct
import sys

CLONE_NEWUSER = 0x10000000
MS_RDONLY, MS_NOSUID, MS_NODEV, MS_BIND, MS_MOVE, MS_REC = 1, 2, 4, 4096, 8192, 16384
STAGING = "/run/.corridor"  # on bwrap's private /run tmpfs
LISTEN_BACKLOG = 1024  # the gateway accepts in a loop; a burst of connects must not be refused
EXIT_SETUP_FAILED = 125  # like env(1)/chroot(1): the wrapper failed, not the command
EXIT_NOT_FOUND = 127
EXIT_CANNOT_EXEC = 126
# Handles of this sandbox's namespaces that corridor keeps to read the drop counters.
NS_HANDLES = (("netns", "net"), ("userns", "user"))
NETLINK_NETFILTER = 12
NLM_F_REQUEST, NLM_F_ACK = 0x1, 0x4
NLMSG_ERROR = 2
NFULNL_MSG_CONFIG = (4 << 8) | 1  # NFNL_SUBSYS_ULOG, NFULNL_MSG_CONFIG
NFULA_CFG_CMD, NFULA_CFG_MODE, NFULA_CFG_TIMEOUT, NFULA_CFG_QTHRESH = 1, 2, 4, 5
NFULNL_CFG_CMD_BIND = 1
NFULNL_COPY_PACKET = 2
# Each logged drop goes to the socket at once, while its sender is still in sendto():
# once the command has exited every drop is there to read, none waits in a kernel batch
# that the gateway's shutdown would lose. The rule's rate limit bounds the messages.
DROP_LOG_QTHRESH = 1
DROP_LOG_FLUSH_CS = 10  # unit 1/100 s; moot with a threshold of 1, the kernel wants one
DROP_LOG_RCVBUF = 1 << 20  # room for bursts while the gateway is busy; capped by rmem_max
FORWARDED_SIGNALS = (
    signal.SIGINT,
    signal.SIGTERM,
    signal.SIGHUP,
    signal.SIGQUIT,
    signal.SIGUSR1,
    signal.SIGUSR2,
    signal.SIGWINCH,
)


def fail(msg: str, code: int = EXIT_SETUP_FAILED) -> None:
    print(f"corridor: {msg}", file=sys.stderr, flush=True)
    os._exit(code)


def spawn(argv: list[str], stdin: str) -> tuple[int, int]:
    """Start a setup tool reading `stdin`; returns its pid and the read end of its stderr.

    The input is written once the tool runs (it reads it whole; whatever its size, the
    pipe never fills with nobody reading); stdout goes nowhere, as the tools print
    nothing we need.
    """
    in_r, in_w = os.pipe()
    err_r, err_w = os.pipe()
    try:
        pid = os.posix_spawn(
            argv[0],
            argv,
            os.environ,
            file_actions=[
                (os.POSIX_SPAWN_DUP2, in_r, 0),
                (os.POSIX_SPAWN_OPEN, 1, os.devnull, os.O_WRONLY, 0),
                (os.POSIX_SPAWN_DUP2, err_w, 2),
            ],
        )
    except OSError as e:
        fail(f"sandbox setup: {' '.join(argv[:4])} failed: {e.strerror}")
    finally:
        os.close(in_r)
        os.close(err_w)
    data = memoryview(stdin.encode())
    try:
        while data:
            data = data[os.write(in_w, data) :]
    except BrokenPipeError:
        pass  # the tool ended early: `finish` reports its status and message
    finally:
        os.close(in_w)
    return pid, err_r


def finish(argv: list[str], pid: int, err_r: int) -> None:
    """Wait for a tool `spawn` started; a failure stops the setup with the tool's stderr."""
    err = bytearray()
    while chunk := os.read(err_r, 65536):
        err += chunk
    os.close(err_r)
    _pid, status = os.waitpid(pid, 0)
    if os.waitstatus_to_exitcode(status) != 0:
        text = err.decode(errors="replace").strip()
        fail(f"sandbox setup: {' '.join(argv[:4])} failed: {text}")


def setup_network(cfg: dict) -> socket.socket | None:
    """lo, routes, the firewall; returns the drop log socket (None: drops counted only).

    One `ip -batch` and one `nft -f`, side by side: neither needs the other's work.
    """
    ip_argv = [cfg["ip"], "-batch", "-"]
    ip = spawn(ip_argv, ip_batch(cfg["v4_local"], cfg["v6_local"]))
    drop_log = open_drop_log(cfg["log_group"], cfg["log_snaplen"])
    nft_argv = [cfg["nft"], "-f", "-"]
    nft = spawn(nft_argv, cfg["nft_rules"] if drop_log else cfg["nft_rules_unlogged"])
    finish(ip_argv, *ip)
    finish(nft_argv, *nft)
    return drop_log


def ip_batch(v4_local: str, v6_local: str) -> str:
    """The `ip -batch` input that brings lo up and routes every address to it.

    A batch line takes no `-6`: the IPv6 lines name IPv6 prefixes (::/0 is `-6 default`).
    """
    return "\n".join(
        (
            "link set lo up",
            # Without `src`, connects to redirected addresses pick no source and hang.
            "route add default dev lo src 127.0.0.1",
            "route add ::/0 dev lo",
            # getaddrinfo(AI_ADDRCONFIG) returns answers of a family only when a
            # non-loopback address of that family exists: one of each on lo (see nft.py)
            # lets tools that pass that flag (Node) resolve IPv4-only and IPv6-only names.
            f"addr add {v6_local} dev lo nodad",
            f"addr add {v4_local} dev lo",
            "",
        )
    )


def _nlattr(attr_type: int, payload: bytes) -> bytes:
    raw = struct.pack("=HH", 4 + len(payload), attr_type) + payload
    return raw + b"\0" * (-len(raw) % 4)


def open_drop_log(group: int, snaplen: int) -> socket.socket | None:
    """A netlink socket bound to NFLOG `group` in this network namespace, or None.

    None when the kernel has no nfnetlink_log or refuses it here: the firewall then only
    counts its drops (the rules must not log: a `log group` rule would not load).
    """
    try:
        s = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, NETLINK_NETFILTER)
    except OSError:
        return None
    try:
        s.bind((0, 0))
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, DROP_LOG_RCVBUF)
        s.settimeout(2.0)
        for seq, attrs in enumerate(
            (
                _nlattr(NFULA_CFG_CMD, bytes([NFULNL_CFG_CMD_BIND])),
                _nlattr(NFULA_CFG_MODE, struct.pack(">IBx", snaplen, NFULNL_COPY_PACKET)),
                _nlattr(NFULA_CFG_TIMEOUT, struct.pack(">I", DROP_LOG_FLUSH_CS))
                + _nlattr(NFULA_CFG_QTHRESH, struct.pack(">I", DROP_LOG_QTHRESH)),
            ),
            start=1,
        ):
            # nfgenmsg: AF_UNSPEC, version 0, the group number (big-endian)
            body = struct.pack("=BBH", 0, 0, socket.htons(group)) + attrs
            head = struct.pack(
                "=IHHII", 16 + len(body), NFULNL_MSG_CONFIG, NLM_F_REQUEST | NLM_F_ACK, seq, 0
            )
            s.send(head + body)
            ack = s.recv(4096)
            _len, kind = struct.unpack_from("=IH", ack)
            if kind != NLMSG_ERROR or struct.unpack_from("=i", ack, 16)[0] != 0:
                raise OSError("nfnetlink_log refused the configuration")
        s.settimeout(None)
        return s
    except (OSError, struct.error):
        s.close()
        return None


_libc = ctypes.CDLL(None, use_errno=True)


def mount(source: str, target: str, fstype: str | None, flags: int, data: str | None) -> str | None:
    """mount(2); None on success, else the error text."""
    rc = _libc.mount(
        source.encode(),
        target.encode(),
        fstype.encode() if fstype else None,
        flags,
        data.encode() if data else None,
    )
    return None if rc == 0 else os.strerror(ctypes.get_errno())


def setup_home(cfg: dict) -> None:
    """Overlay the home (writes are thrown away), mask the secrets, keep the workspace."""
    home = cfg["home"] if cfg["home"] and os.path.isdir(cfg["home"]) else None
    ws = cfg["workspace_in_home"] if home else None
    os.makedirs(f"{STAGING}/upper", mode=0o755)
    os.makedirs(f"{STAGING}/work", mode=0o700)
    if ws:
        os.makedirs(f"{STAGING}/ws")
        err = mount(ws, f"{STAGING}/ws", None, MS_BIND | MS_REC, None)
        if err:
            fail(f"sandbox setup: cannot stage the workspace: {err}")
    opts = f"lowerdir={home},upperdir={STAGING}/upper,workdir={STAGING}/work"
    overlaid = bool(home) and mount("overlay", home, "overlay", MS_NOSUID | MS_NODEV, opts) is None
    if home and not overlaid:
        # No overlay here (old kernel, or refused): the home stays read-only as bwrap left
        # it, and caches tools must write to start empty.
        for path in cfg["scratch"]:
            mount("tmpfs", path, "tmpfs", MS_NOSUID | MS_NODEV, "mode=0755")
    for path, is_dir in cfg["masks"]:
        if not os.path.lexists(path):
            continue  # not visible in here (e.g. under the host's /tmp): nothing to hide
        if is_dir:
            err = mount("tmpfs", path, "tmpfs", MS_NOSUID | MS_NODEV, "mode=0700,size=4k")
        else:
            err = mount("/dev/null", path, None, MS_BIND, None)
        if err:
            fail(f"sandbox setup: cannot mask {path}: {err}")
    show_views(cfg.get("views", []), home, overlaid)
    if ws:
        err = mount(f"{STAGING}/ws", ws, None, MS_MOVE, None)
        if err:
            fail(f"sandbox setup: cannot mount the workspace: {err}")


def show_views(views: list[list[str]], home: str | None, overlaid: bool) -> None:
    """Put each filtered copy (sandbox/views.py) where its original was.

    In the overlaid home the copy is written as a file of its own, so the command can
    change it (`git config --global ...`) like any file there, and the change dies with
    the session. A symlink (dotfiles kept in a repository) is followed: the file it names
    is the original, and is the one replaced, so neither name shows the secrets. Where
    that file lies outside the overlaid home (or there is no overlay), the copy is bound
    read-only over it. A copy that cannot be put in place stops the run.
    """
    for path, source in views:
        if not os.path.lexists(path):
            continue  # not visible in here: nothing to replace
        target = os.path.realpath(path)
        if overlaid and home and target.startswith(home.rstrip("/") + "/"):
            try:
                with open(source, "rb") as f:
                    data = f.read()
                os.unlink(target)
                fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o644)
                try:
                    view = memoryview(data)
                    while view:
                        view = view[os.write(fd, view) :]
                finally:
                    os.close(fd)
                continue
            except OSError as e:
                fail(f"sandbox setup: cannot show the filtered {path}: {e.strerror}")
        err = mount(source, target, None, MS_BIND, None)
        if err:
            fail(f"sandbox setup: cannot show the filtered {path}: {err}")


def mask_host_sockets(paths: list[str]) -> None:
    """Bind /dev/null over each host unix socket the sandbox can still see (sockets.py).

    A socket under a path the sandbox replaced (/run, /tmp) is not there to mask. One that
    is there but cannot be masked stops the run: it would be reachable.
    """
    for path in paths:
        try:
            if not stat.S_ISSOCK(os.lstat(path).st_mode):
                continue
        except OSError:
            continue  # hidden already (or gone)
        err = mount("/dev/null", path, None, MS_BIND, None)
        if err:
            fail(f"sandbox setup: cannot hide the host socket {path}: {err}")


def listener(kind: int, port: int) -> socket.socket:
    # Dual-stack on the unspecified address: redirected IPv4 arrives at 127.0.0.1 and
    # IPv6 at ::1; nothing else can reach this namespace.
    s = socket.socket(socket.AF_INET6, kind)
    s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind(("::", port))
    if kind == socket.SOCK_STREAM:
        s.listen(LISTEN_BACKLOG)
    return s


def hand_over_listeners(ctl: socket.socket, ports: dict, drop_log: socket.socket | None) -> None:
    socks = {
        "transparent": listener(socket.SOCK_STREAM, ports["transparent"]),
        "proxy": listener(socket.SOCK_STREAM, ports["proxy"]),
        "dns_udp": listener(socket.SOCK_DGRAM, ports["dns"]),
        "dns_tcp": listener(socket.SOCK_STREAM, ports["dns"]),
    }
    fds = {name: s.fileno() for name, s in socks.items()}
    if drop_log is not None:
        fds["drop_log"] = drop_log.fileno()
    namespaces = {name: os.open(f"/proc/self/ns/{ns}", os.O_RDONLY) for name, ns in NS_HANDLES}
    fds.update(namespaces)
    names = list(fds)
    # The names, space-separated, in the order of the descriptors (launch.start_sandbox).
    rights = struct.pack(f"{len(names)}i", *(fds[n] for n in names))
    ctl.sendmsg([" ".join(names).encode()], [(socket.SOL_SOCKET, socket.SCM_RIGHTS, rights)])
    for s in socks.values():
        s.close()
    if drop_log is not None:
        drop_log.close()
    for fd in namespaces.values():
        os.close(fd)


def become_user(uid: int, gid: int) -> None:
    """Map the invoking user's uid/gid to our uid 0 in a nested user namespace."""
    if _libc.unshare(CLONE_NEWUSER) != 0:
        fail(f"cannot create user namespace: {os.strerror(ctypes.get_errno())}")
    with open("/proc/self/setgroups", "w") as f:
        f.write("deny")
    with open("/proc/self/uid_map", "w") as f:
        f.write(f"{uid} 0 1")
    with open("/proc/self/gid_map", "w") as f:
        f.write(f"{gid} 0 1")


def exec_command(cfg: dict) -> None:
    """In the forked child: become the user, drop everything, exec."""
    os.setsid()
    for sig in FORWARDED_SIGNALS:
        signal.signal(sig, signal.SIG_DFL)
    argv = cfg["command"]
    path = argv[0] if "/" in argv[0] else which(argv[0], os.environ.get("PATH"))
    if path is None or not os.path.exists(path):
        fail(f"command not found: {argv[0]}", EXIT_NOT_FOUND)
    if os.path.isdir(path) or not os.access(path, os.X_OK):
        fail(f"cannot execute {argv[0]}: permission denied", EXIT_CANNOT_EXEC)
    if cfg["uid"] != 0:
        become_user(cfg["uid"], cfg["gid"])
    setpriv = [cfg["setpriv"], "--no-new-privs", "--inh-caps=-all", "--bounding-set=-all"]
    try:
        os.execv(setpriv[0], [*setpriv, "--", path, *argv[1:]])
    except OSError as e:
        fail(f"cannot execute {argv[0]}: {e.strerror}", EXIT_CANNOT_EXEC)


def which(name: str, path: str | None) -> str | None:
    """shutil.which(name, path=path) for a bare name, without importing shutil (START-UP):
    the first executable non-directory `name` in `path` (unset: the system's default)."""
    if path is None:
        try:
            path = os.confstr("CS_PATH")
        except (AttributeError, ValueError):
            path = os.defpath
    if not path:
        return None  # PATH='' matches nothing, as in shutil.which
    seen = set()
    for directory in path.split(os.pathsep):
        if directory in seen:
            continue
        seen.add(directory)
        candidate = os.path.join(directory, name)
        if (
            os.path.exists(candidate)
            and os.access(candidate, os.F_OK | os.X_OK)
            and not os.path.isdir(candidate)
        ):
            return candidate
    return None


def supervise(ctl: socket.socket, child: int) -> int:
    """PID 1 loop: relay signals from corridor, reap, return the command's status."""
    sigchld_r, sigchld_w = os.pipe()
    os.set_blocking(sigchld_w, False)
    signal.set_wakeup_fd(sigchld_w)
    signal.signal(signal.SIGCHLD, lambda *_: None)
    for sig in FORWARDED_SIGNALS:
        # PID 1 ignores signals it has no handler for; relay them to the command.
        signal.signal(sig, lambda n, _f: _kill(child, n))
    while True:
        while True:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return EXIT_SETUP_FAILED
            if pid == 0:
                break
            if pid == child:
                return (
                    os.waitstatus_to_exitcode(status)
                    if os.WIFEXITED(status)
                    else (128 + os.WTERMSIG(status))
                )
        ready, _, _ = select.select([ctl, sigchld_r], [], [])
        if sigchld_r in ready:
            os.read(sigchld_r, 512)
        if ctl in ready:
            msg = ctl.recv(64)
            if not msg:
                # corridor (and with it the gateway) is gone: end the command now.
                _kill(child, signal.SIGKILL)
                print(
                    "corridor: gateway gone; command ended (no network)",
                    file=sys.stderr,
                    flush=True,
                )
                return EXIT_SETUP_FAILED
            for line in msg.decode().split():
                _kill(child, int(line))


def _kill(pid: int, sig: int) -> None:
    # Not contextlib.suppress: contextlib costs start-up time (START-UP).
    try:
        os.killpg(pid, sig)
    except ProcessLookupError:
        return  # the command's group is gone already


def read_config(ctl: socket.socket) -> dict:
    """The configuration corridor sends on the control socket after this init's code
    (launch.INIT_BOOT): a 4-byte length, then that many bytes of marshal data (plain
    dicts, lists, strings, numbers: corridor and this init run the same interpreter, and
    marshal costs no import, unlike json)."""
    size = int.from_bytes(_recv_exactly(ctl, 4), "big")
    return marshal.loads(_recv_exactly(ctl, size))


def _recv_exactly(ctl: socket.socket, size: int) -> bytes:
    data = bytearray()
    while len(data) < size:
        chunk = ctl.recv(min(size - len(data), 1 << 20))
        if not chunk:
            fail("sandbox setup: corridor went away before sending the configuration")
        data += chunk
    return bytes(data)


def control_socket(fd: int) -> socket.socket:
    """The control socket corridor passed on `fd`, kept from the tools this init runs:
    posix_spawn (unlike subprocess) hands them every inheritable descriptor."""
    os.set_inheritable(fd, False)
    return socket.socket(fileno=fd)


def main() -> None:
    ctl = control_socket(int(sys.argv[1]))
    cfg = read_config(ctl)
    drop_log = setup_network(cfg)
    setup_home(cfg)
    mask_host_sockets(cfg.get("socket_masks", []))
    hand_over_listeners(ctl, cfg["ports"], drop_log)
    if ctl.recv(2) != b"go":
        fail("gateway did not start; command not run")
    child = os.fork()
    if child == 0:
        ctl.close()
        exec_command(cfg)
    # Keep no capability in PID 1 beyond what reaping needs (none).
    _drop_caps()
    os._exit(supervise(ctl, child))


def _drop_caps() -> None:
    """capset(2) to empty sets: PID 1 keeps no privilege once the command runs."""

    class Header(ctypes.Structure):
        _fields_ = [("version", ctypes.c_uint32), ("pid", ctypes.c_int)]

    class Data(ctypes.Structure):
        _fields_ = [
            ("effective", ctypes.c_uint32),
            ("permitted", ctypes.c_uint32),
            ("inheritable", ctypes.c_uint32),
        ]

    header = Header(0x20080522, 0)  # _LINUX_CAPABILITY_VERSION_3
    data = (Data * 2)()
    if _libc.capset(ctypes.byref(header), data) != 0:
        fail(f"cannot drop capabilities: {os.strerror(ctypes.get_errno())}")


if __name__ == "__main__":
    main()
