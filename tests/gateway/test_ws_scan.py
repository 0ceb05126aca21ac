"""The WebSocket frame scanner: frames in, searched bytes out, a split value held back."""

from __future__ import annotations

import itertools
import os

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from tests.lab.world_ws import frame as ws_frame

from corridor.gateway.credentials import Broker, parse_credentials
from corridor.gateway.scan import Finding
from corridor.gateway.ws_scan import UNREADABLE_FRAME, FrameError, FrameScanner, unmask

SPEC = {"name": "TOKEN", "from": "env:T", "hosts": ["api.test"], "inject": "bearer"}
REAL = "real-value-0123456789"
TEXT, BINARY, CONTINUATION, PING = 0x1, 0x2, 0x0, 0x9


def broker() -> Broker:
    return Broker.start(parse_credentials([SPEC]), 0.0, {"T": REAL})


def frame(
    opcode: int,
    payload: bytes,
    *,
    fin: bool = True,
    mask: bytes | None = b"\x11\x22\x33\x44",
    rsv: int = 0,
) -> bytes:
    """A client frame (masked unless mask=None)."""
    return ws_frame(opcode, payload, mask, fin=fin, rsv=rsv)


def feed_all(frames: FrameScanner, pieces: list[bytes]) -> tuple[bytes, list[Finding]]:
    released = []
    for piece in pieces:
        step = frames.feed(piece)
        released.append(step.release)
        if step.finding is not None:
            return b"".join(released), [step.finding]
    released.append(frames.finish())
    return b"".join(released), []


def scanner(host: str = "other.test") -> FrameScanner:
    return FrameScanner(broker().body_scanner(host, "websocket message"))


@pytest.mark.parametrize("offset", range(4))
def test_unmask_at_any_offset_of_the_key(offset: int):
    mask, data = b"\x01\x02\x03\x04", os.urandom(37)
    masked = bytes(b ^ mask[i % 4] for i, b in enumerate(data))
    assert unmask(masked[offset:], mask, offset) == data[offset:]


def test_a_value_split_across_two_frames_is_found_at_every_cut():
    b = broker()
    placeholder = b.sandbox_env()["TOKEN"].encode()
    half = len(placeholder) // 2
    # Long enough before the value that the scanner may release part of the stream.
    lead = frame(BINARY, b"z" * 6000)
    first = frame(TEXT, b"token=" + placeholder[:half], fin=False)
    rest = frame(CONTINUATION, placeholder[half:] + b"!")
    stream = lead + first + rest
    begins = len(lead) + len(first) - half  # raw offset of the value's first byte
    for cut in range(0, len(stream) + 1, 7):
        frames = FrameScanner(b.body_scanner("other.test", "websocket message"))
        released, found = feed_all(frames, [stream[:cut], stream[cut:]])
        assert [(f.credential, f.what, f.where, f.encoding) for f in found] == [
            ("TOKEN", "placeholder", "websocket message", "plain")
        ], cut
        assert stream.startswith(released) and len(released) < begins, cut
    # Fed one byte at a time: found too, and the stream moved on until the held tail.
    released, found = feed_all(
        FrameScanner(b.body_scanner("other.test", "m")), [bytes([c]) for c in stream]
    )
    assert found and stream.startswith(released) and 0 < len(released) < begins


def test_the_real_value_in_an_unmasked_frame_or_a_ping_is_found():
    for data in (frame(TEXT, REAL.encode(), mask=None), frame(PING, REAL.encode())):
        _released, found = feed_all(scanner(), [data])
        assert [(f.what, f.where) for f in found] == [("value", "websocket message")]


def test_nothing_is_searched_on_the_credentials_own_host():
    data = frame(TEXT, broker().sandbox_env()["TOKEN"].encode())
    frames = scanner("api.test")
    assert frames.feed(data).release == data


def test_a_frame_with_a_reserved_bit_cannot_be_read():
    with pytest.raises(FrameError) as e:
        scanner().feed(frame(TEXT, b"x", rsv=0x40))  # RSV1: permessage-deflate
    assert e.value.reason == UNREADABLE_FRAME


# Frames of every length class, control frames, empty ones, fragments.
FRAMES = st.lists(
    st.tuples(
        st.sampled_from([TEXT, BINARY, CONTINUATION, PING]),
        st.one_of(st.binary(max_size=200), st.just(b"q" * 300), st.just(b"w" * 70000)),
        st.booleans(),
    ),
    max_size=6,
)


@settings(max_examples=60, deadline=None)
@given(frames=FRAMES, cuts=st.lists(st.integers(0, 80000), max_size=5))
def test_clean_frames_go_through_whole_and_in_order(frames, cuts):
    stream = b"".join(
        frame(op, data, mask=os.urandom(4) if masked else None) for op, data, masked in frames
    )
    bounds = [0, *sorted({min(c, len(stream)) for c in cuts}), len(stream)]
    released, found = feed_all(scanner(), [stream[a:b] for a, b in itertools.pairwise(bounds)])
    assert found == []
    assert released == stream
