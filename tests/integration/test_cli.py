"""The admin command line against a real engine: output shapes and one-line errors."""

from __future__ import annotations

import json
import signal
import subprocess
import time
from pathlib import Path

from tests.appliance import PYTHON, Appliance, Mobility, godwit, wait_for


def test_commands_without_an_engine_say_how_to_start_one(tmp_path: Path) -> None:
    """Admin commands with no engine running exit 1 with one line saying how to start it."""
    for args in (("setup", "show"), ("vm", "list"), ("vm", "show", "x"), ("events",), ("setup", "rotate-passphrase")):
        res = godwit(*args, "--data-dir", str(tmp_path))
        assert res.returncode == 1
        assert res.stderr == (f"godwit: No Godwit engine is running for {tmp_path}. Start it with "
                              f"`godwit serve --data-dir {tmp_path}` or open the console.\n")
        assert res.stdout == ""


def test_usage_errors_are_one_line() -> None:
    """A wrong command line exits 2 with one line that points to --help."""
    for args in (("vm",), ("vm", "frobnicate"), ("serve", "--management-port", "99999"), ("nonsense",)):
        res = godwit(*args)
        assert res.returncode == 2
        assert len(res.stderr.strip().splitlines()) == 1, res.stderr
        assert "--help" in res.stderr


def test_data_dir_from_environment(appliance: Appliance) -> None:
    """Admin commands find the engine's data directory through GODWIT_DATA_DIR."""
    res = godwit("setup", "show", "--json", env={"GODWIT_DATA_DIR": str(appliance.data_dir)})
    assert res.returncode == 0, res.stderr
    assert json.loads(res.stdout)["management_port"] == appliance.management_port


def test_setup_show_and_vm_commands(appliance: Appliance) -> None:
    """setup show and vm list/show print text and JSON an admin can use; an unknown server is one clear line."""
    setup = appliance.setup()
    assert set(setup) >= {"appliance_id", "passphrase", "ca_fingerprint", "management_port", "data_port"}
    human = appliance.cli("setup", "show")
    assert setup["passphrase"] in human.stdout and "godwit mobility run" in human.stdout
    assert "No source servers are registered" in appliance.cli("vm", "list").stdout
    mob = Mobility(appliance, "app-01").start()
    try:
        wait_for(lambda: appliance.servers().get("app-01"), what="app-01 to register")
        table = appliance.cli("vm", "list").stdout.splitlines()
        assert table[0].split()[:3] == ["NAME", "STATE", "HEALTH"]
        assert table[1].split()[:3] == ["app-01", "registered", "healthy"]
        listed = appliance.json("vm", "list")
        assert set(listed[0]) >= {"name", "state", "health", "last_heartbeat", "disks"}
        assert set(listed[0]["disks"][0]) >= {"path", "size"}
        shown = appliance.cli("vm", "show", "app-01").stdout
        assert "app-01" in shown and "Disks:" in shown
    finally:
        mob.stop()
    res = appliance.cli("vm", "show", "nobody-here")
    assert res.returncode == 1
    assert res.stderr == "godwit: No server named 'nobody-here' is registered. `godwit vm list` shows the names.\n"
    res = appliance.cli("vm", "forget", "nobody-here")
    assert res.returncode == 1 and res.stderr.count("\n") == 1


def test_server_that_stops_heartbeating_turns_warning_then_healthy_again(appliance: Appliance) -> None:
    """A server that stops heartbeating turns warning as not seen, and healthy again when it is back, with events."""
    mob = Mobility(appliance, "flaky-01").start()
    wait_for(lambda: appliance.servers().get("flaky-01"), what="flaky-01 to register")
    mob.proc.send_signal(signal.SIGSTOP)  # type: ignore[union-attr]
    try:
        server = wait_for(lambda: (s := appliance.servers()["flaky-01"])["health"] == "warning" and s,
                          what="flaky-01 to be reported as not seen")
        assert server["health_cause"] == "agent-not-seen"
        assert "No heartbeat for" in server["health_detail"]
        wait_for(lambda: "server-not-seen" in [e["code"] for e in appliance.events()], what="the not-seen event")
    finally:
        mob.proc.send_signal(signal.SIGCONT)  # type: ignore[union-attr]
    wait_for(lambda: appliance.servers()["flaky-01"]["health"] == "healthy", what="flaky-01 to recover")
    mob.stop()
    codes = [e["code"] for e in appliance.events()]
    assert "server-not-seen" in codes and "server-seen-again" in codes


def test_events_follow_streams_new_events(appliance: Appliance) -> None:
    """events --follow streams new events as they happen and ends with one line when the engine stops."""
    proc = subprocess.Popen([PYTHON, "-m", "engine", "events", "--follow", "--json", "--data-dir",
                             str(appliance.data_dir)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        first = json.loads(proc.stdout.readline())  # type: ignore[union-attr]
        assert first["code"] == "appliance-created"
        time.sleep(0.5)
        assert appliance.cli("setup", "rotate-passphrase").returncode == 0
        while True:
            event = json.loads(proc.stdout.readline())  # type: ignore[union-attr]
            if event["code"] == "passphrase-rotated":
                break
    finally:
        proc.terminate()
        proc.communicate(timeout=10)
    # The stream ends cleanly when the engine stops.
    proc = subprocess.Popen([PYTHON, "-m", "engine", "events", "--follow", "--data-dir", str(appliance.data_dir)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    time.sleep(1.0)
    appliance.stop()
    _, err = proc.communicate(timeout=20)
    assert proc.returncode == 1
    assert err.startswith(f"godwit: The engine of {appliance.data_dir} stopped")
    assert err.count("\n") == 1
