"""The certificates and keys of the tests' Kubernetes control plane: one CA, the apiserver's serving
certificate, client certificates for each component and the admin, and the service-account token key.

EC P-256 throughout (every component takes it, and keys are made in microseconds rather than RSA's tens of
milliseconds). Everything is valid for a day and written as PEM files in one folder.
"""

from __future__ import annotations

import datetime
import ipaddress
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

# The client identities the control plane's own components authenticate as (the RBAC bootstrap policy
# grants these names their rights); the admin is in system:masters.
CLIENTS = {
    "admin": ("oscar-test-admin", "system:masters"),
    "controller-manager": ("system:kube-controller-manager", None),
    "scheduler": ("system:kube-scheduler", None),
    "kwok": ("system:kwok", "system:masters"),
    "apiserver-kubelet-client": ("kube-apiserver-kubelet-client", "system:masters"),
}
APISERVER_NAMES = [
    "kubernetes",
    "kubernetes.default",
    "kubernetes.default.svc",
    "kubernetes.default.svc.cluster.local",
    "localhost",
]
APISERVER_ADDRESSES = ["127.0.0.1", "10.0.0.1"]


@dataclass(frozen=True)
class KeyPair:
    cert: Path
    key: Path


def _write_key(path: Path, key: ec.EllipticCurvePrivateKey) -> None:
    path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    path.chmod(0o600)


def _name(common_name: str, organization: str | None) -> x509.Name:
    attributes = [x509.NameAttribute(NameOID.COMMON_NAME, common_name)]
    if organization:
        attributes.append(x509.NameAttribute(NameOID.ORGANIZATION_NAME, organization))
    return x509.Name(attributes)


def _builder(
    subject: x509.Name, issuer: x509.Name, key: ec.EllipticCurvePublicKey
) -> x509.CertificateBuilder:
    """A certificate valid from a little before now for a day."""
    now = datetime.datetime.now(datetime.UTC)
    return (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer)
        .public_key(key)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
    )


@dataclass(frozen=True)
class Pki:
    folder: Path
    ca: KeyPair
    service_account_key: Path  # the private key that signs tokens
    service_account_public: Path

    @classmethod
    def create(cls, folder: Path) -> Pki:
        folder.mkdir(parents=True, exist_ok=True)
        ca_key = ec.generate_private_key(ec.SECP256R1())
        ca_name = _name("oscar-test-ca", None)
        ca_cert = (
            _builder(ca_name, ca_name, ca_key.public_key())
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .add_extension(
                x509.KeyUsage(
                    digital_signature=True,
                    content_commitment=False,
                    key_encipherment=False,
                    data_encipherment=False,
                    key_agreement=False,
                    key_cert_sign=True,
                    crl_sign=True,
                    encipher_only=False,
                    decipher_only=False,
                ),
                critical=True,
            )
            .sign(ca_key, hashes.SHA256())
        )
        ca = KeyPair(folder / "ca.crt", folder / "ca.key")
        ca.cert.write_bytes(ca_cert.public_bytes(serialization.Encoding.PEM))
        _write_key(ca.key, ca_key)
        sa_key = ec.generate_private_key(ec.SECP256R1())
        pki = cls(folder, ca, folder / "service-account.key", folder / "service-account.pub")
        _write_key(pki.service_account_key, sa_key)
        pki.service_account_public.write_bytes(
            sa_key.public_key().public_bytes(
                serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
            )
        )
        return pki

    def issue(
        self,
        name: str,
        *,
        common_name: str,
        organization: str | None = None,
        dns_names: list[str] | None = None,
        addresses: list[str] | None = None,
    ) -> KeyPair:
        """A certificate signed by the CA: a server's when it has names or addresses, else a client's."""
        ca_key = serialization.load_pem_private_key(self.ca.key.read_bytes(), password=None)
        assert isinstance(ca_key, ec.EllipticCurvePrivateKey)
        ca_cert = x509.load_pem_x509_certificate(self.ca.cert.read_bytes())
        key = ec.generate_private_key(ec.SECP256R1())
        server = bool(dns_names or addresses)
        builder = (
            _builder(_name(common_name, organization), ca_cert.subject, key.public_key())
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(
                x509.ExtendedKeyUsage(
                    [ExtendedKeyUsageOID.SERVER_AUTH if server else ExtendedKeyUsageOID.CLIENT_AUTH]
                ),
                critical=False,
            )
        )
        if server:
            alternatives: list[x509.GeneralName] = [x509.DNSName(n) for n in dns_names or []]
            alternatives += [x509.IPAddress(ipaddress.ip_address(a)) for a in addresses or []]
            builder = builder.add_extension(x509.SubjectAlternativeName(alternatives), critical=False)
        cert = builder.sign(ca_key, hashes.SHA256())
        pair = KeyPair(self.folder / f"{name}.crt", self.folder / f"{name}.key")
        pair.cert.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        _write_key(pair.key, key)
        return pair

    def client(self, name: str) -> KeyPair:
        common_name, organization = CLIENTS[name]
        return self.issue(name, common_name=common_name, organization=organization)

    def apiserver(self) -> KeyPair:
        return self.issue(
            "apiserver",
            common_name="kube-apiserver",
            dns_names=APISERVER_NAMES,
            addresses=APISERVER_ADDRESSES,
        )

    def node_server(self, name: str) -> KeyPair:
        """A kubelet's serving certificate (kwok's, or the runner's): the apiserver proxies pod logs to it."""
        return self.issue(name, common_name=name, dns_names=[name, "localhost"], addresses=["127.0.0.1"])
