"""The appliance PKI: its CA, the server certificate of its ports, and client certificates.

The CA is created at the first start of the engine. Private keys are stored encrypted on disk
with a key that lives in the secret store (see :mod:`engine.secrets`), never in clear.
Source servers pin the CA by the SHA-256 fingerprint of its certificate.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import re
import socket
import ssl
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from engine.errors import BadInput, FingerprintMismatch
from engine.files import write_atomically

CA_VALIDITY = dt.timedelta(days=3650)
LEAF_VALIDITY = dt.timedelta(days=825)
#: Certificates are valid from this long before they are made: a peer whose clock is behind (or an
#: appliance whose clock is set back) still accepts them.
BACKDATE = dt.timedelta(days=2)
_FP_RE = re.compile(r"^[0-9A-F]{64}$")


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def new_key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def fingerprint(cert: x509.Certificate) -> str:
    """SHA-256 of the DER certificate as colon-separated upper-case hex pairs."""
    digest = cert.fingerprint(hashes.SHA256()).hex().upper()
    return ":".join(digest[i : i + 2] for i in range(0, len(digest), 2))


def parse_fingerprint(text: str) -> str:
    """Accept a fingerprint as an admin might paste it; return the canonical form."""
    cleaned = text.strip().upper()
    if cleaned.startswith("SHA256:") or cleaned.startswith("SHA256="):
        cleaned = cleaned[7:]
    hexdigits = cleaned.replace(":", "").replace(" ", "")
    if not _FP_RE.match(hexdigits):
        raise BadInput(
            f"{text.strip()[:80]!r} is not a SHA-256 fingerprint: copy it from the console's Setup page "
            "or `godwit setup show` (64 hex digits, colons allowed)."
        )
    return ":".join(hexdigits[i : i + 2] for i in range(0, 64, 2))


def key_pem(key: ec.EllipticCurvePrivateKey, password: bytes | None) -> bytes:
    algo: serialization.KeySerializationEncryption = (
        serialization.BestAvailableEncryption(password) if password else serialization.NoEncryption()
    )
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, algo)


def cert_pem(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


def _name(common_name: str) -> x509.Name:
    return x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "Godwit appliance"),
            x509.NameAttribute(NameOID.COMMON_NAME, common_name),
        ]
    )


def create_ca(appliance_id: str) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    key = new_key()
    name = _name(f"Godwit appliance CA {appliance_id}")
    now = _now()
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - BACKDATE)
        .not_valid_after(now + CA_VALIDITY)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
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
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    return cert, key


def _leaf(
    ca_cert: x509.Certificate,
    ca_key: ec.EllipticCurvePrivateKey,
    subject: x509.Name,
    public_key: ec.EllipticCurvePublicKey,
    usage: x509.ObjectIdentifier,
    sans: list[x509.GeneralName] | None = None,
) -> x509.Certificate:
    now = _now()
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(ca_cert.subject)
        .public_key(public_key)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - BACKDATE)
        .not_valid_after(now + LEAF_VALIDITY)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False
        )
    )
    if sans:
        builder = builder.add_extension(x509.SubjectAlternativeName(sans), critical=False)
    return builder.sign(ca_key, hashes.SHA256())


def issue_server_cert(
    ca_cert: x509.Certificate, ca_key: ec.EllipticCurvePrivateKey
) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    """Certificate for the appliance's ports, naming this host and loopback."""
    key = new_key()
    host = socket.gethostname()
    sans: list[x509.GeneralName] = [x509.DNSName(host), x509.DNSName("localhost")]
    sans += [x509.IPAddress(ipaddress.ip_address(a)) for a in ("127.0.0.1", "::1")]
    cert = _leaf(ca_cert, ca_key, _name(host), key.public_key(), ExtendedKeyUsageOID.SERVER_AUTH, sans)
    return cert, key


def make_csr(key: ec.EllipticCurvePrivateKey, common_name: str) -> bytes:
    csr = x509.CertificateSigningRequestBuilder().subject_name(_name(common_name)).sign(key, hashes.SHA256())
    return csr.public_bytes(serialization.Encoding.PEM)


def issue_client_cert(
    ca_cert: x509.Certificate, ca_key: ec.EllipticCurvePrivateKey, csr_pem: str, server_id: str
) -> x509.Certificate:
    """Sign a source server's request. Only its public key is taken; the subject is ours."""
    try:
        csr = x509.load_pem_x509_csr(csr_pem.encode())
    except (ValueError, UnicodeError) as exc:
        raise BadInput("The certificate request is not a PEM CSR.") from exc
    if not csr.is_signature_valid:
        raise BadInput("The certificate request's signature does not verify.")
    public_key = csr.public_key()
    if not isinstance(public_key, ec.EllipticCurvePublicKey):
        raise BadInput("The certificate request must carry an EC P-256 key.")
    return _leaf(ca_cert, ca_key, _name(server_id), public_key, ExtendedKeyUsageOID.CLIENT_AUTH)


@dataclass(frozen=True)
class PeerIdentity:
    """Who is on the other end of a mutual-TLS connection."""

    server_id: str
    serial: int


def peer_identity(peercert: dict[str, object] | None) -> PeerIdentity | None:
    """Read the subject CN and serial that ``ssl`` verified; ``None`` without a client certificate."""
    if not peercert:
        return None
    cn = None
    for rdn in peercert.get("subject", ()):  # type: ignore[attr-defined]
        for key, value in rdn:
            if key == "commonName":
                cn = value
    serial = peercert.get("serialNumber")
    if not isinstance(cn, str) or not isinstance(serial, str):
        return None
    return PeerIdentity(server_id=cn, serial=int(serial, 16))


class AppliancePKI:
    """The CA and port certificate files of one data directory."""

    def __init__(self, directory: Path, key_password: bytes) -> None:
        self.dir = directory
        self._password = key_password

    @property
    def ca_cert_path(self) -> Path:
        return self.dir / "ca.crt"

    @property
    def ca_key_path(self) -> Path:
        return self.dir / "ca.key"

    @property
    def server_cert_path(self) -> Path:
        return self.dir / "server.crt"

    @property
    def server_key_path(self) -> Path:
        return self.dir / "server.key"

    def exists(self) -> bool:
        return self.ca_cert_path.exists() and self.ca_key_path.exists()

    def create(self, appliance_id: str) -> None:
        """Create the CA and the port certificate. Files are written 0600, then renamed in place."""
        ca_cert, ca_key = create_ca(appliance_id)
        server_cert, server_key = issue_server_cert(ca_cert, ca_key)
        write_atomically(self.ca_key_path, key_pem(ca_key, self._password))
        write_atomically(self.server_key_path, key_pem(server_key, self._password))
        write_atomically(self.server_cert_path, cert_pem(server_cert) + cert_pem(ca_cert))
        write_atomically(self.ca_cert_path, cert_pem(ca_cert))

    def ca_cert(self) -> x509.Certificate:
        return x509.load_pem_x509_certificate(self.ca_cert_path.read_bytes())

    def ca_key(self) -> ec.EllipticCurvePrivateKey:
        key = serialization.load_pem_private_key(self.ca_key_path.read_bytes(), password=self._password)
        assert isinstance(key, ec.EllipticCurvePrivateKey)
        return key

    def sign(self, data: bytes) -> bytes:
        """ECDSA (SHA-256) signature of ``data`` with the CA key, DER-encoded: the appliance vouches for a
        record it keeps in files an admin can edit (the evaluation start, see engine/licence.py)."""
        return self.ca_key().sign(data, ec.ECDSA(hashes.SHA256()))

    def verify(self, data: bytes, signature: bytes) -> bool:
        """True if ``signature`` is :meth:`sign`'s of ``data``, checked with the CA certificate's public key."""
        public_key = self.ca_cert().public_key()
        if not isinstance(public_key, ec.EllipticCurvePublicKey):
            return False
        try:
            public_key.verify(signature, data, ec.ECDSA(hashes.SHA256()))
        except (InvalidSignature, ValueError):
            return False
        return True

    def ca_fingerprint(self) -> str:
        return fingerprint(self.ca_cert())

    def server_context(self) -> ssl.SSLContext:
        """TLS for the appliance's ports: client certificates optional, verified against our CA."""
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.minimum_version = ssl.TLSVersion.TLSv1_2
        ctx.load_cert_chain(self.server_cert_path, self.server_key_path, password=self._password)
        ctx.load_verify_locations(cafile=str(self.ca_cert_path))
        ctx.verify_mode = ssl.CERT_OPTIONAL
        return ctx

    def sign_client(self, csr_pem: str, server_id: str) -> str:
        cert = issue_client_cert(self.ca_cert(), self.ca_key(), csr_pem, server_id)
        return cert_pem(cert).decode()


def verify_pinned_ca(ca_pem: bytes, expected: str) -> x509.Certificate:
    """Check that a CA certificate fetched from an appliance is the one the admin pinned."""
    try:
        cert = x509.load_pem_x509_certificate(ca_pem)
    except ValueError as exc:
        raise FingerprintMismatch("The appliance sent no valid CA certificate: is this a Godwit appliance?") from exc
    got = fingerprint(cert)
    if got != expected:
        raise FingerprintMismatch(
            f"The appliance's CA fingerprint is {got}, not the {expected} you gave: check --ca-fingerprint "
            "against the console's Setup page. If they differ, you may not be talking to your appliance."
        )
    return cert

