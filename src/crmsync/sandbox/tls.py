"""Keys and certificates the sandbox makes for itself, with ``cryptography``.

* A local CA and a server certificate it signs for ``127.0.0.1``/``localhost``: clients
  trust ``ca.pem`` (e.g. ``httpx.Client(verify=ca_path)``) and get real TLS verification.
* A key and self-signed certificate for the connected app's JWT bearer flow: the sandbox
  trusts ``jwt-cert.pem`` (as if uploaded to the connected app), clients sign with
  ``jwt-key.pem``.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID


@dataclass(frozen=True)
class TlsFiles:
    ca_cert: Path
    server_cert: Path
    server_key: Path
    jwt_cert: Path
    jwt_key: Path


def _key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "crmsync sandbox"),
                      x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def _write_key(path: Path, key: rsa.RSAPrivateKey) -> None:
    path.write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                       serialization.PrivateFormat.PKCS8,
                                       serialization.NoEncryption()))
    path.chmod(0o600)


def _cert(subject: str, key: rsa.RSAPrivateKey, issuer: x509.Name, signer: rsa.RSAPrivateKey,
          ca: bool) -> x509.CertificateBuilder:
    now = datetime.now(UTC)
    builder = (x509.CertificateBuilder().subject_name(_name(subject)).issuer_name(issuer)
               .public_key(key.public_key()).serial_number(x509.random_serial_number())
               .not_valid_before(now - timedelta(days=1))
               .not_valid_after(now + timedelta(days=825))
               .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
               .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()),
                              critical=False)
               .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(
                   signer.public_key()), critical=False))
    return builder


def ensure(folder: Path) -> TlsFiles:
    """Create the files in ``folder`` unless they are all there already."""
    files = TlsFiles(folder / "ca.pem", folder / "server.pem", folder / "server-key.pem",
                     folder / "jwt-cert.pem", folder / "jwt-key.pem")
    if all(p.exists() for p in vars(files).values()):
        return files
    folder.mkdir(parents=True, exist_ok=True)
    ca_key, server_key, jwt_key = _key(), _key(), _key()
    ca_name = _name("crmsync sandbox local CA")
    ca = (_cert("crmsync sandbox local CA", ca_key, ca_name, ca_key, ca=True)
          .add_extension(x509.KeyUsage(False, False, False, False, False, True, True, False,
                                       False), critical=True)
          .sign(ca_key, hashes.SHA256()))
    server = (_cert("localhost", server_key, ca_name, ca_key, ca=False)
              .add_extension(x509.SubjectAlternativeName([
                  x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
                  critical=False)
              .add_extension(x509.KeyUsage(True, False, True, False, False, False, False, False,
                                           False), critical=True)
              .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]),
                             critical=False)
              .sign(ca_key, hashes.SHA256()))
    jwt_name = _name("crmsync sandbox connected app")
    jwt_cert = _cert("crmsync sandbox connected app", jwt_key, jwt_name, jwt_key,
                     ca=False).sign(jwt_key, hashes.SHA256())
    files.ca_cert.write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    files.server_cert.write_bytes(server.public_bytes(serialization.Encoding.PEM))
    _write_key(files.server_key, server_key)
    files.jwt_cert.write_bytes(jwt_cert.public_bytes(serialization.Encoding.PEM))
    _write_key(files.jwt_key, jwt_key)
    return files
