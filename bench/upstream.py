"""The upstream: Debian's nginx with its own config, serving a 100-byte and a 256 MiB body.

HTTP on 80 and HTTPS on 443 of the upstream address, a certificate for `bench.test`
from a CA made here (P-256, as most sites use now), no session resumption (every
connection pays a full handshake, as a new client does), sendfile for the big body.
"""

from __future__ import annotations

import datetime
import hashlib
import os
import socket
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from bench.config import (
    BIG_BYTES,
    BIG_PATH,
    HTTP_PORT,
    HTTPS_PORT,
    SMALL_BYTES,
    SMALL_PATH,
    UPSTREAM_NAME,
    UPSTREAM_V4,
)

START_TIMEOUT_S = 10.0
_VALID = datetime.timedelta(days=7)
_BACKDATE = datetime.timedelta(hours=1)  # a clock slightly behind still accepts them
_CHUNK = 4 * 1024 * 1024


@dataclass(frozen=True, slots=True)
class Pki:
    ca_pem: Path
    cert_pem: Path
    key_pem: Path


def make_pki(directory: Path, name: str = UPSTREAM_NAME) -> Pki:
    """A throwaway CA and one server certificate for `name`, written under `directory`."""
    directory.mkdir(parents=True, exist_ok=True)
    now = datetime.datetime.now(datetime.UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "corridor bench CA")])
    ca = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - _BACKDATE)
        .not_valid_after(now + _VALID)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(_usage(ca=True), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), False)
        .sign(ca_key, hashes.SHA256())
    )
    key = ec.generate_private_key(ec.SECP256R1())
    leaf = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)]))
        .issuer_name(ca_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - _BACKDATE)
        .not_valid_after(now + _VALID)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(_usage(ca=False), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), False)
        .add_extension(x509.SubjectAlternativeName([x509.DNSName(name)]), False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), False
        )
        .sign(ca_key, hashes.SHA256())
    )
    pki = Pki(directory / "ca.pem", directory / "cert.pem", directory / "key.pem")
    pki.ca_pem.write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    pki.cert_pem.write_bytes(leaf.public_bytes(serialization.Encoding.PEM))
    pki.key_pem.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return pki


def _usage(*, ca: bool) -> x509.KeyUsage:
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


def make_bodies(www: Path) -> str:
    """The small body and the big one (random bytes, so a corrupted relay shows in the
    hash); returns the big body's SHA-256. The big file is kept between runs."""
    www.mkdir(parents=True, exist_ok=True)
    (www / SMALL_PATH.lstrip("/")).write_bytes(b"x" * (SMALL_BYTES - 1) + b"\n")
    big = www / BIG_PATH.lstrip("/")
    if not big.exists() or big.stat().st_size != BIG_BYTES:
        with open(big, "wb") as f:
            for _ in range(BIG_BYTES // _CHUNK):
                f.write(os.urandom(_CHUNK))
    digest = hashlib.sha256()
    with open(big, "rb") as f:
        while chunk := f.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


NGINX_CONF = """\
# corridor bench upstream: started by bench/upstream.py, nothing else.
daemon off;
master_process on;
user root;
worker_processes 1;
worker_rlimit_nofile 65536;
pid {dir}/nginx.pid;
error_log {dir}/error.log warn;
events {{ worker_connections 16384; }}
http {{
  access_log off;
  default_type application/octet-stream;
  sendfile on;
  tcp_nopush on;
  tcp_nodelay on;
  keepalive_timeout 600s;
  keepalive_requests 1000000;
  client_body_temp_path {dir}/tmp-body;
  proxy_temp_path {dir}/tmp-proxy;
  fastcgi_temp_path {dir}/tmp-fastcgi;
  uwsgi_temp_path {dir}/tmp-uwsgi;
  scgi_temp_path {dir}/tmp-scgi;
  ssl_protocols TLSv1.2 TLSv1.3;
  ssl_session_cache off;
  ssl_session_tickets off;
  server {{
    listen {addr}:{http} backlog=4096 reuseport;
    listen {addr}:{https} ssl backlog=4096 reuseport;
    server_name {name};
    ssl_certificate {cert};
    ssl_certificate_key {key};
    root {www};
    location / {{ }}
  }}
}}
"""


class Nginx:
    """nginx running in the foreground with the bench's config."""

    def __init__(self, directory: Path, www: Path, pki: Pki) -> None:
        directory.mkdir(parents=True, exist_ok=True)
        self.conf = directory / "nginx.conf"
        self.conf.write_text(
            NGINX_CONF.format(
                dir=directory,
                addr=UPSTREAM_V4,
                http=HTTP_PORT,
                https=HTTPS_PORT,
                name=UPSTREAM_NAME,
                cert=pki.cert_pem,
                key=pki.key_pem,
                www=www,
            )
        )
        self.directory = directory
        self.proc: subprocess.Popen | None = None

    def start(self) -> None:
        log = open(self.directory / "stderr.log", "wb")  # noqa: SIM115 (lives with the process)
        self.proc = subprocess.Popen(
            ["nginx", "-p", str(self.directory), "-c", str(self.conf), "-e", "stderr"],
            stdout=log,
            stderr=log,
        )
        wait_port(UPSTREAM_V4, HTTPS_PORT, self.proc, "nginx", self.directory / "stderr.log")
        wait_port(UPSTREAM_V4, HTTP_PORT, self.proc, "nginx", self.directory / "stderr.log")

    def stop(self) -> None:
        stop_process(self.proc)


def wait_port(
    host: str, port: int, proc: subprocess.Popen, what: str, log: Path | None = None
) -> None:
    """Wait until something accepts on host:port; fail (with the log) if `proc` exits."""
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            tail = log.read_text(errors="replace")[-2000:] if log and log.exists() else ""
            raise RuntimeError(f"{what} exited ({proc.returncode}) before serving:\n{tail}")
        try:
            with socket.create_connection((host, port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"{what} did not listen on {host}:{port} within {START_TIMEOUT_S}s")


def stop_process(proc: subprocess.Popen | None, grace: float = 5.0) -> None:
    """SIGTERM, then SIGKILL after `grace` seconds."""
    if proc is None or proc.poll() is not None:
        return
    proc.terminate()
    try:
        proc.wait(grace)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
