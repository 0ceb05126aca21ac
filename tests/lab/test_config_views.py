"""Configuration files that mix settings and secrets are shown filtered in the sandbox.

git, npm and pip inside must still see the user's name, the company registry and the
mirror's URL; they must not see the token next to them. The host's files are untouched,
and the start event names what was left out, never the values.
"""

from __future__ import annotations

import json
import sys

import pytest

pytestmark = pytest.mark.lab

TOKEN = "tok-Vq83nWz5Lr2Kp9Xj"
NPM_TOKEN = "npm_Hd7Qm2Rt8Ys4Bc6"
PIP_TOKEN = "pip-Zk4Fw9Gx2Nq7"

GITCONFIG = f"""\
[user]
\tname = Ada Lovelace
\temail = ada@example.test
[alias]
\tlg = log --oneline
[url "https://{TOKEN}@git.test/"]
\tinsteadOf = https://git.test/
[http]
\textraHeader = Authorization: Bearer {TOKEN}
[credential]
\thelper = store
"""
NPMRC = f"registry=https://npm-mirror.test/\n//npm-mirror.test/:_authToken={NPM_TOKEN}\n"
PIP_CONF = f"[global]\nindex-url = https://ci:{PIP_TOKEN}@pypi-mirror.test/simple/\n"


def test_filtered_configuration_inside_the_sandbox(lab, tmp_path):
    home = tmp_path / "home"
    (home / ".config" / "pip").mkdir(parents=True)
    (home / ".gitconfig").write_text(GITCONFIG)
    (home / ".npmrc").write_text(NPMRC)
    (home / ".config" / "pip" / "pip.conf").write_text(PIP_CONF)
    ws = home / "project"
    ws.mkdir()
    script = (
        "git config --global user.name; git config --global alias.lg; "
        "git config --global --get-regexp '^url\\.' || echo no-url-rewrite; "
        "git config --global http.extraHeader || echo no-extra-header; "
        "git config --global credential.helper || echo no-helper; "
        "npm config get registry 2>/dev/null || grep registry ~/.npmrc; "
        "python3 -c 'import configparser,os; c=configparser.ConfigParser(); "
        'c.read(os.path.expanduser("~/.config/pip/pip.conf")); '
        'print(c["global"]["index-url"])\'; '
        "git config --global user.email bot@agent.test && git config --global user.email; "
        f"cat ~/.gitconfig ~/.npmrc ~/.config/pip/pip.conf | grep -c -e {TOKEN} -e {NPM_TOKEN} "
        f"-e {PIP_TOKEN} || true"
    )
    state = tmp_path / "st"
    r = lab.run(
        [sys.executable, "-m", "corridor", "run", "-q", "--state-dir", str(state), "--",
         "sh", "-c", script],
        env={"HOME": str(home), "XDG_CONFIG_HOME": None, "NPM_CONFIG_USERCONFIG": None},
        cwd=str(ws),
    )  # fmt: skip
    assert r.returncode == 0, r.stderr
    assert r.stdout.splitlines() == [
        "Ada Lovelace",
        "log --oneline",
        "no-url-rewrite",
        "no-extra-header",
        "no-helper",
        "https://npm-mirror.test/",
        "https://pypi-mirror.test/simple/",
        "bot@agent.test",  # the copy is the command's to change, for this session
        "0",
    ]
    # The host's files are untouched (the email written inside did not land here).
    assert (home / ".gitconfig").read_text() == GITCONFIG
    assert (home / ".npmrc").read_text() == NPMRC
    # The start event names what was left out, never a value.
    log = lab.run([sys.executable, "-m", "corridor", "log", "--format", "jsonl",
                   "--state-dir", str(state)])  # fmt: skip
    start = json.loads(log.stdout.splitlines()[0])
    filtered = start["data"]["config_filtered"]
    assert filtered == {
        str((home / ".gitconfig").resolve()): ["url.insteadof", "http.extraheader",
                                               "credential.helper"],
        str((home / ".npmrc").resolve()): ["//npm-mirror.test/:_authToken"],
        str((home / ".config/pip/pip.conf").resolve()): ["global.index-url"],
    }  # fmt: skip
    records = [json.loads(line) for line in log.stdout.splitlines()]
    del records[0]["data"]["command"]  # the test's own script names the tokens it greps for
    for secret in (TOKEN, NPM_TOKEN, PIP_TOKEN):
        assert secret not in json.dumps(records)


def test_a_symlinked_dotfile_is_filtered_under_both_names(lab, tmp_path):
    """~/.gitconfig -> ~/dotfiles/gitconfig: the file it names is the one replaced."""
    home = tmp_path / "home"
    (home / "dotfiles").mkdir(parents=True)
    (home / "dotfiles" / "gitconfig").write_text(GITCONFIG)
    (home / ".gitconfig").symlink_to("dotfiles/gitconfig")
    ws = home / "project"
    ws.mkdir()
    script = (
        f"git config --global user.name; grep -c {TOKEN} ~/.gitconfig ~/dotfiles/gitconfig || true"
    )
    r = lab.run(
        [sys.executable, "-m", "corridor", "run", "-q", "--state-dir", str(tmp_path / "st"),
         "--", "sh", "-c", script],
        env={"HOME": str(home), "XDG_CONFIG_HOME": None},
        cwd=str(ws),
    )  # fmt: skip
    assert r.returncode == 0, r.stderr
    assert r.stdout.splitlines() == [
        "Ada Lovelace",
        f"{home}/.gitconfig:0",
        f"{home}/dotfiles/gitconfig:0",
    ]
    assert (home / "dotfiles" / "gitconfig").read_text() == GITCONFIG
