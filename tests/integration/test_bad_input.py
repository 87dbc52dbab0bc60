"""Bad input on the management port: a clear error, that connection closed, one warning line, no traceback.

Every case runs against one real engine while a registered mobility service keeps heartbeating;
at the end it must still be healthy and the daemon still serving.
"""

from __future__ import annotations

import http.client
import json
import socket
import ssl
from collections.abc import Iterator
from pathlib import Path

import pytest

from engine import pki
from tests.appliance import Appliance, Mobility, wait_for


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Appliance, Mobility]]:
    app = Appliance(tmp_path_factory.mktemp("badinput"))
    app.start()
    mob = Mobility(app, "steady-01").start()
    wait_for(lambda: app.servers().get("steady-01"), what="steady-01 to register")
    yield app, mob
    mob.stop()
    app.stop()


class LogWatch:
    def __init__(self, app: Appliance) -> None:
        self.path = app.data_dir / "logs" / "replication-manager.log"
        self.start = self.path.stat().st_size

    def new_lines(self) -> list[str]:
        with open(self.path) as f:
            f.seek(self.start)
            return [ln for ln in f.read().splitlines() if ln.strip()]

    def expect_one_warning(self, needle: str) -> str:
        lines = wait_for(lambda: [ln for ln in self.new_lines() if needle in ln], timeout=10,
                         what=f"a log line with {needle!r}")
        assert len(lines) == 1, lines
        assert " WARNING " in lines[0]
        assert not any("Traceback" in ln for ln in self.new_lines())
        return lines[0]


def tls(app: Appliance, *, cert: tuple[Path, Path] | None = None) -> http.client.HTTPSConnection:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.load_verify_locations(app.data_dir / "pki" / "ca.crt")
    if cert:
        ctx.load_cert_chain(*cert)
    return http.client.HTTPSConnection("127.0.0.1", app.management_port, context=ctx, timeout=10)


def raw(app: Appliance, payload: bytes) -> bytes:
    with socket.create_connection(("127.0.0.1", app.management_port), timeout=15) as s:
        s.sendall(payload)
        chunks = []
        while chunk := s.recv(65536):  # returns b"" once the appliance closes the connection
            chunks.append(chunk)
        return b"".join(chunks)


def test_garbage_bytes(served: tuple[Appliance, Mobility]) -> None:
    """Bytes that are not TLS on the management port are closed without an answer, with one warning line."""
    app, _ = served
    watch = LogWatch(app)
    assert raw(app, b"\x00\x01garbage\xff" * 20) == b""
    watch.expect_one_warning("is not TLS")


def test_plain_http(served: tuple[Appliance, Mobility]) -> None:
    """Plain HTTP on the management port gets a 400 that says HTTPS only, with one warning line."""
    app, _ = served
    watch = LogWatch(app)
    answer = raw(app, b"GET /v1/ca HTTP/1.1\r\nHost: x\r\n\r\n")
    assert answer.startswith(b"HTTP/1.1 400 ")
    assert b"HTTPS only" in answer
    watch.expect_one_warning("plain HTTP")


def test_tls_garbage_after_handshake(served: tuple[Appliance, Mobility]) -> None:
    """Junk that is not HTTP after the TLS handshake gets a 400 and a closed connection, with one warning line."""
    app, _ = served
    watch = LogWatch(app)
    ctx = ssl.create_default_context(cafile=str(app.data_dir / "pki" / "ca.crt"))
    ctx.check_hostname = False
    with socket.create_connection(("127.0.0.1", app.management_port)) as s, ctx.wrap_socket(s) as t:
        t.sendall(b"\x01\x02 not http at all\r\n\r\n")
        answer = t.recv(4096)
        assert answer.split(b"\r\n")[0] in (b"HTTP/1.0 400 Bad Request", b"HTTP/1.1 400 Bad Request")
        assert t.recv(4096) == b""  # closed
    watch.expect_one_warning("Error handling request")


@pytest.mark.parametrize(("body", "why"), [
    (b"{not json", "not valid JSON"),
    (b"[1, 2, 3]", "must be a JSON object"),
    (json.dumps({"passphrase": 5}).encode(), "must be a non-empty string"),
    (json.dumps({"passphrase": "x" * 20, "csr": "-----BEGIN nonsense", "name": "n", "hostname": "h", "os": "o",
                 "agent_version": "1", "disks": []}).encode(), None),
    (json.dumps({"passphrase": "x" * 20, "csr": "c", "name": "../etc", "hostname": "h", "os": "o",
                 "agent_version": "1", "disks": []}).encode(), "may not contain"),
    (json.dumps({"passphrase": "x", "csr": "c", "name": "n", "hostname": "h", "os": "o", "agent_version": "1",
                 "disks": [{"path": "/d", "size": -1}]}).encode(), "non-negative integer"),
])
def test_malformed_registration(served: tuple[Appliance, Mobility], body: bytes, why: str | None) -> None:
    """A malformed registration gets a JSON error naming the problem and a closed connection, one warning line."""
    app, _ = served
    watch = LogWatch(app)
    conn = tls(app)
    conn.request("POST", "/v1/register", body=body, headers={"Content-Type": "application/json"})
    resp = conn.getresponse()
    data = json.loads(resp.read())
    assert resp.status in (400, 403)
    assert resp.getheader("Connection") == "close"
    assert data["code"] in ("bad-request", "wrong-passphrase", "bad-input")
    if why:
        assert why in data["message"]
    conn.close()
    watch.expect_one_warning("refused POST /v1/register")


def test_unknown_route_and_method(served: tuple[Appliance, Mobility]) -> None:
    """An unknown path gets a 404 and a wrong method a 405, each with a message and one warning line."""
    app, _ = served
    for method, path, status in (("GET", "/admin/../../etc/passwd", 404), ("DELETE", "/v1/register", 405)):
        watch = LogWatch(app)
        conn = tls(app)
        conn.request(method, path)
        resp = conn.getresponse()
        data = json.loads(resp.read())
        assert resp.status == status
        assert data["message"]
        conn.close()
        watch.expect_one_warning(f"refused {method}")


def test_oversized_body(served: tuple[Appliance, Mobility]) -> None:
    """A registration body over the size limit gets a 413 saying it is too large, with one warning line."""
    app, _ = served
    watch = LogWatch(app)
    conn = tls(app)
    conn.request("POST", "/v1/register", body=b"{" + b" " * (2 * 1024 * 1024) + b"}",
                 headers={"Content-Type": "application/json"})
    resp = conn.getresponse()
    data = json.loads(resp.read())
    assert resp.status == 413
    assert "larger than" in data["message"]
    conn.close()
    watch.expect_one_warning("413")


def test_heartbeat_without_certificate(served: tuple[Appliance, Mobility]) -> None:
    """A heartbeat without a client certificate is refused with 401 certificate-required, one warning line."""
    app, _ = served
    watch = LogWatch(app)
    conn = tls(app)
    conn.request("POST", "/v1/heartbeat", body=b"{}", headers={"Content-Type": "application/json"})
    resp = conn.getresponse()
    assert resp.status == 401
    assert json.loads(resp.read())["code"] == "certificate-required"
    watch.expect_one_warning("refused POST /v1/heartbeat")


def test_client_certificate_from_another_ca(served: tuple[Appliance, Mobility], tmp_path: Path) -> None:
    """A client certificate from another CA fails the TLS handshake, logged as one warning line."""
    app, _ = served
    other_ca, other_key = pki.create_ca("impostor")
    key = pki.new_key()
    cert = pki.issue_client_cert(other_ca, other_key, pki.make_csr(key, "x").decode(), "steady-01")
    (tmp_path / "c.crt").write_bytes(pki.cert_pem(cert))
    (tmp_path / "c.key").write_bytes(pki.key_pem(key, None))
    watch = LogWatch(app)
    conn = tls(app, cert=(tmp_path / "c.crt", tmp_path / "c.key"))
    with pytest.raises((ssl.SSLError, ConnectionError, http.client.RemoteDisconnected)):
        conn.request("POST", "/v1/heartbeat", body=b"{}", headers={"Content-Type": "application/json"})
        conn.getresponse().read()
    conn.close()
    line = watch.expect_one_warning("TLS handshake")
    assert "CERTIFICATE_VERIFY_FAILED" in line or "unknown ca" in line.lower() or "certificate" in line.lower()


def test_silent_connection_is_closed_without_blocking_others(served: tuple[Appliance, Mobility]) -> None:
    """A connection that sends nothing does not keep the management port from serving others."""
    app, _ = served
    idle = socket.create_connection(("127.0.0.1", app.management_port))
    try:
        # While one connection says nothing, everyone else is served.
        conn = tls(app)
        conn.request("GET", "/v1/ca")
        assert conn.getresponse().status == 200
        conn.close()
    finally:
        idle.close()


def test_everyone_else_kept_being_served(served: tuple[Appliance, Mobility]) -> None:
    """After all that bad input, the registered server still heartbeats, is healthy, and no traceback was logged."""
    app, mob = served
    before = app.servers()["steady-01"]["last_heartbeat"]
    wait_for(lambda: app.servers()["steady-01"]["last_heartbeat"] > before, what="steady-01's next heartbeat")
    assert app.servers()["steady-01"]["health"] == "healthy"
    assert mob.proc is not None and mob.proc.poll() is None
    assert "Traceback" not in app.log("replication-manager")
    assert "Traceback" not in app.log("engine")
