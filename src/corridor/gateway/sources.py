"""Where a credential's real value comes from: `env:NAME`, `file:PATH`, `command:ARGV`.

Each value is read once, at session start, and kept in a `Secret` whose repr and str
never show it. Errors are UserErrors whose text never holds the value.

Commands (`command:`) are split with shell rules (`shlex`) and run directly, never through
a shell: a value such as `command:gh auth token` needs none, and running a policy-provided
string through `sh -c` would make every quote in it a way in. A source that really needs
a pipe says so itself: `command:sh -c "vault read -field=token secret/x | tr -d '\\n'"`.
Shell operators outside such an explicit shell are refused when the policy is loaded.
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING

from corridor.errors import UserError
from corridor.policy.constants import CONTROL_CHARS

if TYPE_CHECKING:
    from corridor.policy.compiled import CompiledCredential
    from corridor.policy.credentials import CredentialSpec

# `command:` sources mint or read a token (gh, vault, aws, gcloud): seconds, not minutes.
# stdin is closed, so a command that would prompt fails at once instead of hanging.
COMMAND_TIMEOUT_S = 30.0
# A token, password or key is at most a few KiB (a JWT with many claims); more is a mistake
# (a whole config file) that would also be a very large header.
MAX_SECRET_BYTES = 64 * 1024


class Secret:
    """A real credential value. Its repr and str never show it; `.reveal()` does."""

    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        self._value = value

    def reveal(self) -> str:
        """The value itself: only for the injection and the scanner, never for output."""
        return self._value

    def __repr__(self) -> str:
        return "Secret(<hidden>)"

    __str__ = __repr__


def read_secret(
    spec: CredentialSpec | CompiledCredential, env: Mapping[str, str] | None = None
) -> Secret:
    """Read the real value of `spec` from its source (once, at session start).

    `env` is the host environment (default: os.environ); a command runs with it, stdin
    closed, its error output passed through to the user, and COMMAND_TIMEOUT_S to finish.
    Surrounding whitespace is dropped. Raises UserError, whose text never holds the value.
    """
    env = os.environ if env is None else env
    source = spec.source_parsed
    label = f"credential {spec.name} ({source.describe()})"
    if source.kind == "env":
        raw = env.get(source.ref)
        if not raw:
            raise UserError(
                f"{label}: the environment variable {source.ref} is not set",
                f"export {source.ref} before running corridor",
            )
        data = raw.encode("utf-8", errors="surrogateescape")
    elif source.kind == "file":
        data = _read_file(Path(source.ref).expanduser(), label)
    else:
        data = _run_command(source.argv, env, label)
    try:
        value = data.decode("utf-8").strip()
    except UnicodeDecodeError:
        raise UserError(f"{label}: the value is not UTF-8 text") from None
    _check_value(value, spec, label)
    return Secret(value)


def _read_file(path: Path, label: str) -> bytes:
    try:
        with path.open("rb") as f:
            data = f.read(MAX_SECRET_BYTES + 1)
    except OSError as e:
        raise UserError(f"{label}: cannot read {path}: {e.strerror or e}") from None
    if len(data) > MAX_SECRET_BYTES:
        raise UserError(f"{label}: {path} is larger than {MAX_SECRET_BYTES} bytes")
    return data


def _run_command(argv: tuple[str, ...], env: Mapping[str, str], label: str) -> bytes:
    try:
        done = subprocess.run(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            env=dict(env),
            timeout=COMMAND_TIMEOUT_S,
            check=False,
        )
    except FileNotFoundError:
        raise UserError(f"{label}: command not found: {argv[0]}") from None
    except PermissionError:
        raise UserError(f"{label}: not allowed to run {argv[0]}") from None
    except subprocess.TimeoutExpired:
        raise UserError(
            f"{label}: the command did not finish within {COMMAND_TIMEOUT_S:g} s",
            "does it wait for input? it runs with no terminal and stdin closed",
        ) from None
    if done.returncode != 0:
        raise UserError(
            f"{label}: the command failed (exit status {done.returncode})",
            "its own error output, if any, is printed above",
        )
    if len(done.stdout) > MAX_SECRET_BYTES:
        raise UserError(f"{label}: the command printed more than {MAX_SECRET_BYTES} bytes")
    return done.stdout


def _check_value(value: str, spec: CredentialSpec | CompiledCredential, label: str) -> None:
    if not value:
        raise UserError(f"{label}: the value is empty")
    if "\n" in value or "\r" in value:
        raise UserError(
            f"{label}: the value has more than one line", "the source must give only the token"
        )
    if CONTROL_CHARS.search(value):
        raise UserError(f"{label}: the value contains control characters")
    in_header = any(i.kind != "basic" for i in spec.injections)
    if in_header and not (value.isascii() and value.isprintable() and " " not in value):
        # Bearer tokens and API keys are header text: visible ASCII, no spaces.
        raise UserError(
            f"{label}: the value is not visible ASCII, so it cannot go in a header",
            "bearer and header values are tokens; use inject: basic for a password",
        )
