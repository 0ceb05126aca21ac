"""Configuration files the sandbox sees filtered: kept for what they configure, stripped of
the secrets they hold.

Masking `~/.npmrc` whole hides the company registry a policy allows along with the token
next to it, and npm then asks the public default, which the policy refuses: the install
the user allowed breaks. So the files that mix settings and secrets are shown as a copy
with the secrets taken out, and the names (never the values) of what was taken out are
recorded in the session's start event:

- git: `~/.gitconfig`, `~/.config/git/config` (sandbox/gitconfig.py);
- npm: `~/.npmrc`: auth tokens, passwords, client keys dropped; `${VAR}` references
  kept, since they expand inside the sandbox to what the sandbox holds (a brokered
  credential's placeholder, or nothing);
- pip: `~/.config/pip/pip.conf`, `~/.pip/pip.conf`: the user information in index URLs
  (`https://user:token@mirror/simple`) removed, the rest kept.

Parsing and filtering are pure; `build_views` reads the files (and asks git to parse
its own).
"""

from __future__ import annotations

import configparser
import io
import re
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

from corridor.sandbox import gitconfig

MAX_VIEW_BYTES = 256 * 1024  # configuration is small; a bigger file is shown masked

# .npmrc keys (the part after a "//host/:" scope) that hold or unlock a secret.
_NPM_SECRET_KEYS = frozenset(
    {"_authtoken", "_auth", "_password", "password", "username", "email", "certfile",
     "keyfile", "cert", "key", "otp"}
)  # fmt: skip
_NPM_SECRET_WORDS = re.compile(r"token|auth|pass|secret", re.IGNORECASE)
_ENV_REFERENCE_ONLY = re.compile(r"^\s*\$\{[A-Za-z_][A-Za-z0-9_]*\??\}\s*$")
# pip options whose values are URLs (several, one per line, in the "extra" ones).
_PIP_URL_KEYS = frozenset({"index-url", "extra-index-url", "find-links", "index_url"})


@dataclass(frozen=True, slots=True)
class View:
    """A file the sandbox sees with `text` in place of its content."""

    path: str  # the host path, which is also where the sandbox sees it
    text: str
    dropped: tuple[str, ...]  # names of what was taken out (never values)


def npmrc_view(text: str) -> tuple[str, list[str]]:
    """`.npmrc` without its secrets, and the keys dropped."""
    out: list[str] = []
    dropped: list[str] = []
    for line in text.splitlines():
        stripped = line.strip()
        if not stripped or stripped[0] in "#;" or "=" not in stripped:
            out.append(line)
            continue
        key, value = (part.strip() for part in stripped.split("=", 1))
        name = key.rsplit(":", 1)[-1].lower()  # "//host/:_authToken" -> "_authtoken"
        secret = name in _NPM_SECRET_KEYS or bool(_NPM_SECRET_WORDS.search(name))
        if (secret and not _ENV_REFERENCE_ONLY.match(value)) or _has_userinfo(value):
            dropped.append(_scrub_scope(key))
            continue
        out.append(line)
    return "\n".join(out) + "\n", dropped


def pip_conf_view(text: str) -> tuple[str, list[str]] | None:
    """pip.conf with user information removed from its URLs, and the options changed;
    None when the file does not parse (it is then masked whole)."""
    parser = configparser.RawConfigParser(strict=False, interpolation=None)
    parser.optionxform = str  # type: ignore[assignment,method-assign]  # keep names as written
    try:
        parser.read_string(text)
    except configparser.Error:
        return None
    changed: list[str] = []
    for section in parser.sections():
        for key, value in parser.items(section):
            if key.lower() not in _PIP_URL_KEYS or value is None:
                continue
            urls = value.split()
            cleaned = [_without_userinfo(u) for u in urls]
            if cleaned != urls:
                parser.set(section, key, "\n".join(cleaned))
                changed.append(f"{section}.{key}")
    buffer = io.StringIO()
    parser.write(buffer)
    return buffer.getvalue(), changed


def build_views(git: str | None, home: str, env: dict[str, str]) -> list[View]:
    """The filtered copies of this user's configuration files that exist."""
    views: list[View] = []
    if git is not None:
        for path in gitconfig.user_config_files(home, env.get("XDG_CONFIG_HOME")):
            entries = gitconfig.read_config(git, path)
            if entries is not None:
                text, dropped = gitconfig.sanitize(entries)
                views.append(View(str(path), text, tuple(dropped)))
    npmrc = Path(env.get("NPM_CONFIG_USERCONFIG") or Path(home) / ".npmrc")
    text = _read(npmrc)
    if text is not None and npmrc.is_relative_to(home):
        filtered, dropped = npmrc_view(text)
        views.append(View(str(npmrc), filtered, tuple(dropped)))
    for pip_conf in _pip_user_files(home, env.get("XDG_CONFIG_HOME")):
        text = _read(pip_conf)
        if text is None:
            continue
        result = pip_conf_view(text)
        if result is not None:
            views.append(View(str(pip_conf), result[0], tuple(result[1])))
    return views


def _pip_user_files(home: str, xdg_config_home: str | None) -> list[Path]:
    xdg = Path(xdg_config_home) if xdg_config_home else Path(home) / ".config"
    return [Path(home) / ".pip" / "pip.conf", xdg / "pip" / "pip.conf"]


def _read(path: Path) -> str | None:
    try:
        if not path.is_file() or path.stat().st_size > MAX_VIEW_BYTES:
            return None
        return path.read_text(encoding="utf-8", errors="surrogateescape")
    except OSError:
        return None


def _has_userinfo(text: str) -> bool:
    try:
        parts = urlsplit(text.strip())
    except ValueError:
        return False
    return bool(parts.scheme and parts.netloc and "@" in parts.netloc)


def _without_userinfo(url: str) -> str:
    try:
        parts = urlsplit(url)
    except ValueError:
        return url
    if not (parts.scheme and "@" in parts.netloc):
        return url
    return urlunsplit(parts._replace(netloc=parts.netloc.rsplit("@", 1)[1]))


def _scrub_scope(key: str) -> str:
    """A dropped key's name for the log, without any user information in its scope."""
    return re.sub(r"^//[^/@]*@", "//", key)
