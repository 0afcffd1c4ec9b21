"""A local certificate authority for `vebus up --nats-tls` and the tests: TLS without a PKI.

`ensure_local_tls(folder)` makes, once, a CA and two certificates it signs: one for the
NATS servers (valid for 127.0.0.1, ::1 and localhost, and for client and route
connections) and one for the vebus clients (mutual TLS). They are kept across restarts,
private keys mode 0600. For a real deployment bring certificates from your own CA
(docs/security.md shows how to make them with openssl); this is for one machine.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import os
from dataclasses import dataclass
from pathlib import Path

__all__ = ["DEFAULT_TLS_DIR", "LocalTls", "ensure_local_tls", "issue"]

#: how long the local certificates are valid
VALID_DAYS = 825
#: the hosts the server certificate names
LOCAL_HOSTS = ("127.0.0.1", "::1", "localhost")
#: where the `vebus` command looks when the config has no nats.tls: `vebus up`'s default
DEFAULT_TLS_DIR = Path(".vebus") / "tls"


@dataclass(frozen=True)
class LocalTls:
    """The files of a local CA: its certificate, and a server and a client key pair."""

    folder: Path

    @property
    def ca_file(self) -> Path:
        return self.folder / "ca.pem"

    @property
    def server_cert(self) -> Path:
        return self.folder / "server.pem"

    @property
    def server_key(self) -> Path:
        return self.folder / "server-key.pem"

    @property
    def client_cert(self) -> Path:
        return self.folder / "client.pem"

    @property
    def client_key(self) -> Path:
        return self.folder / "client-key.pem"


def _write_key(path: Path, pem: bytes) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(pem)


def issue(
    folder: Path,
    name: str,
    *,
    hosts: tuple[str, ...] = (),
    ca: tuple[Path, Path] | None = None,
    server: bool = False,
    client: bool = False,
) -> tuple[Path, Path]:
    """Write `<name>.pem` and `<name>-key.pem` (ECDSA P-256): a self-signed CA when `ca`
    is None, else a certificate signed by the CA `(cert, key)` for `hosts`."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, f"vebus {name}")])
    now = dt.datetime.now(dt.UTC)
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(hours=1))
        .not_valid_after(now + dt.timedelta(days=VALID_DAYS))
    )
    if ca is None:
        issuer, signer = subject, key
        builder = builder.add_extension(x509.BasicConstraints(ca=True, path_length=0), True)
        builder = builder.add_extension(
            x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True,
                          content_commitment=False, key_encipherment=False,
                          data_encipherment=False, key_agreement=False,
                          encipher_only=False, decipher_only=False),
            critical=True,
        )  # fmt: skip
    else:
        ca_cert = x509.load_pem_x509_certificate(ca[0].read_bytes())
        issuer = ca_cert.subject
        loaded = serialization.load_pem_private_key(ca[1].read_bytes(), password=None)
        assert isinstance(loaded, ec.EllipticCurvePrivateKey)
        signer = loaded
        builder = builder.add_extension(x509.BasicConstraints(ca=False, path_length=None), True)
        usages = [ExtendedKeyUsageOID.SERVER_AUTH] * server + [
            ExtendedKeyUsageOID.CLIENT_AUTH
        ] * client
        builder = builder.add_extension(x509.ExtendedKeyUsage(usages), critical=False)
        if hosts:
            alt: list[x509.GeneralName] = []
            for host in hosts:
                try:
                    alt.append(x509.IPAddress(ipaddress.ip_address(host)))
                except ValueError:
                    alt.append(x509.DNSName(host))
            builder = builder.add_extension(x509.SubjectAlternativeName(alt), critical=False)
    cert = builder.issuer_name(issuer).sign(signer, hashes.SHA256())
    folder.mkdir(parents=True, exist_ok=True)
    cert_path, key_path = folder / f"{name}.pem", folder / f"{name}-key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    _write_key(
        key_path,
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        ),
    )
    return cert_path, key_path


def ensure_local_tls(folder: Path, hosts: tuple[str, ...] = LOCAL_HOSTS) -> LocalTls:
    """The local CA and certificates in `folder`, made when missing (kept otherwise)."""
    tls = LocalTls(folder)
    if all(p.exists() for p in (tls.ca_file, tls.server_cert, tls.server_key,
                                tls.client_cert, tls.client_key)):  # fmt: skip
        return tls
    folder.mkdir(parents=True, exist_ok=True)
    os.chmod(folder, 0o700)
    ca = issue(folder, "ca")
    issue(folder, "server", hosts=hosts, ca=ca, server=True, client=True)  # routes: both
    issue(folder, "client", ca=ca, client=True)
    return tls
