"""The signing key and the signed checkpoint that closes each session.

The key is Ed25519, created on first use at `STATE_DIR/keys/audit-signing-key.pem`
(directory 0700, file 0600, PKCS#8 PEM, unencrypted: corridor signs unattended). Teams
pin its public key (`corridor key show`) and verify with it on another machine.

A checkpoint is the last record of a session. Its `data` holds the signed statement
(session, record count, head hash, time, whether it was written by recovery after corridor
was killed), the signature, and the signer's fingerprint. What is signed is the canonical
JSON of the statement alone, so a verifier needs nothing but the record and the public key.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import secrets
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from corridor.errors import UserError

KEYS_DIR = "keys"
KEY_FILENAME = "audit-signing-key.pem"
KEYS_DIR_MODE = 0o700
KEY_FILE_MODE = 0o600  # the private key signs the log: owner only
CHECKPOINT_VERSION = 1
FINGERPRINT_PREFIX = "SHA256:"
_PEM_BEGIN = "-----BEGIN PUBLIC KEY-----"
_PEM_END = "-----END PUBLIC KEY-----"


class SigningKeyError(UserError):
    """A key file is missing, unreadable or not an Ed25519 key."""


def key_path(state_dir: Path) -> Path:
    """Where the signing key of a state directory lives."""
    return state_dir / KEYS_DIR / KEY_FILENAME


def fingerprint(public: Ed25519PublicKey) -> str:
    """`SHA256:` + unpadded base64 of SHA-256 over the raw 32-byte key (as OpenSSH shows it)."""
    raw = public.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    digest = base64.b64encode(hashlib.sha256(raw).digest()).decode().rstrip("=")
    return FINGERPRINT_PREFIX + digest


def public_pem(public: Ed25519PublicKey) -> str:
    """The public key as a PEM SubjectPublicKeyInfo block."""
    return public.public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    ).decode()


@dataclass(frozen=True)
class Signer:
    """The private key and what it is known by."""

    private: Ed25519PrivateKey

    @property
    def public(self) -> Ed25519PublicKey:
        """The public half."""
        return self.private.public_key()

    @property
    def fingerprint(self) -> str:
        """The public key's fingerprint."""
        return fingerprint(self.public)

    def sign(self, message: bytes) -> bytes:
        """An Ed25519 signature over `message`."""
        return self.private.sign(message)


def load_or_create_signer(state_dir: Path) -> Signer:
    """The state directory's signing key, created (owner-only) if there is none yet."""
    path = key_path(state_dir)
    if not path.exists():
        _create(path)
    return Signer(_load_private(path))


def load_signer(state_dir: Path) -> Signer | None:
    """The state directory's signing key, or None when none was created yet."""
    path = key_path(state_dir)
    if not path.exists():
        return None
    return Signer(_load_private(path))


def _create(path: Path) -> None:
    path.parent.mkdir(mode=KEYS_DIR_MODE, parents=True, exist_ok=True)
    os.chmod(path.parent, KEYS_DIR_MODE)  # mkdir's mode is filtered by the umask
    pem = Ed25519PrivateKey.generate().private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    # Written under a temporary name and linked into place: two corridor processes starting
    # at once never see half a key, and the first key made is the one both keep.
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, KEY_FILE_MODE)
    try:
        os.write(fd, pem)
        os.fsync(fd)
    finally:
        os.close(fd)
    try:
        os.link(tmp, path)
    except FileExistsError:
        pass
    finally:
        os.unlink(tmp)


def _load_private(path: Path) -> Ed25519PrivateKey:
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise SigningKeyError(f"cannot read the signing key {path}: {exc.strerror}") from None
    try:
        key = serialization.load_pem_private_key(data, password=None)
    except (ValueError, TypeError) as exc:
        raise SigningKeyError(f"{path} is not a usable private key: {exc}") from None
    if not isinstance(key, Ed25519PrivateKey):
        raise SigningKeyError(f"{path} is not an Ed25519 key")
    return key


def load_public_key(path: Path) -> Ed25519PublicKey:
    """Read a pinned public key: a file holding a PEM PUBLIC KEY block (other lines ignored,
    so the output of `corridor key show` works as is)."""
    try:
        text = path.read_text(errors="replace")
    except OSError as exc:
        raise UserError(f"--key {path}: {exc.strerror}") from None
    start, end = text.find(_PEM_BEGIN), text.find(_PEM_END)
    if start < 0 or end < start:
        raise UserError(
            f"--key {path}: no PUBLIC KEY block in the file",
            hint="save the output of `corridor key show` on the machine that signed the log",
        )
    block = text[start : end + len(_PEM_END)] + "\n"
    try:
        key = serialization.load_pem_public_key(block.encode())
    except ValueError as exc:
        raise UserError(f"--key {path}: not a public key: {exc}") from None
    if not isinstance(key, Ed25519PublicKey):
        raise UserError(f"--key {path}: not an Ed25519 key")
    return key


# -- checkpoints --------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Statement:
    """What a checkpoint asserts: `count` records (indexes 0..count-1) end in `head`."""

    session: str
    count: int
    head: str  # hex SHA-256 of record count-1 (the genesis value when count is 0)
    ts: float
    recovered: bool  # written by recovery after the corridor process was killed

    def message(self) -> bytes:
        """The bytes that are signed: canonical JSON of the statement."""
        body = {
            "v": CHECKPOINT_VERSION,
            "session": self.session,
            "count": self.count,
            "head": self.head,
            "ts": self.ts,
            "recovered": self.recovered,
        }
        return json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=True).encode()


def checkpoint_data(statement: Statement, signer: Signer, extra: dict[str, Any]) -> dict[str, Any]:
    """The `data` of a checkpoint record: the statement, its signature and the signer."""
    return {
        **extra,
        "v": CHECKPOINT_VERSION,
        "count": statement.count,
        "head": statement.head,
        "recovered": statement.recovered,
        "key": signer.fingerprint,
        "signature": base64.b64encode(signer.sign(statement.message())).decode(),
    }


def statement_of(session: str, ts: float, data: dict[str, Any]) -> Statement:
    """Rebuild the signed statement from a checkpoint record. Raises ValueError if malformed."""
    count, head, recovered = data.get("count"), data.get("head"), data.get("recovered", False)
    if data.get("v") != CHECKPOINT_VERSION:
        raise ValueError(f"unknown checkpoint version {data.get('v')!r}")
    if type(count) is not int or not isinstance(head, str) or type(recovered) is not bool:
        raise ValueError("checkpoint fields count/head/recovered are missing or of the wrong type")
    return Statement(session, count, head, ts, recovered)


def signature_valid(public: Ed25519PublicKey, statement: Statement, signature: object) -> bool:
    """Whether `signature` (base64 text) is `public`'s signature over the statement."""
    if not isinstance(signature, str):
        return False
    try:
        raw = base64.b64decode(signature, validate=True)
        public.verify(raw, statement.message())
    except (ValueError, InvalidSignature):
        return False
    return True
