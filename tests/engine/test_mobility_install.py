"""The install line of the mobility bundle and where the appliance finds bundles (engine/mobility_install.py):
the line is one shell-safe command whatever the appliance's values, it resumes a download the appliance's port
cut off, and the newest bundle is chosen by version order. The line against a real appliance is in
tests/integration/test_mobility_bundle_route.py."""

from __future__ import annotations

import io
import os
import shlex
import ssl
import subprocess
import tarfile
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import ClassVar

import pytest

from engine import pki
from engine.mobility_install import BUNDLES_ENV, DISK_PLACEHOLDER, bundles_dir, install_command, newest_bundle

FP = ":".join(["5B"] * 32)


def test_the_line_is_one_shell_word_list_ending_with_the_disk_to_replace() -> None:
    """The line splits into ``sh -c SCRIPT godwit-install HOST PORT FP passphrase.txt --disk /dev/sdX``: the
    appliance's values are arguments, never pasted into the script, an IPv6 address is bracketed, and the disk
    placeholder is last, for the admin to replace."""
    words = shlex.split(install_command(host="appliance.acme.lan", management_port=8443, ca_fingerprint=FP))
    assert words[:2] == ["sh", "-c"] and words[3:] == ["godwit-install", "appliance.acme.lan", "8443", FP,
                                                       "passphrase.txt", "--disk", DISK_PLACEHOLDER]
    assert "appliance.acme.lan" not in words[2] and FP not in words[2]
    words = shlex.split(install_command(host="fd00::7", management_port=443, ca_fingerprint=FP))
    assert words[4] == "[fd00::7]"
    odd = shlex.split(install_command(host="x'; rm -rf /; '", management_port=443, ca_fingerprint=FP))
    assert odd[4] == "x'; rm -rf /; '"  # quoted as one argument, whatever the appliance says its host is


def test_the_newest_bundle_is_chosen_by_version(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """0.10.0 beats 0.9.0 (numbers, not text); names that are not a bundle's and folders are passed over; a
    folder that does not exist holds none; ``$GODWIT_MOBILITY_BUNDLES`` overrides the installation's folder."""
    assert newest_bundle(tmp_path / "missing") is None
    for version in ("0.9.0", "0.10.0", "1.0"):
        (tmp_path / f"godwit-mobility-{version}-linux-x86_64.tar.gz").write_bytes(version.encode())
    (tmp_path / "godwit-mobility-2.0.0-linux-x86_64.tar.gz").mkdir()
    (tmp_path / "godwit-mobility-3.0.0-linux-x86_64.tar.gz.part").write_bytes(b"half")
    bundle = newest_bundle(tmp_path)
    assert bundle is not None and (bundle.version, bundle.size) == ("0.10.0", 6)
    assert bundle.filename == "godwit-mobility-0.10.0-linux-x86_64.tar.gz"
    monkeypatch.setenv(BUNDLES_ENV, str(tmp_path))
    assert bundles_dir() == tmp_path
    monkeypatch.delenv(BUNDLES_ENV)
    assert bundles_dir().parts[-3:] == ("share", "godwit", "mobility")


class _CuttingAppliance(BaseHTTPRequestHandler):
    """Serves ``/v1/ca.pem`` and a bundle whose first two downloads are cut off a third of the way in (as the
    management port closes a connection without a client certificate after 60 s); ranges as aiohttp does."""

    ca_pem: ClassVar[bytes] = b""
    bundle: ClassVar[bytes] = b""
    starts: ClassVar[list[int]] = []

    def log_message(self, format: str, *args: object) -> None:
        pass

    def do_GET(self) -> None:
        if self.path == "/v1/ca.pem":
            self.send_response(200)
            self.send_header("Content-Length", str(len(self.ca_pem)))
            self.end_headers()
            self.wfile.write(self.ca_pem)
            return
        start = int(self.headers.get("Range", "bytes=0-").removeprefix("bytes=").rstrip("-") or 0)
        self.starts.append(start)
        body = self.bundle[start:]
        self.send_response(206 if start else 200)
        self.send_header("Content-Length", str(len(body)))
        if start:
            self.send_header("Content-Range", f"bytes {start}-{len(self.bundle) - 1}/{len(self.bundle)}")
        self.end_headers()
        if len(self.starts) <= 2:
            self.wfile.write(body[: len(body) // 3])
            self.wfile.flush()
            self.connection.shutdown(2)
            return
        self.wfile.write(body)


@pytest.fixture
def cutting_appliance(tmp_path: Path) -> Iterator[tuple[int, str, Path]]:
    """A TLS server with a CA-issued port certificate like the appliance's; yields its port, the CA fingerprint
    and the file ``install.sh`` writes its arguments to."""
    ca, ca_key = pki.create_ca("test")
    cert, key = pki.issue_server_cert(ca, ca_key)
    (tmp_path / "port.pem").write_bytes(pki.cert_pem(cert) + pki.cert_pem(ca) + pki.key_pem(key, None))
    record = tmp_path / "install-args"
    script = f'#!/bin/sh\nprintf "%s\\n" "$@" > {record}\n'.encode()
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        for name, data, mode in (("godwit-mobility-0.3.0/install.sh", script, 0o755),
                                 ("godwit-mobility-0.3.0/payload.bin", os.urandom(1 << 20), 0o644)):
            info = tarfile.TarInfo(name)
            info.size, info.mode = len(data), mode
            tar.addfile(info, io.BytesIO(data))
    handler = type("Handler", (_CuttingAppliance,), {"ca_pem": pki.cert_pem(ca), "bundle": buf.getvalue(),
                                                     "starts": []})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(tmp_path / "port.pem")
    server.socket = ctx.wrap_socket(server.socket, server_side=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server.server_address[1], pki.fingerprint(ca), record
    finally:
        server.shutdown()
        server.server_close()
    assert handler.starts[0] == 0 and len(handler.starts) == 3 and handler.starts[1] < handler.starts[2]


def test_a_cut_off_download_resumes_and_installs(cutting_appliance: tuple[int, str, Path], tmp_path: Path) -> None:
    """Cut off twice, the line resumes the download where it stopped (not from the start), says so, and installs
    the whole bundle: tar would refuse a bundle with a part missing or twice."""
    port, fingerprint, record = cutting_appliance
    work = tmp_path / "work"
    work.mkdir()
    (work / "passphrase.txt").write_text("written by the admin\n")
    line = install_command(host="127.0.0.1", management_port=port, ca_fingerprint=fingerprint)
    done = subprocess.run(["bash", "-c", line.replace(DISK_PLACEHOLDER, "/dev/vdb")], cwd=work, capture_output=True,
                          text=True, timeout=60, stdin=subprocess.DEVNULL,
                          env={**os.environ, "TMPDIR": str(tmp_path)})
    assert done.returncode == 0, done.stderr
    assert done.stderr.count("The download was cut off; resuming.") == 2
    assert record.read_text().splitlines() == ["--appliance", f"127.0.0.1:{port}", "--ca-fingerprint", fingerprint,
                                               "--passphrase-file", str(work / "passphrase.txt"), "--disk", "/dev/vdb"]
