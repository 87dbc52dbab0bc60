"""Table models: Qt's model contract, and updates by key touching only what changed."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import pytest
from PySide6.QtCore import Qt
from pytestqt.modeltest import ModelTester
from pytestqt.qtbot import QtBot

from app.bridge import Event, Health, HealthCause, ServerState, ServerStatus
from app.models.events import MAX_ROWS, EventsModel
from app.models.servers import KeyRole, ProgressRole, ServersModel, SortRole
from engine.records import DiskStatus  # test data only; the console itself gets records from the bridge


def server(name: str, **kw: object) -> ServerStatus:
    base: dict[str, object] = dict(server_id=name, name=name, hostname=f"{name}.lan", os="Debian 12",
                                   agent_version="0.1.0", state=ServerState.REGISTERED, health=Health.HEALTHY,
                                   health_cause=None, health_detail=None, registered_at=time.time() - 60,
                                   last_heartbeat=time.time(), address="10.0.0.5",
                                   disks=(DiskStatus("/dev/sda", 5 << 30), DiskStatus("/dev/sdb", 1 << 40)))
    base.update(kw)
    return ServerStatus(**base)  # type: ignore[arg-type]


def test_servers_model_contract(qtmodeltester: ModelTester) -> None:
    """The Servers model keeps Qt's model contract through reset, insert and remove."""
    model = ServersModel()
    model.set_rows([server("b"), server("a")])
    qtmodeltester.check(model)
    model.update_server(server("c"))
    model.remove_server("a")
    qtmodeltester.check(model)
    assert repr(model) == "<ServersModel rows=['b', 'c']>"


def test_servers_model_updates_by_key(qtbot: QtBot) -> None:
    """An update finds its row by name and signals only the cells whose text changed; sizes sort as Python ints."""
    model = ServersModel()
    first = server("web-01")
    model.set_rows([first, server("db-01")])
    with qtbot.waitSignal(model.dataChanged) as changed:
        model.update_server(server("web-01", health=Health.WARNING, health_cause=HealthCause.AGENT_NOT_SEEN,
                                   last_heartbeat=first.last_heartbeat))
    top_left, bottom_right = changed.args[0], changed.args[1]
    assert top_left.row() == bottom_right.row() == 1  # sorted by name: db-01, web-01
    assert top_left.column() == bottom_right.column() == ServersModel.HEALTH
    with qtbot.assertNotEmitted(model.dataChanged):
        model.update_server(server("web-01", health=Health.WARNING, health_cause=HealthCause.AGENT_NOT_SEEN,
                                   last_heartbeat=first.last_heartbeat))
    with qtbot.assertNotEmitted(model.rowsRemoved):
        model.remove_server("not-there")
    idx = model.index(1, ServersModel.SIZE)
    assert model.data(idx, SortRole) == (5 << 30) + (1 << 40)  # beyond 32 bits, compared as Python ints
    assert model.data(idx) == "1.0 TiB"
    assert model.data(model.index(1, ServersModel.HEALTH)) == "Warning · agent not seen"
    assert model.data(model.index(1, 0), KeyRole) == "web-01"


def test_servers_model_words_each_state() -> None:
    """Status, Progress and Throughput follow the server's state: a bar and a rate only in initial replication."""
    model = ServersModel()
    disks = (DiskStatus("/dev/sda", 8 << 20, bytes_done=2 << 20, bytes_total=8 << 20, throughput_bps=1 << 20,
                        eta_seconds=360.0),)
    model.set_rows([server("a-new"), server("b-init", state=ServerState.INITIAL_REPLICATION, replicating=True,
                                            disks=disks),
                    server("c-ok", state=ServerState.PROTECTED, replicating=True, disks=disks),
                    server("d-resync", state=ServerState.RESYNCING, replicating=True, disks=disks),
                    server("e-paused", state=ServerState.PAUSED, replicating=True, disks=disks),
                    server("f-error", state=ServerState.ERROR, replicating=True, disks=disks,
                           health=Health.CRITICAL, health_cause=HealthCause.SEGMENT_CORRUPT)])

    def cell(row: int, column: int, role: int = Qt.ItemDataRole.DisplayRole) -> object:
        return model.data(model.index(row, column), role)

    assert [cell(r, ServersModel.STATE) for r in range(6)] == [
        "Registered", "Initial replication", "Protected", "Resyncing", "Paused", "Error"]
    assert [cell(r, ServersModel.PROGRESS) for r in range(6)] == [
        "Not replicating", "25% · 2 MiB / 8 MiB · 6 min", "Done", "Resyncing every block", "Stopped: see Health",
        "Stopped: see Health"]
    assert [cell(r, ServersModel.PROGRESS, ProgressRole) for r in range(6)] == [None, 250, None, None, None, None]
    assert [cell(r, ServersModel.THROUGHPUT) for r in range(6)] == ["", "1.0 MiB/s", "", "", "", ""]
    assert cell(5, ServersModel.HEALTH) == "Critical · segment corrupt"


def test_events_model_contract_dedupe_and_cap(qtmodeltester: ModelTester) -> None:
    """The Events model keeps Qt's contract, drops an event it already has and keeps at most MAX_ROWS."""
    model = EventsModel()
    model.set_rows([Event(i, time.time(), "info", "c", f"m{i}") for i in range(1, 4)])
    qtmodeltester.check(model)
    model.add_event(Event(3, time.time(), "info", "c", "again"))  # came with the snapshot already
    assert model.rowCount() == 3
    model.add_event(Event(4, time.time(), "warning", "c", "new", server="web-01"))
    assert model.rowCount() == 4
    model.set_rows([Event(i, time.time(), "info", "c", "m") for i in range(1, MAX_ROWS + 1)])
    model.add_event(Event(MAX_ROWS + 1, time.time(), "error", "c", "last"))
    assert model.rowCount() == MAX_ROWS
    assert model.event_at(0).id == 2
    qtmodeltester.check(model)


def test_servers_model_shows_the_mobility_version_and_its_update() -> None:
    """The Mobility column says the version a server runs and, when there is one, where its update stands."""
    model = ServersModel()
    model.set_rows([server("a", mobility_version="0.1.0", mobility_update="update-available"),
                    server("b", mobility_version="0.2.0", mobility_update="up-to-date"),
                    server("c", mobility_update="")])
    assert [model.data(model.index(r, ServersModel.MOBILITY)) for r in range(3)] == [
        "0.1.0 · update available", "0.2.0", "0.1.0"]


@pytest.mark.asyncio
@pytest.mark.qt_loop
async def test_update_mobility_acts_on_the_selected_outdated_servers(qtbot: QtBot, tmp_path: Path) -> None:
    """Update mobility is enabled for a selection holding an outdated server and asks for exactly those, one after
    the other; with several selected, Forget (one server at a time) waits and the other buttons follow what the
    selected servers allow (none replicates: Enable, not Disable or Resync)."""
    from PySide6.QtCore import QItemSelectionModel, QObject, QSettings, Signal

    from app.views.servers_page import ServersPage

    class Bridge(QObject):
        servers_reset = Signal(list)
        server_updated = Signal(object)
        server_removed = Signal(str)

        def __init__(self) -> None:
            super().__init__()
            self.asked: list[list[str]] = []

        async def update_mobility(self, names: list[str]) -> None:
            self.asked.append(names)

    bridge = Bridge()
    settings = QSettings(str(tmp_path / "console.ini"), QSettings.Format.IniFormat)
    page = ServersPage(bridge, settings=settings)  # type: ignore[arg-type]
    qtbot.addWidget(page)
    bridge.servers_reset.emit([server("a", mobility_update="update-available"),
                               server("b", mobility_update="up-to-date"), server("c", mobility_update="update-failed")])
    assert not page.update_mobility_button.isEnabled()
    selection = page.table.selectionModel()
    for row in range(3):
        selection.select(page.table.model().index(row, 0),
                         QItemSelectionModel.SelectionFlag.Select | QItemSelectionModel.SelectionFlag.Rows)
    assert page.update_mobility_button.isEnabled()
    assert page.selected() is None
    assert not any(b.isEnabled() for b in (page.forget_button, page.disable_button, page.resync_button))
    assert page.enable_button.isEnabled()
    page.update_mobility_button.click()
    for _ in range(100):
        if len(bridge.asked) == 2 and not page.busy:
            break
        await asyncio.sleep(0.02)
    assert bridge.asked == [["a"], ["c"]]
