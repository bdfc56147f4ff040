"""A throw-away TLS set-up for the OpenVPN comparison: a CA, a server and a client certificate.

OpenVPN authenticates peers with TLS certificates (WireGuard uses bare public keys instead,
which is why ``vpnedu genkey`` is all a WireGuard peer needs).  The benchmark makes the
smallest PKI OpenVPN accepts, on the spot, with the ``cryptography`` package: ECDSA P-256
keys, a self-signed CA, and two leaf certificates with the key usages OpenVPN checks
(``--remote-cert-tls server`` wants TLS Web Server Authentication on the server's).
"""

from __future__ import annotations

import datetime
import os
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID


def _key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def _name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def _write_key(path: Path, key) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                  serialization.NoEncryption()))


def make_pki(directory: str | os.PathLike) -> dict[str, Path]:
    """Write ca.crt, server.crt/key and client.crt/key into ``directory``; return their paths."""
    d = Path(directory)
    d.mkdir(parents=True, exist_ok=True)
    now = datetime.datetime.now(datetime.timezone.utc)
    start, end = now - datetime.timedelta(days=1), now + datetime.timedelta(days=30)
    ca_key = _key()
    ca = (x509.CertificateBuilder().subject_name(_name("vpnedu bench CA")).issuer_name(_name("vpnedu bench CA"))
          .public_key(ca_key.public_key()).serial_number(x509.random_serial_number())
          .not_valid_before(start).not_valid_after(end)
          .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
          .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True,
                                       content_commitment=False, key_encipherment=False, data_encipherment=False,
                                       key_agreement=False, encipher_only=False, decipher_only=False), critical=True)
          .sign(ca_key, hashes.SHA256()))
    paths = {"ca": d / "ca.crt"}
    paths["ca"].write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    for role, eku in (("server", ExtendedKeyUsageOID.SERVER_AUTH), ("client", ExtendedKeyUsageOID.CLIENT_AUTH)):
        key = _key()
        cert = (x509.CertificateBuilder().subject_name(_name(f"vpnedu bench {role}")).issuer_name(ca.subject)
                .public_key(key.public_key()).serial_number(x509.random_serial_number())
                .not_valid_before(start).not_valid_after(end)
                .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
                .add_extension(x509.KeyUsage(digital_signature=True, key_agreement=True, content_commitment=False,
                                             key_encipherment=False, data_encipherment=False, key_cert_sign=False,
                                             crl_sign=False, encipher_only=False, decipher_only=False),
                               critical=True)
                .add_extension(x509.ExtendedKeyUsage([eku]), critical=False)
                .sign(ca_key, hashes.SHA256()))
        paths[f"{role}_crt"] = d / f"{role}.crt"
        paths[f"{role}_key"] = d / f"{role}.key"
        paths[f"{role}_crt"].write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        _write_key(paths[f"{role}_key"], key)
    return paths
