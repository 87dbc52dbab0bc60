"""The ports an admin moves while the appliance runs: checked before anything changes, applied live
without restarting the engine or the other agents, followed by the mobility services, and tested."""

from __future__ import annotations

import contextlib
import socket
import subprocess
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from tests.appliance import PYTHON, Appliance, Mobility, change_disk, fill_disk, free_port, make_disk, wait_for

MiB = 1024 * 1024


@pytest.fixture
def app(tmp_path_factory: pytest.TempPathFactory) -> Any:
    appliance = Appliance(tmp_path_factory.mktemp("ports"))
    appliance.start()
    yield appliance
    appliance.stop()


def _ports(app: Appliance) -> dict[str, Any]:
    return dict(app.json("ports", "show"))


def _pids(app: Appliance) -> dict[str, int]:
    return {a["name"]: a["pid"] for a in app.json("engine", "status")["agents"]}


def _accepts(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=1).close()
        return True
    except OSError:
        return False


def _refused(app: Appliance, *args: str) -> str:
    """Run ``ports set`` expecting a refusal; returns its one line."""
    res = app.cli("ports", "set", *args)
    assert res.returncode != 0, res.stdout
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in res.stderr, res.stderr
    return lines[0]


def test_every_bad_port_change_is_one_line_and_changes_nothing(app: Appliance) -> None:
    """Out of range, equal ports, a port another program holds (named), an address not on this machine, a
    bad address: each refused with one line; ports, agents and events stay as they were."""
    before, pids, events = _ports(app), _pids(app), len(app.events())
    assert _refused(app, "--data", "70000").startswith("godwit ports set: argument --data")
    assert "must differ" in _refused(app, "--data", str(app.management_port))
    assert "this appliance's management port" in _refused(app, "--data", str(before["management_port"]),
                                                           "--management", str(free_port()))
    holder_port = free_port()
    holder = subprocess.Popen([PYTHON, "-c", "import socket,sys,time; s=socket.socket(); "
                               "s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1); "
                               f"s.bind(('0.0.0.0', {holder_port})); s.listen(); print('up', flush=True); "
                               "time.sleep(60)"], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "up"
        line = _refused(app, "--data", str(holder_port))
        assert f"port {holder_port} is in use by another program" in line and f"(pid {holder.pid})" in line, line
        assert "Stop that program" in line
    finally:
        holder.kill()
        holder.communicate()
    line = _refused(app, "--listen", "198.51.100.7")
    assert "198.51.100.7 is not an address of this machine" in line and "127.0.0.1" in line, line
    assert "is not an IP address" in _refused(app, "--listen", "not-an-address")
    assert "IPv6" in _refused(app, "--listen", "::1")
    assert "Say what to change" in _refused(app)
    assert "listen address on its own" in _refused(app, "--listen", "127.0.0.1", "--data", str(free_port()))
    assert _ports(app) == before
    assert _pids(app) == pids
    assert [e["code"] for e in app.events()[events:] if e["code"] == "ports-changed"] == []


def test_data_port_moves_live_during_initial_replication_and_churn(app: Appliance, tmp_path: Path) -> None:
    """The data port moves twice while the source sends (initial, then delta under churn): only the process
    server restarts, the source follows, and the last point exports byte-identical to the source."""
    disk = tmp_path / "churn.img"
    fill_disk(disk, 48 * MiB, seed=11)
    mob = Mobility(app, "churn-01", disks=[disk]).start()
    try:
        wait_for(lambda: app.servers().get("churn-01"), what="the server to register")
        app.cli("vm", "set", "churn-01", "--max-mbps", "80")  # about 5 s of initial replication
        app.enable("churn-01")
        wait_for(lambda: (s := app.servers()["churn-01"])["disks"][0]["bytes_done"] > 4 * MiB and
                 s["state"] == "initial-replication", what="initial replication to be under way")
        pids = _pids(app)
        new_data = free_port()
        moved = app.json("ports", "set", "--data", str(new_data))
        assert moved["data_port"] == new_data and app.setup()["data_port"] == new_data
        after = _pids(app)
        assert after["replication-manager"] == pids["replication-manager"]
        assert after["log-processor"] == pids["log-processor"]
        assert after["process-server"] != pids["process-server"]
        assert not _accepts(app.data_port)
        app.data_port = new_data
        app.cli("vm", "set", "churn-01", "--max-mbps", "off")
        wait_for(lambda: app.servers()["churn-01"]["state"] == "protected", timeout=90, what="protection")
        assert "initial-replication-complete" in {e["code"] for e in app.events()}
        # Delta replication under churn, the port moving in the middle of it.
        for i in range(6):
            change_disk(disk, seed=100 + i, writes=8)
            if i == 2:
                app.json("ports", "set", "--data", str(newer := free_port()))
                app.data_port = newer
            time.sleep(0.3)
        change_disk(disk, seed=200, writes=4)
        t = time.time()
        point = app.point_after("churn-01", t, timeout=90)
        assert app.export("churn-01", point["id"], tmp_path / "out").read_bytes() == disk.read_bytes()
        changed = [e["message"] for e in app.events() if e["code"] == "ports-changed"]
        assert len(changed) == 2 and all("data port moved" in m for m in changed), changed
        assert not [e for e in app.events() if e["code"] == "agent-restarted"], "a planned restart is not a crash"
        report = app.json("ports", "test")
        assert report["ok"] and {c["name"] for c in report["checks"]} == {"management port", "data port",
                                                                          "target storage (local)"}, report
        reach = {r["name"]: r for r in report["servers"]}
        assert reach["churn-01"]["data_at"] and reach["churn-01"]["management_port"] == app.management_port
    finally:
        mob.stop()


def test_management_port_moves_followed_by_two_sources_a_stopped_one_rejoins(app: Appliance) -> None:
    """Two running sources follow a new management port; the old port stays open until the deadline because a
    third was stopped, then closes with an event naming it; the third re-joins on the new port."""
    mobs = {name: Mobility(app, name, disks=[make_disk(app.root / f"{name}.img")]).start()
            for name in ("mgmt-a", "mgmt-b", "mgmt-c")}
    try:
        wait_for(lambda: set(mobs) <= set(app.servers()), what="three servers to register")
        mobs["mgmt-c"].stop()
        old, new = app.management_port, free_port()
        pids = _pids(app)
        moved = app.json("ports", "set", "--management", str(new), "--keep-old-port", "6s")
        assert moved["management_port"] == new and moved["old_management_port"] == old
        assert _pids(app)["process-server"] == pids["process-server"]
        assert f"--appliance {app.setup()['host']}:{new} " in app.setup()["mobility_command"]
        app.management_port = new
        status = wait_for(lambda: (p := _ports(app))["servers_not_moved"] == ["mgmt-c"] and p,
                          what="the two running sources to reach the new port")
        assert _accepts(old) and status["old_port_closes_at"] > time.time() - 1
        closed = wait_for(lambda: [e for e in app.events() if e["code"] == "old-port-closed"], timeout=20,
                          what="the old port to close at its deadline")
        assert closed[0]["severity"] == "warning" and "mgmt-c" in closed[0]["message"]
        assert f":{new}" in closed[0]["message"] and "mgmt-a" not in closed[0]["message"], closed
        assert not _accepts(old) and _ports(app)["old_management_port"] is None
        for name in ("mgmt-a", "mgmt-b"):  # still heartbeating, on the new port
            t = time.time()
            wait_for(lambda n=name, t=t: (app.servers()[n]["last_heartbeat"] or 0) > t, what=f"{name} to heartbeat")
            assert "moved from" in mobs[name].output
        # The admin follows the event: the stopped source, pointed at the new port, re-joins as itself.
        third = Mobility(app, "mgmt-c", disks=mobs["mgmt-c"].disks, state_dir=mobs["mgmt-c"].state_dir).start()
        mobs["mgmt-c"] = third
        back = wait_for(lambda: [e for e in app.events() if e["code"] == "server-reached-new-port"],
                        what="the stopped source to re-join")
        assert "mgmt-c" in back[0]["message"]
        assert len(app.servers()) == 3
    finally:
        for mob in mobs.values():
            if mob.proc is not None:
                mob.stop()


def test_listen_address_moves_both_ports_and_the_registration_command(app: Appliance) -> None:
    """Listening on one address: both ports answer there, the registration command names it, the test passes."""
    pids = _pids(app)
    moved = app.json("ports", "set", "--listen", "127.0.0.1")
    assert moved["listen_address"] == "127.0.0.1"
    assert app.setup()["host"] == "127.0.0.1" and "--appliance 127.0.0.1:" in app.setup()["mobility_command"]
    assert _pids(app)["log-processor"] == pids["log-processor"]
    report = app.json("ports", "test")
    assert report["ok"], report
    rules = {(r["direction"], r["port"]) for r in moved["firewall"]}
    assert ("inbound", app.management_port) in rules and ("inbound", app.data_port) in rules


def test_the_management_port_moves_back_to_the_one_being_left(app: Appliance) -> None:
    """Moving the management port back to the old one still open swaps them; nothing is bound anew."""
    # A registered server that is not running keeps the old port open: with no server at all, the port watch
    # would close it within a second, before the move back.
    mob = Mobility(app, "back-a", disks=[make_disk(app.root / "back-a.img")]).start()
    wait_for(lambda: "back-a" in app.servers(), what="the server to register")
    mob.stop()
    old, new = app.management_port, free_port()
    app.json("ports", "set", "--management", str(new), "--keep-old-port", "1h")
    back = app.json("ports", "set", "--management", str(old), "--keep-old-port", "0")
    assert back["management_port"] == old and back["old_management_port"] is None
    wait_for(lambda: _accepts(old) and not _accepts(new), what="the port to move back")
    assert "moved back from" in [e for e in app.events() if e["code"] == "ports-changed"][-1]["message"]


class _Forwarder:
    """A TCP port forward (as a NAT or a load balancer would be) from ``listen`` to ``target``."""

    def __init__(self, listen: tuple[str, int], target: tuple[str, int]) -> None:
        self.target = target
        self.sock = socket.create_server(listen)
        self.open: list[socket.socket] = []
        self.threads = [threading.Thread(target=self._accept, daemon=True)]
        self.threads[0].start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.sock.accept()
            except OSError:
                return
            self.open.append(client)
            try:
                upstream = socket.create_connection(self.target, timeout=5)
                upstream.settimeout(None)
            except OSError:
                continue
            self.open.append(upstream)
            for a, b in ((client, upstream), (upstream, client)):
                self.threads.append(threading.Thread(target=self._pump, args=(a, b), daemon=True))
                self.threads[-1].start()

    @staticmethod
    def _pump(a: socket.socket, b: socket.socket) -> None:
        try:
            while data := a.recv(65536):
                b.sendall(data)
        except OSError:
            pass
        finally:
            for s in (a, b):
                with contextlib.suppress(OSError):
                    s.shutdown(socket.SHUT_RDWR)

    def close(self) -> None:
        self.sock.close()
        for s in self.open:
            with contextlib.suppress(OSError):
                s.shutdown(socket.SHUT_RDWR)
        for t in self.threads:
            t.join(timeout=5)
        for s in self.open:
            s.close()


def test_a_source_that_cannot_reach_the_new_management_port_goes_back_to_the_old_one(
        tmp_path_factory: pytest.TempPathFactory) -> None:
    """A source reaching the appliance through a port forward follows a moved management port, finds it
    unreachable, and goes back to the port that answers (kept open meanwhile); it is named as not moved."""
    app = Appliance(tmp_path_factory.mktemp("forwarded"))
    app.start("--listen", "127.0.0.1")
    forward = _Forwarder(("127.0.0.2", 0), ("127.0.0.1", app.management_port))
    mob = Mobility(app, "nat-01", address=f"127.0.0.2:{forward.sock.getsockname()[1]}").start()
    try:
        wait_for(lambda: app.servers().get("nat-01"), what="registration through the forward")
        new = free_port()
        app.json("ports", "set", "--management", str(new), "--keep-old-port", "1h")
        wait_for(lambda: "does not answer from here" in mob.output, timeout=30, what="the source to give up")
        t = time.time()
        wait_for(lambda: (app.servers()["nat-01"]["last_heartbeat"] or 0) > t, what="heartbeats through the forward")
        assert _ports(app)["servers_not_moved"] == ["nat-01"]
        assert not (mob.state_dir / "management-port.json").exists()  # kept only once a heartbeat got through
    finally:
        mob.stop()
        forward.close()
        app.stop()
