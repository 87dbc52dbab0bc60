from __future__ import annotations

import ssl
from pathlib import Path

import pytest
from cryptography import x509

from engine import pki
from engine.errors import BadInput, FingerprintMismatch


def test_fingerprint_parsing_accepts_what_admins_paste() -> None:
    """The CA fingerprint is accepted however admins paste it; anything else is refused."""
    ca, _ = pki.create_ca("a")
    fp = pki.fingerprint(ca)
    assert len(fp) == 95 and fp.count(":") == 31
    bare = fp.replace(":", "")
    for text in (fp, fp.lower(), bare, f"SHA256:{bare}", f"  {fp}\n"):
        assert pki.parse_fingerprint(text) == fp
    for bad in ("", "abc", bare[:-2], bare + "00", "ZZ" + bare[2:]):
        with pytest.raises(BadInput):
            pki.parse_fingerprint(bad)


def test_client_certificate_takes_only_the_key_from_the_request() -> None:
    """A client certificate names the server id the appliance chose, never the subject of the CSR."""
    ca, ca_key = pki.create_ca("a")
    key = pki.new_key()
    cert = pki.issue_client_cert(ca, ca_key, pki.make_csr(key, "evil CN").decode(), "server-id-1")
    assert cert.subject.get_attributes_for_oid(x509.NameOID.COMMON_NAME)[0].value == "server-id-1"
    assert cert.issuer == ca.subject
    cert.verify_directly_issued_by(ca)
    with pytest.raises(BadInput):
        pki.issue_client_cert(ca, ca_key, "-----BEGIN CERTIFICATE REQUEST-----\nAAAA\n", "x")


def test_pinned_ca_must_match() -> None:
    """A mobility service accepts only the CA whose fingerprint the admin gave it."""
    ca, _ = pki.create_ca("a")
    other, _ = pki.create_ca("b")
    assert pki.verify_pinned_ca(pki.cert_pem(ca), pki.fingerprint(ca)) == ca
    with pytest.raises(FingerprintMismatch):
        pki.verify_pinned_ca(pki.cert_pem(other), pki.fingerprint(ca))
    with pytest.raises(FingerprintMismatch):
        pki.verify_pinned_ca(b"<html>not a cert</html>", pki.fingerprint(ca))


def test_appliance_pki_keys_are_encrypted_and_load(tmp_path: Path) -> None:
    """The CA key is stored encrypted and loads only with its password; the port asks for client certificates."""
    store = pki.AppliancePKI(tmp_path, b"secret-password")
    store.create("appliance-1")
    assert b"ENCRYPTED" in store.ca_key_path.read_bytes()
    ctx = store.server_context()
    assert isinstance(ctx, ssl.SSLContext)
    assert ctx.verify_mode == ssl.CERT_OPTIONAL
    wrong = pki.AppliancePKI(tmp_path, b"wrong")
    with pytest.raises((ValueError, TypeError)):
        wrong.ca_key()
