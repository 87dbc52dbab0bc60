"""Table models: Qt's model contract, and updates by key touching only what changed."""

from __future__ import annotations

import time

from pytestqt.modeltest import ModelTester
from pytestqt.qtbot import QtBot

from app.bridge import Event, ServerStatus
from app.models.events import MAX_ROWS, EventsModel
from app.models.servers import KeyRole, ServersModel, SortRole
from engine.records import DiskStatus  # test data only; the console itself gets records from the bridge


def server(name: str, **kw: object) -> ServerStatus:
    base: dict[str, object] = dict(server_id=name, name=name, hostname=f"{name}.lan", os="Debian 12",
                                   agent_version="0.1.0", state="registered", health="healthy", health_cause=None,
                                   health_detail=None, registered_at=time.time() - 60, last_heartbeat=time.time(),
                                   address="10.0.0.5",
                                   disks=(DiskStatus("/dev/sda", 5 << 30), DiskStatus("/dev/sdb", 1 << 40)))
    base.update(kw)
    return ServerStatus(**base)  # type: ignore[arg-type]


def test_servers_model_contract(qtmodeltester: ModelTester) -> None:
    model = ServersModel()
    model.set_rows([server("b"), server("a")])
    qtmodeltester.check(model)
    model.update_server(server("c"))
    model.remove_server("a")
    qtmodeltester.check(model)
    assert repr(model) == "<ServersModel rows=['b', 'c']>"


def test_servers_model_updates_by_key(qtbot: QtBot) -> None:
    model = ServersModel()
    first = server("web-01")
    model.set_rows([first, server("db-01")])
    with qtbot.waitSignal(model.dataChanged) as changed:
        model.update_server(server("web-01", health="warning", health_cause="agent-not-seen",
                                   last_heartbeat=first.last_heartbeat))
    top_left, bottom_right = changed.args[0], changed.args[1]
    assert top_left.row() == bottom_right.row() == 1  # sorted by name: db-01, web-01
    assert top_left.column() == bottom_right.column() == ServersModel.HEALTH
    with qtbot.assertNotEmitted(model.dataChanged):
        model.update_server(server("web-01", health="warning", health_cause="agent-not-seen",
                                   last_heartbeat=first.last_heartbeat))
    with qtbot.assertNotEmitted(model.rowsRemoved):
        model.remove_server("not-there")
    idx = model.index(1, ServersModel.SIZE)
    assert model.data(idx, SortRole) == (5 << 30) + (1 << 40)  # beyond 32 bits, compared as Python ints
    assert model.data(idx) == "1.0 TiB"
    assert model.data(model.index(1, ServersModel.HEALTH)) == "Warning · agent not seen"
    assert model.data(model.index(1, 0), KeyRole) == "web-01"


def test_events_model_contract_dedupe_and_cap(qtmodeltester: ModelTester) -> None:
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
