"""Tool answers kept between runs, given back only while nothing they depend on changed.

Registry discovery asks tools for what only they know (pip its default index and the
config files it would load, npm its registries): each question starts an interpreter and
costs 0.1-0.3 s, on every `corridor run`. Here an answer is kept with:
- its key: the question (argv, the extra environment) and every environment variable
  that steers the tool, by value;
- its dependencies, each checked before the answer is given back: the stat (device,
  inode, size, mtime, ctime, mode) of the program, of its `#!` interpreter, and of the
  files the answer came from or names, and environment variables those files refer to.
A stat signature changes when a file is replaced, rewritten, touched or removed; a file
that did not exist is recorded as absent, so its creation is seen too.

Configuration files whose content discovery parses are not kept here: they are read on
every run, so a change is seen at once.

The file lives in corridor's state directory, which the sandbox cannot see and which may
not lie inside the workspace: a kept answer widens the policy, so an agent must not be
able to write one. A cache that cannot be read, parsed or written is ignored (the tool is
asked, as without it): never an error for the user.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import stat
import tempfile
import threading
import time
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path

# Where, under the state directory, the answers are kept.
ANSWER_CACHE_FILE = Path("cache") / "discovery.json"
# Bumped whenever what is kept, or how it is keyed, changes: older files are ignored.
CACHE_FORMAT = 1
# One entry per (tool, interpreter, environment) seen; a user switching between a few
# virtualenvs or shells keeps all of them, and the oldest beyond this are dropped.
MAX_ENTRIES = 32
# A cache file bigger than this was not written by corridor: ignored, and rewritten.
MAX_CACHE_BYTES = 1024 * 1024
# An answer bigger than this is not kept (32 of them must fit in MAX_CACHE_BYTES).
MAX_ANSWER_CHARS = 16 * 1024
# How much of a program is read to find its `#!` line (Linux reads at most 256 bytes).
SHEBANG_BYTES = 256

# A dependency: ("stat", path, signature or None for absent) or ("env", name, value or None).
Dep = tuple[str, str, str | None]

# Threads of one process (python and node are discovered concurrently) take turns to read,
# change and write the file; between processes the last writer wins, which only loses an
# entry (asked again next time), never mixes two files: writes are temp file + rename.
_lock = threading.Lock()


def stat_signature(path: str | os.PathLike[str]) -> str | None:
    """What changes when the file at `path` (followed through symlinks) changes; None if
    there is no such file."""
    try:
        st = os.stat(path)
    except (OSError, ValueError):
        return None
    return f"{st.st_dev}:{st.st_ino}:{st.st_size}:{st.st_mtime_ns}:{st.st_ctime_ns}:{st.st_mode:o}"


def file_deps(paths: Iterable[str | os.PathLike[str]]) -> list[Dep]:
    """The current stat signature of each path, as dependencies."""
    return [("stat", os.fspath(p), stat_signature(p)) for p in dict.fromkeys(paths)]


def env_deps(names: Iterable[str], env: Mapping[str, str]) -> list[Dep]:
    """The current value of each environment variable (None: unset), as dependencies."""
    return [("env", name, env.get(name)) for name in dict.fromkeys(names)]


def program_deps(program: str, env: Mapping[str, str]) -> list[Dep]:
    """The program (its real path) and, for a script, the interpreter its `#!` names
    (`#!/usr/bin/env node` means the node found on PATH)."""
    real = os.path.realpath(program)
    deps = file_deps([program, real])
    interpreter = _shebang_interpreter(real, env)
    if interpreter is not None:
        deps += file_deps([interpreter, os.path.realpath(interpreter)])
    return deps


def _shebang_interpreter(path: str, env: Mapping[str, str]) -> str | None:
    try:
        with open(path, "rb") as f:
            head = f.read(SHEBANG_BYTES)
    except OSError:
        return None
    if not head.startswith(b"#!"):
        return None
    words = head[2:].split(b"\n", 1)[0].decode("utf-8", errors="replace").split()
    if not words:
        return None
    if os.path.basename(words[0]) == "env":
        names = [w for w in words[1:] if not w.startswith("-")]
        if not names:
            return words[0]
        return shutil.which(names[0], path=env.get("PATH", os.defpath)) or words[0]
    return words[0]


def deps_hold(deps: Sequence[Dep], env: Mapping[str, str]) -> bool:
    """Whether every dependency is as it was recorded."""
    for kind, name, value in deps:
        now = stat_signature(name) if kind == "stat" else env.get(name)
        if kind not in ("stat", "env") or now != value:
            return False
    return True


def question_key(
    argv: Sequence[str], extra_env: Mapping[str, str], steering: Mapping[str, str]
) -> str:
    """The identity of a question: argv, extra environment, the steering variables."""
    material = {
        "format": CACHE_FORMAT,
        "argv": list(argv),
        "extra_env": sorted(extra_env.items()),
        "env": sorted(steering.items()),
    }
    return hashlib.sha256(json.dumps(material, sort_keys=True).encode()).hexdigest()


class AnswerCache:
    """The answers file under one state directory. Every failure reads as "not kept"."""

    def __init__(self, path: Path):
        self.path = path

    def get(self, key: str, env: Mapping[str, str]) -> str | None:
        """The kept answer for `key`, if every one of its dependencies still holds."""
        try:
            with _lock:
                entry = self._load().get(key)
            if entry is None or not deps_hold(entry["deps"], env):
                return None
            return entry["answer"]
        except Exception:  # a broken cache must never fail discovery: ask the tool instead
            return None

    def put(self, key: str, answer: str, deps: Sequence[Dep]) -> None:
        """Keep `answer` for `key` (replacing an older one), dropping the oldest entries."""
        if len(answer) > MAX_ANSWER_CHARS:
            return
        try:
            with _lock:
                entries = self._load()
                entries.pop(key, None)
                entries[key] = {"answer": answer, "deps": list(deps), "at": time.time()}
                newest = sorted(entries.items(), key=lambda kv: kv[1]["at"])[-MAX_ENTRIES:]
                self._write(dict(newest))
        except Exception:  # an unwritable cache only means the tool is asked next time
            return

    def _load(self) -> dict[str, dict]:
        """The valid entries of the file; {} when it is missing, foreign or broken."""
        try:
            fd = os.open(self.path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
        except OSError:
            return {}
        with os.fdopen(fd, "rb") as f:
            st = os.fstat(f.fileno())
            # Only a file this user wrote, that nobody else may change, is believed.
            if not _private_regular_file(st) or st.st_size > MAX_CACHE_BYTES:
                return {}
            data = json.loads(f.read(MAX_CACHE_BYTES + 1))
        if not isinstance(data, dict) or data.get("format") != CACHE_FORMAT:
            return {}
        entries = data.get("entries")
        if not isinstance(entries, dict):
            return {}
        return {k: v for k, v in entries.items() if isinstance(k, str) and _valid_entry(v)}

    def _write(self, entries: Mapping[str, dict]) -> None:
        directory = self.path.parent
        # The state directory is private (0700) like the event log corridor keeps there;
        # only its parents, if missing, get the usual mode (as `corridor run` makes them).
        directory.parent.parent.mkdir(parents=True, exist_ok=True)
        directory.parent.mkdir(exist_ok=True, mode=0o700)
        directory.mkdir(exist_ok=True, mode=0o700)
        if not _private_directory(os.stat(directory)):
            return
        data = json.dumps({"format": CACHE_FORMAT, "entries": entries}, sort_keys=True)
        fd, tmp = tempfile.mkstemp(dir=directory, prefix=".discovery-", suffix=".tmp")
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as f:  # mkstemp: mode 0600
                f.write(data)
            os.replace(tmp, self.path)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise


def _private_regular_file(st: os.stat_result) -> bool:
    return stat.S_ISREG(st.st_mode) and st.st_uid == os.geteuid() and not st.st_mode & 0o022


def _private_directory(st: os.stat_result) -> bool:
    return stat.S_ISDIR(st.st_mode) and st.st_uid == os.geteuid() and not st.st_mode & 0o022


def _valid_entry(entry: object) -> bool:
    if not isinstance(entry, dict):
        return False
    answer, deps, at = entry.get("answer"), entry.get("deps"), entry.get("at")
    return (
        isinstance(answer, str)
        and isinstance(at, int | float)
        and isinstance(deps, list)
        and all(_valid_dep(d) for d in deps)
    )


def _valid_dep(dep: object) -> bool:
    return (
        isinstance(dep, list)
        and len(dep) == 3
        and dep[0] in ("stat", "env")
        and isinstance(dep[1], str)
        and (dep[2] is None or isinstance(dep[2], str))
    )
