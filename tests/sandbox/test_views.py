"""Filtered copies of .npmrc and pip.conf: settings kept, secrets out, names recorded."""

from __future__ import annotations

import configparser
from pathlib import Path

import pytest

from corridor.sandbox.views import build_views, npmrc_view, pip_conf_view

TOKEN = "npm_R4nd0mT0k3nV4lu3Xq9Zp2Lm"

NPMRC = f"""\
; company registry
registry=https://npm-mirror.test/
@acme:registry=https://npm-mirror.test/acme/
//npm-mirror.test/:_authToken={TOKEN}
//npm-mirror.test/acme/:_auth=dXNlcjpwYXNz
//other.test/:_authToken=${{OTHER_TOKEN}}
_password=aHVudGVyMg==
username=me
email=me@example.test
always-auth=true
cafile=/etc/ssl/company.pem
strict-ssl=true
proxy=http://me:hunter2@proxy.test:3128/
fund=false
"""


def test_npmrc_keeps_settings_and_drops_secrets() -> None:
    text, dropped = npmrc_view(NPMRC)
    assert TOKEN not in text and "dXNlcjpwYXNz" not in text and "hunter2" not in text
    for kept in ("registry=https://npm-mirror.test/", "@acme:registry=", "cafile=",
                 "strict-ssl=true", "fund=false", "; company registry",
                 "//other.test/:_authToken=${OTHER_TOKEN}"):  # fmt: skip
        assert kept in text
    assert dropped == [
        "//npm-mirror.test/:_authToken",
        "//npm-mirror.test/acme/:_auth",
        "_password",
        "username",
        "email",
        "always-auth",
        "proxy",
    ]


def test_npmrc_scope_with_user_information_is_named_without_it() -> None:
    _, dropped = npmrc_view("//me:pw@npm-mirror.test/:_authToken=x\n")
    assert dropped == ["//npm-mirror.test/:_authToken"]


PIP_CONF = """\
[global]
index-url = https://ci-bot:s3cr3t-t0ken@pypi-mirror.test/simple/
extra-index-url =
    https://pypi-extra.test/simple/
    https://__token__:pypi-AgEIcHlwaS5vcmc@pypi-private.test/simple/
timeout = 30

[install]
find-links = https://user@files.test/wheels/
"""


def test_pip_conf_loses_user_information_but_keeps_the_urls() -> None:
    result = pip_conf_view(PIP_CONF)
    assert result is not None
    text, changed = result
    assert "s3cr3t" not in text and "pypi-AgEI" not in text and "user@" not in text
    parsed = configparser.RawConfigParser()
    parsed.read_string(text)
    assert parsed.get("global", "index-url") == "https://pypi-mirror.test/simple/"
    assert parsed.get("global", "extra-index-url").split() == [
        "https://pypi-extra.test/simple/",
        "https://pypi-private.test/simple/",
    ]
    assert parsed.get("global", "timeout") == "30"
    assert parsed.get("install", "find-links") == "https://files.test/wheels/"
    assert changed == ["global.index-url", "global.extra-index-url", "install.find-links"]


def test_pip_conf_that_does_not_parse_is_not_shown() -> None:
    assert pip_conf_view("index-url = https://x.test/\n") is None


@pytest.mark.parametrize("name", [".npmrc", ".config/pip/pip.conf", ".pip/pip.conf"])
def test_build_views_finds_the_files_that_exist(tmp_path: Path, name: str) -> None:
    path = tmp_path / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(NPMRC if name == ".npmrc" else PIP_CONF)
    views = build_views(None, str(tmp_path), {})
    assert [v.path for v in views] == [str(path)]
    assert views[0].dropped and TOKEN not in views[0].text and "s3cr3t" not in views[0].text


def test_build_views_with_nothing_configured(tmp_path: Path) -> None:
    assert build_views(None, str(tmp_path), {}) == []
