"""Policies edited, deleted and assigned, bandwidth caps, a resync's progress and the RPO's timestamps: the
rules of engine/replication.py on a real state database, without processes."""

from __future__ import annotations

from pathlib import Path

import pytest

from engine.errors import BadInput, NotFound
from engine.events import EventHub
from engine.links.agent import AppliedPoint, AppliedReport, ReceivedReport
from engine.links.data import StreamState
from engine.records import Disk, Health, Policy, ServerState, ServerStatus
from engine.replication import (
    DEFAULT_POLICY,
    Replication,
    check_max_mbps,
    edited_policy,
    make_policy,
    parse_max_mbps,
)
from engine.state import ServerRecord, StateDB
from engine.storage.local import LocalStorage

MiB = 1024 * 1024
GOLD = Policy(name="gold", rpo_threshold=900, retention=86400, crash_consistent_every=300, app_consistent_every=14400)


def test_an_edit_changes_only_the_settings_given() -> None:
    """An edit changes the settings it names and keeps the others, "off" included."""
    edited = edited_policy(GOLD, {"retention": "3d"})
    assert edited == Policy(name="gold", rpo_threshold=900, retention=3 * 86400, crash_consistent_every=300,
                            app_consistent_every=14400)
    assert edited_policy(GOLD, {"app_consistent_every": "off", "rpo_threshold": "30m"}) == Policy(
        name="gold", rpo_threshold=1800, retention=86400, crash_consistent_every=300, app_consistent_every=None)
    assert edited_policy(GOLD, {}) == GOLD


@pytest.mark.parametrize(("setting", "text", "why"), [
    ("retention", "16d", "at most 15 days"), ("retention", "0", "more than 0"),
    ("app_consistent_every", "30m", "between 1h and 12h"), ("rpo_threshold", "soon", "not a duration"),
    ("crash_consistent_every", "0.5s", "at least 1 s"), ("rpo_threshold", "0", "at least 1 s"),
])
def test_an_edit_is_checked_exactly_as_a_new_policy_is(setting: str, text: str, why: str) -> None:
    """A value a new policy may not have is refused in an edit with the same one-line message."""
    typed = {"rpo_threshold": "15m", "retention": "24h", "crash_consistent_every": "5m",
             "app_consistent_every": "4h", setting: text}
    with pytest.raises(BadInput) as created:
        make_policy("bad", **typed)
    with pytest.raises(BadInput) as edited:
        edited_policy(GOLD, {setting: text})
    assert edited.value.message == created.value.message
    assert why in edited.value.message and "\n" not in edited.value.message


def test_an_edit_of_a_setting_a_policy_does_not_have_is_refused() -> None:
    """A setting that is not a policy's is refused, naming the settings there are."""
    with pytest.raises(BadInput, match=r"no setting 'name'.*--rpo-threshold, --retention"):
        edited_policy(GOLD, {"name": "platinum"})


def test_bandwidth_caps_are_1_to_100000_mbit_or_off() -> None:
    """A cap is a number of Mbit/s from 1 to 100000, or off; anything else is refused in one line."""
    assert parse_max_mbps("off") is None and parse_max_mbps("OFF") is None
    assert parse_max_mbps("1") == 1.0 and parse_max_mbps("100000") == 100_000.0 and parse_max_mbps("2.5") == 2.5
    for text in ("0", "0.5", "-3", "100001", "abc", "", "nan", "inf", "1e6"):
        with pytest.raises(BadInput, match=r"--max-mbps .* from 1 to 100000, or off") as refused:
            parse_max_mbps(text)
        assert "\n" not in refused.value.message
    assert check_max_mbps(None) is None and check_max_mbps(60) == 60.0
    for value in (0, 0.99, 100_001, True, "60", float("nan"), [60]):
        with pytest.raises(BadInput, match="from 1 to 100000 Mbit/s"):
            check_max_mbps(value)


# --- the rules on a real state database -------------------------------------------------------------------
def _replication(tmp_path: Path) -> tuple[StateDB, Replication]:
    state = StateDB(tmp_path / "state.db")
    replication = Replication(state=state, hub=EventHub(state), storage=LocalStorage(tmp_path))
    replication.create_policy(GOLD)
    return state, replication


def _server(state: StateDB, name: str, *, disks: int = 1) -> ServerRecord:
    state.add_server(server_id=f"id-{name}", name=name, hostname=name, os="Linux", agent_version="0.1.0",
                     cert_serial=len(name), address=None, disks=[Disk(f"/dev/vd{i}", 8 * MiB) for i in range(disks)])
    row = state.server(name=name)
    assert row is not None
    return row


def _row(state: StateDB, name: str) -> ServerRecord:
    row = state.server(name=name)
    assert row is not None
    return row


def _codes(state: StateDB) -> list[str]:
    return [e.code for e in state.events(limit=1000)]


def test_a_policy_in_use_is_not_deleted_until_its_servers_move(tmp_path: Path) -> None:
    """Deleting a policy that servers use is refused naming them; after they move it is deleted; default never."""
    state, replication = _replication(tmp_path)
    for name in ("web-01", "db-01"):
        replication.enable(_server(state, name), "gold")
    with pytest.raises(BadInput) as refused:
        replication.delete_policy("gold")
    assert refused.value.message == ("Policy 'gold' is used by db-01, web-01: move them to another policy first "
                                     "(godwit vm set NAME --policy P).")
    assert state.policy("gold") == GOLD
    for name in ("web-01", "db-01"):
        replication.set_policy(_row(state, name), "default")
    replication.delete_policy("gold")
    assert state.policy("gold") is None
    with pytest.raises(BadInput, match="'default' cannot be deleted"):
        replication.delete_policy("default")
    with pytest.raises(NotFound, match="No policy named 'gold'"):
        replication.delete_policy("gold")
    assert state.policy("default") == DEFAULT_POLICY
    assert _codes(state).count("policy-set") == 2 and _codes(state).count("policy-deleted") == 1


def test_a_server_moves_to_another_policy_only_through_its_settings(tmp_path: Path) -> None:
    """Enabling a replicating server again is refused with the advice; set_policy moves it, an unknown one is
    refused listing the policies, and a server that does not replicate is refused too."""
    state, replication = _replication(tmp_path)
    replication.enable(_server(state, "web-01"), "gold")
    with pytest.raises(BadInput) as refused:
        replication.enable(_row(state, "web-01"), "default")
    assert refused.value.message == ("web-01 already replicates with policy gold: to change its policy, run "
                                     "`godwit vm set web-01 --policy P`.")
    with pytest.raises(NotFound) as unknown:
        replication.set_policy(_row(state, "web-01"), "platinum")
    assert unknown.value.message == "No policy named 'platinum'; the policies are: default, gold."
    assert _row(state, "web-01").policy == "gold"
    replication.set_policy(_row(state, "web-01"), "default")
    assert _row(state, "web-01").policy == "default"
    set_event = state.events(limit=1)[0]
    assert set_event.code == "policy-set" and "default (was gold)" in set_event.message
    with pytest.raises(BadInput, match="does not replicate"):
        replication.set_policy(_server(state, "idle-01"), "gold")
    assert _row(state, "idle-01").policy is None


def test_an_edit_is_recorded_and_its_servers_see_the_new_threshold(tmp_path: Path) -> None:
    """An edit stores the new settings, records what changed, and a server's summary reads the new threshold."""
    state, replication = _replication(tmp_path)
    replication.enable(_server(state, "web-01"), "gold")
    assert replication.summary(_row(state, "web-01"), 0).rpo_threshold == 900
    assert replication.edit_policy("gold", {"rpo_threshold": "1h"}).rpo_threshold == 3600
    assert state.policy("gold") == Policy(name="gold", rpo_threshold=3600, retention=86400,
                                          crash_consistent_every=300, app_consistent_every=14400)
    assert replication.summary(_row(state, "web-01"), 0).rpo_threshold == 3600
    event = state.events(limit=1)[0]
    assert event.code == "policy-changed" and "RPO threshold 15m → 1h" in event.message and "web-01" in event.message
    with pytest.raises(BadInput, match="Nothing to change"):
        replication.edit_policy("gold", {})
    with pytest.raises(BadInput, match="at most 15 days"):
        replication.edit_policy("gold", {"rpo_threshold": "2h", "retention": "20d"})
    assert state.policy("gold").rpo_threshold == 3600  # type: ignore[union-attr]  # a refused edit changes nothing


def _protected(state: StateDB, replication: Replication, name: str, disks: int) -> ServerRecord:
    row = _row(state, name)
    for disk in range(disks):
        replication.received(ReceivedReport(server_id=row.server_id, disk=disk, state=StreamState(
            epoch=row.epoch or 0, acked_seq=1, initial_done=8 * MiB, initial_complete=True, bytes_received=8 * MiB)))
    return row


def _applied(row: ServerRecord, disk: int, *, resync_done: int, resync_pass: int = 0, offset: int = 0) -> AppliedReport:
    return AppliedReport(server_id=row.server_id, disk=disk, epoch=row.epoch or 0, applied_seq=5,
                         resync_done=resync_done, resync_pass=resync_pass, resync_offset=offset, bookmark_time=100.0,
                         points=(AppliedPoint(1, 90.0, "crash-consistent"),))


def test_a_resync_shows_its_progress_per_disk_and_completes_once(tmp_path: Path) -> None:
    """During a resync each disk shows how far its pass is applied; resync-complete is recorded once, when
    every disk is done, and not again when the log processor tells the same state after a restart."""
    state, replication = _replication(tmp_path)
    replication.enable(_server(state, "db-01", disks=2), "gold")
    row = _protected(state, replication, "db-01", 2)
    assert [d.phase for d in replication.disk_statuses(row)] == ["", ""]
    replication.resync(row)
    row = _row(state, "db-01")
    statuses = replication.disk_statuses(row)
    assert [(d.phase, d.bytes_done, d.bytes_total) for d in statuses] == [("resync", 0, 8 * MiB)] * 2
    replication.applied(_applied(row, 0, resync_done=0, resync_pass=1, offset=3 * MiB))
    replication.applied(_applied(row, 0, resync_done=0, resync_pass=0))  # a restarted log processor: no step back
    assert [(d.phase, d.bytes_done) for d in replication.disk_statuses(row)] == [("resync", 3 * MiB), ("resync", 0)]
    assert replication.summary(row, 200).state == ServerState.RESYNCING
    replication.applied(_applied(row, 0, resync_done=1, resync_pass=1, offset=8 * MiB))
    assert "resync-complete" not in _codes(state)  # disk 1 is not done yet
    assert [(d.phase, d.bytes_done) for d in replication.disk_statuses(row)] == [("", 8 * MiB), ("resync", 0)]
    replication.applied(_applied(row, 1, resync_done=1, resync_pass=1, offset=8 * MiB))
    replication.applied(_applied(row, 1, resync_done=1, resync_pass=1, offset=8 * MiB))
    assert _codes(state).count("resync-complete") == 1
    assert replication.summary(row, 200).state == ServerState.PROTECTED
    # An engine restarted: the log processor tells every disk's state again.
    again = Replication(state=state, hub=EventHub(state), storage=LocalStorage(tmp_path))
    _protected(state, again, "db-01", 2)
    for disk in (0, 1):
        again.applied(_applied(row, disk, resync_done=1))
    assert _codes(state).count("resync-complete") == 1


def test_the_rpo_ages_from_newest_data_at() -> None:
    """A status ages its RPO from newest_data_at at the moment it is read; without it (an older engine) it is
    the RPO the engine sent."""
    status = ServerStatus(server_id="1", name="n", hostname="h", os="o", agent_version="v",
                          state=ServerState.PROTECTED, health=Health.HEALTHY, health_cause=None, health_detail=None,
                          registered_at=0, last_heartbeat=None, address=None, replicating=True, rpo_seconds=3.0,
                          newest_data_at=1000.0, rpo_threshold=900)
    assert status.rpo_at(1003.0) == 3.0 and status.rpo_at(1060.0) == 60.0
    older = ServerStatus(server_id="1", name="n", hostname="h", os="o", agent_version="v",
                         state=ServerState.PROTECTED, health=Health.HEALTHY, health_cause=None, health_detail=None,
                         registered_at=0, last_heartbeat=None, address=None, replicating=True, rpo_seconds=3.0)
    assert older.rpo_at(5000.0) == 3.0


def test_a_summary_carries_the_instant_the_rpo_is_reckoned_from(tmp_path: Path) -> None:
    """The newest instant every disk holds is the RPO's origin, also while the server is paused."""
    state, replication = _replication(tmp_path)
    replication.enable(_server(state, "web-01"), "gold")
    row = _protected(state, replication, "web-01", 1)
    assert replication.summary(row, 150).newest_data_at is None  # nothing applied yet
    replication.applied(_applied(row, 0, resync_done=0))
    summary = replication.summary(row, 150)
    assert (summary.newest_data_at, summary.rpo) == (100.0, 50.0)
    with state._tx() as db:  # the source disk grew: replication pauses, the RPO goes on ageing
        db.execute("UPDATE servers SET disks=? WHERE server_id=?",
                   ('[{"path": "/dev/vd0", "size": 16777216}]', row.server_id))
    paused = replication.summary(_row(state, "web-01"), 400)
    assert paused.state == ServerState.PAUSED and (paused.newest_data_at, paused.rpo) == (100.0, 300.0)
