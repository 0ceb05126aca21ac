"""`corridor run` end to end in the lab, with real clients.

Every test runs corridor inside the lab namespace, whose only route leads to the
world namespace; the world's catch-all records anything that arrives where it should
not, so a leak is seen, not guessed.
"""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from tests.lab.config import CORRIDOR_LAB_FLAGS

pytestmark = pytest.mark.lab

CORRIDOR = [sys.executable, "-m", "corridor"]


@pytest.fixture
def ws(tmp_path, lab) -> Path:
    """A workspace holding the lab CA (the sandbox's /tmp is private, the workspace is not)."""
    d = tmp_path / "ws"
    d.mkdir()
    shutil.copy(lab.ca_pem, d / "lab-ca.pem")
    return d


@pytest.fixture
def state(tmp_path) -> Path:
    return tmp_path / "state"


def corridor(lab, state: Path, ws: Path, *args: str, timeout: float = 60, **kw):
    # The lab's services live in documentation ranges, which the gateway refuses unless told.
    argv = [*CORRIDOR, "run", *CORRIDOR_LAB_FLAGS, "--state-dir", str(state), "--workspace",
            str(ws), *args]  # fmt: skip
    return lab.run(argv, cwd=str(ws), timeout=timeout, **kw)


def log_json(lab, state: Path, *extra: str) -> list[dict]:
    r = lab.run([*CORRIDOR, "log", "--json", "--state-dir", str(state), *extra])
    assert r.returncode == 0, r.stderr
    return [json.loads(line) for line in r.stdout.splitlines() if line.strip()]


def rows(lab, state: Path, kind: str) -> list[dict]:
    return [r for r in log_json(lab, state) if r.get("kind") == kind]


def test_curl_through_proxy_variables_reaches_an_allowed_host(lab, ws, state):
    with lab.capture() as cap:
        r = corridor(
            lab,
            state,
            ws,
            "--allow",
            "allowed.test",
            "--",
            "curl",
            "-sSf",
            "--cacert",
            "lab-ca.pem",
            "https://allowed.test/",
        )
    assert r.returncode == 0, r.stderr
    assert "hello from allowed.test" in r.stdout
    assert "1 connection allowed" in r.stderr  # the summary line
    conns = rows(lab, state, "conn")
    assert [(c["host"], c["port"], c["decision"]) for c in conns] == [
        ("allowed.test", 443, "allow")
    ]
    assert conns[0]["bytes_down"] > 0
    assert cap.catchall() == []


def test_curl_without_proxy_goes_through_the_transparent_path(lab, ws, state):
    with lab.capture() as cap:
        r = corridor(
            lab,
            state,
            ws,
            "--allow",
            "allowed.test",
            "--",
            "curl",
            "-sSf",
            "--noproxy",
            "*",
            "--cacert",
            "lab-ca.pem",
            "https://allowed.test/",
        )
    assert r.returncode == 0, r.stderr
    assert "hello from allowed.test" in r.stdout
    conns = rows(lab, state, "conn")
    assert [(c["host"], c["protocol"], c["decision"]) for c in conns] == [
        ("allowed.test", "tls", "allow")
    ]
    dns = rows(lab, state, "dns")
    assert any(d["name"] == "allowed.test" and d["decision"] == "allow" for d in dns)
    assert cap.catchall() == []


def test_plain_http_transparent_and_body_integrity(lab, ws, state):
    size = 3_000_000
    r = corridor(
        lab,
        state,
        ws,
        "--allow",
        "allowed.test",
        "--",
        "sh",
        "-c",
        f"curl -sSf --noproxy '*' http://allowed.test/bytes/{size} | sha256sum; "
        f"curl -sSf http://allowed.test/bytes/{size} | sha256sum",
    )
    assert r.returncode == 0, r.stderr
    direct = lab.run(["sh", "-c", f"curl -sSf http://allowed.test/bytes/{size} | sha256sum"])
    assert r.stdout.split()[0] == r.stdout.split()[2] == direct.stdout.split()[0], r.stderr


def test_python_urllib_and_raw_socket(lab, ws, state):
    script = (
        "import socket, urllib.request\n"
        "print(urllib.request.urlopen('http://allowed.test/').read().decode().strip())\n"
        "s = socket.create_connection(('echo.test', 7), timeout=5)\n"
        "s.sendall(b'ping-through-corridor'); print(s.recv(100).decode())\n"
    )
    r = corridor(
        lab,
        state,
        ws,
        "--allow",
        "allowed.test",
        "--allow",
        "echo.test:7",
        "--",
        "python3",
        "-c",
        script,
    )
    assert r.returncode == 0, r.stderr
    assert "hello from allowed.test" in r.stdout
    assert "ping-through-corridor" in r.stdout
    protos = {(c["host"], c["protocol"]) for c in rows(lab, state, "conn")}
    assert ("echo.test", "tcp") in protos


def test_denied_host_is_refused_with_reason_and_never_reached(lab, ws, state):
    with lab.capture() as cap:
        r = corridor(
            lab,
            state,
            ws,
            "--allow",
            "allowed.test",
            "--",
            "curl",
            "-sS",
            "--cacert",
            "lab-ca.pem",
            "-o",
            "/dev/null",
            "-w",
            "%{http_code}",
            "https://denied.test/",
        )
    assert r.returncode != 0
    blocked = log_json(lab, state, "--blocked")
    conns = [b for b in blocked if b.get("kind") == "conn"]
    assert conns and conns[0]["host"] == "denied.test"
    assert conns[0]["decision"] == "deny"
    assert conns[0]["reason"] == "no rule allows this host"
    assert all(q["name"] != "denied.test" for q in cap.dns_queries())
    assert cap.http_requests() == [] and cap.catchall() == []


def test_denied_plain_http_gets_403_with_decision_header(lab, ws, state):
    r = corridor(
        lab, state, ws, "--allow", "allowed.test", "--", "curl", "-sS", "-i", "http://denied.test/"
    )
    assert "403" in r.stdout.splitlines()[0]
    assert "X-Corridor-Decision: deny" in r.stdout
    assert "no rule allows this host" in r.stdout


def test_ip_literal_is_refused(lab, ws, state):
    ip = lab.addr("allowed.test")
    with lab.capture() as cap:
        r = corridor(
            lab,
            state,
            ws,
            "--allow",
            "allowed.test",
            "--",
            "sh",
            "-c",
            f"curl -sSf -m 5 --noproxy '*' http://{ip}/; echo rc=$?; "
            f"curl -sS -m 5 http://{ip}/ -o /dev/null -w '%{{http_code}}'",
        )
    assert "rc=0" not in r.stdout
    assert r.stdout.rstrip().endswith("403")
    assert cap.http_requests() == [] and cap.catchall() == []
    reasons = {b["reason"] for b in log_json(lab, state, "--blocked") if b.get("kind") == "conn"}
    assert reasons, "the refusals must be logged"


def test_denied_dns_name_gets_nxdomain_locally(lab, ws, state):
    with lab.capture() as cap:
        r = corridor(
            lab,
            state,
            ws,
            "--allow",
            "allowed.test",
            "--",
            "sh",
            "-c",
            "getent hosts denied.test; echo rc=$?; getent hosts allowed.test",
        )
    assert "rc=2" in r.stdout  # getent: key not found
    assert "198.18." in r.stdout  # the allowed name got its synthetic address
    assert all(q["name"].rstrip(".") != "denied.test" for q in cap.dns_queries())
    dns = rows(lab, state, "dns")
    assert any(d["name"] == "denied.test" and d["decision"] == "deny" for d in dns)


def test_udp_and_icmp_never_reach_the_world(lab, ws, state):
    script = (
        "import socket\n"
        "u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)\n"
        "for port in (443, 5353, 123):\n"
        "    try: u.sendto(b'leak', ('198.51.100.9', port))\n"
        "    except OSError as e: print('udp', e.errno)\n"
        "try:\n"
        "    i = socket.socket(socket.AF_INET, socket.SOCK_DGRAM, socket.IPPROTO_ICMP)\n"
        "    i.sendto(b'\\x08\\x00\\x00\\x00\\x00\\x01\\x00\\x01', ('203.0.113.99', 0))\n"
        "except OSError as e: print('icmp', e.errno)\n"
        "try:\n"
        "    r = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_ICMP)\n"
        "    print('raw socket opened')\n"
        "except OSError as e: print('raw', e.errno)\n"
    )
    with lab.capture() as cap:
        r = corridor(lab, state, ws, "--allow", "allowed.test", "--", "python3", "-c", script)
        time.sleep(0.3)
    assert r.returncode == 0, r.stderr
    assert "raw socket opened" not in r.stdout
    assert cap.catchall() == []


def test_exit_code_and_signal_propagation(lab, ws, state):
    assert corridor(lab, state, ws, "--", "sh", "-c", "exit 7").returncode == 7
    assert corridor(lab, state, ws, "-q", "--", "sh", "-c", "kill -TERM $$").returncode == 143
    ends = [r for r in log_json(lab, state) if r.get("kind") == "session_end"]
    assert ends[-1]["data"]["exit_code"] == 143


def test_sigterm_is_forwarded_to_the_command(lab, ws, state):
    argv = [
        *CORRIDOR,
        "run",
        "--state-dir",
        str(state),
        "--workspace",
        str(ws),
        "--",
        "sh",
        "-c",
        "trap 'echo got-term; exit 42' TERM; echo ready; while :; do sleep 0.1; done",
    ]
    p = lab.popen(argv, cwd=str(ws))
    assert p.stdout.readline().strip() == "ready"
    p.send_signal(signal.SIGTERM)
    out, err = p.communicate(timeout=20)
    assert "got-term" in out
    assert p.returncode == 42, err


def test_command_not_found_exits_127(lab, ws, state):
    r = corridor(lab, state, ws, "--", "no-such-command-xyz")
    assert r.returncode == 127
    assert "command not found: no-such-command-xyz" in r.stderr
    assert "Traceback" not in r.stderr


def test_sandbox_has_no_capabilities_and_masks_secrets(lab, ws, state, tmp_path):
    home = tmp_path / "home"
    (home / ".ssh").mkdir(parents=True)
    (home / ".ssh" / "id_ed25519").write_text("PRIVATE KEY\n")
    (home / ".netrc").write_text("machine x.test password hunter2\n")
    (home / ".config" / "gh").mkdir(parents=True)
    (home / ".config" / "gh" / "hosts.yml").write_text("oauth_token: gho_secret\n")
    (home / "notes.txt").write_text("visible\n")
    script = (
        "grep -E 'CapEff|NoNewPrivs' /proc/self/status; cat ~/notes.txt; "
        "cat ~/.ssh/id_ed25519 ~/.netrc ~/.config/gh/hosts.yml 2>&1; "
        "echo $AWS_SECRET_ACCESS_KEY; echo scratch > ~/new && cat ~/new; "
        "nft flush ruleset 2>&1; ip link add x type dummy 2>&1; echo end"
    )
    r = corridor(
        lab,
        state,
        ws,
        "--",
        "sh",
        "-c",
        script,
        env={"HOME": str(home), "AWS_SECRET_ACCESS_KEY": "AKIAsecretvalue"},
    )
    assert r.returncode == 0, r.stderr
    out = r.stdout
    assert "CapEff:\t0000000000000000" in out and "NoNewPrivs:\t1" in out
    assert "visible" in out and "scratch" in out
    for secret in ("PRIVATE KEY", "hunter2", "gho_secret", "AKIAsecretvalue"):
        assert secret not in out
    assert not (home / "new").exists()  # the home is throwaway
    start = [r for r in log_json(lab, state) if r.get("kind") == "session_start"][-1]
    assert "AWS_SECRET_ACCESS_KEY" in start["data"]["env_dropped"]
    assert "AKIAsecretvalue" not in json.dumps(start)


def test_workspace_is_writable_and_root_is_not(lab, ws, state):
    r = corridor(
        lab, state, ws, "--", "sh", "-c", "echo hi > out.txt; touch /usr/corridor-x 2>&1; echo done"
    )
    assert r.returncode == 0
    assert (ws / "out.txt").read_text() == "hi\n"
    assert "Read-only file system" in r.stdout


def test_nothing_is_left_behind(lab, ws, state):
    """No process, namespace, socket or temp file of the run outlives it.

    Other sessions may run sandboxes at the same time: only traces that carry this run's
    workspace path or its unique marker count.
    """
    marker = "sleep 60.4242"
    before_tmp = _corridor_tmp()
    r = corridor(
        lab,
        state,
        ws,
        "--allow",
        "allowed.test",
        "--",
        "sh",
        "-c",
        f"{marker} & curl -s --cacert lab-ca.pem https://allowed.test/ >/dev/null; exit 0",
    )
    assert r.returncode == 0
    time.sleep(0.2)
    assert _traces(str(ws), marker) == []
    assert _corridor_tmp() == before_tmp


def _traces(*needles: str) -> list[str]:
    """Processes (and so namespaces, sockets) whose command line names one of `needles`."""
    out = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            cmdline = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if any(n in cmdline for n in needles):
            out.append(f"{proc.name}: {cmdline[:200]}")
    return out


def _corridor_tmp() -> list[str]:
    return sorted(p.name for p in Path("/tmp").iterdir() if "corridor" in p.name)


PROXY_SCRIPT = r"""
import socket, ssl, sys
def ask(sock, host):
    sock.sendall(f"GET http://{host}/ HTTP/1.1\r\nHost: {host}\r\n\r\n".encode())
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(4096)
        if not chunk:
            break
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    length = 0
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            length = int(value)
    while len(body) < length:
        body += sock.recv(4096)
    return head.split(b"\r\n")[0].decode()
s = socket.create_connection(("127.0.0.1", 3128))
print("first", ask(s, "allowed.test"))
try:
    print("second", ask(s, sys.argv[1]))
except OSError as e:
    print("second error", e)
"""


@pytest.mark.parametrize("second", ["denied.test", "other.test"])
def test_every_request_on_a_kept_alive_proxy_connection_is_checked(lab, ws, state, second):
    with lab.capture() as cap:
        r = corridor(
            lab,
            state,
            ws,
            "--allow",
            "allowed.test",
            "--allow",
            "other.test",
            "--",
            "python3",
            "-c",
            PROXY_SCRIPT,
            second,
        )
    assert r.returncode == 0, r.stderr
    assert "first HTTP/1.1 200" in r.stdout
    assert "second HTTP/1.1 403" in r.stdout
    assert [q["host"] for q in cap.http_requests()] == ["allowed.test"]


CONNECT_SNI_SCRIPT = r"""
import socket, ssl
s = socket.create_connection(("127.0.0.1", 3128))
s.sendall(b"CONNECT allowed.test:443 HTTP/1.1\r\nHost: allowed.test:443\r\n\r\n")
print(s.recv(1000).split(b"\r\n")[0].decode())
ctx = ssl.create_default_context(cafile="lab-ca.pem")
ctx.check_hostname = False
try:
    t = ctx.wrap_socket(s, server_hostname="denied.test")
    print("handshake completed")
except (OSError, ssl.SSLError) as e:
    print("refused", type(e).__name__)
"""


def test_connect_host_that_disagrees_with_sni_is_refused(lab, ws, state):
    with lab.capture() as cap:
        r = corridor(
            lab, state, ws, "--allow", "allowed.test", "--", "python3", "-c", CONNECT_SNI_SCRIPT
        )
    assert "HTTP/1.1 200" in r.stdout
    assert "refused" in r.stdout and "handshake completed" not in r.stdout
    assert cap.http_requests() == [] and cap.catchall() == []
    blocked = [b for b in log_json(lab, state, "--blocked") if b.get("kind") == "conn"]
    assert blocked[0]["reason"] == "SNI denied.test differs from CONNECT host allowed.test"


def test_ipv6_names_answer_aaaa_and_connect(lab, ws, state):
    r = corridor(
        lab,
        state,
        ws,
        "--allow",
        "v6only.test",
        "--allow",
        "dual.test",
        "--",
        "sh",
        "-c",
        "getent ahostsv6 v6only.test | head -1; "
        "curl -sSf --noproxy '*' --cacert lab-ca.pem https://v6only.test/; "
        "curl -sSf -6 --noproxy '*' --cacert lab-ca.pem https://dual.test/",
    )
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith("fd63:6f72:7269:646f:")
    assert "hello from v6only.test" in r.stdout and "hello from dual.test" in r.stdout


def test_policy_file(lab, ws, state):
    policy = ws / "policy.yaml"
    policy.write_text(
        "version: 1\nallow:\n  - host: '*.test'\n    broad: true\n    ports: [80]\n"
        "deny:\n  - host: denied.test\n"
    )
    r = corridor(
        lab,
        state,
        ws,
        "--policy",
        str(policy),
        "--",
        "sh",
        "-c",
        "curl -sSf http://allowed.test/; curl -sS -o /dev/null -w '%{http_code}\\n' "
        "http://denied.test/; curl -sS -o /dev/null -w '%{http_code}\\n' "
        "--cacert lab-ca.pem https://allowed.test/",
    )
    lines = r.stdout.splitlines()
    assert lines[0] == "hello from allowed.test"
    assert lines[1] == "403"  # deny wins over allow
    assert lines[2] == "000"  # port 443 not in the rule: CONNECT refused
    start = [x for x in log_json(lab, state) if x.get("kind") == "session_start"][-1]
    assert len(start["data"]["policy_hash"]) == 64


def test_killing_corridor_ends_the_command(lab, ws, state):
    """Fail closed: with the gateway gone, nothing of the sandbox stays running."""
    marker = "sleep 61.2345"
    argv = [
        *CORRIDOR,
        "run",
        "--state-dir",
        str(state),
        "--workspace",
        str(ws),
        "--",
        "sh",
        "-c",
        f"echo ready; {marker}",
    ]
    p = lab.popen(argv, cwd=str(ws))
    assert p.stdout.readline().strip() == "ready"
    time.sleep(0.2)
    assert subprocess.run(["pgrep", "-f", marker], capture_output=True).returncode == 0
    p.kill()
    p.wait(timeout=10)
    deadline = time.monotonic() + 1.0
    while time.monotonic() < deadline:
        if subprocess.run(["pgrep", "-f", marker], capture_output=True).returncode != 0:
            break
        time.sleep(0.05)
    else:
        pytest.fail("the sandboxed command outlived corridor by more than a second")
