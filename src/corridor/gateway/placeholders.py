"""Placeholders: what the sandbox holds instead of a real credential value.

A placeholder is random per session and shaped like the real token where the token's
format is public (a GitHub token stays `ghp_` + 36 base62 characters with a valid
checksum), so that client-side format checks pass; otherwise `corridor-<random>`.
Pure: the randomness comes from the `secrets` module or a stand-in passed by tests.
"""

from __future__ import annotations

import re
import secrets
import zlib
from typing import Any

# Generic placeholders: "corridor-" + this many base62 characters (about 190 bits).
PLACEHOLDER_RANDOM_CHARS = 32

BASE62 = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
_HEX_LOWER = "0123456789abcdef"
_LETTERS = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
_URLSAFE64 = BASE62 + "-_"

# Token formats whose shape is public, so a placeholder may copy it: (prefix, body regex).
# The body is then replaced by random characters of the same class, separators kept.
_SHAPED_TOKENS: tuple[tuple[str, re.Pattern[str]], ...] = tuple(
    (prefix, re.compile(body))
    for prefix, body in (
        ("github_pat_", r"[A-Za-z0-9]{22}_[A-Za-z0-9]{59}"),
        ("glpat-", r"[A-Za-z0-9_-]{20,}"),
        ("sk-ant-api03-", r"[A-Za-z0-9_-]{20,}"),
        ("sk-ant-oat01-", r"[A-Za-z0-9_-]{20,}"),
        ("sk-ant-", r"[A-Za-z0-9_-]{20,}"),
        ("sk-proj-", r"[A-Za-z0-9_-]{20,}"),
        ("sk-", r"[A-Za-z0-9_-]{20,}"),
        ("sk_live_", r"[A-Za-z0-9]{16,}"),
        ("sk_test_", r"[A-Za-z0-9]{16,}"),
        ("rk_live_", r"[A-Za-z0-9]{16,}"),
        ("rk_test_", r"[A-Za-z0-9]{16,}"),
        ("xoxb-", r"[A-Za-z0-9-]{16,}"),
        ("xoxp-", r"[A-Za-z0-9-]{16,}"),
        ("xapp-", r"[A-Za-z0-9-]{16,}"),
        ("hf_", r"[A-Za-z]{30,}"),
        ("pypi-", r"[A-Za-z0-9_-]{50,}"),
        ("dop_v1_", r"[a-f0-9]{64}"),
        ("glc_", r"[A-Za-z0-9+/=_-]{32,}"),
    )
)
# GitHub (ghp_, gho_, ghu_, ghs_, ghr_) and npm tokens: 30 random base62 characters and a
# 6-character base62 CRC32 of them, which some client-side checks verify.
_CHECKSUM_TOKEN = re.compile(r"(gh[pousr]_|npm_)[A-Za-z0-9]{36}")
_JWT = re.compile(r"(eyJ[A-Za-z0-9_-]+\.eyJ[A-Za-z0-9_-]+\.)([A-Za-z0-9_-]{16,})")


def make_placeholder(value: str, token: Any = secrets) -> str:
    """A placeholder for `value`: same public format where known, else corridor-<random>.

    Only formats whose structure is public are copied, so the placeholder tells the
    sandbox nothing about the value beyond which service issued it. `token` is the source
    of randomness (the `secrets` module; tests may pass a seeded stand-in).
    """
    if m := _CHECKSUM_TOKEN.fullmatch(value):
        body = "".join(token.choice(BASE62) for _ in range(30))
        return m.group(1) + body + base62_checksum(body)
    if m := _JWT.fullmatch(value):
        # Header and claims are readable by anyone holding a JWT (clients parse `exp`);
        # the signature is what makes it a credential, and that part is random here.
        return m.group(1) + "".join(token.choice(_URLSAFE64) for _ in m.group(2))
    for prefix, body in _SHAPED_TOKENS:
        rest = value[len(prefix) :]
        if value.startswith(prefix) and body.fullmatch(rest):
            return prefix + _shaped(rest, token)
    return "corridor-" + "".join(token.choice(BASE62) for _ in range(PLACEHOLDER_RANDOM_CHARS))


def base62_checksum(body: str) -> str:
    """CRC32 of `body` in 6 base62 digits, zero-padded (GitHub's token checksum)."""
    n = zlib.crc32(body.encode())
    digits = []
    while n:
        n, r = divmod(n, 62)
        digits.append(BASE62[r])
    return "".join(reversed(digits)).rjust(6, "0")


def _shaped(rest: str, token: Any) -> str:
    body = [c for c in rest if c not in "-_."]
    if all(c in _HEX_LOWER for c in body):
        alphabet = _HEX_LOWER
    elif all(c.isalpha() for c in body):
        alphabet = _LETTERS
    else:
        alphabet = BASE62
    return "".join(c if c in "-_." else token.choice(alphabet) for c in rest)
