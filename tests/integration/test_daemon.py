"""The engine daemon: one per data directory, clean shutdown, agents restarted, ports checked."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import stat
import subprocess
import time
from pathlib import Path

import pytest

from tests.appliance import PYTHON, Appliance, Mobility, free_port, godwit, wait_for


def _agent_pid(app: Appliance, name: str = "replication-manager") -> int:
    agents = {a["name"]: a for a in app.json("engine", "status")["agents"]}
    pid = agents[name]["pid"]
    assert isinstance(pid, int)
    return pid


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # a zombie still answers kill(0); it is dead for our purposes
    with open(f"/proc/{pid}/stat") as f:
        return f.read().split()[2] != "Z"


def test_first_start_creates_identity_with_private_files(appliance: Appliance) -> None:
    """A first start creates private files and encrypted keys, and no secret goes to the database or the log."""
    d = appliance.data_dir
    assert stat.S_IMODE(os.stat(d).st_mode) == 0o700
    assert stat.S_IMODE(os.stat(d / "admin.sock").st_mode) == 0o600
    assert stat.S_IMODE(os.stat(d / "secrets.json").st_mode) == 0o600
    for key in ("ca.key", "server.key"):
        pem = (d / "pki" / key).read_bytes()
        assert b"ENCRYPTED PRIVATE KEY" in pem, f"{key} must be stored encrypted"
    setup = appliance.setup()
    assert setup["management_port"] == appliance.management_port
    assert setup["data_port"] == appliance.data_port
    assert setup["passphrase"] not in (d / "state.db").read_bytes().decode(errors="replace")
    assert setup["passphrase"] not in appliance.log("engine")
    assert "protected by file permissions only" in setup["secret_store"]
    codes = [e["code"] for e in appliance.events()]
    assert codes[:3] == ["appliance-created", "secrets-in-file", "engine-started"]
    assert f"--ca-fingerprint {setup['ca_fingerprint']}" in setup["mobility_command"]


def test_second_serve_on_the_same_data_dir_refuses(appliance: Appliance) -> None:
    """A second engine on the same data directory refuses in one line naming the running one, which goes on."""
    res = godwit("serve", "--data-dir", str(appliance.data_dir), "--management-port", str(free_port()),
                 "--data-port", str(free_port()))
    assert res.returncode == 1
    assert res.stderr.strip() == (f"godwit: Another Godwit engine (pid {appliance.proc.pid}) is already running "  # type: ignore[union-attr]
                                  f"for {appliance.data_dir}. Stop it first, or use another --data-dir.")
    assert appliance.ready()


def test_sigterm_stops_everything_cleanly(appliance: Appliance) -> None:
    """SIGTERM stops the engine and its agents and removes its socket; it starts again with the same identity."""
    agent = _agent_pid(appliance)
    assert appliance.stop() == 0
    assert not _alive(agent)
    assert not (appliance.data_dir / "admin.sock").exists()
    assert not appliance.port_open()
    # It starts again on the same data directory and keeps its identity.
    fingerprint = (appliance.data_dir / "pki" / "ca.crt").read_bytes()
    appliance.start()
    assert (appliance.data_dir / "pki" / "ca.crt").read_bytes() == fingerprint
    assert [e["code"] for e in appliance.events()].count("appliance-created") == 1
    assert "engine-stopped" in [e["code"] for e in appliance.events()]


def test_crashed_agent_is_restarted_and_recorded(appliance: Appliance) -> None:
    """A killed agent is restarted on the same port with one agent-restarted event, and heartbeats go on."""
    mob = Mobility(appliance, "crash-01").start()
    try:
        wait_for(lambda: appliance.servers().get("crash-01"), what="crash-01 to register")
        first = _agent_pid(appliance)
        os.kill(first, signal.SIGKILL)
        wait_for(lambda: _agent_pid_or_none(appliance) not in (None, first), what="a new replication-manager")
        events = [e for e in appliance.events() if e["code"] == "agent-restarted"]
        assert len(events) == 1
        assert "replication-manager was killed by signal 9" in events[0]["message"]
        # The new agent serves the same port: heartbeats go on.
        seen = appliance.servers()["crash-01"]["last_heartbeat"]
        wait_for(lambda: appliance.servers()["crash-01"]["last_heartbeat"] > seen, what="heartbeats after restart")
        assert appliance.json("engine", "status")["agents"][0]["restarts"] == 1
    finally:
        mob.stop()


def _agent_pid_or_none(app: Appliance) -> int | None:
    agents = app.json("engine", "status")["agents"]
    return agents[0]["pid"] if agents[0]["state"] == "running" else None


def test_killed_engine_leaves_no_orphans_and_restarts(appliance: Appliance) -> None:
    """A killed engine takes its agents with it; once it starts again the mobility service comes back by itself."""
    mob = Mobility(appliance, "kill-01").start()
    try:
        wait_for(lambda: appliance.servers().get("kill-01"), what="kill-01 to register")
        agent = _agent_pid(appliance)
        appliance.kill()
        wait_for(lambda: not _alive(agent), timeout=10, what="the agent to die with its supervisor")
        assert not appliance.port_open()
        appliance.start()
        seen = appliance.servers()["kill-01"]["last_heartbeat"]
        wait_for(lambda: appliance.servers()["kill-01"]["last_heartbeat"] > seen, timeout=30,
                 what="the mobility service to come back by itself")
    finally:
        _, out = mob.stop()
    # While the old agent still answers it says the engine is restarting; once it is gone the port is
    # closed. Either way the service says so, retries, and says when the appliance answers again.
    assert "Retrying in" in out and "reachable again" in out


def test_port_in_use_is_one_clear_line(tmp_path: Path) -> None:
    """A management port in use by another program is refused in one line that says what to do."""
    with socket.socket() as busy:
        busy.bind(("0.0.0.0", 0))
        busy.listen()
        port = busy.getsockname()[1]
        res = godwit("serve", "--data-dir", str(tmp_path / "d"), "--management-port", str(port),
                     "--data-port", str(free_port()))
    assert res.returncode == 1
    program = Path(f"/proc/{os.getpid()}/comm").read_text().strip()  # this test holds the port
    assert res.stderr.strip() == (f"godwit: The management port {port} is in use by another program, {program} "
                                  f"(pid {os.getpid()}). Stop that program, or choose another port with "
                                  "--management-port.")
    assert not (tmp_path / "d" / "admin.sock").exists()


def test_equal_ports_are_refused(tmp_path: Path) -> None:
    """Equal management and data ports are refused in one line."""
    port = str(free_port())
    res = godwit("serve", "--data-dir", str(tmp_path / "d"), "--management-port", port, "--data-port", port)
    assert res.returncode == 1
    assert res.stderr.strip() == f"godwit: The management and data ports must differ (both are {port})."


@pytest.mark.skipif(os.geteuid() != 0 or not shutil.which("setpriv"), reason="needs root to drop privileges")
def test_privileged_port_without_privilege() -> None:
    """Port 443 without the privilege to bind it is refused in one line that names the ways out."""
    import tempfile

    data = Path(tempfile.mkdtemp(prefix="godwit-nobody-"))
    os.chown(data, 65534, 65534)
    probe = subprocess.run(["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", PYTHON, "-c",
                            "import engine"], capture_output=True, timeout=60)
    if probe.returncode != 0:
        shutil.rmtree(data)
        pytest.skip("this checkout's Python environment is not readable by an unprivileged user")
    res = subprocess.run(["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", "--inh-caps=-all",
                          PYTHON, "-m", "engine", "serve", "--data-dir", str(data / "d"), "--management-port", "443",
                          "--data-port", str(free_port())],
                         capture_output=True, text=True, timeout=60, env={**os.environ, "HOME": str(data)})
    shutil.rmtree(data)
    assert res.returncode == 1, res.stderr
    assert res.stderr.strip() == ("godwit: The management port 443 is privileged (below 1024) and the engine may not "
                                  "bind it: run the engine as root, grant it CAP_NET_BIND_SERVICE (setcap "
                                  "'cap_net_bind_service=+ep' on the Python binary), or choose another port with "
                                  "--management-port above 1023.")


def test_agent_reaped_within_grace_period(appliance: Appliance) -> None:
    """Stopping the engine ends its agents within 10 seconds."""
    agent = _agent_pid(appliance)
    t0 = time.monotonic()
    appliance.stop()
    assert not _alive(agent)
    assert time.monotonic() - t0 < 10
