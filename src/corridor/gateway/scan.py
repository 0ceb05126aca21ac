"""Finding a credential in a request: the exfiltration scanner. Pure, no I/O.

A credential's placeholder and real value are each turned into "needles" once, at session
start: the text itself (matched in any letter case), its hex (any case) and its base64
"cores" (standard or URL-safe, at any alignment inside a larger base64 text). A request
part is searched as sent and then percent-decoded, up to MAX_DECODE_ROUNDS times over, so
`%67hp_...` and `%2567hp_...` are seen too.

A body arrives in pieces. `BodyScanner` holds back the last `hold` bytes of what it was
given (the longest a needle can be on the wire, minus one) until the next piece or the end
of the body has been scanned with them: a value cut in two by the client (or by TCP) is
found, and not even its first half goes upstream before that. Nothing more than `hold`
bytes is ever buffered, whatever the body's size.
"""

from __future__ import annotations

import base64
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal
from urllib.parse import unquote_to_bytes

# Percent-decoding is applied this many times over, so double encoding (%2567) is seen.
MAX_DECODE_ROUNDS = 3
# Each round of percent-encoding may turn one byte into three (`g` -> `%67`), so a needle
# of n bytes in the most-decoded view may span n * WIRE_FACTOR bytes on the wire.
WIRE_FACTOR = 3**MAX_DECODE_ROUNDS

# The reason of every finding: a stable string, matched by tests, events and reports.
EXFILTRATION = "credential sent to a host it is not bound to"

_URLSAFE_TO_STANDARD = bytes.maketrans(b"-_", b"+/")


@dataclass(frozen=True, slots=True)
class Needle:
    """One form of one credential's placeholder or value, as searched for."""

    credential: str
    what: Literal["placeholder", "value"]
    encoding: str  # plain | base64 | hex
    pattern: bytes
    folded: bool  # True: match the lower-cased text; False: the text with URL-safe base64
    # characters mapped to standard ones, so one standard core finds both alphabets


def needles_for(credential: str, what: Literal["placeholder", "value"], text: str) -> list[Needle]:
    """The needles for one placeholder or value: plain, hex and its base64 cores."""
    raw = text.encode("utf-8")
    out = [
        Needle(credential, what, "plain", raw.lower(), True),
        Needle(credential, what, "hex", raw.hex().encode(), True),
    ]
    for core in base64_cores(raw):
        out.append(Needle(credential, what, "base64", core, False))
    return out


def base64_cores(data: bytes) -> set[bytes]:
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


def views(data: bytes) -> list[tuple[str, bytes]]:
    """The text as sent, then percent-decoded (repeatedly, for nested encodings)."""
    out = [("", data)]
    current = data
    for _ in range(MAX_DECODE_ROUNDS):
        if b"%" not in current:
            break
        decoded = unquote_to_bytes(current)
        if decoded == current:
            break
        out.append(("percent-encoded", decoded))
        current = decoded
    return out


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


def search(needles: Sequence[Needle], data: bytes) -> tuple[Needle, str] | None:
    """The first needle found in `data` and how it was encoded there, or None."""
    for decoded, view in views(data):
        folded, standard = view.lower(), view.translate(_URLSAFE_TO_STANDARD)
        for needle in needles:
            if needle.pattern in (folded if needle.folded else standard):
                if not decoded:
                    return needle, needle.encoding
                if needle.encoding == "plain":
                    return needle, decoded
                return needle, f"{decoded} {needle.encoding}"
    return None


def wire_span(needles: Sequence[Needle]) -> int:
    """The most bytes one needle can take on the wire (fully percent-encoded each round)."""
    return max((len(n.pattern) for n in needles), default=0) * WIRE_FACTOR


@dataclass(frozen=True, slots=True)
class Scanned:
    """What one step of a body scan lets go upstream now, or the finding that stops it.

    `release` has been scanned and cannot hold the start of a value that a later piece
    completes; with a finding it is empty: nothing more of the body may go.
    """

    release: bytes
    finding: Finding | None = None


class BodyScanner:
    """Scans a request body arriving in pieces, holding back what a later piece may complete.

    `hold` is the number of bytes kept back after each piece: one less than the longest a
    needle can be on the wire, so any needle that ends in a later piece starts inside what
    is held (or later) and none of it has been released.
    """

    def __init__(self, needles: Sequence[Needle], host: str, where: str = "body") -> None:
        self._needles = tuple(needles)
        self._host = host
        self._where = where  # for the finding: "body", "websocket message"
        self.hold = max(wire_span(self._needles) - 1, 0)
        self._held = b""

    def feed(self, chunk: bytes) -> Scanned:
        """Scan the next piece of the body together with what was held back."""
        if not self._needles:
            return Scanned(chunk)
        data = self._held + chunk
        hit = search(self._needles, data)
        if hit is not None:
            self._held = b""
            needle, encoding = hit
            return Scanned(
                b"", Finding(needle.credential, needle.what, self._where, encoding, self._host)
            )
        cut = max(len(data) - self.hold, 0)
        self._held = data[cut:]
        return Scanned(data[:cut])

    @property
    def active(self) -> bool:
        """Whether anything is searched for at all (False: every byte passes at once)."""
        return bool(self._needles)

    def finish(self) -> bytes:
        """The end of the body: what was held back (already scanned) may go now."""
        out, self._held = self._held, b""
        return out
