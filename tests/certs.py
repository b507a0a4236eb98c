"""A throw-away PKI for the tests: root CA -> intermediate CA -> server certificate."""

from __future__ import annotations

import datetime
import ssl
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID


def _name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def _cert(subject, subject_key, issuer, issuer_key, ca: bool, sans=None) -> x509.Certificate:
    now = datetime.datetime.now(datetime.timezone.utc)
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer)
        .public_key(subject_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=2))
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
    )
    if sans:
        builder = builder.add_extension(x509.SubjectAlternativeName(sans), critical=False)
    return builder.sign(issuer_key, hashes.SHA256())


def _pem(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


class PKI:
    """Writes ca.pem (the root only), and per call a server chain and key."""

    def __init__(self, directory: Path, name: str = "Test"):
        self.dir = directory
        self.dir.mkdir(parents=True, exist_ok=True)
        self.root_key = ec.generate_private_key(ec.SECP256R1())
        self.root = _cert(_name(f"{name} Root CA"), self.root_key, _name(f"{name} Root CA"), self.root_key, True)
        self.inter_key = ec.generate_private_key(ec.SECP256R1())
        self.inter = _cert(_name(f"{name} Intermediate CA"), self.inter_key, self.root.subject, self.root_key, True)
        self.ca_path = self.dir / "ca.pem"
        self.ca_path.write_bytes(_pem(self.root))

    def server(self, label: str = "server") -> tuple[Path, Path, x509.Certificate]:
        """A leaf for 127.0.0.1/localhost: (chain file with leaf + intermediate, key file, leaf)."""
        key = ec.generate_private_key(ec.SECP256R1())
        import ipaddress
        leaf = _cert(_name("localhost"), key, self.inter.subject, self.inter_key, False,
                     [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))])
        chain = self.dir / f"{label}-chain.pem"
        chain.write_bytes(_pem(leaf) + _pem(self.inter))
        key_path = self.dir / f"{label}-key.pem"
        key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                               serialization.NoEncryption()))
        return chain, key_path, leaf

    def client_context(self) -> ssl.SSLContext:
        ctx = ssl.create_default_context(cafile=str(self.ca_path))
        return ctx
