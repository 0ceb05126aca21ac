"""The world's git host: smart HTTP through the real `git http-backend`, behind a token.

`make_repository` builds a small bare repository at world start (COMMITS, in order; the
last tree holds FILES). `GitHost.respond` serves every request of a name whose site is
config.GIT_SITE: it checks the token the way GitHub-like hosts accept one, then runs
`git http-backend` as a CGI program for the request. Without the token the answer is 401
with `WWW-Authenticate: Basic`, the challenge that makes git send the credentials of its
URL (git probes without them first).

Accepted: `Authorization: Bearer <token>` (what `git -c http.extraHeader=...` sends) and
`Authorization: Basic base64(<any user>:<token>)` (a token as the URL's password).
"""

from __future__ import annotations

import asyncio
import os
import shutil
import subprocess
from pathlib import Path
from urllib.parse import unquote

from tests.lab.world_http import Reply, Request, basic_credentials, unauthorized

REPO_NAME = "repo.git"  # served at https://<git host>/repo.git
BRANCH = "main"
# (message, files written by that commit); each commit adds to or changes the tree.
COMMITS: tuple[tuple[str, dict[str, str]], ...] = (
    ("first: a readme", {"README.md": "corridor lab repository\n"}),
    ("second: a value", {"src/value.txt": "the lab's git value 1\n"}),
    ("third: change the value", {"src/value.txt": "the lab's git value 2\n"}),
)
# What a clone's work tree holds: the files as the last commit left them.
FILES = {name: text for _message, files in COMMITS for name, text in files.items()}
# Fixed identities and times make the commits (and their ids) the same on every run.
_IDENTITY = {
    "GIT_AUTHOR_NAME": "corridor lab",
    "GIT_AUTHOR_EMAIL": "lab@forge.test",
    "GIT_COMMITTER_NAME": "corridor lab",
    "GIT_COMMITTER_EMAIL": "lab@forge.test",
}
_FIRST_COMMIT_TIME = 1_704_067_200
# http-backend's output is buffered whole: the repository is a few kilobytes, and a
# runaway answer must not fill the world's memory.
MAX_OUTPUT = 16 * 2**20
# CGI headers that `HttpServer` writes itself from the reply (or that framing owns).
_FRAMING = {"content-type", "content-length", "transfer-encoding", "status", "connection"}


def _git_env(home: Path) -> dict[str, str]:
    """An environment that reads no system or user git configuration."""
    return {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "HOME": str(home),
        "GIT_CONFIG_NOSYSTEM": "1",
        "GIT_CONFIG_GLOBAL": os.devnull,
        "LC_ALL": "C",
    }


def make_repository(root: Path) -> Path:
    """Build the bare repository under `root` (made if missing); return its path."""
    root.mkdir(parents=True, exist_ok=True)
    work = root / "work"
    bare = root / REPO_NAME
    env = _git_env(root)

    def git(*args: str, cwd: Path = work, extra: dict[str, str] | None = None) -> None:
        subprocess.run(["git", *args], cwd=cwd, env={**env, **(extra or {})}, check=True,
                       capture_output=True)  # fmt: skip

    work.mkdir()
    git("init", "-q", "-b", BRANCH)
    for n, (message, files) in enumerate(COMMITS):
        for name, text in files.items():
            (work / name).parent.mkdir(parents=True, exist_ok=True)
            (work / name).write_text(text)
        git("add", "-A")
        when = f"@{_FIRST_COMMIT_TIME + 60 * n} +0000"
        dates = {"GIT_AUTHOR_DATE": when, "GIT_COMMITTER_DATE": when}
        git("commit", "-q", "-m", message, extra={**_IDENTITY, **dates})
    git("clone", "-q", "--bare", str(work), str(bare), cwd=root)
    shutil.rmtree(work)
    return bare


def token_user(headers: dict[str, str], token: str) -> str | None:
    """The user a request authenticates as with `token`, or None if it does not.

    Bearer carries no user name ("token"); with Basic the token is the password and the
    user name may be anything (hosts accept x-access-token, oauth2, the account's name).
    """
    scheme, _, value = headers.get("authorization", "").partition(" ")
    if scheme.lower() == "bearer":
        return "token" if value.strip() == token else None
    found = basic_credentials(headers)
    if found is not None and found[1] == token:
        return found[0] or "token"
    return None


def cgi_reply(output: bytes) -> Reply:
    """The reply a CGI program's output (headers, blank line, body) stands for."""
    head, sep, body = output.partition(b"\r\n\r\n")
    if not sep:
        head, sep, body = output.partition(b"\n\n")
    if not sep:
        return Reply.text(502, "git http-backend wrote no header block\n")
    status, kind, extra = 200, "application/octet-stream", []
    for line in head.decode("latin-1").splitlines():
        name, _, value = line.partition(":")
        key, value = name.strip().lower(), value.strip()
        if key == "status":
            status = int(value.split()[0])
        elif key == "content-type":
            kind = value
        elif key not in _FRAMING:
            extra.append((name.strip(), value))
    return Reply(status, kind, (body,), len(body), tuple(extra))


class GitHost:
    """Serves the repositories under `root` through git http-backend to token holders."""

    def __init__(self, root: Path, token: str, realm: str = "git host") -> None:
        self._root = root
        self._token = token
        self._realm = realm
        exec_path = subprocess.run(
            ["git", "--exec-path"], check=True, capture_output=True, text=True
        ).stdout.strip()
        self._backend = str(Path(exec_path) / "git-http-backend")

    async def respond(self, request: Request) -> Reply:
        """401 without the token; otherwise git http-backend's answer."""
        user = token_user(request.headers, self._token)
        if user is None:
            return unauthorized(self._realm)
        return await self._run_backend(request, user)

    async def _run_backend(self, request: Request, user: str) -> Reply:
        path, _, query = request.path.partition("?")
        env = {
            **_git_env(self._root),
            "GIT_PROJECT_ROOT": str(self._root),
            "GIT_HTTP_EXPORT_ALL": "1",
            "REQUEST_METHOD": request.method,
            "PATH_INFO": unquote(path),
            "QUERY_STRING": query,
            "REMOTE_USER": user,
            "SERVER_PROTOCOL": "HTTP/1.1",
            "CONTENT_LENGTH": str(len(request.body)),
            "CONTENT_TYPE": request.headers.get("content-type", ""),
        }
        # Protocol v2 is asked for in a header; git compresses large request bodies.
        if "git-protocol" in request.headers:
            env["GIT_PROTOCOL"] = request.headers["git-protocol"]
        if "content-encoding" in request.headers:
            env["HTTP_CONTENT_ENCODING"] = request.headers["content-encoding"]
        proc = await asyncio.create_subprocess_exec(
            self._backend,
            env=env,
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        out, err = await proc.communicate(request.body)
        if len(out) > MAX_OUTPUT:
            return Reply.text(502, "git http-backend answered more than the lab buffers\n")
        if not out:
            return Reply.text(502, f"git http-backend failed: {err.decode(errors='replace')}")
        return cgi_reply(out)
