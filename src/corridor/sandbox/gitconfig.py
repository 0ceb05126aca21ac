"""The sandbox's view of the user's git configuration: everything but what can hold or
fetch a secret.

A global `~/.gitconfig` (or `~/.config/git/config`, or the system's `/etc/gitconfig`)
commonly carries secrets: a token in a URL rewrite (`url."https://TOKEN@host/".insteadOf`),
an `http.extraHeader` with a bearer token, a `credential.helper` that prints a password or
asks a keyring, an SMTP password. Masking the file would lose `user.name`, aliases and the
rest a coding agent relies on, so corridor gives the sandbox a filtered copy instead:
every entry is kept except the ones `secret_reason` names, and the names (never the
values) of what was dropped are recorded in the session's start event.

Parsing is git's own (`git config --file F --null --list`): no hand-written reader of
the format, includes left unresolved (an `include.path` is itself dropped: the file it
names may hold anything). Writing quotes every value, so the copy reads back the same.
"""

from __future__ import annotations

import re
import subprocess
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

# git answers in milliseconds; a git that hangs here must not hold the run up.
GIT_TIMEOUT_S = 5.0
# A configuration file is small; past this, the file is not copied (and not shown).
MAX_CONFIG_BYTES = 256 * 1024

# Sections whose every key is about fetching or storing credentials.
_SECRET_SECTIONS = frozenset({"credential"})
# Keys (the last part of the name) that carry or point at secrets in any section.
_SECRET_KEYS = frozenset(
    {
        "extraheader",  # http.extraHeader / http.<url>.extraHeader: Authorization headers
        "cookiefile",  # http.cookieFile: session cookies
        "sslkey",  # http.sslKey: a client key's path (masked anyway; its passphrase below)
        "sslcertpasswordprotected",
        "askpass",  # core.askPass: a program that answers password prompts
        "helper",  # credential helpers under any section name
        "path",  # include.path / includeIf.<cond>.path: a file that may hold anything
    }
)
# Key names that say what they hold.
_SECRET_WORDS = re.compile(r"pass(word)?|token|secret|apikey|api-key|auth", re.IGNORECASE)
# A URL with user information that can be a secret: any on http(s)/ftp(s), where a
# token alone is common ("https://TOKEN@host/"), and a user:password pair on any scheme
# (an "ssh://git@host/" user name alone is not one).
_URL_WITH_USERINFO = re.compile(
    r"^(?:(?:https?|ftps?)://[^/@\s]+@|[a-z][a-z0-9+.-]*://[^/@\s:]*:[^/@\s]*@)",
    re.IGNORECASE,
)


@dataclass(frozen=True, slots=True)
class Entry:
    """One `section[.subsection].key = value` line, as `git config --list` gives it."""

    name: str  # lower-case section and key; the subsection keeps its case
    value: str | None  # None: the key alone, which git reads as true

    @property
    def section(self) -> str:
        return self.name.split(".", 1)[0]

    @property
    def key(self) -> str:
        return self.name.rsplit(".", 1)[-1]

    @property
    def subsection(self) -> str | None:
        parts = self.name.split(".", 1)
        if len(parts) < 2 or "." not in parts[1]:
            return None
        return parts[1].rsplit(".", 1)[0]


def secret_reason(entry: Entry) -> str | None:
    """Why the entry must not reach the sandbox, or None to keep it."""
    if entry.section in _SECRET_SECTIONS:
        return "credential settings"
    if entry.key in _SECRET_KEYS:
        return f"{entry.key} can carry or fetch a secret"
    if _SECRET_WORDS.search(entry.key):
        return "its name says it holds a secret"
    for text in (entry.value or "", entry.subsection or ""):
        if _URL_WITH_USERINFO.match(text.strip()):
            return "a URL with user information (a token or password)"
    return None


def sanitize(entries: Iterable[Entry]) -> tuple[str, list[str]]:
    """The configuration text to show the sandbox, and the names of the dropped entries."""
    kept: dict[tuple[str, str | None], list[Entry]] = {}
    dropped: list[str] = []
    for entry in entries:
        if secret_reason(entry) is not None:
            # A URL subsection may itself be the secret: name the section and key only.
            dropped.append(f"{entry.section}.{entry.key}")
            continue
        kept.setdefault((entry.section, entry.subsection), []).append(entry)
    lines = ["# corridor: the user's git configuration without its secrets (see corridor log)"]
    for (section, subsection), group in kept.items():
        header = section if subsection is None else f'{section} "{_escape(subsection)}"'
        lines.append(f"[{header}]")
        lines.extend(
            f"\t{entry.key}" if entry.value is None else f'\t{entry.key} = "{_escape(entry.value)}"'
            for entry in group
        )
    return "\n".join(lines) + "\n", dropped


def parse_list(output: bytes) -> list[Entry]:
    """`git config --null --list` output: `name\\nvalue\\0` records (a name alone when
    the key has no value, which git reads as true)."""
    entries = []
    for record in output.split(b"\0"):
        if not record:
            continue
        name, newline, value = record.decode("utf-8", "surrogateescape").partition("\n")
        entries.append(Entry(name, value if newline else None))
    return entries


def read_config(git: str, path: Path) -> list[Entry] | None:
    """The entries of one configuration file, as git reads them; None when it is absent,
    too big or unreadable (then the sandbox sees no such file)."""
    try:
        if not path.is_file() or path.stat().st_size > MAX_CONFIG_BYTES:
            return None
        result = subprocess.run(
            [git, "config", "--file", str(path), "--null", "--list"],
            capture_output=True,
            timeout=GIT_TIMEOUT_S,
            check=False,
            env={"GIT_CONFIG_NOSYSTEM": "1", "HOME": "/nonexistent", "PATH": "/usr/bin:/bin"},
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    if result.returncode != 0:
        return None
    return parse_list(result.stdout)


def _escape(text: str) -> str:
    # Inside double quotes git understands \\, \", \n and \t; nothing else is special.
    return text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n").replace("\t", "\\t")


def user_config_files(home: str, xdg_config_home: str | None) -> Sequence[Path]:
    """Where git looks for the user's global configuration, in its order."""
    xdg = Path(xdg_config_home) if xdg_config_home else Path(home) / ".config"
    return (xdg / "git" / "config", Path(home) / ".gitconfig")
