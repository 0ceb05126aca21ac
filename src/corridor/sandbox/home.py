"""What the sandbox sees of the invoking user's home directory.

The home becomes a fresh tmpfs: what the agent writes there is thrown away with the
session. Every entry of the real home is bound into it read-only, so tools installed
under the home (pyenv, nvm, cargo, ~/.local/bin) keep working, except:

- secrets (SSH keys, cloud and registry credentials, shell histories, ...) are masked:
  top-level ones are simply not bound, nested ones get an empty tmpfs or /dev/null on top;
- caches that tools must be able to write get a fresh, empty tmpfs.

The plan is pure (a listing in, mount operations out); bwrap.py turns it into flags.
"""

from __future__ import annotations

from collections.abc import Iterable
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

# Directories tools expect to write to; they start empty and writable.
SCRATCH_PATHS: tuple[str, ...] = (".cache", ".npm", ".local/state", ".pnpm-store", ".yarn")


@dataclass(frozen=True, slots=True)
class HomeEntry:
    name: str
    is_dir: bool


@dataclass(frozen=True, slots=True)
class Mount:
    """One mount operation, applied in order: op is 'ro-bind', 'tmpfs' or 'mask-file'."""

    op: str
    path: str  # absolute path inside the sandbox (same as on the host)


def plan_home(
    home: str, entries: Iterable[HomeEntry], nested_present: Iterable[str]
) -> list[Mount]:
    """Mounts that build the sandbox's view of `home`.

    `entries` lists the home's top-level entries; `nested_present` the SECRET_PATHS and
    SCRATCH_PATHS with a '/' in them that exist on the host (relative to home).
    """
    root = PurePosixPath(home)
    top_secret = {p for p in SECRET_PATHS if "/" not in p}
    top_scratch = {p for p in SCRATCH_PATHS if "/" not in p}
    mounts = [Mount("tmpfs", str(root))]
    for entry in sorted(entries, key=lambda e: e.name):
        if entry.name in top_secret:
            continue  # masked: not there at all
        if entry.name in top_scratch and entry.is_dir:
            mounts.append(Mount("tmpfs", str(root / entry.name)))
            continue
        mounts.append(Mount("ro-bind", str(root / entry.name)))
    nested = set(nested_present)
    for rel in SECRET_PATHS:
        if "/" in rel and rel in nested:
            mounts.append(Mount("mask", str(root / rel)))
    for rel in SCRATCH_PATHS:
        if "/" in rel and rel in nested:
            mounts.append(Mount("tmpfs", str(root / rel)))
    return mounts


def is_secret(home: str, path: str) -> bool:
    """True when `path` is one of the masked secret paths (or inside one)."""
    try:
        rel = PurePosixPath(path).relative_to(home)
    except ValueError:
        return False
    return any(rel == PurePosixPath(s) or PurePosixPath(s) in rel.parents for s in SECRET_PATHS)
