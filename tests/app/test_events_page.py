"""The Events page: filters by severity and server, the search, the count, show_filter, export to JSON and CSV,
the announcement of new critical events, the keyboard, and 10,000 events without a reset — over a real bridge,
driven through its signals or a scripted admin client."""

from __future__ import annotations

import csv
import io
import json
import os
from pathlib import Path
from typing import Any, get_args

import pytest
from PySide6.QtCore import QModelIndex, QPoint, Qt
from PySide6.QtWidgets import QApplication, QFileDialog, QHeaderView, QLineEdit, QMessageBox, QWidget
from pytestqt.modeltest import ModelTester
from pytestqt.qtbot import QtBot

import app.views.events_page as events_page
import app.widgets.export as export
from app.bridge import EngineBridge, EngineStatus, Event, SetupInfo
from app.models.events import APPLIANCE, CRITICAL_RANK, MAX_ROWS, SEVERITY_RANKS, EventsModel
from app.views.events_page import EXPORT_FIELDS, SEVERITY_FILTERS, EventsPage
from app.widgets.export import to_csv_bytes
from engine.links.admin import EventAdded, Hello  # test data only: what the engine sends
from engine.records import Severity, to_json  # the engine's one serialiser: what `godwit events --json` prints
from tests.app.scripted import ScriptedClient
from tests.appliance import until

T0 = 1_767_000_000.0
#: A message with what CSV and JSON must carry: commas, quotes, a line break and text beyond ASCII.
AWKWARD = 'segment "88,412" of /dev/sdb failed its checksum, twice;\nrésumé: données refusées — 再同期 ✓'


def event(i: int, severity: str = "info", server: str | None = None, code: str = "heartbeat",
          message: str | None = None) -> Event:
    return Event(i, T0 + i, severity, code, message or f"event {i}", server)  # type: ignore[arg-type]


HISTORY = [
    event(1, "info", None, "appliance-created", "The appliance was created."),
    event(2, "info", "web-01", "replication-enabled", "Replication of web-01 is enabled."),
    event(3, "warning", "web-01", "server-not-seen", "web-01 has not sent a heartbeat for 5 min."),
    event(4, "error", "db-01", "segment-refused", AWKWARD),
    event(5, "warning", None, "disk-space-low", "The data directory has 9% free."),
    event(6, "info", "db-01", "recovery-point", "db-01: recovery point 12 created."),
    event(7, "error", None, "disk-full", "The data directory is full; replication paused."),
    event(8, "info", "mail-02", "heartbeat-resumed", "mail-02 is heartbeating again."),
]
ENGINE = EngineStatus(pid=4242, version="0.1.0", started_at=0.0, data_dir="/d")
SETUP = SetupInfo(appliance_id="a", passphrase="p", ca_fingerprint="f", management_port=1, data_port=2,
                  secret_store="file", host="h", mobility_command="godwit mobility run")


def _page(qtbot: QtBot, tmp_path: Path, history: list[Event] | None = None) -> tuple[EventsPage, EngineBridge]:
    """A page over a real bridge that is never started: the test drives it through the bridge's signals."""
    bridge = EngineBridge(tmp_path / "data", start_engine=False)
    page = EventsPage(bridge)
    qtbot.addWidget(page)
    bridge.events_reset.emit(list(HISTORY if history is None else history))
    return page, bridge


def shown_ids(page: EventsPage) -> list[int]:
    """The ids of the rows as the view shows them, top to bottom."""
    view = page.table.model()
    return [page.filter.event_at(page.table.source_row(r)).id for r in range(view.rowCount())]


def cell(page: EventsPage, row: int, column: int, role: int = Qt.ItemDataRole.DisplayRole) -> Any:
    view = page.table.model()
    return view.data(view.index(row, column), role)


def ids(events: list[Event]) -> list[int]:
    return [e.id for e in events]


# --- filters, search, count ------------------------------------------------------------------------------
def test_severity_filter_narrows_the_rows_and_the_count(qtbot: QtBot, tmp_path: Path) -> None:
    """All severities shows every event newest first and counts them; Warnings and errors, then Errors only, show
    just those and say "N of M events"."""
    page, _ = _page(qtbot, tmp_path)
    assert [page.severity_combo.itemText(i) for i in range(page.severity_combo.count())] == [
        "All severities", "Warnings and errors", "Errors only"]
    assert shown_ids(page) == [8, 7, 6, 5, 4, 3, 2, 1]
    assert page.count.text() == "8 events"
    page.severity_combo.setCurrentIndex(1)
    assert shown_ids(page) == [7, 5, 4, 3]
    assert page.count.text() == "4 of 8 events"
    page.severity_combo.setCurrentIndex(2)
    assert shown_ids(page) == [7, 4]
    assert page.count.text() == "2 of 8 events"
    page.severity_combo.setCurrentIndex(0)
    assert shown_ids(page) == [8, 7, 6, 5, 4, 3, 2, 1]
    assert page.count.text() == "8 events"


def test_server_filter_lists_each_server_and_the_appliance(qtbot: QtBot, tmp_path: Path) -> None:
    """The server filter offers all servers, the appliance, then each server seen (by name); a server narrows to
    its events, Appliance to the events that name no server; a new server joins the list and the choice stays."""
    page, bridge = _page(qtbot, tmp_path)
    combo = page.server_combo
    assert [combo.itemText(i) for i in range(combo.count())] == ["All servers", "Appliance", "db-01", "mail-02",
                                                                 "web-01"]
    combo.setCurrentIndex(combo.findText("web-01"))
    assert shown_ids(page) == [3, 2]
    assert page.count.text() == "2 of 8 events"
    combo.setCurrentIndex(combo.findText("Appliance"))
    assert shown_ids(page) == [7, 5, 1]
    assert cell(page, 0, EventsModel.SERVER) == "Appliance"
    bridge.event_added.emit(event(9, "info", "app-07"))  # a server not seen before
    assert [combo.itemText(i) for i in range(combo.count())] == ["All servers", "Appliance", "app-07", "db-01",
                                                                 "mail-02", "web-01"]
    assert combo.currentText() == "Appliance" and shown_ids(page) == [7, 5, 1]
    page.severity_combo.setCurrentIndex(2)  # the filters combine
    assert shown_ids(page) == [7]
    assert page.count.text() == "1 of 9 events"


def test_search_is_live_and_case_insensitive_over_code_and_message(qtbot: QtBot, tmp_path: Path) -> None:
    """Typing narrows the rows at each key, ignoring case, in the message and in the code (not shown); it combines
    with the other filters, and clearing it (Escape) shows every event again."""
    page, _ = _page(qtbot, tmp_path)
    qtbot.keyClicks(page.search, "DATA DIR")
    assert shown_ids(page) == [7, 5]
    assert page.count.text() == "2 of 8 events"
    page.search.clear()
    qtbot.keyClicks(page.search, "segment-REF")  # the code of event 4, not in its message
    assert shown_ids(page) == [4]
    page.search.clear()
    qtbot.keyClicks(page.search, "RÉSUMÉ")
    assert shown_ids(page) == [4]
    page.search.clear()
    qtbot.keyClicks(page.search, "web-01")
    assert shown_ids(page) == [3, 2]
    page.severity_combo.setCurrentIndex(1)
    assert shown_ids(page) == [3]
    page.search.setFocus()
    qtbot.keyClick(page.search, Qt.Key.Key_Escape)
    assert page.search.text() == ""
    assert shown_ids(page) == [7, 5, 4, 3]
    assert page.count.text() == "4 of 8 events"


def test_show_filter_opens_the_page_filtered(qtbot: QtBot, tmp_path: Path) -> None:
    """show_filter sets the severity and the server (a server with no event yet too) and clears the search; with no
    arguments it shows everything."""
    page, _ = _page(qtbot, tmp_path)
    page.search.setText("heartbeat")
    page.show_filter(severity="error", server="db-01")
    assert (page.severity_combo.currentText(), page.server_combo.currentText(), page.search.text()) == (
        "Errors only", "db-01", "")
    assert shown_ids(page) == [4]
    page.show_filter(severity="warning")
    assert page.server_combo.currentText() == "All servers"
    assert shown_ids(page) == [7, 5, 4, 3]
    page.show_filter(server=APPLIANCE)
    assert page.severity_combo.currentText() == "All severities"
    assert shown_ids(page) == [7, 5, 1]
    page.show_filter(severity="error", server="new-server")
    assert page.server_combo.currentText() == "new-server"
    assert shown_ids(page) == [] and page.count.text() == "0 of 8 events"
    assert not page.export_button.isEnabled()  # nothing to export
    page.show_filter()
    assert shown_ids(page) == [8, 7, 6, 5, 4, 3, 2, 1] and page.count.text() == "8 events"
    assert repr(page) == "<EventsPage shown=8/8 severity>=0 server=None search='' filled=True exporting=0>"


def test_the_severities_are_the_engines(qtbot: QtBot) -> None:
    """Every severity the engine records has a rank, the most serious is the critical one, and the severity filter
    offers one choice per rank (a new severity in the engine fails here until the console knows it)."""
    assert set(get_args(Severity)) == set(SEVERITY_RANKS)
    assert SEVERITY_RANKS["error"] == CRITICAL_RANK
    assert sorted(SEVERITY_FILTERS) == sorted(set(SEVERITY_RANKS.values()))


# --- the table -----------------------------------------------------------------------------------------
def test_columns_fit_and_the_message_shows_in_full_in_its_tooltip(qtbot: QtBot, tmp_path: Path) -> None:
    """Time is as wide as a time, Severity narrow, Message takes the rest; a message shows on one line and in
    full (every line, escaped) in its tooltip; the Time header turns the order round, the others do not sort."""
    page, _ = _page(qtbot, tmp_path)
    page.resize(1100, 600)
    page.show()
    qtbot.waitExposed(page)
    header = page.table.horizontalHeader()
    time_text = cell(page, 0, EventsModel.TIME)
    assert header.sectionSize(EventsModel.TIME) > page.table.fontMetrics().horizontalAdvance(time_text)
    assert header.sectionSize(EventsModel.SEVERITY) < header.sectionSize(EventsModel.TIME)
    assert header.sectionResizeMode(EventsModel.MESSAGE) == QHeaderView.ResizeMode.Stretch
    assert header.sectionSize(EventsModel.MESSAGE) > page.table.viewport().width() // 2
    row = shown_ids(page).index(4)
    assert "\n" not in cell(page, row, EventsModel.MESSAGE)
    tip = cell(page, row, EventsModel.MESSAGE, Qt.ItemDataRole.ToolTipRole)
    assert "segment-refused" in tip
    assert "&quot;88,412&quot;" in tip and "twice;\nrésumé" in tip and "再同期 ✓" in tip

    header.sectionClicked.emit(EventsModel.SEVERITY)  # as a click does once the header moved its indicator
    assert shown_ids(page)[0] == 8 and header.sortIndicatorSection() == EventsModel.TIME
    qtbot.mouseClick(header.viewport(), Qt.MouseButton.LeftButton,
                     pos=QPoint(header.sectionViewportPosition(EventsModel.TIME) + 5, 5))
    assert shown_ids(page) == [1, 2, 3, 4, 5, 6, 7, 8]
    assert header.sortIndicatorOrder() == Qt.SortOrder.AscendingOrder
    page.severity_combo.setCurrentIndex(2)
    assert shown_ids(page) == [4, 7]


def test_ctrl_f_focuses_the_search_and_the_controls_have_accessible_names(qtbot: QtBot, tmp_path: Path) -> None:
    """Ctrl+F on the page puts the cursor in the search box; every control says what it is to a screen reader."""
    page, _ = _page(qtbot, tmp_path)
    page.show()
    page.activateWindow()
    qtbot.waitUntil(page.isActiveWindow)
    page.table.setFocus()
    qtbot.waitUntil(page.table.hasFocus)
    assert not page.search.hasFocus()
    qtbot.keyClick(page.table, Qt.Key.Key_F, Qt.KeyboardModifier.ControlModifier)
    assert page.search.hasFocus()
    names = {w.objectName(): w.accessibleName() for w in (page.severity_combo, page.server_combo, page.search,
                                                            page.export_button, page.table, page.count)}
    assert names == {"events_severity": "Severity filter", "events_server": "Server filter",
                     "events_search": "Search events", "export_events": "Export events", "events_table": "Events",
                     "events_count": "Event count"}


def test_filter_keeps_the_model_contract(qtbot: QtBot, qtmodeltester: ModelTester, tmp_path: Path) -> None:
    """The filter keeps Qt's model contract through a reset, events arriving and leaving, new filters and the
    order turned round; it maps every shown row to its event in the model and back."""
    page, bridge = _page(qtbot, tmp_path)
    proxy = page.filter
    qtmodeltester.check(proxy)
    page.show_filter(severity="warning")
    qtmodeltester.check(proxy)
    for i in range(9, 30):
        bridge.event_added.emit(event(i, ("info", "warning", "error")[i % 3], ("a", None)[i % 2]))
    proxy.set_newest_first(False)
    qtmodeltester.check(proxy)
    page.show_filter(server=APPLIANCE)
    bridge.events_reset.emit(HISTORY[:3])
    qtmodeltester.check(proxy)
    page.show_filter()
    for row in range(proxy.rowCount()):
        source = proxy.mapToSource(proxy.index(row, EventsModel.MESSAGE))
        assert source.column() == EventsModel.MESSAGE
        assert page.model.event_at(source.row()) == proxy.event_at(row)
        assert proxy.mapFromSource(source) == proxy.index(row, EventsModel.MESSAGE)
    assert proxy.index(proxy.rowCount(), 0) == QModelIndex()
    assert repr(proxy) == "<EventsFilter shown=3/3 min_rank=0 server=None text='' newest_first=False>"


def test_ten_thousand_events_append_without_resetting_the_view(qtbot: QtBot, tmp_path: Path) -> None:
    """10,000 events arriving one by one are inserted rows (the oldest leave at MAX_ROWS as removed rows): the view
    is never reset or laid out again, the selected event stays selected, and a filter then narrows them as one
    layout change that keeps the selection."""
    page, bridge = _page(qtbot, tmp_path)
    page.show()
    view = page.table.model()
    resets: list[str] = []
    for model, name in ((view, "view"), (page.filter, "filter")):
        model.modelAboutToBeReset.connect(lambda n=name: resets.append(f"{n} reset"))
        model.layoutAboutToBeChanged.connect(lambda *_, n=name: resets.append(f"{n} layout"))
    for i in range(9, 10_009):
        if i == 100:
            bridge.event_added.emit(event(i, "error", "web-01", message="the one selected"))
            page.table.selectRow(0)
        else:
            severity, server = ("info", "warning", "error")[i % 3], ("web-01", "db-01", None, "mail-02")[i % 4]
            bridge.event_added.emit(event(i, severity, server))
    assert resets == []
    assert page.model.rowCount() == MAX_ROWS == 10_000
    assert page.model.event_at(0).id == 10_008 - MAX_ROWS + 1  # the oldest 8 left
    assert shown_ids(page)[:2] == [10_008, 10_007] and view.rowCount() == MAX_ROWS
    assert page.count.text() == "10000 events"
    [selected] = page.table.selectionModel().selectedRows()
    assert page.filter.event_at(page.table.source_row(selected.row())).message == "the one selected"

    page.show_filter(severity="error", server="web-01")
    assert sorted(resets) == ["filter layout", "view layout"]  # one layout change, passed up to the view
    expected = [e.id for e in reversed(page.model.events()) if e.severity == "error" and e.server == "web-01"]
    assert shown_ids(page) == expected and len(expected) > 100
    [selected] = page.table.selectionModel().selectedRows()
    assert page.filter.event_at(page.table.source_row(selected.row())).message == "the one selected"
    assert page.count.text() == f"{len(expected)} of 10000 events"


# --- new critical events -----------------------------------------------------------------------------------
class Attached:
    """A page over a real bridge attached to a scripted client that holds ``history``; its stream stays open for
    pushes and :meth:`reattach` ends it (the bridge attaches again and is sent the history anew)."""

    def __init__(self, tmp_path: Path, history: list[Event]) -> None:
        self.bridge = EngineBridge(tmp_path / "data", start_engine=False)
        self.client = ScriptedClient([Hello(engine=ENGINE, setup=SETUP, servers=(), last_event_id=0)],
                                     events=list(history), keep_open=True)
        self.bridge.client = self.client  # type: ignore[assignment]
        self.page = EventsPage(self.bridge)
        self.announced: list[Event] = []
        self.page.critical_added.connect(self.announced.append)

    async def __aenter__(self) -> Attached:
        self.bridge.start()
        await until(lambda: self.bridge.attach_count == 1 and self.page.filled, what="the history")
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.bridge.aclose()
        self.page.close()

    async def push(self, e: Event) -> None:
        self.client._events.append(e)  # the engine records it, then sends it
        self.client.push(EventAdded(e))
        await until(lambda: self.page.model.events()[-1].id >= e.id, what=f"event {e.id}")

    async def reattach(self) -> None:
        count = self.bridge.attach_count
        self.client.end()
        await until(lambda: self.bridge.attach_count == count + 1, timeout=10, what="the bridge to attach again")


@pytest.mark.asyncio
@pytest.mark.qt_loop
async def test_critical_added_once_per_new_critical_event(qapp: QApplication, tmp_path: Path) -> None:
    """critical_added is emitted once for each new error (the most serious severity) that arrives after the page
    was filled: not for the errors in the history, not for warnings, not again for an event sent twice, and not for
    the errors in the snapshot a re-attach brings."""
    async with Attached(tmp_path, HISTORY) as a:
        assert a.page.model.rowCount() == len(HISTORY) and a.announced == []  # events 4 and 7 are errors
        await a.push(event(9, "warning", "web-01"))
        assert a.announced == []
        await a.push(event(10, "error", "web-01", "segment-refused", "web-01: a segment was refused."))
        assert ids(a.announced) == [10]
        a.bridge.event_added.emit(event(10, "error", "web-01", "segment-refused", "again"))  # a duplicate
        await a.push(event(11, "info", "db-01"))
        assert ids(a.announced) == [10]
        await a.push(event(12, "error", None, "disk-full"))
        assert ids(a.announced) == [10, 12]
        assert a.announced[1].code == "disk-full"

        a.client._events.append(event(13, "error", "db-01"))  # recorded while the console was away
        await a.reattach()
        await until(lambda: a.page.model.events()[-1].id == 13, what="the snapshot")
        assert ids(a.announced) == [10, 12]
        await a.push(event(14, "error", "db-01"))
        assert ids(a.announced) == [10, 12, 14]


def test_nothing_is_announced_before_the_page_is_filled(qtbot: QtBot, tmp_path: Path) -> None:
    """An event that reaches the page before the engine's history is not announced (it is history too); once the
    page is filled, a new error is."""
    bridge = EngineBridge(tmp_path / "data", start_engine=False)
    page = EventsPage(bridge)
    qtbot.addWidget(page)
    announced: list[Event] = []
    page.critical_added.connect(announced.append)
    bridge.event_added.emit(event(1, "error"))
    assert announced == [] and page.model.rowCount() == 1
    bridge.events_reset.emit(HISTORY)
    with qtbot.waitSignal(page.critical_added, timeout=1000) as blocker:
        bridge.event_added.emit(event(9, "error"))
    assert blocker.args == [event(9, "error")]


# --- export ----------------------------------------------------------------------------------------------
class Asked:
    """Stands in for the file dialog and the confirmation: answers ``path`` and ``replace``, and records both."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch, path: Path | None, *, replace: bool = False) -> None:
        self.path, self.replace = path, replace
        self.dialogs: list[tuple[str, Path]] = []
        self.confirmations: list[str] = []
        monkeypatch.setattr(events_page, "ask_export_path", self.ask_export_path)
        monkeypatch.setattr(events_page, "confirm", self.confirm)

    async def ask_export_path(self, parent: QWidget, title: str, suggested: Path, fmt: str) -> Path | None:
        self.dialogs.append((fmt, suggested))
        return self.path

    async def confirm(self, parent: QWidget, title: str, text: str, action: str) -> bool:
        self.confirmations.append(text)
        return self.replace


def _filtered_page(qtbot: QtBot, tmp_path: Path) -> EventsPage:
    """A page showing the warnings and errors: events 3, 4 (the awkward message), 5 and 7."""
    page, _ = _page(qtbot, tmp_path)
    page.show_filter(severity="warning")
    assert shown_ids(page) == [7, 5, 4, 3]
    return page


def _files(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


@pytest.mark.asyncio
@pytest.mark.qt_loop
async def test_export_json_is_what_the_cli_prints_for_the_events_shown(qapp: QApplication, qtbot: QtBot,
                                                                       tmp_path: Path,
                                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    """Export as JSON writes the events shown, oldest first, as a list of objects with the fields and names of
    `godwit events --json` (the engine's serialiser), in UTF-8; the page says how many it wrote and where."""
    page = _filtered_page(qtbot, tmp_path)
    out = tmp_path / "out"
    out.mkdir()
    asked = Asked(monkeypatch, out / "events.json")
    await page.export("json")
    assert asked.dialogs[0][0] == "json" and asked.dialogs[0][1].suffix == ".json"
    assert asked.confirmations == []
    written = json.loads((out / "events.json").read_bytes().decode("utf-8"))
    expected = [e for e in HISTORY if e.severity in ("warning", "error")]
    assert written == to_json(expected)
    assert [list(item) for item in written] == [list(EXPORT_FIELDS)] * 4
    assert written[1]["message"] == AWKWARD and written[1]["server"] == "db-01" and written[3]["server"] is None
    assert _files(out) == ["events.json"]
    assert (page.message.text(), page.message.property("level")) == (
        f"Exported 4 events to {out / 'events.json'}.", "ok")
    assert page.export_button.isEnabled()


@pytest.mark.asyncio
@pytest.mark.qt_loop
async def test_export_csv_round_trips_the_events_shown(qapp: QApplication, qtbot: QtBot, tmp_path: Path,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    """Export as CSV writes a header row of the same fields, then one row per event shown (oldest first), quoted
    as RFC 4180 says: commas, quotes and a line break in a message read back unchanged, and so does non-ASCII."""
    page = _filtered_page(qtbot, tmp_path)
    path = tmp_path / "events.csv"
    Asked(monkeypatch, path)
    await page.export("csv")
    raw = path.read_bytes()
    assert raw.startswith(b"id,ts,severity,code,message,server\r\n")
    assert b'"segment ""88,412"" of' in raw
    with path.open(newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    expected = [e for e in HISTORY if e.severity in ("warning", "error")]
    back = [Event(int(r["id"]), float(r["ts"]), r["severity"], r["code"], r["message"],  # type: ignore[arg-type]
                  r["server"] or None) for r in rows]
    assert back == expected
    assert rows[1]["message"] == AWKWARD


@pytest.mark.asyncio
@pytest.mark.qt_loop
async def test_export_replaces_a_file_only_once_the_admin_confirms(qapp: QApplication, qtbot: QtBot, tmp_path: Path,
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    """Exporting onto an existing file asks first: refused, the old file is untouched and nothing else is left in
    the folder; confirmed, the file holds the export."""
    page = _filtered_page(qtbot, tmp_path)
    out = tmp_path / "out"
    out.mkdir()
    path = out / "events.json"
    path.write_text("the admin's own notes\n")
    asked = Asked(monkeypatch, path, replace=False)
    await page.export("json")
    assert asked.confirmations == [f"{path} already exists. Replace it with the events shown?"]
    assert path.read_text() == "the admin's own notes\n"
    assert _files(out) == ["events.json"]
    assert page.message.isHidden()

    asked.replace = True
    await page.export("json")
    assert len(asked.confirmations) == 2
    assert [e["id"] for e in json.loads(path.read_text())] == [3, 4, 5, 7]
    assert _files(out) == ["events.json"]


@pytest.mark.asyncio
@pytest.mark.qt_loop
async def test_export_into_a_folder_that_cannot_be_written_says_so_once(qapp: QApplication, qtbot: QtBot,
                                                                        tmp_path: Path,
                                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    """A folder that cannot be written (here a "folder" that is a regular file: chmod does not stop root) gives one
    message naming the file and what to do, no dialog, and no file at all."""
    page = _filtered_page(qtbot, tmp_path)
    page.show()
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("x")
    Asked(monkeypatch, blocker / "events.csv")
    before = _files(tmp_path)
    await page.export("csv")
    assert page.message.isVisible() and page.message.property("level") == "error"
    assert page.message.text() == (f"Could not write {blocker / 'events.csv'} (Not a directory). Choose another "
                                   "folder and export again.")
    assert [w for w in page.findChildren(QMessageBox) if w.isVisible()] == []
    assert _files(tmp_path) == before and blocker.read_text() == "x"
    assert page.export_button.isEnabled()


@pytest.mark.asyncio
@pytest.mark.qt_loop
async def test_export_that_fails_while_writing_leaves_the_old_file(qapp: QApplication, qtbot: QtBot, tmp_path: Path,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    """When writing fails half-way (the disk is full), the page says so once, the file it would replace is as it
    was and no partial or temporary file is left."""
    page = _filtered_page(qtbot, tmp_path)
    out = tmp_path / "out"
    out.mkdir()
    path = out / "events.json"
    path.write_text("yesterday's export\n")
    Asked(monkeypatch, path, replace=True)

    def full(fd: int) -> None:
        raise OSError(28, os.strerror(28))

    monkeypatch.setattr(export.os, "fsync", full)
    await page.export("json")
    assert page.message.text() == (f"Could not write {path} (No space left on device). Choose another folder and "
                                   "export again.")
    assert path.read_text() == "yesterday's export\n"
    assert _files(out) == ["events.json"]


@pytest.mark.asyncio
@pytest.mark.qt_loop
async def test_export_asks_where_with_a_save_dialog(qapp: QApplication, qtbot: QtBot, tmp_path: Path,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    """Export as CSV… opens a save dialog for CSV files that leaves replacing to the page and adds the suffix; the
    file chosen there is written. Cancelled, nothing is written."""
    page = _filtered_page(qtbot, tmp_path)
    monkeypatch.setattr(Path, "home", lambda: tmp_path)
    page._export_folder = tmp_path

    async def dialog() -> QFileDialog:
        await until(lambda: isinstance(QApplication.activeModalWidget(), QFileDialog), what="the file dialog")
        found = QApplication.activeModalWidget()
        assert isinstance(found, QFileDialog)
        return found

    page.export_csv_action.trigger()
    picker = await dialog()
    assert picker.acceptMode() == QFileDialog.AcceptMode.AcceptSave
    assert picker.testOption(QFileDialog.Option.DontConfirmOverwrite) and picker.defaultSuffix() == "csv"
    assert picker.selectedFiles()[0].startswith(str(tmp_path / "godwit-events-"))
    picker.reject()
    await until(lambda: not page.tasks, what="the export to end")
    assert not list(tmp_path.glob("*.csv"))

    page.export_csv_action.trigger()
    picker = await dialog()
    name = picker.findChild(QLineEdit, "fileNameEdit")
    assert name is not None
    name.setText(str(tmp_path / "chosen"))  # as typed, with no suffix
    picker.accept()
    await until(lambda: not page.tasks, what="the export to end")
    assert (tmp_path / "chosen.csv").read_bytes().startswith(b"id,ts,severity,code,message,server\r\n")


def test_atomic_write_replaces_whole_or_not_at_all(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """write_file_atomically replaces a file with the new bytes and leaves nothing beside it; when the rename fails
    the old file stays and the temporary one is removed; a new file gets the umask's permissions."""
    path = tmp_path / "f.json"
    path.write_bytes(b"old")
    export.write_file_atomically(path, b"new")
    assert path.read_bytes() == b"new" and _files(tmp_path) == ["f.json"]
    mask = os.umask(0o027)
    try:
        export.write_file_atomically(tmp_path / "g.csv", b"x")
    finally:
        os.umask(mask)
    assert (tmp_path / "g.csv").stat().st_mode & 0o777 == 0o640

    def refuse(src: str, dst: str) -> None:
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(export.os, "replace", refuse)
    with pytest.raises(PermissionError):
        export.write_file_atomically(path, b"newer")
    assert path.read_bytes() == b"new" and _files(tmp_path) == ["f.json", "g.csv"]


def test_export_encodes_no_events_as_an_empty_list_and_a_header(tmp_path: Path) -> None:
    """With no events, JSON is an empty list and CSV the header row alone (the columns are named all the same)."""
    assert json.loads(export.encode([], EXPORT_FIELDS, "json")) == []
    assert export.encode([], EXPORT_FIELDS, "csv") == b"id,ts,severity,code,message,server\r\n"
    with pytest.raises(ValueError, match="xml"):
        export.encode([], EXPORT_FIELDS, "xml")


def test_csv_cells_a_spreadsheet_would_run_as_formulas_stay_text() -> None:
    """A message starting with =, +, -, @ (say, a server named by its admin) is written with a leading apostrophe,
    so a spreadsheet shows it instead of running it; numbers and ordinary text are written as they are."""
    events = [Event(id=1, ts=5.0, severity="error", code="x", message='=HYPERLINK("http://evil","x")', server="-web"),
              Event(id=2, ts=6.0, severity="info", code="y", message="plain words", server=None)]
    rows = list(csv.reader(io.StringIO(to_csv_bytes(events, ["id", "ts", "message", "server"]).decode())))
    assert rows[1] == ["1", "5.0", "'=HYPERLINK(\"http://evil\",\"x\")", "'-web"]
    assert rows[2] == ["2", "6.0", "plain words", ""]
