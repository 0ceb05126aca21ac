"""Credential brokering: the real secret stays in the gateway, the sandbox gets a placeholder.

A policy's `credentials:` list says, for each secret, where the real value comes from
(`env:NAME`, `file:PATH`, `command:ARGV`), which hosts may receive it, how it is put on a
request (`bearer`, `basic`, `header:NAME` with a template) and for how long (`ttl`). At
session start the gateway reads each value once (`Broker.start`) and makes a placeholder,
random per session, shaped like the real token where the token's format is public (a
GitHub token stays `ghp_` + 36 base62 characters with a valid checksum) so that client-side
format checks pass; otherwise `corridor-<random>`. The sandbox sees only the placeholder.

On an inspected request the gateway calls, in this order:
1. `Broker.scan(host, url, headers, body)` (and a `BodyScanner` for a streamed body): a
   placeholder or a real value on its way to a host the credential is not bound to, plain,
   percent-encoded, base64 (standard or URL-safe, any alignment) or hex, is a finding: the
   request is blocked and recorded as an exfiltration attempt, naming the credential,
   never its value.
2. `Broker.inject(headers, host, now)`: on a bound host, before expiry, the placeholder in
   `Authorization: Bearer`, in `Authorization: Basic` (as password, or as user name) or in
   a configured header is replaced by the real value. After expiry a request still carrying
   the placeholder is refused with the reason.

This module is pure except `read_secret` (the three sources, run once at session start).
Nothing here logs, and no message, repr or exception text ever contains a real value.

Commands (`command:`) are split with shell rules (`shlex`) and run directly, never through
a shell: a value such as `command:gh auth token` needs none, and running a policy-provided
string through `sh -c` would make every quote in it a way in. A source that really needs
a pipe says so itself: `command:sh -c "vault read -field=token secret/x | tr -d '\\n'"`.
Shell operators outside such an explicit shell are refused when the policy is loaded.
"""

from __future__ import annotations

import base64
import binascii
import os
import re
import secrets
import subprocess
import zlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal
from urllib.parse import unquote_to_bytes

from corridor.errors import UserError

# The model lives with the policy (which imports nothing of the gateway); re-exported here
# so that the broker's users find everything in one place.
from corridor.policy.credentials import _CONTROL, VALUE_SLOT
from corridor.policy.credentials import CredentialSpec as CredentialSpec
from corridor.policy.credentials import Injection as Injection
from corridor.policy.credentials import Source as Source
from corridor.policy.credentials import format_ttl as format_ttl
from corridor.policy.credentials import parse_credentials as parse_credentials
from corridor.policy.credentials import parse_injection as parse_injection
from corridor.policy.credentials import parse_source as parse_source
from corridor.policy.credentials import parse_ttl as parse_ttl
from corridor.policy.hosts import HostPattern, InvalidHost, normalize_host

# ---- limits --------------------------------------------------------------------------------

# `command:` sources mint or read a token (gh, vault, aws, gcloud): seconds, not minutes.
# stdin is closed, so a command that would prompt fails at once instead of hanging.
COMMAND_TIMEOUT_S = 30.0
# A token, password or key is at most a few KiB (a JWT with many claims); more is a mistake
# (a whole config file) that would also be a very large header.
MAX_SECRET_BYTES = 64 * 1024
# Values shorter than this are not searched for in other requests: a short password would
# turn up by chance in ordinary traffic and block it. Placeholders are always longer.
MIN_SCAN_LENGTH = 8
# Percent-decoding is applied this many times over, so double encoding (%2567) is seen.
MAX_DECODE_ROUNDS = 3
# Generic placeholders: "corridor-" + this many base62 characters (about 190 bits).
PLACEHOLDER_RANDOM_CHARS = 32

# ---- reasons: stable strings, matched by tests, events and reports --------------------------

EXFILTRATION = "credential sent to a host it is not bound to"
EXPIRED = "credential expired"

BASE62 = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
_HEX_LOWER = "0123456789abcdef"
_LETTERS = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
_URLSAFE64 = BASE62 + "-_"

# ---- secrets and their sources ------------------------------------------------------------


class Secret:
    """A real credential value. Its repr and str never show it; `.reveal()` does."""

    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        self._value = value

    def reveal(self) -> str:
        """The value itself: only for the injection and the scanner, never for output."""
        return self._value

    def __repr__(self) -> str:
        return "Secret(<hidden>)"

    __str__ = __repr__


def read_secret(spec: CredentialSpec, env: Mapping[str, str] | None = None) -> Secret:
    """Read the real value of `spec` from its source (once, at session start).

    `env` is the host environment (default: os.environ); a command runs with it, stdin
    closed, its error output passed through to the user, and COMMAND_TIMEOUT_S to finish.
    Surrounding whitespace is dropped. Raises UserError, whose text never holds the value.
    """
    env = os.environ if env is None else env
    source = spec.source_parsed
    label = f"credential {spec.name} ({source.describe()})"
    if source.kind == "env":
        raw = env.get(source.ref)
        if not raw:
            raise UserError(
                f"{label}: the environment variable {source.ref} is not set",
                f"export {source.ref} before running corridor",
            )
        data = raw.encode("utf-8", errors="surrogateescape")
    elif source.kind == "file":
        data = _read_file(Path(source.ref).expanduser(), label)
    else:
        data = _run_command(source.argv, env, label)
    try:
        value = data.decode("utf-8").strip()
    except UnicodeDecodeError:
        raise UserError(f"{label}: the value is not UTF-8 text") from None
    _check_value(value, spec, label)
    return Secret(value)


def _read_file(path: Path, label: str) -> bytes:
    try:
        with path.open("rb") as f:
            data = f.read(MAX_SECRET_BYTES + 1)
    except OSError as e:
        raise UserError(f"{label}: cannot read {path}: {e.strerror or e}") from None
    if len(data) > MAX_SECRET_BYTES:
        raise UserError(f"{label}: {path} is larger than {MAX_SECRET_BYTES} bytes")
    return data


def _run_command(argv: tuple[str, ...], env: Mapping[str, str], label: str) -> bytes:
    try:
        done = subprocess.run(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            env=dict(env),
            timeout=COMMAND_TIMEOUT_S,
            check=False,
        )
    except FileNotFoundError:
        raise UserError(f"{label}: command not found: {argv[0]}") from None
    except PermissionError:
        raise UserError(f"{label}: not allowed to run {argv[0]}") from None
    except subprocess.TimeoutExpired:
        raise UserError(
            f"{label}: the command did not finish within {COMMAND_TIMEOUT_S:g} s",
            "does it wait for input? it runs with no terminal and stdin closed",
        ) from None
    if done.returncode != 0:
        raise UserError(
            f"{label}: the command failed (exit status {done.returncode})",
            "its own error output, if any, is printed above",
        )
    if len(done.stdout) > MAX_SECRET_BYTES:
        raise UserError(f"{label}: the command printed more than {MAX_SECRET_BYTES} bytes")
    return done.stdout


def _check_value(value: str, spec: CredentialSpec, label: str) -> None:
    if not value:
        raise UserError(f"{label}: the value is empty")
    if "\n" in value or "\r" in value:
        raise UserError(
            f"{label}: the value has more than one line", "the source must give only the token"
        )
    if _CONTROL.search(value):
        raise UserError(f"{label}: the value contains control characters")
    in_header = any(i.kind != "basic" for i in spec.injections)
    if in_header and not (value.isascii() and value.isprintable() and " " not in value):
        # Bearer tokens and API keys are header text: visible ASCII, no spaces.
        raise UserError(
            f"{label}: the value is not visible ASCII, so it cannot go in a header",
            "bearer and header values are tokens; use inject: basic for a password",
        )


# ---- placeholders -------------------------------------------------------------------------

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


# ---- finding a value in a request: the scanner ---------------------------------------------


@dataclass(frozen=True, slots=True)
class _Needle:
    credential: str
    what: Literal["placeholder", "value"]
    encoding: str  # plain | base64 | hex
    pattern: bytes
    folded: bool  # True: match the lower-cased text; False: the text with URL-safe base64
    # characters mapped to standard ones, so one standard core finds both alphabets


def _needles(credential: str, what: Literal["placeholder", "value"], text: str) -> list[_Needle]:
    raw = text.encode("utf-8")
    out = [
        _Needle(credential, what, "plain", raw.lower(), True),
        _Needle(credential, what, "hex", raw.hex().encode(), True),
    ]
    for core in _base64_cores(raw):
        out.append(_Needle(credential, what, "base64", core, False))
    return out


def _base64_cores(data: bytes) -> set[bytes]:
    """The standard base64 text that `data` produces wherever it sits.

    Base64 maps 3 bytes to 4 characters, so `data` at offset 0, 1 or 2 of a 3-byte group
    encodes differently; in each case the characters made only of `data`'s own bits are
    the same whatever surrounds it. Those "cores" are what to look for.
    """
    cores: set[bytes] = set()
    for shift in range(3):
        encoded = base64.b64encode(bytes(shift) + data)
        first = -(-8 * shift // 6)  # the first character holding no prefix bits
        last = (8 * (shift + len(data))) // 6  # characters fully inside the data
        core = encoded[first:last]
        if core:
            cores.add(core)
    return cores


_URLSAFE_TO_STANDARD = bytes.maketrans(b"-_", b"+/")


def _views(data: bytes) -> list[tuple[str, bytes]]:
    """The text as sent, then percent-decoded (repeatedly, for nested encodings)."""
    views = [("", data)]
    current = data
    for _ in range(MAX_DECODE_ROUNDS):
        if b"%" not in current:
            break
        decoded = unquote_to_bytes(current)
        if decoded == current:
            break
        views.append(("percent-encoded", decoded))
        current = decoded
    return views


@dataclass(frozen=True, slots=True)
class Finding:
    """A credential seen on its way to a host it is not bound to. Holds no value."""

    credential: str
    what: Literal["placeholder", "value"]
    where: str  # "url", "header NAME", "body"
    encoding: str  # "plain", "percent-encoded", "base64", "hex", "percent-encoded base64"...
    host: str

    @property
    def reason(self) -> str:
        """`credential sent to a host it is not bound to: NAME placeholder in the url (plain)`."""
        return (
            f"{EXFILTRATION}: {self.credential} {self.what} in the {self.where} ({self.encoding})"
        )


def _search(needles: Sequence[_Needle], data: bytes) -> tuple[_Needle, str] | None:
    """The first needle found in `data` and how it was encoded there, or None."""
    for decoded, view in _views(data):
        folded, standard = view.lower(), view.translate(_URLSAFE_TO_STANDARD)
        for needle in needles:
            if needle.pattern in (folded if needle.folded else standard):
                if not decoded:
                    return needle, needle.encoding
                if needle.encoding == "plain":
                    return needle, decoded
                return needle, f"{decoded} {needle.encoding}"
    return None


# ---- the broker -------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Brokered:
    """One credential in a running session: spec, placeholder, real value, deadline."""

    spec: CredentialSpec
    placeholder: str
    secret: Secret = field(repr=False)
    expires: float | None  # on the caller's clock (time.monotonic), None = no ttl

    def expired(self, now: float) -> bool:
        return self.expires is not None and now >= self.expires


@dataclass(frozen=True, slots=True)
class InjectResult:
    """What `inject` made of a request's headers.

    `headers` go upstream as they are (they may hold real values: never log them); `used`
    names the credentials swapped in (for the credential-use event); `refusal` is the
    reason to refuse the request with a 403 instead, or None.
    """

    headers: list[tuple[bytes, bytes]] = field(repr=False)
    used: tuple[str, ...] = ()
    refusal: str | None = None


class Broker:
    """The session's credentials: placeholders out, real values in, on bound hosts only."""

    def __init__(self, brokered: Sequence[Brokered]) -> None:
        self.credentials = tuple(brokered)
        self.warnings: list[str] = []
        self._needles: dict[str, list[_Needle]] = {}
        for c in self.credentials:
            needles = _needles(c.spec.name, "placeholder", c.placeholder)
            if len(c.secret.reveal()) >= MIN_SCAN_LENGTH:
                needles += _needles(c.spec.name, "value", c.secret.reveal())
            else:
                self.warnings.append(
                    f"credential {c.spec.name}: the value is shorter than {MIN_SCAN_LENGTH} "
                    "characters, so other requests are not searched for it"
                )
            self._needles[c.spec.name] = needles

    def __repr__(self) -> str:
        return f"Broker({', '.join(c.spec.name for c in self.credentials)})"

    @classmethod
    def start(
        cls,
        specs: Sequence[CredentialSpec],
        now: float,
        env: Mapping[str, str] | None = None,
        token: Any = secrets,
    ) -> Broker:
        """Read every value (see `read_secret`) and make the placeholders; `now` starts the TTLs."""
        brokered = []
        placeholders: set[str] = set()
        for spec in specs:
            secret = read_secret(spec, env)
            placeholder = make_placeholder(secret.reveal(), token)
            while placeholder in placeholders or _contains(placeholder, secret.reveal()):
                placeholder = make_placeholder(secret.reveal(), token)
            placeholders.add(placeholder)
            expires = now + spec.ttl if spec.ttl is not None else None
            brokered.append(Brokered(spec, placeholder, secret, expires))
        return cls(brokered)

    # -- what the session needs -----------------------------------------------------------

    def sandbox_env(self) -> dict[str, str]:
        """NAME -> placeholder, for the sandbox environment (set last, over anything else)."""
        return {c.spec.name: c.placeholder for c in self.credentials}

    def bound_patterns(self) -> tuple[HostPattern, ...]:
        """Every host pattern some credential is bound to: these hosts must be inspected."""
        return tuple(p for c in self.credentials for p in c.spec.patterns)

    def values_in(self, mapping: Mapping[str, str]) -> list[str]:
        """Keys of `mapping` whose value contains a real value (e.g. the sandbox env)."""
        values = [c.secret.reveal() for c in self.credentials]
        return sorted(k for k, v in mapping.items() if any(_contains(v, s) for s in values))

    def describe(self) -> list[dict[str, Any]]:
        """What the session-start event records: names, sources, hosts; never a value."""
        return [
            {
                "name": c.spec.name,
                "from": c.spec.source_parsed.describe(),
                "hosts": list(c.spec.hosts),
                "inject": [str(i) for i in c.spec.injections],
                "ttl_s": c.spec.ttl,
            }
            for c in self.credentials
        ]

    # -- per request -------------------------------------------------------------------------

    def inject(self, headers: Sequence[tuple[bytes, bytes]], host: str, now: float) -> InjectResult:
        """Swap placeholders for real values in the headers of a request to `host`.

        Only credentials bound to `host` are swapped, only in the places their `inject`
        names, and only before they expire; an expired credential's placeholder anywhere
        in the headers refuses the request (EXPIRED). Other headers pass unchanged.
        """
        bound = self._bound(host)
        if not bound:
            return InjectResult(list(headers))
        for c in bound:
            if c.expired(now) and self._in_headers(c, headers):
                ttl = format_ttl(c.spec.ttl or 0)
                return InjectResult(list(headers), refusal=f"{EXPIRED}: {c.spec.name} (ttl {ttl})")
        out: list[tuple[bytes, bytes]] = []
        used: list[str] = []
        for name, value in headers:
            new = value
            for c in bound:
                if c.expired(now):
                    continue
                for injection in c.spec.injections:
                    swapped = _swap(injection, c, name, new)
                    if swapped is not None:
                        new = swapped
                        if c.spec.name not in used:
                            used.append(c.spec.name)
            out.append((name, new))
        return InjectResult(out, tuple(used))

    def scan(
        self,
        host: str,
        url: str | bytes,
        headers: Sequence[tuple[bytes, bytes]],
        body_chunk: bytes = b"",
    ) -> Finding | None:
        """The first placeholder or real value bound elsewhere in this request, or None.

        Looks in the URL (target), every header name and value, and `body_chunk`; for a
        body that arrives in pieces use `body_scanner`, which also sees a value split
        across two pieces.
        """
        needles = self._unbound_needles(host)
        if not needles:
            return None
        target = url.encode("utf-8", errors="surrogateescape") if isinstance(url, str) else url
        places: list[tuple[str, bytes]] = [("url", target)]
        for name, value in headers:
            places.append((f"header {_printable(name)}", name + b": " + value))
        if body_chunk:
            places.append(("body", body_chunk))
        for where, data in places:
            hit = _search(needles, data)
            if hit is not None:
                needle, encoding = hit
                return Finding(needle.credential, needle.what, where, encoding, _shown(host))
        return None

    def body_scanner(self, host: str) -> BodyScanner:
        """A scanner for the body of one request to `host`, fed piece by piece."""
        return BodyScanner(self._unbound_needles(host), _shown(host))

    # -- internals ----------------------------------------------------------------------------

    def _bound(self, host: str) -> list[Brokered]:
        try:
            name = normalize_host(host)
        except InvalidHost:
            return []  # an address or a malformed name is never a credential's host
        return [c for c in self.credentials if c.spec.binds(name)]

    def _unbound_needles(self, host: str) -> list[_Needle]:
        bound = {c.spec.name for c in self._bound(host)}
        return [n for name, ns in self._needles.items() if name not in bound for n in ns]

    def _in_headers(self, c: Brokered, headers: Sequence[tuple[bytes, bytes]]) -> bool:
        needles = [n for n in self._needles[c.spec.name] if n.what == "placeholder"]
        return any(_search(needles, name + b": " + value) for name, value in headers)


class BodyScanner:
    """Scans a request body arriving in pieces; keeps a tail so split values are seen.

    `overlap` is how many bytes at the end of a piece may be the start of a value that the
    next piece completes: a gateway that must not let even part of a value out holds that
    many bytes back until the next piece (or the end of the body) has been scanned.
    """

    def __init__(self, needles: list[_Needle], host: str) -> None:
        self._needles = needles
        self._host = host
        longest = max((len(n.pattern) for n in needles), default=0)
        # A needle percent-encoded (3 bytes per byte), up to MAX_DECODE_ROUNDS times over.
        self.overlap = longest * 3**MAX_DECODE_ROUNDS
        self._tail = b""

    def feed(self, chunk: bytes) -> Finding | None:
        """Scan the next piece of the body; a Finding stops the request."""
        if not self._needles or not chunk:
            return None
        data = self._tail + chunk
        self._tail = data[-self.overlap :] if self.overlap else b""
        hit = _search(self._needles, data)
        if hit is None:
            return None
        needle, encoding = hit
        return Finding(needle.credential, needle.what, "body", encoding, self._host)


def _swap(injection: Injection, c: Brokered, name: bytes, value: bytes) -> bytes | None:
    """The header value with `c`'s placeholder replaced per `injection`, or None."""
    if name.lower() != injection.header.encode():
        return None
    placeholder = c.placeholder.encode()
    real = c.secret.reveal().encode("utf-8")
    text = value.strip()
    if injection.kind == "bearer":
        scheme, _, token = text.partition(b" ")
        if scheme.lower() == b"bearer" and token.strip() == placeholder:
            return b"Bearer " + real
        return None
    if injection.kind == "basic":
        return _swap_basic(text, placeholder, real, c.spec.username)
    slot = VALUE_SLOT.encode()
    if text == injection.template.encode().replace(slot, placeholder):
        return injection.template.encode().replace(slot, real)
    return None


def _swap_basic(text: bytes, placeholder: bytes, real: bytes, username: str | None) -> bytes | None:
    scheme, _, encoded = text.partition(b" ")
    if scheme.lower() != b"basic":
        return None
    try:
        decoded = base64.b64decode(encoded.strip(), validate=True)
    except (binascii.Error, ValueError):
        return None
    user, sep, password = decoded.partition(b":")
    if not sep:
        return None
    if password == placeholder:
        user = username.encode() if username is not None else user
        return b"Basic " + base64.b64encode(user + b":" + real)
    if user == placeholder and username is None:
        # Token-as-user-name (e.g. `TOKEN:` with an empty password).
        return b"Basic " + base64.b64encode(real + b":" + password)
    return None


def _contains(text: str, value: str) -> bool:
    # A short value is compared whole: as a substring it would turn up everywhere.
    return value in text if len(value) >= MIN_SCAN_LENGTH else value == text


def _printable(name: bytes) -> str:
    # Header names come from the sandbox: keep them readable and short in a reason.
    text = "".join(chr(b) if 0x21 <= b < 0x7F else "?" for b in name[:64])
    return text.lower()


def _shown(host: str) -> str:
    try:
        return normalize_host(host)
    except InvalidHost:
        return _printable(host.encode("utf-8", errors="replace"))
