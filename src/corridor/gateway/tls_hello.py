"""Reading the server name (SNI) and ALPN from a TLS ClientHello, without answering it.

The gateway decides a TLS connection by the name the client asks for before any key is
exchanged. A ClientHello may span several TLS records (record fragmentation, RFC 8446 §5.1)
and several reads; ClientHelloReader takes the bytes as they come and answers once the
whole message is in, never buffering more than MAX_HELLO_BYTES. The bytes themselves are
left to the caller, which forwards or replays them unchanged.
"""

from __future__ import annotations

from dataclasses import dataclass

from corridor.gateway.names import hostname_problem

RECORD_HEADER_LEN = 5  # content type (1), legacy record version (2), length (2)
HANDSHAKE_HEADER_LEN = 4  # handshake type (1), length (3)
CONTENT_HANDSHAKE = 22
HANDSHAKE_CLIENT_HELLO = 1
RECORD_MAJOR = 0x03
RECORD_MAX_MINOR = 0x04  # 0x0300 (SSL 3.0) .. 0x0304: the same range the sniffer accepts
MAX_RECORD_PAYLOAD = 2**14  # RFC 8446 §5.1: TLSPlaintext.length MUST NOT exceed 2^14
# Everything the hello arrives in, record headers included. Real ClientHellos are 0.2-2 KB
# (about 1.8 KB with X25519MLKEM768 key shares); 64 KiB leaves room for many PSK identities
# or large post-quantum shares while bounding what one connection can make us hold.
MAX_HELLO_BYTES = 64 * 1024
MAX_SESSION_ID = 32  # RFC 8446 §4.1.2: legacy_session_id<0..32>

EXT_SERVER_NAME = 0  # RFC 6066 §3
EXT_ALPN = 16  # RFC 7301 §3.1
EXT_ECH = 0xFE0D  # draft-ietf-tls-esni: encrypted_client_hello
SNI_HOST_NAME = 0  # the only ServerName type ever defined


class TLSParseError(Exception):
    """The client sent something that is not a well-formed ClientHello; `reason` says what."""

    def __init__(self, reason: str):
        super().__init__(reason)
        self.reason = reason


@dataclass(frozen=True, slots=True)
class ClientHello:
    sni: str | None  # as sent (not normalised); None when the client sent no server_name
    alpn: tuple[str, ...]  # offered protocols in order, bytes decoded as latin-1 (lossless)
    # The client offered Encrypted Client Hello: `sni` is then the outer (public) name and
    # the real one is hidden. Browsers also send a GREASE ECH extension that looks the same.
    ech: bool
    length: int  # input bytes from the first record header to the end of the last record
    records: int  # TLS records the hello was carried in (> 1: the client fragmented it)


class ClientHelloReader:
    """Incremental ClientHello parser: feed() bytes as they arrive.

    feed() returns None while more bytes are needed, the ClientHello once complete (and the
    same object on every later call), or raises TLSParseError; once raised it raises the same
    error on every later call. Work is linear in the bytes fed, however they are chunked.
    """

    def __init__(self) -> None:
        self._buf = bytearray()
        self._scan = 0  # offset in _buf of the next record header
        self._handshake = bytearray()  # handshake-layer bytes from complete records
        self._records = 0
        self._result: ClientHello | None = None
        self._error: TLSParseError | None = None

    def feed(self, data: bytes) -> ClientHello | None:
        """Add `data` and return the ClientHello if it is now complete, else None."""
        if self._result is not None:
            return self._result
        if self._error is not None:
            raise self._error
        # Bytes past the cap can never be part of an acceptable hello: do not keep them.
        self._buf += data[: MAX_HELLO_BYTES - len(self._buf)]
        try:
            self._result = self._advance()
            if self._result is None and len(self._buf) >= MAX_HELLO_BYTES:
                # Full, yet incomplete: the rest would lie past the cap.
                raise TLSParseError(f"ClientHello larger than {MAX_HELLO_BYTES} bytes")
        except TLSParseError as e:
            self._error = e
            raise
        return self._result

    def _advance(self) -> ClientHello | None:
        while True:
            header = bytes(self._buf[self._scan : self._scan + RECORD_HEADER_LEN])
            _check_record_header(header, first=self._scan == 0)
            if len(header) < RECORD_HEADER_LEN:
                return None
            length = int.from_bytes(header[3:5], "big")
            end = self._scan + RECORD_HEADER_LEN + length
            if end > MAX_HELLO_BYTES:
                raise TLSParseError(f"ClientHello larger than {MAX_HELLO_BYTES} bytes")
            if len(self._buf) < end:
                return None
            self._handshake += self._buf[self._scan + RECORD_HEADER_LEN : end]
            self._scan = end
            self._records += 1
            body = _complete_message(self._handshake)
            if body is not None:
                sni, alpn, ech = _parse_client_hello_body(body)
                return ClientHello(sni, alpn, ech, length=end, records=self._records)


def parse_client_hello(data: bytes) -> ClientHello | None:
    """Parse a ClientHello from the start of `data` (everything received so far).

    Returns None when more bytes are needed, the ClientHello when complete (bytes after its
    last record are ignored), and raises TLSParseError for anything malformed or larger than
    MAX_HELLO_BYTES. For a connection read in many small pieces prefer ClientHelloReader,
    which does not re-scan what it has seen.
    """
    return ClientHelloReader().feed(data)


def _check_record_header(header: bytes, *, first: bool) -> None:
    # Checks whatever part of the 5-byte header has arrived, so junk fails fast.
    if len(header) >= 1 and header[0] != CONTENT_HANDSHAKE:
        if first and header[0] & 0x80:
            if len(header) < 3:
                return  # an SSLv2 header is told apart by its third byte: wait for it
            if header[2] == 1:
                raise TLSParseError("SSLv2-format ClientHello is not supported")
        if first:
            raise TLSParseError(f"not a TLS handshake record (content type {header[0]})")
        raise TLSParseError(f"record of content type {header[0]} inside the ClientHello")
    if len(header) >= 2 and header[1] != RECORD_MAJOR:
        raise TLSParseError(f"unknown record version major {header[1]}")
    if len(header) >= 3 and header[2] > RECORD_MAX_MINOR:
        raise TLSParseError(f"unknown record version 3.{header[2]}")
    if len(header) >= RECORD_HEADER_LEN:
        length = int.from_bytes(header[3:5], "big")
        if length == 0:
            # RFC 8446 §5.1: zero-length handshake fragments MUST NOT be sent.
            raise TLSParseError("empty handshake record")
        if length > MAX_RECORD_PAYLOAD:
            raise TLSParseError(f"record of {length} bytes exceeds {MAX_RECORD_PAYLOAD}")


def _complete_message(handshake: bytearray) -> bytes | None:
    # The ClientHello body once all of it has arrived, else None.
    if len(handshake) < HANDSHAKE_HEADER_LEN:
        return None
    if handshake[0] != HANDSHAKE_CLIENT_HELLO:
        raise TLSParseError(f"not a ClientHello (handshake type {handshake[0]})")
    length = int.from_bytes(handshake[1:4], "big")
    if length > MAX_HELLO_BYTES - HANDSHAKE_HEADER_LEN - RECORD_HEADER_LEN:
        raise TLSParseError(f"ClientHello larger than {MAX_HELLO_BYTES} bytes")
    end = HANDSHAKE_HEADER_LEN + length
    if len(handshake) < end:
        return None
    if len(handshake) > end:
        # Nothing may follow: the client waits for the ServerHello before sending more.
        raise TLSParseError("handshake data after the ClientHello")
    return bytes(handshake[HANDSHAKE_HEADER_LEN:end])


class _Cursor:
    """Reads big-endian fields from a bytes object; running short is a TLSParseError."""

    def __init__(self, data: bytes) -> None:
        self._data = data
        self._pos = 0

    @property
    def remaining(self) -> int:
        return len(self._data) - self._pos

    def take(self, n: int, what: str) -> bytes:
        if n > self.remaining:
            raise TLSParseError(f"truncated {what}")
        chunk = self._data[self._pos : self._pos + n]
        self._pos += n
        return chunk

    def uint(self, size: int, what: str) -> int:
        return int.from_bytes(self.take(size, what), "big")


def _parse_client_hello_body(body: bytes) -> tuple[str | None, tuple[str, ...], bool]:
    # RFC 8446 §4.1.2 (the TLS 1.0-1.2 layout is the same up to the extensions).
    r = _Cursor(body)
    version = r.uint(2, "legacy_version")
    if version >> 8 != RECORD_MAJOR:
        raise TLSParseError(f"unknown ClientHello version 0x{version:04x}")
    r.take(32, "random")
    session_id_len = r.uint(1, "legacy_session_id length")
    if session_id_len > MAX_SESSION_ID:
        raise TLSParseError(f"legacy_session_id longer than {MAX_SESSION_ID} bytes")
    r.take(session_id_len, "legacy_session_id")
    suites_len = r.uint(2, "cipher_suites length")
    if suites_len == 0 or suites_len % 2:
        raise TLSParseError(f"cipher_suites length {suites_len} is not a positive even number")
    r.take(suites_len, "cipher_suites")
    compression_len = r.uint(1, "legacy_compression_methods length")
    if compression_len == 0:
        raise TLSParseError("no compression methods")
    r.take(compression_len, "legacy_compression_methods")
    if r.remaining == 0:
        return None, (), False  # no extensions at all: allowed before TLS 1.3
    return _parse_extensions(r)


def _parse_extensions(r: _Cursor) -> tuple[str | None, tuple[str, ...], bool]:
    total = r.uint(2, "extensions length")
    if total != r.remaining:
        raise TLSParseError(
            f"extensions length {total} does not match the {r.remaining} bytes left"
        )
    # The loop reads the fields itself instead of through _Cursor: a hello carries a dozen
    # or more extensions, and the method calls were most of the parser's time on the TLS
    # passthrough path. The errors are _Cursor's, word for word, built only on failure.
    data = r.take(total, "extensions")
    sni: str | None = None
    alpn: tuple[str, ...] = ()
    seen: set[int] = set()
    pos = 0
    while pos < total:
        if total - pos < 2:
            raise TLSParseError("truncated extension type")
        if total - pos < 4:
            raise TLSParseError("truncated extension length")
        ext_type = data[pos] << 8 | data[pos + 1]
        size = data[pos + 2] << 8 | data[pos + 3]
        pos += 4
        if size > total - pos:
            raise TLSParseError(f"truncated extension {ext_type}")
        if ext_type in seen:
            # RFC 8446 §4.2: a second copy could make two parsers read two different names.
            raise TLSParseError(f"duplicate extension {ext_type}")
        seen.add(ext_type)
        if ext_type == EXT_SERVER_NAME:
            sni = _parse_server_name(data[pos : pos + size])
        elif ext_type == EXT_ALPN:
            alpn = _parse_alpn(data[pos : pos + size])
        pos += size
    return sni, alpn, EXT_ECH in seen


def _parse_server_name(data: bytes) -> str:
    r = _Cursor(data)
    if r.uint(2, "server_name list length") != r.remaining:
        raise TLSParseError("server_name list length does not match the extension")
    host: str | None = None
    while r.remaining:
        name_type = r.uint(1, "server_name type")
        name = r.take(r.uint(2, "server_name length"), "server_name")
        # Like OpenSSL, accept only host_name entries (RFC 6066 §3), and only one of them.
        if name_type != SNI_HOST_NAME:
            raise TLSParseError(f"server_name of unknown type {name_type}")
        if host is not None:
            raise TLSParseError("more than one host_name in server_name")
        text = name.decode("latin-1")
        problem = hostname_problem(text)
        if problem is not None:
            raise TLSParseError(f"invalid SNI: {problem}")
        host = text
    if host is None:
        raise TLSParseError("empty server_name list")
    return host


def _parse_alpn(data: bytes) -> tuple[str, ...]:
    r = _Cursor(data)
    if r.uint(2, "ALPN list length") != r.remaining:
        raise TLSParseError("ALPN list length does not match the extension")
    protocols: list[str] = []
    while r.remaining:
        name = r.take(r.uint(1, "ALPN protocol length"), "ALPN protocol")
        if not name:
            raise TLSParseError("empty ALPN protocol name")  # RFC 7301: ProtocolName<1..2^8-1>
        protocols.append(name.decode("latin-1"))
    if not protocols:
        raise TLSParseError("empty ALPN list")
    return tuple(protocols)
