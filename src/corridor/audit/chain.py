"""The hash chain: one canonical byte string per event, and each record's hash.

    hash(record n) = SHA-256( hash(record n-1) || n as 8 bytes big-endian || canonical(event) )

`canonical(event)` is the event as JSON: the fields that are set, keys sorted, no spaces,
ASCII only (every other character escaped), then a line feed. The same bytes are what the
writer appends to its spool file, so the hash covers exactly what was made durable.

One chain per session, not one for the whole table: sessions run by different corridor
processes write the same database at once, and a session's records must be verifiable on
their own (a report carries one session, and must not need, or leak, anyone else's
records). The first record of a session chains to `genesis(session)`, a value derived
from the session id, so a record cannot be moved from one session into another.

Pure: no I/O. Imports only the event schema.
"""

from __future__ import annotations

import hashlib
import json
import math
import operator
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from corridor.audit.events import FIELD_NAMES, Event

HASH_SIZE = 32  # SHA-256
GENESIS_PREFIX = b"corridor-audit-chain-v1\x00"  # versioned: a new encoding gets a new prefix
INDEX_BYTES = 8  # the record index inside the hash input: fixed width, so inputs never collide
# SQLite stores INTEGER as signed 64-bit; a larger value could not be stored and read back.
INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1

# Fields whose stored form is a number of one type: the canonical form uses that type, so
# the bytes hashed when writing equal the bytes recomputed from what SQLite gives back
# (a REAL column returns 5 as 5.0, an INTEGER column returns True as 1).
_INT_FIELDS = frozenset({"port", "conn_id", "bytes_up", "bytes_down", "status"})
_FLOAT_FIELDS = frozenset({"ts", "duration_ms"})
# Fields in key order: the encoder writes the JSON text itself (the hot path), and the
# result is exactly `json.dumps(fields, sort_keys=True, separators=(",", ":"))`.
_SORTED = tuple(sorted(FIELD_NAMES))
_get_sorted = operator.attrgetter(*_SORTED)
_KEYS = tuple(f'"{name}":' for name in _SORTED)


class _Convert:
    """Matches no value's type: kind and data always go through `_normalize`."""


# The type each field has when it needs no conversion.
_EXPECTED: tuple[type, ...] = tuple(
    _Convert if n in ("kind", "data")
    else int if n in _INT_FIELDS
    else float if n in _FLOAT_FIELDS
    else str
    for n in _SORTED
)  # fmt: skip
_quote: Any = getattr(json.encoder, "c_encode_basestring_ascii", None) or (
    json.encoder.py_encode_basestring_ascii
)
_dumps = json.JSONEncoder(
    sort_keys=True, separators=(",", ":"), ensure_ascii=True, allow_nan=False
).encode


class EncodingError(ValueError):
    """The event holds a value that cannot be recorded exactly (NaN, a huge integer...)."""


def genesis(session: str) -> bytes:
    """The value the first record of `session` chains to."""
    return hashlib.sha256(GENESIS_PREFIX + session.encode("utf-8", "surrogatepass")).digest()


def canonical(event: Event) -> bytes:
    """The event's canonical bytes (JSON + LF). Raises `EncodingError` for unrecordable values."""
    parts: list[str] = []
    append = parts.append
    # One pass, fast path first: the gateway calls this for every event it emits.
    for name, key, value, expected in zip(
        _SORTED, _KEYS, _get_sorted(event), _EXPECTED, strict=True
    ):
        if value is None:
            continue
        if type(value) is not expected:
            value = _normalize(name, value)
            expected = type(value)
            if name == "data":
                append(key + _encode_data(event, value))
                continue
        if expected is str:
            if not value.isascii():
                _check_utf8(name, value)
            append(key + _quote(value))
        elif expected is int:
            if not INT64_MIN <= value <= INT64_MAX:
                raise EncodingError(f"{name}={value} does not fit in 64 bits")
            append(key + int.__repr__(value))
        elif math.isfinite(value):
            append(key + float.__repr__(value + 0.0))  # -0.0 becomes 0.0, as SQLite stores it
        else:  # a REAL column would not give NaN back
            raise EncodingError(f"{name}={value!r} is not a finite number")
    return ("{" + ",".join(parts) + "}\n").encode("ascii")


def _encode_data(event: Event, data: dict[str, Any]) -> str:
    try:
        return _dumps(data)
    except (TypeError, ValueError) as exc:  # an object JSON cannot hold, NaN, mixed keys
        raise EncodingError(f"{event.kind.value} event cannot be recorded: {exc}") from exc


def _normalize(name: str, value: Any) -> Any:
    """The stored form of a value whose type is not the field's own."""
    if name in _INT_FIELDS:
        return _integer(name, value)
    if name in _FLOAT_FIELDS:
        return _real(name, value)
    if name == "data":
        if not isinstance(value, Mapping):
            raise EncodingError(f"data={value!r} is not a mapping")
        return dict(value)
    if name == "kind":
        return value.value  # the enum member as its plain string
    # A TEXT column would store 5 as "5": the value read back would differ.
    raise EncodingError(f"{name}={value!r} is not text")


def link(previous: bytes, index: int, record: bytes) -> bytes:
    """The hash of the record at `index` whose canonical bytes are `record`."""
    return hashlib.sha256(previous + index.to_bytes(INDEX_BYTES, "big") + record).digest()


def _check_utf8(name: str, value: str) -> None:
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise EncodingError(f"{name} is not valid text: {exc.reason}") from None


def _integer(name: str, value: Any) -> int:
    if type(value) is not int:
        if isinstance(value, float) and not value.is_integer():
            raise EncodingError(f"{name}={value!r} is not a whole number")
        try:
            value = int(value)
        except (TypeError, ValueError) as exc:
            raise EncodingError(f"{name}={value!r} is not a number") from exc
    if not INT64_MIN <= value <= INT64_MAX:
        raise EncodingError(f"{name}={value} does not fit in 64 bits")
    return value


def _real(name: str, value: Any) -> float:
    try:
        number = float(value)
    except (TypeError, ValueError, OverflowError) as exc:
        raise EncodingError(f"{name}={value!r} is not a number") from exc
    if not math.isfinite(number):
        raise EncodingError(f"{name}={value!r} is not a finite number")
    return number + 0.0  # -0.0 becomes 0.0, as SQLite stores it


@dataclass(frozen=True, slots=True)
class Record:
    """An event as stored: its place in the table (`seq`) and in its session's chain.

    `n` (0 for the session's first record) and `hash` are None only for rows written
    before the chain existed (schema 1).
    """

    seq: int
    n: int | None
    hash: bytes | None
    event: Event
