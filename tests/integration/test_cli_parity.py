"""What the console will call, through the command line against a real engine and a real replicating mobility
service: policies edited, deleted and assigned, refusals that change nothing, export's safety, a resync's
progress and an RPO that keeps ageing while the source is silent.

One appliance and one protected server serve the whole file (each test leaves the server as it found it:
protected, with policy ``fast`` and no bandwidth cap).
"""

from __future__ import annotations

import json
import re
import signal
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.appliance import Appliance, Mobility, replicating, wait_for

MiB = 1024 * 1024
NAME = "par-01"


@pytest.fixture(scope="module")
def parity(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Appliance, Mobility, Path]]:
    """An engine with one protected server (a 32 MiB disk, about 18 MiB of it data) on the ``fast`` policy."""
    app = Appliance(tmp_path_factory.mktemp("parity"))
    app.start()
    try:
        mob, disk = replicating(app, NAME, 32 * MiB, seed=5)
        try:
            yield app, mob, disk
        finally:
            mob.stop()
    finally:
        app.stop()


def _one_line_error(res: Any) -> str:
    """The refusal's single line (after "godwit: "), checking that it is one."""
    assert res.returncode == 1, (res.returncode, res.stdout, res.stderr)
    assert res.stderr.startswith("godwit: ") and res.stderr.count("\n") == 1, res.stderr
    assert "Traceback" not in res.stderr
    return str(res.stderr[len("godwit: "):].rstrip("\n"))


def _show(app: Appliance) -> dict[str, Any]:
    return app.json("vm", "show", NAME)  # type: ignore[no-any-return]


def _codes(app: Appliance) -> list[str]:
    return [e["code"] for e in app.json("events", "--limit", "10000")]


def test_policy_edit_applies_live_and_bad_values_change_nothing(parity: tuple[Appliance, Mobility, Path]) -> None:
    """policy edit changes only the options given, policy show and vm show say the new values at once, and a
    value policy create would refuse is refused in one line with nothing changed."""
    app, _, _ = parity
    assert app.cli("policy", "create", "gold", "--rpo-threshold", "15m", "--retention", "24h",
                   "--crash-consistent-every", "1s", "--app-consistent-every", "off").returncode == 0
    try:
        assert app.cli("vm", "set", NAME, "--policy", "gold").returncode == 0
        res = app.cli("policy", "edit", "gold", "--rpo-threshold", "30m", "--retention", "3d")
        assert res.returncode == 0, res.stderr
        assert "Policy gold: RPO threshold 30m, retention 3d" in res.stdout
        edited = {"name": "gold", "rpo_threshold": 1800, "retention": 3 * 86400, "crash_consistent_every": 1,
                  "app_consistent_every": None}
        assert app.json("policy", "show", "gold") == edited
        shown = _show(app)
        assert (shown["policy"], shown["rpo_threshold"]) == ("gold", 1800)
        assert app.json("events")[-1]["message"] == ("Replication policy gold changed: RPO threshold 15m → 30m, "
                                                     f"retention 1d → 3d; its servers follow from their next cycle: "
                                                     f"{NAME}.")
        for args, why in ((("--retention", "16d"), "at most 15 days"),
                          (("--app-consistent-every", "30m"), "between 1h and 12h"),
                          (("--rpo-threshold", "soon"), "not a duration"),
                          (("--crash-consistent-every", "0"), "at least 1 s"),
                          ((), "Nothing to change")):
            assert why in _one_line_error(app.cli("policy", "edit", "gold", "--rpo-threshold", "1h", *args)
                                          if args else app.cli("policy", "edit", "gold"))
        assert app.json("policy", "show", "gold") == edited
        assert "No policy named 'platinum'" in _one_line_error(app.cli("policy", "edit", "platinum",
                                                                       "--retention", "1h"))
    finally:
        assert app.cli("vm", "set", NAME, "--policy", "fast").returncode == 0


def test_a_policy_in_use_is_deleted_only_after_its_servers_move(parity: tuple[Appliance, Mobility, Path]) -> None:
    """policy delete is refused naming the servers that use the policy; after vm set --policy moves them it is
    deleted (an event says so); default is never deleted; an unknown policy in vm set is refused listing them."""
    app, _, _ = parity
    assert app.cli("policy", "create", "silver").returncode == 0
    assert app.cli("vm", "set", NAME, "--policy", "silver").returncode == 0
    try:
        assert _one_line_error(app.cli("policy", "delete", "silver")) == (
            f"Policy 'silver' is used by {NAME}: move them to another policy first (godwit vm set NAME --policy P).")
        assert "silver" in {p["name"] for p in app.json("policy", "list")}
        refused = _one_line_error(app.cli("vm", "set", NAME, "--policy", "platinum"))
        assert refused.startswith("No policy named 'platinum'; the policies are: ")
        assert {"default", "fast", "silver"} <= set(refused.split(": ", 1)[1].rstrip(".").split(", "))
        assert _show(app)["policy"] == "silver"
    finally:
        res = app.cli("vm", "set", NAME, "--policy", "fast")
        assert res.returncode == 0 and res.stdout.startswith(f"{NAME}: policy fast"), res.stderr
    set_event = app.json("events")[-1]
    assert set_event["code"] == "policy-set" and "fast (was silver)" in set_event["message"]
    assert app.cli("policy", "delete", "silver").returncode == 0
    assert "silver" not in {p["name"] for p in app.json("policy", "list")}
    assert "policy-deleted" in _codes(app)
    assert "cannot be deleted" in _one_line_error(app.cli("policy", "delete", "default"))
    assert "default" in {p["name"] for p in app.json("policy", "list")}


def test_enabling_a_replicating_server_again_is_refused(parity: tuple[Appliance, Mobility, Path]) -> None:
    """vm enable on a server that replicates already is refused with the advice, and its policy stays."""
    app, _, _ = parity
    before = len(_codes(app))
    assert _one_line_error(app.cli("vm", "enable", NAME, "--policy", "default")) == (
        f"{NAME} already replicates with policy fast: to change its policy, run `godwit vm set {NAME} --policy P`.")
    assert _one_line_error(app.cli("vm", "enable", NAME)).startswith(f"{NAME} already replicates")
    assert _show(app)["policy"] == "fast"
    assert not {"policy-set", "policy-changed", "replication-enabled"} & set(_codes(app)[before:])


def test_bandwidth_caps_out_of_range_are_refused(parity: tuple[Appliance, Mobility, Path]) -> None:
    """vm set --max-mbps refuses 0, 100001 and a non-number in one line with the cap unchanged; off removes it."""
    app, _, _ = parity
    assert app.cli("vm", "set", NAME, "--max-mbps", "500").returncode == 0
    try:
        for value in ("0", "100001", "abc"):
            assert "from 1 to 100000, or off" in _one_line_error(app.cli("vm", "set", NAME, "--max-mbps", value))
        assert _show(app)["max_mbps"] == 500
        assert "Nothing to set" in _one_line_error(app.cli("vm", "set", NAME))
    finally:
        assert app.cli("vm", "set", NAME, "--max-mbps", "off").returncode == 0
    assert _show(app)["max_mbps"] is None


def test_events_limit_must_be_1_or_more(parity: tuple[Appliance, Mobility, Path]) -> None:
    """events --limit 0 or a negative number is a one-line usage error; --limit 1 prints one event."""
    app, _, _ = parity
    for value in ("0", "-3"):
        res = app.cli("events", "--limit", value)
        assert res.returncode == 2 and res.stdout == ""
        assert res.stderr.count("\n") == 1 and "is not 1 or more" in res.stderr, res.stderr
    assert len(app.json("events", "--limit", "1")) == 1


def test_export_needs_an_existing_directory_and_force_to_replace(parity: tuple[Appliance, Mobility, Path],
                                                                 tmp_path: Path) -> None:
    """vm export refuses a missing --out directory without creating it, never replaces an image without
    --force (the file stays as it was), and with --force replaces it with the source disk, byte for byte."""
    app, _, disk = parity
    export = ("vm", "export", NAME, "--point", "latest", "--format", "raw", "--out")
    missing = tmp_path / "missing" / "deeper"
    assert "does not exist" in _one_line_error(app.cli(*export, str(missing)))
    assert not (tmp_path / "missing").exists()
    image = tmp_path / f"{NAME}-disk0.raw"
    image.write_bytes(b"an older export")
    assert _one_line_error(app.cli(*export, str(tmp_path))) == (
        f"{image} exists: give --force to overwrite it, or another --out.")
    assert image.read_bytes() == b"an older export"
    res = app.cli(*export, str(tmp_path), "--force", timeout=120)
    assert res.returncode == 0, res.stderr
    assert image.read_bytes() == disk.read_bytes()
    assert sorted(p.name for p in tmp_path.iterdir()) == [image.name]  # nothing left beside it


def _progress(app: Appliance) -> tuple[dict[str, Any], str] | None:
    """vm show (JSON and text) while the resync's pass is part-way, else None."""
    shown = _show(app)
    d = shown["disks"][0]
    if not (d["phase"] == "resync" and 0 < d["bytes_done"] < d["bytes_total"]):
        return None
    text = app.cli("vm", "show", NAME).stdout
    line = re.search(r"^  \S+  [\d.]+ MiB  resync (\d+)% \(", text, re.M)
    return (shown, text) if line and 0 < int(line.group(1)) < 100 else None


def test_a_resync_shows_its_progress_and_completes_once(parity: tuple[Appliance, Mobility, Path]) -> None:
    """During a resync (slowed by a bandwidth cap) vm show gives the disk's progress, rate and ETA; when every
    disk is done, exactly one resync-complete event is recorded and the server is protected again."""
    app, _, _ = parity
    assert app.cli("vm", "set", NAME, "--max-mbps", "16").returncode == 0  # ~8 s for the disk's 18 MiB of data
    try:
        assert app.cli("vm", "resync", NAME).returncode == 0
        resyncing = wait_for(lambda: _show(app)["disks"][0]["phase"] == "resync", what="the resync to show")
        assert resyncing
        shown, text = wait_for(lambda: _progress(app), timeout=90, what="the resync's pass to be part-way")
    finally:
        assert app.cli("vm", "set", NAME, "--max-mbps", "off").returncode == 0
    d = shown["disks"][0]
    assert shown["state"] == "resyncing" and d["bytes_total"] == 32 * MiB
    assert d["throughput_bps"] > 0 and d["eta_seconds"] is not None and d["eta_seconds"] > 0
    assert re.search(r"resync \d+% \([\d.]+ MiB\)  [\d.]+ \S+/s  ETA \d+ s$", text, re.M), text  # rate, ETA
    wait_for(lambda: "resync-complete" in _codes(app), timeout=60, what="the resync to complete")
    done = time.time()
    wait_for(lambda: any(p["created_at"] > done for p in app.points(NAME)), timeout=30,
             what="a recovery point after the resync")
    shown = _show(app)
    assert shown["state"] == "protected" and shown["disks"][0]["phase"] == ""
    assert shown["disks"][0]["bytes_done"] == shown["disks"][0]["bytes_total"]
    assert _codes(app).count("resync-complete") == 1


def test_the_rpo_keeps_ageing_while_the_source_is_silent(parity: tuple[Appliance, Mobility, Path]) -> None:
    """vm show --json carries newest_data_at and reckons the RPO from it when it prints: with the mobility
    service stopped (SIGSTOP) two readings a few seconds apart grow, and after SIGCONT it comes back down."""
    app, mob, _ = parity
    assert mob.proc is not None
    shown = _show(app)
    assert shown["newest_data_at"] is not None and shown["rpo_threshold"] == 60
    assert shown["rpo_seconds"] == pytest.approx(time.time() - shown["newest_data_at"], abs=5)
    mob.proc.send_signal(signal.SIGSTOP)
    try:
        wait_for(lambda: _show(app)["health_cause"] == "agent-not-seen", what="the silent source to be noticed")
        first = _show(app)
        time.sleep(4)
        second = _show(app)
        listed = {s["name"]: s for s in app.json("vm", "list")}[NAME]
    finally:
        mob.proc.send_signal(signal.SIGCONT)
    assert second["newest_data_at"] == first["newest_data_at"]  # nothing new arrived ...
    assert second["rpo_seconds"] > first["rpo_seconds"] + 3  # ... and the RPO grew all the same
    assert listed["newest_data_at"] == first["newest_data_at"] and listed["rpo_seconds"] > first["rpo_seconds"]
    text = app.cli("vm", "show", NAME).stdout
    assert re.search(r"^RPO: +\d+ s \((threshold|above the threshold of) 1m\)$", text, re.M), text
    # Back down: newer data, and an RPO well under what it had grown to (a cycle a second keeps it near 1 s).
    back = wait_for(lambda: (s := _show(app))["rpo_seconds"] < second["rpo_seconds"] - 3 and s, timeout=30,
                    what="the RPO to come back down after SIGCONT")
    assert back["newest_data_at"] > second["newest_data_at"]
    wait_for(lambda: _show(app)["health"] == "healthy", what=f"{NAME} healthy again")
    assert json.loads(app.cli("vm", "list", "--json").stdout)[0]["rpo_seconds"] < second["rpo_seconds"]
