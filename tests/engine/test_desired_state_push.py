"""The replication-manager's watch of the servers' desired states (the long poll of management 1.4), over a real
state database written by the supervisor's own :class:`StateDB` on another connection."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import pytest

from engine.errors import ProtocolError
from engine.links import decode, encode
from engine.links.management import MANAGEMENT, MAX_DESIRED_WAIT, DesiredChange, DesiredWait, HeartbeatAnswer
from engine.manager.desired import DesiredWatch
from engine.records import Disk, Policy
from engine.state import StateDB

SID = "7f1d6c8e-0000-4000-8000-000000000001"
OTHER = "7f1d6c8e-0000-4000-8000-000000000002"
FAST = Policy(name="fast", rpo_threshold=60, retention=3600, crash_consistent_every=1, app_consistent_every=None)


def _state(path: Path) -> StateDB:
    state = StateDB(path)
    state.add_policy(FAST)
    for i, sid in enumerate((SID, OTHER)):
        state.add_server(server_id=sid, name=f"web-0{i}", hostname="web", os="Linux", agent_version="0.1",
                         cert_serial=0x1234 + i, address="127.0.0.1", disks=[Disk(path="/dev/vda", size=1 << 20)])
    return state


def _heartbeat(state: StateDB, sid: str = SID) -> None:
    state.record_heartbeat(sid, hostname="web", os="Linux", agent_version="0.1", address="127.0.0.1",
                           disks=[Disk(path="/dev/vda", size=1 << 20)], at=time.time())


def test_every_change_of_the_desired_state_is_a_new_generation_and_a_heartbeat_is_none(tmp_path: Path) -> None:
    """Enable, a cap, a resync, a policy's settings, another policy, disable and forget each give the server a new
    generation; a heartbeat (its facts, its time) and a change of another server do not."""
    state = _state(tmp_path / "state.db")
    watch = DesiredWatch(tmp_path / "state.db")
    seen = [watch.generation(SID)]

    def step(change: object) -> str | None:
        gen = watch.generation(SID)
        assert gen is not None and gen not in seen, f"{change} left the generation as it was"
        seen.append(gen)
        return gen

    _heartbeat(state)
    state.set_max_mbps(OTHER, 5.0)
    assert watch.generation(SID) == seen[0]
    state.set_replication(SID, replicate=True, policy="fast", disk_sizes=[1 << 20])
    step("enable")
    state.set_max_mbps(SID, 8.0)
    step("a cap")
    state.request_resync(SID)
    step("a resync")
    state.update_policy(Policy(name="fast", rpo_threshold=60, retention=7200, crash_consistent_every=1,
                               app_consistent_every=None))
    step("the policy's retention")
    before = watch.generation(SID)
    state.update_policy(Policy(name="fast", rpo_threshold=120, retention=7200, crash_consistent_every=1,
                               app_consistent_every=None))
    assert watch.generation(SID) == before  # the RPO threshold is the appliance's business, not the source's
    state.add_policy(Policy(name="slow", rpo_threshold=60, retention=3600, crash_consistent_every=60,
                            app_consistent_every=None))
    state.set_policy(SID, "slow")
    step("another policy")
    state.set_replication(SID, replicate=False, policy=None)
    step("disable")
    state.revoke_server(SID)
    step("forget")
    watch.close()
    state.close()


@pytest.mark.asyncio
async def test_a_long_poll_answers_when_the_supervisor_commits_a_change(tmp_path: Path) -> None:
    """A waiting long poll answers soon after another connection commits a change of that server (well before
    its timeout), with the generation the server has now; heartbeats committed meanwhile do not end it."""
    state = _state(tmp_path / "state.db")
    watch = DesiredWatch(tmp_path / "state.db")
    after = watch.generation(SID)
    assert after is not None
    loop = asyncio.get_running_loop()
    for delay in (0.05, 0.2, 0.35):
        loop.call_later(delay, _heartbeat, state)
    loop.call_later(0.6, lambda: state.set_replication(SID, replicate=True, policy="fast", disk_sizes=[1 << 20]))
    started = time.monotonic()
    generation = await watch.wait(SID, after, timeout=30)
    took = time.monotonic() - started
    assert generation != after and generation == watch.generation(SID)
    assert 0.5 < took < 10, took  # not before the change; long before the 30 s timeout
    assert watch.reads >= 1 and "waiting=0" in repr(watch)
    watch.close()
    state.close()


@pytest.mark.asyncio
async def test_a_long_poll_without_a_change_times_out_unchanged(tmp_path: Path) -> None:
    """Heartbeats and another server's change do not answer a long poll: it ends at its timeout, unchanged."""
    state = _state(tmp_path / "state.db")
    watch = DesiredWatch(tmp_path / "state.db", every=0.05)
    after = watch.generation(SID)
    assert after is not None
    loop = asyncio.get_running_loop()
    loop.call_later(0.1, _heartbeat, state)
    loop.call_later(0.2, state.set_max_mbps, OTHER, 9.0)
    assert await watch.wait(SID, after, timeout=0.6) == after
    assert watch.reads >= 1  # it did look at what was committed
    # Asked about a generation it is no longer at, it answers at once.
    assert await watch.wait(SID, "0" * 16, timeout=30) == after
    watch.close()
    state.close()


@pytest.mark.asyncio
async def test_closing_answers_every_waiting_long_poll_at_once(tmp_path: Path) -> None:
    """A manager that stops answers its long polls at once (unchanged), so they do not hold its shutdown; a
    watch without a database names no generation and its long polls wait out their timeout."""
    state = _state(tmp_path / "state.db")
    watch = DesiredWatch(tmp_path / "state.db")
    after = watch.generation(SID)
    assert after is not None
    polls = [asyncio.create_task(watch.wait(sid, watch.generation(sid) or "", timeout=30)) for sid in (SID, OTHER)]
    await asyncio.sleep(0.3)
    assert "waiting=2" in repr(watch)
    started = time.monotonic()
    watch.close()
    answers = await asyncio.wait_for(asyncio.gather(*polls), 10)
    assert answers[0] == after and time.monotonic() - started < 10
    assert watch.generation(SID) is None and "closed" in repr(watch)
    state.close()

    nothing = DesiredWatch(None)
    assert nothing.generation(SID) is None
    assert await nothing.wait(SID, "ab", timeout=0.2) == "ab"


@pytest.mark.asyncio
async def test_a_restored_database_is_read_from_the_new_file(tmp_path: Path) -> None:
    """When the state database file is replaced (a restored backup), the watch reads the new file: a long poll
    about the old generation answers with the one the new file holds."""
    path = tmp_path / "state.db"
    state = _state(path)
    watch = DesiredWatch(path, every=0.05)
    after = watch.generation(SID)
    assert after is not None
    restored = _state(tmp_path / "restored.db")
    restored.set_max_mbps(SID, 3.0)
    restored.close()  # its only connection: everything is in the file
    state.close()
    for extra in ("-wal", "-shm"):  # the old file's, as a restore leaves none
        (tmp_path / f"state.db{extra}").unlink(missing_ok=True)
    (tmp_path / "restored.db").replace(path)
    changed = await asyncio.wait_for(watch.wait(SID, after, timeout=5), 10)
    assert changed != after and changed == watch.generation(SID)
    watch.close()


def test_the_long_poll_query_is_checked() -> None:
    """``after`` must be a generation (hex) and ``wait`` a number of seconds; a long wait is cut to 25 s. Anything
    else is one clear line (a 400 for the source)."""
    assert DesiredWait.parse({"after": "00ff"}) == DesiredWait(after="00ff", wait=MAX_DESIRED_WAIT)
    assert DesiredWait.parse({"after": "ab", "wait": "3.5"}).wait == 3.5
    assert DesiredWait.parse({"after": "ab", "wait": "600"}).wait == MAX_DESIRED_WAIT
    for query, word in (({}, "after"), ({"after": "xyz"}, "after"), ({"after": "a" * 65}, "after"),
                        ({"after": "ab", "wait": "soon"}, "wait"), ({"after": "ab", "wait": "nan"}, "wait"),
                        ({"after": "ab", "wait": "-1"}, "wait")):
        with pytest.raises(ProtocolError, match=word):
            DesiredWait.parse(query)


def test_answers_with_and_without_a_generation() -> None:
    """Management 1.4 names the generation in the heartbeat's answer; an answer of an older appliance has none
    (the source then relies on heartbeats). The long poll's answer is a message of its own."""
    assert (MANAGEMENT.major, MANAGEMENT.minor) == (1, 4)
    old = {"heartbeat_interval": 5.0, "data_port": 9443, "replicate": False, "max_mbps": None, "resync_gen": 0}
    assert decode(HeartbeatAnswer, old, link=MANAGEMENT).desired_generation is None
    assert decode(HeartbeatAnswer, {**old, "desired_generation": "ab12"}, link=MANAGEMENT).desired_generation == \
        "ab12"
    change = DesiredChange(generation="ab12", changed=True)
    assert decode(DesiredChange, encode(change), link=MANAGEMENT) == change
