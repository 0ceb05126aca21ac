"""The sandbox's trust files, and real clients trusting the session CA through them."""

from __future__ import annotations

import datetime
import os
import shutil
import socket
import ssl
import stat
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import pkcs12
from cryptography.x509.name import _ASN1Type
from cryptography.x509.oid import NameOID

from corridor.gateway.tlsca import SessionCA
from corridor.sandbox import trust
from corridor.sandbox.trust import (
    BUNDLE_NAME,
    TRUST_VARIABLES,
    subject_hash,
    system_bundle,
    write_trust,
)

# Some system roots break RFC 5280 (a negative serial number): cryptography warns on them.
pytestmark = pytest.mark.filterwarnings("ignore::cryptography.utils.CryptographyDeprecationWarning")
SYSTEM_CERTS = Path("/etc/ssl/certs")
SANDBOX_ROOT = "/run/corridor/trust"


def pem_count(data: bytes) -> int:
    return data.count(b"-----BEGIN CERTIFICATE-----")


def self_signed(subject: x509.Name) -> x509.Certificate:
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.UTC)
    return (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now)
        .not_valid_after(now + datetime.timedelta(days=1))
        .sign(key, hashes.SHA256())
    )


@pytest.fixture(scope="module")
def ca() -> SessionCA:
    return SessionCA.generate("trust-test")


@pytest.fixture(scope="module")
def files(ca: SessionCA, tmp_path_factory: pytest.TempPathFactory) -> trust.TrustFiles:
    return write_trust(tmp_path_factory.mktemp("trust") / "t", ca.cert_pem())


# ---- OpenSSL's subject hash -----------------------------------------------------------


def system_hash_links() -> list[Path]:
    return sorted(p for p in SYSTEM_CERTS.glob("*.[0-9]") if len(p.name) == 10)


def test_subject_hash_matches_every_system_hash_link():
    """c_rehash named these files with OpenSSL's own hash: ours must agree for each."""
    links = system_hash_links()
    assert len(links) > 50, "ca-certificates is installed, so /etc/ssl/certs has its links"
    wrong = []
    for link in links:
        cert = x509.load_pem_x509_certificate(link.read_bytes())
        if subject_hash(cert) != link.name[:8]:
            wrong.append(link.name)
    assert wrong == []


# name: subject to hash (each exercises one canonicalisation rule)
# fmt: off
NAMES = {
    "spaces and case": x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "  Foo \t BAR  ")]),
    "BMPString": x509.Name([
        x509.NameAttribute(NameOID.ORGANIZATION_NAME, "Ünïcode  Ōrg", _ASN1Type.BMPString),
        x509.NameAttribute(NameOID.COUNTRY_NAME, "DE"),
    ]),
    "multi-valued RDN": x509.Name([x509.RelativeDistinguishedName([
        x509.NameAttribute(NameOID.COMMON_NAME, "b"),
        x509.NameAttribute(NameOID.ORGANIZATION_NAME, "A"),
    ])]),
    "IA5 e-mail and a long CN": x509.Name([
        x509.NameAttribute(NameOID.EMAIL_ADDRESS, "X@Y.test"),
        x509.NameAttribute(NameOID.COMMON_NAME, "x" * 64),
    ]),
    "empty": x509.Name([]),
}
# fmt: on


@pytest.mark.skipif(shutil.which("openssl") is None, reason="needs the openssl command")
@pytest.mark.parametrize("subject", NAMES.values(), ids=NAMES.keys())
def test_subject_hash_matches_openssl(subject: x509.Name):
    cert = self_signed(subject)
    done = subprocess.run(
        ["openssl", "x509", "-noout", "-subject_hash"],
        input=cert.public_bytes(serialization.Encoding.PEM),
        capture_output=True,
        check=True,
    )
    assert subject_hash(cert) == done.stdout.decode().strip()


def test_hash_collisions_count_up():
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "same")])
    a, b = self_signed(subject), self_signed(subject)
    digest = subject_hash(a)
    assert trust.hashed_names([a, b]) == [f"{digest}.0", f"{digest}.1"]


# ---- the files -------------------------------------------------------------------------


def test_bundle_holds_the_session_ca_first_then_the_system_roots(
    files: trust.TrustFiles, ca: SessionCA
):
    bundle = files.bundle.read_bytes()
    assert bundle.startswith(ca.cert_pem())
    system = system_bundle()
    assert system is not None
    system_certs = {
        c.fingerprint(hashes.SHA256()) for c in x509.load_pem_x509_certificates(system.read_bytes())
    }
    ours = {c.fingerprint(hashes.SHA256()) for c in x509.load_pem_x509_certificates(bundle)}
    assert ours == system_certs | {ca.cert.fingerprint(hashes.SHA256())}
    assert files.certificates == len(ours) == pem_count(bundle)
    assert b"PRIVATE KEY" not in bundle


def test_cert_dir_has_one_hashed_file_per_certificate(files: trust.TrustFiles, ca: SessionCA):
    entries = sorted(files.cert_dir.iterdir())
    assert len(entries) == files.certificates
    for entry in entries:
        cert = x509.load_pem_x509_certificate(entry.read_bytes())
        assert entry.name.startswith(subject_hash(cert) + ".")
    ours = files.cert_dir / f"{subject_hash(ca.cert)}.0"
    assert ours.read_bytes() == ca.cert_pem()


def test_java_truststore_holds_every_certificate(files: trust.TrustFiles, ca: SessionCA):
    store = pkcs12.load_pkcs12(files.java_truststore.read_bytes(), None)
    assert store.key is None and store.cert is None
    certs = [c.certificate for c in store.additional_certs]
    assert len(certs) == files.certificates
    assert certs[0] == ca.cert


def test_wgetrc_points_at_the_bundle_inside_the_sandbox(tmp_path: Path, ca: SessionCA):
    files = write_trust(tmp_path / "t", ca.cert_pem(), sandbox_root=SANDBOX_ROOT)
    assert files.wgetrc.read_text() == f"ca_certificate = {SANDBOX_ROOT}/{BUNDLE_NAME}\n"


def test_files_are_public_and_directories_listable(files: trust.TrustFiles):
    for path in [files.directory, files.cert_dir]:
        assert stat.S_IMODE(path.stat().st_mode) == 0o755
    for path in [files.bundle, files.java_truststore, files.wgetrc, *files.cert_dir.iterdir()]:
        assert stat.S_IMODE(path.stat().st_mode) == 0o644
    assert not list(files.directory.glob("*.tmp"))


def test_env_names_every_trust_variable_with_sandbox_paths(tmp_path: Path, ca: SessionCA):
    files = write_trust(tmp_path / "t", ca.cert_pem(), sandbox_root=SANDBOX_ROOT)
    env = files.env
    assert list(env) == [name for name, _, _ in TRUST_VARIABLES]
    bundle = f"{SANDBOX_ROOT}/ca-bundle.pem"
    assert env["SSL_CERT_FILE"] == env["REQUESTS_CA_BUNDLE"] == env["CURL_CA_BUNDLE"] == bundle
    assert env["NODE_EXTRA_CA_CERTS"] == env["PIP_CERT"] == env["GIT_SSL_CAINFO"] == bundle
    assert env["CARGO_HTTP_CAINFO"] == env["AWS_CA_BUNDLE"] == env["DENO_CERT"] == bundle
    assert env["HEX_CACERTS_PATH"] == env["NPM_CONFIG_CAFILE"] == bundle
    assert env["SSL_CERT_DIR"] == f"{SANDBOX_ROOT}/certs"
    assert env["WGETRC"] == f"{SANDBOX_ROOT}/wgetrc"
    assert env["JAVA_TOOL_OPTIONS"] == (
        f"-Djavax.net.ssl.trustStore={SANDBOX_ROOT}/truststore.p12 "
        "-Djavax.net.ssl.trustStoreType=PKCS12"
    )
    assert not any(name.startswith("YARN_") for name in env)  # see TRUST_VARIABLES


def test_upstream_cas_are_trusted_in_the_sandbox_too_and_duplicates_dropped(
    tmp_path: Path, ca: SessionCA
):
    private = SessionCA.generate("private").cert_pem()
    files = write_trust(
        tmp_path / "t",
        ca.cert_pem(),
        extra_ca_pems=[private, private + ca.cert_pem()],
        use_system_roots=False,
    )
    assert files.bundle.read_bytes() == ca.cert_pem() + private
    assert files.certificates == 2


def test_unparsable_system_entries_are_skipped(tmp_path: Path, ca: SessionCA):
    fake = tmp_path / "system.pem"
    broken = b"-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n"
    root = SessionCA.generate("root").cert_pem()
    fake.write_bytes(b"# comment\n" + broken + root)
    files = write_trust(tmp_path / "t", ca.cert_pem(), system_roots=fake)
    assert (files.certificates, files.skipped) == (2, 1)


def test_rewriting_replaces_the_files(tmp_path: Path, ca: SessionCA):
    write_trust(tmp_path / "t", SessionCA.generate().cert_pem(), use_system_roots=False)
    files = write_trust(tmp_path / "t", ca.cert_pem(), use_system_roots=False)
    assert files.bundle.read_bytes() == ca.cert_pem()


@pytest.mark.parametrize(
    ("pem", "root", "message"),
    [
        (b"nothing", None, "the session CA PEM holds no certificate"),
        (None, "/run/my trust", "trust directory path '/run/my trust' contains whitespace"),
    ],
)
def test_refused_inputs(tmp_path: Path, ca: SessionCA, pem, root, message):
    with pytest.raises(ValueError) as e:
        write_trust(tmp_path / "t", pem or ca.cert_pem(), sandbox_root=root)
    assert str(e.value) == message


def test_system_bundle_is_found():
    found = system_bundle()
    assert found is not None and pem_count(found.read_bytes()) > 50


# ---- real clients ----------------------------------------------------------------------


class Server:
    """A loopback HTTPS server: answers each request with 200 "ok", records what it saw."""

    def __init__(self, context: ssl.SSLContext) -> None:
        self.context = context
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.requests: list[str] = []
        self.alpn: list[str | None] = []
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.listener.accept()
            except OSError:
                return
            threading.Thread(target=self._handle, args=(conn,), daemon=True).start()

    def _handle(self, conn: socket.socket) -> None:
        conn.settimeout(10)
        try:
            with self.context.wrap_socket(conn, server_side=True) as tls:
                self.alpn.append(tls.selected_alpn_protocol())
                head = b""
                while b"\r\n\r\n" not in head:
                    chunk = tls.recv(4096)
                    if not chunk:
                        return
                    head += chunk
                self.requests.append(head.split(b"\r\n", 1)[0].decode())
                tls.sendall(
                    b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 3\r\n"
                    b"Connection: close\r\n\r\nok\n"
                )
        except (ssl.SSLError, OSError):
            pass  # the client refused our certificate: that is what negative cases test

    def close(self) -> None:
        self.listener.shutdown(socket.SHUT_RDWR)
        self.listener.close()
        self.thread.join(5)


@pytest.fixture(scope="module")
def server(ca: SessionCA) -> Iterator[Server]:
    """Serves a leaf for 127.0.0.1 (clients below connect by address: no DNS needed)."""
    srv = Server(ca.server_context("127.0.0.1"))
    yield srv
    srv.close()


def client_env(tmp_path: Path, extra: dict[str, str]) -> dict[str, str]:
    # A bare environment: no proxy variables, no user config, only what the test gives.
    home = tmp_path / "home"
    home.mkdir(exist_ok=True)
    return {"PATH": os.environ["PATH"], "HOME": str(home), "LANG": "C.UTF-8", **extra}


PY_CLIENT = (
    "import socket, ssl, sys\n"
    "ctx = ssl.create_default_context()\n"
    "s = ctx.wrap_socket(socket.create_connection(('127.0.0.1', int(sys.argv[1]))),"
    " server_hostname='127.0.0.1')\n"
    "s.sendall(b'GET /python HTTP/1.1\\r\\nHost: x\\r\\n\\r\\n')\n"
    "print(s.recv(100).split(b' ')[1].decode())\n"
)
JAVA_CLIENT = (
    "public class Get { public static void main(String[] a) throws Exception {\n"
    "  var c = (javax.net.ssl.HttpsURLConnection) new java.net.URL(a[0])"
    ".openConnection(java.net.Proxy.NO_PROXY);\n"
    "  System.out.println(c.getResponseCode()); } }\n"
)
NODE_CLIENT = (
    "require('https').get(process.argv[1], r => console.log(r.statusCode))"
    ".on('error', e => { console.error(e.code); process.exit(1) })"
)


def command_for(tool: str, port: int, tmp_path: Path) -> list[str]:
    url = f"https://127.0.0.1:{port}/{tool}"
    if tool == "python":
        return [sys.executable, "-c", PY_CLIENT, str(port)]
    if tool == "curl":
        return ["curl", "-q", "-sS", "--noproxy", "*", "-o", "/dev/null", "-w", "%{http_code}", url]
    if tool == "git":
        return ["git", "-c", "http.proxy=", "ls-remote", f"{url}/repo.git"]
    if tool == "wget":
        return ["wget", "-q", "--no-proxy", "-O", "-", url]
    if tool == "node":
        return ["node", "-e", NODE_CLIENT, url]
    if tool == "java":
        source = tmp_path / "Get.java"
        source.write_text(JAVA_CLIENT)
        return ["java", str(source), url]
    raise AssertionError(tool)


# name: (tool, the trust variables it is given, what its stdout says on success)
# fmt: off
CLIENTS = {
    "python via SSL_CERT_FILE": ("python", ["SSL_CERT_FILE"], "200"),
    "python via SSL_CERT_DIR": ("python", ["SSL_CERT_DIR"], "200"),
    "curl via CURL_CA_BUNDLE": ("curl", ["CURL_CA_BUNDLE"], "200"),
    "git via GIT_SSL_CAINFO": ("git", ["GIT_SSL_CAINFO"], None),
    "wget via WGETRC": ("wget", ["WGETRC"], "ok"),
    "node via NODE_EXTRA_CA_CERTS": ("node", ["NODE_EXTRA_CA_CERTS"], "200"),
    "java via JAVA_TOOL_OPTIONS": ("java", ["JAVA_TOOL_OPTIONS"], "200"),
}
# fmt: on


def run_client(
    tool: str, names: list[str], files: trust.TrustFiles, port: int, tmp_path: Path
) -> subprocess.CompletedProcess[str]:
    if tool != "python" and shutil.which(tool) is None:
        pytest.skip(f"{tool} is not installed")
    env = client_env(tmp_path, {name: files.env[name] for name in names})
    if names == ["SSL_CERT_DIR"]:
        env["SSL_CERT_FILE"] = str(tmp_path / "none.pem")  # the directory alone must do
    if tool == "git":
        env |= {"GIT_CONFIG_NOSYSTEM": "1", "GIT_TERMINAL_PROMPT": "0"}
    return subprocess.run(
        command_for(tool, port, tmp_path),
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


@pytest.mark.parametrize(("tool", "names", "expected"), CLIENTS.values(), ids=CLIENTS.keys())
def test_client_trusts_the_session_ca_through_its_variable(
    tool: str,
    names: list[str],
    expected: str | None,
    files: trust.TrustFiles,
    server: Server,
    tmp_path: Path,
):
    before = len(server.requests)
    done = run_client(tool, names, files, server.port, tmp_path)
    if expected is not None:
        assert done.returncode == 0, done.stderr
        assert done.stdout.strip() == expected
    else:  # git: the TLS part worked when our server got the request (it is no git server)
        assert "certificate" not in done.stderr.lower(), done.stderr
    assert any(f"/{tool}" in r for r in server.requests[before:]), server.requests


@pytest.mark.parametrize(("tool", "names", "expected"), CLIENTS.values(), ids=CLIENTS.keys())
def test_without_the_variable_the_client_refuses(
    tool: str,
    names: list[str],
    expected: str | None,
    files: trust.TrustFiles,
    server: Server,
    tmp_path: Path,
):
    """The control: the same client, no trust variable -> certificate error, no request."""
    before = len(server.requests)
    done = run_client(tool, [], files, server.port, tmp_path)
    assert done.returncode != 0
    assert server.requests[before:] == []


@pytest.mark.skipif(shutil.which("curl") is None, reason="curl is not installed")
def test_curl_offering_http2_falls_back_to_http11(
    files: trust.TrustFiles, ca: SessionCA, tmp_path: Path
):
    srv = Server(ca.server_context("api.example.test"))
    try:
        done = subprocess.run(
            [
                "curl", "-q", "-sS", "--http2", "--noproxy", "*",
                "--resolve", f"api.example.test:{srv.port}:127.0.0.1",
                "-o", "/dev/null", "-w", "%{http_version} %{http_code}",
                f"https://api.example.test:{srv.port}/h2",
            ],
            env=client_env(tmp_path, {"CURL_CA_BUNDLE": str(files.bundle)}),
            capture_output=True, text=True, timeout=30, check=False,
        )  # fmt: skip
    finally:
        srv.close()
    assert done.returncode == 0, done.stderr
    assert done.stdout == "1.1 200"
    assert srv.alpn == ["http/1.1"]
