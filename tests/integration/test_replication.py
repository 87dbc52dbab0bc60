"""Replication end to end through real processes: byte-exact recovery points, resume after kill -9."""

from __future__ import annotations

import shutil
import subprocess
import time
from pathlib import Path

import pytest

from tests.appliance import Appliance, Mobility, change_disk, fill_disk, kill_9, replicating, wait_for

MiB = 1024 * 1024


def test_initial_delta_and_old_points_are_byte_exact(appliance: Appliance, tmp_path: Path) -> None:
    """Initial and delta replication give byte-exact points, raw and VHD, and an old point keeps its past."""
    disk = appliance.root / "web.img"
    fill_disk(disk, 24 * MiB)
    mob = Mobility(appliance, "web-01", disks=[disk]).start()
    try:
        wait_for(lambda: appliance.servers().get("web-01"), what="registration")
        appliance.enable("web-01")
        server = wait_for(lambda: (s := appliance.servers()["web-01"])["state"] == "protected" and s, timeout=60,
                          what="initial replication to finish")
        assert server["disks"][0]["bytes_done"] == server["disks"][0]["bytes_total"] == 24 * MiB
        first = appliance.points("web-01")[0]
        assert first["kind"] == "crash-consistent"
        v1 = disk.read_bytes()
        assert appliance.export("web-01", "latest", tmp_path / "a").read_bytes() == v1

        change_disk(disk, seed=2)
        t = time.time()
        v2 = disk.read_bytes()
        p2 = appliance.point_after("web-01", t)
        assert appliance.export("web-01", p2["id"], tmp_path / "b").read_bytes() == v2
        # The first point still shows the disk as it was then.
        assert appliance.export("web-01", first["id"], tmp_path / "c").read_bytes() == v1
        if shutil.which("qemu-img"):
            vhd = appliance.export("web-01", p2["id"], tmp_path / "d", fmt="vhd")
            raw = tmp_path / "b" / "web-01-disk0.raw"
            res = subprocess.run(["qemu-img", "compare", "-f", "raw", "-F", "vpc", str(raw), str(vhd)],
                                 capture_output=True, text=True)
            assert res.returncode == 0 and "identical" in res.stdout, res.stdout + res.stderr
        shown = appliance.servers()["web-01"]
        assert shown["rpo_seconds"] is not None and shown["rpo_seconds"] < 30
        assert shown["last_recovery_point"] is not None
    finally:
        mob.stop()
    codes = [e["code"] for e in appliance.events()]
    assert "replication-enabled" in codes and "initial-replication-complete" in codes


@pytest.mark.parametrize("victim", ["mobility", "process-server", "log-processor", "engine"])
def test_kill_9_mid_initial_replication_resumes(appliance: Appliance, tmp_path: Path, victim: str) -> None:
    """Killing any process mid initial replication resumes it where it stopped, never from the start."""
    disk = appliance.root / "db.img"
    fill_disk(disk, 48 * MiB, seed=5)
    mob = Mobility(appliance, "db-01", disks=[disk]).start()
    try:
        wait_for(lambda: appliance.servers().get("db-01"), what="registration")
        assert appliance.cli("vm", "set", "db-01", "--max-mbps", "60").returncode == 0  # ~7 MB/s: time to aim
        appliance.enable("db-01")
        done = lambda: appliance.servers()["db-01"]["disks"][0]["bytes_done"]  # noqa: E731
        wait_for(lambda: done() > 4 * MiB, timeout=60, what="initial replication to be under way")
        before = done()
        kill_9(appliance, mob, victim)
        assert appliance.cli("vm", "set", "db-01", "--max-mbps", "off").returncode == 0
        wait_for(lambda: appliance.servers()["db-01"]["state"] == "protected", timeout=90,
                 what="initial replication to finish after the kill")
        # Resumed, not restarted: the appliance never saw progress go back below what it had.
        assert done() >= before
        assert appliance.export("db-01", "latest", tmp_path / "x").read_bytes() == disk.read_bytes()
    finally:
        mob.stop()


def test_completed_initial_replication_is_never_repeated(appliance: Appliance, tmp_path: Path) -> None:
    """A restarted mobility service sends only what changed, never its completed initial replication again."""
    mob, disk = replicating(appliance, "app-01", 16 * MiB, seed=9)
    try:
        received = _received(appliance)
        mob.stop()
        mob.start()
        change_disk(disk, seed=3, writes=3)
        t = time.time()
        p = appliance.point_after("app-01", t)
        # After the restart only the few changed blocks travelled, not the 16 MiB disk again.
        assert _received(appliance) - received < 4 * MiB
        assert appliance.export("app-01", p["id"], tmp_path / "y").read_bytes() == disk.read_bytes()
        assert "initial replication of" not in mob.output.split("sending heartbeats")[-1]
    finally:
        mob.stop()


def _received(app: Appliance) -> int:
    import json

    total = 0
    for stream in (app.data_dir / "cache").rglob("stream.json"):
        total += json.loads(stream.read_text())["bytes_received"]
    return total


def test_disable_stops_and_frees_target_data(appliance: Appliance) -> None:
    """Disabling replication needs --yes, then deletes the replica and its points; the source drops its tracking."""
    disk = appliance.root / "tmp.img"
    fill_disk(disk, 8 * MiB, seed=4)
    mob = Mobility(appliance, "tmp-01", disks=[disk]).start()
    try:
        wait_for(lambda: appliance.servers().get("tmp-01"), what="registration")
        appliance.enable("tmp-01")
        server_id = wait_for(lambda: (s := appliance.servers()["tmp-01"])["state"] == "protected" and s["server_id"],
                             timeout=60, what="protection")
        assert (appliance.data_dir / "target" / server_id).exists()
        res = appliance.cli("vm", "disable", "tmp-01")
        assert res.returncode == 1 and "--yes" in res.stderr  # no terminal to confirm on
        assert appliance.cli("vm", "disable", "tmp-01", "--yes").returncode == 0
        assert appliance.servers()["tmp-01"]["state"] == "registered"
        assert not (appliance.data_dir / "target" / server_id).exists()
        assert appliance.points("tmp-01") == []
        wait_for(lambda: not list(mob.state_dir.glob("epoch-*/disk*.digests")), what="the source to drop its tracking")
        res = appliance.cli("vm", "export", "tmp-01", "--point", "latest", "--format", "raw", "--out",
                            str(appliance.root))
        assert res.returncode == 1 and "no recovery point" in res.stderr
    finally:
        mob.stop()


def test_policy_validation(appliance: Appliance) -> None:
    """Policies with bad retention, app-consistent interval or duration are refused in one line; names are unique."""
    for args, why in ((("--retention", "16d"), "15 days"), (("--app-consistent-every", "30m"), "1h and 12h"),
                      (("--rpo-threshold", "soon"), "not a duration")):
        res = appliance.cli("policy", "create", "bad", *args)
        assert res.returncode == 1 and why in res.stderr, res.stderr
        assert res.stderr.count("\n") == 1
    assert appliance.cli("policy", "create", "gold", "--app-consistent-every", "off").returncode == 0
    assert appliance.cli("policy", "create", "gold").returncode == 1
    listed = {p["name"]: p for p in appliance.json("policy", "list")}
    assert set(listed) == {"default", "gold"}
    assert listed["default"]["crash_consistent_every"] == 300 and listed["gold"]["app_consistent_every"] is None


def test_disk_that_grows_or_vanishes_is_named(appliance: Appliance) -> None:
    """A source disk that changes size or vanishes pauses replication with a named cause; its points stay."""
    mob, disk = replicating(appliance, "grow-01", 8 * MiB, seed=6)
    try:
        with open(disk, "r+b") as f:
            f.truncate(12 * MiB)
        server = wait_for(lambda: (s := appliance.servers()["grow-01"])["health_cause"] == "disk-size-changed" and s,
                          what="the size change to be named")
        assert server["state"] == "paused" and server["health"] == "critical"
        assert "changed size from 8388608 to 12582912 bytes" in server["health_detail"]
        disk.rename(disk.with_suffix(".gone"))
        server = wait_for(lambda: (s := appliance.servers()["grow-01"])["health_cause"] == "disk-missing" and s,
                          what="the missing disk to be named")
        assert "is gone from grow-01" in server["health_detail"]
        assert appliance.points("grow-01")  # what was replicated stays exportable
        codes = [e["code"] for e in appliance.events()]
        assert "disk-size-changed" in codes and "disk-missing" in codes
    finally:
        _, out = mob.stop()
    assert "replication paused" in out


def test_app_consistent_points_run_the_hooks(appliance: Appliance, tmp_path: Path) -> None:
    """App-consistent points run the pre and post hooks once; a failing pre hook gives a crash-consistent point."""
    disk = appliance.root / "sql.img"
    fill_disk(disk, 8 * MiB, seed=12)
    log = appliance.root / "hooks.log"
    mob = Mobility(appliance, "sql-01", disks=[disk], extra=[
        "--pre-snapshot", f"echo pre >> {log}", "--post-snapshot", f"echo post >> {log}"]).start()
    bad = Mobility(appliance, "sql-02", disks=[disk], extra=["--pre-snapshot", "exit 3"]).start()
    try:
        wait_for(lambda: {"sql-01", "sql-02"} <= set(appliance.servers()), what="registration")
        appliance.enable("sql-01", **{"--app-consistent-every": "1h"})
        assert appliance.cli("vm", "enable", "sql-02", "--policy", "fast").returncode == 0
        app_point = wait_for(lambda: next((p for p in appliance.points("sql-01") if p["kind"] == "app-consistent"),
                                          None), timeout=60, what="an app-consistent point")
        assert log.read_text().split() == ["pre", "post"]  # once: the next is due in an hour
        assert appliance.export("sql-01", app_point["id"], tmp_path / "a").read_bytes() == disk.read_bytes()
        # A failing pre-snapshot hook still gives a point, labelled for what it is.
        wait_for(lambda: appliance.points("sql-02"), timeout=60, what="sql-02's first point")
        time.sleep(1.5)
        assert {p["kind"] for p in appliance.points("sql-02")} == {"crash-consistent"}
    finally:
        mob.stop()
        _, out = bad.stop()
    assert "pre-snapshot hook exited 3" in out


def test_kill_9_during_delta_churn_keeps_every_point_exact(appliance: Appliance, tmp_path: Path) -> None:
    """Delta cycles under constant writes while every process is killed in turn, some in the middle of
    a segment or of applying one: the final point still equals the source byte for byte."""
    import threading

    mob, disk = replicating(appliance, "busy-01", 32 * MiB, seed=21)
    stop = threading.Event()

    def writer() -> None:
        seed = 100
        while not stop.is_set():
            change_disk(disk, seed=seed, writes=8)
            seed += 1
            time.sleep(0.05)

    churn = threading.Thread(target=writer)
    try:
        churn.start()
        for victim in ("log-processor", "process-server", "mobility", "log-processor", "engine", "process-server"):
            time.sleep(1.2)
            kill_9(appliance, mob, victim)
        stop.set()
        churn.join()
        t = time.time()
        final = appliance.point_after("busy-01", t, timeout=90)
        assert appliance.export("busy-01", final["id"], tmp_path / "z").read_bytes() == disk.read_bytes()
        assert appliance.servers()["busy-01"]["state"] == "protected"
    finally:
        stop.set()
        if churn.is_alive():
            churn.join()
        mob.stop()


def test_retention_prunes_old_points(appliance: Appliance, tmp_path: Path) -> None:
    """Recovery points older than the policy's retention are pruned, and the newest stays exportable."""
    disk = appliance.root / "short.img"
    fill_disk(disk, 4 * MiB, seed=14)
    mob = Mobility(appliance, "short-01", disks=[disk]).start()
    try:
        wait_for(lambda: appliance.servers().get("short-01"), what="registration")
        assert appliance.cli("policy", "create", "brief", "--retention", "3s", "--crash-consistent-every", "1s",
                             "--app-consistent-every", "off").returncode == 0
        assert appliance.cli("vm", "enable", "short-01", "--policy", "brief").returncode == 0
        wait_for(lambda: appliance.servers()["short-01"]["state"] == "protected", timeout=60, what="protection")
        first = appliance.points("short-01")[0]
        wait_for(lambda: appliance.points("short-01")[0]["id"] != first["id"], timeout=30,
                 what="the first point to be pruned")
        now = time.time()
        kept = appliance.points("short-01")
        assert all(p["created_at"] > now - 3 - 2.5 for p in kept), kept  # 3 s retention, a cycle of slack
        # The newest kept point: the oldest may be pruned between listing and exporting (3 s retention).
        assert appliance.export("short-01", kept[-1]["id"], tmp_path / "k").exists()
    finally:
        mob.stop()


def test_a_server_with_two_disks(appliance: Appliance, tmp_path: Path) -> None:
    """A server's two disks are exported from one point, each byte-exact."""
    disks = [appliance.root / "sys.img", appliance.root / "data.img"]
    fill_disk(disks[0], 6 * MiB, seed=31)
    fill_disk(disks[1], 10 * MiB, seed=32)
    mob = Mobility(appliance, "two-01", disks=disks).start()
    try:
        wait_for(lambda: appliance.servers().get("two-01"), what="registration")
        appliance.enable("two-01")
        wait_for(lambda: appliance.servers()["two-01"]["state"] == "protected", timeout=60, what="protection")
        change_disk(disks[1], seed=33)
        t = time.time()
        point = appliance.point_after("two-01", t)
        (tmp_path / "both").mkdir()
        res = appliance.cli("vm", "export", "two-01", "--point", str(point["id"]), "--format", "raw", "--out",
                            str(tmp_path / "both"))
        assert res.returncode == 0, res.stderr
        for i, disk in enumerate(disks):
            assert (tmp_path / "both" / f"two-01-disk{i}.raw").read_bytes() == disk.read_bytes(), i
    finally:
        mob.stop()


def test_disable_and_enable_at_once_starts_a_fresh_copy(appliance: Appliance, tmp_path: Path) -> None:
    """Another policy keeps the copy and its points; disable and enable at once start a fresh, byte-exact copy."""
    mob, disk = replicating(appliance, "again-01", 8 * MiB, seed=41)
    try:
        # Moving a server that replicates to another policy changes nothing but its policy: same copy, same points.
        before = appliance.points("again-01")
        assert appliance.cli("policy", "create", "slow", "--crash-consistent-every", "1h").returncode == 0
        assert appliance.cli("vm", "set", "again-01", "--policy", "slow").returncode == 0
        assert appliance.servers()["again-01"]["policy"] == "slow"
        assert appliance.points("again-01")[: len(before)] == before
        assert "policy-set" in [e["code"] for e in appliance.events()]
        # Faster than any heartbeat or cache in the agents can notice the gap in between.
        assert appliance.cli("vm", "disable", "again-01", "--yes").returncode == 0
        assert appliance.cli("vm", "enable", "again-01", "--policy", "fast").returncode == 0
        change_disk(disk, seed=42)
        t = time.time()
        point = appliance.point_after("again-01", t)
        assert appliance.export("again-01", point["id"], tmp_path / "n").read_bytes() == disk.read_bytes()
    finally:
        mob.stop()


def test_engine_restart_while_the_source_is_down_keeps_the_state(appliance: Appliance) -> None:
    """An engine restarted while the source is off still knows the server is protected and keeps its points; it
    does not announce the long-finished initial replication again."""
    mob, _ = replicating(appliance, "quiet-01", 4 * MiB, seed=51)
    mob.stop()  # the source server is switched off
    appliance.stop()
    appliance.start()
    # Nothing will arrive from the source, yet the appliance knows where the copy stands.
    server = wait_for(lambda: (s := appliance.servers()["quiet-01"])["state"] == "protected" and s,
                      what="the state to be known again")
    assert server["disks"][0]["bytes_done"] == server["disks"][0]["bytes_total"]
    assert appliance.points("quiet-01")
    assert [e["code"] for e in appliance.events()].count("initial-replication-complete") == 1


def test_a_block_device_is_replicated(appliance: Appliance, tmp_path: Path) -> None:
    """Block devices cannot tell holes (SEEK_DATA fails with EINVAL): all of it must be read."""
    image = appliance.root / "lo.img"
    fill_disk(image, 8 * MiB, seed=61)
    res = subprocess.run(["losetup", "--find", "--show", str(image)], capture_output=True, text=True)
    if res.returncode != 0:
        pytest.skip(f"no loop device here ({res.stderr.strip()})")
    device = res.stdout.strip()
    try:
        mob = Mobility(appliance, "blk-01", disks=[Path(device)]).start()
        try:
            wait_for(lambda: appliance.servers().get("blk-01"), what="registration")
            appliance.enable("blk-01")
            wait_for(lambda: appliance.servers()["blk-01"]["state"] == "protected", timeout=60, what="protection")
            assert appliance.export("blk-01", "latest", tmp_path / "b").read_bytes() == image.read_bytes()
        finally:
            mob.stop()
    finally:
        subprocess.run(["losetup", "--detach", device], check=False)
