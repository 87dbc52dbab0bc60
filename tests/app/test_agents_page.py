"""The Agents page: each agent's versions and update status with its button, Update all, Check now, the mode and its
install time, the feed, rollback, and the mismatch banner — over a real bridge whose client is scripted."""

from __future__ import annotations

import asyncio
import dataclasses
import time
from pathlib import Path
from typing import Any

import pytest
from PySide6.QtCore import QSettings, Qt
from PySide6.QtWidgets import QApplication, QDialogButtonBox, QInputDialog, QMessageBox, QPushButton, QWidget
from pytestqt.modeltest import ModelTester
from pytestqt.qtbot import QtBot

from app.bridge import AgentUpdate, EngineBridge, EngineStatus, SetupInfo, UpdatesStatus
from app.models.agents import ActionRole, AgentsModel, ProgressRole, SortRole, status_text
from app.views.agents_page import AgentsPage, checked_text, mode_text
from app.views.main_window import LicenceNotifier, MainWindow
from app.widgets.mismatch_banner import MismatchBanner, mismatch_text
from engine.errors import FeedUnreachable, UpdateError  # test data only: what the engine raises
from engine.links.admin import Hello, UpdatesChanged
from tests.app.scripted import ScriptedClient
from tests.appliance import until

ENGINE = EngineStatus(pid=4242, version="0.1.0", started_at=0.0, data_dir="/d")
SETUP = SetupInfo(appliance_id="a", passphrase="p", ca_fingerprint="f", management_port=1, data_port=2,
                  secret_store="file", host="h", mobility_command="godwit mobility run")
TITLES = {"log-processor": "Log processor", "process-server": "Process server",
          "replication-manager": "Replication manager", "mobility-package": "Mobility package"}
FEED = "https://updates.godwit.example/feed"
NOW = time.time()


def agent(name: str, status: str = "up-to-date", installed: str = "0.1.0", available: str | None = None,
          previous: str | None = None, **kw: Any) -> AgentUpdate:
    return AgentUpdate(name=name, title=TITLES[name], installed_version=installed, available_version=available,
                       previous_version=previous, status=status, **kw)  # type: ignore[arg-type]


def updates(*agents: AgentUpdate, **kw: Any) -> UpdatesStatus:
    base: dict[str, Any] = dict(mode="manual", window="00:00", feed_url=FEED, last_check_at=NOW - 300,
                                last_success_at=NOW - 300)
    return UpdatesStatus(agents=agents or UP_TO_DATE, **{**base, **kw})


UP_TO_DATE = tuple(agent(n) for n in TITLES)
#: One agent in each status (and the mobility package up to date).
EVERY_STATUS = (
    agent("log-processor", "update-failed", available="0.2.0",
          reason="the health check did not answer within 60 s; 0.1.0 runs again"),
    agent("process-server", "update-available", available="0.2.0"),
    agent("replication-manager", "cannot-update",
          reason="0.2.0 needs Log processor 0.2.0 first. Update all installs them in order."),
    agent("mobility-package", "updating", available="0.2.0", stage="downloading", progress=0.45),
)
PENDING = updates(agent("log-processor", "update-available", available="0.2.0"),
                  agent("process-server", "update-available", available="0.2.0"),
                  agent("replication-manager"), agent("mobility-package"))


def _cells(model: AgentsModel) -> list[list[str]]:
    return [[model.data(model.index(r, c)) for c in range(model.columnCount())] for r in range(model.rowCount())]


def _buttons(page: AgentsPage) -> dict[str, str]:
    """The button of each row that has one: agent name -> text (the buttons really sit in the table's cells)."""
    out = {}
    for row in range(page.model.rowCount()):
        cell = page.table.proxy.mapFromSource(page.model.index(row, AgentsModel.ACTION))
        holder = page.table.indexWidget(cell)
        button = page.row_buttons.get(page.model.agent(row).name)
        if button is not None:
            assert holder is not None and button.parent() is holder
            out[page.model.agent(row).name] = button.text()
    return out


def _page(qtbot: QtBot, tmp_path: Path) -> tuple[AgentsPage, EngineBridge]:
    bridge = EngineBridge(tmp_path, start_engine=False)
    page = AgentsPage(bridge)
    qtbot.addWidget(page)
    return page, bridge


def _error_box(widget: QWidget) -> QMessageBox | None:
    boxes = [b for b in widget.findChildren(QMessageBox) if b.isVisible() and b.objectName() != "install_when"]
    return boxes[-1] if boxes else None


class Attached:
    """A page (or the main window) over a real bridge attached to a scripted client, with a Hello carrying
    ``status``; the client's stream stays open for pushes."""

    def __init__(self, tmp_path: Path, status: UpdatesStatus, *, window: bool = False) -> None:
        self.bridge = EngineBridge(tmp_path, start_engine=False)
        self.client = ScriptedClient([Hello(engine=ENGINE, setup=SETUP, servers=(), last_event_id=0,
                                            updates=status)], keep_open=True)
        self.bridge.client = self.client  # type: ignore[assignment]
        self.window: MainWindow | None = None
        if window:
            settings = QSettings(str(tmp_path / "s.ini"), QSettings.Format.IniFormat)
            self.window = MainWindow(self.bridge, offer_setup=False,
                                     notifier=LicenceNotifier(settings, tray_available=lambda: False,
                                                              notify=lambda *_: None))
            self.page = self.window.agents_page
            self.window.show()
        else:
            self.page = AgentsPage(self.bridge)
            self.page.show()

    async def __aenter__(self) -> Attached:
        self.bridge.start()
        await until(lambda: self.page.updates is not None, what="the Hello's updates")
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.bridge.aclose()
        (self.window or self.page).close()

    def answer(self, name: str, value: Any) -> None:
        self.client.answers[name] = value


async def _modal(kind: type[QWidget]) -> Any:
    await until(lambda: isinstance(QApplication.activeModalWidget(), kind), what=f"a {kind.__name__}")
    return QApplication.activeModalWidget()


# --- the model -------------------------------------------------------------------------------------
def test_model_keeps_the_model_contract(qtmodeltester: ModelTester) -> None:
    """Empty, filled, updated in place and replaced, the model keeps Qt's contract; rows are found by name."""
    model = AgentsModel()
    qtmodeltester.check(model)
    model.set_agents(EVERY_STATUS)
    qtmodeltester.check(model)
    model.set_agents(UP_TO_DATE)  # the same agents: cells change in place
    qtmodeltester.check(model)
    model.set_agents(UP_TO_DATE[:2])  # another list: a reset
    qtmodeltester.check(model)
    assert model.row_of("process-server") == 1 and model.row_of("mobility-package") is None
    model.update_agent(agent("mobility-package", "update-available"))  # gone: nothing happens
    assert repr(model) == ("<AgentsModel rows=[('log-processor', '0.1.0', 'up-to-date'), "
                           "('process-server', '0.1.0', 'up-to-date')]>")


def test_sort_values_order_versions_as_numbers() -> None:
    """SortRole gives text that sorts versions by their numbers (0.10.0 after 0.9.1), and statuses by need."""
    model = AgentsModel()
    model.set_rows([agent("log-processor", installed="0.10.0"), agent("process-server", installed="0.9.1"),
                    agent("replication-manager", "update-failed", installed="0.9.1")])
    keys = [model.data(model.index(r, AgentsModel.INSTALLED), SortRole) for r in range(3)]
    assert keys[1] < keys[0] and keys[1] == keys[2]
    status = [model.data(model.index(r, AgentsModel.STATUS), SortRole) for r in range(3)]
    assert status[2] < status[0]  # a failed install before an agent that is up to date


def test_progress_changes_only_the_status_cell(qtbot: QtBot) -> None:
    """An install's progress and stage repaint the status cell of that row only; an unchanged status nothing."""
    model = AgentsModel()
    model.set_agents(EVERY_STATUS)
    seen: list[tuple[int, int, int, int]] = []
    model.dataChanged.connect(lambda a, b, *_: seen.append((a.row(), a.column(), b.row(), b.column())))
    row = model.row_of("mobility-package")
    assert row == 3
    moved = dataclasses.replace(EVERY_STATUS[3], progress=0.6)
    model.set_agents((*EVERY_STATUS[:3], moved))
    assert seen == [(3, AgentsModel.STATUS, 3, AgentsModel.STATUS)]
    assert model.data(model.index(3, AgentsModel.STATUS)) == "Updating… downloading 60 %"
    assert model.data(model.index(3, AgentsModel.STATUS), ProgressRole) == 600
    model.set_agents((*EVERY_STATUS[:3], moved))
    assert len(seen) == 1  # nothing changed: nothing repainted
    model.set_agents((*EVERY_STATUS[:3], dataclasses.replace(moved, stage="verifying", progress=None)))
    assert seen[-1] == (3, AgentsModel.STATUS, 3, AgentsModel.STATUS)
    assert model.data(model.index(3, AgentsModel.STATUS), ProgressRole) is None


def test_each_status_reads_as_the_admin_reads_it() -> None:
    """Each status reads as one phrase: up to date, available, updating with its stage and percent, failed or
    unable to update with the reason; a status this console does not know shows as the engine names it."""
    assert status_text(agent("log-processor")) == "Up to date"
    assert status_text(agent("log-processor", "update-available", available="0.2.0")) == "Update available"
    for stage, progress, text in (("downloading", 0.45, "Updating… downloading 45 %"),
                                  ("downloading", None, "Updating… downloading"),
                                  ("verifying", None, "Updating… verifying"),
                                  ("installing", None, "Updating… installing"),
                                  ("health-check", None, "Updating… health check"),
                                  (None, None, "Updating…")):
        assert status_text(agent("log-processor", "updating", stage=stage, progress=progress)) == text
    assert status_text(EVERY_STATUS[0]) == ("Update failed: the health check did not answer within 60 s; 0.1.0 "
                                            "runs again")
    assert status_text(EVERY_STATUS[2]).startswith("Cannot update: 0.2.0 needs Log processor 0.2.0 first.")
    assert status_text(agent("log-processor", "rebooting")) == "rebooting"  # a newer engine's status, as named


def test_times_and_mode_sentences() -> None:
    """Last checked gives the age of the last check (and of the last success after a failure, or never); the mode
    line says manual, or auto with its daily time and, when updates wait, when they install."""
    now = time.mktime((2031, 5, 6, 12, 0, 0, 0, 0, -1))
    ok = updates(last_check_at=now - 300, last_success_at=now - 300)
    assert checked_text(ok, now) == "Last checked: 5 min ago"
    failed = updates(last_check_at=now - 60, last_success_at=now - 600, check_error="The feed is unreachable.")
    assert checked_text(failed, now) == "Last checked: 60 s ago (last successful: 10 min ago)"
    assert checked_text(updates(last_check_at=None, last_success_at=None), now) == "Last checked: never"
    assert mode_text(updates(mode="manual"), now) == "Updates install only when you press Update or Update all."
    assert mode_text(updates(mode="auto", window="02:30"), now) == (
        "Updates install by themselves every day at 02:30 (the appliance's local time); replication pauses only "
        "for a reconnect.")
    pending = updates(mode="auto", window="14:00", next_install_at=now + 7200)
    assert mode_text(pending, now).endswith("The pending updates install at 14:00 (in 2.0 h).")


# --- the page --------------------------------------------------------------------------------------
def test_each_status_renders_its_text_and_button(qtbot: QtBot, tmp_path: Path) -> None:
    """Title, versions (— when none), status text and the action: Update when outdated, Retry after a failed
    install, nothing otherwise; Update all waits while an install runs."""
    page, bridge = _page(qtbot, tmp_path)
    assert not page.isEnabled()  # nothing known yet
    bridge.updates_changed.emit(updates(*EVERY_STATUS[:3], agent("mobility-package")))
    assert page.isEnabled()
    assert _cells(page.model) == [
        ["Log processor", "0.1.0", "0.2.0",
         "Update failed: the health check did not answer within 60 s; 0.1.0 runs again", ""],
        ["Process server", "0.1.0", "0.2.0", "Update available", ""],
        ["Replication manager", "0.1.0", "—",
         "Cannot update: 0.2.0 needs Log processor 0.2.0 first. Update all installs them in order.", ""],
        ["Mobility package", "0.1.0", "—", "Up to date", ""],
    ]
    assert [page.model.data(page.model.index(r, AgentsModel.ACTION), ActionRole) for r in range(4)] == \
        ["retry", "update", None, None]
    assert _buttons(page) == {"log-processor": "Retry", "process-server": "Update"}
    assert all(b.isEnabled() for b in page.row_buttons.values())
    assert page.update_all_button.isEnabled()
    colour = page.model.data(page.model.index(0, AgentsModel.STATUS), 9)  # ForegroundRole
    assert colour.name() == "#c62828"

    bridge.updates_changed.emit(updates(*EVERY_STATUS))  # the mobility package installs now
    assert _buttons(page) == {"log-processor": "Retry", "process-server": "Update"}
    assert page.model.data(page.model.index(3, AgentsModel.STATUS)) == "Updating… downloading 45 %"
    assert not page.update_all_button.isEnabled()  # one install at a time
    assert page.advice.text() == "Installing Mobility package. Update and Update all wait until it ends."
    assert not any(b.isEnabled() for b in page.row_buttons.values())

    bridge.updates_changed.emit(updates())
    assert _buttons(page) == {} and not page.update_all_button.isEnabled()
    assert page.advice.text().startswith("Updating all agents together is recommended")
    assert [page.model.data(page.model.index(r, AgentsModel.STATUS)) for r in range(4)] == ["Up to date"] * 4
    assert repr(page).startswith("<AgentsPage mode=manual agents=[('log-processor', 'up-to-date')")


def test_sorting_keeps_each_button_on_its_row(qtbot: QtBot, tmp_path: Path) -> None:
    """Sorted by status, each button stays in its agent's row; clearing the sort shows the engine's order again."""
    page, bridge = _page(qtbot, tmp_path)
    page.show()
    bridge.updates_changed.emit(updates(*EVERY_STATUS[:3], agent("mobility-package")))
    page.table.sortByColumn(AgentsModel.STATUS, Qt.SortOrder.AscendingOrder)
    view = page.table.proxy

    def rows() -> list[tuple[str, str | None]]:
        out = []
        for r in range(view.rowCount()):
            holder = page.table.indexWidget(view.index(r, AgentsModel.ACTION))
            button = holder.findChild(QPushButton) if holder is not None else None
            out.append((view.index(r, AgentsModel.AGENT).data(), button.text() if button is not None else None))
        return out

    assert rows() == [("Log processor", "Retry"), ("Replication manager", None), ("Process server", "Update"),
                      ("Mobility package", None)]
    page.table.horizontalHeader().setSortIndicator(-1, Qt.SortOrder.AscendingOrder)
    assert rows() == [("Log processor", "Retry"), ("Process server", "Update"), ("Replication manager", None),
                      ("Mobility package", None)]


def test_check_error_and_feed_are_shown(qtbot: QtBot, tmp_path: Path) -> None:
    """A failed check shows its sentence in red with the last success (never), the feed address and manual mode;
    the next status hides the error, says no feed is set and shows auto mode with its time."""
    page, bridge = _page(qtbot, tmp_path)
    page.show()
    error = "The update feed did not answer (connection refused). Check the appliance's network or the feed address."
    bridge.updates_changed.emit(updates(check_error=error, last_check_at=time.time() - 150, last_success_at=None))
    assert page.check_error.isVisible() and page.check_error.text() == error
    assert page.check_error.palette().color(page.check_error.foregroundRole()).name() == "#c62828"
    assert page.checked.text() == "Last checked: 2 min ago (last successful: never)"  # holds for half a minute
    assert page.feed.text() == FEED
    assert page.manual_radio.isChecked() and not page.window_edit.isEnabled()
    assert not page.rollback_hint.isVisible()  # no agent has a previous version
    bridge.updates_changed.emit(updates(mode="auto", window="03:15", feed_url=None))
    assert not page.check_error.isVisible()
    assert page.feed.text() == "No update feed is set."
    assert page.auto_radio.isChecked() and page.window_edit.isEnabled()
    assert page.window_edit.time().toString("HH:mm") == "03:15"
    assert "every day at 03:15" in page.mode_line.text()


@pytest.mark.asyncio
@pytest.mark.qt_loop
async def test_update_retry_and_update_all_call_the_engine(qapp: QApplication, tmp_path: Path) -> None:
    """Update installs that one agent, Retry too, Update all every outdated one (names None); the buttons wait
    while the command runs."""
    async with Attached(tmp_path, updates(*EVERY_STATUS[:3], agent("mobility-package"))) as a:
        page, client = a.page, a.client
        started = updates(EVERY_STATUS[0], agent("process-server", "updating", available="0.2.0",
                                                 stage="downloading", progress=0.0), *EVERY_STATUS[2:3],
                          agent("mobility-package"))
        a.answer("update_agents", started)
        client.gate = asyncio.Event()
        page.row_buttons["process-server"].click()
        await until(lambda: client.calls, what="the update")
        assert client.calls == [("update_agents", ["process-server"])]
        assert not page.row_buttons["process-server"].isEnabled() and not page.update_all_button.isEnabled()
        assert page.busy == {"install"}
        client.gate.set()
        await until(lambda: not page.busy, what="the update to start")
        assert "process-server" not in page.row_buttons  # updating: no button
        assert page.model.data(page.model.index(1, AgentsModel.STATUS)) == "Updating… downloading 0 %"

        # The stream carries the install's progress, then its end.
        client.push(UpdatesChanged(dataclasses.replace(started, agents=(
            started.agents[0], dataclasses.replace(started.agents[1], progress=0.5), *started.agents[2:]))))
        await until(lambda: page.model.data(page.model.index(1, AgentsModel.STATUS)) == "Updating… downloading 50 %",
                    what="the progress")
        client.push(UpdatesChanged(updates(*EVERY_STATUS[:1], agent("process-server", installed="0.2.0",
                                                                   previous="0.1.0"),
                                           *EVERY_STATUS[2:3], agent("mobility-package"))))
        await until(lambda: page.model.data(page.model.index(1, AgentsModel.STATUS)) == "Up to date",
                    what="the end of the install")
        assert page.row_buttons["log-processor"].isEnabled()

        page.row_buttons["log-processor"].click()  # Retry
        await until(lambda: len(client.calls) == 2 and not page.busy, what="the retry")
        assert client.calls[-1] == ("update_agents", ["log-processor"])

        a.answer("update_agents", updates())
        a.bridge.updates_changed.emit(PENDING)
        page.update_all_button.click()
        await until(lambda: len(client.calls) == 3 and not page.busy, what="update all")
        assert client.calls[-1] == ("update_agents", None)
        assert a.bridge.updates == updates()


@pytest.mark.asyncio
@pytest.mark.qt_loop
async def test_check_now(qapp: QApplication, tmp_path: Path) -> None:
    """Check now asks the feed; the line says so meanwhile, then shows the result (an error in red)."""
    async with Attached(tmp_path, updates(last_check_at=NOW - 7200, last_success_at=NOW - 7200)) as a:
        page, client = a.page, a.client
        error = "The update feed did not answer within 30 s. Check the appliance's network, or change the feed."
        a.answer("check_updates", updates(last_check_at=time.time(), last_success_at=NOW - 7200, check_error=error))
        client.gate = asyncio.Event()
        page.check_button.click()
        await until(lambda: client.calls == [("check_updates", None)], what="the check")
        assert page.checked.text() == "Checking the update feed…" and not page.check_button.isEnabled()
        client.gate.set()
        await until(lambda: page.check_button.isEnabled(), what="the check to end")
        assert page.checked.text().startswith("Last checked: just now (last successful: ")
        assert page.check_error.text() == error and page.check_error.isVisible()


@pytest.mark.asyncio
@pytest.mark.qt_loop
async def test_switching_to_auto_with_pending_updates_asks_when(qapp: QApplication, tmp_path: Path) -> None:
    """To auto with updates pending: Install now sends now=True, At <window> now=False, Cancel nothing (the
    radio buttons show manual again). Back to manual asks nothing."""
    async with Attached(tmp_path, dataclasses.replace(PENDING, window="02:00")) as a:
        page, client = a.page, a.client
        a.answer("set_update_mode", dataclasses.replace(PENDING, mode="auto", window="02:00"))

        page.auto_radio.click()
        box = await _modal(QMessageBox)
        assert box.text() == ("2 agent updates are waiting. Install now, or at the next install time (02:00, the "
                              "appliance's local time)?")
        assert sorted(b.text() for b in box.buttons()) == ["At 02:00", "Cancel", "Install now"]
        next(b for b in box.buttons() if b.text() == "Cancel").click()
        await until(lambda: page.manual_radio.isChecked(), what="manual again")
        assert client.calls == []

        page.auto_radio.click()
        box = await _modal(QMessageBox)
        next(b for b in box.buttons() if b.text() == "Install now").click()
        await until(lambda: client.calls and not page.busy, what="the switch")
        assert client.calls == [("set_update_mode", {"mode": "auto", "window": None, "now": True})]
        assert page.auto_radio.isChecked() and page.window_edit.isEnabled()

        a.answer("set_update_mode", dataclasses.replace(PENDING, window="02:00"))
        page.manual_radio.click()
        await until(lambda: len(client.calls) == 2 and not page.busy, what="back to manual")
        assert client.calls[-1] == ("set_update_mode", {"mode": "manual", "window": None, "now": False})
        assert page.manual_radio.isChecked()

        page.auto_radio.click()
        box = await _modal(QMessageBox)
        next(b for b in box.buttons() if b.text() == "At 02:00").click()
        await until(lambda: len(client.calls) == 3 and not page.busy, what="the switch at the window")
        assert client.calls[-1] == ("set_update_mode", {"mode": "auto", "window": None, "now": False})


@pytest.mark.asyncio
@pytest.mark.qt_loop
async def test_switching_to_auto_with_nothing_pending_asks_nothing(qapp: QApplication, tmp_path: Path) -> None:
    """Switching to auto with no update waiting asks no question and sends the mode without installing now."""
    async with Attached(tmp_path, updates()) as a:
        a.answer("set_update_mode", updates(mode="auto"))
        a.page.auto_radio.click()
        await until(lambda: a.client.calls and not a.page.busy, what="the switch")
        assert a.client.calls == [("set_update_mode", {"mode": "auto", "window": None, "now": False})]
        assert QApplication.activeModalWidget() is None


@pytest.mark.asyncio
@pytest.mark.qt_loop
async def test_install_time_change(qapp: QApplication, tmp_path: Path) -> None:
    """A new time in auto mode moves the window (only the window: the mode stays as the engine has it)."""
    async with Attached(tmp_path, updates(mode="auto", window="00:00")) as a:
        page, client = a.page, a.client
        a.answer("set_update_mode", updates(mode="auto", window="02:30"))
        page.window_edit.setTime(page.window_edit.time().fromString("02:30", "HH:mm"))
        page.window_edit.editingFinished.emit()
        await until(lambda: client.calls and not page.busy, what="the new window")
        assert client.calls == [("set_update_mode", {"mode": None, "window": "02:30", "now": False})]
        assert "every day at 02:30" in page.mode_line.text()
        page.window_edit.editingFinished.emit()  # unchanged: nothing sent
        await asyncio.sleep(0.05)
        assert len(client.calls) == 1


@pytest.mark.asyncio
@pytest.mark.qt_loop
async def test_feed_change(qapp: QApplication, tmp_path: Path) -> None:
    """Change… asks for the address (OK waits for one) and sends it; Cancel sends nothing."""
    async with Attached(tmp_path, updates()) as a:
        page, client = a.page, a.client
        mirror = "https://mirror.corp.example/godwit"
        a.answer("set_update_feed", updates(feed_url=mirror))
        page.feed_button.click()
        dialog = await _modal(QInputDialog)
        assert dialog.textValue() == FEED
        ok = dialog.findChild(QDialogButtonBox).button(QDialogButtonBox.StandardButton.Ok)
        dialog.setTextValue("  ")
        assert not ok.isEnabled()
        dialog.setTextValue(mirror)
        assert ok.isEnabled()
        ok.click()
        await until(lambda: client.calls and not page.busy, what="the new feed")
        assert client.calls == [("set_update_feed", mirror)] and page.feed.text() == mirror

        page.feed_button.click()
        dialog = await _modal(QInputDialog)
        dialog.reject()
        await until(lambda: not page.tasks, what="the dialog to close")
        assert len(client.calls) == 1


@pytest.mark.asyncio
@pytest.mark.qt_loop
async def test_a_refused_command_shows_the_error_and_frees_the_control(qapp: QApplication, tmp_path: Path) -> None:
    """The engine's refusal appears through the one error function; the control works again; a refused mode
    switch leaves the radio buttons on the engine's mode."""
    async with Attached(tmp_path, PENDING) as a:
        page = a.page
        refusal = ("Process server 0.2.0 needs Log processor 0.2.0, which is not installed. Use Update all: it "
                   "installs them in order.")
        a.answer("update_agents", UpdateError(refusal))
        page.row_buttons["process-server"].click()
        await until(lambda: _error_box(page) is not None, what="the error")
        box = _error_box(page)
        assert box is not None and box.text() == refusal
        box.close()
        await until(lambda: not page.busy, what="the command to end")
        assert page.row_buttons["process-server"].isEnabled() and page.update_all_button.isEnabled()

        a.answer("set_update_feed", FeedUnreachable("https://nowhere.example did not answer. Check the address."))
        page.feed_button.click()
        dialog = await _modal(QInputDialog)
        dialog.setTextValue("https://nowhere.example")
        dialog.accept()
        await until(lambda: _error_box(page) is not None, what="the feed error")
        box = _error_box(page)
        assert box is not None and box.text() == "https://nowhere.example did not answer. Check the address."
        box.close()
        await until(lambda: not page.busy, what="the feed command to end")
        assert page.feed_button.isEnabled() and page.feed.text() == FEED

        a.answer("set_update_mode", UpdateError("The engine refused."))
        page.auto_radio.click()
        box = await _modal(QMessageBox)
        next(b for b in box.buttons() if b.text() == "Install now").click()
        await until(lambda: _error_box(page) is not None, what="the mode error")
        _error_box(page).close()  # type: ignore[union-attr]
        await until(lambda: not page.busy, what="the mode command to end")
        assert page.manual_radio.isChecked() and page.auto_radio.isEnabled()


@pytest.mark.asyncio
@pytest.mark.qt_loop
async def test_roll_back_from_the_context_menu(qapp: QApplication, tmp_path: Path) -> None:
    """A row with a previous version offers Roll back to it, after a confirmation; one without offers nothing."""
    status = updates(agent("log-processor"), agent("process-server", installed="0.2.0", previous="0.1.0"),
                     agent("replication-manager"), agent("mobility-package"))
    async with Attached(tmp_path, status) as a:
        page, client = a.page, a.client
        assert page.row_menu(page.model.agent(0)) is None
        assert page.rollback_hint.isVisible()
        menu = page.row_menu(page.model.agent(1))
        assert menu is not None
        [action] = menu.actions()
        assert action.text() == "Roll back to 0.1.0" and action.isEnabled()
        a.answer("rollback_agent", updates())
        action.trigger()
        box = await _modal(QMessageBox)
        assert box.windowTitle() == "Roll back Process server?" and "from 0.2.0 to 0.1.0" in box.text()
        next(b for b in box.buttons() if b.text() == "Roll back").click()
        await until(lambda: client.calls and not page.busy, what="the rollback")
        assert client.calls == [("rollback_agent", "process-server")]


# --- the mismatch banner ----------------------------------------------------------------------------
MISMATCHED = updates(agent("log-processor", "update-available", available="0.2.0"),
                     agent("process-server", installed="0.2.0", previous="0.1.0"),
                     agent("replication-manager", "update-available", available="0.2.0"),
                     agent("mobility-package", "update-available", available="0.2.0"), mismatched=True)


def test_mismatch_sentence_names_the_odd_ones_out(qtbot: QtBot) -> None:
    """The mismatch sentence names the agents on another version than the rest (on a tie, the newer ones); the
    banner stays hidden while versions match and shows amber, Update all enabled, when they do not."""
    assert mismatch_text(MISMATCHED) == ("Appliance agents run different versions (Process server 0.2.0, others "
                                         "0.1.0). Update all agents together to keep them compatible.")
    half = updates(agent("log-processor", installed="0.2.0"), agent("process-server", installed="0.2.0"),
                   agent("replication-manager"), agent("mobility-package"), mismatched=True)
    assert "(Log processor 0.2.0, Process server 0.2.0, others 0.1.0)" in mismatch_text(half)  # a tie: older
    banner = MismatchBanner()
    qtbot.addWidget(banner)
    banner.show_updates(updates())
    assert banner.isHidden()
    banner.show_updates(MISMATCHED)
    assert not banner.isHidden() and banner.update_all_button.isEnabled()
    assert banner.grab().toImage().pixelColor(4, 4).name() == "#fff3d6"  # amber
    assert repr(banner) == "<MismatchBanner visible=True busy=False>"


@pytest.mark.asyncio
@pytest.mark.qt_loop
async def test_mismatch_banner_in_the_window(qapp: QApplication, tmp_path: Path) -> None:
    """The banner shows while the engine says the versions are mismatched, above every page; its Update all
    updates all agents; Show agents opens the Agents page; it goes once the versions match."""
    async with Attached(tmp_path, updates(), window=True) as a:
        window, client = a.window, a.client
        assert window is not None
        banner = window.mismatch_banner
        assert window.PAGES == ("overview", "servers", "policies", "setup", "ports", "agents", "events")
        assert [window.nav.item(i).text() for i in range(window.nav.count())] == \
            ["Overview", "Servers", "Policies", "Setup", "Ports", "Agents", "Events"]
        assert not banner.isVisible()
        client.push(UpdatesChanged(MISMATCHED))
        await until(lambda: banner.isVisible(), what="the banner")
        assert banner.message.text().startswith("Appliance agents run different versions (Process server 0.2.0")
        assert window.pages.currentWidget() is window.overview_page

        a.answer("update_agents", dataclasses.replace(MISMATCHED, agents=tuple(
            dataclasses.replace(x, status="updating", stage="downloading") if x.status == "update-available" else x
            for x in MISMATCHED.agents)))
        client.gate = asyncio.Event()
        banner.update_all_button.click()
        await until(lambda: client.calls, what="update all")
        assert client.calls == [("update_agents", None)]
        assert not banner.update_all_button.isEnabled() and not window.agents_page.update_all_button.isEnabled()
        client.gate.set()
        await until(lambda: not window.agents_page.busy, what="update all to start")
        assert not banner.update_all_button.isEnabled()  # the engine installs: wait

        banner.show_agents_button.click()
        assert window.pages.currentWidget() is window.agents_page

        client.push(UpdatesChanged(updates(*(agent(n, installed="0.2.0", previous="0.1.0") for n in TITLES))))
        await until(lambda: not banner.isVisible(), what="the banner to go")


# --- the bridge ------------------------------------------------------------------------------------
@pytest.mark.asyncio
@pytest.mark.qt_loop
async def test_bridge_passes_the_updates_on(qapp: QApplication, tmp_path: Path) -> None:
    """The Hello's updates and each UpdatesChanged reach updates_changed and bridge.updates (a Hello without them,
    from an engine before admin 1.2, leaves them unknown); each command passes the engine's answer on at once."""
    bridge = EngineBridge(tmp_path, start_engine=False)
    seen: list[UpdatesStatus] = []
    bridge.updates_changed.connect(seen.append)
    bridge.client = ScriptedClient([Hello(engine=ENGINE, setup=SETUP, servers=(), last_event_id=0)])  # type: ignore[assignment]
    await bridge._follow()
    assert seen == [] and bridge.updates is None
    client = ScriptedClient([Hello(engine=ENGINE, setup=SETUP, servers=(), last_event_id=0, updates=PENDING),
                             UpdatesChanged(MISMATCHED)])
    bridge.client = client  # type: ignore[assignment]
    await bridge._follow()
    assert seen == [PENDING, MISMATCHED] and bridge.updates == MISMATCHED

    calls = {
        "agent_updates": (bridge.refresh_updates(), None),
        "check_updates": (bridge.check_updates(), None),
        "update_agents": (bridge.update_agents(["process-server"]), ["process-server"]),
        "rollback_agent": (bridge.rollback_agent("process-server"), "process-server"),
        "set_update_mode": (bridge.set_update_mode("auto", window="01:00", now=True),
                            {"mode": "auto", "window": "01:00", "now": True}),
        "set_update_feed": (bridge.set_update_feed(FEED), FEED),
    }
    for i, (name, (call, args)) in enumerate(calls.items()):
        answer = updates(window=f"0{i}:00")
        client.answers[name] = answer
        assert await call == answer
        assert client.calls[-1] == (name, args) and seen[-1] == answer and bridge.updates == answer
    await bridge.aclose()
