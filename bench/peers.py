"""The peers: installing them, and starting each on loopback with its own config.

Installed by their ordinary clients: Debian's squid, tinyproxy, nginx and bubblewrap with
apt; mitmproxy with pip in its own venv (bench/.venv-mitm); srt and the Codex CLI with npm
under bench/.npm. A peer that cannot be installed is skipped, and the reason is kept for
the report. The proxies run in the foreground (children of the harness), log nothing per
request, and listen on 127.0.0.1 inside the bench namespace.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from bench.config import (
    APT_PACKAGES,
    MITM_INTERCEPT_PORT,
    MITM_PASS_PORT,
    MITM_VENV,
    MITMPROXY_REQUIREMENT,
    NPM_PACKAGES,
    NPM_PREFIX,
    REPO_ROOT,
    SQUID_PORT,
    TINYPROXY_PORT,
    TOOLS_REQUIREMENTS,
    TOOLS_VENV,
)
from bench.upstream import START_TIMEOUT_S, stop_process, wait_port

LOCALHOST = "127.0.0.1"
INSTALL_TIMEOUT_S = 600  # a first install downloads a few hundred MB (Codex CLI)
_APT_TOOLS = {"nginx": "nginx-light", "squid": "squid", "tinyproxy": "tinyproxy"}


# ---- installing -----------------------------------------------------------------------


def _sbin_which(name: str) -> str | None:
    return shutil.which(name) or shutil.which(name, path="/usr/sbin:/sbin")


def install_apt() -> dict[str, str]:
    """apt-get install what is missing; returns {tool: reason} for what is still missing."""
    missing_tools = [t for t in (*_APT_TOOLS, "bwrap", "socat", "rg", "curl") if not _sbin_which(t)]
    if missing_tools:
        env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
        subprocess.run(["apt-get", "update", "-qq"], env=env, check=False)
        # Debian's postinst would start squid/tinyproxy/nginx as services on the machine;
        # policy-rc.d exit 101 stops that: the harness starts its own on loopback only.
        policy_rc = Path("/usr/sbin/policy-rc.d")
        created = not policy_rc.exists()
        if created:
            policy_rc.write_text("#!/bin/sh\nexit 101\n")
            policy_rc.chmod(0o755)
        try:
            subprocess.run(
                ["apt-get", "install", "-y", "-qq", *APT_PACKAGES],
                env=env,
                check=False,
                stdout=subprocess.DEVNULL,
                timeout=INSTALL_TIMEOUT_S,
            )
        finally:
            if created:
                policy_rc.unlink()
    return {
        t: f"`{t}` not found after apt-get install"
        for t in (*_APT_TOOLS, "bwrap", "socat", "rg", "curl")
        if not _sbin_which(t)
    }


def _venv(path: Path, requirements: tuple[str, ...], probe: str) -> str | None:
    """Create/refresh a venv with `requirements`; None when `probe` works, else why not."""
    marker = path / ".bench-installed"
    want = "\n".join(requirements)
    if marker.exists() and marker.read_text() == want:
        return None
    if not (path / "bin" / "python").exists():
        done = subprocess.run([sys.executable, "-m", "venv", str(path)], capture_output=True)
        if done.returncode != 0:
            return f"python -m venv failed: {done.stderr.decode(errors='replace')[-300:]}"
    done = subprocess.run(
        [str(path / "bin" / "pip"), "install", "-q", *requirements],
        capture_output=True,
        timeout=INSTALL_TIMEOUT_S,
    )
    if done.returncode != 0 or not (path / "bin" / probe).exists():
        return (
            f"pip install {' '.join(requirements)} failed: "
            + done.stderr.decode(errors="replace").strip()[-300:]
        )
    marker.write_text(want)
    return None


def install_mitmproxy() -> str | None:
    return _venv(MITM_VENV, (MITMPROXY_REQUIREMENT,), "mitmdump")


def install_tools() -> str | None:
    return _venv(TOOLS_VENV, TOOLS_REQUIREMENTS, "py-spy")


def install_npm() -> dict[str, str]:
    """srt and the Codex CLI under bench/.npm; returns {package: reason} for failures."""
    if shutil.which("npm") is None:
        return {p: "npm not found (apt-get install npm)" for p in NPM_PACKAGES}
    bins = {"@anthropic-ai/sandbox-runtime": "srt", "@openai/codex": "codex"}
    missing = [p for p in NPM_PACKAGES if not (NPM_PREFIX / "node_modules/.bin" / bins[p]).exists()]
    if missing:
        NPM_PREFIX.mkdir(parents=True, exist_ok=True)
        subprocess.run(
            ["npm", "install", "--prefix", str(NPM_PREFIX), "--no-audit", "--no-fund", *missing],
            capture_output=True,
            timeout=INSTALL_TIMEOUT_S,
        )
    return {
        p: f"npm install {p} failed"
        for p in NPM_PACKAGES
        if not (NPM_PREFIX / "node_modules/.bin" / bins[p]).exists()
    }


def npm_bin(name: str) -> Path:
    return NPM_PREFIX / "node_modules" / ".bin" / name


def versions() -> dict[str, str]:
    """One line of each tool's own version output (or why there is none)."""
    probes = {
        "nginx": [_sbin_which("nginx") or "nginx", "-v"],
        "squid": [_sbin_which("squid") or "squid", "-v"],
        "tinyproxy": ["tinyproxy", "-v"],
        "mitmproxy": [str(MITM_VENV / "bin" / "mitmdump"), "--version"],
        "bwrap": ["bwrap", "--version"],
        "srt": [str(npm_bin("srt")), "--version"],
        "codex": [str(npm_bin("codex")), "--version"],
        "curl": ["curl", "--version"],
        "python": [sys.executable, "--version"],
    }
    out = {}
    for name, argv in probes.items():
        try:
            done = subprocess.run(argv, capture_output=True, text=True, timeout=30)
            text = (done.stdout or done.stderr).strip().splitlines()
            out[name] = text[0] if text else f"exit {done.returncode}"
        except (OSError, subprocess.TimeoutExpired) as e:
            out[name] = f"unavailable: {e}"
    return out


# ---- running ----------------------------------------------------------------------------


@dataclass
class Peer:
    """A proxy started by the harness."""

    name: str
    proc: subprocess.Popen
    port: int
    cafile: Path | None = None  # the CA a client must trust through it (intercepting)

    served_by: int | None = None  # the process that serves, when `proc` only started it

    @property
    def pid(self) -> int:
        return self.served_by or self.proc.pid

    @property
    def proxy(self) -> tuple[str, int]:
        return (LOCALHOST, self.port)

    def stop(self) -> None:
        stop_process(self.proc)


def _log(directory: Path, name: str):
    directory.mkdir(parents=True, exist_ok=True)
    return open(directory / f"{name}.log", "wb")


SQUID_CONF = """\
# corridor bench: squid as a plain forward proxy on loopback, no cache, no access log.
http_port {host}:{port}
http_access allow localhost
http_access deny all
cache deny all
cache_mem 8 MB
access_log none
cache_store_log none
cache_log {dir}/cache.log
pid_filename {dir}/squid.pid
coredump_dir {dir}
max_filedescriptors 65536
shutdown_lifetime 1 seconds
"""


def start_squid(directory: Path) -> Peer:
    directory.mkdir(parents=True, exist_ok=True)
    directory.chmod(0o777)  # squid drops to the `proxy` user and writes its log here
    conf = directory / "squid.conf"
    conf.write_text(SQUID_CONF.format(host=LOCALHOST, port=SQUID_PORT, dir=directory))
    log = directory / "squid.log"
    proc = subprocess.Popen(
        [_sbin_which("squid") or "squid", "-N", "-f", str(conf)],
        stdout=_log(directory, "squid"),
        stderr=subprocess.STDOUT,
    )
    wait_port(LOCALHOST, SQUID_PORT, proc, "squid", log)
    return Peer("squid", proc, SQUID_PORT)


TINYPROXY_CONF = """\
# corridor bench: tinyproxy on loopback; errors only in its log.
User nobody
Group nogroup
Port {port}
Listen {host}
Timeout 600
MaxClients 4096
LogLevel Error
LogFile "{dir}/tinyproxy.file.log"
PidFile "{dir}/tinyproxy.pid"
Allow 127.0.0.1
ConnectPort 443
ConnectPort 80
"""


def start_tinyproxy(directory: Path) -> Peer:
    directory.mkdir(parents=True, exist_ok=True)
    directory.chmod(0o777)  # it drops to `nobody` before it opens its log
    conf = directory / "tinyproxy.conf"
    conf.write_text(TINYPROXY_CONF.format(host=LOCALHOST, port=TINYPROXY_PORT, dir=directory))
    proc = subprocess.Popen(
        ["tinyproxy", "-d", "-c", str(conf)],
        stdout=_log(directory, "tinyproxy"),
        stderr=subprocess.STDOUT,
    )
    wait_port(LOCALHOST, TINYPROXY_PORT, proc, "tinyproxy", directory / "tinyproxy.log")
    return Peer("tinyproxy", proc, TINYPROXY_PORT)


def start_mitmproxy(directory: Path, upstream_ca: Path, intercept: bool) -> Peer:
    """mitmdump: intercepting (its own CA, verifying upstream against ours) or, with every
    host ignored, passing CONNECT tunnels through untouched."""
    name = "mitmproxy-intercept" if intercept else "mitmproxy"
    port = MITM_INTERCEPT_PORT if intercept else MITM_PASS_PORT
    confdir = directory / f"{name}-conf"
    confdir.mkdir(parents=True, exist_ok=True)
    argv = [
        str(MITM_VENV / "bin" / "mitmdump"),
        "--quiet",
        "--listen-host",
        LOCALHOST,
        "--listen-port",
        str(port),
        "--set",
        f"confdir={confdir}",
        "--set",
        f"ssl_verify_upstream_trusted_ca={upstream_ca}",
    ]
    if not intercept:
        argv += ["--ignore-hosts", ".*"]
    proc = subprocess.Popen(argv, stdout=_log(directory, name), stderr=subprocess.STDOUT)
    wait_port(LOCALHOST, port, proc, name, directory / f"{name}.log")
    cafile = confdir / "mitmproxy-ca-cert.pem"
    deadline = time.monotonic() + START_TIMEOUT_S
    while not cafile.exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    return Peer(name, proc, port, cafile if intercept else None)


def start_gateway(
    directory: Path,
    audit: bool,
    inspect_upstream_ca: Path | None = None,
    src: Path | None = None,
    name: str | None = None,
) -> Peer:
    """bench/gateway_host.py: corridor's gateway on loopback listeners (inspecting the
    upstream, verified with `inspect_upstream_ca`, when that is given). `src`: import
    corridor from that source directory instead (another version, to compare)."""
    given_name = name
    name = "corridor" if audit else "corridor-noaudit"
    argv = [sys.executable, "-m", "bench.gateway_host"]
    cafile = None
    if inspect_upstream_ca is not None:
        name = "corridor-inspect"
        cafile = directory / "corridor-inspect-ca.pem"
        argv += ["--inspect", str(cafile), "--upstream-ca", str(inspect_upstream_ca)]
    name = given_name or name
    argv += ["--state-dir", str(directory / f"{name}-state")]
    if not audit:
        argv.append("--no-audit")
    path = str(REPO_ROOT) if src is None else f"{src}{os.pathsep}{REPO_ROOT}"
    env = {**os.environ, "PYTHONPATH": path}
    proc = subprocess.Popen(
        argv, cwd=REPO_ROOT, env=env, stdout=subprocess.PIPE, stderr=_log(directory, name)
    )
    assert proc.stdout is not None
    line = proc.stdout.readline()
    if not line:
        proc.wait()
        tail = (directory / f"{name}.log").read_text(errors="replace")[-2000:]
        raise RuntimeError(f"{name}: gateway_host exited ({proc.returncode}):\n{tail}")
    ports = json.loads(line)
    if "error" in ports:
        proc.wait()
        raise RuntimeError(f"not available yet: {ports['error']}")
    # The pid to measure is the gateway process's (`corridor-gw`), not its launcher's.
    return Peer(name, proc, int(ports["proxy"]), cafile, served_by=int(ports["pid"]))
