"""A full disk is a state, not a crash.

The appliance's data directory lives on a small ext4 file system the test makes on a loop device
(mounted under the test's own temporary directory, unmounted and detached when the test ends), and a
balloon file the test owns takes its free space step by step: below 30 % free (warning), below 25 %
(critical), below the process server's reserve (batches refused with 503 cache-full), then all of it
(SQLite full: heartbeats refused with 503 disk-full). The balloon is then deleted and everything
must heal by itself, with a byte-exact recovery point at the end. Nothing here fills a file system
the test did not create.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import shutil
import signal
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from engine import logs
from engine.errors import DiskFull
from engine.events import EventHub
from engine.links.agent import AppliedReport
from engine.logs import RateLimiter
from engine.records import Disk, HealthCause
from engine.replication import Replication
from engine.state import StateDB
from engine.storage.local import LocalStorage
from tests.appliance import Appliance, Mobility, change_disk, fill_disk, wait_for
from tests.source_disks import Balloon, small_fs

MiB = 1024 * 1024


class Files:
    """Empty files of the test's own that take the free inodes of their file system."""

    def __init__(self, path: Path) -> None:
        self.path = path
        path.mkdir()
        self.count = 0

    def __repr__(self) -> str:
        return f"<Files {self.path} count={self.count}>"

    def fill(self) -> None:
        while True:
            try:
                os.close(os.open(self.path / str(self.count), os.O_WRONLY | os.O_CREAT, 0o600))
            except OSError as exc:
                if exc.errno != errno.ENOSPC:
                    raise
                return
            self.count += 1

    def pop(self) -> None:
        shutil.rmtree(self.path)


@contextlib.contextmanager
def kept_full(fill: Callable[[], None]) -> Iterator[None]:
    """Call ``fill`` every few milliseconds while the block runs, so that what the appliance frees (a
    segment it applied, blocks ext4 had set aside for a file now closed) is taken again at once."""
    stop = threading.Event()
    failed: list[BaseException] = []

    def keep() -> None:
        try:
            while not stop.wait(0.01):
                fill()
        except BaseException as exc:
            failed.append(exc)

    fill()
    thread = threading.Thread(target=keep, daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join()
    if failed:
        raise failed[0]


def _level(app: Appliance) -> str:
    space = app.json("engine", "status")["disk_space"]
    return str(space["level"]) if space else "unknown"


def _server(app: Appliance, name: str) -> dict[str, Any]:
    return app.servers()[name]  # type: ignore[no-any-return]


@contextlib.contextmanager
def logs_kept_on_failure(app: Appliance, keep: Path, mob: Mobility | None = None) -> Iterator[None]:
    """On a failure in the block, copy the appliance's logs to ``keep`` (the data directory sits on a file system
    the test unmounts) and add the last lines of each, the engine's and the mobility service's output, to the
    failure: a timeout in CI says what the agents were doing."""
    try:
        yield
    except BaseException as exc:  # pytest-timeout's Failed too: a test that hangs is the one to explain
        if isinstance(exc, KeyboardInterrupt | SystemExit | GeneratorExit):
            raise
        logs = app.data_dir / "logs"
        with contextlib.suppress(OSError):
            shutil.copytree(logs, keep, dirs_exist_ok=True)
        tails = [f"logs kept in {keep}"]
        sources = sorted(logs.glob("*.log")) if logs.is_dir() else []
        for path in sources:
            with contextlib.suppress(OSError):
                tails.append(f"--- {path.name} (last lines) ---\n" + "\n".join(
                    path.read_text(errors="replace").splitlines()[-40:]))
        tails.append("--- godwit serve output (last lines) ---\n" + "\n".join(app.output.splitlines()[-20:]))
        if mob is not None:
            tails.append("--- mobility service output (last lines) ---\n" + "\n".join(mob.output.splitlines()[-20:]))
        exc.add_note("\n".join(tails))
        raise


def _no_tracebacks(logs: Path) -> None:
    for path in sorted(logs.iterdir()):
        text = path.read_text(errors="replace")
        assert "Traceback" not in text and "Logging error" not in text, f"{path.name}:\n{text[-3000:]}"


def test_full_disk_is_a_state_that_heals_by_itself(tmp_path: Path, short_tmp: Path) -> None:
    """A full data directory is a state, not a crash: warnings, then 503 refusals, then healing by itself."""
    with small_fs(short_tmp, "appliance-fs", 256 * MiB) as fs:
        app = Appliance(tmp_path / "appliance", data_dir=fs / "data")
        app.root.mkdir()
        app.start()
        disk = app.root / "src.img"
        fill_disk(disk, 16 * MiB, seed=21)
        mob = Mobility(app, "full-01", disks=[disk]).start()
        balloon = Balloon(fs / "balloon")
        code, said = None, ""
        try:
            with logs_kept_on_failure(app, tmp_path / "logs", mob):
                wait_for(lambda: app.servers().get("full-01"), what="registration")
                app.enable("full-01")
                wait_for(lambda: _server(app, "full-01")["state"] == "protected", timeout=60, what="protection")
                assert _level(app) == "ok"
                reserve = app.json("engine", "status")["disk_space"]["reserve_bytes"]
                reserve_file = app.data_dir / "state.db.reserve"
                assert reserve_file.exists()  # made at start, while there is room

                # Below 30 % free: a warning on the server, naming the file system, and one event.
                balloon.leave_share(0.27)
                wait_for(lambda: _level(app) == "warning", what="the warning level")
                server = wait_for(lambda: (s := _server(app, "full-01"))["health_cause"] == "disk-space-low" and s,
                                  what="the disk space to be the server's health cause")
                assert server["health"] == "warning"
                assert str(fs) in server["health_detail"] and "30 % warning" in server["health_detail"]

                # Below 25 %: critical, still replicating.
                balloon.leave_share(0.21)
                wait_for(lambda: _level(app) == "critical", what="the critical level")
                wait_for(lambda: _server(app, "full-01")["health"] == "critical", what="the server to turn critical")
                assert "25 % critical" in _server(app, "full-01")["health_detail"]

                # Below the reserve: batches are refused with 503 cache-full before the disk is full; the
                # mobility service says why and keeps trying; the rate shown does not go stale.
                balloon.leave(reserve // 2)
                wait_for(lambda: _level(app) == "full", what="the full level")
                change_disk(disk, seed=3)
                changed = time.time()
                refused = wait_for(lambda: next((line for line in mob.output.splitlines()
                                                 if "batch not taken (cache-full)" in line), None),
                                   what="the mobility service to say why its batches are refused")
                assert str(fs) in refused and "free" in refused
                server = wait_for(lambda: (s := _server(app, "full-01"))["health_cause"] == "disk-full" and s,
                                  what="the full disk to be the server's health cause")
                assert server["health"] == "critical" and str(fs) in server["health_detail"]
                wait_for(lambda: all(d["throughput_bps"] == 0 and d["eta_seconds"] is None
                                     for d in _server(app, "full-01")["disks"]), timeout=30,
                         what="the rate to decay while nothing is received")
                assert mob.proc is not None and mob.proc.poll() is None

                # No room at all: SQLite's first SQLITE_FULL is absorbed by its reserve ...
                balloon.fill()
                wait_for(lambda: not reserve_file.exists(), what="the state database to use its reserve")
                # ... and once that is gone too, heartbeats get a clear 503 and the service keeps trying.
                names = iter(range(1000))

                def refused_change() -> subprocess.CompletedProcess[str] | None:
                    res = app.cli("policy", "create", f"late-{next(names)}")
                    return res if res.returncode != 0 else None

                with kept_full(balloon.fill):
                    line = wait_for(lambda: next((x for x in mob.output.splitlines()
                                                  if "heartbeat: The appliance's state database" in x), None),
                                    what="heartbeats to be refused with a clear error")
                    assert "cannot be written" in line and str(fs) in line and "Retrying in" in line
                    res = wait_for(refused_change, what="an admin's change to be refused")
                    assert len(res.stderr.strip().splitlines()) == 1, res.stderr
                    assert "cannot be written" in res.stderr and str(fs) in res.stderr
                    assert mob.proc.poll() is None

                # Space back: everything resumes by itself.
                balloon.pop()
                wait_for(lambda: _level(app) == "ok", what="the level to return to ok")
                wait_for(reserve_file.exists, what="the state database's reserve to be made again")
                app.point_after("full-01", changed, timeout=60)
                wait_for(lambda: _server(app, "full-01")["health"] == "healthy", what="the server to be healthy")
                assert app.cli("policy", "create", "after").returncode == 0

                # Blocks free but no inodes: the process server's free-space check lets the batch through and
                # writing its segment fails with ENOSPC, which is the same 503 cache-full, never a 500.
                files = Files(fs / "files")
                with kept_full(files.fill):
                    change_disk(disk, seed=4)
                    changed = time.time()
                    line = wait_for(lambda: next((x for x in mob.output.splitlines() if "no free inodes left" in x),
                                                 None), what="a batch to be refused for want of inodes")
                    assert "batch not taken (cache-full)" in line and str(fs) in line
                    server = wait_for(lambda: (s := _server(app, "full-01"))["health_cause"] == "disk-full" and s,
                                      what="the server to say why")
                    assert "no free inodes left" in server["health_detail"]
                files.pop()
                point = app.point_after("full-01", changed, timeout=60)
                assert app.export("full-01", point["id"], tmp_path / "out").read_bytes() == disk.read_bytes()
                wait_for(lambda: _server(app, "full-01")["health"] == "healthy", what="the server to be healthy again")
                assert "internal-error" not in mob.output
                codes = [e["code"] for e in app.events()]
                for code_ in ("disk-space-low", "disk-space-critical", "disk-full", "disk-space-ok"):
                    assert codes.count(code_) == 1, codes  # one event per change of level, never repeated
                messages = {e["code"]: e["message"] for e in app.events()}
                assert str(fs) in messages["disk-full"] and "Free space there" in messages["disk-full"]
        finally:
            if mob.proc is not None:
                code, said = mob.stop()
            app.stop()
        assert code == 0 and "Traceback" not in said, said
        _no_tracebacks(app.data_dir / "logs")
        assert "Traceback" not in app.output and "Logging error" not in app.output, app.output  # the engine's stderr


def test_state_db_full_uses_its_reserve_then_says_disk_full(tmp_path: Path) -> None:
    """The state database rides out a full disk on its reserve, then refuses writes as disk-full, never half-done."""
    with small_fs(tmp_path, "state-fs", 32 * MiB) as fs:
        db = StateDB(fs / "state.db", reserve_bytes=4 * MiB)
        try:
            assert db.keep_reserve() and db.reserve.held
            db.add_server(server_id="s1", name="web", hostname="h", os="o", agent_version="1", cert_serial=1,
                          address=None, disks=[Disk("/dev/sda", 10)])
            balloon = Balloon(fs / "balloon")
            balloon.fill()
            # The first write that finds the disk full gets the reserve's room and succeeds.
            for i in range(20):
                db.add_event("info", "c", f"m{i}")
            assert not db.reserve.held
            balloon.fill()
            with pytest.raises(DiskFull) as caught:
                for i in range(2000):
                    db.add_event("info", "c", "x" * 500 + str(i))
            assert caught.value.code == "disk-full" and caught.value.status == 503
            assert str(fs) in caught.value.message
            # Nothing half-done: the connection is usable and reads work.
            assert db.server(name="web") is not None
            assert not db.keep_reserve()  # no room for it yet
            balloon.pop()
            db.add_event("info", "c", "room again")
            assert db.keep_reserve() and db.events(limit=1)[0].message == "room again"
        finally:
            db.close()


def test_a_pause_the_state_database_has_no_room_for_is_recorded_once_there_is(tmp_path: Path) -> None:
    """A pause reported while the state database is full is taken, and its event recorded later, before the
    resumption's: never lost with a refused report, never said twice."""
    with small_fs(tmp_path, "state-fs", 32 * MiB) as fs:
        state = StateDB(fs / "state.db")  # no reserve: the first write that finds the disk full is refused
        try:
            replication = Replication(state=state, hub=EventHub(state), storage=LocalStorage(fs))
            state.add_server(server_id="s1", name="web", hostname="h", os="o", agent_version="1", cert_serial=1,
                             address=None, disks=[Disk("/dev/sda", 8 * MiB)])
            row = state.server(name="web")
            assert row is not None
            replication.enable(row, "default")
            row = state.server(name="web")
            assert row is not None and row.epoch is not None
            epoch = row.epoch
            paused = AppliedReport(server_id="s1", disk=0, epoch=epoch, applied_seq=3, error="The disk is full.",
                                   error_code=HealthCause.TARGET_FULL)
            balloon = Balloon(fs / "balloon")
            balloon.fill()
            with pytest.raises(DiskFull):  # until SQLite finds no room: the next write finds none either
                for i in range(5000):
                    state.add_event("info", "c", "x" * 500 + str(i))
            assert replication.applied(paused)  # the report is taken: the server shows paused
            assert replication.applied(paused)  # reported again (nothing changed): still one event owed
            assert "unsaid_events=1" in repr(replication)
            assert replication.progress("s1", 0).error_code == HealthCause.TARGET_FULL
            balloon.pop()
            assert replication.applied(AppliedReport(server_id="s1", disk=0, epoch=epoch, applied_seq=4))
            codes = [e.code for e in state.events(limit=1000) if e.code.startswith("apply-")]
            assert codes == ["apply-paused", "apply-resumed"]
            assert "unsaid_events=0" in repr(replication)
        finally:
            state.close()


@contextlib.contextmanager
def process_log(path: Path) -> Iterator[logging.Handler]:
    """The log set-up of an engine process (``engine.logs.to_file``), undone afterwards."""
    root = logging.getLogger()
    saved, level = root.handlers[:], root.level
    logs.to_file(path)
    handler = root.handlers[0]
    try:
        yield handler
    finally:
        handler.close()
        root.handlers[:] = saved
        root.setLevel(level)


def test_log_file_on_a_full_disk_drops_records_and_resumes(tmp_path: Path, capfd: pytest.CaptureFixture[str]) -> None:
    """Logging on a full disk drops lines without an error, says so afterwards, and resumes when there is room."""
    with small_fs(tmp_path, "log-fs", 16 * MiB) as fs, process_log(fs / "logs" / "x.log") as handler:
        log = logging.getLogger("tests.faults.full-log")
        for _ in range(20):  # the same line: a few written, the rest counted
            log.warning("again: %s", "[Errno 28] No space left on device")
        handler.flush()
        assert sum("again" in line for line in (fs / "logs" / "x.log").read_text().splitlines()) < 20
        balloon = Balloon(fs / "balloon")
        balloon.fill()
        for i in range(200):
            log.warning("while full %d %s", i, "x" * 4000)  # each another line: none suppressed
        balloon.pop()
        log.warning("after")
        handler.flush()
        text = (fs / "logs" / "x.log").read_text()
        assert text.rstrip().endswith("after") and "log records were dropped: the disk was full" in text
    assert "Logging error" not in capfd.readouterr().err


def test_repeated_lines_are_summarised_after_their_window() -> None:
    """A warning repeated many times is written a few times, then summed up in one line when its window ends."""
    now = [0.0]
    limiter = RateLimiter(window=10, burst=2, clock=lambda: now[0])

    def record(*args: object) -> logging.LogRecord:
        return logging.LogRecord("x", logging.WARNING, __file__, 1, "disk %s full", args, None)

    written = [r for _ in range(5) for r in limiter.admit(record("/srv"))]
    assert len(written) == 2
    assert limiter.admit(record("/var"))  # another message from the same template is news
    assert "suppressed=3" in repr(limiter)
    now[0] = 11.0
    out = limiter.admit(logging.LogRecord("y", logging.INFO, __file__, 1, "something else", (), None))
    assert [r.getMessage() for r in out] == ["3 more of this line were suppressed in 10 s: disk /srv full",
                                            "something else"]


def test_seed_disk_that_cannot_grow_pauses_and_resumes(tmp_path: Path, short_tmp: Path) -> None:
    """The segments are in the cache; then the file system fills before the log processor applies them:
    the seed disk (and its points' undo logs) cannot grow. That disk pauses, says why (one event, recorded once
    the state database on the same file system has room for it), and resumes."""
    with small_fs(short_tmp, "target-fs", 192 * MiB) as fs:
        app = Appliance(tmp_path / "appliance", data_dir=fs / "data")
        app.root.mkdir()
        app.start(env={"GODWIT_AGENT_HUNG_AFTER": "600"})  # the log processor is held on purpose
        disk = app.root / "src.img"
        fill_disk(disk, 16 * MiB, seed=51)
        mob = Mobility(app, "seed-01", disks=[disk]).start()
        balloon = Balloon(fs / "balloon")
        try:
            with logs_kept_on_failure(app, tmp_path / "logs", mob):
                wait_for(lambda: app.servers().get("seed-01"), what="registration")
                app.enable("seed-01")
                wait_for(lambda: _server(app, "seed-01")["state"] == "protected", timeout=60, what="protection")
                processor = app.agent_pid("log-processor")
                cache = app.data_dir / "cache"
                os.kill(processor, signal.SIGSTOP)
                try:
                    change_disk(disk, seed=52, writes=60)  # random data, much of it into holes
                    t = time.time()
                    wait_for(lambda: sum(p.stat().st_size for p in cache.rglob("*.seg")) > 4 * MiB, timeout=60,
                             what="the changes to wait in the cache")
                    time.sleep(2)  # the rest of the cycle
                    balloon.fill()
                finally:
                    os.kill(processor, signal.SIGCONT)
                with kept_full(balloon.fill):
                    # The pause shows at once. Its event may have to wait: the state database is on the same full
                    # file system, and whichever write first found it full (a heartbeat's, a health event's, the
                    # pause's) took its reserve, which the balloon then took.
                    wait_for(lambda: _server(app, "seed-01")["state"] == "paused", timeout=60,
                             what="the seed disk to pause")
                    assert mob.proc is not None and mob.proc.poll() is None
                balloon.pop()
                wait_for(lambda: any(e["code"] == "apply-resumed" for e in app.events()), timeout=60,
                         what="applying to resume by itself")
                events = app.events()
                codes = [e["code"] for e in events]
                assert codes.count("apply-paused") == 1 and codes.index("apply-paused") < codes.index("apply-resumed")
                event = events[codes.index("apply-paused")]
                assert "seed disk cannot take more changes" in event["message"] and str(fs) in event["message"]
                point = app.point_after("seed-01", t, timeout=90)
                assert app.export("seed-01", point["id"], tmp_path / "p").read_bytes() == disk.read_bytes()
                _no_tracebacks(app.data_dir / "logs")
        finally:
            mob.stop()
            app.stop()
