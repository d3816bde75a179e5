"""
Test certificates, made at run time (nothing is committed): a CA, and a
server certificate it signs for C{localhost}, 127.0.0.1 and ::1, as PEM
files in a directory.
"""

from __future__ import annotations

import datetime
import ipaddress
import os
from dataclasses import dataclass

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

LOOPBACK_NAMES = ("localhost",)
LOOPBACK_ADDRESSES = ("127.0.0.1", "::1")


@dataclass(frozen=True)
class CertificateFiles:
    """
    The PEM files of a test CA and of a server certificate it signed.

    @ivar ca: the CA certificate.
    @ivar certificate: the server certificate, then the CA certificate
        (a chain).
    @ivar key: the server's private key.
    @ivar leaf: the server certificate alone.
    """

    ca: str
    certificate: str
    key: str
    leaf: str


def _name(common: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common)])


def _pem(certificate: x509.Certificate) -> bytes:
    return certificate.public_bytes(serialization.Encoding.PEM)


def makeCertificates(
    directory: str,
    names: tuple[str, ...] = LOOPBACK_NAMES,
    addresses: tuple[str, ...] = LOOPBACK_ADDRESSES,
    prefix: str = "",
    validDays: int = 2,
) -> CertificateFiles:
    """
    Write a new CA and a server certificate for C{names} and C{addresses}
    into C{directory}; the file names start with C{prefix}.
    """
    now = datetime.datetime.now(datetime.UTC)
    start = now - datetime.timedelta(hours=1)
    end = now + datetime.timedelta(days=validDays)
    caKey = ec.generate_private_key(ec.SECP256R1())
    ca = (
        x509.CertificateBuilder()
        .subject_name(_name("udptime test CA"))
        .issuer_name(_name("udptime test CA"))
        .public_key(caKey.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(end)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=False,
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
        .add_extension(
            x509.SubjectKeyIdentifier.from_public_key(caKey.public_key()),
            critical=False,
        )
        .sign(caKey, hashes.SHA256())
    )
    key = ec.generate_private_key(ec.SECP256R1())
    alternatives: list[x509.GeneralName] = [x509.DNSName(n) for n in names]
    alternatives += [x509.IPAddress(ipaddress.ip_address(a)) for a in addresses]
    leaf = (
        x509.CertificateBuilder()
        .subject_name(_name(names[0] if names else addresses[0]))
        .issuer_name(ca.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(end)
        .add_extension(x509.SubjectAlternativeName(alternatives), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False
        )
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(caKey.public_key()),
            critical=False,
        )
        .sign(caKey, hashes.SHA256())
    )
    files = CertificateFiles(
        ca=os.path.join(directory, prefix + "ca.pem"),
        certificate=os.path.join(directory, prefix + "server-chain.pem"),
        key=os.path.join(directory, prefix + "server-key.pem"),
        leaf=os.path.join(directory, prefix + "server.pem"),
    )
    with open(files.ca, "wb") as f:
        f.write(_pem(ca))
    with open(files.certificate, "wb") as f:
        f.write(_pem(leaf) + _pem(ca))
    with open(files.leaf, "wb") as f:
        f.write(_pem(leaf))
    with open(files.key, "wb") as f:
        f.write(
            key.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            )
        )
    return files
