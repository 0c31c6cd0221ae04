"""TLS contexts for servers and clients, and the server's self-signed certificate.

TLS is on by default everywhere.  A server started without a certificate makes
one for localhost, 127.0.0.1 and ::1 the first time, stores it in its data
directory and reuses it, so that bidders can trust it once with ``--cafile``.
Clients verify certificates unless told ``insecure``, which is logged loudly.

Certificates are made with ``cryptography`` rather than by shelling out to
openssl: it is already a dependency of aiortc and gives us exact control over
the names in the certificate.
"""

import datetime
import ipaddress
import logging
import os
import ssl
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

log = logging.getLogger("bidwar.tls")

CERT_FILE = "cert.pem"
KEY_FILE = "key.pem"
LOOPBACK_NAMES = ("localhost",)
LOOPBACK_ADDRESSES = ("127.0.0.1", "::1")
CERT_LIFETIME = datetime.timedelta(days=825)


class TLSSetupError(Exception):
    """A certificate or key could not be loaded or created."""


def ensure_self_signed(data_dir: Path) -> tuple[Path, Path]:
    """Return the paths of the data directory's certificate and key.

    They are created on first use (key readable by the owner only) and reused
    afterwards, so a bidder's ``--cafile`` stays valid across restarts.
    """
    cert_path = data_dir / CERT_FILE
    key_path = data_dir / KEY_FILE
    if cert_path.exists() and key_path.exists():
        return cert_path, key_path

    data_dir.mkdir(parents=True, exist_ok=True)
    cert_pem, key_pem = _make_self_signed()
    _write_private(key_path, key_pem)
    cert_path.write_bytes(cert_pem)
    log.info("created a self-signed certificate for localhost at %s", cert_path)
    return cert_path, key_path


def server_context(cert_path: Path, key_path: Path) -> ssl.SSLContext:
    """Return a TLS server context that serves ``cert_path``."""
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    try:
        context.load_cert_chain(cert_path, key_path)
    except (OSError, ssl.SSLError) as error:
        raise TLSSetupError(
            f"cannot load the certificate {cert_path} with key {key_path}: {error}"
        ) from error
    return context


def client_context(
    cafile: Path | None = None, *, insecure: bool = False
) -> ssl.SSLContext:
    """Return a TLS client context.

    With ``cafile`` only that authority is trusted (the usual case for a
    server's self-signed certificate); without it the system's store is.
    ``insecure`` turns every check off and says so in the log.
    """
    context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH)
    if cafile is not None:
        try:
            context.load_verify_locations(cafile=str(cafile))
        except (OSError, ssl.SSLError) as error:
            raise TLSSetupError(f"cannot read the CA file {cafile}: {error}") from error
    if insecure:
        log.warning(
            "certificate checks are OFF (--insecure): anyone can pose as the server"
        )
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    return context


def _make_self_signed() -> tuple[bytes, bytes]:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "bidwar localhost")])
    now = datetime.datetime.now(datetime.UTC)
    alt_names = [x509.DNSName(host) for host in LOOPBACK_NAMES] + [
        x509.IPAddress(ipaddress.ip_address(address)) for address in LOOPBACK_ADDRESSES
    ]

    # Self-signed and marked as a CA so that clients can use the certificate
    # itself as their trust anchor (--cafile cert.pem).
    certificate = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + CERT_LIFETIME)
        .add_extension(x509.SubjectAlternativeName(alt_names), critical=False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )

    key_pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    return certificate.public_bytes(serialization.Encoding.PEM), key_pem


def _write_private(path: Path, data: bytes) -> None:
    descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(descriptor, "wb") as file:
        file.write(data)
