from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from engine.errors import ProtocolError
from engine.events import EventHub
from engine.links.admin import ServerRemoved
from engine.links.management import Registration
from engine.records import Disk, DiskStatus, Event, Health, ServerState, ServerStatus, from_json, to_json
from engine.state import StateDB


def test_state_db_round_trip_and_revocation(tmp_path: Path) -> None:
    """A registered server is kept in the WAL state database; a forgotten one's certificate stays revoked."""
    db = StateDB(tmp_path / "state.db")
    assert db._db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    db.add_server(server_id="s1", name="web", hostname="h", os="o", agent_version="1", cert_serial=0xABC,
                  address="10.0.0.1", disks=[Disk("/dev/sda", 10)])
    assert repr(db).endswith("servers=1>")
    web = db.server(name="web")
    assert web is not None and web.cert_serial == 0xABC and web.disks == (Disk("/dev/sda", 10),)
    assert not web.replicate and web.epoch is None and web.replicated_sizes == (10,)
    assert not db.is_revoked(0xABC)
    db.revoke_server("s1")
    assert db.is_revoked(0xABC)
    assert db.server(name="web") is None
    db.close()
    again = StateDB(tmp_path / "state.db")
    assert again.is_revoked(0xABC)


def test_events_are_paged_oldest_first(tmp_path: Path) -> None:
    """Events are listed oldest first: the latest N when a limit is given, or those after a given id."""
    db = StateDB(tmp_path / "state.db")
    for i in range(10):
        db.add_event("info", "c", f"m{i}")
    assert [e.message for e in db.events(limit=3)] == ["m7", "m8", "m9"]
    assert [e.message for e in db.events(after=9)] == ["m9"]  # ids count from 1


def test_records_survive_json() -> None:
    """A server's status survives its JSON form unchanged, and fields from a newer engine are ignored."""
    s = ServerStatus(server_id="1", name="n", hostname="h", os="o", agent_version="v", state=ServerState.REGISTERED,
                     health=Health.HEALTHY, health_cause=None, health_detail=None, registered_at=1.0,
                     last_heartbeat=None, address=None, disks=(DiskStatus("/a", 1), DiskStatus("/b", 2)))
    assert from_json(ServerStatus, to_json(s)) == s
    assert from_json(ServerStatus, to_json(s)).state is ServerState.REGISTERED
    assert from_json(ServerStatus, {**to_json(s), "added_by_a_newer_engine": 1}) == s
    assert s.total_size == 3


def test_slow_subscriber_is_dropped_not_blocking(tmp_path: Path) -> None:
    """A console that does not read its event stream is dropped with an end marker, never blocking the engine."""
    async def main() -> None:
        hub = EventHub(StateDB(tmp_path / "s.db"))
        with hub.subscribe() as queue:
            for i in range(5000):
                hub.publish(ServerRemoved(f"s{i}"))
            assert repr(hub) == "<EventHub subscribers=0>"
            items = [queue.get_nowait() for _ in range(queue.qsize())]
            assert items[-1] is None  # the end-of-stream marker: the client resyncs

    asyncio.run(main())


def test_registration_fields_are_checked() -> None:
    """A registration with a bad name, bad disks, control characters or over-long text is a bad request."""
    good = {"passphrase": "p" * 10, "csr": "x", "name": "web-01", "hostname": "h", "os": "o", "agent_version": "1",
            "disks": [{"path": "/dev/sda", "size": 1}]}
    assert Registration.parse(good).name == "web-01"
    for bad in ({"name": ""}, {"name": "a/b"}, {"disks": "x"}, {"disks": [{"path": "/x", "size": True}]},
                {"disks": [{"path": "/x"}] * 65}, {"hostname": "\x00"}, {"os": "x" * 300}):
        with pytest.raises(ProtocolError):
            Registration.parse({**good, **bad})
    assert isinstance(Event(1, 1.0, "info", "c", "m"), Event)
