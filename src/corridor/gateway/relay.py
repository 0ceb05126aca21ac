"""Moving bytes both ways between the sandbox and upstream, counting them."""

from __future__ import annotations

import asyncio
import contextlib
import socket
from dataclasses import dataclass

READ_SIZE = 256 * 1024  # large reads: fewer loop iterations per MB on bulk transfers


@dataclass(slots=True)
class Counters:
    up: int = 0  # sandbox -> upstream
    down: int = 0  # upstream -> sandbox


async def _pump(
    reader: asyncio.StreamReader, writer: asyncio.StreamWriter, counters: Counters, up: bool
) -> None:
    try:
        while True:
            data = await reader.read(READ_SIZE)
            if not data:
                break
            writer.write(data)
            if up:
                counters.up += len(data)
            else:
                counters.down += len(data)
            await writer.drain()
        # Half-close: pass the EOF on so request/response protocols finish cleanly.
        if writer.can_write_eof():
            writer.write_eof()
    except (ConnectionError, OSError):
        pass


async def relay(
    client_r: asyncio.StreamReader,
    client_w: asyncio.StreamWriter,
    up_r: asyncio.StreamReader,
    up_w: asyncio.StreamWriter,
    counters: Counters,
) -> None:
    """Relay until both directions have finished, then close both sides."""
    try:
        await asyncio.gather(
            _pump(client_r, up_w, counters, up=True),
            _pump(up_r, client_w, counters, up=False),
        )
    finally:
        for w in (client_w, up_w):
            close_quietly(w)


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
