"""The gateway's limits: per-session caps from the policy, timeouts, buffer bounds.

Pure bookkeeping, no I/O: `GatewayLimits` holds the numbers (defaults below, the
policy's `limits:` on top), `SessionBudget` counts what a session holds and has sent and
answers "may this connection open / may these bytes go out" with a refusal reason.

Memory per connection is bounded: a stream reader stops reading from its socket once
2 x READ_LIMIT bytes wait in it, and every HTTP writer waits (drain) until the kernel
took the bytes before it reads more. A plain tunnel (relay.py) holds no reader buffer:
each side stops reading once the other side's transport holds more than asyncio's
64 KiB write high-water mark, and one read is at most 256 KiB (asyncio's read size), so
one tunnel holds at most about 2 x (256 KiB + 64 KiB), a stream-relayed one (TLS) about
2 x (2 x READ_LIMIT + RELAY_CHUNK + 64 KiB); the session at most
DEFAULT_MAX_CONNECTIONS of them (the policy may set another cap).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from corridor.policy.compiled import CompiledLimits
    from corridor.policy.model import Limits

# Concurrent TCP connections from one sandbox (transparent, proxy and DNS over TCP). A
# build opening hundreds of parallel downloads stays far below it; the benchmark's 1,000
# idle tunnels fit. With the buffer bounds above this caps the gateway's relay memory.
DEFAULT_MAX_CONNECTIONS = 2048
# Stream buffers: a reader pauses its socket beyond twice this; stream relays read at most
# this per chunk (plain tunnels read what asyncio's transport reads: up to 256 KiB).
READ_LIMIT = 64 * 1024
RELAY_CHUNK = 64 * 1024
# No byte either way for this long ends a relayed connection. Squid's read_timeout is
# 15 minutes; long-lived protocols (SSH, databases, websockets) send keepalives sooner.
IDLE_TIMEOUT_S = 15 * 60.0
# Once one side has closed its half (EOF passed on), the other side must keep moving:
# an answer may take a while to compute, but a half-open connection nobody uses is a leak.
HALF_CLOSED_TIMEOUT_S = 120.0
# A proxy client must send a complete request head within this long of the connection
# opening or of the previous response ending (nginx: client_header_timeout 60 s).
HEAD_TIMEOUT_S = 60.0
# DNS over TCP: a connection idle this long is closed (RFC 7766 §6.2.3 asks servers to
# keep idle DNS connections short, seconds rather than minutes).
DNS_TCP_IDLE_S = 10.0
# DNS queries being answered at once (each may wait on the host's resolver). Beyond it
# datagrams are dropped, as a busy resolver does; the client retries.
MAX_DNS_INFLIGHT = 256

MAX_CONNECTIONS_RULE = "limits.max_connections"
MAX_BYTES_OUT_RULE = "limits.max_bytes_out"


@dataclass(frozen=True, slots=True)
class GatewayLimits:
    """Every limit the gateway applies; build with `from_policy` (tests may shrink them)."""

    max_connections: int = DEFAULT_MAX_CONNECTIONS
    max_bytes_out: int | None = None  # None: no cap on bytes sent upstream
    idle_timeout_s: float = IDLE_TIMEOUT_S
    half_closed_timeout_s: float = HALF_CLOSED_TIMEOUT_S
    head_timeout_s: float = HEAD_TIMEOUT_S
    dns_tcp_idle_s: float = DNS_TCP_IDLE_S
    max_dns_inflight: int = MAX_DNS_INFLIGHT

    @classmethod
    def from_policy(
        cls, limits: Limits | CompiledLimits, **overrides: float | int | None
    ) -> GatewayLimits:
        """The defaults, with what the policy's `limits:` sets on top."""
        values: dict[str, float | int | None] = {}
        if limits.max_connections is not None:
            values["max_connections"] = limits.max_connections
        if limits.max_bytes_out is not None:
            values["max_bytes_out"] = limits.max_bytes_out
        values.update(overrides)
        return cls(**values)  # type: ignore[arg-type]


class LimitReached(Exception):
    """A session cap refused an action; `reason` and `rule` go into the event."""

    def __init__(self, reason: str, rule: str):
        super().__init__(reason)
        self.reason = reason
        self.rule = rule


class SessionBudget:
    """What one session holds (open connections) and has spent (bytes sent upstream)."""

    def __init__(self, limits: GatewayLimits) -> None:
        self.limits = limits
        self.open_connections = 0
        self.bytes_out = 0
        self.out_of_bytes = False  # a send was refused: the session may start no more

    def open(self) -> None:
        """Count a new connection, or raise LimitReached when the cap is reached."""
        cap = self.limits.max_connections
        if self.open_connections >= cap:
            raise LimitReached(
                f"session limit of {cap} concurrent connections reached", MAX_CONNECTIONS_RULE
            )
        self.open_connections += 1

    def close(self) -> None:
        """A connection counted by `open` ended."""
        self.open_connections = max(0, self.open_connections - 1)

    def spend(self, n: int) -> None:
        """Count `n` bytes about to go upstream, or raise LimitReached (nothing counted)."""
        cap = self.limits.max_bytes_out
        if cap is not None and self.bytes_out + n > cap:
            self.out_of_bytes = True
            raise LimitReached(
                f"session limit of {cap} bytes sent upstream reached", MAX_BYTES_OUT_RULE
            )
        self.bytes_out += n

    def check_bytes_left(self) -> None:
        """Raise LimitReached once the session has hit its byte cap (before a dial)."""
        cap = self.limits.max_bytes_out
        if cap is not None and (self.out_of_bytes or self.bytes_out >= cap):
            raise LimitReached(
                f"session limit of {cap} bytes sent upstream reached", MAX_BYTES_OUT_RULE
            )
