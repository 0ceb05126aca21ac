"""What the sandbox sees of the invoking user's home directory.

The home stays readable (tools installed under it, such as pyenv, nvm, cargo or
~/.local/bin, keep working) but every write lands in a throwaway layer: the init mounts
an overlay on the home whose upper layer is a tmpfs that dies with the session. Secrets
(SSH keys, cloud and registry credentials, shell histories, ...) are masked on top of
it: an empty directory or an empty file stands where they were.

Where the kernel refuses the overlay, the home stays read-only (writes fail instead of
persisting) with the same masks, and scratch directories tools expect to write to get a
fresh tmpfs.

The plan is pure (a listing in, masks out); the init (init.py) mounts it.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import PurePosixPath

# Paths relative to the home that hold credentials or private history. A user would
# expect each of these to be invisible to an agent that runs untrusted instructions.
SECRET_PATHS: tuple[str, ...] = (
    ".ssh",
    ".gnupg",
    ".aws",
    ".azure",
    ".config/gcloud",
    ".config/gh",
    ".config/hub",
    ".netrc",
    "_netrc",
    ".docker",
    ".kube",
    ".npmrc",
    ".yarnrc",
    ".yarnrc.yml",
    ".pypirc",
    ".git-credentials",
    ".config/git/credentials",
    # Settings and secrets in one file: shown as a filtered copy (sandbox/views.py), and
    # masked like the rest whenever no copy could be made.
    ".gitconfig",
    ".config/git/config",
    ".pip/pip.conf",
    ".config/pip/pip.conf",
    ".gitcookies",
    ".cargo/credentials",
    ".cargo/credentials.toml",
    ".terraform.d",
    ".vault-token",
    ".password-store",
    ".local/share/keyrings",
    ".pgpass",
    ".my.cnf",
    ".s3cfg",
    ".boto",
    ".oci",
    ".config/doctl",
    ".fly",
    ".config/op",
    ".mozilla",
    ".config/google-chrome",
    ".config/chromium",
    ".bash_history",
    ".zsh_history",
    ".python_history",
    ".psql_history",
    ".mysql_history",
    ".node_repl_history",
    ".lesshst",
    ".viminfo",
    ".config/rclone",
    ".config/heroku",
    ".heroku",
    ".gem/credentials",
    ".m2/settings.xml",
    ".gradle/gradle.properties",
    ".composer/auth.json",
    ".config/composer/auth.json",
    ".local/share/python_keyring",
    ".claude/.credentials.json",
    ".codex/auth.json",
)

# Directories tools expect to write to; when the home cannot be overlaid they get an
# empty tmpfs so that caches still work.
SCRATCH_PATHS: tuple[str, ...] = (".cache", ".npm", ".local/state", ".pnpm-store", ".yarn")


@dataclass(frozen=True, slots=True)
class Mask:
    """A secret path to hide: an empty tmpfs on a directory, /dev/null on a file."""

    path: str
    is_dir: bool


def home_masks(home: str) -> list[Mask]:
    """The masks for the secret paths that exist under `home` (parents before children)."""
    masks: list[Mask] = []
    for rel in sorted(SECRET_PATHS, key=lambda p: (p.count("/"), p)):
        path = os.path.join(home, rel)
        if os.path.lexists(path):
            masks.append(Mask(path, os.path.isdir(path)))
    return masks


def scratch_dirs(home: str) -> list[str]:
    """Existing scratch directories (only used when the home cannot be overlaid)."""
    return [os.path.join(home, p) for p in SCRATCH_PATHS if os.path.isdir(os.path.join(home, p))]


def is_secret(home: str, path: str) -> bool:
    """True when `path` is one of the masked secret paths (or inside one)."""
    try:
        rel = PurePosixPath(path).relative_to(home)
    except ValueError:
        return False
    return any(rel == PurePosixPath(s) or PurePosixPath(s) in rel.parents for s in SECRET_PATHS)
