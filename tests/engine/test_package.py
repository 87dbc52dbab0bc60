"""Agent packages: built deterministically from a checkout, unpacked whole or not at all.

Real archives, real files; the full-disk case runs on a small ext4 the test makes on a loop device
under its own temporary folder (root only), never on a file system it did not create.
"""

from __future__ import annotations

import io
import json
import os
import shutil
import tarfile
from pathlib import Path

import pytest

from engine.errors import UpdateError
from engine.links.admin import ADMIN
from engine.links.agent import AGENT_LINK
from engine.links.data import DATA
from engine.links.management import MANAGEMENT
from engine.updater.package import (
    MAX_MEMBERS,
    MAX_PACKAGE_BYTES,
    PACKAGE_FORMAT,
    PackageManifest,
    build_package,
    links_of,
    parse_version,
    read_manifest,
    unpack_package,
)
from tests.source_disks import Balloon, small_fs

REPO_ROOT = Path(__file__).resolve().parents[2]
SHIPPED = (".py", ".json", ".txt")


@pytest.fixture(scope="module")
def checkout(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A still copy of this checkout's engine/ (other work may change the real one while tests run)."""
    root = tmp_path_factory.mktemp("checkout")
    shutil.copytree(REPO_ROOT / "engine", root / "engine", ignore=shutil.ignore_patterns("__pycache__"))
    return root


@pytest.fixture(scope="module")
def package(checkout: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_package(checkout, name="process-server", version="0.2.0", out_dir=tmp_path_factory.mktemp("out"))


def engine_files(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted((root / "engine").rglob("*"))
            if p.is_file() and "__pycache__" not in p.parts and p.name.endswith(SHIPPED)}


def leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.startswith(".partial-"))


def forge(path: Path, members: list[tuple[tarfile.TarInfo, bytes | None]], *, manifest: bool = True) -> Path:
    """A package made by hand: a good manifest (process-server 0.2.0) and then ``members``."""
    with tarfile.open(path, "w:gz") as tar:
        if manifest:
            good = PackageManifest("process-server", "0.2.0", "engine.process_server", {})
            data = json.dumps(good.to_json()).encode()
            info = tarfile.TarInfo("agent.json")
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
        for info, data in members:
            tar.addfile(info, io.BytesIO(data) if data is not None else None)
    return path


def regular(name: str, data: bytes = b"x") -> tuple[tarfile.TarInfo, bytes]:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    return info, data


# --- building -----------------------------------------------------------------------------------------
def test_build_and_unpack_round_trip(checkout: Path, package: Path, tmp_path: Path) -> None:
    """A built package unpacks to exactly the checkout's shipped engine files and a manifest with its name,
    version, module and link versions; members are sorted, without times or owners, 0644 or 0755."""
    dest = tmp_path / "agents" / "process-server" / "0.2.0"
    manifest = unpack_package(package, dest, name="process-server", version="0.2.0")

    expected_links = {link.name: f"{link.major}.{link.minor}" for link in (MANAGEMENT, DATA, AGENT_LINK, ADMIN)}
    assert manifest == PackageManifest(name="process-server", version="0.2.0", module="engine.process_server",
                                       links=expected_links)
    assert read_manifest(package) == manifest
    assert json.loads((dest / "agent.json").read_text())["format"] == PACKAGE_FORMAT
    unpacked = engine_files(dest)
    assert unpacked == engine_files(checkout)
    assert "engine/updater/package.py" in unpacked and len(unpacked) > 50
    assert sorted(p.name for p in dest.iterdir()) == ["agent.json", "engine"]
    assert not list(dest.rglob("__pycache__"))
    assert leftovers(dest.parent) == []
    with tarfile.open(package) as tar:
        members = tar.getmembers()
    assert [m.name for m in members] == sorted(m.name for m in members)
    assert {(m.mtime, m.uid, m.gid, m.uname, m.gname) for m in members} == {(0, 0, 0, "", "")}
    assert {m.mode for m in members} <= {0o644, 0o755}


def test_build_is_deterministic(checkout: Path, package: Path, tmp_path: Path) -> None:
    """Another checkout with other file times, compiled files and unshipped notes builds the same bytes; another
    agent builds different ones, with its own module."""
    other_checkout = tmp_path / "other"
    shutil.copytree(checkout / "engine", other_checkout / "engine")
    for path in (other_checkout / "engine").rglob("*.py"):
        os.utime(path, (1_000_000_000, 1_000_000_000))  # another checkout time: must not matter
    (other_checkout / "engine" / "__pycache__").mkdir(exist_ok=True)
    (other_checkout / "engine" / "__pycache__" / "x.cpython-311.pyc").write_bytes(b"cache")
    (other_checkout / "engine" / "notes.md").write_text("not shipped")
    again = build_package(other_checkout, name="process-server", version="0.2.0", out_dir=tmp_path)
    assert again.name == "process-server-0.2.0.tar.gz"
    assert again.read_bytes() == package.read_bytes()
    other = build_package(other_checkout, name="log-processor", version="0.2.0", out_dir=tmp_path)
    assert other.read_bytes() != package.read_bytes()
    assert read_manifest(other).module == "engine.log_processor"


def test_links_are_read_from_the_checkout_not_this_process(checkout: Path, tmp_path: Path) -> None:
    """The link versions in a package come from the checkout's source, not from the engine doing the build, and
    reading them writes nothing into the checkout."""
    tree = tmp_path / "tree"
    shutil.copytree(checkout / "engine", tree / "engine")
    data = tree / "engine" / "links" / "data.py"
    text = data.read_text()
    assert f'Link("data", {DATA.major}, {DATA.minor},' in text
    data.write_text(text.replace(f'Link("data", {DATA.major}, {DATA.minor},', 'Link("data", 7, 3,'))
    links = links_of(tree)
    assert links["data"] == "7.3"
    assert links["management"] == f"{MANAGEMENT.major}.{MANAGEMENT.minor}"
    assert not list(tree.rglob("__pycache__"))  # nothing written into the checkout


def test_parse_version() -> None:
    """Versions are three plain numbers compared as numbers (10.0.9999 above 9.99.0); any other shape, a part
    above 9999, a sign or a non-ASCII digit is refused."""
    assert parse_version("0.2.0") == (0, 2, 0)
    assert parse_version("10.0.9999") > parse_version("9.99.0")
    for bad in ("0.2", "1.2.3.4", "v1.2.3", "1.2.x", "1.2.10000", "1.-2.3", "١.2.3", ""):
        with pytest.raises(ValueError):
            parse_version(bad)


def test_manifest_shape_is_checked() -> None:
    """A manifest with another format, an unknown agent, a bad version or module, or malformed links is refused,
    naming agent.json."""
    good = PackageManifest("log-processor", "0.2.0", "engine.log_processor", {"agent": "1.1"}).to_json()
    assert PackageManifest.from_json(good).links == {"agent": "1.1"}
    for change in ({"format": "zip"}, {"name": "evil"}, {"version": "2"}, {"module": "os; rm"},
                   {"links": {"agent": 1}}, {"links": []}):
        with pytest.raises(UpdateError, match=r"agent\.json"):
            PackageManifest.from_json({**good, **change})


# --- refusals -----------------------------------------------------------------------------------------
def test_unpack_refuses_a_member_outside(tmp_path: Path) -> None:
    """A package with a member that climbs out of its folder (../) is refused, naming it; nothing is written."""
    archive = forge(tmp_path / "evil.tar.gz", [regular("engine/__init__.py"), regular("../evil", b"owned")])
    dest = tmp_path / "agents" / "v"
    with pytest.raises(UpdateError, match=r"'\.\./evil'.*outside the package"):
        unpack_package(archive, dest, name="process-server", version="0.2.0")
    assert not dest.exists() and not (tmp_path / "agents" / "evil").exists() and not (tmp_path / "evil").exists()
    assert leftovers(dest.parent) == []


def test_unpack_refuses_an_absolute_member(tmp_path: Path) -> None:
    """A package with a member at an absolute path is refused as outside the package; that path is not written."""
    target = tmp_path / "absolute-target"
    archive = forge(tmp_path / "evil.tar.gz", [regular(str(target), b"owned")])
    with pytest.raises(UpdateError, match="outside the package"):
        unpack_package(archive, tmp_path / "agents" / "v", name="process-server", version="0.2.0")
    assert not target.exists() and leftovers(tmp_path / "agents") == []


@pytest.mark.parametrize("kind", [tarfile.SYMTYPE, tarfile.LNKTYPE, tarfile.FIFOTYPE])
def test_unpack_refuses_links_and_devices(tmp_path: Path, kind: bytes) -> None:
    """A package holding a symlink, a hard link or a FIFO is refused as not a regular file or a folder; nothing
    is unpacked."""
    link = tarfile.TarInfo("engine/link")
    link.type = kind
    link.linkname = "agent.json" if kind != tarfile.SYMTYPE else "/etc/passwd"
    archive = forge(tmp_path / "link.tar.gz", [regular("engine/__init__.py"), (link, None)])
    dest = tmp_path / "agents" / "v"
    with pytest.raises(UpdateError, match="not a regular file or a folder"):
        unpack_package(archive, dest, name="process-server", version="0.2.0")
    assert not dest.exists() and leftovers(dest.parent) == []


def test_unpack_refuses_another_agent_or_version(package: Path, tmp_path: Path) -> None:
    """A package of another agent or version than the one asked for is refused, naming both; nothing is unpacked."""
    dest = tmp_path / "agents" / "v"
    with pytest.raises(UpdateError) as info:
        unpack_package(package, dest, name="log-processor", version="0.2.0")
    assert "process-server 0.2.0" in str(info.value) and "log-processor 0.2.0" in str(info.value)
    with pytest.raises(UpdateError, match=r"is process-server 0\.2\.0, not process-server 0\.3\.0"):
        unpack_package(package, dest, name="process-server", version="0.3.0")
    assert not dest.exists() and leftovers(dest.parent) == []


def test_unpack_refuses_a_dest_that_exists(package: Path, tmp_path: Path) -> None:
    """Unpacking into a folder that exists already is refused and leaves what is in that folder alone."""
    dest = tmp_path / "v"
    dest.mkdir()
    (dest / "mine").write_text("keep")
    with pytest.raises(UpdateError, match="exists already"):
        unpack_package(package, dest, name="process-server", version="0.2.0")
    assert [p.name for p in dest.iterdir()] == ["mine"]
    assert leftovers(tmp_path) == []


@pytest.mark.parametrize("keep", [0.5, 0.98])
def test_unpack_refuses_a_truncated_archive(package: Path, tmp_path: Path, keep: float) -> None:
    """A package cut short (at half or near its end) is refused as damaged; nothing is unpacked."""
    data = package.read_bytes()
    archive = tmp_path / "cut.tar.gz"
    archive.write_bytes(data[:int(len(data) * keep)])
    dest = tmp_path / "agents" / "v"
    with pytest.raises(UpdateError, match="damaged"):
        unpack_package(archive, dest, name="process-server", version="0.2.0")
    assert not dest.exists() and leftovers(dest.parent) == []


def test_unpack_refuses_not_a_package(tmp_path: Path) -> None:
    """A file that is not gzip is refused as damaged, read or unpacked, and an archive without agent.json as
    such; nothing is unpacked."""
    junk = tmp_path / "junk.tar.gz"
    junk.write_bytes(b"not gzip at all" * 100)
    with pytest.raises(UpdateError, match="damaged"):
        read_manifest(junk)
    with pytest.raises(UpdateError, match="damaged"):
        unpack_package(junk, tmp_path / "v", name="process-server", version="0.2.0")
    no_manifest = forge(tmp_path / "bare.tar.gz", [regular("engine/__init__.py")], manifest=False)
    with pytest.raises(UpdateError, match=r"no agent\.json"):
        unpack_package(no_manifest, tmp_path / "v", name="process-server", version="0.2.0")
    assert not (tmp_path / "v").exists() and leftovers(tmp_path) == []


def test_unpack_refuses_too_many_members(tmp_path: Path) -> None:
    """A package with more members than the cap is refused, saying so; nothing is unpacked."""
    archive = forge(tmp_path / "many.tar.gz", [regular(f"engine/f{i}", b"") for i in range(MAX_MEMBERS)])
    with pytest.raises(UpdateError, match=f"more than {MAX_MEMBERS} members"):
        unpack_package(archive, tmp_path / "v", name="process-server", version="0.2.0")
    assert not (tmp_path / "v").exists() and leftovers(tmp_path) == []


def test_unpack_refuses_more_than_the_size_cap(tmp_path: Path) -> None:
    """A small archive that unpacks to more than the size cap (a zip bomb) is refused; nothing is unpacked."""
    archive = tmp_path / "big.tar.gz"
    big = tarfile.TarInfo("engine/big")
    big.size = MAX_PACKAGE_BYTES + 1
    # Declared in the header and really there (zeros compress to about 64 KiB).
    forge(archive, [(big, bytes(big.size))])
    assert archive.stat().st_size < 1024 * 1024
    with pytest.raises(UpdateError, match="unpacks to more than"):
        unpack_package(archive, tmp_path / "v", name="process-server", version="0.2.0")
    assert not (tmp_path / "v").exists() and leftovers(tmp_path) == []


# --- a full disk --------------------------------------------------------------------------------------
def test_unpack_on_a_full_disk_says_so_and_leaves_nothing(package: Path, tmp_path: Path) -> None:
    """On a full file system the unpack fails with one sentence naming the folder and leaves nothing; with room
    made, the same package unpacks."""
    with small_fs(tmp_path, "small", 8 * 1024 * 1024) as mnt:
        agents = mnt / "agents"
        agents.mkdir()
        balloon = Balloon(mnt / "balloon")
        balloon.leave(128 * 1024)  # the engine unpacks to several hundred KiB
        dest = agents / "0.2.0"
        with pytest.raises(UpdateError) as info:
            unpack_package(package, dest, name="process-server", version="0.2.0")
        assert str(info.value) == (f"Not enough space in {agents} to unpack process-server 0.2.0: free some "
                                   "space and try again.")
        assert not dest.exists() and leftovers(agents) == []

        balloon.pop()  # with the room back, the same package unpacks
        assert unpack_package(package, dest, name="process-server", version="0.2.0").name == "process-server"
        assert (dest / "engine" / "__init__.py").is_file() and leftovers(agents) == []
