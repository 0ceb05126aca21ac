"""What the sandbox trusts: the system roots plus the session CA, in every form tools read.

Under TLS inspection the sandbox's clients see leaf certificates signed by the session CA
(`corridor.gateway.tlsca`). Hosts that are not inspected stay end-to-end TLS, verified by
the same clients against the same roots, so one bundle holds both: the host's system roots,
any `--upstream-ca` certificates (a private server reached end to end needs them in the
sandbox too), and the session CA. Only public certificates are written; no key ever is.

`write_trust` writes, into one directory that the session binds read-only into the
sandbox:
- `ca-bundle.pem`: every certificate, PEM, one after another;
- `certs/`: the same certificates one per file, named like `c_rehash` / `openssl rehash`
  do (`<subject hash>.<n>`), for OpenSSL's hashed-directory lookup (`SSL_CERT_DIR`). They
  are regular files, not links: the directory is bind-mounted elsewhere in the sandbox,
  and OpenSSL opens `<hash>.<n>` by name whatever it is;
- `truststore.p12`: a PKCS#12 trust store (certificates only) for Java;
- `wgetrc`: `ca_certificate = <bundle>` for GNU wget, which reads no trust variable.

`TrustFiles.env` is the set of variables that point the common tools at them
(`TRUST_VARIABLES` says which tool reads which). Tools that carry their own CA file and
pass it explicitly (e.g. an SDK calling `verify=its_own_bundle.pem`) are out of reach of
any variable; they fail closed (a certificate error), never open.
"""

from __future__ import annotations

import hashlib
import os
import re
import ssl
import warnings
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.serialization import pkcs12
from cryptography.utils import CryptographyDeprecationWarning

BUNDLE_NAME = "ca-bundle.pem"
CERT_DIR_NAME = "certs"
JAVA_TRUSTSTORE_NAME = "truststore.p12"
WGETRC_NAME = "wgetrc"

# What each trust variable points at.
BUNDLE, CERT_DIR, JAVA_OPTIONS, WGET_RC = "bundle", "cert-dir", "java-options", "wgetrc"

# (variable, what it points at, who reads it). Every variable here *replaces* the reader's
# default roots (except NODE_EXTRA_CA_CERTS and DENO_CERT, which add), which is why the
# bundle carries the system roots too.
TRUST_VARIABLES: tuple[tuple[str, str, str], ...] = (
    ("SSL_CERT_FILE", BUNDLE, "OpenSSL's default: Python ssl/httpx/aiohttp/truststore, "
     "Ruby, PHP/composer, Go, rustls-native-certs, uv, .NET, OpenSSL-built curl"),
    ("SSL_CERT_DIR", CERT_DIR, "OpenSSL hashed directory (with SSL_CERT_FILE), Go, uv"),
    ("REQUESTS_CA_BUNDLE", BUNDLE, "Python requests (else certifi): pip, poetry, Azure CLI"),
    ("CURL_CA_BUNDLE", BUNDLE, "curl command line; requests also falls back to it"),
    ("NODE_EXTRA_CA_CERTS", BUNDLE, "Node.js and what runs on it (npm, yarn, pnpm), Bun, Deno"),
    ("NPM_CONFIG_CAFILE", BUNDLE, "npm / pnpm / yarn 1 'cafile' (replaces Node's roots)"),
    ("PIP_CERT", BUNDLE, "pip --cert"),
    ("GIT_SSL_CAINFO", BUNDLE, "git over HTTPS (http.sslCAInfo; GnuTLS or OpenSSL builds)"),
    ("CARGO_HTTP_CAINFO", BUNDLE, "cargo http.cainfo"),
    ("AWS_CA_BUNDLE", BUNDLE, "AWS CLI and SDKs (botocore)"),
    ("DENO_CERT", BUNDLE, "Deno (added to its store)"),
    ("HEX_CACERTS_PATH", BUNDLE, "Elixir Hex / mix (ships its own roots otherwise)"),
    ("BUNDLE_SSL_CA_CERT", BUNDLE, "Ruby bundler"),
    ("COMPOSER_CAFILE", BUNDLE, "PHP composer"),
    ("CONDA_SSL_VERIFY", BUNDLE, "conda (ssl_verify set to a CA file)"),
    ("GRPC_DEFAULT_SSL_ROOTS_FILE_PATH", BUNDLE, "gRPC core (Python, C++, Ruby, PHP)"),
    ("CLOUDSDK_CORE_CUSTOM_CA_CERTS_FILE", BUNDLE, "Google Cloud SDK (gcloud)"),
    ("NIX_SSL_CERT_FILE", BUNDLE, "Nix and Nix-built tools"),
    ("PERL_LWP_SSL_CA_FILE", BUNDLE, "Perl LWP"),
    ("JULIA_SSL_CA_ROOTS_PATH", BUNDLE, "Julia Pkg"),
    ("JAVA_TOOL_OPTIONS", JAVA_OPTIONS, "every JVM (java, maven, gradle): javax.net.ssl"),
    ("WGETRC", WGET_RC, "GNU wget (GnuTLS builds read no trust variable)"),
)  # fmt: skip
# Yarn 2+ is reached through NODE_EXTRA_CA_CERTS: its own YARN_*CA_FILE_PATH settings are
# named differently in yarn 2/3 and 4, and each version rejects the other's name as an
# unknown setting, so setting either would break one of them.

# Where distributions keep the system bundle, when OpenSSL's default path does not exist.
SYSTEM_BUNDLE_CANDIDATES = (
    "/etc/ssl/certs/ca-certificates.crt",  # Debian, Ubuntu, Gentoo, Arch
    "/etc/pki/tls/certs/ca-bundle.crt",  # Fedora, RHEL
    "/etc/pki/ca-trust/extracted/pem/tls-ca-bundle.pem",  # RHEL 7+, CentOS
    "/etc/ssl/ca-bundle.pem",  # openSUSE
    "/etc/ssl/cert.pem",  # Alpine, macOS
)
_PEM_BLOCK = re.compile(
    rb"-----BEGIN CERTIFICATE-----\r?\n.+?\r?\n-----END CERTIFICATE-----", re.DOTALL
)


@dataclass(frozen=True, slots=True)
class TrustFiles:
    """The trust files of one session: host paths, and the variables for the sandbox."""

    directory: Path  # on the host
    bundle: Path
    cert_dir: Path
    java_truststore: Path
    wgetrc: Path
    sandbox_root: str  # where `directory` appears inside the sandbox
    certificates: int  # how many distinct certificates the bundle holds
    skipped: int  # entries left out of certs/ and the Java store (see `_collect`)

    @property
    def env(self) -> dict[str, str]:
        """The trust variables, with paths as the sandbox sees them."""
        targets = {
            BUNDLE: f"{self.sandbox_root}/{BUNDLE_NAME}",
            CERT_DIR: f"{self.sandbox_root}/{CERT_DIR_NAME}",
            JAVA_OPTIONS: (
                f"-Djavax.net.ssl.trustStore={self.sandbox_root}/{JAVA_TRUSTSTORE_NAME} "
                "-Djavax.net.ssl.trustStoreType=PKCS12"
            ),
            WGET_RC: f"{self.sandbox_root}/{WGETRC_NAME}",
        }
        return {name: targets[kind] for name, kind, _who in TRUST_VARIABLES}


def system_bundle() -> Path | None:
    """The host's system CA bundle: OpenSSL's default file, else a known location."""
    paths = ssl.get_default_verify_paths()
    for candidate in (paths.cafile, paths.openssl_cafile, *SYSTEM_BUNDLE_CANDIDATES):
        if candidate and os.path.isfile(candidate):
            return Path(candidate)
    return None


def write_trust(
    directory: Path,
    session_ca_pem: bytes,
    *,
    sandbox_root: str | None = None,
    extra_ca_pems: Sequence[bytes] = (),
    system_roots: Path | None = None,
    use_system_roots: bool = True,
) -> TrustFiles:
    """Write the trust files into `directory` (created, 0755: certificates are public).

    `sandbox_root` is the path where the session binds `directory` inside the sandbox
    (default: the same path). `extra_ca_pems` are the `--upstream-ca` files' contents.
    `system_roots` overrides the system bundle found by `system_bundle()`.
    Raises ValueError if `session_ca_pem` holds no certificate or `sandbox_root` contains
    whitespace (JAVA_TOOL_OPTIONS and wgetrc cannot quote it).
    """
    root = sandbox_root if sandbox_root is not None else str(directory)
    if re.search(r"\s", root):
        raise ValueError(f"trust directory path {root!r} contains whitespace")
    ours = _pem_blocks(session_ca_pem)
    if not ours:
        raise ValueError("the session CA PEM holds no certificate")
    blocks = list(ours)
    for pem in extra_ca_pems:
        blocks += _pem_blocks(pem)
    system = system_roots if system_roots is not None else system_bundle()
    if use_system_roots and system is not None:
        blocks += _pem_blocks(system.read_bytes())
    pems, certs, skipped = _collect(blocks)

    directory.mkdir(mode=0o755, parents=True, exist_ok=True)
    cert_dir = directory / CERT_DIR_NAME
    cert_dir.mkdir(mode=0o755, exist_ok=True)
    _write(directory / BUNDLE_NAME, b"".join(pems))
    for name, cert in zip(hashed_names(certs), certs, strict=True):
        _write(cert_dir / name, cert.public_bytes(serialization.Encoding.PEM))
    truststore = pkcs12.serialize_java_truststore(
        [pkcs12.PKCS12Certificate(cert, _alias(i, cert)) for i, cert in enumerate(certs)],
        serialization.NoEncryption(),
    )
    _write(directory / JAVA_TRUSTSTORE_NAME, truststore)
    _write(directory / WGETRC_NAME, f"ca_certificate = {root}/{BUNDLE_NAME}\n".encode())
    return TrustFiles(
        directory=directory,
        bundle=directory / BUNDLE_NAME,
        cert_dir=cert_dir,
        java_truststore=directory / JAVA_TRUSTSTORE_NAME,
        wgetrc=directory / WGETRC_NAME,
        sandbox_root=root,
        certificates=len(pems),
        skipped=skipped,
    )


def hashed_names(certs: Iterable[x509.Certificate]) -> list[str]:
    """`<subject hash>.<n>` for each certificate, n counting up on hash collisions."""
    seen: dict[str, int] = {}
    names = []
    for cert in certs:
        digest = subject_hash(cert)
        n = seen.get(digest, 0)
        seen[digest] = n + 1
        names.append(f"{digest}.{n}")
    return names


# ---- OpenSSL's subject name hash (X509_NAME_hash_ex), as c_rehash names files ----------

# ASN.1 string types OpenSSL canonicalises (ASN1_MASK_CANON in crypto/x509/x_name.c):
# tag -> how the content bytes decode.
_CANON_STRINGS = {
    0x0C: "utf-8",  # UTF8String
    0x13: "latin-1",  # PrintableString
    0x14: "latin-1",  # T61String (OpenSSL reads it as Latin-1 too)
    0x16: "latin-1",  # IA5String
    0x1A: "latin-1",  # VisibleString
    0x1C: "utf-32-be",  # UniversalString
    0x1E: "utf-16-be",  # BMPString
}
_ASCII_SPACE = b" \t\n\v\f\r"
_UTF8_STRING, _SEQUENCE, _SET = 0x0C, 0x30, 0x31


def subject_hash(cert: x509.Certificate) -> str:
    """OpenSSL's hash of the subject name (`openssl x509 -subject_hash`), 8 hex digits.

    SHA-1 over the canonical encoding of the name (each RDN's string values converted to
    UTF-8, ASCII lower-cased, leading/trailing whitespace dropped, inner runs collapsed to
    one space; RDN sets concatenated without the outer SEQUENCE); the first four bytes read
    little-endian.
    """
    der = cert.subject.public_bytes()
    tag, name, _ = _tlv(der, 0)
    if tag != _SEQUENCE:
        raise ValueError("a Name is a SEQUENCE")
    canon = bytearray()
    for set_tag, rdn in _items(name):
        if set_tag != _SET:
            raise ValueError("an RDN is a SET")
        entries = []
        for seq_tag, entry in _items(rdn):
            if seq_tag != _SEQUENCE:
                raise ValueError("an attribute is a SEQUENCE")
            (oid_tag, oid), (value_tag, value) = list(_items(entry))
            entries.append(
                _encode(_SEQUENCE, _encode(oid_tag, oid) + _canon_value(value_tag, value))
            )
        canon += _encode(_SET, b"".join(sorted(entries)))  # DER sorts a SET OF
    md = hashlib.sha1(bytes(canon), usedforsecurity=False).digest()
    return f"{int.from_bytes(md[:4], 'little'):08x}"


def _canon_value(tag: int, content: bytes) -> bytes:
    encoding = _CANON_STRINGS.get(tag)
    if encoding is None:
        return _encode(tag, content)  # not a string type: kept as it is
    text = content.decode(encoding, errors="replace").encode("utf-8")
    text = text.strip(_ASCII_SPACE)
    out = bytearray()
    i = 0
    while i < len(text):
        byte = text[i]
        if byte in _ASCII_SPACE:
            out.append(0x20)
            while i < len(text) and text[i] in _ASCII_SPACE:
                i += 1
            continue
        out.append(byte + 32 if 0x41 <= byte <= 0x5A else byte)
        i += 1
    return _encode(_UTF8_STRING, bytes(out))


def _tlv(data: bytes, pos: int) -> tuple[int, bytes, int]:
    """(tag, content, next position) of the DER element at `pos` (single-byte tags)."""
    tag = data[pos]
    length = data[pos + 1]
    pos += 2
    if length & 0x80:
        count = length & 0x7F
        length = int.from_bytes(data[pos : pos + count], "big")
        pos += count
    return tag, data[pos : pos + length], pos + length


def _items(data: bytes) -> Iterable[tuple[int, bytes]]:
    pos = 0
    while pos < len(data):
        tag, content, pos = _tlv(data, pos)
        yield tag, content


def _encode(tag: int, content: bytes) -> bytes:
    n = len(content)
    if n < 0x80:
        return bytes([tag, n]) + content
    size = n.to_bytes((n.bit_length() + 7) // 8, "big")
    return bytes([tag, 0x80 | len(size)]) + size + content


# ---- helpers -----------------------------------------------------------------------------


def _pem_blocks(data: bytes) -> list[bytes]:
    return _PEM_BLOCK.findall(data)


def _collect(
    blocks: Iterable[bytes],
) -> tuple[list[bytes], list[x509.Certificate], int]:
    """(PEM texts for the bundle, parsed certificates, how many were left out of the latter).

    Duplicates are dropped. The bundle keeps each block as the system wrote it. A block
    `cryptography` cannot parse (some old system roots break RFC 5280 in ways OpenSSL
    forgives) stays in the bundle if OpenSSL loads it, since OpenSSL-based clients can
    use it; a block OpenSSL refuses too is left out entirely, because one bad block can
    make a client reject the whole file.
    """
    pems: list[bytes] = []
    certs: list[x509.Certificate] = []
    seen: set[bytes] = set()
    skipped = 0
    for block in blocks:
        identity = b"".join(block.split())  # the same certificate, however it is wrapped
        if identity in seen:
            continue
        seen.add(identity)
        try:
            with warnings.catch_warnings():
                # e.g. "serial number which wasn't positive": the system's own roots.
                warnings.simplefilter("ignore", CryptographyDeprecationWarning)
                cert = x509.load_pem_x509_certificate(block)
        except ValueError:
            skipped += 1
            if _openssl_loads(block):
                pems.append(block + b"\n")
            continue
        pems.append(block + b"\n")
        certs.append(cert)
    return pems, certs, skipped


def _openssl_loads(block: bytes) -> bool:
    try:
        ssl.create_default_context(cadata=block.decode("ascii"))
    except (ssl.SSLError, ValueError, UnicodeDecodeError):
        return False
    return True


def _alias(index: int, cert: x509.Certificate) -> bytes:
    # Java needs a unique alias per entry; the subject hash keeps it readable in keytool.
    return f"{index:04d}-{subject_hash(cert)}".encode()


def _write(path: Path, data: bytes) -> None:
    # Replace atomically: a sandbox already reading the old file never sees half of one.
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_bytes(data)
    tmp.chmod(0o644)
    tmp.replace(path)
