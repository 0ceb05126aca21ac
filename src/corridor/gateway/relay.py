"""Moving bytes both ways between the sandbox and upstream, counting them.

Plain TCP on both sides (every tunnel, every plain WebSocket after its 101) is relayed by
asyncio protocols: one `Tunnel` holds both transports, and what one side reads is
written straight into the other's transport, with no task, future or timer per chunk.
A tunnel's upstream is dialled with the tunnel's own protocol (`Tunnel.upstream_protocol`);
`relay` takes over the transports of stream pairs that already exist.

Backpressure is the transports' own: once the receiving side's kernel buffer and its
transport's write buffer are full (asyncio's high-water mark), the sending side stops
reading until it drained (pause_reading/resume_reading), so a fast sender and a slow
receiver cannot grow the gateway's memory. Bytes going upstream are charged to the
session's budget before they are written. One timer per event loop (`_Sweeper`) checks
every tunnel's idle deadline: no byte either way for the idle timeout ends it, and once
one direction has finished (EOF passed on), the other must keep moving within the
half-closed timeout.

Other streams (TLS terminated by the gateway, wrapped writers) go through
`_relay_streams`: one task per direction, a read, a write and a drain per chunk.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import weakref
from dataclasses import dataclass

from corridor.gateway.limits import RELAY_CHUNK, LimitReached, SessionBudget

# End reasons of a relay, for the connection_end event.
IDLE = "idle timeout"
HALF_CLOSED = "half-closed timeout"
RESET = "reset"
# How often the idle deadlines of all tunnels are checked. A tunnel ends between its
# timeout and its timeout plus two sweeps; the timeouts are minutes, so a second is
# precise enough, and one wake-up a second costs nothing. Short timeouts (tests) sweep
# at a quarter of the timeout instead, down to the floor.
SWEEP_INTERVAL_S = 1.0
SWEEP_FLOOR_S = 0.01


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


async def relay(
    client_r: asyncio.StreamReader,
    client_w: asyncio.StreamWriter,
    up_r: asyncio.StreamReader,
    up_w: asyncio.StreamWriter,
    counters: Counters,
    timeouts: RelayTimeouts,
) -> str | None:
    """Relay until both directions have finished, then close both sides.

    Returns None after a clean end, or why it ended early (IDLE, HALF_CLOSED, RESET).
    Raises LimitReached when the session's byte cap stops the upload; both sides are
    reset before it propagates. Bytes already buffered in the readers are relayed first.
    """
    if plain(client_r, client_w) and plain(up_r, up_w):
        return await _relay_transports(client_r, client_w, up_r, up_w, counters, timeouts)
    return await _relay_streams(client_r, client_w, up_r, up_w, counters, timeouts)


def close_quietly(writer: asyncio.StreamWriter | asyncio.BaseTransport) -> None:
    with contextlib.suppress(ConnectionError, OSError, RuntimeError):
        writer.close()


def reset(writer: asyncio.StreamWriter | asyncio.BaseTransport) -> None:
    """Close with a TCP RST (SO_LINGER 0): how TLS and raw TCP refusals are told."""
    sock = writer.get_extra_info("socket")
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.setsockopt(
                socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00"
            )
    close_quietly(writer)


# ---- plain TCP: protocols ---------------------------------------------------------------


def plain(reader: object, writer: object) -> bool:
    """Whether a stream pair is asyncio's own over a plain socket (its transport can be
    taken over by a protocol); TLS and wrapped streams are not."""
    return (
        type(reader) is asyncio.StreamReader
        and type(writer) is asyncio.StreamWriter
        and writer.get_extra_info("sslcontext") is None
        and writer.get_extra_info("socket") is not None
    )


class _Half(asyncio.Protocol):
    """One side of a tunnel: what its transport reads goes out on the other side's."""

    __slots__ = ("early", "early_eof", "eof", "peer", "transport", "tunnel", "up")

    def __init__(self, tunnel: Tunnel, up: bool) -> None:
        self.tunnel = tunnel
        self.up = up  # reads from the sandbox, writes upstream
        self.transport: asyncio.Transport | None = None
        self.peer: _Half | None = None
        self.eof = False  # this side has sent its EOF (passed on to the peer)
        # Read before the other side was attached (an upstream that speaks first, dialled
        # before the relay began): held, with reading paused, until it is.
        self.early: list[bytes] = []
        self.early_eof = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        self.tunnel.received(self, data)

    def eof_received(self) -> bool:
        self.tunnel.ended_one_way(self)
        return True  # keep the transport open: the other direction may still be moving

    def pause_writing(self) -> None:
        # Our transport's write buffer is full: stop reading what fills it.
        assert self.peer is not None and self.peer.transport is not None
        self.peer.transport.pause_reading()

    def resume_writing(self) -> None:
        assert self.peer is not None and self.peer.transport is not None
        self.tunnel.moved = True  # a slow reader took bytes: the tunnel is not idle
        self.peer.transport.resume_reading()

    def connection_lost(self, exc: Exception | None) -> None:
        self.tunnel.lost(self)


class Tunnel:
    """Both sides of one relayed connection, its counters and its idle deadline.

    Use: dial upstream with `upstream_protocol` as the connection's protocol, then `run`
    with the sandbox's streams (what upstream sends meanwhile waits, its reading paused).
    """

    __slots__ = ("client", "counters", "done", "last", "moved", "open", "timeouts", "upstream")

    def __init__(self, counters: Counters, timeouts: RelayTimeouts) -> None:
        loop = asyncio.get_running_loop()
        self.counters = counters
        self.timeouts = timeouts
        self.done: asyncio.Future[str | None] = loop.create_future()
        self.client = _Half(self, up=True)
        self.upstream = _Half(self, up=False)
        self.client.peer, self.upstream.peer = self.upstream, self.client
        self.moved = False  # a byte or an EOF moved since the last sweep
        self.last = loop.time()  # when the sweeper last saw something move
        self.open = True

    @property
    def upstream_protocol(self) -> asyncio.Protocol:
        """The protocol to dial upstream with (before `run`)."""
        return self.upstream

    async def run(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, first: bytes = b""
    ) -> str | None:
        """Relay between the sandbox's streams (asyncio's own, over a plain socket: see
        `plain`) and the upstream dialled with `upstream_protocol`, as `relay` does.

        `first` goes upstream before anything else (counted, and refused beyond the cap
        like any chunk). Closes both sides when done; raises LimitReached as `relay`.
        """
        return await _run(self, reader, writer, first)

    def received(self, half: _Half, data: bytes) -> None:
        if not self.open:
            return
        peer = half.peer.transport  # type: ignore[union-attr]
        if peer is None:
            half.early.append(data)
            half.transport.pause_reading()  # type: ignore[union-attr]
            return
        if half.up:
            try:
                self.counters.add_up(len(data))  # before the write: a refused chunk never leaves
            except LimitReached as e:
                self.finish(limit=e)
                return
        else:
            self.counters.down += len(data)
        self.moved = True
        peer.write(data)

    def ended_one_way(self, half: _Half) -> None:
        """`half` read its EOF: pass it on (half-close), and finish once both did."""
        if half.eof or not self.open:
            return  # a resumed reader sees the same EOF again
        if half.peer.transport is None:  # type: ignore[union-attr]
            half.early_eof = True
            return
        half.eof = True
        self.moved = True
        peer = half.peer.transport  # type: ignore[union-attr]
        with contextlib.suppress(OSError, RuntimeError):
            peer.write_eof()
        if half.peer.eof:  # type: ignore[union-attr]
            self.finish()

    def lost(self, half: _Half) -> None:
        """A transport closed under us (reset, write error): the relay ends both sides."""
        if self.open:
            self.finish(RESET)

    def check(self, now: float) -> None:
        """The sweeper's visit: end the tunnel once nothing moved for its timeout."""
        if self.moved:
            self.moved = False
            self.last = now
            return
        half_closed = self.client.eof or self.upstream.eof
        limit = self.timeouts.half_closed_s if half_closed else self.timeouts.idle_s
        if now - self.last >= limit:
            self.finish(HALF_CLOSED if half_closed else IDLE)

    def finish(self, reason: str | None = None, limit: LimitReached | None = None) -> None:
        if not self.open:
            return
        self.open = False
        for half in (self.client, self.upstream):
            if half.transport is None:
                continue
            if limit is not None:
                reset(half.transport)
            else:
                close_quietly(half.transport)
        if self.done.done():
            return
        if limit is not None:
            self.done.set_exception(limit)
        else:
            self.done.set_result(reason)


class _Sweeper:
    """One timer per event loop checking every open tunnel's idle deadline."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.tunnels: set[Tunnel] = set()
        self.interval = SWEEP_INTERVAL_S
        self.handle: asyncio.TimerHandle | None = None

    def add(self, tunnel: Tunnel) -> None:
        shortest = min(tunnel.timeouts.idle_s, tunnel.timeouts.half_closed_s)
        self.interval = max(SWEEP_FLOOR_S, min(self.interval, shortest / 4))
        self.tunnels.add(tunnel)
        if self.handle is None:
            self.handle = self.loop.call_later(self.interval, self._sweep)

    def discard(self, tunnel: Tunnel) -> None:
        self.tunnels.discard(tunnel)

    def _sweep(self) -> None:
        now = self.loop.time()
        for tunnel in list(self.tunnels):
            tunnel.check(now)
        if self.tunnels:
            self.handle = self.loop.call_later(self.interval, self._sweep)
        else:
            self.handle = None
            self.interval = SWEEP_INTERVAL_S


_sweepers: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, _Sweeper] = (
    weakref.WeakKeyDictionary()
)


def _sweeper() -> _Sweeper:
    loop = asyncio.get_running_loop()
    sweeper = _sweepers.get(loop)
    if sweeper is None:
        sweeper = _sweepers[loop] = _Sweeper(loop)
    return sweeper


def take_buffered(reader: asyncio.StreamReader) -> bytes:
    """What the stream reader has read from its socket and nobody has taken yet.

    The reader's buffer is private to asyncio, and there is no public way to take it
    without waiting; this is the one place that knows it.
    """
    buffered = bytes(reader._buffer)
    reader._buffer.clear()
    return buffered


def _take_over(
    half: _Half, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
) -> tuple[bytes, bool, bool]:
    """Move a stream pair's transport to `half`: (bytes the reader held, EOF seen, failed).

    A reader may also have paused its transport (buffer full): resume it.
    """
    buffered = take_buffered(reader)
    transport = writer.transport
    transport.set_protocol(half)
    half.transport = transport  # type: ignore[assignment]
    transport.resume_reading()  # type: ignore[attr-defined]
    failed = reader.exception() is not None or transport.is_closing()
    return buffered, reader.at_eof(), failed


async def _relay_transports(
    client_r: asyncio.StreamReader,
    client_w: asyncio.StreamWriter,
    up_r: asyncio.StreamReader,
    up_w: asyncio.StreamWriter,
    counters: Counters,
    timeouts: RelayTimeouts,
) -> str | None:
    tunnel = Tunnel(counters, timeouts)
    buffered, eof, failed = _take_over(tunnel.upstream, up_r, up_w)
    if buffered:
        tunnel.upstream.early.append(buffered)
    tunnel.upstream.early_eof = eof
    if failed:
        tunnel.finish(RESET)
    return await tunnel.run(client_r, client_w)


async def _run(
    tunnel: Tunnel, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, first: bytes
) -> str | None:
    buffered, eof, failed = _take_over(tunnel.client, reader, writer)
    if not tunnel.open:
        close_quietly(writer)  # upstream went away before the sandbox side was attached
    elif failed:
        tunnel.finish(RESET)  # a side went away before the relay began
    for data in (first, buffered):
        if data:
            tunnel.received(tunnel.client, data)
    if eof:
        tunnel.ended_one_way(tunnel.client)
    up = tunnel.upstream
    early, up.early = up.early, []
    for data in early:
        tunnel.received(up, data)
    if up.early_eof:
        tunnel.ended_one_way(up)
    elif up.transport is not None and tunnel.open:
        up.transport.resume_reading()  # type: ignore[attr-defined]
    sweeper = _sweeper()
    sweeper.add(tunnel)
    try:
        return await tunnel.done
    finally:
        sweeper.discard(tunnel)
        tunnel.finish()  # cancelled (the gateway stops): close both sides


# ---- any other streams: a task per direction ---------------------------------------------


class _PeerGone(Exception):
    """One side reset or failed: the relay ends both sides."""


class _Watch:
    """The stream relay's one timer, pushed back by every chunk that moves."""

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


async def _relay_streams(
    client_r: asyncio.StreamReader,
    client_w: asyncio.StreamWriter,
    up_r: asyncio.StreamReader,
    up_w: asyncio.StreamWriter,
    counters: Counters,
    timeouts: RelayTimeouts,
) -> str | None:
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
                ended = RESET
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
