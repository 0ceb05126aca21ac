"""Moving bytes both ways between the sandbox and upstream, counting them.

Each direction reads a bounded chunk, writes it and waits until the other side's kernel
took it (drain) before reading more: a fast sender and a slow receiver cannot grow the
gateway's memory. Bytes going upstream are charged to the session's budget first. One
timer watches the whole relay: no byte either way for the idle timeout ends it, and once
one direction has finished, the other must keep moving within the half-closed timeout.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
from dataclasses import dataclass

from corridor.gateway.limits import RELAY_CHUNK, LimitReached, SessionBudget

# End reasons of a relay, for the connection_end event.
IDLE = "idle timeout"
HALF_CLOSED = "half-closed timeout"


@dataclass(slots=True)
class Counters:
    """Bytes of one connection; bytes going up are charged to the session's budget."""

    up: int = 0  # sandbox -> upstream
    down: int = 0  # upstream -> sandbox
    budget: SessionBudget | None = None

    def add_up(self, n: int) -> None:
        """Charge `n` bytes about to go upstream; LimitReached when the session is out."""
        if self.budget is not None:
            self.budget.spend(n)
        self.up += n


@dataclass(frozen=True, slots=True)
class RelayTimeouts:
    idle_s: float
    half_closed_s: float


class _PeerGone(Exception):
    """One side reset or failed: the relay ends both sides."""


class _Watch:
    """The relay's one timer, pushed back by every chunk that moves."""

    def __init__(self, timeouts: RelayTimeouts) -> None:
        self.timeouts = timeouts
        self.loop = asyncio.get_running_loop()
        self.cm: asyncio.Timeout | None = None
        self.finished = 0  # directions that reached EOF

    def moved(self) -> None:
        limit = self.timeouts.half_closed_s if self.finished else self.timeouts.idle_s
        if self.cm is not None:
            self.cm.reschedule(self.loop.time() + limit)

    @property
    def reason(self) -> str:
        return HALF_CLOSED if self.finished else IDLE


async def _pump(
    reader: asyncio.StreamReader,
    writer: asyncio.StreamWriter,
    counters: Counters,
    watch: _Watch,
    up: bool,
) -> None:
    try:
        while True:
            data = await reader.read(RELAY_CHUNK)
            if not data:
                break
            if up:
                counters.add_up(len(data))  # before the write: a refused chunk never leaves
            else:
                counters.down += len(data)
            writer.write(data)
            watch.moved()
            await writer.drain()
            watch.moved()
        # Half-close: pass the EOF on so request/response protocols finish cleanly.
        if writer.can_write_eof():
            writer.write_eof()
    except (ConnectionError, OSError) as e:
        raise _PeerGone from e
    watch.finished += 1
    watch.moved()


async def relay(
    client_r: asyncio.StreamReader,
    client_w: asyncio.StreamWriter,
    up_r: asyncio.StreamReader,
    up_w: asyncio.StreamWriter,
    counters: Counters,
    timeouts: RelayTimeouts,
) -> str | None:
    """Relay until both directions have finished, then close both sides.

    Returns None after a clean end, or why it ended early (IDLE, HALF_CLOSED, "reset").
    Raises LimitReached when the session's byte cap stops the upload; both sides are
    reset before it propagates.
    """
    watch = _Watch(timeouts)
    ended: str | None = None
    limit: LimitReached | None = None
    try:
        async with asyncio.timeout(timeouts.idle_s) as cm:
            watch.cm = cm
            try:
                async with asyncio.TaskGroup() as tg:
                    tg.create_task(_pump(client_r, up_w, counters, watch, up=True))
                    tg.create_task(_pump(up_r, client_w, counters, watch, up=False))
            except* _PeerGone:
                ended = "reset"
            except* LimitReached as group:
                limit = group.exceptions[0]  # type: ignore[assignment]
    except TimeoutError:
        ended = watch.reason
    finally:
        for w in (client_w, up_w):
            if limit is not None:
                reset(w)
            close_quietly(w)
    if limit is not None:
        raise limit
    return ended


def close_quietly(writer: asyncio.StreamWriter) -> None:
    with contextlib.suppress(ConnectionError, OSError, RuntimeError):
        writer.close()


def reset(writer: asyncio.StreamWriter) -> None:
    """Close with a TCP RST (SO_LINGER 0): how TLS and raw TCP refusals are told."""
    sock = writer.get_extra_info("socket")
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.setsockopt(
                socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00"
            )
    close_quietly(writer)
