"""A change of a server's desired state reaches its mobility service at once (management 1.4's long poll), not at
its next heartbeat: a real engine whose heartbeat interval is 30 s, and real mobility service processes.

Each bound below is a third of the heartbeat interval, counted from the admin's command: a source that learnt
the change only by its heartbeat (at least ~28 s after the one before) would miss it. These are not timings of
the long poll (it takes a fraction of a second: see the manager's module for the measured figures).
"""

from __future__ import annotations

import json
import os
import re
import ssl
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from engine.errors import CertificateRequired, ProtocolError, Revoked
from engine.links import Link
from engine.links.management import MANAGEMENT, DesiredChange, HeartbeatAnswer, ServerFacts
from engine.mobility.appliance_client import ApplianceClient
from engine.records import Disk
from tests.appliance import Appliance, Mobility, fill_disk, wait_for

MiB = 1024 * 1024
HEARTBEAT = 30.0
SOON = HEARTBEAT / 3
EARLY = "asking it now"  # the mobility service's line when the long poll says its desired state changed


@pytest.fixture
def slow_appliance(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Appliance]:
    """A real engine whose sources send a heartbeat every 30 s."""
    app = Appliance(tmp_path_factory.mktemp("appliance"))
    app.start("--heartbeat-interval", str(HEARTBEAT))
    yield app
    app.stop()


def _generations(mob: Mobility) -> list[str]:
    """The generations of the desired state that the mobility service's heartbeats brought, in order."""
    return re.findall(r"heartbeat\.complete interval=\S+ generation=([0-9a-f]+)", mob.output)


def _first_byte(app: Appliance) -> bool:
    """Whether the process server acknowledged a batch of data (its durable stream state in the cache says so)."""
    for stream in (app.data_dir / "cache").rglob("stream.json"):
        try:
            if json.loads(stream.read_text()).get("bytes_received", 0) > 0:
                return True
        except (OSError, ValueError):
            continue
    return False


def _data_connections(mob: Mobility, port: int) -> int:
    """The mobility service's established TCP connections to ``port`` (from /proc: its sockets, the kernel's
    table of connections)."""
    assert mob.proc is not None
    inodes = set()
    for fd in Path(f"/proc/{mob.proc.pid}/fd").iterdir():
        try:
            target = os.readlink(fd)
        except OSError:
            continue
        if target.startswith("socket:["):
            inodes.add(target[len("socket:["):-1])
    count = 0
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            fields = line.split()
            if fields[3] == "01" and int(fields[2].rsplit(":", 1)[1], 16) == port and fields[9] in inodes:
                count += 1
    return count


def _within(started: float, predicate: object, what: str) -> None:
    """``predicate`` holds before SOON seconds have passed since ``started`` (a heartbeat would be later)."""
    wait_for(predicate, timeout=max(0.1, started + SOON - time.monotonic()),
             what=f"{what}, within {SOON:.0f} s of the admin's command (heartbeats every {HEARTBEAT:.0f} s)")


def test_enable_a_cap_and_disable_reach_the_source_long_before_its_heartbeat(slow_appliance: Appliance) -> None:
    """With heartbeats 30 s apart: a bandwidth cap makes the source ask for its desired state at once; after
    `vm enable` the process server has the source's first data, and after `vm disable` the source has stopped and
    holds no connection to the data port, each within 10 s of the command."""
    app = slow_appliance
    disk = app.root / "push.img"
    fill_disk(disk, 32 * MiB, seed=11)
    mob = Mobility(app, "push-01", disks=[disk]).start()
    try:
        wait_for(lambda: _generations(mob), timeout=60, what="the first heartbeat that names a generation")
        # A cap, while the server does not replicate yet: 8 Mbit/s keeps the copy going for half a minute below.
        early = mob.output.count(EARLY)
        started = time.monotonic()
        assert app.cli("vm", "set", "push-01", "--max-mbps", "8").returncode == 0
        _within(started, lambda: mob.output.count(EARLY) > early and len(_generations(mob)) >= 2,
                "the source to ask for its desired state after a new cap")
        assert _generations(mob)[-1] != _generations(mob)[0]

        started = time.monotonic()
        res = app.cli("vm", "enable", "push-01")
        assert res.returncode == 0, res.stderr
        _within(started, lambda: _first_byte(app), "the process server to acknowledge the source's first data")
        assert _data_connections(mob, app.data_port) >= 1  # it is sending (the cap: 32 MiB take ~30 s)
        assert app.servers()["push-01"]["state"] == "initial-replication"

        disabled = mob.output.count("replication disabled by the appliance")
        started = time.monotonic()
        res = app.cli("vm", "disable", "push-01", "--yes")
        assert res.returncode == 0, res.stderr
        _within(started, lambda: mob.output.count("replication disabled by the appliance") > disabled
                and _data_connections(mob, app.data_port) == 0, "the source to stop sending")
        assert mob.proc is not None and mob.proc.poll() is None  # it goes on, with heartbeats and its long poll
        assert mob.output.count(EARLY) >= early + 3
    finally:
        mob.stop()
    assert "Traceback" not in mob.output


def test_a_resync_and_a_policy_change_reach_a_replicating_source_at_once(slow_appliance: Appliance) -> None:
    """With heartbeats 30 s apart, a replicating source starts a requested resync, and takes a policy's new
    settings, within 10 s of the admin's command."""
    app = slow_appliance
    disk = app.root / "rs.img"
    fill_disk(disk, 4 * MiB, seed=12)
    mob = Mobility(app, "rs-01", disks=[disk]).start()
    try:
        wait_for(lambda: _generations(mob), timeout=60, what="the first heartbeat that names a generation")
        app.enable("rs-01")  # policy "fast": a point every second
        wait_for(lambda: app.servers()["rs-01"]["state"] == "protected", timeout=60, what="protection")

        started = time.monotonic()
        assert app.cli("vm", "resync", "rs-01").returncode == 0
        _within(started, lambda: "resync 1: sending every block again" in mob.output, "the source to start the resync")

        before = _generations(mob)[-1]
        early = mob.output.count(EARLY)
        started = time.monotonic()
        res = app.cli("policy", "edit", "fast", "--retention", "2h")
        assert res.returncode == 0, res.stderr
        _within(started, lambda: mob.output.count(EARLY) > early and _generations(mob)[-1] != before,
                "the source to take the policy's new settings")
    finally:
        mob.stop()


def _client(app: Appliance, state_dir: Path, *, link: Link, certificate: bool = True) -> ApplianceClient:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.load_verify_locations(state_dir / "ca.crt")
    if certificate:
        ctx.load_cert_chain(state_dir / "client.crt", state_dir / "client.key")
    return ApplianceClient("127.0.0.1", app.management_port, context=ctx, link=link, port_name="management port",
                           where=app.address, timeout=60)


def test_an_older_source_that_never_long_polls_follows_by_heartbeats(slow_appliance: Appliance) -> None:
    """A source of management 1.3 (no long poll) is served as before: each heartbeat's answer holds the desired
    state as it is now. The long poll itself needs the client certificate of a registered server and a
    generation; it answers at once when asked about a generation the server is no longer at."""
    app = slow_appliance
    mob = Mobility(app, "old-01").start()
    wait_for(lambda: _generations(mob), timeout=60, what="registration and a first heartbeat")
    mob.stop()
    old = Link("management", 1, 3, "management protocol")
    facts = ServerFacts(hostname="old", os="Linux", agent_version="0.0.1",
                        disks=(Disk(path=str(mob.disks[0]), size=mob.disks[0].stat().st_size),))
    with _client(app, mob.state_dir, link=old) as client:
        answer = client.call("POST", "/v1/heartbeat", facts, HeartbeatAnswer)
        assert answer.desired.replicate is False and answer.heartbeat_interval == HEARTBEAT
        app.enable("old-01")
        answer = client.call("POST", "/v1/heartbeat", facts, HeartbeatAnswer)
        assert answer.desired.replicate is True and answer.desired.epoch is not None
        assert answer.desired_generation is not None  # named; an older source ignores it

        with _client(app, mob.state_dir, link=MANAGEMENT) as poller:
            started = time.monotonic()
            change = poller.call("GET", "/v1/desired?after=00&wait=20", None, DesiredChange)
            assert change == DesiredChange(generation=answer.desired_generation, changed=True)
            assert time.monotonic() - started < SOON
            unchanged = poller.call("GET", f"/v1/desired?after={answer.desired_generation}&wait=0.3", None,
                                    DesiredChange)
            assert unchanged == DesiredChange(generation=answer.desired_generation, changed=False)
            with pytest.raises(ProtocolError, match="after"):
                poller.call("GET", "/v1/desired?after=not-hex", None, DesiredChange)
        with _client(app, mob.state_dir, link=MANAGEMENT, certificate=False) as anonymous, \
                pytest.raises(CertificateRequired):
            anonymous.call("GET", "/v1/desired?after=00", None, DesiredChange)
        assert app.cli("vm", "forget", "old-01").returncode == 0
        with _client(app, mob.state_dir, link=MANAGEMENT) as revoked, pytest.raises(Revoked):
            revoked.call("GET", f"/v1/desired?after={answer.desired_generation}", None, DesiredChange)
