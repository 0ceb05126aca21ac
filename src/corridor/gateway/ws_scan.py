"""Scanning what a client sends inside a WebSocket (RFC 6455). Pure, no I/O.

After a `101`, the client's bytes are frames: a 2-14 byte header, then the payload,
masked with a 4-byte key the header carries (RFC 6455 5.3). `FrameScanner` reads the
frame headers as the bytes stream by, unmasks each payload and feeds the payloads, in
order, to a `BodyScanner` (scan.py), which searches them as one stream (so a value split
across frames or messages is found) and holds back its tail. The raw bytes go on
unchanged, up to the first raw byte of a payload byte still held back: no part of a value
is sent before it has been searched.

Compressed frames (permessage-deflate, RSV1) cannot be searched: the gateway removes the
client's extension offers from the handshake when it scans, so a server may not compress,
and a frame with a reserved bit set is refused.
"""

from __future__ import annotations

from collections import deque

from corridor.gateway.scan import BodyScanner, Scanned

# RFC 6455 5.2: FIN, RSV1-3, opcode in byte 0; MASK and a 7-bit length in byte 1, then
# 2 or 8 bytes of extended length and the 4-byte masking key.
_RSV_BITS = 0x70
_MASK_BIT = 0x80
_LENGTH_16 = 126
_LENGTH_64 = 127
MASK_SIZE = 4

UNREADABLE_FRAME = (
    "WebSocket frame with a reserved bit set (compressed or extended) cannot be scanned"
)


class FrameError(Exception):
    """Frames the scanner cannot read; `reason` goes into the event."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def header_size(first_two: bytes | bytearray) -> int:
    """How long a frame header is, from its first two bytes."""
    size = 2 + MASK_SIZE * bool(first_two[1] & _MASK_BIT)
    length = first_two[1] & 0x7F
    if length == _LENGTH_16:
        size += 2
    elif length == _LENGTH_64:
        size += 8
    return size


def parse_header(head: bytes) -> tuple[int, bytes]:
    """(payload length, masking key or b"") of a complete frame header."""
    if head[0] & _RSV_BITS:
        raise FrameError(UNREADABLE_FRAME)
    length = head[1] & 0x7F
    at = 2
    if length == _LENGTH_16:
        length, at = int.from_bytes(head[2:4], "big"), 4
    elif length == _LENGTH_64:
        length, at = int.from_bytes(head[2:10], "big"), 10
    mask = head[at : at + MASK_SIZE] if head[1] & _MASK_BIT else b""
    return length, mask


def unmask(data: bytes, mask: bytes, offset: int) -> bytes:
    """`data` XOR the masking key, `data[0]` being payload byte number `offset`."""
    if not mask or not data:
        return data
    rotated = mask[offset % MASK_SIZE :] + mask[: offset % MASK_SIZE]
    key = (rotated * (len(data) // MASK_SIZE + 1))[: len(data)]
    return (int.from_bytes(data, "big") ^ int.from_bytes(key, "big")).to_bytes(len(data), "big")


class FrameScanner:
    """Client-to-server WebSocket bytes in; the bytes that may go upstream out."""

    def __init__(self, scanner: BodyScanner) -> None:
        self._scanner = scanner
        self._pending = bytearray()  # raw bytes fed and not yet released
        self._pending_at = 0  # raw offset of _pending[0]
        self._raw_total = 0
        self._head = bytearray()  # the header being read
        self._left = 0  # payload bytes still to come in the current frame
        self._mask = b""
        self._done = 0  # payload bytes of the current frame seen so far
        # Where payload bytes sit in the raw stream: (payload index, raw offset, length).
        self._segments: deque[tuple[int, int, int]] = deque()
        self._payload_total = 0
        self._payload_released = 0

    def feed(self, data: bytes) -> Scanned:
        """Scan the next bytes; `release` may go upstream now (raw, unchanged)."""
        self._pending += data
        payload = bytearray()
        at = 0
        while at < len(data):
            if self._left == 0:
                at = self._read_header(data, at)
                continue
            n = min(self._left, len(data) - at)
            start = self._payload_total + len(payload)
            self._segments.append((start, self._raw_total + at, n))
            payload += unmask(data[at : at + n], self._mask, self._done)
            self._done += n
            self._left -= n
            at += n
        self._raw_total += len(data)
        self._payload_total += len(payload)
        step = self._scanner.feed(bytes(payload))
        if step.finding is not None:
            return Scanned(b"", step.finding)
        self._payload_released += len(step.release)
        return Scanned(self._release())

    def finish(self) -> bytes:
        """The client's stream ended: everything held (already scanned) may go."""
        self._scanner.finish()
        out = bytes(self._pending)
        self._pending.clear()
        self._segments.clear()
        return out

    def _read_header(self, data: bytes, at: int) -> int:
        """Take header bytes from `data[at:]` (a header is at most 14 bytes: one at a
        time is simple and cheap); the offset after what was taken."""
        while at < len(data):
            self._head.append(data[at])
            at += 1
            if len(self._head) >= 2 and len(self._head) == header_size(self._head[:2]):
                self._left, self._mask = parse_header(bytes(self._head))
                self._head.clear()
                self._done = 0
                break
        return at

    def _release(self) -> bytes:
        """Raw bytes before the first payload byte the body scanner still holds."""
        held_from = self._payload_released
        while self._segments and self._segments[0][0] + self._segments[0][2] <= held_from:
            self._segments.popleft()  # all of its payload has been released
        if self._segments:
            index, raw, _ = self._segments[0]
            cut = raw + max(held_from - index, 0)
        else:
            cut = self._raw_total
        n = cut - self._pending_at
        out = bytes(self._pending[:n])
        del self._pending[:n]
        self._pending_at = cut
        return out
