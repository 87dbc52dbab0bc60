"""Source servers update their mobility service from the appliance: a real engine, real mobility processes, and
a real TUF feed (published with tools/release.py and keys of the test's own; the mobility services trust its
root through GODWIT_UPDATE_ROOT) whose mobility package is installed in the appliance's data directory the way
the updater installs it (unpacked, with release.json and the exported feed beside it).

Every update test ends by exporting a recovery point made after the update and comparing it with the source
byte for byte, and checks that no initial replication ran again.
"""

from __future__ import annotations

import json
import shutil
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from engine.updater.feed import FeedClient
from engine.updater.package import unpack_package
from tests.appliance import Appliance, Churn, Mobility, change_disk, fill_disk, wait_for
from tests.feed_server import FeedServer, publish_release

REPO = Path(__file__).resolve().parents[2]
PACKAGE = "mobility-package"
MiB = 1024 * 1024


@pytest.fixture(scope="module")
def release(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """(feed, keys): a feed with mobility 0.2.0 built from this checkout."""
    root = tmp_path_factory.mktemp("mobility-release")
    feed, keys = root / "feed", root / "keys"
    publish_release(feed, keys, "0.2.0", agents=[PACKAGE])
    return feed, keys


@pytest.fixture
def feed(release: tuple[Path, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[Path, Path]:
    """A copy of the release (feed dir, keys dir) whose root the processes this test starts trust."""
    feed_dir, keys = tmp_path / "feed", tmp_path / "keys"
    shutil.copytree(release[0], feed_dir)
    shutil.copytree(release[1], keys)
    monkeypatch.setenv("GODWIT_UPDATE_ROOT", str(_root_file(feed_dir)))
    monkeypatch.setenv("GODWIT_MOBILITY_STAGGER", "0")
    return feed_dir, keys


def _root_file(feed_dir: Path) -> Path:
    return min((feed_dir / "metadata").glob("*.root.json"), key=lambda p: int(p.name.split(".")[0]))


@pytest.fixture
def app(tmp_path: Path, feed: tuple[Path, Path]) -> Iterator[Appliance]:
    appliance = Appliance(tmp_path / "appliance")
    appliance.root.mkdir()
    appliance.start()
    yield appliance
    appliance.stop()


def offer(app: Appliance, feed_dir: Path, version: str, work: Path,
          tamper: Callable[[Path], None] | None = None) -> dict[str, Any]:
    """Install mobility ``version`` of the feed on the appliance as the updater does: the package unpacked, its
    release.json and the verified feed exported beside it, then current.json switched. ``tamper`` is called with
    the exported feed before the switch (an attack on the appliance's copy). Returns the target."""
    folder = app.data_dir / "agents" / PACKAGE
    with FeedServer(feed_dir) as server:
        client = FeedClient(server.url, metadata_dir=work / f"metadata-{version}", download_dir=work / "downloads",
                            trusted_root=_root_file(feed_dir).read_bytes())
        target = client.refresh().find(PACKAGE, version)
        assert target is not None, f"the feed has no {PACKAGE} {version}"
        archive = client.download(target)
        unpack_package(archive, folder / version, name=PACKAGE, version=version)
        client.export(folder / version / "feed", [target])
        client.close()
    described = {"path": target.path, "name": target.name, "version": target.version, "length": target.length,
                 "sha256": target.sha256}
    (folder / version / "release.json").write_text(json.dumps({"version": version, "target": described}))
    if tamper is not None:
        tamper(folder / version / "feed")
    before = json.loads((folder / "current.json").read_text())["version"] if (folder / "current.json").exists() \
        else None
    tmp = folder / "current.json.tmp"
    tmp.write_text(json.dumps({"version": version, "previous": before}))
    tmp.replace(folder / "current.json")
    return described


def protected(app: Appliance, name: str, tmp: Path, *, size: int = 8 * MiB, seed: int = 1,
              **env: str) -> tuple[Mobility, Path]:
    disk = tmp / f"{name}.img"
    fill_disk(disk, size, seed=seed)
    mob = Mobility(app, name, disks=[disk], env=env).start()
    try:
        wait_for(lambda: app.servers().get(name), what=f"{name} to register")
        app.enable(name)
        wait_for(lambda: app.servers()[name]["state"] == "protected", timeout=60, what=f"{name} to be protected")
    except BaseException:
        mob.stop()
        raise
    return mob, disk


def server(app: Appliance, name: str) -> dict[str, Any]:
    return app.json("vm", "show", name)  # type: ignore[no-any-return]


def events(app: Appliance, name: str, *codes: str) -> list[dict[str, Any]]:
    return [e for e in app.events() if e.get("server") == name and e["code"] in codes]


def assert_replica_exact(app: Appliance, name: str, disk: Path, out: Path) -> None:
    change_disk(disk, seed=9999, writes=3)
    t = time.time()
    point = app.point_after(name, t, timeout=45)
    assert app.export(name, point["id"], out).read_bytes() == disk.read_bytes()
    assert app.servers()[name]["state"] == "protected"


def assert_no_initial_replication_again(app: Appliance, name: str, first_point: int) -> None:
    codes = [e["code"] for e in app.events() if e.get("server") == name]
    assert codes.count("initial-replication-complete") == 1, codes
    assert first_point in [p["id"] for p in app.points(name)], "the points from before the update are kept"


def test_a_replicating_source_updates_itself_in_auto_mode_and_keeps_replicating(
        app: Appliance, feed: tuple[Path, Path], tmp_path: Path) -> None:
    """Auto mode (stagger 0): a source replicating under writes downloads mobility 0.2.0 over its mutual-TLS
    channel, verifies it, restarts into it (a child of its launcher) and replicates on; the point made after the
    update exports byte-identical, and no initial replication ran again."""
    mob, disk = protected(app, "auto-01", tmp_path, seed=3)
    try:
        shown = server(app, "auto-01")
        assert (shown["mobility_version"], shown["mobility_update"]) == ("0.1.0", "")  # nothing offered yet
        first_point = app.points("auto-01")[0]["id"]
        started = time.monotonic()
        with Churn(disk, seed=500):
            target = offer(app, feed[0], "0.2.0", tmp_path)
            wait_for(lambda: server(app, "auto-01")["mobility_version"] == "0.2.0", timeout=40,
                     what="the source to run mobility 0.2.0")
            took = time.monotonic() - started
            time.sleep(1.5)  # replication goes on under writes after the restart
        shown = server(app, "auto-01")
        assert shown["mobility_update"] == "up-to-date", shown
        listed = {s["name"]: s for s in app.json("vm", "list")}
        assert listed["auto-01"]["mobility_version"] == "0.2.0"
        assert listed["auto-01"]["mobility_update"] == "up-to-date"
        updated = events(app, "auto-01", "mobility-updated")
        assert len(updated) == 1 and "from 0.1.0 to 0.2.0" in updated[0]["message"], updated
        assert not events(app, "auto-01", "mobility-update-failed", "mobility-rolled-back")
        # On the source: the package unpacked beside the installed code, the record switched and confirmed.
        record = json.loads((mob.state_dir / "mobility-version.json").read_text())
        assert (record["current"], record["previous"], record["confirmed"]) == ("0.2.0", "0.1.0", True), record
        assert (mob.state_dir / "versions" / "0.2.0" / "engine" / "__init__.py").is_file()
        assert not (mob.state_dir / "downloads").exists()
        assert mob.proc is not None and mob.proc.poll() is None  # the same process: now the launcher
        assert "mobility 0.2.0 runs (pid" in mob.output
        served = [line for line in app.log("replication-manager").splitlines() if "mobility-feed.serve" in line]
        assert len(served) == 1 and target["sha256"] in served[0] and shown["server_id"] in served[0], served
        assert took < 30, f"the update took {took:.1f} s"
        assert_replica_exact(app, "auto-01", disk, tmp_path / "out")
        assert_no_initial_replication_again(app, "auto-01", first_point)
        code, output = mob.stop()
        assert code == 0, output[-3000:]
        assert "Traceback" not in output, output[-3000:]
    finally:
        if mob.proc is not None and mob.proc.poll() is None:
            mob.stop()


def _tamper_package(feed_dir: Path) -> None:
    """Change one byte in the middle of the package the appliance serves (its length stays)."""
    (package,) = (feed_dir / "targets" / "agents" / PACKAGE).glob("*.tar.gz")
    data = bytearray(package.read_bytes())
    data[len(data) // 2] ^= 0xFF
    package.write_bytes(bytes(data))


def test_a_tampered_package_served_by_the_appliance_is_refused(
        app: Appliance, feed: tuple[Path, Path], tmp_path: Path) -> None:
    """The appliance's copy of the package was altered: the source refuses it against the signed metadata,
    installs nothing, says why (an event and the server's status), is not told to try again by itself, and
    replicates on."""
    mob, disk = protected(app, "tamper-01", tmp_path, seed=4)
    try:
        first_point = app.points("tamper-01")[0]["id"]
        offer(app, feed[0], "0.2.0", tmp_path, tamper=_tamper_package)
        failed = wait_for(lambda: events(app, "tamper-01", "mobility-update-failed"), timeout=30,
                          what="the source to refuse the package")
        assert "not updated to 0.2.0" in failed[0]["message"] and "tampered" in failed[0]["message"], failed
        shown = server(app, "tamper-01")
        assert (shown["mobility_version"], shown["mobility_update"]) == ("0.1.0", "update-failed"), shown
        time.sleep(2)  # heartbeats go on: the appliance does not tell it to install that version again
        assert len(events(app, "tamper-01", "mobility-update-failed")) == 1
        assert not events(app, "tamper-01", "mobility-updated")
        assert not (mob.state_dir / "mobility-version.json").exists()
        assert not list((mob.state_dir / "versions").glob("*")) if (mob.state_dir / "versions").exists() else True
        assert not (mob.state_dir / "downloads").exists()
        assert mob.output.count("installing mobility 0.2.0") == 1
        assert "runs (pid" not in mob.output  # never restarted
        assert_replica_exact(app, "tamper-01", disk, tmp_path / "out")
        assert_no_initial_replication_again(app, "tamper-01", first_point)
    finally:
        mob.stop()


def test_the_feed_is_served_only_to_registered_servers_and_only_its_own_files(
        app: Appliance, feed: tuple[Path, Path], tmp_path: Path) -> None:
    """``/v1/mobility/feed``: a registered server's certificate reads the metadata; without a certificate, with a
    forgotten server's, a path out of the feed or an unknown file: refused, one line, nothing served."""
    mob = Mobility(app, "feed-01", disks=[tmp_path / "feed-01.img"])
    fill_disk(mob.disks[0], MiB, seed=5)
    mob.start()
    try:
        wait_for(lambda: app.servers().get("feed-01"), what="feed-01 to register")
        assert _get(app, mob.state_dir, "/v1/mobility/feed/metadata/timestamp.json")[0] == 404  # nothing offered
        assert app.cli("agents", "mode", "manual").returncode == 0  # offered, not installed: nothing moves
        target = offer(app, feed[0], "0.2.0", tmp_path)
        status, body = _get(app, mob.state_dir, "/v1/mobility/feed/metadata/timestamp.json")
        assert status == 200 and json.loads(body)["signed"]["_type"] == "timestamp"
        directory, _, name = target["path"].rpartition("/")
        status, body = _get(app, mob.state_dir, f"/v1/mobility/feed/targets/{directory}/{target['sha256']}.{name}")
        assert status == 200 and len(body) == target["length"]
        assert _get(app, None, "/v1/mobility/feed/metadata/timestamp.json")[0] == 401
        for path in ("/v1/mobility/feed/metadata/../release.json", "/v1/mobility/feed/metadata/%2e%2e/release.json",
                     "/v1/mobility/feed/metadata%2f..%2f..%2frelease.json", "/v1/mobility/feed/.hidden/x",
                     "/v1/mobility/feed/metadata/9.root.json", "/v1/mobility/feed/targets/../../../../appliance.json",
                     "/v1/mobility/feed/metadata//timestamp.json"):
            status, body = _get(app, mob.state_dir, path)
            assert status == 404, (path, status, body[:200])
            assert b'"signed"' not in body and b"release" not in body[:20]
        mob.stop()
        assert app.cli("vm", "forget", "feed-01").returncode == 0
        status, body = _get(app, mob.state_dir, "/v1/mobility/feed/metadata/timestamp.json")
        assert status in (401, 403) and json.loads(body)["code"] == "registration-revoked", (status, body)
    finally:
        if mob.proc is not None and mob.proc.poll() is None:
            mob.stop()


def _get(app: Appliance, state_dir: Path | None, path: str) -> tuple[int, bytes]:
    """GET a path of the management port as the source of ``state_dir`` would (None: without a certificate)."""
    import http.client
    import ssl

    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    if state_dir is not None:
        ctx.load_cert_chain(state_dir / "client.crt", state_dir / "client.key")
    conn = http.client.HTTPSConnection("127.0.0.1", app.management_port, context=ctx, timeout=30)
    try:
        conn.request("GET", path)
        resp = conn.getresponse()
        return resp.status, resp.read()
    finally:
        conn.close()


def broken_tree(tmp_path: Path) -> Path:
    """A copy of this checkout whose mobility service sends its heartbeats to a port where nobody listens."""
    tree = tmp_path / "broken-tree"
    shutil.copytree(REPO / "engine", tree / "engine", ignore=shutil.ignore_patterns("__pycache__"))
    service = tree / "engine" / "mobility" / "service.py"
    text = service.read_text()
    assert text.count("management_client(self.host, self.port, context)") == 3
    service.write_text(text.replace("management_client(self.host, self.port, context)",
                                    "management_client(self.host, 1, context)"))
    return tree


def test_a_version_that_cannot_reach_the_appliance_rolls_back_by_itself(
        app: Appliance, feed: tuple[Path, Path], tmp_path: Path) -> None:
    """Mobility 0.3.0 installs but its heartbeats never arrive: when its trial ends its launcher stops it and runs
    0.1.0 again, which reports the rollback; the appliance does not offer 0.3.0 for installing again; replication
    goes on."""
    feed_dir, keys = feed
    publish_release(feed_dir, keys, "0.3.0", agents=[PACKAGE], source=broken_tree(tmp_path))
    mob, disk = protected(app, "trial-01", tmp_path, seed=6, GODWIT_MOBILITY_TRIAL="5")
    try:
        first_point = app.points("trial-01")[0]["id"]
        started = time.monotonic()
        offer(app, feed_dir, "0.3.0", tmp_path)
        wait_for(lambda: "mobility 0.3.0 runs (pid" in mob.output, timeout=20, what="0.3.0 to start")
        rolled = wait_for(lambda: events(app, "trial-01", "mobility-rolled-back"), timeout=30,
                          what="0.3.0 to be rolled back")
        took = time.monotonic() - started
        assert "mobility 0.3.0 was rolled back to 0.1.0" in rolled[0]["message"], rolled
        assert "did not reach the appliance within 5 s" in rolled[0]["message"], rolled
        shown = server(app, "trial-01")
        assert (shown["mobility_version"], shown["mobility_update"]) == ("0.1.0", "update-failed"), shown
        record = json.loads((mob.state_dir / "mobility-version.json").read_text())
        assert (record["current"], record["previous"], record["report"]) == ("0.1.0", "0.3.0", None), record
        assert "running the installed mobility service 0.1.0 itself" in mob.output
        assert not events(app, "trial-01", "mobility-updated")  # 0.3.0 never reached the appliance
        time.sleep(2)
        assert mob.output.count("installing mobility 0.3.0") == 1, "offered for installing again"
        assert len(events(app, "trial-01", "mobility-rolled-back")) == 1
        assert took < 25, f"the rollback took {took:.1f} s"
        assert_replica_exact(app, "trial-01", disk, tmp_path / "out")
        assert_no_initial_replication_again(app, "trial-01", first_point)
        assert mob.proc is not None and mob.proc.poll() is None
    finally:
        mob.stop()


def test_manual_mode_offers_and_installs_only_when_the_admin_asks(
        app: Appliance, feed: tuple[Path, Path], tmp_path: Path) -> None:
    """Manual mode, the mobility package installed on the appliance by its updater from the feed: every server
    shows Update available and stays where it is; ``vm update-mobility`` with two names (the bulk action) updates
    both; an unknown name is one line and changes nothing."""
    assert app.cli("agents", "mode", "manual").returncode == 0
    mob, disk = protected(app, "man-01", tmp_path, seed=7)
    other = Mobility(app, "man-02", disks=[tmp_path / "man-02.img"])
    fill_disk(other.disks[0], MiB, seed=8)
    other.start()
    try:
        wait_for(lambda: app.servers().get("man-02"), what="man-02 to register")
        first_point = app.points("man-01")[0]["id"]
        with FeedServer(feed[0]) as feed_server:  # the appliance's own update feed
            assert app.cli("agents", "feed", feed_server.url).returncode == 0
            res = app.cli("agents", "update", "mobility-package", timeout=60)
            assert res.returncode == 0, res.stdout + res.stderr
        assert (app.data_dir / "agents" / PACKAGE / "0.2.0" / "release.json").is_file()
        wait_for(lambda: {s["mobility_update"] for s in app.servers().values()} == {"update-available"},
                 what="both servers to show the update")
        listing = app.cli("vm", "list")
        assert listing.returncode == 0 and listing.stdout.count("0.1.0 (update available)") == 2, listing.stdout
        assert "update available" in app.cli("vm", "show", "man-01").stdout
        time.sleep(2)  # many heartbeats: manual mode installs nothing by itself
        assert {s["mobility_version"] for s in app.servers().values()} == {"0.1.0"}
        assert "installing mobility" not in mob.output + other.output

        res = app.cli("vm", "update-mobility", "man-01", "nobody")
        assert res.returncode != 0 and "No server named 'nobody'" in res.stderr
        assert len(res.stderr.strip().splitlines()) == 1 and "Traceback" not in res.stderr
        time.sleep(1)
        assert "installing mobility" not in mob.output  # refused as a whole

        res = app.cli("vm", "update-mobility", "man-01", "man-02")
        assert res.returncode == 0, res.stderr
        assert "man-01: runs mobility 0.1.0; it installs the version the appliance offers" in res.stdout, res.stdout
        wait_for(lambda: {s["mobility_version"] for s in app.servers().values()} == {"0.2.0"}, timeout=40,
                 what="both servers to run 0.2.0")
        assert {s["mobility_update"] for s in app.servers().values()} == {"up-to-date"}
        requested = [e for e in app.events() if e["code"] == "mobility-update-requested"]
        assert len(requested) == 1 and "man-01, man-02" in requested[0]["message"], requested
        assert len([e for e in app.events() if e["code"] == "mobility-updated"]) == 2
        res = app.cli("vm", "update-mobility", "man-01")
        assert res.returncode != 0 and "already runs mobility 0.2.0" in res.stderr, res.stderr
        assert_replica_exact(app, "man-01", disk, tmp_path / "out")
        assert_no_initial_replication_again(app, "man-01", first_point)
    finally:
        mob.stop()
        other.stop()
