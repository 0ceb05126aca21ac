"""The sandbox's copy of the git configuration keeps everything but the secrets.

Round trips go through the real git: the filtered text must read back, with git, as
exactly the entries that were kept.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from corridor.sandbox.gitconfig import Entry, parse_list, read_config, sanitize, secret_reason

GIT = shutil.which("git")
needs_git = pytest.mark.skipif(GIT is None, reason="git is not installed")

TOKEN = "ghp_Q7tXk2LmR9vB4nZ8wJ3cD6fH1sA5eY0uPiO"

DROPPED = {
    "credential helper": Entry("credential.helper", "store"),
    "credential helper for a URL": Entry("credential.https://git.test.helper", "!echo pw"),
    "credential username": Entry("credential.https://git.test.username", "me"),
    "extra header": Entry("http.extraheader", f"Authorization: Bearer {TOKEN}"),
    "extra header for a URL": Entry("http.https://git.test/.extraheader", f"X-Token: {TOKEN}"),
    "token in a URL rewrite (subsection)": Entry(
        f"url.https://{TOKEN}@git.test/.insteadof", "https://git.test/"
    ),
    "user and token in a URL value": Entry(
        "remote.origin.url", f"https://me:{TOKEN}@git.test/repo.git"
    ),
    "cookie file": Entry("http.cookiefile", "/home/me/.gitcookies"),
    "askpass program": Entry("core.askpass", "/usr/bin/ksshaskpass"),
    "include": Entry("include.path", "~/.gitconfig.private"),
    "conditional include": Entry("includeif.gitdir:~/work/.path", "~/.gitconfig.work"),
    "smtp password": Entry("sendemail.smtppass", "hunter2"),
    "user and password on any scheme": Entry("remote.x.url", "ssh://me:hunter2@git.test/r"),
    "a token key": Entry("github.token", TOKEN),
    "an auth key": Entry("hub.oauthtoken", TOKEN),
}

KEPT = {
    "user name": Entry("user.name", "Ada Lovelace"),
    "user email": Entry("user.email", "ada@example.test"),
    "alias": Entry("alias.lg", "log --graph --oneline"),
    "URL rewrite without credentials": Entry("url.git@git.test:.insteadof", "https://git.test/"),
    "remote URL without credentials": Entry("remote.origin.url", "https://git.test/r.git"),
    "ssh user in an scp-like URL is not user information": Entry(
        "remote.other.url", "git@git.test:me/r.git"
    ),
    "ssh user in an ssh URL": Entry("url.ssh://git@git.test/.insteadof", "https://git.test/"),
    "default branch": Entry("init.defaultbranch", "main"),
    "a key alone means true": Entry("core.bare", None),
    "quotes and backslashes": Entry("alias.q", 'log --format="%h \\ %s"\tend'),
}


@pytest.mark.parametrize("entry", DROPPED.values(), ids=DROPPED.keys())
def test_secret_entries_are_dropped(entry: Entry) -> None:
    assert secret_reason(entry) is not None
    text, dropped = sanitize([entry])
    assert dropped == [f"{entry.section}.{entry.key}"]
    assert TOKEN not in text and (entry.value or "") not in text.split("\n", 1)[1]


@pytest.mark.parametrize("entry", KEPT.values(), ids=KEPT.keys())
def test_ordinary_entries_are_kept(entry: Entry) -> None:
    assert secret_reason(entry) is None
    _, dropped = sanitize([entry])
    assert dropped == []


def test_parse_list_knows_a_key_alone_from_an_empty_value() -> None:
    output = b"core.bare\x00user.name\nAda\x00core.editor\n\x00"
    assert parse_list(output) == [
        Entry("core.bare", None),
        Entry("user.name", "Ada"),
        Entry("core.editor", ""),
    ]


@needs_git
def test_the_copy_reads_back_as_exactly_what_was_kept(tmp_path: Path) -> None:
    source = tmp_path / "gitconfig"
    everything = [*KEPT.values(), *DROPPED.values()]
    for entry in everything:  # written by git itself, so the source is what a user has
        args = ["--add", entry.name] + ([] if entry.value is None else [entry.value])
        if entry.value is None:
            # git config cannot write a bare key: append it as a user would.
            with source.open("a") as f:
                f.write(f"[{entry.section}]\n\t{entry.key}\n")
            continue
        subprocess.run([GIT, "config", "--file", str(source), *args], check=True)
    read = read_config(GIT, source)
    assert read is not None and sorted(read, key=repr) == sorted(everything, key=repr)
    text, dropped = sanitize(read)
    assert sorted(dropped) == sorted(f"{e.section}.{e.key}" for e in DROPPED.values())
    copy = tmp_path / "copy"
    copy.write_text(text)
    assert sorted(read_config(GIT, copy) or [], key=repr) == sorted(KEPT.values(), key=repr)
    assert TOKEN not in text and "hunter2" not in text


@needs_git
def test_absent_or_broken_files_give_none(tmp_path: Path) -> None:
    assert read_config(GIT, tmp_path / "absent") is None
    broken = tmp_path / "broken"
    broken.write_text("[user\n name = x\n")
    assert read_config(GIT, broken) is None
