"""Templates with registry discovery, end to end, with the real package managers.

Discovery runs outside the sandbox, in corridor's own process, with the environment
corridor was started with: each test points pip or npm at a lab registry through a
config file in the workspace (PIP_CONFIG_FILE, NPM_CONFIG_USERCONFIG), sets that variable
for corridor (so discovery finds the registry) and passes it into the sandbox with --env
(so the sandboxed tool uses the same file). No registry host is written anywhere: the
registries are the world's `pypi-mirror.test` and `npm-mirror.test`.
"""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import pytest
from tests.lab.config import SANDBOX_PYTHON
from tests.lab.world_pkg import PACKAGE, SPLIT_FILES_HOST, SPLIT_PACKAGE, VALUE, VERSION

pytestmark = pytest.mark.lab

CORRIDOR = [sys.executable, "-m", "corridor"]
PYTHON = SANDBOX_PYTHON  # its pip runs inside the sandbox (the file system is read-only)
NPM = shutil.which("npm") or "/usr/bin/npm"
# Variables of the outer environment that would change what pip or npm discover.
CLEARED = {
    name: None
    for name in (
        "PIP_INDEX_URL",
        "PIP_EXTRA_INDEX_URL",
        "PIP_FIND_LINKS",
        "PIP_NO_INDEX",
        "npm_config_registry",
        "NPM_CONFIG_REGISTRY",
    )
}


@pytest.fixture
def ws(tmp_path, lab) -> Path:
    d = tmp_path / "ws"
    d.mkdir()
    shutil.copy(lab.ca_pem, d / "lab-ca.pem")
    return d


@pytest.fixture
def state(tmp_path) -> Path:
    return tmp_path / "state"


@pytest.fixture
def pip_env(ws) -> dict[str, str | None]:
    conf = ws / "pip.conf"
    conf.write_text(
        "[global]\n"
        "index-url = https://pypi-mirror.test/simple/\n"
        f"cert = {ws / 'lab-ca.pem'}\n"
        "disable-pip-version-check = true\n"
        "no-cache-dir = true\n"
    )
    return {**CLEARED, "PIP_CONFIG_FILE": str(conf)}


@pytest.fixture
def npm_env(ws) -> dict[str, str | None]:
    rc = ws / "npmrc"
    rc.write_text(
        "registry=https://npm-mirror.test/\n"
        f"cafile={ws / 'lab-ca.pem'}\n"
        "audit=false\nfund=false\nupdate-notifier=false\n"
    )
    return {**CLEARED, "NPM_CONFIG_USERCONFIG": str(rc)}


def reach(lab, *names: str) -> list[str]:
    """Arguments that let these allowed names resolve to the world's addresses.

    The gateway refuses special-use addresses unless told, and the world's are
    documentation ones (RFC 5737/3849); this opens exactly those, for names only.
    """
    return [
        arg
        for name in names
        for address in lab.hosts[name].addresses
        for arg in ("--unsafe-allow-private", f"{address}/{128 if ':' in address else 32}")
    ]


def corridor_run(lab, state: Path, ws: Path, *args: str, env=None, timeout: float = 180):
    # The deps templates inspect registry hosts (package events): the gateway verifies the
    # lab mirrors' certificates against the lab CA.
    argv = [
        *CORRIDOR,
        "run",
        "--state-dir",
        str(state),
        "--workspace",
        str(ws),
        "--upstream-ca",
        str(lab.ca_pem),
        *args,
    ]
    return lab.run(argv, cwd=str(ws), env=env, timeout=timeout)


def log_json(lab, state: Path) -> list[dict]:
    r = lab.run([*CORRIDOR, "log", "--json", "--state-dir", str(state)])
    assert r.returncode == 0, r.stderr
    return [json.loads(line) for line in r.stdout.splitlines() if line.strip()]


def conns(lab, state: Path) -> set[tuple[str, str]]:
    return {(r["host"], r["decision"]) for r in log_json(lab, state) if r.get("kind") == "conn"}


def policy_origins(lab, state: Path) -> dict[str, str]:
    start = [r for r in log_json(lab, state) if r.get("kind") == "session_start"][-1]
    return {r.get("host") or r["cidr"]: r["origin"] for r in start["data"]["policy"]["allow"]}


def test_python_deps_lets_pip_install_from_the_configured_index(lab, ws, state, pip_env):
    script = (
        f"{PYTHON} -m pip install -q --target {ws}/site {PACKAGE} || exit 10\n"
        f'{PYTHON} -c \'import sys; sys.path.insert(0, "{ws}/site"); '
        f"import corridor_lab_pkg; print(corridor_lab_pkg.VALUE)' || exit 11\n"
        f"{PYTHON} -m pip download -q --no-deps --retries 0 --timeout 5 -d {ws}/other "
        f"--index-url https://denied.test/simple/ {PACKAGE} && echo LEAK\n"
        "exit 0\n"
    )
    with lab.capture() as cap:
        r = corridor_run(
            lab,
            state,
            ws,
            "--policy",
            "python-deps",
            "--env",
            "PIP_CONFIG_FILE",
            *reach(lab, "pypi-mirror.test"),
            "--",
            "sh",
            "-c",
            script,
            env=pip_env,
        )
    assert r.returncode == 0, r.stdout + r.stderr
    assert VALUE in r.stdout
    assert "LEAK" not in r.stdout
    seen = conns(lab, state)
    assert ("pypi-mirror.test", "allow") in seen
    assert ("denied.test", "deny") in seen
    assert policy_origins(lab, state)["pypi-mirror.test"] == (
        f"python-deps: pip config global.index-url ({pip_env['PIP_CONFIG_FILE']})"
    )
    paths = [(q["host"], q["path"]) for q in cap.http_requests()]
    assert ("pypi-mirror.test", f"/simple/{PACKAGE}/") in paths
    assert any(h == "pypi-mirror.test" and p.startswith("/files/") for h, p in paths)
    assert all(h != "denied.test" for h, _ in paths)
    assert cap.catchall() == []


def test_files_on_another_host_need_that_host_added(lab, ws, state, pip_env):
    """A mirror linking its files elsewhere: discovery allows the index only (documented)."""
    install = ["sh", "-c", f"{PYTHON} -m pip install -q --retries 0 --target t {SPLIT_PACKAGE}"]
    common = ["--policy", "python-deps", "--env", "PIP_CONFIG_FILE"]
    common += reach(lab, "pypi-mirror.test", SPLIT_FILES_HOST)
    refused = corridor_run(lab, state, ws, *common, "--", *install, env=pip_env)
    assert refused.returncode != 0
    assert (SPLIT_FILES_HOST, "deny") in conns(lab, state)
    allowed = corridor_run(
        lab, state, ws, *common, "--allow", SPLIT_FILES_HOST, "--", *install, env=pip_env
    )
    assert allowed.returncode == 0, allowed.stderr
    assert (ws / "t" / "corridor_lab_split" / "__init__.py").is_file()


def test_policy_show_names_where_the_index_came_from(lab, ws, pip_env):
    r = lab.run([*CORRIDOR, "policy", "show", "python-deps"], cwd=str(ws), env=pip_env)
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    at = lines.index("  - host: pypi-mirror.test")
    assert lines[at - 1] == (
        f"  # python-deps: pip config global.index-url ({pip_env['PIP_CONFIG_FILE']})"
    )
    assert lines[at + 1] == "    ports: [443]"


def test_node_deps_lets_npm_install_from_the_configured_registry(lab, ws, state, npm_env):
    script = (
        f"{NPM} install --no-audit --no-fund --loglevel=error {PACKAGE} || exit 10\n"
        f"node -e 'console.log(require(\"{PACKAGE}\").value)'\n"
    )
    with lab.capture() as cap:
        r = corridor_run(
            lab,
            state,
            ws,
            "--policy",
            "node-deps",
            "--env",
            "NPM_CONFIG_USERCONFIG",
            *reach(lab, "npm-mirror.test"),
            "--",
            "sh",
            "-c",
            script,
            env=npm_env,
        )
    assert r.returncode == 0, r.stdout + r.stderr
    assert VALUE in r.stdout
    manifest = json.loads((ws / "node_modules" / PACKAGE / "package.json").read_text())
    assert manifest["version"] == VERSION
    assert ("npm-mirror.test", "allow") in conns(lab, state)
    assert policy_origins(lab, state)["npm-mirror.test"] == (
        f"node-deps: npm config registry ({npm_env['NPM_CONFIG_USERCONFIG']})"
    )
    paths = {(q["host"], q["path"]) for q in cap.http_requests()}
    assert ("npm-mirror.test", f"/{PACKAGE}/-/{PACKAGE}-{VERSION}.tgz") in paths
    assert cap.catchall() == []


def test_node_fetch_reaches_an_allowed_host_through_the_transparent_path(lab, ws, state, npm_env):
    # Node's built-in fetch ignores HTTP(S)_PROXY: only the nft redirect brings it to corridor.
    script = (
        "const get = (u) => fetch(u).then((r) => r.json());\n"
        f"get('https://npm-mirror.test/{PACKAGE}')\n"
        "  .then((j) => console.log('latest', j['dist-tags'].latest))\n"
        "  .then(() => fetch('https://denied.test/'))\n"
        "  .then(() => console.log('LEAK'), () => console.log('refused'));\n"
    )
    env = {**npm_env, "NODE_EXTRA_CA_CERTS": str(ws / "lab-ca.pem")}
    with lab.capture() as cap:
        r = corridor_run(
            lab,
            state,
            ws,
            "--policy",
            "node-deps",
            "--env",
            "NODE_EXTRA_CA_CERTS",
            *reach(lab, "npm-mirror.test"),
            "--",
            "node",
            "-e",
            script,
            env=env,
        )
    assert r.returncode == 0, r.stderr
    assert r.stdout.split() == ["latest", VERSION, "refused"]
    rows = log_json(lab, state)
    # The sandbox resolved the name itself (a proxy client would not): the transparent path.
    dns = {(d["name"], d["decision"]) for d in rows if d.get("kind") == "dns"}
    assert ("npm-mirror.test", "allow") in dns
    assert ("denied.test", "deny") in dns
    tls = [(c["host"], c["protocol"], c["decision"]) for c in rows if c.get("kind") == "conn"]
    assert ("npm-mirror.test", "https", "allow") in tls  # inspected: a registry host
    assert all(q["host"] != "denied.test" for q in cap.http_requests())
    assert cap.catchall() == []


def test_node_fetch_reaches_an_ipv4_only_name(lab, ws, state, pip_env):
    script = (
        "fetch('https://pypi-mirror.test/simple/').then((r) => console.log(r.status),"
        " (e) => console.log('failed', e.cause && e.cause.code));\n"
    )
    env = {**pip_env, "NODE_EXTRA_CA_CERTS": str(ws / "lab-ca.pem")}
    r = corridor_run(
        lab,
        state,
        ws,
        "--policy",
        "python-deps",
        "--env",
        "NODE_EXTRA_CA_CERTS",
        *reach(lab, "pypi-mirror.test"),
        "--",
        "node",
        "-e",
        script,
        env=env,
    )
    assert r.stdout.split() == ["200"], r.stdout + r.stderr


def test_mode_audit_lets_through_and_records_would_deny(lab, ws, state):
    r = corridor_run(
        lab,
        state,
        ws,
        "--policy",
        "offline",
        "--mode",
        "audit",
        *reach(lab, "allowed.test"),
        "--",
        "curl",
        "-sSf",
        "--cacert",
        "lab-ca.pem",
        "https://allowed.test/",
    )
    assert r.returncode == 0, r.stderr
    assert "hello from allowed.test" in r.stdout
    assert ("allowed.test", "would-deny") in conns(lab, state)
    start = [x for x in log_json(lab, state) if x.get("kind") == "session_start"][-1]
    assert start["data"]["policy"]["mode"] == "audit"
