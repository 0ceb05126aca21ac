"""A client's TLS connection, terminated by the gateway, as stream-like objects.

The gateway has read the ClientHello (to sniff the SNI) before it knows it will inspect,
and asyncio's `start_tls` cannot be handed bytes already read. `TLSStream` drives the
sans-IO `ServerTLS` (tlsca.py) over the client's raw reader and writer and offers the
small part of the StreamReader/StreamWriter interface that `HttpExchange` uses (`read`,
`write`, `drain`, `close`, `get_extra_info`, `can_write_eof`), so the same HTTP code
runs over plaintext and over decrypted TLS.
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # tlsca loads cryptography: only a gateway that inspects imports it
    from corridor.gateway.tlsca import ServerTLS

RAW_READ = 64 * 1024  # one socket read: a TLS record is at most 16 KiB plus overhead


class TLSStream:
    """Plaintext reader and writer in one, over a client's TLS connection."""

    def __init__(
        self, tls: ServerTLS, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        self.tls = tls
        self.raw_reader = reader
        self.raw_writer = writer
        self._buffer = b""

    async def handshake(self, timeout_s: float) -> None:
        """Complete the server handshake within `timeout_s`.

        Raises ssl.SSLError (the client refused our certificate, or spoke nonsense),
        ConnectionError (the client left) or TimeoutError; any alert is sent first.
        """
        async with asyncio.timeout(timeout_s):
            while True:
                try:
                    done = self.tls.handshake()
                finally:
                    self._flush()
                if done:
                    await self.raw_writer.drain()
                    return
                await self.raw_writer.drain()
                data = await self.raw_reader.read(RAW_READ)
                if not data:
                    raise ConnectionError("client closed the connection during the handshake")
                self.tls.receive(data)

    async def read(self, n: int = -1) -> bytes:
        """Up to `n` bytes of plaintext (all that is ready if n < 0); b"" at the end."""
        while not self._buffer:
            self._buffer = self.tls.read()
            self._flush()  # TLS 1.3 key updates and alerts answer on their own
            if self._buffer or self.tls.closed:
                break
            data = await self.raw_reader.read(RAW_READ)
            self.tls.receive(data)  # b"" marks the end of the client's stream
        if n < 0 or n >= len(self._buffer):
            out, self._buffer = self._buffer, b""
        else:
            out, self._buffer = self._buffer[:n], self._buffer[n:]
        return out

    def write(self, data: bytes) -> None:
        """Encrypt `data` and queue it for the client."""
        if data:
            self.tls.write(data)
            self._flush()

    async def drain(self) -> None:
        await self.raw_writer.drain()

    def close(self) -> None:
        """Send close_notify, then close the connection."""
        with contextlib.suppress(ssl.SSLError, ConnectionError, OSError, RuntimeError):
            self.tls.close()
            self._flush()
        self.raw_writer.close()

    def get_extra_info(self, name: str, default: object = None) -> object:
        return self.raw_writer.get_extra_info(name, default)

    def can_write_eof(self) -> bool:
        return False  # TLS has no half-close; close() sends close_notify

    def write_eof(self) -> None:
        raise RuntimeError("TLS streams cannot half-close")

    def _flush(self) -> None:
        out = self.tls.outgoing()
        if out:
            self.raw_writer.write(out)
