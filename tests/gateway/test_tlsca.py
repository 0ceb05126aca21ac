"""The per-session CA: certificates it mints, its cache, and real TLS handshakes with them."""

from __future__ import annotations

import datetime
import ipaddress
import os
import socket
import ssl
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from corridor.gateway import tlsca
from corridor.gateway.tlsca import ALPN_PROTOCOLS, SessionCA
from corridor.policy.hosts import InvalidHost

NOW = datetime.datetime(2030, 1, 2, 3, 4, 5, tzinfo=datetime.UTC)
LONG_NAME = ".".join(["a" * 60, "b" * 60, "test"])  # 126 characters: too long for a CN


class Clock:
    """A settable clock for the CA."""

    def __init__(self, now: datetime.datetime = NOW) -> None:
        self.now = now

    def __call__(self) -> datetime.datetime:
        return self.now


@pytest.fixture(scope="module")
def ca() -> SessionCA:
    return SessionCA.generate("s-test")


# ---- the CA certificate ------------------------------------------------------------------


def test_ca_certificate_is_a_pathlen0_p256_ca_valid_from_an_hour_ago():
    ca = SessionCA.generate("sess-1", clock=Clock())
    cert = ca.cert
    assert cert.issuer == cert.subject
    assert cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == (
        "corridor session CA sess-1"
    )
    constraints = cert.extensions.get_extension_for_class(x509.BasicConstraints)
    assert constraints.critical and constraints.value.ca and constraints.value.path_length == 0
    usage = cert.extensions.get_extension_for_class(x509.KeyUsage)
    assert usage.critical and usage.value.key_cert_sign and usage.value.crl_sign
    public = cert.public_key()
    assert isinstance(public, ec.EllipticCurvePublicKey) and public.curve.name == "secp256r1"
    assert cert.not_valid_before_utc == NOW - tlsca.BACKDATE
    assert cert.not_valid_after_utc == NOW + tlsca.CA_VALIDITY
    cert.verify_directly_issued_by(cert)  # self-signed with its own key


def test_each_session_gets_its_own_key_and_serial():
    a, b = SessionCA.generate(), SessionCA.generate()
    assert a.cert.public_key() != b.cert.public_key()
    assert a.cert.serial_number != b.cert.serial_number


def test_repr_shows_no_key_material(ca: SessionCA):
    text = repr(ca)
    assert text.startswith("SessionCA(subject='CN=corridor session CA s-test,")
    assert "PRIVATE" not in text
    assert str(ca._key.private_numbers().private_value) not in text


def test_cert_pem_is_the_public_certificate_only(ca: SessionCA):
    pem = ca.cert_pem()
    assert pem.startswith(b"-----BEGIN CERTIFICATE-----")
    assert b"PRIVATE KEY" not in pem
    assert x509.load_pem_x509_certificate(pem) == ca.cert


# ---- leaves ----------------------------------------------------------------------------

# name: (host asked for, canonical host, SAN, common name or None)
# fmt: off
LEAVES = {
    "name": ("api.example.test", "api.example.test",
             x509.DNSName("api.example.test"), "api.example.test"),
    "case and trailing dot": ("API.Example.TEST.", "api.example.test",
                              x509.DNSName("api.example.test"), "api.example.test"),
    "IDN to punycode": ("bücher.test", "xn--bcher-kva.test",
                        x509.DNSName("xn--bcher-kva.test"), "xn--bcher-kva.test"),
    "IPv4": ("127.0.0.1", "127.0.0.1",
             x509.IPAddress(ipaddress.ip_address("127.0.0.1")), "127.0.0.1"),
    "IPv6 bracketed": ("[2001:DB8::1]", "2001:db8::1",
                       x509.IPAddress(ipaddress.ip_address("2001:db8::1")), "2001:db8::1"),
    "too long for a CN": (LONG_NAME, LONG_NAME, x509.DNSName(LONG_NAME), None),
}
# fmt: on


@pytest.mark.parametrize(("host", "canonical", "san", "cn"), LEAVES.values(), ids=LEAVES.keys())
def test_leaf_names_the_host(host: str, canonical: str, san: x509.GeneralName, cn: str | None):
    ca = SessionCA.generate(clock=Clock())
    leaf, key = ca.mint(host)
    cert = leaf.cert
    assert leaf.host == canonical
    alt = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName)
    assert list(alt.value) == [san]
    names = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    assert [n.value for n in names] == ([cn] if cn else [])
    # RFC 5280 4.2.1.6: a certificate with an empty subject carries a critical SAN.
    assert alt.critical == (cn is None)
    assert cert.public_key() == key.public_key()


def test_leaf_is_a_short_lived_server_certificate_issued_by_the_ca():
    clock = Clock()
    ca = SessionCA.generate(clock=clock)
    clock.now = NOW + datetime.timedelta(hours=5)
    leaf, _ = ca.mint("a.test")
    cert = leaf.cert
    cert.verify_directly_issued_by(ca.cert)
    assert cert.issuer == ca.cert.subject
    assert cert.not_valid_before_utc == clock.now - tlsca.BACKDATE
    assert cert.not_valid_after_utc == clock.now + tlsca.LEAF_VALIDITY == leaf.not_after
    constraints = cert.extensions.get_extension_for_class(x509.BasicConstraints)
    assert constraints.critical and not constraints.value.ca
    usage = cert.extensions.get_extension_for_class(x509.KeyUsage)
    assert usage.critical and usage.value.digital_signature and not usage.value.key_cert_sign
    eku = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert list(eku) == [ExtendedKeyUsageOID.SERVER_AUTH]
    aki = cert.extensions.get_extension_for_class(x509.AuthorityKeyIdentifier).value
    ski = ca.cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
    assert aki.key_identifier == ski.digest


def test_leaf_never_outlives_nor_predates_the_ca():
    clock = Clock()
    ca = SessionCA.generate(clock=clock)
    clock.now = NOW + tlsca.CA_VALIDITY - datetime.timedelta(hours=2)
    late, _ = ca.mint("late.test")
    assert late.cert.not_valid_after_utc == ca.cert.not_valid_after_utc
    clock.now = NOW
    early, _ = ca.mint("early.test")
    assert early.cert.not_valid_before_utc == ca.cert.not_valid_before_utc


def test_leaves_have_random_serials_and_their_own_keys(ca: SessionCA):
    (a, ka), (b, kb) = ca.mint("a.test"), ca.mint("a.test")
    assert a.cert.serial_number != b.cert.serial_number
    assert ka.public_key() != kb.public_key()
    assert a.cert.serial_number.bit_length() > 64


@pytest.mark.parametrize(
    ("host", "reason"),
    [
        ("", "empty host name"),
        ("a..test", "empty label (two dots in a row, or a leading dot)"),
        ("a b.test", "' ' is not allowed in a host name"),
        ("127.1", "ends in a number, so it reads as an IP address, not a host name"),
        ("fe80::1%eth0", "':' is not allowed in a host name"),
    ],
)
def test_malformed_host_is_refused(ca: SessionCA, host: str, reason: str):
    with pytest.raises(InvalidHost) as e:
        ca.server_context(host)
    assert e.value.reason == reason


# ---- the context cache -----------------------------------------------------------------


def test_context_is_cached_per_canonical_host():
    ca = SessionCA.generate()
    first = ca.server_context("a.test")
    assert ca.server_context("A.TEST.") is first
    assert ca.minted == 1 and len(ca) == 1
    assert ca.server_context("b.test") is not first
    assert ca.minted == 2


def test_cache_is_a_bounded_lru():
    ca = SessionCA.generate(cache_size=2)
    a = ca.server_context("a.test")
    ca.server_context("b.test")
    assert ca.server_context("a.test") is a  # a is now the most recent
    ca.server_context("c.test")  # evicts b, the least recent
    assert len(ca) == 2
    assert ca.cached_leaf("b.test") is None
    assert ca.server_context("a.test") is a
    assert ca.minted == 3


def test_leaf_close_to_its_end_is_reminted():
    clock = Clock()
    ca = SessionCA.generate(clock=clock)
    first = ca.server_context("a.test")
    leaf = ca.cached_leaf("a.test")
    assert leaf is not None
    clock.now = leaf.not_after - tlsca.LEAF_RENEW_BEFORE - datetime.timedelta(seconds=1)
    assert ca.server_context("a.test") is first
    clock.now += datetime.timedelta(seconds=1)
    assert ca.server_context("a.test") is not first
    assert ca.minted == 2


def test_loading_a_leaf_opens_no_file_and_leaks_no_descriptor():
    ca = SessionCA.generate()
    opened: list[tuple[object, object]] = []
    watching = True

    def hook(event: str, args: tuple) -> None:
        if watching and event == "open":
            opened.append((args[0], args[1]))

    before = set(os.listdir("/proc/self/fd"))
    sys.addaudithook(hook)  # audit hooks cannot be removed: `watching` switches it off
    try:
        for i in range(5):
            ca.server_context(f"h{i}.test")
    finally:
        watching = False
    assert opened == []  # no temporary file: the chain goes through memfd only
    assert set(os.listdir("/proc/self/fd")) <= before


# ---- real TLS --------------------------------------------------------------------------


@contextmanager
def tls_server(context: ssl.SSLContext) -> Iterator[tuple[int, list]]:
    """A loopback TLS server; yields (port, [(alpn, error) per connection])."""
    listener = socket.create_server(("127.0.0.1", 0))
    seen: list[tuple[str | None, str | None]] = []

    def serve() -> None:
        while True:
            try:
                conn, _ = listener.accept()
            except OSError:
                return
            conn.settimeout(5)
            try:
                with context.wrap_socket(conn, server_side=True) as tls:
                    seen.append((tls.selected_alpn_protocol(), None))
                    tls.sendall(b"hello")
            except (ssl.SSLError, OSError) as e:
                seen.append((None, type(e).__name__))

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        yield listener.getsockname()[1], seen
    finally:
        listener.shutdown(socket.SHUT_RDWR)  # wakes the accept() (close() alone does not)
        listener.close()
        thread.join(5)


def client_context(ca: SessionCA, alpn: list[str] | None = None) -> ssl.SSLContext:
    context = ssl.create_default_context(cadata=ca.cert_pem().decode())
    if alpn is not None:
        context.set_alpn_protocols(alpn)
    return context


def handshake(port: int, context: ssl.SSLContext, server_hostname: str) -> ssl.SSLSocket:
    raw = socket.create_connection(("127.0.0.1", port), timeout=5)
    tls = context.wrap_socket(raw, server_hostname=server_hostname)
    return tls


# name: (what the client offers, what both sides end up with)
ALPN = {
    "h2 and http/1.1 -> http/1.1": (["h2", "http/1.1"], "http/1.1"),
    "http/1.1 only": (["http/1.1"], "http/1.1"),
    "h2 only -> none": (["h2"], None),
    "no ALPN at all": (None, None),
}


@pytest.mark.parametrize(("offered", "selected"), ALPN.values(), ids=ALPN.keys())
def test_handshake_with_a_minted_leaf(
    ca: SessionCA, offered: list[str] | None, selected: str | None
):
    with (
        tls_server(ca.server_context("api.example.test")) as (port, seen),
        handshake(port, client_context(ca, offered), "api.example.test") as tls,
    ):
        assert tls.selected_alpn_protocol() == selected
        assert tls.recv(5) == b"hello"
        assert tls.version() in ("TLSv1.3", "TLSv1.2")
        peer = x509.load_der_x509_certificate(tls.getpeercert(binary_form=True))
        assert peer.issuer == ca.cert.subject
    assert seen == [(selected, None)]
    assert ALPN_PROTOCOLS == ("http/1.1",)


def test_handshake_by_ip_address(ca: SessionCA):
    with (
        tls_server(ca.server_context("127.0.0.1")) as (port, _),
        handshake(port, client_context(ca), "127.0.0.1") as tls,
    ):
        assert tls.recv(5) == b"hello"


# name: (how the client connects, the exception, its text)
REFUSED: dict[str, tuple[Callable[[SessionCA], tuple[ssl.SSLContext, str]], str]] = {
    "leaf for another host": (
        lambda ca: (client_context(ca), "other.test"),
        "Hostname mismatch, certificate is not valid for 'other.test'.",
    ),
    "client does not trust the session CA": (
        lambda ca: (ssl.create_default_context(), "api.example.test"),
        "unable to get local issuer certificate",
    ),
    "another session's CA": (
        lambda ca: (client_context(SessionCA.generate()), "api.example.test"),
        "unable to get local issuer certificate",
    ),
}


@pytest.mark.parametrize(("connect", "message"), REFUSED.values(), ids=REFUSED.keys())
def test_clients_refuse_what_they_should(
    ca: SessionCA, connect: Callable[[SessionCA], tuple[ssl.SSLContext, str]], message: str
):
    context, name = connect(ca)
    with tls_server(ca.server_context("api.example.test")) as (port, seen):
        with pytest.raises(ssl.SSLCertVerificationError) as e:
            handshake(port, context, name)
        assert e.value.verify_message == message
    assert seen[0][1] is not None  # the server saw the handshake fail


@pytest.mark.filterwarnings("ignore:ssl.TLSVersion.TLSv1.* is deprecated")
def test_tls_below_1_2_is_refused(ca: SessionCA):
    context = client_context(ca)
    context.minimum_version = ssl.TLSVersion.TLSv1
    context.maximum_version = ssl.TLSVersion.TLSv1_1
    # SECLEVEL 0: the client's OpenSSL would refuse TLS 1.1 itself otherwise, and the
    # test would pass without the server's minimum (with it lowered, this handshake works).
    context.set_ciphers("DEFAULT:@SECLEVEL=0")
    with tls_server(ca.server_context("a.test")) as (port, _), pytest.raises(ssl.SSLError) as e:
        handshake(port, context, "a.test")
    assert e.value.reason == "TLSV1_ALERT_PROTOCOL_VERSION"


# ---- costs -----------------------------------------------------------------------------


def test_minting_and_cached_lookups_are_cheap():
    """Generous bounds that still catch a regression (e.g. RSA-4096 keys: ~0.5 s each)."""
    ca = SessionCA.generate()
    started = time.perf_counter()
    for i in range(50):
        ca.server_context(f"m{i}.test")
    per_miss = (time.perf_counter() - started) / 50
    started = time.perf_counter()
    for i in range(5000):
        ca.server_context(f"m{i % 50}.test")
    per_hit = (time.perf_counter() - started) / 5000
    assert per_miss < 0.025, f"minting a leaf + context took {per_miss * 1000:.1f} ms"
    assert per_hit < 0.0005, f"a cached context took {per_hit * 1e6:.0f} us"


# ---- ServerTLS: terminating a connection whose ClientHello was already read --------------


def serve_sans_io(listener: socket.socket, context: ssl.SSLContext, result: dict) -> None:
    """The gateway's part: read the ClientHello first (as sniffing does), then ServerTLS."""
    conn, _ = listener.accept()
    conn.settimeout(5)
    with conn:
        first = conn.recv(65536)  # consumed, like the gateway's peek for SNI
        result["first"] = first[:1]
        tls = tlsca.ServerTLS(context, first)
        try:
            while not tls.handshake():
                conn.sendall(tls.outgoing())
                tls.receive(conn.recv(65536))
        except ssl.SSLError as e:
            result["error"] = e.reason
            return
        except OSError:  # the client closed before its alert was read
            result["error"] = "closed"
            return
        conn.sendall(tls.outgoing())
        result["alpn"] = tls.alpn
        request = b""
        while b"\r\n\r\n" not in request:
            tls.receive(conn.recv(65536))
            request += tls.read()
        result["request"] = request.split(b"\r\n", 1)[0]
        tls.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
        tls.close()
        conn.sendall(tls.outgoing())


def test_server_tls_terminates_after_the_client_hello_was_read(ca: SessionCA):
    listener = socket.create_server(("127.0.0.1", 0))
    result: dict = {}
    thread = threading.Thread(
        target=serve_sans_io, args=(listener, ca.server_context("a.test"), result)
    )
    thread.start()
    port = listener.getsockname()[1]
    with handshake(port, client_context(ca, ["h2", "http/1.1"]), "a.test") as tls:
        assert tls.selected_alpn_protocol() == "http/1.1"
        tls.sendall(b"GET /inspected HTTP/1.1\r\nHost: a.test\r\n\r\n")
        response = b""
        while chunk := tls.recv(4096):
            response += chunk
    thread.join(5)
    listener.close()
    assert result == {"first": b"\x16", "alpn": "http/1.1", "request": b"GET /inspected HTTP/1.1"}
    assert response.endswith(b"\r\n\r\nok")


def test_server_tls_reports_a_refused_certificate(ca: SessionCA):
    listener = socket.create_server(("127.0.0.1", 0))
    result: dict = {}
    thread = threading.Thread(
        target=serve_sans_io, args=(listener, ca.server_context("a.test"), result)
    )
    thread.start()
    with pytest.raises(ssl.SSLCertVerificationError):
        handshake(listener.getsockname()[1], client_context(SessionCA.generate()), "a.test")
    thread.join(5)
    listener.close()
    # The client's alert is read when it arrives before the close, which is the usual case.
    assert result["error"] in ("TLSV1_ALERT_UNKNOWN_CA", "closed")


def test_server_tls_sees_the_stream_end():
    ca = SessionCA.generate()
    tls = tlsca.ServerTLS(ca.server_context("a.test"))
    tls.receive(b"")
    with pytest.raises(ssl.SSLError):
        tls.handshake()
