"""The lab CA and the world's server certificate, made with `cryptography`.

Certificates follow the strict profile OpenSSL applies with X509_V_FLAG_X509_STRICT
(critical basicConstraints and keyUsage on the CA, key identifiers, a SAN on the leaf), so
any client corridor's gateway may use accepts them.
"""

from __future__ import annotations

import datetime
import ipaddress
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

# P-256 keys: generated in about a millisecond, accepted everywhere.
_CURVE = ec.SECP256R1()
# Backdated so a client whose clock runs a little behind still accepts them.
_BACKDATE = datetime.timedelta(hours=1)
CA_VALID_DAYS = 30
LEAF_VALID_DAYS = 30


@dataclass(frozen=True)
class LabPKI:
    """Files the lab writes: the CA certificate tests trust, and the world's cert and key."""

    ca_pem: Path
    cert_pem: Path
    key_pem: Path


class LabCA:
    """A throwaway certificate authority that issues server certificates for `.test` names."""

    def __init__(self, cert: x509.Certificate, key: ec.EllipticCurvePrivateKey) -> None:
        self.cert = cert
        self.key = key

    @classmethod
    def create(cls, common_name: str = "corridor lab CA") -> LabCA:
        """A new self-signed CA, valid from an hour ago for CA_VALID_DAYS."""
        key = ec.generate_private_key(_CURVE)
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
        now = _now()
        cert = (
            x509.CertificateBuilder()
            .subject_name(name)
            .issuer_name(name)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - _BACKDATE)
            .not_valid_after(now + datetime.timedelta(days=CA_VALID_DAYS))
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(_key_usage(cert_sign=True), critical=True)
            .add_extension(
                x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False
            )
            .sign(key, hashes.SHA256())
        )
        return cls(cert, key)

    def cert_pem(self) -> bytes:
        return self.cert.public_bytes(serialization.Encoding.PEM)

    def issue(
        self,
        dns_names: Iterable[str],
        *,
        ip_addresses: Iterable[str] = (),
        valid_days: int = LEAF_VALID_DAYS,
    ) -> tuple[bytes, bytes]:
        """A server certificate for the names (and addresses): (cert PEM, key PEM)."""
        names = list(dns_names)
        if not names:
            raise ValueError("a server certificate needs at least one name")
        key = ec.generate_private_key(_CURVE)
        sans: list[x509.GeneralName] = [x509.DNSName(n) for n in names]
        sans += [x509.IPAddress(ipaddress.ip_address(a)) for a in ip_addresses]
        now = _now()
        cert = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, names[0])]))
            .issuer_name(self.cert.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - _BACKDATE)
            .not_valid_after(now + datetime.timedelta(days=valid_days))
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(_key_usage(cert_sign=False), critical=True)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
            .add_extension(x509.SubjectAlternativeName(sans), critical=False)
            .add_extension(
                x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False
            )
            .add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_public_key(self.key.public_key()),
                critical=False,
            )
            .sign(self.key, hashes.SHA256())
        )
        key_pem = key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
        return cert.public_bytes(serialization.Encoding.PEM), key_pem


def write_lab_pki(directory: Path, dns_names: Iterable[str]) -> LabPKI:
    """Create a CA and one server certificate for all names; write them under `directory`.

    The CA key is not written: nothing in the lab issues certificates after startup.
    """
    ca = LabCA.create()
    cert_pem, key_pem = ca.issue(sorted(dns_names))
    pki = LabPKI(
        directory / "lab-ca.pem", directory / "world-cert.pem", directory / "world-key.pem"
    )
    pki.ca_pem.write_bytes(ca.cert_pem())
    pki.cert_pem.write_bytes(cert_pem)
    pki.key_pem.touch(mode=0o600)
    pki.key_pem.write_bytes(key_pem)
    return pki


def _key_usage(*, cert_sign: bool) -> x509.KeyUsage:
    return x509.KeyUsage(
        digital_signature=True,
        content_commitment=False,
        key_encipherment=False,
        data_encipherment=False,
        key_agreement=False,
        key_cert_sign=cert_sign,
        crl_sign=cert_sign,
        encipher_only=False,
        decipher_only=False,
    )


def _now() -> datetime.datetime:
    return datetime.datetime.now(datetime.UTC)
