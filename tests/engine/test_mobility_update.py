"""Mobility updates without an appliance: the source's version record, the launcher's decisions with real child
processes, the appliance's offers (stagger, cap, manual requests, failures) and the management link's fields."""

from __future__ import annotations

import dataclasses
import json
import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from engine.config import DataDir
from engine.errors import ProtocolError, UnknownServer, UpdateError
from engine.events import EventHub
from engine.links import decode, encode
from engine.links.management import MANAGEMENT, HeartbeatAnswer, MobilityUpdate, ServerFacts, UpdateReport
from engine.mobility import launcher as launcher_module
from engine.mobility.launcher import Launcher
from engine.mobility.versions import VersionRecord, VersionStore
from engine.state import ServerRecord, StateDB
from engine.updater import MOBILITY_PACKAGE as PACKAGE
from engine.updater.mobility import ACK_TIMEOUT, MobilityUpdates, mobility_release

# --- the source's version record --------------------------------------------------------------------------


def _fake_version(store: VersionStore, version: str) -> None:
    """An unpacked version whose ``python -m engine ARGS`` runs :data:`CHILD` (what it does: script.json)."""
    engine_dir = store.versions_dir / version / "engine"
    engine_dir.mkdir(parents=True)
    (engine_dir / "__init__.py").write_text(f"__version__ = {version!r}\n")
    (engine_dir / "__main__.py").write_text(CHILD)


#: A stand-in for a mobility version, run by the launcher: it logs its start and stop to runs.log and does what
#: script.json says for its version: "sleep" (until SIGTERM), "exit3", "confirm" (the record, then sleep), or
#: "switch:V" (switch the record to V on trial and exit with the restart code).
CHILD = '''
import json, os, signal, sys, time
from pathlib import Path

state = Path(sys.argv[1])
version = os.environ["GODWIT_MOBILITY_VERSION"]
assert __import__("engine").__version__ == version, "runs its own code"

def log(what):
    with open(state / "runs.log", "a") as f:
        f.write(f"{version} {what} {os.getpid()}\\n")

def write(record):
    tmp = state / "mobility-version.json.tmp"
    tmp.write_text(json.dumps(record))
    os.replace(tmp, state / "mobility-version.json")

def stop(*_):
    log("stopped")
    sys.exit(0)

signal.signal(signal.SIGTERM, stop)
log("started")
plan = json.loads((state / "script.json").read_text()).get(version, "sleep")
if plan == "exit3":
    sys.exit(3)
if plan == "confirm":
    record = json.loads((state / "mobility-version.json").read_text())
    write({**record, "confirmed": True, "report": None})
    log("confirmed")
if plan.startswith("switch:"):
    write({"current": plan[7:], "previous": version, "trial_until": time.time() + 30, "confirmed": False,
           "report": None})
    sys.exit(75)
while True:
    time.sleep(0.05)
'''


@pytest.fixture
def store(tmp_path: Path) -> VersionStore:
    return VersionStore(tmp_path / "state")


def test_the_record_is_written_whole_and_read_back(store: VersionStore) -> None:
    """The version record reads back as written, as plain JSON readable by all (0644), with no temp file left;
    before any write there is none."""
    assert store.read() is None
    record = VersionRecord(current="0.2.0", previous="0.1.0", trial_until=123.5, confirmed=False,
                           report={"version": "0.2.0", "outcome": "updated", "previous": "0.1.0"})
    store.write(record)
    assert store.read() == record
    assert json.loads(store.record_path.read_text()) == {
        "current": "0.2.0", "previous": "0.1.0", "trial_until": 123.5, "confirmed": False,
        "report": {"version": "0.2.0", "outcome": "updated", "previous": "0.1.0"}}
    assert [p.name for p in store.state_dir.iterdir()] == ["mobility-version.json"]  # no temp file left
    assert store.record_path.stat().st_mode & 0o777 == 0o644


def test_a_write_cut_short_leaves_the_old_record_and_a_damaged_one_runs_the_installed_code(
        store: VersionStore) -> None:
    """A half-written temp file leaves the last whole record in force (the next write replaces it); a damaged
    record, or one naming a path, reads as none, so the installed code runs."""
    store.write(VersionRecord(current="0.2.0", previous="0.1.0"))
    _fake_version(store, "0.2.0")
    # A crash between writing the temp file and renaming it: the temp file is half written, the record whole.
    (store.state_dir / "mobility-version.json.tmp").write_text('{"current": "0.3.0", "prev')
    assert store.read() == VersionRecord(current="0.2.0", previous="0.1.0")
    assert store.plan("0.1.0") == "0.2.0"
    store.write(VersionRecord(current="0.3.0", previous="0.2.0"))  # the next write replaces the leftover
    assert not (store.state_dir / "mobility-version.json.tmp").exists()
    store.record_path.write_text('{"current": "0.3')
    assert store.read() is None and store.plan("0.1.0") is None
    store.record_path.write_text('{"current": "../../etc"}')
    assert store.read() is None


def test_which_version_runs(store: VersionStore) -> None:
    """A child only for an installed version newer than the installed code and unpacked whole."""
    assert store.plan("0.1.0") is None  # never updated
    store.write(VersionRecord(current="0.2.0", previous="0.1.0"))
    assert store.plan("0.1.0") is None  # not unpacked
    _fake_version(store, "0.2.0")
    assert store.plan("0.1.0") == "0.2.0"
    assert store.plan("0.2.0") is None and store.plan("0.3.0") is None  # the installed code is as new or newer
    store.write(VersionRecord(current="0.1.0", previous="0.2.0"))  # rolled back to the installed code
    assert store.plan("0.1.0") is None


def test_switch_and_roll_back(store: VersionStore, monkeypatch: pytest.MonkeyPatch) -> None:
    """A switch to a version not unpacked is refused; a switch starts a trial of GODWIT_MOBILITY_TRIAL seconds
    with an updated report; a rollback swaps back, confirmed, with a rolled-back report and its reason."""
    monkeypatch.setenv("GODWIT_MOBILITY_TRIAL", "30")
    with pytest.raises(UpdateError):
        store.switch("0.2.0", previous="0.1.0")  # not unpacked: never a record that points nowhere
    _fake_version(store, "0.2.0")
    record = store.switch("0.2.0", previous="0.1.0")
    assert store.read() == record and record.current == "0.2.0" and not record.confirmed
    assert record.trial_until is not None and 29 < record.trial_until - time.time() <= 30
    assert record.report == {"version": "0.2.0", "outcome": "updated", "previous": "0.1.0"}
    now = time.time()
    assert record.in_trial(now) and not record.trial_failed(now) and record.trial_failed(now + 31)
    assert VersionRecord("0.2.0", trial_until=now + 5, confirmed=True).in_trial(now)  # exits roll back until then
    assert not VersionRecord("0.2.0", trial_until=now - 5, confirmed=True).in_trial(now)
    back = store.roll_back(record, "it did not reach the appliance")
    assert store.read() == back == VersionRecord(
        current="0.1.0", previous="0.2.0", trial_until=None, confirmed=True,
        report={"version": "0.2.0", "outcome": "rolled-back", "previous": "0.1.0",
                "reason": "it did not reach the appliance"})


def test_prune_keeps_what_it_is_told(store: VersionStore) -> None:
    """Pruning removes every unpacked version not named to keep and returns those it removed."""
    for v in ("0.1.0", "0.2.0", "0.3.0"):
        _fake_version(store, v)
    (store.versions_dir / ".partial-mobility-package-0.4.0-x").mkdir()
    assert sorted(store.prune({"0.3.0", "0.2.0"})) == ["0.1.0"]
    assert store.versions() == ["0.2.0", "0.3.0"]


# --- the launcher, with real child processes ---------------------------------------------------------------


class _BecameInstalled(Exception):
    pass


@pytest.fixture
def launch(store: VersionStore, monkeypatch: pytest.MonkeyPatch) -> Iterator[Callable[..., tuple[int, list[str]]]]:
    """Run a :class:`Launcher` over ``store`` in this process until it returns (or would execute the installed
    code: ``-1``); ``stop_when(runs)`` is polled, and SIGTERM sent to this process once it is true."""
    saved = {sig: signal.getsignal(sig) for sig in (signal.SIGTERM, signal.SIGINT)}
    monkeypatch.setattr(launcher_module, "POLL", 0.05)

    def become_installed(self: Launcher) -> None:
        raise _BecameInstalled

    monkeypatch.setattr(Launcher, "become_installed", become_installed)

    def run(script: dict[str, str], stop_when: Callable[[list[str]], bool] | None = None,
            installed: str = "0.1.0") -> tuple[int, list[str]]:
        store.state_dir.mkdir(parents=True, exist_ok=True)
        (store.state_dir / "script.json").write_text(json.dumps(script))
        done = threading.Event()

        def watch() -> None:
            while stop_when is not None and not done.wait(0.05):
                if stop_when(runs()):
                    os.kill(os.getpid(), signal.SIGTERM)  # to our own handler: the launcher's
                    return

        watcher = threading.Thread(target=watch, daemon=True)
        watcher.start()
        launcher = Launcher(store, argv=[str(store.state_dir)], installed=installed, stop_wait=10)
        try:
            code = launcher.run()
        except _BecameInstalled:
            code = -1
        finally:
            done.set()
            watcher.join()
        return code, runs()

    def runs() -> list[str]:
        path = store.state_dir / "runs.log"
        return [" ".join(line.split()[:2]) for line in path.read_text().splitlines()] if path.exists() else []

    yield run
    for sig, handler in saved.items():
        signal.signal(sig, handler)


def test_a_child_that_switches_versions_is_followed_and_sigterm_is_passed_on(
        store: VersionStore, launch: Callable[..., tuple[int, list[str]]]) -> None:
    """When the running version switches the record and exits to restart, the launcher starts the new version;
    a SIGTERM to the launcher stops that child cleanly and the confirmed record stays."""
    _fake_version(store, "0.2.0")
    _fake_version(store, "0.3.0")
    store.write(VersionRecord(current="0.2.0", previous="0.1.0"))
    code, runs = launch({"0.2.0": "switch:0.3.0", "0.3.0": "confirm"}, stop_when=lambda r: "0.3.0 confirmed" in r)
    assert code == 0
    assert runs == ["0.2.0 started", "0.3.0 started", "0.3.0 confirmed", "0.3.0 stopped"]
    record = store.read()
    assert record is not None and (record.current, record.previous, record.confirmed) == ("0.3.0", "0.2.0", True)


def test_a_version_that_does_not_reach_the_appliance_in_its_trial_is_stopped_and_rolled_back(
        store: VersionStore, launch: Callable[..., tuple[int, list[str]]], monkeypatch: pytest.MonkeyPatch) -> None:
    """A version still unconfirmed when its trial ends is stopped cleanly and the previous one started; the
    record says rolled back as it did not reach the appliance within the trial."""
    monkeypatch.setenv("GODWIT_MOBILITY_TRIAL", "1")
    _fake_version(store, "0.2.0")
    _fake_version(store, "0.3.0")
    store.write(VersionRecord(current="0.3.0", previous="0.2.0", trial_until=time.time() + 1.0, confirmed=False))
    started = time.monotonic()
    code, runs = launch({}, stop_when=lambda r: "0.2.0 started" in r)
    assert code == 0 and time.monotonic() - started >= 1.0
    assert runs == ["0.3.0 started", "0.3.0 stopped", "0.2.0 started", "0.2.0 stopped"]  # stopped cleanly
    assert store.read() == VersionRecord(
        current="0.2.0", previous="0.3.0", confirmed=True,
        report={"version": "0.3.0", "outcome": "rolled-back", "previous": "0.2.0",
                "reason": "it did not reach the appliance within 1 s of the switch"})


def test_a_version_that_exits_during_its_trial_is_rolled_back_at_once(
        store: VersionStore, launch: Callable[..., tuple[int, list[str]]]) -> None:
    """A version that exits during its trial (even confirmed) is rolled back at once, not at the trial's end,
    with its exit code as the reason."""
    _fake_version(store, "0.2.0")
    _fake_version(store, "0.3.0")
    store.write(VersionRecord(current="0.3.0", previous="0.2.0", trial_until=time.time() + 60, confirmed=True))
    started = time.monotonic()
    code, runs = launch({"0.3.0": "exit3"}, stop_when=lambda r: "0.2.0 started" in r)
    assert code == 0 and time.monotonic() - started < 10
    assert runs[:2] == ["0.3.0 started", "0.2.0 started"]
    record = store.read()
    assert record is not None and record.current == "0.2.0" and record.report is not None
    assert record.report["reason"] == "it exited with code 3 during its trial"


def test_a_trial_that_ended_while_nothing_ran_is_rolled_back_before_anything_starts(
        store: VersionStore, launch: Callable[..., tuple[int, list[str]]]) -> None:
    """A trial that ended while the launcher was not running is rolled back at start: the previous version is
    the first to run."""
    _fake_version(store, "0.2.0")
    _fake_version(store, "0.3.0")
    store.write(VersionRecord(current="0.3.0", previous="0.2.0", trial_until=time.time() - 1, confirmed=False))
    code, runs = launch({}, stop_when=lambda r: "0.2.0 started" in r)
    assert code == 0 and runs[0] == "0.2.0 started"
    record = store.read()
    assert record is not None and record.current == "0.2.0" and record.report is not None
    assert record.report["outcome"] == "rolled-back"


def test_a_rollback_to_the_installed_code_makes_it_run_itself(
        store: VersionStore, launch: Callable[..., tuple[int, list[str]]]) -> None:
    """A rollback to the installed code makes the launcher hand over to that code instead of starting a child."""
    _fake_version(store, "0.2.0")
    store.write(VersionRecord(current="0.2.0", previous="0.1.0", trial_until=time.time() + 60, confirmed=False))
    code, runs = launch({"0.2.0": "exit3"})
    assert code == -1 and runs == ["0.2.0 started"]
    record = store.read()
    assert record is not None and (record.current, record.previous) == ("0.1.0", "0.2.0")


def test_outside_a_trial_a_child_that_exits_ends_the_launcher_with_its_code(
        store: VersionStore, launch: Callable[..., tuple[int, list[str]]]) -> None:
    """Once its trial is over, a child that exits ends the launcher with the same exit code; nothing is rolled
    back."""
    _fake_version(store, "0.2.0")
    record = VersionRecord(current="0.2.0", previous="0.1.0", trial_until=time.time() - 5, confirmed=True)
    store.write(record)
    code, runs = launch({"0.2.0": "exit3"})
    assert code == 3 and runs == ["0.2.0 started"]
    assert store.read() == record  # nothing rolled back


def _alive(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def test_the_child_dies_with_its_launcher_even_by_kill_9(store: VersionStore) -> None:
    """The launcher's child never outlives it: a SIGTERM is passed on so the child stops cleanly, and a kill -9
    of the launcher takes the child with it."""
    _fake_version(store, "0.2.0")
    store.write(VersionRecord(current="0.2.0", previous="0.1.0"))
    (store.state_dir / "script.json").write_text("{}")
    code = ("import sys; from pathlib import Path; from engine.mobility.launcher import Launcher; "
            "from engine.mobility.versions import VersionStore; "
            "sys.exit(Launcher(VersionStore(Path(sys.argv[1])), argv=[sys.argv[1]], installed='0.1.0').run())")
    for how in (signal.SIGTERM, signal.SIGKILL):
        (store.state_dir / "runs.log").unlink(missing_ok=True)
        proc = subprocess.Popen([sys.executable, "-c", code, str(store.state_dir)])
        try:
            deadline = time.monotonic() + 20
            while not (store.state_dir / "runs.log").exists() and time.monotonic() < deadline:
                time.sleep(0.05)
            child = int((store.state_dir / "runs.log").read_text().split()[2])
            assert _alive(child)
            proc.send_signal(how)
            assert proc.wait(timeout=15) == (0 if how == signal.SIGTERM else -signal.SIGKILL)
            deadline = time.monotonic() + 5
            while _alive(child) and time.monotonic() < deadline:
                time.sleep(0.05)
            assert not _alive(child), f"the child outlived its launcher ({how.name})"
            stopped = "0.2.0 stopped" in (store.state_dir / "runs.log").read_text()
            assert stopped == (how == signal.SIGTERM)  # passed on; a kill -9 is one of the whole service
        finally:
            proc.kill()
            proc.wait()


# --- the appliance's offers --------------------------------------------------------------------------------


class _Appliance:
    """A state database, an event hub and a data directory with (or without) a mobility release in it."""

    def __init__(self, root: Path, **kw: Any) -> None:
        self.data_dir = DataDir(root)
        root.mkdir(parents=True, exist_ok=True)
        self.state = StateDB(self.data_dir.state_db)
        self.hub = EventHub(self.state)
        self.kw = kw
        self.updates = MobilityUpdates(state=self.state, hub=self.hub, data_dir=self.data_dir, **kw)

    def restart(self) -> None:
        """A new engine over the same data directory."""
        self.updates = MobilityUpdates(state=self.state, hub=self.hub, data_dir=self.data_dir, **self.kw)

    def release(self, version: str = "0.2.0", *, with_release_json: bool = True) -> None:
        folder = self.data_dir.agents / PACKAGE
        (folder / version / "feed" / "metadata").mkdir(parents=True, exist_ok=True)
        (folder / version / "feed" / "metadata" / "timestamp.json").write_text("{}")
        if with_release_json:
            target = {"path": f"agents/{PACKAGE}/{PACKAGE}-{version}.tar.gz", "name": PACKAGE, "version": version,
                      "length": 1234, "sha256": "ab" * 32}
            (folder / version / "release.json").write_text(json.dumps({"version": version, "target": target}))
        (folder / "current.json").write_text(json.dumps({"version": version, "previous": "0.1.0"}))

    def server(self, name: str, version: str = "0.1.0", server_id: str | None = None) -> ServerRecord:
        server_id = server_id or str(uuid.uuid4())
        self.state.add_server(server_id=server_id, name=name, hostname=name, os="Linux", agent_version=version,
                              cert_serial=int(uuid.uuid4().hex[:8], 16), address=None, disks=[])
        row = self.state.server(server_id=server_id)
        assert row is not None
        return row

    def since(self, seconds_ago: float, version: str = "0.2.0") -> None:
        """As if the release was first offered ``seconds_ago``."""
        self.state.set_meta("mobility_release", json.dumps({"version": version, "since": time.time() - seconds_ago}))
        self.restart()

    def codes(self) -> list[str]:
        return [e.code for e in self.state.events()]


def _install(updates: MobilityUpdates, row: ServerRecord) -> bool:
    offer = updates.offer(row, row.agent_version)
    assert offer is not None
    return offer.install


def test_nothing_is_offered_without_a_release_and_nothing_to_a_server_that_is_up_to_date(tmp_path: Path) -> None:
    """No offer without a release, for the bootstrap version, from a damaged release record, or to a server as
    new or newer (or on a dev build); a server behind is offered the release's package to install."""
    appl = _Appliance(tmp_path / "a", stagger=0)
    old = appl.server("old-01")
    assert appl.updates.offer(old, "0.1.0") is None and appl.updates.status_of(old, "0.1.0") == ""
    appl.release(with_release_json=False)  # the bootstrap version: nothing to offer
    assert mobility_release(appl.data_dir) is None and appl.updates.offer(old, "0.1.0") is None
    appl.release()
    release = mobility_release(appl.data_dir)
    assert release is not None and release.version == "0.2.0" and release.feed_dir.name == "feed"
    offer = appl.updates.offer(old, "0.1.0")
    assert offer == MobilityUpdate(version="0.2.0", target=f"agents/{PACKAGE}/{PACKAGE}-0.2.0.tar.gz", length=1234,
                                   sha256="ab" * 32, install=True)
    new = appl.server("new-01", "0.2.0")
    assert appl.updates.offer(new, "0.2.0") is None and appl.updates.status_of(new, "0.2.0") == "up-to-date"
    assert appl.updates.offer(new, "0.3.0") is None  # newer by other means: never a downgrade
    assert appl.updates.offer(new, "dev") is None and appl.updates.status_of(new, "dev") == ""
    (appl.data_dir.agents / PACKAGE / "0.2.0" / "release.json").write_text('{"version": "0.2.0", "target": 7}')
    assert appl.updates.offer(old, "0.1.0") is None  # damaged: nothing offered, nothing raised


def test_slots_spread_over_the_stagger_window(tmp_path: Path) -> None:
    """Install slots spread evenly over the stagger window, and a server's slot is the same every time."""
    updates = _Appliance(tmp_path / "a", stagger=600).updates
    slots = [updates.slot(str(uuid.uuid4())) for _ in range(600)]
    assert all(0 <= s < 600 for s in slots)
    buckets = [sum(1 for s in slots if i * 100 <= s < (i + 1) * 100) for i in range(6)]
    assert all(60 <= b <= 140 for b in buckets), buckets
    assert updates.slot("same-id") == updates.slot("same-id")


def test_auto_mode_installs_each_server_in_its_slot_and_a_few_at_once(tmp_path: Path) -> None:
    """In auto mode each server installs once its slot comes, at most max_updating at once; a finished one
    frees a place, and what is under way survives an engine restart."""
    appl = _Appliance(tmp_path / "a", stagger=100, max_updating=2)
    appl.release()
    rows: list[ServerRecord] = []
    slots = appl.updates.slot
    while len(rows) < 8 or sum(slots(r.server_id) < 50 for r in rows) < 2 or all(slots(r.server_id) < 50 for r in rows):
        rows.append(appl.server(f"s{len(rows):02}"))
    early = [r for r in rows if appl.updates.slot(r.server_id) < 50]
    late = [r for r in rows if appl.updates.slot(r.server_id) >= 50]
    assert len(early) >= 2 and late, "two early slots at least, and late ones"
    assert not any(_install(appl.updates, r) for r in rows)  # first offered just now: nobody's turn yet
    assert appl.codes().count("mobility-release") == 1
    appl.since(50)
    told = [r for r in rows if _install(appl.updates, r)]
    assert told == early[:2], "the early slots, at most two at once"
    assert {appl.updates.status_of(r, "0.1.0") for r in told} == {"updating"}
    appl.since(200)
    assert [r for r in rows if _install(appl.updates, r)] == told  # all due, still two at once
    appl.updates.reported(told[0], UpdateReport(version="0.2.0", outcome="updated", previous="0.1.0"))
    assert appl.updates.offer(told[0], "0.2.0") is None
    third = [r for r in rows if r not in told and _install(appl.updates, r)]
    assert len(third) == 1
    appl.restart()  # what is under way survives an engine restart
    assert appl.updates.status_of(third[0], "0.1.0") == "updating"
    assert {r.name for r in rows if r != told[0] and _install(appl.updates, r)} == {told[1].name, third[0].name}
    assert appl.codes().count("mobility-updated") == 1


def test_manual_mode_installs_only_what_the_admin_asked_for(tmp_path: Path) -> None:
    """In manual mode only the servers the admin asks for install; a request is refused before a release, and
    whole if it names an unknown server or only up-to-date ones; requests survive a restart."""
    appl = _Appliance(tmp_path / "a", stagger=0)
    appl.state.set_meta("updates_mode", "manual")
    a, b, c = appl.server("a"), appl.server("b"), appl.server("c", "0.2.0")
    with pytest.raises(UpdateError, match="offers no mobility version"):
        appl.updates.request(["a"])
    appl.release()
    assert not _install(appl.updates, a) and not _install(appl.updates, b)
    assert appl.updates.status_of(a, "0.1.0") == "update-available"
    with pytest.raises(UnknownServer):
        appl.updates.request(["a", "nobody"])
    assert not _install(appl.updates, a)  # refused as a whole
    with pytest.raises(UpdateError, match="already runs"):
        appl.updates.request(["c"])
    appl.updates.request(["a", "c"])  # c is up to date: left alone
    assert _install(appl.updates, a) and not _install(appl.updates, b)
    assert appl.updates.status_of(a, "0.1.0") == "updating" and appl.updates.status_of(c, "0.2.0") == "up-to-date"
    appl.restart()
    assert _install(appl.updates, a)  # the request survives a restart


def test_a_failed_version_is_not_installed_again_until_the_admin_asks(tmp_path: Path) -> None:
    """A failure report gives one event (even sent twice) and that version is not offered again, even after a
    restart, until the admin asks; a rollback report counts as a failure too."""
    appl = _Appliance(tmp_path / "a", stagger=0)
    appl.release()
    row = appl.server("web-01")
    assert _install(appl.updates, row)
    appl.updates.reported(row, UpdateReport(version="0.2.0", outcome="updating", previous="0.1.0"))
    failed = UpdateReport(version="0.2.0", outcome="update-failed", previous="0.1.0", reason="The package was bad")
    appl.updates.reported(row, failed)
    appl.updates.reported(row, failed)  # sent again (its answer was lost): one event
    assert appl.codes().count("mobility-update-failed") == 1
    event = appl.state.events()[-1]
    assert event.server == "web-01" and "not updated to 0.2.0: The package was bad." in event.message
    assert appl.updates.status_of(row, "0.1.0") == "update-failed" and not _install(appl.updates, row)
    appl.restart()
    assert appl.updates.status_of(row, "0.1.0") == "update-failed" and not _install(appl.updates, row)
    appl.updates.request(["web-01"])
    assert appl.updates.status_of(row, "0.1.0") == "update-available"
    assert _install(appl.updates, row)
    appl.updates.reported(row, UpdateReport(version="0.2.0", outcome="rolled-back", previous="0.1.0",
                                            reason="it did not reach the appliance"))
    assert appl.codes()[-1] == "mobility-rolled-back"
    assert "rolled back to 0.1.0: it did not reach the appliance." in appl.state.events()[-1].message
    assert appl.updates.status_of(row, "0.1.0") == "update-failed"
    appl.state.revoke_server(row.server_id)  # a forgotten server's record goes with it
    assert appl.state.mobility_updates() == []


def test_a_server_that_never_says_it_installs_counts_as_failed_and_frees_its_place(tmp_path: Path) -> None:
    """A service from before mobility updates ignores the offer: after ACK_TIMEOUT it no longer counts as
    updating (another server gets its place), the update counts as failed there (one event), and it is not told
    again; one that said it is at it stays updating."""
    appl = _Appliance(tmp_path / "a", stagger=0, max_updating=1)
    appl.release()
    old, new, third = appl.server("old-01"), appl.server("new-01"), appl.server("third-01")
    assert _install(appl.updates, old) and not _install(appl.updates, new)  # one at a time
    record = appl.state.mobility_update(old.server_id)
    appl.state.set_mobility_update(dataclasses.replace(record, started_at=time.time() - ACK_TIMEOUT - 1))
    assert not _install(appl.updates, old)
    assert appl.updates.status_of(old, "0.1.0") == "update-failed"
    assert appl.codes().count("mobility-update-failed") == 1 and "did not start" in appl.state.events()[-1].message
    assert _install(appl.updates, new)
    appl.updates.reported(new, UpdateReport(version="0.2.0", outcome="updating", previous="0.1.0"))
    record = appl.state.mobility_update(new.server_id)
    appl.state.set_mobility_update(dataclasses.replace(record, started_at=time.time() - ACK_TIMEOUT - 1))
    assert appl.updates.status_of(new, "0.1.0") == "updating" and _install(appl.updates, new)
    assert not _install(appl.updates, third) and not _install(appl.updates, old)
    assert appl.codes().count("mobility-update-failed") == 1


# --- the management link -------------------------------------------------------------------------------------


def _facts(**extra: Any) -> dict[str, Any]:
    return {"hostname": "web-01", "os": "Linux", "agent_version": "0.1.0", "disks": [], **extra}


def test_the_facts_carry_an_update_report_checked_field_by_field() -> None:
    """The update report in a server's facts is absent from older services, round-trips, and is refused when a
    field is bad (unknown outcome, no version, not an object, an over-long reason)."""
    assert ServerFacts.parse(_facts()).update is None  # a service before 1.2
    facts = ServerFacts.parse(_facts(update={"version": "0.2.0", "outcome": "rolled-back", "previous": "0.1.0",
                                             "reason": "it did not reach the appliance"}))
    assert facts.update == UpdateReport(version="0.2.0", outcome="rolled-back", previous="0.1.0",
                                        reason="it did not reach the appliance")
    assert ServerFacts.parse(encode(facts)) == facts
    for bad in ({"version": "0.2.0", "outcome": "exploded"}, {"outcome": "updated"}, "updated",
                {"version": "0.2.0", "outcome": "updated", "reason": "x" * 600}):
        with pytest.raises(ProtocolError):
            ServerFacts.parse(_facts(update=bad))


def test_the_heartbeat_answer_offers_a_version_and_an_older_answer_offers_none() -> None:
    """Management 1.2's heartbeat answer can carry a mobility offer that round-trips; an answer without one
    (an older engine's) offers none, and a malformed offer is refused."""
    assert str(MANAGEMENT) == "management/1.4"
    old = {"heartbeat_interval": 5.0, "data_port": 9443, "replicate": False, "management_port": None}
    assert decode(HeartbeatAnswer, old, link=MANAGEMENT).mobility_update is None
    offer = MobilityUpdate(version="0.2.0", target="agents/mobility-package/mobility-package-0.2.0.tar.gz",
                           length=5, sha256="ab" * 32, install=True)
    wire = {**old, "mobility_update": encode(offer)}
    assert decode(HeartbeatAnswer, wire, link=MANAGEMENT).mobility_update == offer
    with pytest.raises(ProtocolError, match="mobility_update"):
        decode(HeartbeatAnswer, {**old, "mobility_update": {**encode(offer), "install": "yes"}}, link=MANAGEMENT)
