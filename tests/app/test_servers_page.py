"""The Servers page: search and filters, bulk commands on the selection (one after another, a refusal reported and
the rest going on), the rows' context menu, details, the keyboard, the columns the admin leaves, and a thousand
servers updating live — over a fake bridge with the engine bridge's signals and per-server commands."""

from __future__ import annotations

import asyncio
import dataclasses
import time
from pathlib import Path
from types import SimpleNamespace

import pytest
from PySide6.QtCore import QItemSelectionModel, QObject, QSettings, Qt, Signal
from PySide6.QtWidgets import QApplication, QHeaderView, QMessageBox
from pytestqt.modeltest import ModelTester
from pytestqt.qtbot import QtBot

from app.bridge import EngineError, Health, HealthCause, ServerState, ServerStatus
from app.models.servers import ServerFilter, ServersModel, short_age_text
from app.views.servers_page import ServersPage, names_text
from app.widgets.record_table import Columns, RecordTable
from engine.records import DiskStatus  # test data only; the console itself gets records from the bridge
from tests.appliance import until

NOW = time.time()


def server(name: str, **kw: object) -> ServerStatus:
    base: dict[str, object] = dict(server_id=name, name=name, hostname=f"{name}.corp.example", os="Debian 12",
                                   agent_version="0.1.0", state=ServerState.REGISTERED, health=Health.HEALTHY,
                                   health_cause=None, health_detail=None, registered_at=NOW - 600,
                                   last_heartbeat=NOW - 5, address="10.0.0.5", disks=(DiskStatus("/dev/sda", 8 << 30),),
                                   mobility_version="0.1.0", mobility_update="up-to-date")
    base.update(kw)
    return ServerStatus(**base)  # type: ignore[arg-type]


def protected(name: str, **kw: object) -> ServerStatus:
    return server(name, **{"state": ServerState.PROTECTED, "replicating": True, "policy": "default", **kw})


#: Six servers in the states and healths a page meets.
MIXED = [
    protected("web-01", os="Debian GNU/Linux 12 (bookworm)", address="10.1.0.11"),
    protected("web-02", os="Ubuntu 22.04.4 LTS", health=Health.WARNING, health_cause=HealthCause.RPO_EXCEEDED),
    protected("db-01", os="Windows Server 2022", state=ServerState.ERROR, health=Health.CRITICAL,
              health_cause=HealthCause.SEGMENT_CORRUPT, hostname="sql-primary.corp.example"),
    server("files-01", os="Windows Server 2019", address="192.168.7.20"),
    server("mail-01", os="Ubuntu 24.04 LTS", health=Health.WARNING, health_cause=HealthCause.AGENT_NOT_SEEN),
    protected("erp-01", state=ServerState.RESYNCING, mobility_update="update-available"),
]


class FakeBridge(QObject):
    """The bridge's server signals and per-server commands: each command is recorded in ``calls``, refused with
    ``refuse[name]`` when set, and, while ``stepping``, waits for the test to :meth:`step` it."""

    servers_reset = Signal(list)
    server_updated = Signal(object)
    server_removed = Signal(str)

    def __init__(self) -> None:
        super().__init__()
        self.calls: list[tuple[str, str]] = []
        self.refuse: dict[str, BaseException] = {}
        self.stepping = False
        self._steps = asyncio.Semaphore(0)

    def __repr__(self) -> str:
        return f"<FakeBridge calls={self.calls}>"

    def step(self) -> None:
        self._steps.release()

    async def _command(self, command: str, name: str) -> None:
        self.calls.append((command, name))
        if self.stepping:
            await self._steps.acquire()
        await asyncio.sleep(0)
        if name in self.refuse:
            raise self.refuse[name]

    async def policies(self) -> list[object]:
        return [SimpleNamespace(name="default"), SimpleNamespace(name="hourly")]

    async def enable(self, name: str, policy: str) -> None:
        await self._command(f"enable {policy}", name)

    async def disable(self, name: str) -> None:
        await self._command("disable", name)

    async def resync(self, name: str) -> None:
        await self._command("resync", name)

    async def forget_server(self, name: str) -> None:
        await self._command("forget", name)

    async def update_mobility(self, names: list[str]) -> None:
        for name in names:
            await self._command("update-mobility", name)


class Asked:
    """Stands in for ``confirm`` and ``choose`` in the page's module: records each question and gives ``answer``."""

    def __init__(self, answer: object) -> None:
        self.answer = answer
        self.questions: list[tuple[str, str]] = []

    async def __call__(self, _parent: object, title: str, text: str, *rest: object) -> object:
        self.questions.append((title, text))
        return self.answer


@pytest.fixture
def settings(tmp_path: Path) -> QSettings:
    return QSettings(str(tmp_path / "console.ini"), QSettings.Format.IniFormat)


def make_page(qtbot: QtBot, settings: QSettings, servers: list[ServerStatus] = MIXED) -> tuple[ServersPage, FakeBridge]:
    bridge = FakeBridge()
    page = ServersPage(bridge, settings=settings)  # type: ignore[arg-type]
    qtbot.addWidget(page)
    bridge.servers_reset.emit(list(servers))
    return page, bridge


def shown(page: ServersPage) -> list[str]:
    """The names the table shows, top to bottom."""
    proxy = page.table.proxy
    return [proxy.index(r, ServersModel.NAME).data() for r in range(proxy.rowCount())]


def select(page: ServersPage, *names: str) -> None:
    """Select the rows of ``names`` (as Ctrl-clicks would), the last one current."""
    selection = page.table.selectionModel()
    selection.clearSelection()
    for name in names:
        row = page.model.row_of(name)
        assert row is not None
        index = page.table.proxy.mapFromSource(page.model.index(row, 0))
        selection.setCurrentIndex(index, QItemSelectionModel.SelectionFlag.Select
                                  | QItemSelectionModel.SelectionFlag.Rows)


def enabled(page: ServersPage) -> dict[str, bool]:
    return {b.objectName(): b.isEnabled() for b in (page.enable_button, page.resync_button, page.disable_button,
                                                    page.update_mobility_button, page.forget_button)}


# --- finding servers --------------------------------------------------------------------------------
def test_the_filter_searches_every_word_in_name_hostname_os_and_address() -> None:
    """The search matches each word, case-insensitively, in any of name, hostname, OS and address; the health and
    state filters narrow further; an unknown filter value is refused."""
    db, files = MIXED[2], MIXED[3]
    assert ServerFilter("SQL-PRIMARY").accepts(db)  # the hostname
    assert ServerFilter("windows 2022").accepts(db) and not ServerFilter("windows 2022").accepts(files)
    assert ServerFilter("192.168.7").accepts(files)
    assert not ServerFilter("files-01 linux").accepts(files)  # every word must be somewhere
    assert ServerFilter(state="attention").accepts(db)  # critical and in error
    assert not ServerFilter(state="attention").accepts(MIXED[0])
    assert ServerFilter(health="critical").accepts(db) and not ServerFilter(health="warning").accepts(db)
    assert not ServerFilter().active and ServerFilter(" ").active is False
    with pytest.raises(ValueError):
        ServerFilter(health="bad")


def test_search_and_filters_narrow_the_rows_and_the_count(qtbot: QtBot, settings: QSettings) -> None:
    """Typing narrows the rows at once; the health and state filters narrow them further; the count says how many
    of all are shown while a filter is on, and Clear filters shows every server again."""
    page, _ = make_page(qtbot, settings)
    assert page.count.text() == "6 servers" and not page.clear_filters_button.isVisibleTo(page)
    qtbot.keyClicks(page.search, "WEB")
    assert shown(page) == ["web-01", "web-02"]
    assert page.count.text() == "2 of 6 servers" and page.clear_filters_button.isVisibleTo(page)
    page.health_filter.setCurrentIndex(page.health_filter.findData("warning"))
    assert shown(page) == ["web-02"] and page.count.text() == "1 of 6 servers"
    page.search.clear()
    assert shown(page) == ["mail-01", "web-02"]
    page.health_filter.setCurrentIndex(page.health_filter.findData("all"))
    page.state_filter.setCurrentIndex(page.state_filter.findData("attention"))
    assert shown(page) == ["db-01", "mail-01", "web-02"]
    page.state_filter.setCurrentIndex(page.state_filter.findData("not-replicating"))
    assert shown(page) == ["files-01", "mail-01"]
    page.state_filter.setCurrentIndex(page.state_filter.findData("replicating"))
    assert shown(page) == ["db-01", "erp-01", "web-01", "web-02"]
    page.clear_filters_button.click()
    assert len(shown(page)) == 6 and page.count.text() == "6 servers"
    assert page.state_filter.currentData() == "all"


def test_show_filter_opens_the_page_on_one_health(qtbot: QtBot, settings: QSettings) -> None:
    """show_filter("critical") lists the critical servers only, with the health filter showing it and the search
    and state filter cleared; a server that turns critical appears; an unknown health is refused."""
    page, bridge = make_page(qtbot, settings)
    page.search.setText("web")
    page.show_filter("critical")
    assert shown(page) == ["db-01"]
    assert page.health_filter.currentText() == "Critical" and page.search.text() == ""
    assert page.count.text() == "1 of 6 servers"
    bridge.server_updated.emit(dataclasses.replace(MIXED[0], health=Health.CRITICAL,
                                                   health_cause=HealthCause.TARGET_FULL))
    assert shown(page) == ["db-01", "web-01"] and page.count.text() == "2 of 6 servers"
    with pytest.raises(ValueError):
        page.show_filter("red")
    assert shown(page) == ["db-01", "web-01"]  # unchanged


def test_the_proxy_keeps_the_model_contract_while_filtering(qtmodeltester: ModelTester, qtbot: QtBot,
                                                             settings: QSettings) -> None:
    """The filtering proxy keeps Qt's model contract as servers come, change and go under a filter."""
    page, bridge = make_page(qtbot, settings)
    page.show_filter("warning")
    qtmodeltester.check(page.table.proxy)
    bridge.server_updated.emit(server("new-01", health=Health.WARNING))
    bridge.server_removed.emit("web-02")
    qtmodeltester.check(page.table.proxy)
    assert shown(page) == ["mail-01", "new-01"]
    assert repr(page.table.proxy) == "<RecordProxy shown=2/6 filtered=True>"


# --- which actions apply -----------------------------------------------------------------------------
def test_each_action_waits_for_a_selected_server_it_applies_to(qtbot: QtBot, settings: QSettings) -> None:
    """A button is enabled when at least one selected server allows it; Forget only with exactly one selected; an
    update of a selected server weighs them again."""
    page, bridge = make_page(qtbot, settings)
    assert not any(enabled(page).values())
    select(page, "files-01")
    assert enabled(page) == {"enable_replication": True, "resync_replication": False, "disable_replication": False,
                             "update_mobility": False, "forget_server": True}
    select(page, "files-01", "web-01")
    assert enabled(page) == {"enable_replication": True, "resync_replication": True, "disable_replication": True,
                             "update_mobility": False, "forget_server": False}
    select(page, "erp-01")  # resyncing already: no second resync
    assert enabled(page) == {"enable_replication": False, "resync_replication": False, "disable_replication": True,
                             "update_mobility": True, "forget_server": True}
    select(page, "web-01", "db-01")
    assert not page.forget_button.isEnabled() and page.selected() is None
    assert "selected=['db-01', 'web-01']" in repr(page)
    select(page, "files-01")
    bridge.server_updated.emit(protected("files-01"))  # the engine says it replicates now
    qtbot.waitUntil(lambda: page.disable_button.isEnabled())
    assert not page.enable_button.isEnabled()


# --- bulk commands -----------------------------------------------------------------------------------
@pytest.mark.asyncio
@pytest.mark.qt_loop
async def test_bulk_resync_asks_for_each_server_in_turn_and_reports_a_refusal(
        qapp: QApplication, settings: QSettings, monkeypatch: pytest.MonkeyPatch) -> None:
    """Resync asks the engine for each selected server it applies to, one after another, with the actions
    waiting and the status line counting; the one the engine refuses gets a line naming it, the others go on."""
    asked = Asked(True)
    monkeypatch.setattr("app.views.servers_page.confirm", asked)
    servers = [*MIXED, protected("app-01"), protected("app-02")]
    bridge = FakeBridge()
    page = ServersPage(bridge, settings=settings)  # type: ignore[arg-type]
    page.show()
    try:
        bridge.servers_reset.emit(servers)
        select(page, "app-01", "app-02", "db-01", "erp-01", "files-01", "web-01")  # erp-01 resyncs, files-01 not
        bridge.refuse["db-01"] = EngineError("db-01 has not sent a heartbeat for 2 h. Start its mobility service, "
                                             "then resync.")
        bridge.stepping = True
        page.resync_button.click()
        await until(lambda: len(bridge.calls) == 1, what="the first resync")
        assert asked.questions[0][0] == "Resync 4 servers?"
        assert page.status.text() == "Resyncing 1 of 4…" and page.busy
        assert not any(enabled(page).values()) and not page.resync_action.isEnabled()
        bridge.step()
        await until(lambda: len(bridge.calls) == 2, what="the second resync")
        assert page.status.text() == "Resyncing 2 of 4…"
        for _ in range(3):
            bridge.step()
        await until(lambda: not page.busy, what="the run to end")
        assert bridge.calls == [("resync", "app-01"), ("resync", "app-02"), ("resync", "db-01"),
                                ("resync", "web-01")]
        assert page.status.text().splitlines() == [
            "Resync started on 3 of 4 servers.",
            "Could not resync db-01: db-01 has not sent a heartbeat for 2 h. Start its mobility service, then resync."]
        assert page.status.property("level") == "error" and page.status.isVisible()
        assert page.resync_button.isEnabled()
        assert len(asked.questions) == 1  # one confirmation for all
    finally:
        page.close()


@pytest.mark.asyncio
@pytest.mark.qt_loop
async def test_disable_confirms_once_listing_the_names(qapp: QApplication, settings: QSettings,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    """Disable asks once, naming every selected server that replicates; no answer, nothing happens; yes, each is
    disabled in turn and the status line says so."""
    asked = Asked(False)
    monkeypatch.setattr("app.views.servers_page.confirm", asked)
    bridge = FakeBridge()
    page = ServersPage(bridge, settings=settings)  # type: ignore[arg-type]
    page.show()
    try:
        bridge.servers_reset.emit(MIXED)
        select(page, "web-01", "files-01", "db-01", "web-02")
        page.disable_button.click()
        await until(lambda: asked.questions and not page.busy, what="the question")
        title, text = asked.questions[0]
        assert title == "Disable replication of 3 servers?"
        assert text.splitlines()[-3:] == ["  db-01", "  web-01", "  web-02"] and "files-01" not in text
        assert bridge.calls == []
        asked.answer = True
        page.disable_button.click()
        await until(lambda: len(asked.questions) == 2 and not page.busy, what="the run")
        assert bridge.calls == [("disable", "db-01"), ("disable", "web-01"), ("disable", "web-02")]
        assert page.status.text() == "Replication is disabled on 3 servers."
        assert page.status.property("level") == "ok"
    finally:
        page.close()


def test_a_long_list_of_names_says_how_many_more() -> None:
    """A confirmation lists at most twelve names and counts the rest."""
    names = [f"s{i:02d}" for i in range(30)]
    lines = names_text(names).splitlines()
    assert len(lines) == 12 and lines[0] == "  s00" and lines[-1] == "  …and 19 more"
    assert names_text(["a", "b"]).splitlines() == ["  a", "  b"]


@pytest.mark.asyncio
@pytest.mark.qt_loop
async def test_enable_asks_for_the_policy_once_for_every_server_that_does_not_replicate(
        qapp: QApplication, settings: QSettings, monkeypatch: pytest.MonkeyPatch) -> None:
    """Enable opens the policy dialog once and enables each selected server that does not replicate with the
    chosen policy; servers that replicate already are left alone."""
    chose = Asked("hourly")
    monkeypatch.setattr("app.views.servers_page.choose", chose)
    bridge = FakeBridge()
    page = ServersPage(bridge, settings=settings)  # type: ignore[arg-type]
    page.show()
    try:
        bridge.servers_reset.emit(MIXED)
        select(page, "files-01", "web-01", "mail-01")
        page.enable_button.click()
        await until(lambda: chose.questions and not page.busy, what="the run")
        assert chose.questions[0][0] == "Enable replication of 2 servers"
        assert bridge.calls == [("enable hourly", "files-01"), ("enable hourly", "mail-01")]
        assert page.status.text() == "Replication is enabled on 2 servers; each starts at its next heartbeat."
    finally:
        page.close()


@pytest.mark.asyncio
@pytest.mark.qt_loop
async def test_a_bug_in_one_command_is_shown_once_without_a_traceback_in_the_line(
        qapp: QApplication, settings: QSettings, monkeypatch: pytest.MonkeyPatch) -> None:
    """An unexpected error for one server reads as one plain line and the error dialog; the others go on."""
    monkeypatch.setattr("app.views.servers_page.confirm", Asked(True))
    bridge = FakeBridge()
    page = ServersPage(bridge, settings=settings)  # type: ignore[arg-type]
    page.show()
    try:
        bridge.servers_reset.emit(MIXED)
        select(page, "web-01", "web-02")
        bridge.refuse["web-01"] = KeyError("boom")
        page.resync_button.click()
        await until(lambda: len(bridge.calls) == 2 and not page.busy, what="the run")
        assert page.status.text().splitlines() == [
            "Resync started on 1 of 2 servers.", "Could not resync web-01: something went wrong in the console."]
        boxes = [w for w in page.findChildren(QMessageBox) if w.isVisible()]
        assert len(boxes) == 1 and "Something went wrong in the console" in boxes[0].text()
        boxes[0].close()
    finally:
        page.close()


# --- the context menu, details, keys --------------------------------------------------------------------
@pytest.mark.asyncio
@pytest.mark.qt_loop
async def test_the_context_menu_holds_the_actions_of_the_buttons(qapp: QApplication, settings: QSettings,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    """Right-click on a row outside the selection selects it and opens the menu: Show details, Copy name, then the
    buttons' own actions, enabled alike; they run the same commands."""
    monkeypatch.setattr("app.views.servers_page.confirm", Asked(True))
    bridge = FakeBridge()
    page = ServersPage(bridge, settings=settings)  # type: ignore[arg-type]
    page.resize(1100, 500)
    page.show()
    try:
        bridge.servers_reset.emit(MIXED)
        select(page, "files-01")
        row = shown(page).index("web-02")
        page.on_table_custom_context_menu_requested(page.table.visualRect(page.table.proxy.index(row, 1)).center())
        menu = page._menu
        assert menu is not None and menu.objectName() == "servers_menu" and menu.isVisible()
        assert [s.name for s in page.selected_servers()] == ["web-02"]
        assert [a.objectName() for a in menu.actions() if not a.isSeparator()] == [
            "show_details", "copy_name", "enable_replication", "resync_replication", "disable_replication",
            "update_mobility", "forget_server"]
        assert [a.text() for a in menu.actions() if not a.isSeparator()][:2] == ["Show details", "Copy name"]
        by_name = {a.objectName(): a for a in menu.actions()}
        for button in (page.enable_button, page.resync_button, page.disable_button, page.update_mobility_button,
                       page.forget_button):
            assert by_name[button.objectName()].isEnabled() == button.isEnabled()
        menu.close()

        with_details: list[str] = []
        page.detail_requested.connect(with_details.append)
        by_name["show_details"].trigger()
        assert with_details == ["web-02"]
        by_name["copy_name"].trigger()
        assert QApplication.clipboard().text() == "web-02"
        by_name["resync_replication"].trigger()
        await until(lambda: bridge.calls and not page.busy, what="the resync")
        assert bridge.calls == [("resync", "web-02")]
        select(page, "web-01", "web-02")
        page.row_menu()
        assert page.copy_action.text() == "Copy names"
        page.copy_action.trigger()
        assert QApplication.clipboard().text() == "web-01\nweb-02"
    finally:
        page.close()


def test_double_click_and_enter_ask_for_the_details(qtbot: QtBot, settings: QSettings) -> None:
    """Double-clicking a row and Enter on the current row emit detail_requested with the server's name."""
    page, _ = make_page(qtbot, settings)
    with qtbot.waitActive(page):
        page.show()
        page.activateWindow()
    row = shown(page).index("db-01")
    cell = page.table.visualRect(page.table.proxy.index(row, ServersModel.OS)).center()
    with qtbot.waitSignal(page.detail_requested) as asked:
        qtbot.mousePress(page.table.viewport(), Qt.MouseButton.LeftButton, pos=cell)  # as the first click does
        qtbot.mouseDClick(page.table.viewport(), Qt.MouseButton.LeftButton, pos=cell)
    assert asked.args == ["db-01"]
    select(page, "mail-01")
    page.table.setFocus()
    with qtbot.waitSignal(page.detail_requested) as asked:
        qtbot.keyClick(page.table, Qt.Key.Key_Return)
    assert asked.args == ["mail-01"]
    with qtbot.waitSignal(page.detail_requested) as asked:
        qtbot.keyClick(page.table, Qt.Key.Key_Enter)
    assert asked.args == ["mail-01"]
    with qtbot.assertNotEmitted(page.detail_requested):
        page.search.setFocus()
        qtbot.keyClick(page.search, Qt.Key.Key_Return)  # from the search box, Enter goes to the table
    assert page.table.hasFocus()


@pytest.mark.asyncio
@pytest.mark.qt_loop
async def test_keys_find_search_delete_disables_with_a_confirmation(qapp: QApplication, settings: QSettings,
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    """Ctrl+F goes to the search box; Delete on the table asks to disable the selected servers (and does nothing
    while typing in the search box); Escape clears the search; every control has an accessible name."""
    asked = Asked(False)
    monkeypatch.setattr("app.views.servers_page.confirm", asked)
    bridge = FakeBridge()
    page = ServersPage(bridge, settings=settings)  # type: ignore[arg-type]
    page.show()
    page.activateWindow()
    try:
        bridge.servers_reset.emit(MIXED)
        await until(lambda: page.isActiveWindow(), what="the page to be the active window")
        select(page, "web-01")
        page.table.setFocus()
        QtBot.keyClick(page.table, Qt.Key.Key_F, Qt.KeyboardModifier.ControlModifier)
        assert page.search.hasFocus()
        QtBot.keyClicks(page.search, "web")
        QtBot.keyClick(page.search, Qt.Key.Key_Delete)
        await asyncio.sleep(0.05)
        assert asked.questions == [] and shown(page) == ["web-01", "web-02"]
        QtBot.keyClick(page.search, Qt.Key.Key_Escape)
        assert page.search.text() == "" and len(shown(page)) == 6
        page.table.setFocus()
        QtBot.keyClick(page.table, Qt.Key.Key_Delete)
        await until(lambda: asked.questions and not page.busy, what="the question")
        assert asked.questions[0][0] == "Disable replication of web-01?"
        for widget in (page.search, page.health_filter, page.state_filter, page.table, page.enable_button,
                       page.resync_button, page.disable_button, page.update_mobility_button, page.forget_button):
            assert widget.accessibleName(), widget.objectName()
        page.search.setFocus()
        chain = []
        for _ in range(9):
            QtBot.keyClick(QApplication.focusWidget(), Qt.Key.Key_Tab)
            chain.append(QApplication.focusWidget().objectName())
        assert chain == ["health_filter", "state_filter", "servers_table", "resync_replication",
                         "disable_replication", "forget_server", "servers_search", "health_filter",
                         "state_filter"]  # Tab leaves the table; buttons that wait (Enable) are skipped
    finally:
        page.close()


# --- columns ---------------------------------------------------------------------------------------
def test_columns_fit_the_window_with_health_taking_the_rest(qtbot: QtBot, settings: QSettings) -> None:
    """The columns start wide enough for typical values (the OS names in full), with Size and Throughput hidden and
    Health taking the room left: no horizontal scrollbar in the table of a 1110-pixel page (a 1280-pixel window's);
    Heartbeat is not stretched."""
    page, _ = make_page(qtbot, settings)
    page.resize(1110, 600)
    page.show()
    qtbot.waitExposed(page)
    table, m = page.table, ServersModel
    metrics = table.fontMetrics()
    for os_name in ("Debian GNU/Linux 12 (bookworm)", "Ubuntu 22.04.4 LTS", "Windows Server 2022"):
        assert metrics.horizontalAdvance(os_name) < table.columnWidth(m.OS)
    assert [c for c in range(m.LAST_HEARTBEAT + 1) if table.isColumnHidden(c)] == [m.SIZE, m.THROUGHPUT]
    header = table.horizontalHeader()
    assert header.sectionResizeMode(m.HEALTH) == QHeaderView.ResizeMode.Stretch
    assert header.sectionResizeMode(m.LAST_HEARTBEAT) == QHeaderView.ResizeMode.Interactive
    assert not header.stretchLastSection()
    assert metrics.horizontalAdvance("59 min ago") < table.columnWidth(m.LAST_HEARTBEAT) < 120
    assert header.length() <= table.viewport().width()
    assert table.horizontalScrollBar().maximum() == 0


def test_column_widths_hidden_columns_and_sort_are_saved_and_restored(qtbot: QtBot, settings: QSettings) -> None:
    """Widths the admin sets, the columns hidden or shown from the header's menu and the sort order are saved under
    servers/ and come back in the next page; Name cannot be hidden; Reset columns goes back to the start."""
    page, _ = make_page(qtbot, settings)
    table, m = page.table, ServersModel
    start_os = table.columnWidth(m.OS)
    table.horizontalHeader().resizeSection(m.OS, 300)  # as a drag of its edge does
    menu = table.column_menu()
    actions = {a.data(): a for a in menu.actions() if a.data()}
    assert list(actions) == list(m.KEYS) and not actions["name"].isEnabled()
    assert not actions["size"].isChecked() and actions["mobility"].isChecked()
    actions["mobility"].trigger()  # hide
    actions["size"].trigger()  # show
    table.horizontalHeader().setSortIndicator(m.LAST_HEARTBEAT, Qt.SortOrder.DescendingOrder)
    settings.sync()
    assert settings.value("servers/column_widths") == "os=300"
    assert settings.value("servers/hidden_columns") == "throughput,mobility"
    assert settings.value("servers/sort") == "heartbeat,descending"

    again, _ = make_page(qtbot, QSettings(settings.fileName(), QSettings.Format.IniFormat))
    table2 = again.table
    assert table2.columnWidth(m.OS) == 300
    assert table2.isColumnHidden(m.MOBILITY) and not table2.isColumnHidden(m.SIZE) and table2.columnWidth(m.SIZE) > 0
    assert table2.horizontalHeader().sortIndicatorSection() == m.LAST_HEARTBEAT
    assert table2.horizontalHeader().sortIndicatorOrder() == Qt.SortOrder.DescendingOrder
    assert again.table.proxy.sortColumn() == m.LAST_HEARTBEAT

    reset = next(a for a in table2.column_menu().actions() if a.objectName() == "reset_columns")
    reset.trigger()
    assert table2.columnWidth(m.OS) == start_os and not table2.isColumnHidden(m.MOBILITY)
    assert table2.horizontalHeader().sortIndicatorSection() == m.NAME
    assert settings.value("servers/column_widths") is None or \
        QSettings(settings.fileName(), QSettings.Format.IniFormat).value("servers/column_widths") is None


def test_a_table_without_remembered_columns_behaves_as_before(qtbot: QtBot) -> None:
    """A RecordTable that remembers no columns keeps its last column stretched, shows every row and has no header
    menu (the Events and Agents pages)."""
    model = ServersModel()
    model.set_rows(MIXED)
    table = RecordTable(model, sort_role=Qt.ItemDataRole.UserRole, sort_column=0, order=Qt.SortOrder.AscendingOrder,
                        object_name="t")
    qtbot.addWidget(table)
    assert table.horizontalHeader().stretchLastSection()
    assert table.horizontalHeader().contextMenuPolicy() == Qt.ContextMenuPolicy.DefaultContextMenu
    assert table.proxy.rowCount() == 6 and table.columns is None
    assert repr(table.proxy) == "<RecordProxy shown=6/6 filtered=False>"
    assert Columns(keys=("a",)).stretch is None


# --- a thousand servers, live -------------------------------------------------------------------------
def test_a_thousand_servers_update_without_resetting_the_view_or_the_selection(qtbot: QtBot,
                                                                              settings: QSettings) -> None:
    """A thousand servers updated all at once (sorted by heartbeat, filtered by health) never reset the model or
    the view: the selection and the scroll position stay, servers whose health changed enter or leave the filter,
    the count follows; a new snapshot of the same servers (the console attaching again) keeps them too."""
    servers = [protected(f"srv-{i:04d}", health=Health.WARNING if i % 4 == 0 else Health.HEALTHY,
                         last_heartbeat=NOW - 1000 + i) for i in range(1000)]
    page, bridge = make_page(qtbot, settings, servers)
    page.resize(1100, 500)
    page.show()
    table = page.table
    table.sortByColumn(ServersModel.LAST_HEARTBEAT, Qt.SortOrder.AscendingOrder)  # the newest first
    page.show_filter("warning")
    assert page.count.text() == "250 of 1000 servers"
    select(page, "srv-0100", "srv-0500", "srv-0900")
    table.verticalScrollBar().setValue(40)
    resets: list[str] = []
    for model, name in ((page.model, "model"), (table.proxy, "proxy")):
        model.modelAboutToBeReset.connect(lambda name=name: resets.append(name))

    for round_ in range(2):
        for i, s in enumerate(servers):
            health = s.health
            if i == 4:
                health = Health.HEALTHY  # leaves the filter
            if i == 5:
                health = Health.WARNING  # enters it
            bridge.server_updated.emit(dataclasses.replace(s, health=health,
                                                           last_heartbeat=NOW + round_ * 1000 + (1000 - i)))
        page.model.refresh_ages()
    assert resets == []
    assert [s.name for s in page.selected_servers()] == ["srv-0100", "srv-0500", "srv-0900"]  # newest first now
    assert table.verticalScrollBar().value() == 40
    assert page.count.text() == "250 of 1000 servers"
    assert "srv-0004" not in shown(page) and "srv-0005" in shown(page)
    assert shown(page)[0] == "srv-0000"  # now the most recent heartbeat

    bridge.servers_reset.emit([dataclasses.replace(s, last_heartbeat=NOW + 5000) for s in servers])
    assert resets == []
    assert sorted(s.name for s in page.selected_servers()) == ["srv-0100", "srv-0500", "srv-0900"]


def test_short_ages_fit_a_narrow_column() -> None:
    """Heartbeats read as seconds and minutes ago, then hours ago for two days, then the date."""
    assert short_age_text(NOW - 12, NOW) == "12 s ago"
    assert short_age_text(NOW - 600, NOW) == "10 min ago"
    assert short_age_text(NOW - 3 * 3600, NOW) == "3.0 h ago"
    assert short_age_text(NOW - 3 * 86400, NOW) == time.strftime("%Y-%m-%d", time.localtime(NOW - 3 * 86400))
    assert short_age_text(None, NOW) == "never"


def test_the_rpo_ages_while_nothing_arrives_and_is_shown_against_the_threshold(qtbot: QtBot) -> None:
    """The RPO is computed from the newest data's time at each repaint (it grows while a source is silent), turns
    amber above the policy's threshold, and its tooltip says what it and the last point mean; a resync shows its
    percentage."""
    from app.models.servers import over_threshold, rpo_tooltip

    now = time.time()
    s = protected("db-01", newest_data_at=now - 90, rpo_seconds=5.0, rpo_threshold=60.0,
                  last_recovery_point=now - 100)
    model = ServersModel()
    model.set_rows([s])
    index = model.index(0, ServersModel.RPO)
    assert model.data(index) == "1 min"  # 90 s, not the 5 s the engine computed when it sent the status
    assert over_threshold(s, now) and model.data(index, Qt.ItemDataRole.ForegroundRole) is not None
    assert not over_threshold(s, now - 60)
    tip = rpo_tooltip(s, now)
    assert "newest data" in tip and "threshold is 60 s: above it" in tip and "Newest recovery point" in tip
    old = dataclasses.replace(s, newest_data_at=None)  # an engine before admin 1.3: its number, as sent
    assert old.rpo_at(now) == 5.0
    resync = dataclasses.replace(s, state=ServerState.RESYNCING, disks=(
        DiskStatus("/dev/sda", 100, bytes_done=25, bytes_total=100, phase="resync"),))
    model.set_rows([resync])
    assert model.data(model.index(0, ServersModel.PROGRESS)) == "Resync 25%"
