"""The gateway's client side of TLS: what it trusts upstream and the reasons it gives."""

from __future__ import annotations

import asyncio
import datetime
import ipaddress
import socket
import ssl
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from corridor.errors import UserError
from corridor.gateway.upstream_tls import tls_failure_reason, upstream_context

HOST = "upstream.test"
HOUR = datetime.timedelta(hours=1)


def now() -> datetime.datetime:
    return datetime.datetime.now(datetime.UTC)


@dataclass
class Issuer:
    cert: x509.Certificate
    key: ec.EllipticCurvePrivateKey

    def pem(self) -> bytes:
        return self.cert.public_bytes(serialization.Encoding.PEM)


def _usage(ca: bool) -> x509.KeyUsage:
    return x509.KeyUsage(True, False, False, False, False, ca, ca, False, False)


def make_ca(name: str = "private CA", *, strict: bool = True) -> Issuer:
    """A CA; `strict=False` leaves basicConstraints non-critical (RFC 5280 says critical)."""
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now() - HOUR)
        .not_valid_after(now() + 24 * HOUR)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=strict)
        .add_extension(_usage(True), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), False)
        .sign(key, hashes.SHA256())
    )
    return Issuer(cert, key)


def make_leaf(
    issuer: Issuer | None,
    names: tuple[str, ...] = (HOST,),
    *,
    not_before: datetime.timedelta = -HOUR,
    not_after: datetime.timedelta = HOUR,
) -> tuple[bytes, bytes]:
    """(cert PEM, key PEM) for `names`, signed by `issuer` (None: self-signed)."""
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, names[0])])
    sans: list[x509.GeneralName] = []
    for n in names:
        try:
            sans.append(x509.IPAddress(ipaddress.ip_address(n)))
        except ValueError:
            sans.append(x509.DNSName(n))
    signer = issuer.key if issuer else key
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer.cert.subject if issuer else subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now() + not_before)
        .not_valid_after(now() + not_after)
        .add_extension(x509.SubjectAlternativeName(sans), critical=False)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), False)
    )
    if issuer:
        builder = builder.add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(issuer.key.public_key()), False
        )
    cert = builder.sign(signer, hashes.SHA256())
    key_pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    return cert.public_bytes(serialization.Encoding.PEM), key_pem


@contextmanager
def tls_server(tmp_path: Path, chain: tuple[bytes, bytes], alpn=("http/1.1",)) -> Iterator[int]:
    """A loopback TLS server presenting `chain`; yields its port."""
    pem = tmp_path / "server.pem"
    pem.write_bytes(chain[0] + chain[1])
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(pem)
    context.set_alpn_protocols(list(alpn))
    listener = socket.create_server(("127.0.0.1", 0))

    def serve() -> None:
        while True:
            try:
                conn, _ = listener.accept()
            except OSError:
                return
            conn.settimeout(5)
            try:
                with context.wrap_socket(conn, server_side=True) as tls:
                    tls.sendall(b"hi")
            except (ssl.SSLError, OSError):
                pass

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        yield listener.getsockname()[1]
    finally:
        listener.shutdown(socket.SHUT_RDWR)
        listener.close()
        thread.join(5)


async def _connect(port: int, context: ssl.SSLContext, name: str) -> str | None:
    """Connect the way the gateway does (asyncio); the negotiated ALPN, or raise."""
    reader, writer = await asyncio.wait_for(
        asyncio.open_connection("127.0.0.1", port, ssl=context, server_hostname=name), 5
    )
    try:
        assert await reader.readexactly(2) == b"hi"
        return writer.get_extra_info("ssl_object").selected_alpn_protocol()
    finally:
        writer.close()


def connect(port: int, context: ssl.SSLContext, name: str = HOST) -> str | None:
    return asyncio.run(_connect(port, context, name))


def write_ca(tmp_path: Path, *issuers: Issuer, name: str = "upstream-ca.pem") -> Path:
    path = tmp_path / name
    path.write_bytes(b"".join(i.pem() for i in issuers))
    return path


# ---- accepted ----------------------------------------------------------------------------


def test_server_signed_by_an_upstream_ca_is_accepted(tmp_path: Path):
    private = make_ca()
    with tls_server(tmp_path, make_leaf(private)) as port:
        assert connect(port, upstream_context([write_ca(tmp_path, private)])) == "http/1.1"


def test_several_upstream_ca_files_and_bundles(tmp_path: Path):
    first, second, third = make_ca("one"), make_ca("two"), make_ca("three")
    files = [write_ca(tmp_path, first, name="a.pem"), write_ca(tmp_path, second, third)]
    context = upstream_context(files)
    for issuer in (first, second, third):
        with tls_server(tmp_path, make_leaf(issuer)) as port:
            connect(port, context)


def test_ip_address_upstream(tmp_path: Path):
    private = make_ca()
    with tls_server(tmp_path, make_leaf(private, ("127.0.0.1",))) as port:
        connect(port, upstream_context([write_ca(tmp_path, private)]), "127.0.0.1")


def test_server_without_alpn_is_fine(tmp_path: Path):
    private = make_ca()
    with tls_server(tmp_path, make_leaf(private), alpn=()) as port:
        assert connect(port, upstream_context([write_ca(tmp_path, private)])) is None


def test_context_is_a_strict_verifying_client():
    context = upstream_context()
    assert context.verify_mode is ssl.CERT_REQUIRED
    assert context.check_hostname
    assert context.minimum_version is ssl.TLSVersion.TLSv1_2
    assert context.verify_flags & ssl.VERIFY_X509_STRICT
    # The system store is loaded (Debian: a CA file with ~150 roots, or a hashed directory).
    stats = context.cert_store_stats()
    assert stats["x509_ca"] > 0 or ssl.get_default_verify_paths().capath


# ---- refused, with the reason ------------------------------------------------------------


def _self_signed(_: Issuer) -> tuple[bytes, bytes]:
    return make_leaf(None)


# name: (how the server's certificate is made, the reason)
# fmt: off
REFUSED = {
    "self-signed": (
        _self_signed,
        f"upstream certificate for {HOST} rejected: self-signed certificate"),
    "unknown CA": (
        lambda _: make_leaf(make_ca("someone else")),
        f"upstream certificate for {HOST} rejected: issued by an unknown certificate authority"),
    "other host": (
        lambda ca: make_leaf(ca, ("other.test",)),
        f"upstream certificate for {HOST} rejected: the certificate does not name this host"),
    "expired": (
        lambda ca: make_leaf(ca, not_before=-3 * HOUR, not_after=-HOUR),
        f"upstream certificate for {HOST} rejected: the certificate has expired"),
    "not yet valid": (
        lambda ca: make_leaf(ca, not_before=HOUR, not_after=3 * HOUR),
        f"upstream certificate for {HOST} rejected: the certificate is not valid yet"),
}
# fmt: on


@pytest.mark.parametrize(("leaf", "reason"), REFUSED.values(), ids=REFUSED.keys())
def test_bad_upstream_certificates_are_refused_with_a_reason(tmp_path: Path, leaf, reason: str):
    trusted = make_ca()
    context = upstream_context([write_ca(tmp_path, trusted)])
    with (
        tls_server(tmp_path, leaf(trusted)) as port,
        pytest.raises(ssl.SSLCertVerificationError) as e,
    ):
        connect(port, context)
    assert tls_failure_reason(e.value, HOST) == reason


def test_without_the_upstream_ca_a_private_server_is_refused(tmp_path: Path):
    private = make_ca()
    with (
        tls_server(tmp_path, make_leaf(private)) as port,
        pytest.raises(ssl.SSLCertVerificationError) as e,
    ):
        connect(port, upstream_context())
    assert tls_failure_reason(e.value, HOST) == (
        f"upstream certificate for {HOST} rejected: issued by an unknown certificate authority"
    )


def test_a_ca_breaking_the_strict_profile_is_refused(tmp_path: Path):
    lax = make_ca(strict=False)
    with (
        tls_server(tmp_path, make_leaf(lax)) as port,
        pytest.raises(ssl.SSLCertVerificationError) as e,
    ):
        connect(port, upstream_context([write_ca(tmp_path, lax)]))
    assert tls_failure_reason(e.value, HOST) == (
        f"upstream certificate for {HOST} rejected: "
        "Basic Constraints of CA cert not marked critical"
    )


def test_server_speaking_only_an_old_tls_version(tmp_path: Path):
    private = make_ca()
    pem = tmp_path / "old.pem"
    cert, key = make_leaf(private)
    pem.write_bytes(cert + key)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(pem)
    with pytest.warns(DeprecationWarning):
        context.maximum_version = ssl.TLSVersion.TLSv1_1
        context.minimum_version = ssl.TLSVersion.TLSv1
    context.set_ciphers("DEFAULT:@SECLEVEL=0")
    listener = socket.create_server(("127.0.0.1", 0))

    def serve() -> None:
        conn, _ = listener.accept()
        try:
            context.wrap_socket(conn, server_side=True).close()
        except (ssl.SSLError, OSError):
            conn.close()

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    with pytest.raises(ssl.SSLError) as e:
        connect(listener.getsockname()[1], upstream_context([write_ca(tmp_path, private)]))
    thread.join(5)
    listener.close()
    assert tls_failure_reason(e.value, HOST).startswith(
        f"TLS handshake with upstream {HOST} failed: "
    )
    assert "VERSION" in tls_failure_reason(e.value, HOST).upper()


# name: (error, reason)
OTHER_FAILURES = {
    "reset": (ConnectionResetError(104, "reset"),
              f"TLS handshake with upstream {HOST} failed: connection closed by the server"),
    "eof": (ssl.SSLEOFError(8, "EOF occurred"),
            f"TLS handshake with upstream {HOST} failed: connection closed by the server"),
    "timeout": (TimeoutError(), f"TLS handshake with upstream {HOST} failed: timed out"),
    "other": (RuntimeError("x"), f"TLS handshake with upstream {HOST} failed: RuntimeError"),
}  # fmt: skip


@pytest.mark.parametrize(("error", "reason"), OTHER_FAILURES.values(), ids=OTHER_FAILURES.keys())
def test_other_failure_reasons(error: BaseException, reason: str):
    assert tls_failure_reason(error, HOST) == reason


# ---- --upstream-ca mistakes --------------------------------------------------------------


def test_missing_upstream_ca_file(tmp_path: Path):
    with pytest.raises(UserError) as e:
        upstream_context([tmp_path / "nope.pem"])
    assert e.value.message == f"--upstream-ca {tmp_path / 'nope.pem'}: No such file or directory"


def test_upstream_ca_without_a_certificate(tmp_path: Path):
    path = tmp_path / "empty.pem"
    path.write_text("just text\n")
    with pytest.raises(UserError) as e:
        upstream_context([path])
    assert e.value.message == f"--upstream-ca {path}: no PEM certificate in the file"
    assert e.value.hint == "give a file with one or more '-----BEGIN CERTIFICATE-----' blocks"


def test_upstream_ca_with_a_broken_certificate(tmp_path: Path):
    path = tmp_path / "broken.pem"
    path.write_text("-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n")
    with pytest.raises(UserError) as e:
        upstream_context([path])
    assert e.value.message.startswith(f"--upstream-ca {path}: not a usable certificate (")


# ---- the gateway builds its context when first needed ------------------------------------


def _gateway(upstream_cas: tuple[Path, ...] = ()):
    from corridor.gateway.server import Gateway
    from corridor.policy import Policy

    return Gateway(policy=Policy(allow=[]), session="test", emit=lambda e: None,
                   upstream_cas=upstream_cas)  # fmt: skip


def test_the_gateway_loads_the_system_roots_only_on_the_first_inspected_dial():
    gw = _gateway()
    assert gw._upstream_tls is None  # nothing inspected yet: no trust store loaded
    context = gw.upstream_tls
    assert context.verify_mode == ssl.CERT_REQUIRED and context.check_hostname
    assert gw.upstream_tls is context  # built once


def test_a_broken_upstream_ca_fails_when_the_gateway_starts(tmp_path: Path):
    path = tmp_path / "broken.pem"
    path.write_text("-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n")
    with pytest.raises(UserError, match="not a usable certificate"):
        _gateway((path,))
