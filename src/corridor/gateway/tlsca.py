"""The per-session certificate authority for TLS inspection.

One `SessionCA` lives in the gateway process for one session. Its key is generated in
memory when the session starts, is never serialised to a file, and dies with the process.
`corridor run` generates it and hands it to the gateway process as PEM text (`to_wire`,
read back with `from_wire`) inside the configuration document, which travels only through
a private descriptor (a memfd), never through a named file.
For each inspected host it mints a leaf certificate on demand (SAN = the host name or IP
address, short validity, random serial) and keeps a bounded LRU of ready server
`ssl.SSLContext`s, so a host seen again costs only the handshake.

Loading a leaf into an `ssl.SSLContext`: Python's `load_cert_chain` only reads from a path.
The cert and key are written to an anonymous `memfd_create(2)` file and loaded through
`/proc/self/fd/N`, then the descriptor is closed at once. That file is RAM-backed, is never
linked into any directory (no name to find, nothing left behind if the gateway is killed),
and is reachable only through this process's own fd table, which the sandbox cannot see
(it runs in its own pid namespace, as a process that cannot ptrace the gateway). A tmpfs
file under a 0700 directory would also stay off disk, but would have a name for as long
as it exists and would survive a crash between write and unlink; memfd has neither flaw.

`ServerTLS` is the server side of one such connection over memory buffers (sans-IO), for
a gateway that has already read the ClientHello while sniffing the SNI.

HTTP/2 is not offered: the gateway parses HTTP/1.1 (h11). ALPN is set to `http/1.1` only,
so a client offering `h2, http/1.1` gets `http/1.1`, and a client that offers only `h2`
gets no protocol selected (no ALPN extension in the answer, RFC 7301 3.2) and stops with
its own clear error instead of speaking a protocol the gateway would then refuse.
"""

from __future__ import annotations

import contextlib
import datetime
import functools
import os
import ssl
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from corridor.gateway.memfile import memory_file
from corridor.policy.hosts import IPAddress, normalize_host, parse_ip_literal

# ECDSA P-256: a key in well under a millisecond, and accepted by every TLS client in use
# (OpenSSL, GnuTLS, NSS, BoringSSL, rustls, Go, Java, SChannel); Ed25519 certificates are
# still refused by browsers and several client stacks.
CURVE = ec.SECP256R1()
SIGNATURE_HASH = hashes.SHA256()
# The CA outlives any session (the key dies with the gateway anyway); a session running
# longer than this needs a restart, because leaves cannot outlive their issuer.
CA_VALIDITY = datetime.timedelta(days=30)
# Leaves are short-lived: a leaked leaf is useless a day later; the cache re-mints early.
LEAF_VALIDITY = datetime.timedelta(hours=24)
LEAF_RENEW_BEFORE = datetime.timedelta(hours=1)
# Backdated so that a client whose clock runs a little behind accepts a fresh certificate.
BACKDATE = datetime.timedelta(hours=1)
# A session inspects a handful of hosts; this bound keeps a hostile agent that asks for
# endless names from growing the gateway: a cached context costs about 22 KiB (measured),
# so the cache stays under 6 MiB. A miss costs about 1 ms (mint + context).
LEAF_CACHE_SIZE = 256
# RFC 5280 ub-common-name: a longer host cannot be the CN; the SAN carries it alone then.
MAX_COMMON_NAME = 64
# HTTP/1.1 only: the inspected path is parsed with h11 (see the module docstring).
ALPN_PROTOCOLS = ("http/1.1",)
CA_COMMON_NAME = "corridor session CA"
ORGANIZATION = "corridor (per-session, in-memory)"


@dataclass(frozen=True, slots=True)
class Leaf:
    """A minted server certificate; the key stays inside the SSLContext built from it."""

    host: str  # the normalised name, or the address in its canonical text form
    cert: x509.Certificate
    not_after: datetime.datetime


class SessionCA:
    """A certificate authority that exists only in this process's memory."""

    def __init__(
        self,
        key: ec.EllipticCurvePrivateKey,
        cert: x509.Certificate,
        *,
        cache_size: int = LEAF_CACHE_SIZE,
        clock: Callable[[], datetime.datetime] | None = None,
    ) -> None:
        self._key = key
        self.cert = cert
        self._clock = clock or _utcnow
        self._cache_size = cache_size
        self._contexts: OrderedDict[str, tuple[Leaf, ssl.SSLContext]] = OrderedDict()
        self.minted = 0  # leaves minted so far (cache misses), for stats and tests

    def __repr__(self) -> str:  # never show key material, even by accident in a log
        return f"SessionCA(subject={self.cert.subject.rfc4514_string()!r})"

    @classmethod
    def generate(
        cls,
        session: str = "",
        *,
        cache_size: int = LEAF_CACHE_SIZE,
        clock: Callable[[], datetime.datetime] | None = None,
    ) -> SessionCA:
        """A fresh CA: new P-256 key, self-signed, valid from an hour ago for CA_VALIDITY.

        `session` goes into the subject so a user looking at a certificate chain can tell
        which run minted it.
        """
        now = (clock or _utcnow)()
        key = ec.generate_private_key(CURVE)
        label = f"{CA_COMMON_NAME} {session}".strip()[:MAX_COMMON_NAME]
        name = x509.Name(
            [
                x509.NameAttribute(NameOID.ORGANIZATION_NAME, ORGANIZATION),
                x509.NameAttribute(NameOID.COMMON_NAME, label),
            ]
        )
        public = key.public_key()
        cert = (
            x509.CertificateBuilder()
            .subject_name(name)
            .issuer_name(name)
            .public_key(public)
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - BACKDATE)
            .not_valid_after(now + CA_VALIDITY)
            # pathlen 0: this CA signs leaves only, never another CA.
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(_key_usage(ca=True), critical=True)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(public), critical=False)
            .add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_public_key(public), critical=False
            )
            .sign(key, SIGNATURE_HASH)
        )
        return cls(key, cert, cache_size=cache_size, clock=clock)

    def to_wire(self) -> dict[str, str]:
        """The CA as JSON-able data (PEM texts), for the gateway process: `from_wire` reads
        it back. This holds the PRIVATE KEY: send it only over a private pipe or memfd,
        never to a file, a log or the sandbox."""
        key_pem = self._key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
        return {"key_pem": key_pem.decode("ascii"), "cert_pem": self.cert_pem().decode("ascii")}

    @classmethod
    def from_wire(
        cls,
        data: object,
        *,
        cache_size: int = LEAF_CACHE_SIZE,
        clock: Callable[[], datetime.datetime] | None = None,
    ) -> SessionCA:
        """The CA `to_wire` described; ValueError (never showing the key) for anything else."""
        if not isinstance(data, dict) or set(data) != {"key_pem", "cert_pem"}:
            raise ValueError("session CA wire: expected keys 'key_pem' and 'cert_pem'")
        key_pem, cert_pem = data["key_pem"], data["cert_pem"]
        if not isinstance(key_pem, str) or not isinstance(cert_pem, str):
            raise ValueError("session CA wire: the PEM texts are not text")
        try:
            key = serialization.load_pem_private_key(key_pem.encode("ascii"), password=None)
            cert = x509.load_pem_x509_certificate(cert_pem.encode("ascii"))
        except (ValueError, TypeError, UnicodeError):
            raise ValueError("session CA wire: the key or certificate does not load") from None
        if not isinstance(key, ec.EllipticCurvePrivateKey):
            raise ValueError("session CA wire: the key is not an EC key")
        if key.public_key() != cert.public_key():
            raise ValueError("session CA wire: the key does not belong to the certificate")
        return cls(key, cert, cache_size=cache_size, clock=clock)

    def cert_pem(self) -> bytes:
        """The CA certificate (public) in PEM, for the sandbox's trust bundle."""
        return self.cert.public_bytes(serialization.Encoding.PEM)

    def mint(self, host: str) -> tuple[Leaf, ec.EllipticCurvePrivateKey]:
        """A new leaf for `host` (a DNS name or an IP literal) and its private key.

        Raises `corridor.policy.hosts.InvalidHost` for a host that is neither.
        """
        canonical, address = _canonical_host(host)
        now = self._clock()
        key = ec.generate_private_key(CURVE)
        san: x509.GeneralName = (
            x509.IPAddress(address) if address is not None else x509.DNSName(canonical)
        )
        if len(canonical) <= MAX_COMMON_NAME:
            subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, canonical)])
        else:
            subject = x509.Name([])
        not_before = max(now - BACKDATE, self.cert.not_valid_before_utc)
        not_after = min(now + LEAF_VALIDITY, self.cert.not_valid_after_utc)
        ca_public = self._key.public_key()
        cert = (
            x509.CertificateBuilder()
            .subject_name(subject)
            .issuer_name(self.cert.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(not_before)
            .not_valid_after(not_after)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(_key_usage(ca=False), critical=True)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
            # RFC 5280 4.2.1.6: with an empty subject the SAN must be critical.
            .add_extension(x509.SubjectAlternativeName([san]), critical=len(subject) == 0)
            .add_extension(
                x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False
            )
            .add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_public), critical=False
            )
            .sign(self._key, SIGNATURE_HASH)
        )
        self.minted += 1
        return Leaf(canonical, cert, not_after), key

    def server_context(self, host: str) -> ssl.SSLContext:
        """The server-side context presenting a leaf for `host`; cached (LRU, bounded).

        A cached leaf within LEAF_RENEW_BEFORE of its end is replaced by a fresh one.
        ALPN offers http/1.1 only. Raises `InvalidHost` for a malformed host.
        """
        canonical, _ = _canonical_host(host)
        hit = self._contexts.get(canonical)
        if hit is not None and hit[0].not_after - LEAF_RENEW_BEFORE > self._clock():
            self._contexts.move_to_end(canonical)
            return hit[1]
        leaf, key = self.mint(canonical)
        context = _server_context(leaf.cert, key)
        self._contexts[canonical] = (leaf, context)
        self._contexts.move_to_end(canonical)
        while len(self._contexts) > self._cache_size:
            self._contexts.popitem(last=False)
        return context

    def cached_leaf(self, host: str) -> Leaf | None:
        """The leaf currently cached for `host`, if any (for tests and diagnostics)."""
        hit = self._contexts.get(_canonical_host(host)[0])
        return hit[0] if hit is not None else None

    def __len__(self) -> int:
        return len(self._contexts)


class ServerTLS:
    """The server side of one TLS connection over memory buffers (sans-IO).

    The gateway has already read the ClientHello (to sniff SNI) when it decides to
    inspect, and asyncio's `start_tls` cannot be handed bytes already read. So the gateway
    feeds every byte from the client to `receive` (the ClientHello first), sends whatever
    `outgoing` returns, and moves plaintext with `read` / `write`. No socket in here.
    """

    READ_SIZE = 64 * 1024

    def __init__(self, context: ssl.SSLContext, first: bytes = b"") -> None:
        self._incoming = ssl.MemoryBIO()
        self._outgoing = ssl.MemoryBIO()
        self.tls = context.wrap_bio(self._incoming, self._outgoing, server_side=True)
        self.handshake_done = False
        self.closed = False  # the client sent close_notify (or the stream ended)
        if first:
            self._incoming.write(first)

    def receive(self, data: bytes) -> None:
        """Bytes from the client; b"" means the client's stream ended."""
        if data:
            self._incoming.write(data)
        else:
            self._incoming.write_eof()

    def handshake(self) -> bool:
        """Advance the handshake; True once it is complete. Raises ssl.SSLError on failure
        (e.g. the client refused the certificate); `outgoing` may still hold an alert."""
        if not self.handshake_done:
            try:
                self.tls.do_handshake()
            except ssl.SSLWantReadError:
                return False
            self.handshake_done = True
        return True

    def read(self) -> bytes:
        """All plaintext decrypted so far (b"" if none yet; see `closed` for the end)."""
        chunks = []
        while True:
            try:
                chunk = self.tls.read(self.READ_SIZE)
            except ssl.SSLWantReadError:
                break
            except (ssl.SSLZeroReturnError, ssl.SSLEOFError):
                self.closed = True
                break
            if not chunk:
                self.closed = True
                break
            chunks.append(chunk)
        return b"".join(chunks)

    def write(self, plaintext: bytes) -> None:
        """Encrypt `plaintext` for the client (collect it with `outgoing`)."""
        self.tls.write(plaintext)

    def close(self) -> None:
        """Send close_notify (collect it with `outgoing`)."""
        # SSLWantReadError: the client's close_notify is not awaited (nothing needs it).
        with contextlib.suppress(ssl.SSLError):
            self.tls.unwrap()

    def outgoing(self) -> bytes:
        """Bytes to send to the client now."""
        return self._outgoing.read()

    @property
    def alpn(self) -> str | None:
        """The protocol agreed by ALPN: "http/1.1", or None when the client offered none."""
        return self.tls.selected_alpn_protocol()


def _server_context(cert: x509.Certificate, key: ec.EllipticCurvePrivateKey) -> ssl.SSLContext:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    # A client may not renegotiate: nothing legitimate needs it, and it costs us CPU.
    context.options |= ssl.OP_NO_RENEGOTIATION
    context.set_alpn_protocols(list(ALPN_PROTOCOLS))
    pem = cert.public_bytes(serialization.Encoding.PEM) + key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    _load_chain_from_memory(context, pem)
    return context


def _load_chain_from_memory(context: ssl.SSLContext, pem: bytes) -> None:
    """`load_cert_chain` from an anonymous in-memory file (see the module docstring)."""
    fd = memory_file("corridor-leaf", pem)
    try:
        context.load_cert_chain(f"/proc/self/fd/{fd}")
    finally:
        os.close(fd)


# Every inspected connection looks its host up; checking a name costs more than the cache
# lookup that follows. Invalid hosts raise and are not cached.
@functools.lru_cache(maxsize=4 * LEAF_CACHE_SIZE)
def _canonical_host(host: str) -> tuple[str, IPAddress | None]:
    """(text for the cache key and certificate, the address if `host` is an IP literal)."""
    address = parse_ip_literal(host)
    if address is not None:
        return str(address), address
    return normalize_host(host), None


def _key_usage(*, ca: bool) -> x509.KeyUsage:
    # ECDSA: a server signs the handshake (digitalSignature); a CA also signs certificates.
    return x509.KeyUsage(
        digital_signature=True,
        content_commitment=False,
        key_encipherment=False,
        data_encipherment=False,
        key_agreement=False,
        key_cert_sign=ca,
        crl_sign=ca,
        encipher_only=False,
        decipher_only=False,
    )


def _utcnow() -> datetime.datetime:
    return datetime.datetime.now(datetime.UTC)
