"""A hostile source cannot stall the others; one resync mends any damage to the cache; restart
backoff forgets. Real engine, real mobility services, real files."""

from __future__ import annotations

import json
import os
import shutil
import signal
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from engine.protocol import MAX_BATCH, MAX_RUN, MAX_RUNS, BatchHeader, Bookmark, Kind, encode_batch
from tests.appliance import Appliance, Mobility, change_disk, post_batch, replicating, wait_for

MiB = 1024 * 1024


def _batch(seq: int, runs: list[tuple[int, int, bytes | None]], *, bookmark: Bookmark = Bookmark.NONE) -> bytes:
    cycle = int(time.time() * 1000) + seq
    return encode_batch(BatchHeader(0, seq, Kind.DELTA, bookmark, cycle, 0, time.time(), 0), runs)


def test_a_hostile_server_cannot_hold_back_another(patient_appliance: Appliance, tmp_path: Path) -> None:
    """Oversized batches (too many runs, too much described, a body over the largest legal batch) are refused, and
    one server's backlog of costly batches does not delay another's points."""
    appliance = patient_appliance
    hostile_disk = appliance.root / "hostile.img"
    with open(hostile_disk, "wb") as f:  # 512 MiB, sparse but for its first MiB
        f.write(os.urandom(MiB))
        f.truncate(512 * MiB)
    # The hostile server is enabled first: a log processor that serves servers one after another
    # would serve it first.
    hostile = Mobility(appliance, "hostile-01", disks=[hostile_disk]).start()
    good: Mobility | None = None
    try:
        wait_for(lambda: appliance.servers().get("hostile-01"), what="hostile-01 to register")
        appliance.enable("hostile-01")
        wait_for(lambda: appliance.servers()["hostile-01"]["state"] == "protected", timeout=60,
                 what="hostile-01 to be protected")
        hostile.stop()  # from here on we speak for it, with its certificate
        good, good_disk = replicating(appliance, "good-01", 4 * MiB, seed=1)
        state = hostile.state_dir
        seq = _acked(appliance, "hostile-01") + 1

        # What the finding sent: 320,000 zero runs of 1 MiB in 9 MB, describing 312 GiB. Refused at decode.
        code, answer = post_batch(appliance, state, 0, _batch(seq, [(0, MAX_RUN, None)] * 320_000))
        assert (code, f"at most {MAX_RUNS}" in answer["message"]) == (400, True), answer
        # Within the run count, a batch still may not describe gigabytes it does not carry.
        code, answer = post_batch(appliance, state, 0, _batch(seq, [(i % 512 * MiB, MAX_RUN, None)
                                                                    for i in range(MAX_RUNS)]))
        assert (code, "describes more than" in answer["message"]) == (400, True), answer
        # Nor may a body be larger than the largest legal batch (which also bounds the data a batch carries).
        code, answer = post_batch(appliance, state, 0, _batch(seq, [(0, MAX_RUN, os.urandom(MAX_RUN))] * 10))
        assert len(_batch(seq, [(0, MAX_RUN, bytes(MAX_RUN))] * 10)) > MAX_BATCH
        assert (code, f"at most {MAX_BATCH} bytes" in answer["message"]) == (400, True), answer

        # A backlog of legal, expensive batches (data spread over 256 MiB, then zeros over all of it,
        # each a recovery point) piles up while the log processor is held; the good server changes too.
        earlier = {p["id"] for p in appliance.points("hostile-01")}
        processor = appliance.agent_pid("log-processor")
        os.kill(processor, signal.SIGSTOP)
        try:
            for n in range(seq, seq + 40):
                runs: list[tuple[int, int, bytes | None]] = \
                    [(i * 32 * MiB, MAX_RUN, os.urandom(MAX_RUN)) for i in range(8)] if n % 2 else \
                    [(i * MiB, MAX_RUN, None) for i in range(256)]
                code, answer = post_batch(appliance, state, 0, _batch(n, runs, bookmark=Bookmark.CRASH_POINT))
                assert code == 200, answer
            acked = _acked(appliance, "good-01")
            change_disk(good_disk, seed=100, writes=5)
            t = time.time()
            wait_for(lambda: _acked(appliance, "good-01") > acked and _good_waiting(appliance), timeout=30,
                     what="the good server's change to wait in the cache")
            # Its policy takes a point every second: let a cycle that takes one (started after the change)
            # wait in the cache too, so that its point needs nothing but the log processor's turn.
            time.sleep(2.5)
        finally:
            os.kill(processor, signal.SIGCONT)
        point = appliance.point_after("good-01", t, timeout=120)
        wait_for(lambda: _applied(appliance, "hostile-01") == seq + 39, timeout=180, what="the backlog to be applied")
        hostile_points = [p for p in appliance.points("hostile-01") if p["id"] not in earlier]
        assert len(hostile_points) == 40
        # The good server's point was taken while the hostile backlog was still being applied.
        assert point["created_at"] < hostile_points[-1]["created_at"], (point, hostile_points[-1])
        assert appliance.export("good-01", point["id"], tmp_path / "g").read_bytes() == good_disk.read_bytes()
        assert "Traceback" not in appliance.log("process-server") + appliance.log("log-processor")
    finally:
        hostile.stop()
        if good is not None:
            good.stop()


def _good_waiting(app: Appliance) -> bool:
    server_id = app.servers()["good-01"]["server_id"]
    return any((app.data_dir / "cache" / server_id).rglob("*.seg"))


def _acked(app: Appliance, name: str) -> int:
    server_id = app.servers()[name]["server_id"]
    (path,) = list((app.data_dir / "cache" / server_id).rglob("stream.json"))
    return int(json.loads(path.read_text())["acked_seq"])


def _applied(app: Appliance, name: str) -> int:
    server_id = app.servers()[name]["server_id"]
    (path,) = list((app.data_dir / "target" / server_id).rglob("meta.json"))
    return int(json.loads(path.read_text())["applied_seq"])


# --- damage to the cache: exactly one resync mends it ----------------------------------------------------------
def _swap(a: Path, b: Path) -> None:
    data_a, data_b = a.read_bytes(), b.read_bytes()
    a.write_bytes(data_b)
    b.write_bytes(data_a)


def _truncate(p: Path) -> None:
    os.truncate(p, p.stat().st_size // 2)


DAMAGE: dict[str, Callable[[list[Path]], None]] = {
    "swap-first-two": lambda s: _swap(s[0], s[1]),
    "truncate-second": lambda s: _truncate(s[1]),
    "delete-first": lambda s: s[0].unlink(),
    "duplicate-first-over-third": lambda s: shutil.copyfile(s[0], s[2]),
    "delete-swap-truncate-duplicate": lambda s: (s[3].unlink(), _swap(s[0], s[2]), _truncate(s[1]),
                                                 shutil.copyfile(s[1], s[-1])),
}


@pytest.mark.parametrize("damage", list(DAMAGE))
def test_one_resync_mends_any_damage_to_waiting_segments(patient_appliance: Appliance, tmp_path: Path,
                                                         damage: str) -> None:
    """Cache segments swapped, cut, deleted or duplicated stop the server as segment-corrupt; one resync mends it."""
    appliance = patient_appliance
    mob, disk = replicating(appliance, "mend-01", 4 * MiB, seed=7)
    try:
        processor = appliance.agent_pid("log-processor")
        os.kill(processor, signal.SIGSTOP)
        try:
            change_disk(disk, seed=8, writes=8)
            cache = appliance.data_dir / "cache"
            segments = wait_for(lambda: (s := sorted(cache.rglob("disk0/*.seg")))[5:] and s,
                                what="segments waiting in the cache")
            DAMAGE[damage](segments)
        finally:
            os.kill(processor, signal.SIGCONT)
        server = wait_for(lambda: (s := appliance.servers()["mend-01"])["state"] == "error" and s,
                          what="the damage to be found")
        assert server["health_cause"] == "segment-corrupt", server
        res = appliance.cli("vm", "resync", "mend-01")
        assert res.returncode == 0, res.stderr
        change_disk(disk, seed=9, writes=4)
        t = time.time()
        point = appliance.point_after("mend-01", t, timeout=90)
        assert appliance.servers()["mend-01"]["state"] == "protected"
        assert appliance.export("mend-01", point["id"], tmp_path / "p").read_bytes() == disk.read_bytes()
        assert [e["code"] for e in appliance.events()].count("resync-requested") == 1
    finally:
        mob.stop()


# --- restart backoff forgets ---------------------------------------------------------------------------------
def test_restart_backoff_forgets_once_the_agent_ran_well(appliance: Appliance) -> None:
    """A crash-looping agent waits longer before each restart, but after it ran well its next restart is sooner."""
    def delays() -> list[float]:
        out = []
        for e in appliance.events():
            if e["code"] == "agent-restarted" and "process-server" in e["message"]:
                out.append(float(e["message"].split("restarting it in ")[1].split(" s")[0]))
        return out

    for n in range(1, 5):  # a crash loop: each restart waits longer
        os.kill(appliance.agent_pid("process-server"), signal.SIGKILL)
        wait_for(lambda n=n: len(delays()) == n, what=f"restart {n} to be recorded")
    assert delays() == sorted(delays()) and delays()[0] < 1.0, delays()
    appliance.agent_pid("process-server")
    time.sleep(21)  # it runs well for a while ...
    os.kill(appliance.agent_pid("process-server"), signal.SIGKILL)
    wait_for(lambda: len(delays()) == 5, what="the fifth restart to be recorded")
    assert delays()[-1] < delays()[-2], delays()  # ... so the next restart comes sooner, not later
    agent = next(a for a in appliance.json("engine", "status")["agents"] if a["name"] == "process-server")
    assert agent["restarts"] == 5 and agent["restarts_last_hour"] == 5, agent
