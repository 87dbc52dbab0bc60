"""Every port and socket of a real engine checks the protocol version of what it is sent: a newer
minor version (with fields this engine does not know) is served, another major version is refused
with one line naming both, and every answer says which version the engine speaks."""

from __future__ import annotations

import asyncio
import http.client
import json
import socket
import ssl
from typing import Any

from engine import pki
from engine.client import AdminClient
from engine.config import DataDir
from engine.errors import VersionMismatch
from engine.links import HEADER, Link
from engine.links.admin import ADMIN
from engine.links.agent import AGENT_LINK
from tests.appliance import Appliance


def _tls(app: Appliance, port: int) -> http.client.HTTPSConnection:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.load_verify_locations(app.data_dir / "pki" / "ca.crt")
    return http.client.HTTPSConnection("127.0.0.1", port, context=ctx, timeout=10)


def _ask(conn: http.client.HTTPConnection, method: str, path: str, version: str | None,
         body: dict[str, Any] | None = None) -> tuple[int, dict[str, Any] | bytes, str | None]:
    headers = {"Content-Type": "application/json"}
    if version is not None:
        headers[HEADER] = version
    conn.request(method, path, body=None if body is None else json.dumps(body).encode(), headers=headers)
    resp = conn.getresponse()
    raw = resp.read()
    conn.close()
    data = json.loads(raw) if resp.getheader("Content-Type", "").startswith("application/json") else raw
    return resp.status, data, resp.getheader(HEADER)


def test_management_port_serves_newer_minor_versions_and_refuses_other_majors(appliance: Appliance) -> None:
    """A source of management protocol 1.x registers even with fields this engine does not know; one
    of 2.x is refused in one line naming both versions, before anything is done for it."""
    status, data, version = _ask(_tls(appliance, appliance.management_port), "GET", "/v1/ca", "management/2.0")
    assert (status, version) == (400, "management/1.4")
    assert isinstance(data, dict) and data["code"] == "protocol-version"
    assert "management protocol 2.0" in data["message"] and "1.4" in data["message"]
    key = pki.new_key()
    registration = {"passphrase": appliance.setup()["passphrase"], "csr": pki.make_csr(key, "later-01").decode(),
                    "name": "later-01", "hostname": "later", "os": "Linux", "agent_version": "9.9",
                    "disks": [{"path": "/dev/vda", "size": 1 << 30, "encryption": "added in 1.5"}],
                    "boot_mode": "uefi (added in 1.5)"}
    status, data, _ = _ask(_tls(appliance, appliance.management_port), "POST", "/v1/register", "management/2.0",
                           registration)
    assert status == 400 and "later-01" not in appliance.servers()
    status, data, version = _ask(_tls(appliance, appliance.management_port), "POST", "/v1/register",
                                 "management/1.5", registration)
    assert (status, version) == (200, "management/1.4"), data
    assert isinstance(data, dict) and data["name"] == "later-01" and data["replicate"] is False
    assert appliance.servers()["later-01"]["disks"][0]["size"] == 1 << 30


def test_data_port_refuses_another_major_version(appliance: Appliance) -> None:
    """The data port refuses a sender of data protocol 2.x before it looks at anything else."""
    status, data, version = _ask(_tls(appliance, appliance.data_port), "GET", "/v1/streams", "data/2.0")
    assert (status, version) == (400, "data/1.2")
    assert isinstance(data, dict) and data["code"] == "protocol-version" and "data protocol 2.0" in data["message"]
    status, data, _ = _ask(_tls(appliance, appliance.data_port), "GET", "/v1/streams", "data/1.3")
    assert status == 401 and isinstance(data, dict) and data["code"] == "certificate-required"


class _Unix(http.client.HTTPConnection):
    def __init__(self, path: str) -> None:
        super().__init__("godwit", timeout=10)
        self._path = path

    def connect(self) -> None:
        self.sock = socket.socket(socket.AF_UNIX)
        self.sock.settimeout(10)
        self.sock.connect(self._path)


def test_admin_api_and_agent_link_check_versions(appliance: Appliance) -> None:
    """The CLI/console socket and the agent link refuse another major version and stamp every answer."""
    admin = str(DataDir(appliance.data_dir).admin_socket)
    agent = str(DataDir(appliance.data_dir).agent_socket)
    newer = f"admin/1.{ADMIN.minor + 1}"  # a newer minor version is served
    assert _ask(_Unix(admin), "GET", "/v1/engine", newer)[::2] == (200, f"admin/1.{ADMIN.minor}")
    status, data, _ = _ask(_Unix(admin), "GET", "/v1/engine", "admin/2.0")
    assert status == 400 and isinstance(data, dict) and "admin API 2.0" in data["message"]
    status, data, version = _ask(_Unix(agent), "GET", "/agent/replicating", "agent/0.1")
    assert (status, version) == (400, f"agent/1.{AGENT_LINK.minor}") and isinstance(data, dict) \
        and "agent link 0.1" in data["message"]
    assert _ask(_Unix(agent), "GET", "/agent/replicating", None)[0] == 200  # no header: 1.0


def test_a_cli_of_another_major_version_says_so(appliance: Appliance) -> None:
    """An admin client of admin API 2.x gets one clear line, not a misread answer."""
    async def main() -> None:
        client = AdminClient(DataDir(appliance.data_dir))
        client.link = Link("admin", 2, 0, "admin API")
        try:
            await client.engine_status()
        finally:
            await client.aclose()

    try:
        asyncio.run(main())
    except VersionMismatch as exc:
        assert "admin API 2.0" in exc.message and f"1.{ADMIN.minor}" in exc.message
    else:
        raise AssertionError("a 2.0 admin client was served")
