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

`corridor run` reads the values and hands the broker to the gateway process as data
(`Broker.to_wire`, read back with `Broker.from_wire`): that document holds the real values
and travels only through a private descriptor. The broker works on compiled specs
(corridor.policy.compiled), so the gateway process never loads the policy model (pydantic).

The parts live in modules by job, re-exported here so that the broker's users find
everything in one place: `sources.py` reads the real values (the only I/O, once at
session start), `placeholders.py` makes placeholders, `scan.py` finds values in requests,
and this module holds the broker (the session's credentials, injection). Nothing here
logs, and no message, repr or exception text ever contains a real value.
"""

from __future__ import annotations

import base64
import binascii
import dataclasses
import importlib
import secrets
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from corridor.gateway.placeholders import BASE62 as BASE62
from corridor.gateway.placeholders import PLACEHOLDER_RANDOM_CHARS as PLACEHOLDER_RANDOM_CHARS
from corridor.gateway.placeholders import base62_checksum as base62_checksum
from corridor.gateway.placeholders import make_placeholder as make_placeholder

# The scanner has its own module (scan.py); its names are re-exported here for the
# broker's users.
from corridor.gateway.scan import EXFILTRATION as EXFILTRATION
from corridor.gateway.scan import MAX_DECODE_ROUNDS as MAX_DECODE_ROUNDS
from corridor.gateway.scan import BodyScanner as BodyScanner
from corridor.gateway.scan import Finding as Finding
from corridor.gateway.scan import Needle, needles_for, search
from corridor.gateway.sources import COMMAND_TIMEOUT_S as COMMAND_TIMEOUT_S
from corridor.gateway.sources import MAX_SECRET_BYTES as MAX_SECRET_BYTES
from corridor.gateway.sources import Secret as Secret
from corridor.gateway.sources import read_secret as read_secret

# The broker works on compiled specs (pydantic-free: the gateway process never loads the
# model); the parsed parts are re-exported here so that its users find them in one place.
from corridor.policy.compiled import CompiledCredential as CompiledCredential
from corridor.policy.compiled import Injection as Injection
from corridor.policy.compiled import Source as Source
from corridor.policy.compiled import compile_credential as compile_credential
from corridor.policy.compiled import credential_from_wire, credential_to_wire
from corridor.policy.compiled import format_ttl as format_ttl
from corridor.policy.constants import VALUE_SLOT
from corridor.policy.hosts import HostPattern, InvalidHost, normalize_host

if TYPE_CHECKING:
    from corridor.policy.credentials import CredentialSpec as CredentialSpec
    from corridor.policy.credentials import parse_credentials as parse_credentials
    from corridor.policy.credentials import parse_injection as parse_injection
    from corridor.policy.credentials import parse_source as parse_source
    from corridor.policy.credentials import parse_ttl as parse_ttl

# The model's names (pydantic) are re-exported too, but loaded on first use (PEP 562), so
# that importing the broker does not load pydantic.
_FROM_THE_MODEL = frozenset(
    {"CredentialSpec", "parse_credentials", "parse_injection", "parse_source", "parse_ttl"}
)


def __getattr__(name: str) -> Any:
    if name not in _FROM_THE_MODEL:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module("corridor.policy.credentials"), name)
    globals()[name] = value  # next time a plain lookup
    return value


# Values shorter than this are not searched for in other requests: a short password would
# turn up by chance in ordinary traffic and block it. Placeholders are always longer.
MIN_SCAN_LENGTH = 8

# ---- reasons: stable strings, matched by tests, events and reports --------------------------

EXPIRED = "credential expired"

# The shape of `Broker.to_wire`; parent and gateway come from one installation.
BROKER_WIRE_VERSION = 1
_BROKERED_KEYS = frozenset({"spec", "placeholder", "value", "expires"})

# ---- the broker -------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Brokered:
    """One credential in a running session: spec, placeholder, real value, deadline.

    In a Broker `spec` is always compiled (corridor.policy.compiled): the Broker compiles
    a model `CredentialSpec` it is given.
    """

    spec: CompiledCredential | CredentialSpec
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
        self.credentials = tuple(
            dataclasses.replace(c, spec=compile_credential(c.spec)) for c in brokered
        )
        self.warnings: list[str] = []
        self._needles: dict[str, list[Needle]] = {}
        for c in self.credentials:
            needles = needles_for(c.spec.name, "placeholder", c.placeholder)
            if len(c.secret.reveal()) >= MIN_SCAN_LENGTH:
                needles += needles_for(c.spec.name, "value", c.secret.reveal())
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
        specs: Sequence[CredentialSpec | CompiledCredential],
        now: float,
        env: Mapping[str, str] | None = None,
        token: Any = secrets,
    ) -> Broker:
        """Read every value (see `read_secret`) and make the placeholders; `now` starts the TTLs."""
        brokered = []
        placeholders: set[str] = set()
        for spec in map(compile_credential, specs):
            secret = read_secret(spec, env)
            placeholder = make_placeholder(secret.reveal(), token)
            while placeholder in placeholders or _contains(placeholder, secret.reveal()):
                placeholder = make_placeholder(secret.reveal(), token)
            placeholders.add(placeholder)
            expires = now + spec.ttl if spec.ttl is not None else None
            brokered.append(Brokered(spec, placeholder, secret, expires))
        return cls(brokered)

    # -- handing the broker to the gateway process -------------------------------------------

    def to_wire(self) -> dict[str, Any]:
        """Everything the gateway needs to serve, as JSON-able data: specs, placeholders,
        REAL VALUES and deadlines (on time.monotonic, which every process of the machine
        shares). Send it only over a private pipe or memfd; never log or store it."""
        return {
            "wire": BROKER_WIRE_VERSION,
            "credentials": [
                {
                    "spec": credential_to_wire(compile_credential(c.spec)),
                    "placeholder": c.placeholder,
                    "value": c.secret.reveal(),
                    "expires": c.expires,
                }
                for c in self.credentials
            ],
        }

    @classmethod
    def from_wire(cls, data: object) -> Broker:
        """The broker `to_wire` described. Raises ValueError (never showing a value) for
        anything else."""
        if not isinstance(data, dict) or set(data) != {"wire", "credentials"}:
            raise ValueError("broker wire: expected keys 'wire' and 'credentials'")
        if data["wire"] != BROKER_WIRE_VERSION or not isinstance(data["credentials"], list):
            raise ValueError(f"broker wire: version {data['wire']!r} or shape not understood")
        brokered = []
        for index, item in enumerate(data["credentials"]):
            where = f"broker wire: credentials[{index}]"
            if not isinstance(item, dict) or set(item) != _BROKERED_KEYS:
                raise ValueError(f"{where}: expected keys {sorted(_BROKERED_KEYS)}")
            spec = credential_from_wire(item["spec"], f"credentials[{index}].spec")
            placeholder, value, expires = item["placeholder"], item["value"], item["expires"]
            if not isinstance(placeholder, str) or not placeholder:
                raise ValueError(f"{where}: the placeholder is not text")
            if not isinstance(value, str) or not value:
                raise ValueError(f"{where}: the value is not text")  # never shown
            if expires is not None and (
                isinstance(expires, bool) or not isinstance(expires, int | float)
            ):
                raise ValueError(f"{where}: expires is not a number")
            brokered.append(Brokered(spec, placeholder, Secret(value), expires))
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
            hit = search(needles, data)
            if hit is not None:
                needle, encoding = hit
                return Finding(needle.credential, needle.what, where, encoding, _shown(host))
        return None

    def scans(self, host: str) -> bool:
        """Whether requests to `host` are searched at all (some credential is bound elsewhere)."""
        return bool(self._unbound_needles(host))

    def body_scanner(self, host: str, where: str = "body") -> BodyScanner:
        """A scanner for the body of one request to `host` (or what a client sends in a
        WebSocket: `where` names it in findings), fed piece by piece."""
        return BodyScanner(self._unbound_needles(host), _shown(host), where)

    # -- internals ----------------------------------------------------------------------------

    def _bound(self, host: str) -> list[Brokered]:
        try:
            name = normalize_host(host)
        except InvalidHost:
            return []  # an address or a malformed name is never a credential's host
        return [c for c in self.credentials if c.spec.binds(name)]

    def _unbound_needles(self, host: str) -> list[Needle]:
        bound = {c.spec.name for c in self._bound(host)}
        return [n for name, ns in self._needles.items() if name not in bound for n in ns]

    def _in_headers(self, c: Brokered, headers: Sequence[tuple[bytes, bytes]]) -> bool:
        needles = [n for n in self._needles[c.spec.name] if n.what == "placeholder"]
        return any(search(needles, name + b": " + value) for name, value in headers)


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
