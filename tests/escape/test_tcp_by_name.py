"""Non-HTTP TCP by name: git://, a database port, and addresses the sandbox never resolved.

The gateway names an opaque TCP connection by the synthetic address the sandbox's own DNS
answer gave for it: a client that resolved `echo.test` and connects to port 5432 is
decided as echo.test:5432, without any protocol saying so. An address that no answer of
this session gave is decided by address alone, which takes a `cidr` rule.
"""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import pytest
from tests.lab.config import CORRIDOR_LAB_FLAGS, SANDBOX_PYTHON
from tests.lab.harness import Lab

# A git protocol request (pkt-line: 4 hex digits of length, then the command).
GIT_REQUEST = "0032git-upload-pack /project.git\\x00host=git.test\\x00"
# A PostgreSQL SSLRequest: length 8, code 80877103; an echo server returns it.
PG_SSL_REQUEST = "\\x00\\x00\\x00\\x08\\x04\\xd2\\x16\\x2f"


def corridor(lab: Lab, tmp: Path, *args: str) -> tuple[str, list[dict]]:
    ws = tmp / "ws"
    ws.mkdir(parents=True, exist_ok=True)
    shutil.copy(Path(__file__).with_name("sandbox_lib.py"), ws / "sandbox_lib.py")
    state = tmp / "state"
    r = lab.run(
        [sys.executable, "-m", "corridor", "run", *CORRIDOR_LAB_FLAGS, "--state-dir",
         str(state), "--workspace", str(ws), *args],
        cwd=str(ws),
    )  # fmt: skip
    assert r.returncode == 0, r.stderr
    log = lab.run([sys.executable, "-m", "corridor", "log", "--json", "--state-dir", str(state)])
    return r.stdout, [json.loads(line) for line in log.stdout.splitlines() if line.strip()]


def exchange_script(host: str, port: int, payload: str) -> str:
    return (
        "from sandbox_lib import *\n"
        f"r = tcp_exchange('{host}', {port}, b'{payload}')\n"
        f"print('echoed' if r == b'{payload}' else f'got {{r!r}}')\n"
    )


@pytest.mark.parametrize(
    ("name", "port", "payload"),
    [("git.test", 9418, GIT_REQUEST), ("echo.test", 5432, PG_SSL_REQUEST)],
    ids=["git protocol", "database port"],
)
def test_tcp_by_name_reaches_an_allowed_host_port(
    lab: Lab, tmp_path: Path, name: str, port: int, payload: str
) -> None:
    with lab.capture() as cap:
        out, events = corridor(
            lab, tmp_path, "--allow", f"{name}:{port}", "--",
            SANDBOX_PYTHON, "-c", exchange_script(name, port, payload),
        )  # fmt: skip
    assert out.strip() == "echoed"
    conns = [e for e in events if e.get("kind") == "conn"]
    assert [(c["host"], c["port"], c["protocol"], c["decision"]) for c in conns] == [
        (name, port, "tcp", "allow")
    ]
    assert conns[0]["address"] == lab.addr(name)  # dialled at the real address
    assert cap.catchall() == []


def test_real_git_client_speaks_git_protocol_by_name(lab: Lab, tmp_path: Path) -> None:
    """`git ls-remote git://...` gets through and reaches git.test:9418: its request comes
    back from the echo, which git reports as a protocol error (the server is no git)."""
    out, events = corridor(
        lab, tmp_path, "--allow", "git.test:9418", "--",
        "sh", "-c", "git ls-remote git://git.test/project.git 2>&1; echo rc=$?",
    )  # fmt: skip
    assert "rc=0" not in out  # the echo is not a git server
    conns = [e for e in events if e.get("kind") == "conn"]
    assert [(c["host"], c["port"], c["decision"]) for c in conns] == [("git.test", 9418, "allow")]
    assert conns[0]["bytes_up"] > 0 and conns[0]["bytes_down"] == conns[0]["bytes_up"]


def test_an_address_never_resolved_needs_a_cidr_rule(lab: Lab, tmp_path: Path) -> None:
    real = lab.addr("echo.test")
    script = exchange_script(real, 5432, PG_SSL_REQUEST)
    with lab.capture() as cap:
        out, events = corridor(
            lab, tmp_path, "--allow", "echo.test:5432", "--", SANDBOX_PYTHON, "-c", script
        )
    assert out.strip() == "got None"
    refused = [e for e in events if e.get("kind") == "conn" and e["decision"] == "deny"]
    assert [(e["address"], e["reason"]) for e in refused] == [(real, "no rule allows this address")]
    assert cap.catchall() == []
    # A cidr rule naming the address lets the sandbox connect to it by number.
    out, _ = corridor(
        lab, tmp_path / "with-rule", "--allow", f"{real}/32:5432", "--",
        SANDBOX_PYTHON, "-c", script,
    )  # fmt: skip
    assert out.strip() == "echoed"


def test_a_wide_cidr_rule_does_not_open_internal_ranges(lab: Lab, tmp_path: Path) -> None:
    """`0.0.0.0/0` (broad) lets the agent dial public addresses by number, never loopback,
    private or metadata ones: those need a rule that names their own range."""
    policy = tmp_path / "wide.yaml"
    policy.write_text("version: 1\nallow:\n  - cidr: 0.0.0.0/0\n    broad: true\n    ports: [80]\n")
    script = (
        "from sandbox_lib import *\n"
        "for addr in ('169.254.169.254', '10.0.0.5', '127.0.0.1', '100.64.0.1'):\n"
        "    r = tcp_exchange(addr, 80, f'GET / HTTP/1.0\\r\\nHost: {addr}\\r\\n\\r\\n'.encode())\n"
        "    print(addr, status_of(r or b''))\n"
    )
    with lab.capture() as cap:
        out, events = corridor(
            lab, tmp_path, "--policy", str(policy), "--", SANDBOX_PYTHON, "-c", script
        )
    assert out.split() == [
        "169.254.169.254", "403", "10.0.0.5", "403", "127.0.0.1", "None", "100.64.0.1", "403",
    ]  # fmt: skip
    reasons = {e["reason"] for e in events if e.get("kind") == "conn" and e["decision"] == "deny"}
    assert reasons == {
        "169.254.169.254 is the cloud metadata address",
        "10.0.0.5 is a private address (RFC 1918)",
        "100.64.0.1 is a shared (CGNAT) address (RFC 6598)",
    }
    assert cap.catchall() == []
