"""Agent updates on a real appliance: a real TUF feed on loopback (published with tools/release.py and keys of
the test's own), real agent processes restarted into new versions while a real source replicates.

Every test ends by exporting a recovery point made after the updates and comparing it with the source byte
for byte: updates never cost replicated data.
"""

from __future__ import annotations

import json
import shutil
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from tests.appliance import Appliance, Churn, change_disk, replicating, wait_for
from tests.feed_server import FeedServer, publish_release, release_tool
from tests.source_disks import Balloon, small_fs

REPO = Path(__file__).resolve().parents[2]
PROCESS_AGENTS = ("replication-manager", "process-server", "log-processor")


@pytest.fixture(scope="module")
def release(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """(feed, keys): a feed with version 0.2.0 of every agent, built from this checkout."""
    root = tmp_path_factory.mktemp("release")
    feed, keys = root / "feed", root / "keys"
    publish_release(feed, keys, "0.2.0")
    return feed, keys


@pytest.fixture
def feed(release: tuple[Path, Path], tmp_path: Path) -> Iterator[tuple[FeedServer, Path, Path]]:
    """A copy of the release feed served on loopback: (server, feed dir, keys dir)."""
    src_feed, src_keys = release
    feed_dir, keys = tmp_path / "feed", tmp_path / "keys"
    shutil.copytree(src_feed, feed_dir)
    shutil.copytree(src_keys, keys)
    with FeedServer(feed_dir) as server:
        yield server, feed_dir, keys


def trusted_root(feed_dir: Path) -> Path:
    return max((feed_dir / "metadata").glob("*.root.json"), key=lambda p: int(p.name.split(".")[0]))


def start_appliance(tmp_path: Path, feed_dir: Path, **env: str) -> Appliance:
    app = Appliance(tmp_path / "appliance")
    app.root.mkdir()
    app.start(env={"GODWIT_UPDATE_ROOT": str(trusted_root(feed_dir)), "GODWIT_UPDATE_HEALTH_DEADLINE": "20", **env})
    return app


def agents(app: Appliance) -> dict[str, dict[str, Any]]:
    return {a["name"]: a for a in app.json("agents", "list")}


def versions(app: Appliance) -> dict[str, str]:
    return {name: a["installed_version"] for name, a in agents(app).items()}


def running_versions(app: Appliance) -> dict[str, str]:
    return {a["name"]: a["version"] for a in app.json("engine", "status")["agents"]}


def assert_replica_exact(app: Appliance, name: str, disk: Path, out: Path) -> None:
    t = time.time()
    point = app.point_after(name, t, timeout=90)
    assert app.export(name, point["id"], out).read_bytes() == disk.read_bytes()
    assert app.servers()[name]["state"] == "protected"


def no_initial_replication_again(app: Appliance, name: str) -> None:
    codes = [e["code"] for e in app.events() if e.get("server") == name]
    assert codes.count("initial-replication-complete") <= 1, codes


def test_manual_mode_update_all_while_a_server_replicates_then_roll_back(
        feed: tuple[FeedServer, Path, Path], tmp_path: Path) -> None:
    """Manual mode shows every outdated agent; Update all brings each up with a health check while a source
    writes; a rollback runs the previous version again; the replica stays byte-exact throughout."""
    server, feed_dir, _ = feed
    app = start_appliance(tmp_path, feed_dir)
    try:
        before = versions(app)
        assert set(before) == {*PROCESS_AGENTS, "mobility-package"}
        assert set(before.values()) == {"0.1.0"}
        assert all(a["status"] == "cannot-update" for a in agents(app).values())  # no feed set yet
        assert app.cli("agents", "mode", "manual").returncode == 0
        assert app.cli("agents", "feed", server.url).returncode == 0
        res = app.cli("agents", "check")
        assert res.returncode == 0, res.stderr
        listed = agents(app)
        assert {a["status"] for a in listed.values()} == {"update-available"}, listed
        assert {a["available_version"] for a in listed.values()} == {"0.2.0"}
        time.sleep(1)
        assert set(versions(app).values()) == {"0.1.0"}, "manual mode installed something by itself"

        mob, disk = replicating(app, "upd-01", 8 * 1024 * 1024, seed=31)
        try:
            with Churn(disk):
                res = app.cli("agents", "update", "--all", timeout=180)
                assert res.returncode == 0, res.stdout + res.stderr
            listed = agents(app)
            assert {a["installed_version"] for a in listed.values()} == {"0.2.0"}, listed
            assert {a["previous_version"] for a in listed.values()} == {"0.1.0"}
            assert {a["status"] for a in listed.values()} == {"up-to-date"}
            assert running_versions(app) == {name: "0.2.0" for name in PROCESS_AGENTS}
            for name in PROCESS_AGENTS:  # each runs from its version directory under the data directory
                assert f"from={app.data_dir / 'agents' / name / '0.2.0' / 'engine'}" in app.log(name)
            updated = [e for e in app.events() if e["code"] == "agent-updated"]
            assert len(updated) == 4, updated
            assert_replica_exact(app, "upd-01", disk, tmp_path / "after-update")

            res = app.cli("agents", "rollback", "process-server", timeout=90)
            assert res.returncode == 0, res.stderr
            assert "different versions" in res.stdout  # mismatched: the CLI recommends updating all together
            listed = agents(app)
            assert listed["process-server"]["installed_version"] == "0.1.0"
            assert listed["process-server"]["previous_version"] == "0.2.0"
            assert listed["process-server"]["status"] == "update-available"
            assert running_versions(app)["process-server"] == "0.1.0"
            with Churn(disk):
                time.sleep(2)
            assert_replica_exact(app, "upd-01", disk, tmp_path / "after-rollback")
            no_initial_replication_again(app, "upd-01")
        finally:
            mob.stop()
    finally:
        app.stop()


def broken_tree(tmp_path: Path) -> Path:
    """A copy of this checkout whose process server exits at start (a package that installs but fails)."""
    tree = tmp_path / "broken-tree"
    shutil.copytree(REPO / "engine", tree / "engine", ignore=shutil.ignore_patterns("__pycache__"))
    (tree / "engine" / "process_server" / "__main__.py").write_text("raise SystemExit(3)\n")
    return tree


def test_a_version_that_fails_its_health_check_is_rolled_back_and_replication_goes_on(
        feed: tuple[FeedServer, Path, Path], tmp_path: Path) -> None:
    """A process-server that exits at start fails its health check under churn: it is rolled back by itself, the
    reason names the exit, and the replica stays byte-exact."""
    server, feed_dir, keys = feed
    publish_release(feed_dir, keys, "0.3.0", agents=["process-server"], source=broken_tree(tmp_path))
    app = start_appliance(tmp_path, feed_dir)
    try:
        app.cli("agents", "mode", "manual")
        app.cli("agents", "feed", server.url)
        mob, disk = replicating(app, "bad-01", 8 * 1024 * 1024, seed=32)
        try:
            with Churn(disk):
                res = app.cli("agents", "update", "process-server", timeout=180)
            assert res.returncode != 0
            assert "health check" in res.stderr and "Rolled back" in res.stderr, res.stderr
            assert "Traceback" not in res.stderr
            ps = agents(app)["process-server"]
            assert ps["installed_version"] == "0.1.0" and ps["status"] == "update-failed", ps
            assert "exited with code 3" in ps["reason"], ps
            assert running_versions(app)["process-server"] == "0.1.0"
            assert any(e["code"] == "agent-update-failed" for e in app.events())
            assert_replica_exact(app, "bad-01", disk, tmp_path / "after-failed-update")
        finally:
            mob.stop()
    finally:
        app.stop()


def test_an_update_that_needs_another_agent_is_refused_alone_and_installs_with_update_all(
        feed: tuple[FeedServer, Path, Path], tmp_path: Path) -> None:
    """A version that needs a newer log-processor is refused alone (nothing installed), installs with Update all,
    and the log-processor it needs cannot then be rolled back under it."""
    server, feed_dir, keys = feed
    publish_release(feed_dir, keys, "0.3.0", agents=["process-server", "log-processor"],
                    requires={"process-server": {"log-processor": "0.3.0"}})
    app = start_appliance(tmp_path, feed_dir)
    try:
        app.cli("agents", "mode", "manual")
        app.cli("agents", "feed", server.url)
        res = app.cli("agents", "update", "process-server")
        assert res.returncode != 0
        assert "log-processor" in res.stderr and "Update all" in res.stderr and "Nothing was installed" in res.stderr
        assert set(versions(app).values()) == {"0.1.0"}
        res = app.cli("agents", "update", "--all", timeout=180)
        assert res.returncode == 0, res.stderr
        assert versions(app) == {"log-processor": "0.3.0", "process-server": "0.3.0", "replication-manager": "0.2.0",
                                 "mobility-package": "0.2.0"}
        # The newest release is partial (0.3.0 of two agents): different versions, but nothing to align.
        assert "different versions" not in app.cli("agents", "list").stdout
        # Back is checked as forward is: process-server 0.3.0 needs this log-processor.
        res = app.cli("agents", "rollback", "log-processor", timeout=90)
        assert res.returncode != 0 and "log-processor 0.3.0 or newer" in res.stderr, res.stderr
        assert "Nothing was changed" in res.stderr and versions(app)["log-processor"] == "0.3.0"
    finally:
        app.stop()


def test_the_feed_under_attack_installs_nothing(feed: tuple[FeedServer, Path, Path], tmp_path: Path) -> None:
    """A tampered package and expired metadata are refused with the reason; nothing is installed."""
    server, feed_dir, keys = feed
    app = start_appliance(tmp_path, feed_dir)
    try:
        app.cli("agents", "mode", "manual")
        app.cli("agents", "feed", server.url)
        package = next((feed_dir / "targets" / "agents" / "log-processor").glob("*.tar.gz"))
        data = bytearray(package.read_bytes())
        data[len(data) // 2] ^= 1
        server.replace(f"targets/agents/log-processor/{package.name}", bytes(data))
        res = app.cli("agents", "update", "log-processor", timeout=90)
        assert res.returncode != 0 and "Traceback" not in res.stderr
        lp = agents(app)["log-processor"]
        assert lp["status"] == "update-failed" and lp["installed_version"] == "0.1.0", lp
        assert not (app.data_dir / "agents" / "log-processor" / "0.2.0").exists()

        # Expired timestamp metadata: the check fails with the reason, every agent says it cannot update.
        from datetime import UTC, datetime, timedelta

        from tests.feed_server import release_tool
        release_tool().write_timestamp(feed_dir, keys, expires=datetime.now(UTC) - timedelta(hours=1), version=99)
        res = app.cli("agents", "check")
        assert res.returncode != 0 and "expired" in res.stderr.lower(), res.stderr
        assert {a["status"] for a in agents(app).values()} == {"cannot-update"}
        res = app.cli("agents", "update", "--all")
        assert res.returncode != 0 and "expired" in res.stderr.lower()

        server.down = True  # an unreachable feed
        res = app.cli("agents", "check", timeout=90)
        assert res.returncode != 0 and "did not answer" in res.stderr, res.stderr
        assert set(versions(app).values()) == {"0.1.0"}
    finally:
        app.stop()


def test_a_full_disk_while_installing_installs_nothing_and_retry_works(
        feed: tuple[FeedServer, Path, Path], tmp_path: Path, short_tmp: Path) -> None:
    """The data directory's file system fills up during an install: refused with a sentence about space (status
    and event), nothing switched, no partial folder; with room made, Retry installs it."""
    server, feed_dir, _ = feed
    package = next((feed_dir / "targets" / "agents" / "log-processor").glob("*.tar.gz"))
    with small_fs(short_tmp, "small", 96 * 1024 * 1024, inodes=16384) as mnt:
        app = Appliance(tmp_path / "appliance", data_dir=mnt / "data")
        app.root.mkdir()
        app.start(env={"GODWIT_UPDATE_ROOT": str(trusted_root(feed_dir))})
        balloon = Balloon(mnt / "balloon")
        try:
            app.cli("agents", "mode", "manual")
            app.cli("agents", "feed", server.url)
            # Room for the download, not for the unpacked engine (about four times the package).
            balloon.leave(package.stat().st_size + 384 * 1024)
            res = app.cli("agents", "update", "log-processor", timeout=120)
            assert res.returncode != 0 and "Traceback" not in res.stderr
            assert "Not enough space" in res.stderr and "free some space" in res.stderr, res.stderr
            lp = agents(app)["log-processor"]
            assert (lp["installed_version"], lp["status"]) == ("0.1.0", "update-failed") and "space" in lp["reason"]
            assert running_versions(app)["log-processor"] == "0.1.0"
            folder = app.data_dir / "agents" / "log-processor"
            assert not list(folder.glob(".partial-*")) and not (folder / "0.2.0").exists()
            assert not (folder / "update.json").exists()
            assert any(e["code"] == "agent-update-failed" and "space" in e["message"] for e in app.events())
            balloon.pop()
            res = app.cli("agents", "update", "log-processor", timeout=120)  # Retry
            assert res.returncode == 0, res.stderr
            assert running_versions(app)["log-processor"] == "0.2.0"
        finally:
            app.stop()


@pytest.mark.parametrize("stage", ["unpacking", "switched"])
def test_kill_9_of_the_supervisor_during_an_install_rolls_back_at_the_next_start(
        feed: tuple[FeedServer, Path, Path], tmp_path: Path, stage: str) -> None:
    """kill -9 of the engine in the middle of an install: the next start rolls the agent back, says so, leaves no
    partial files, and Retry then installs it; the replica stays byte-exact."""
    server, feed_dir, _ = feed
    app = start_appliance(tmp_path, feed_dir, GODWIT_UPDATE_PAUSE_AT=stage)
    try:
        app.cli("agents", "mode", "manual")
        app.cli("agents", "feed", server.url)
        mob, disk = replicating(app, "crash-01", 4 * 1024 * 1024, seed=33)
        try:
            res = app.cli("agents", "update", "replication-manager", "--no-wait")
            assert res.returncode == 0, res.stderr
            journal = app.data_dir / "agents" / "replication-manager" / "update.json"
            wait_for(lambda: journal.exists() and json.loads(journal.read_text())["stage"] == stage,
                     what=f"the install to reach {stage}")
            app.kill()
            app.start(env={"GODWIT_UPDATE_ROOT": str(trusted_root(feed_dir))})
            rm = agents(app)["replication-manager"]
            assert rm["installed_version"] == "0.1.0" and rm["status"] == "update-failed", rm
            assert "interrupted" in rm["reason"]
            assert running_versions(app)["replication-manager"] == "0.1.0"
            assert not journal.exists()
            assert not list((app.data_dir / "agents" / "replication-manager").glob(".partial-*"))
            assert any(e["code"] == "agent-update-interrupted" for e in app.events())
            res = app.cli("agents", "update", "replication-manager", timeout=120)  # Retry works
            assert res.returncode == 0, res.stderr
            assert running_versions(app)["replication-manager"] == "0.2.0"
            change_disk(disk, seed=77)
            assert_replica_exact(app, "crash-01", disk, tmp_path / "after-crash")
        finally:
            mob.stop()
    finally:
        app.stop()


def test_auto_mode_installs_everything_now_when_asked(feed: tuple[FeedServer, Path, Path], tmp_path: Path) -> None:
    """Auto mode with --now installs every agent; the engine restarts into them; the feed served to sources
    follows the vendor's fresh timestamp at each check."""
    server, feed_dir, keys = feed
    app = start_appliance(tmp_path, feed_dir)
    try:
        app.cli("agents", "feed", server.url)
        status = app.cli("agents", "mode")
        assert "auto, window 00:00" in status.stdout
        assert app.cli("agents", "mode", "auto", "--window", "25:00").returncode != 0
        res = app.cli("agents", "mode", "auto", "--now")
        assert res.returncode == 0, res.stderr
        wait_for(lambda: set(versions(app).values()) == {"0.2.0"} and
                 all(a["status"] == "up-to-date" for a in agents(app).values()), timeout=120,
                 what="auto mode to install every agent")
        assert running_versions(app) == {name: "0.2.0" for name in PROCESS_AGENTS}
        # The vendor re-signs the timestamp (it expires within days): the next check passes it on to sources.
        served = app.data_dir / "agents" / "mobility-package" / "0.2.0" / "feed" / "metadata" / "timestamp.json"
        fresh = release_tool().write_timestamp(feed_dir, keys, expires=datetime.now(UTC) + timedelta(days=9))
        assert served.read_bytes() != fresh.read_bytes()
        assert app.cli("agents", "check").returncode == 0
        assert served.read_bytes() == fresh.read_bytes()
        # The engine restarts into what was installed; nothing is installed again.
        app.stop()
        app.start(env={"GODWIT_UPDATE_ROOT": str(trusted_root(feed_dir))})
        assert running_versions(app) == {name: "0.2.0" for name in PROCESS_AGENTS}
    finally:
        app.stop()

