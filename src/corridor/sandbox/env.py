"""The sandbox's environment: an allowlist, never a denylist.

Secrets most often travel in environment variables (API keys, cloud credentials,
tokens). Only names known to be harmless pass; everything else is dropped and its
*name* (never its value) is recorded in the session event.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass

# Names that carry no secrets and that tools need to behave normally.
ALLOWED_NAMES = frozenset(
    {
        "PATH",
        "HOME",
        "USER",
        "LOGNAME",
        "SHELL",
        "LANG",
        "LANGUAGE",
        "TZ",
        "TERM",
        "COLORTERM",
        "TERM_PROGRAM",
        "TERM_PROGRAM_VERSION",
        "NO_COLOR",
        "FORCE_COLOR",
        "CLICOLOR",
        "COLUMNS",
        "LINES",
        "EDITOR",
        "VISUAL",
        "PAGER",
        "LESS",
        "DISPLAY_WIDTH",
        "CI",
        # Toolchains installed under the home keep working.
        "PYENV_ROOT",
        "PYENV_VERSION",
        "VIRTUAL_ENV",
        "NVM_DIR",
        "NVM_BIN",
        "CARGO_HOME",
        "RUSTUP_HOME",
        "GOPATH",
        "GOROOT",
        "JAVA_HOME",
    }
)
ALLOWED_PREFIXES = ("LC_",)

# Set by corridor itself; a same-named variable from the host is replaced.
PROXY_NAMES = ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "http_proxy", "https_proxy", "all_proxy")
NO_PROXY_NAMES = ("NO_PROXY", "no_proxy")


@dataclass(frozen=True, slots=True)
class SandboxEnv:
    env: dict[str, str]
    dropped: tuple[str, ...]  # names only, sorted


def build_env(
    host_env: Mapping[str, str],
    *,
    proxy_port: int,
    home: str,
    workspace: str,
    extra_names: Iterable[str] = (),
) -> SandboxEnv:
    """Filter `host_env` to the allowlist (plus `extra_names`) and add corridor's own."""
    keep = ALLOWED_NAMES | frozenset(extra_names)
    env: dict[str, str] = {}
    dropped: list[str] = []
    for name, value in host_env.items():
        if name in keep or name.startswith(ALLOWED_PREFIXES):
            env[name] = value
        elif name not in PROXY_NAMES and name not in NO_PROXY_NAMES:
            dropped.append(name)
    env.setdefault("PATH", "/usr/local/bin:/usr/bin:/bin")
    env["HOME"] = home
    env["PWD"] = workspace
    env["TMPDIR"] = "/tmp"
    proxy = f"http://127.0.0.1:{proxy_port}"
    for name in PROXY_NAMES:
        env[name] = proxy
    # Loopback inside the sandbox is the sandbox's own: reaching it needs no proxy.
    for name in NO_PROXY_NAMES:
        env[name] = "localhost,127.0.0.1,::1"
    env["CORRIDOR_SANDBOX"] = "1"
    return SandboxEnv(env=env, dropped=tuple(sorted(dropped)))
