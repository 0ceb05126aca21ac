"""The gateway's TLS client side: how inspected connections verify the real server.

Under inspection the gateway, not the sandbox, is the TLS client of the upstream server,
so it must verify as strictly as a careful client would: the system trust store (what the
host's OpenSSL uses by default, `SSL_CERT_FILE`/`SSL_CERT_DIR` of the corridor process
included) plus any `--upstream-ca` files, host name checked, TLS 1.2 or newer. A failure is
a denial whose reason says what was wrong, never a silent pass.
"""

from __future__ import annotations

import ssl
from collections.abc import Sequence
from pathlib import Path

from corridor.errors import UserError

# Inspected traffic is relayed as HTTP/1.1 (h11): offer nothing else upstream.
UPSTREAM_ALPN = ("http/1.1",)
# Python 3.13's defaults for a client context, applied here on 3.11 too. STRICT refuses
# certificates that break RFC 5280 rules modern clients enforce (e.g. a CA without
# critical basicConstraints); PARTIAL_CHAIN lets an --upstream-ca that is an
# intermediate (or a private server's own certificate) act as the trust anchor.
VERIFY_FLAGS = ssl.VERIFY_X509_STRICT | ssl.VERIFY_X509_PARTIAL_CHAIN

# OpenSSL X509_V_ERR_* codes (include/openssl/x509_vfy.h) -> what a user should read.
_VERIFY_REASONS: dict[int, str] = {
    2: "the issuer's certificate is missing from the chain",
    4: "the certificate signature cannot be decrypted",
    7: "the certificate signature is invalid",
    9: "the certificate is not valid yet",
    10: "the certificate has expired",
    18: "self-signed certificate",
    19: "self-signed certificate in the chain (its root is not trusted)",
    20: "issued by an unknown certificate authority",
    21: "the certificate chain cannot be verified (incomplete chain?)",
    23: "the certificate has been revoked",
    24: "a certificate in the chain is not a valid CA",
    25: "the chain is longer than a CA allows",
    26: "the certificate is not meant for TLS servers",
    27: "the root certificate is not trusted for this purpose",
    28: "the root certificate is explicitly rejected",
    62: "the certificate does not name this host",
    64: "the certificate does not name this IP address",
}


def upstream_context(upstream_cas: Sequence[Path] = ()) -> ssl.SSLContext:
    """A client context trusting the system store plus the PEM files in `upstream_cas`.

    Raises `UserError` for a CA file that cannot be read or holds no certificate.
    """
    context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.verify_flags |= VERIFY_FLAGS
    context.set_alpn_protocols(list(UPSTREAM_ALPN))
    for path in upstream_cas:
        _load_ca_file(context, path)
    return context


def _load_ca_file(context: ssl.SSLContext, path: Path) -> None:
    try:
        pem = path.read_text(encoding="ascii", errors="replace")
    except OSError as e:
        raise UserError(f"--upstream-ca {path}: {e.strerror or e}") from None
    hint = "give a file with one or more '-----BEGIN CERTIFICATE-----' blocks"
    if "-----BEGIN CERTIFICATE-----" not in pem:
        raise UserError(f"--upstream-ca {path}: no PEM certificate in the file", hint)
    try:
        context.load_verify_locations(cadata=pem)
    except (ssl.SSLError, ValueError) as e:
        raise UserError(f"--upstream-ca {path}: not a usable certificate ({e})", hint) from None


def tls_failure_reason(error: BaseException, host: str) -> str:
    """The denial reason for a failed TLS handshake with the upstream `host`.

    Certificate problems name the check that failed ("the certificate has expired");
    other handshake failures say what OpenSSL reported; a connection that ended during
    the handshake says so. The text holds no secret and is safe for events and 403 bodies.
    """
    if isinstance(error, ssl.SSLCertVerificationError):
        code = error.verify_code
        text = _VERIFY_REASONS.get(code) or (error.verify_message or "verification failed")
        return f"upstream certificate for {host} rejected: {text}"
    if isinstance(error, ConnectionError | EOFError | ssl.SSLEOFError):
        return f"TLS handshake with upstream {host} failed: connection closed by the server"
    if isinstance(error, ssl.SSLError):
        what = error.reason or error.strerror or str(error)
        return f"TLS handshake with upstream {host} failed: {what}"
    if isinstance(error, TimeoutError):
        return f"TLS handshake with upstream {host} failed: timed out"
    return f"TLS handshake with upstream {host} failed: {error.__class__.__name__}"
