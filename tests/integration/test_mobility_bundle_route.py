"""The management port serves the CA certificate and the self-contained mobility bundle to sources that are not
registered yet, and the install line that ``godwit setup show`` prints works against a real appliance: it checks
the CA by its fingerprint, downloads the bundle over TLS verified with that CA, unpacks it and runs its
``install.sh`` with the appliance, fingerprint and passphrase file (and the disks the admin adds)."""

from __future__ import annotations

import hashlib
import http.client
import io
import json
import os
import re
import shutil
import ssl
import subprocess
import tarfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509

from engine import pki
from engine.links import HEADER
from engine.mobility_install import BUNDLES_ENV, DISK_PLACEHOLDER, install_command
from tests.appliance import Appliance

MiB = 1 << 20
TAR = shutil.which("tar")


@pytest.fixture(scope="module")
def bundles(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("bundles")


@pytest.fixture(scope="module")
def app(tmp_path_factory: pytest.TempPathFactory, bundles: Path) -> Iterator[Appliance]:
    """One real engine for the module, serving the bundles of ``bundles`` (each test puts there what it needs)."""
    appliance = Appliance(tmp_path_factory.mktemp("appliance"))
    appliance.start(env={BUNDLES_ENV: str(bundles)})
    yield appliance
    appliance.stop()


@pytest.fixture
def shelf(bundles: Path) -> Iterator[Path]:
    """The bundles folder, emptied before and after the test."""
    for path in bundles.iterdir():
        shutil.rmtree(path) if path.is_dir() and not path.is_symlink() else path.unlink()
    yield bundles
    for path in bundles.iterdir():
        shutil.rmtree(path) if path.is_dir() and not path.is_symlink() else path.unlink()


def _get(app: Appliance, path: str, *, method: str = "GET", ca: Path | None = None, host: str = "127.0.0.1",
         headers: dict[str, str] | None = None) -> tuple[int, dict[str, str], bytes]:
    """One request without a client certificate; the server verified against ``ca`` (host name included) when
    given, not verified at all otherwise (as a source does before it has checked the fingerprint)."""
    ctx = ssl._create_unverified_context() if ca is None else ssl.create_default_context(cafile=str(ca))
    conn = http.client.HTTPSConnection(host, app.management_port, context=ctx, timeout=10)
    try:
        conn.request(method, path, headers=headers or {})
        resp = conn.getresponse()
        return resp.status, {k.lower(): v for k, v in resp.getheaders()}, resp.read()
    finally:
        conn.close()


def _fake_bundle(folder: Path, version: str, *, record: Path | None = None, size: int = 0) -> Path:
    """``godwit-mobility-VERSION-linux-x86_64.tar.gz`` whose ``install.sh`` writes its folder and arguments, one a
    line, to ``record`` (and ``size`` bytes of random payload, so that the download is not trivial)."""
    top = f"godwit-mobility-{version}"
    script = f'#!/bin/sh\nprintf "%s\\n" "$(basename "$PWD")" "$@" > {record or "/dev/null"}\n'.encode()
    path = folder / f"{top}-linux-x86_64.tar.gz"
    with tarfile.open(path, "w:gz") as tar:
        for name, data, mode in ((f"{top}/install.sh", script, 0o755), (f"{top}/payload.bin", os.urandom(size), 0o644)):
            info = tarfile.TarInfo(name)
            info.size, info.mode = len(data), mode
            tar.addfile(info, io.BytesIO(data))
    return path


def _run_line(line: str, cwd: Path, shims: Path) -> subprocess.CompletedProcess[str]:
    """Run the install line with bash, as an admin pastes it, in ``cwd``, with the test's ``sudo`` (runs its
    arguments) and ``tar`` (notes that it ran) first on the PATH."""
    return subprocess.run(["bash", "-c", line], cwd=cwd, capture_output=True, text=True, timeout=60,
                          env={**os.environ, "PATH": f"{shims}:{os.environ['PATH']}", "TMPDIR": str(cwd)},
                          stdin=subprocess.DEVNULL)


@pytest.fixture
def source(tmp_path: Path) -> dict[str, Path]:
    """A source server's working folder holding ``passphrase.txt``, and shims for sudo and tar."""
    work, shims = tmp_path / "work", tmp_path / "shims"
    work.mkdir()
    shims.mkdir()
    (work / "passphrase.txt").write_text("written by the admin\n")
    tar_log = tmp_path / "tar-ran"
    (shims / "sudo").write_text('#!/bin/sh\nexec "$@"\n')
    (shims / "tar").write_text(f'#!/bin/sh\necho "$@" >> {tar_log}\nexec {TAR} "$@"\n')
    for shim in shims.iterdir():
        shim.chmod(0o755)
    return {"work": work, "shims": shims, "tar_log": tar_log, "record": tmp_path / "install-args"}


def _fingerprint_of(pem: bytes) -> str:
    return pki.fingerprint(x509.load_pem_x509_certificate(pem))


def test_ca_pem_is_the_certificate_of_the_fingerprint_setup_shows(app: Appliance, tmp_path: Path) -> None:
    """``GET /v1/ca.pem`` answers without a client certificate with the CA whose SHA-256 over the DER is the
    fingerprint of ``setup show --json`` (and the same certificate as ``/v1/ca``), in management 1.3."""
    setup = app.setup()
    status, headers, pem = _get(app, "/v1/ca.pem")
    assert status == 200 and headers["content-type"] == "application/x-pem-file"
    assert headers[HEADER.lower()] == "management/1.4"
    der = x509.load_pem_x509_certificate(pem).public_bytes(pki.serialization.Encoding.DER)
    digest = hashlib.sha256(der).hexdigest().upper()
    assert ":".join(re.findall("..", digest)) == setup["ca_fingerprint"] == _fingerprint_of(pem)
    assert _get(app, "/v1/ca")[2] == pem


def test_without_a_bundle_the_route_says_so_in_one_line(app: Appliance, shelf: Path) -> None:
    """With no bundle in the folder (only files that are not bundles), ``GET /v1/mobility/bundle`` is a 404 JSON
    error of one line that says the appliance has none and how to get one, and the port closes the connection."""
    (shelf / "README.txt").write_text("not a bundle")
    (shelf / "godwit-mobility-latest-linux-x86_64.tar.gz").write_bytes(b"no version")
    status, headers, body = _get(app, "/v1/mobility/bundle")
    error = json.loads(body)
    assert status == 404 and error["code"] == "not-found", error
    assert "no mobility bundle installed" in error["message"] and str(shelf) in error["message"]
    assert "\n" not in error["message"] and headers["connection"] == "close"


def test_the_bundle_downloads_byte_exact_over_tls_verified_with_the_ca(app: Appliance, shelf: Path,
                                                                         tmp_path: Path) -> None:
    """The bundle streams with its length and an attachment file name over TLS verified against the CA fetched
    from ``/v1/ca.pem`` (host name included), byte for byte; a range of it comes as 206, so a cut-off download
    resumes."""
    bundle = _fake_bundle(shelf, "0.3.0", size=3 * MiB)
    ca = tmp_path / "ca.pem"
    ca.write_bytes(_get(app, "/v1/ca.pem")[2])
    status, headers, body = _get(app, "/v1/mobility/bundle", ca=ca, host="localhost")
    assert status == 200 and body == bundle.read_bytes()
    assert headers["content-length"] == str(bundle.stat().st_size)
    assert headers["content-disposition"] == 'attachment; filename="godwit-mobility-0.3.0-linux-x86_64.tar.gz"'
    assert headers["content-type"] == "application/gzip" and "content-encoding" not in headers
    status, headers, tail = _get(app, "/v1/mobility/bundle", ca=ca, headers={"Range": f"bytes={MiB}-"})
    assert status == 206 and tail == bundle.read_bytes()[MiB:]


def test_the_highest_version_wins(app: Appliance, shelf: Path) -> None:
    """Of several bundles the highest version by version order (0.10.0 over 0.9.0, not by text) is served;
    folders, dangling links and names that are not a bundle's are passed over."""
    for version in ("0.9.0", "0.10.0", "0.2.1"):
        (shelf / f"godwit-mobility-{version}-linux-x86_64.tar.gz").write_bytes(version.encode())
    (shelf / "godwit-mobility-9.0.0-linux-x86_64.tar.gz").mkdir()
    (shelf / "godwit-mobility-8.0.0-linux-x86_64.tar.gz").symlink_to(shelf / "gone")
    (shelf / "godwit-mobility-7.0.0-linux-aarch64.tar.gz").write_bytes(b"another machine")
    (shelf / "godwit-mobility-7.0-linux-x86_64.tar.gz").write_bytes(b"not MAJOR.MINOR.PATCH")
    status, headers, body = _get(app, "/v1/mobility/bundle")
    assert (status, body) == (200, b"0.10.0")
    assert "godwit-mobility-0.10.0-linux-x86_64.tar.gz" in headers["content-disposition"]


@pytest.mark.parametrize(("method", "path", "extra", "statuses"), [
    ("GET", "/v1/mobility/bundle/../../../../etc/passwd", {}, (404,)),
    ("GET", "/v1/mobility/%2e%2e/%2e%2e/%2e%2e/etc/passwd", {}, (404,)),
    ("GET", "/v1/mobility/bundle/godwit-mobility-0.3.0-linux-x86_64.tar.gz", {}, (404,)),
    ("GET", "/v1/mobility/bundle%00.pem", {}, (400, 404)),
    ("GET", "/v1/ca.pem/../../pki/ca.key", {}, (404,)),
    ("POST", "/v1/mobility/bundle", {}, (405,)),
    ("GET", "/v1/mobility/bundle", {HEADER: "management/2.0"}, (400,)),
    ("GET", "/v1/mobility/bundle", {"Range": "bytes=junk"}, (200, 416)),
    ("GET", "/v1/mobility/bundle", {"Range": f"bytes={10**12}-"}, (416,)),
])
def test_junk_and_traversal_get_a_clean_answer(app: Appliance, shelf: Path, method: str, path: str,
                                               extra: dict[str, str], statuses: tuple[int, ...]) -> None:
    """A path that tries to leave the route, a method or version the route does not take, or a range that is
    nonsense gets a clean answer (a 4xx, JSON where the route is ours; an unusable range the whole file), never
    a file of the appliance; the port goes on serving."""
    _fake_bundle(shelf, "0.3.0")
    status, _headers, body = _get(app, path, method=method, headers=extra)
    assert status in statuses, (status, body[:200])
    assert b"root:" not in body and b"PRIVATE KEY" not in body
    if status in (400, 404, 405):
        assert "code" in json.loads(body)
    assert _get(app, "/v1/ca.pem")[0] == 200
    assert "Traceback" not in app.log()


def test_the_install_line_of_setup_show_installs_the_bundle(app: Appliance, shelf: Path,
                                                            source: dict[str, Path]) -> None:
    """The line ``setup show --json`` carries, run with bash on a "source" with the admin's disks added, checks
    the CA, downloads and unpacks the bundle and runs its ``install.sh`` as root with ``--appliance``,
    ``--ca-fingerprint``, the passphrase file's full path and the admin's own arguments, then leaves nothing
    behind."""
    _fake_bundle(shelf, "0.3.0", record=source["record"], size=MiB)
    setup = app.setup()
    line = setup["install_command"]
    assert line.endswith(f"--disk {DISK_PLACEHOLDER}") and setup["ca_fingerprint"] in line
    line = line.replace(f"--disk {DISK_PLACEHOLDER}", "--disk /dev/vdb --disk '/dev/disk/by-id/a b' --name web-01")
    done = _run_line(line, source["work"], source["shims"])
    assert done.returncode == 0, done.stderr
    assert source["record"].read_text().splitlines() == [
        "godwit-mobility-0.3.0", "--appliance", f"{setup['host']}:{app.management_port}", "--ca-fingerprint",
        setup["ca_fingerprint"], "--passphrase-file", str(source["work"] / "passphrase.txt"),
        "--disk", "/dev/vdb", "--disk", "/dev/disk/by-id/a b", "--name", "web-01"]
    assert sorted(p.name for p in source["work"].iterdir()) == ["passphrase.txt"]  # the temporary folder is gone


def test_the_install_line_needs_no_address_in_the_certificate(app: Appliance, shelf: Path,
                                                              source: dict[str, Path]) -> None:
    """Reached by an address the port certificate does not name (127.0.0.2: as a NAT address or a DNS alias),
    the line still verifies the download against the pinned CA and installs."""
    cert = x509.load_pem_x509_certificate((app.data_dir / "pki" / "server.crt").read_bytes())
    names = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert "127.0.0.2" not in [str(n.value) for n in names]
    _fake_bundle(shelf, "0.3.0", record=source["record"])
    line = install_command(host="127.0.0.2", management_port=app.management_port,
                           ca_fingerprint=app.setup()["ca_fingerprint"])
    done = _run_line(line, source["work"], source["shims"])
    assert done.returncode == 0, done.stderr
    assert source["record"].read_text().splitlines()[:3] == ["godwit-mobility-0.3.0", "--appliance",
                                                             f"127.0.0.2:{app.management_port}"]


def test_a_wrong_fingerprint_stops_the_line_before_anything_is_downloaded(app: Appliance, shelf: Path,
                                                                         source: dict[str, Path]) -> None:
    """With a fingerprint that is not the appliance's CA's, the line stops with one message naming both, before
    the bundle is downloaded or unpacked, and installs nothing."""
    _fake_bundle(shelf, "0.3.0", record=source["record"])
    setup = app.setup()
    wrong = ":".join(["AB"] * 32)
    line = setup["install_command"].replace(setup["ca_fingerprint"], wrong)
    served = app.log().count("mobility-bundle.serve")
    done = _run_line(line, source["work"], source["shims"])
    assert done.returncode != 0
    assert f"has the fingerprint {setup['ca_fingerprint']}, not {wrong}" in done.stderr, done.stderr
    assert "Nothing was installed" in done.stderr
    assert not source["tar_log"].exists() and not source["record"].exists()
    assert app.log().count("mobility-bundle.serve") == served
    assert sorted(p.name for p in source["work"].iterdir()) == ["passphrase.txt"]


def test_the_install_line_says_why_it_cannot_install(app: Appliance, shelf: Path, source: dict[str, Path]) -> None:
    """Without a passphrase file the line stops at once and says to write it; with no bundle on the appliance it
    shows the appliance's one-line reason and unpacks nothing."""
    setup: dict[str, Any] = app.setup()
    (source["work"] / "passphrase.txt").unlink()
    done = _run_line(setup["install_command"], source["work"], source["shims"])
    assert done.returncode != 0 and "Write the registration passphrase" in done.stderr, done.stderr
    (source["work"] / "passphrase.txt").write_text("written by the admin\n")
    done = _run_line(setup["install_command"], source["work"], source["shims"])
    assert done.returncode != 0 and "no mobility bundle installed" in done.stderr, done.stderr
    assert not source["tar_log"].exists() and not source["record"].exists()
