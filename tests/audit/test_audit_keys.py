"""The signing key: created once, owner-only, pinned by its public half."""

from __future__ import annotations

import stat
import threading
from pathlib import Path

import pytest

from corridor.audit.keys import (
    SigningKeyError,
    fingerprint,
    key_path,
    load_or_create_signer,
    load_public_key,
    load_signer,
    public_pem,
)
from corridor.errors import UserError


def test_created_on_first_use_with_owner_only_permissions(tmp_path: Path) -> None:
    state = tmp_path / "state"
    assert load_signer(state) is None  # reading never creates
    signer = load_or_create_signer(state)
    path = key_path(state)
    assert path == state / "keys" / "audit-signing-key.pem"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    assert path.read_bytes().startswith(b"-----BEGIN PRIVATE KEY-----")
    again = load_or_create_signer(state)
    assert again.fingerprint == signer.fingerprint  # the same key from then on
    assert [p.name for p in path.parent.iterdir()] == [path.name]  # no temporary left


def test_two_processes_starting_at_once_keep_one_key(tmp_path: Path) -> None:
    found: list[str] = []
    threads = [
        threading.Thread(target=lambda: found.append(load_or_create_signer(tmp_path).fingerprint))
        for _ in range(8)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(set(found)) == 1 and len(found) == 8


def test_fingerprint_is_openssh_style(tmp_path: Path) -> None:
    signer = load_or_create_signer(tmp_path)
    assert signer.fingerprint.startswith("SHA256:")
    assert len(signer.fingerprint) == len("SHA256:") + 43  # 32 bytes, unpadded base64
    assert fingerprint(signer.public) == signer.fingerprint


def test_key_show_output_is_a_pinnable_key_file(tmp_path: Path) -> None:
    signer = load_or_create_signer(tmp_path)
    pinned = tmp_path / "team.pub"
    pinned.write_text(
        f"# corridor audit signing key\n# {signer.fingerprint}\n{public_pem(signer.public)}"
    )
    assert fingerprint(load_public_key(pinned)) == signer.fingerprint


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("", "no PUBLIC KEY block in the file"),
        ("-----BEGIN PUBLIC KEY-----\nAAAA\n-----END PUBLIC KEY-----\n", "not a public key"),
    ],
)
def test_a_bad_pinned_key_is_a_usage_error(tmp_path: Path, content: str, message: str) -> None:
    path = tmp_path / "k.pub"
    path.write_text(content)
    with pytest.raises(UserError) as info:
        load_public_key(path)
    assert info.value.message.startswith(f"--key {path}: {message}")


def test_a_missing_pinned_key(tmp_path: Path) -> None:
    with pytest.raises(UserError, match=r"--key .*nope.pub: No such file or directory"):
        load_public_key(tmp_path / "nope.pub")


def test_a_corrupt_private_key_says_which_file(tmp_path: Path) -> None:
    path = key_path(tmp_path)
    path.parent.mkdir(parents=True)
    path.write_text("garbage")
    with pytest.raises(SigningKeyError, match=rf"^{path} is not a usable private key"):
        load_or_create_signer(tmp_path)
