"""Moving bytes from one socket to another without them entering Python: splice(2).

A response body the gateway does not need to read (its head was parsed and decided; the
body is only counted) goes socket -> pipe -> socket in the kernel: no copy into a Python
`bytes`, no parser, one or two system calls per pipe-full (up to 1 MiB) instead of
several Python-level steps per 64 KiB. This is what lets a large download through the
gateway run near the speed of a direct one.

`splice_exactly` works on duplicates of the sockets' descriptors, so the event loop's own
registrations for the originals (an asyncio transport's) are untouched; the caller makes
sure nothing else reads the source or writes the destination meanwhile (pause the
source transport, let the destination's write buffer drain first).
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import os
import socket
import time
from collections.abc import Callable

# Bigger pipes mean fewer system calls per byte; 1 MiB is the default ceiling an
# unprivileged process may ask for (/proc/sys/fs/pipe-max-size).
PIPE_SIZE = 1 << 20
_F_SETPIPE_SZ = getattr(fcntl, "F_SETPIPE_SZ", 1031)
_FLAGS = os.SPLICE_F_MOVE | os.SPLICE_F_NONBLOCK


class SpliceTimeout(Exception):
    """No byte moved for `idle_timeout_s`."""


async def splice_exactly(
    src: socket.socket,
    dst: socket.socket,
    count: int | None,
    *,
    idle_timeout_s: float,
    on_moved: Callable[[int], None] | None = None,
) -> int:
    """Move `count` bytes (None: until `src` reaches end of file) from `src` to `dst`.

    Returns the number of bytes moved: less than `count` only when `src` ended first.
    Raises `SpliceTimeout` when nothing moves for `idle_timeout_s`, and `OSError` for a
    reset or broken connection. `on_moved(n)` is called as bytes reach `dst` (for byte
    limits and counters; it may raise to stop the transfer).
    """
    loop = asyncio.get_running_loop()
    src_fd = os.dup(src.fileno())
    dst_fd = os.dup(dst.fileno())
    pipe_r, pipe_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
    try:
        with contextlib.suppress(OSError):  # a smaller pipe only means more calls
            fcntl.fcntl(pipe_w, _F_SETPIPE_SZ, PIPE_SIZE)
        size = fcntl.fcntl(pipe_w, fcntl.F_GETPIPE_SZ) if hasattr(fcntl, "F_GETPIPE_SZ") else 65536
        return await _move(
            loop, src_fd, dst_fd, pipe_r, pipe_w, size, count, idle_timeout_s, on_moved
        )
    finally:
        for fd in (pipe_r, pipe_w, src_fd, dst_fd):
            os.close(fd)


async def _move(
    loop: asyncio.AbstractEventLoop,
    src: int,
    dst: int,
    pipe_r: int,
    pipe_w: int,
    size: int,
    count: int | None,
    idle_timeout_s: float,
    on_moved: Callable[[int], None] | None,
) -> int:
    moved = 0  # bytes that reached dst
    held = 0  # bytes in the pipe
    ended = False
    last = time.monotonic()
    while True:
        wanted = size - held if count is None else min(size - held, count - moved - held)
        progress = False
        if not ended and wanted > 0:
            try:
                n = os.splice(src, pipe_w, wanted, flags=_FLAGS)
            except BlockingIOError:
                pass
            else:
                if n == 0:
                    ended = True  # end of file from src
                held += n
                progress = True
        if held:
            try:
                n = os.splice(pipe_r, dst, held, flags=_FLAGS)
            except BlockingIOError:
                pass
            else:
                held -= n
                moved += n
                progress = progress or n > 0
                if n and on_moved is not None:
                    on_moved(n)
        if held == 0 and (ended or (count is not None and moved >= count)):
            return moved
        if progress:
            last = time.monotonic()
            continue
        remaining = last + idle_timeout_s - time.monotonic()
        if remaining <= 0:
            raise SpliceTimeout(f"no data for {idle_timeout_s:g} s")
        # Nothing moved: wait until the pipe can be emptied (dst writable) or, with room
        # in it, filled (src readable).
        await _ready(
            loop, src if not ended and wanted > 0 else None, dst if held else None, remaining
        )


async def _ready(
    loop: asyncio.AbstractEventLoop, readable: int | None, writable: int | None, timeout: float
) -> None:
    waiter = loop.create_future()

    def wake() -> None:
        if not waiter.done():
            waiter.set_result(None)

    if readable is not None:
        loop.add_reader(readable, wake)
    if writable is not None:
        loop.add_writer(writable, wake)
    try:
        async with asyncio.timeout(timeout):  # no task per wait, unlike wait_for on 3.11
            await waiter
    except TimeoutError:
        pass  # the caller's idle check decides
    finally:
        if readable is not None:
            loop.remove_reader(readable)
        if writable is not None:
            loop.remove_writer(writable)
