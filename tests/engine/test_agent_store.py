"""The installed agent versions (engine/updater/store.py) and the updater's start-up and schedule, on real
files and a real state database."""

from __future__ import annotations

import json
import time
from datetime import datetime
from pathlib import Path

import pytest

import engine
from engine.config import DataDir
from engine.errors import UpdateError
from engine.events import EventHub
from engine.state import StateDB
from engine.updater import AGENT_ORDER
from engine.updater.package import build_package
from engine.updater.service import Updater, next_window
from engine.updater.store import AgentStore, tree_digest

REPO = Path(__file__).resolve().parents[2]


def test_the_bootstrap_is_the_engines_own_code_with_its_compiled_files(tmp_path: Path) -> None:
    """An agent's first version is a copy of the running engine's code with its file times (compiled files stay
    valid); asking again changes nothing, and the mobility package gets no code."""
    store = AgentStore(tmp_path / "agents")
    installed = store.ensure_bootstrap("process-server")
    assert (installed.version, installed.previous, installed.bootstrap) == (engine.__version__, None, True)
    engine_dir = Path(engine.__file__).resolve().parent
    copied = installed.path / "engine"
    assert (copied / "process_server" / "service.py").read_bytes() == \
        (engine_dir / "process_server" / "service.py").read_bytes()
    assert tree_digest(copied) == tree_digest(engine_dir)  # times kept: compiled files stay valid
    assert store.manifest("process-server", engine.__version__) is not None
    # Nothing to do the second time; a mobility package has no code to run.
    assert store.ensure_bootstrap("process-server") == installed
    assert not (store.ensure_bootstrap("mobility-package").path / "engine").exists()


def test_a_developers_edit_of_the_bootstrap_version_is_copied_again(tmp_path: Path) -> None:
    """When the running engine's code differs from the copy of its version (a developer's edit), it is copied
    again: stale files go and the recorded digest is the engine's."""
    store = AgentStore(tmp_path / "agents")
    store.ensure_bootstrap("log-processor")
    record = tmp_path / "agents" / "log-processor" / "current.json"
    data = json.loads(record.read_text())
    data["digest"] = "another tree"
    record.write_text(json.dumps(data))
    marker = store.current("log-processor").path / "engine" / "stale.py"  # type: ignore[union-attr]
    marker.write_text("")
    store.ensure_bootstrap("log-processor")
    assert not marker.exists()
    assert json.loads(record.read_text())["digest"] == tree_digest(Path(engine.__file__).resolve().parent)


def test_switch_rollback_and_prune_keep_two_versions(tmp_path: Path) -> None:
    """A switch records the previous version, prune keeps only the current and previous, rollback swaps them; a
    version not unpacked whole, or a path outside the store, is refused."""
    store = AgentStore(tmp_path / "agents")
    store.ensure_bootstrap("replication-manager")
    for version in ("0.2.0", "0.3.0"):
        archive = build_package(REPO, name="replication-manager", version=version, out_dir=tmp_path)
        store.unpack("replication-manager", archive, version)
    assert store.versions("replication-manager") == [engine.__version__, "0.2.0", "0.3.0"]
    store.switch("replication-manager", "0.2.0")
    now = store.switch("replication-manager", "0.3.0")
    assert (now.version, now.previous, now.bootstrap) == ("0.3.0", "0.2.0", False)
    assert store.prune("replication-manager") == [engine.__version__]
    assert store.versions("replication-manager") == ["0.2.0", "0.3.0"]
    back = store.rollback("replication-manager")
    assert (back.version, back.previous) == ("0.2.0", "0.3.0")
    with pytest.raises(UpdateError, match="not installed whole"):
        store.switch("replication-manager", "0.9.0")
    with pytest.raises(ValueError):
        store.version_dir("replication-manager", "../../etc")


def test_an_engine_newer_than_what_runs_installs_itself(tmp_path: Path) -> None:
    """An engine newer than the agent's current version installs itself as current, the older one as previous."""
    store = AgentStore(tmp_path / "agents")
    archive = build_package(REPO, name="process-server", version="0.0.9", out_dir=tmp_path)
    store.unpack("process-server", archive, "0.0.9")
    store.switch("process-server", "0.0.9")
    now = store.ensure_bootstrap("process-server")
    assert (now.version, now.previous, now.bootstrap) == (engine.__version__, "0.0.9", True)


def _updater(tmp_path: Path) -> tuple[Updater, StateDB]:
    data_dir = DataDir(tmp_path / "data")
    data_dir.create()
    state = StateDB(data_dir.state_db)
    return Updater(data_dir=data_dir, state=state, hub=EventHub(state),
                   probe_address=lambda port: ("127.0.0.1", 1)), state


def test_an_install_interrupted_after_the_switch_is_rolled_back_at_start(tmp_path: Path) -> None:
    """An install cut short after its switch is rolled back at the next start: the old version runs, the journal
    and partial unpacks are gone, and the agent shows update-failed (interrupted) with one event."""
    updater, state = _updater(tmp_path)
    try:
        updater.prepare()
        updater.set_feed("http://127.0.0.1:1/feed")  # never asked here: the status is what prepare() found
        store = updater.store
        archive = build_package(REPO, name="process-server", version="0.2.0", out_dir=tmp_path)
        store.begin("process-server", from_version=engine.__version__, to_version="0.2.0")
        store.unpack("process-server", archive, "0.2.0")
        store.switch("process-server", "0.2.0")
        store.stage("process-server", "health-check")
        (store.folder("process-server") / ".partial-process-server-0.4.0-x").mkdir()  # a crash in an unpack
        updater.prepare()  # the engine's next start
        assert store.current("process-server").version == engine.__version__  # type: ignore[union-attr]
        assert store.journal("process-server") is None
        assert not list(store.folder("process-server").glob(".partial-*"))
        status = {a.name: a for a in updater.status().agents}["process-server"]
        assert status.status == "update-failed" and "interrupted" in (status.reason or ""), status
        assert [e.code for e in state.events()] == ["update-feed", "agent-update-interrupted"]
        assert {a.installed_version for a in updater.status().agents} == {engine.__version__}
    finally:
        state.close()


def test_settings_are_checked_and_kept(tmp_path: Path) -> None:
    """Mode, install time and feed start as auto, 00:00 and none; bad values are refused with what is expected;
    good ones survive the engine's restart."""
    updater, state = _updater(tmp_path)
    try:
        updater.prepare()
        status = updater.status()
        assert (status.mode, status.window, status.feed_url) == ("auto", "00:00", None)
        assert [a.name for a in status.agents] == list(AGENT_ORDER)
        with pytest.raises(UpdateError, match="auto or manual"):
            updater.set_mode("sometimes")
        with pytest.raises(UpdateError, match="HH:MM"):
            updater.set_mode(None, window="24:00")
        with pytest.raises(UpdateError, match="https://"):
            updater.set_feed("file:///etc/passwd")
        updater.set_mode("manual", window="03:30")
        updater.set_feed("http://127.0.0.1:1/feed")
    finally:
        state.close()
    again, state = _updater(tmp_path)  # the engine's next start
    try:
        assert (again.mode, again.window, again.feed_url) == ("manual", "03:30", "http://127.0.0.1:1/feed")
    finally:
        state.close()


def test_the_window_is_the_next_local_time_of_day() -> None:
    """The next install time is the next time the window comes in local time, strictly after now (tomorrow if
    it is now)."""
    base = datetime(2026, 12, 2, 10, 15).timestamp()
    assert datetime.fromtimestamp(next_window(base, "00:00")) == datetime(2026, 12, 3, 0, 0)
    assert datetime.fromtimestamp(next_window(base, "10:30")) == datetime(2026, 12, 2, 10, 30)
    assert datetime.fromtimestamp(next_window(base, "10:15")) == datetime(2026, 12, 3, 10, 15)  # strictly after
    assert next_window(time.time(), "23:59") > time.time()
