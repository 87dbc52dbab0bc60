"""The console in the tray: which changes become desktop notifications, the tray icon's clicks, the close
button hiding the window, and Quit asking about the engine."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest
from PySide6.QtCore import QSettings
from PySide6.QtWidgets import QApplication, QMessageBox, QSystemTrayIcon
from pytestqt.qtbot import QtBot

from app.bridge import EngineError, EngineStatus, Health
from app.views.main_window import MainWindow, icon
from app.views.tray import Alert, AlertWatcher, ConsoleTray
from engine.records import AgentStatus
from tests.app.test_agents_page import agent, updates
from tests.app.test_bridge import server
from tests.app.test_licence_banner import FakeBridge
from tests.appliance import until


def engine(**states: str) -> EngineStatus:
    agents = tuple(AgentStatus(name=n, version="0.1.0", state=s, pid=1, restarts=0)  # type: ignore[arg-type]
                   for n, s in states.items())
    return EngineStatus(pid=7, version="0.1.0", started_at=0.0, data_dir="/d", agents=agents)


@pytest.fixture
def watched(qtbot: QtBot, tmp_path: Path) -> tuple[FakeBridge, list[Alert]]:
    bridge = FakeBridge(tmp_path)
    watcher = AlertWatcher(bridge)  # type: ignore[arg-type]
    alerts: list[Alert] = []
    watcher.alert.connect(alerts.append)
    bridge.watcher = watcher  # type: ignore[attr-defined]  # kept alive with the bridge
    return bridge, alerts


def test_a_server_turning_critical_alerts_once_and_one_critical_since_attach_does_not(
        watched: tuple[FakeBridge, list[Alert]]) -> None:
    """A server going from healthy to critical is one critical alert naming it and why, opening the Servers
    page; staying critical is no news, and one already critical when the console attached is on the page."""
    bridge, alerts = watched
    bridge.servers_reset.emit([server("web-01"), server("db-01", health=Health.CRITICAL)])
    bridge.server_updated.emit(server("db-01", health=Health.CRITICAL))
    assert alerts == []
    bridge.server_updated.emit(server("web-01", health=Health.CRITICAL, health_detail="No heartbeat for 3 min."))
    bridge.server_updated.emit(server("web-01", health=Health.CRITICAL, health_detail="No heartbeat for 4 min."))
    assert alerts == [Alert("Godwit: web-01 is critical", "No heartbeat for 3 min.", True, "servers")]


def test_a_lost_agent_and_a_failed_update_alert_on_the_change_only(watched: tuple[FakeBridge, list[Alert]]) -> None:
    """An agent that stops running, and an agent update that fails, alert once each at the change (not what
    the first status after attaching already said)."""
    bridge, alerts = watched
    bridge.engine_changed.emit(engine(**{"process-server": "restarting", "log-processor": "running"}))
    bridge.updates_changed.emit(updates(agent("log-processor", "update-failed", reason="old news")))
    assert alerts == []
    bridge.engine_changed.emit(engine(**{"process-server": "running", "log-processor": "restarting"}))
    bridge.engine_changed.emit(engine(**{"process-server": "running", "log-processor": "restarting"}))
    bridge.updates_changed.emit(updates(agent("log-processor", "update-failed", reason="old news"),
                                        agent("process-server", "update-failed", reason="it exited with code 3")))
    assert [(a.title, a.page) for a in alerts] == [("Godwit: appliance agent log-processor stopped", "events"),
                                                   ("Godwit: Process server was not updated", "agents")]
    assert alerts[1].text == "it exited with code 3" and not alerts[1].critical


def test_the_engine_stopping_alerts_only_after_the_console_was_attached(
        watched: tuple[FakeBridge, list[Alert]]) -> None:
    """No engine at the console's start is the banner's business; an engine that stops under it is an alert."""
    bridge, alerts = watched
    bridge.connection_changed.emit("stopped", "The engine is not running.")
    assert alerts == []
    bridge.connection_changed.emit("attached", "Attached.")
    bridge.connection_changed.emit("stopped", "The engine is not running.")
    assert [a.title for a in alerts] == ["Godwit: the engine stopped"]


def test_the_tray_shows_alerts_and_a_click_opens_their_page(qtbot: QtBot) -> None:
    """With a tray, each alert is shown and clicking the notification opens its page; the icon opens the window;
    without a tray nothing is shown and the alert is said to be skipped."""
    opened: list[str] = []
    tray = ConsoleTray(icon("godwit"), opened.append, available=lambda: True)
    assert tray.icon is not None and tray.icon.contextMenu() is not None
    assert tray.notify(Alert("Godwit: web-01 is critical", "why", True, "servers"))
    assert tray.notify(Alert("Godwit: Process server was not updated", "why", False, "agents"))
    tray.icon.messageClicked.emit()
    tray.icon.activated.emit(QSystemTrayIcon.ActivationReason.Trigger)
    assert opened == ["agents", ""] and len(tray.shown) == 2
    bare = ConsoleTray(icon("godwit"), opened.append, available=lambda: False)
    assert not bare.notify(Alert("t", "x", True, "servers")) and bare.icon is None and bare.shown == []


class Bridge(FakeBridge):
    """The fake bridge with the engine commands of the main window."""

    async def start_engine(self) -> None:
        await self._answer("start_engine", None)

    async def stop_engine(self) -> None:
        await self._answer("stop_engine", None)


@pytest.fixture
def window(qtbot: QtBot, tmp_path: Path, qapp: QApplication) -> Any:
    QSettings().setValue("main_window/told_tray", True)
    bridge = Bridge(tmp_path)
    win = MainWindow(bridge, tray_available=lambda: True, offer_setup=False)  # type: ignore[arg-type]
    qtbot.addWidget(win)
    win.show()
    qapp.setQuitOnLastWindowClosed(False)
    yield win
    win.quitting = True
    qapp.setQuitOnLastWindowClosed(True)


def test_close_hides_to_the_tray_and_quit_asks_about_the_engine(window: MainWindow, qtbot: QtBot) -> None:
    """The close button hides the window (the console goes on in the tray); Quit asks, and Quit console ends the
    console without stopping the engine."""
    quits: list[bool] = []
    window.quit_requested.connect(lambda: quits.append(True))
    window.close()
    assert window.isHidden() and quits == []
    window.on_quit()
    box = window.dialog
    assert isinstance(box, QMessageBox)
    assert {b.text() for b in box.buttons()} >= {"Quit console", "Stop engine and quit"}
    next(b for b in box.buttons() if b.text() == "Quit console").click()
    assert quits == [True] and window.bridge.calls == []  # type: ignore[attr-defined]


@pytest.mark.asyncio
async def test_stop_engine_and_quit_stops_it_first_and_a_refusal_keeps_the_console(window: MainWindow) -> None:
    """Stop engine and quit asks the bridge to stop the engine, then quits; when the engine does not stop, the
    console says why and stays."""
    quits: list[bool] = []
    window.quit_requested.connect(lambda: quits.append(True))
    bridge = window.bridge
    bridge.answers["stop_engine"] = EngineError("The engine (pid 7) did not stop within 30 s.")  # type: ignore
    warned: list[str] = []
    QMessageBox.warning = lambda *a: warned.append(a[2])  # type: ignore[assignment,method-assign]
    try:
        window.on_quit()
        next(b for b in window.dialog.buttons() if b.text() == "Stop engine and quit").click()  # type: ignore
        await until(lambda: warned, what="the refusal")
        assert quits == [] and "did not stop" in warned[0]
        bridge.answers["stop_engine"] = None  # type: ignore[attr-defined]
        window.on_quit()
        next(b for b in window.dialog.buttons() if b.text() == "Stop engine and quit").click()  # type: ignore
        await until(lambda: quits, what="the quit")
        assert [c[0] for c in bridge.calls] == ["stop_engine", "stop_engine"]  # type: ignore[attr-defined]
    finally:
        del QMessageBox.warning


@pytest.mark.asyncio
async def test_the_engine_banner_offers_start_engine_and_greys_the_pages(window: MainWindow) -> None:
    """With no engine the banner says so with its reason and the pages wait; Start engine asks the bridge, and a
    start that fails shows the engine's reason in the banner."""
    bridge = window.bridge
    bridge.connection_changed.emit("stopped", "The engine is not running: nothing replicates until it starts again.")
    assert window.engine_banner.isVisible() and not window.pages.isEnabled()
    bridge.answers["start_engine"] = EngineError("The management port 443 is in use by another program.")  # type: ignore
    window.engine_banner.start_button.click()
    await until(lambda: "443" in window.engine_banner.message.text(), what="the failure in the banner")
    assert window.engine_banner.start_button.isEnabled()
    bridge.connection_changed.emit("attached", "Attached to the engine (pid 7).")
    await asyncio.sleep(0)
    assert window.engine_banner.isHidden() and window.pages.isEnabled()


def test_new_errors_are_counted_on_the_events_entry_until_the_admin_looks(window: MainWindow) -> None:
    """A new error while another page shows counts on the Events entry of the sidebar; opening Events clears it."""
    events_item = window.nav.item(window.PAGES.index("events"))
    window.events_page.critical_added.emit(object())
    window.events_page.critical_added.emit(object())
    assert events_item.text().endswith("● 2") and "2 new errors" in events_item.toolTip()
    window.show_page("events")
    assert events_item.text() == "Events" and window.unseen_errors == 0
    window.events_page.critical_added.emit(object())  # seen as it arrives
    assert window.unseen_errors == 0


def test_the_status_bar_counts_an_agents_restarts_in_the_last_hour(window: MainWindow) -> None:
    """An agent that restarted lately says how often in the last hour in the status bar; one that did not, nothing."""
    bridge = window.bridge
    bridge.state = "attached"  # type: ignore[misc]
    agents = (AgentStatus(name="log-processor", version="0.1.0", state="running", pid=1, restarts=9,  # type: ignore[arg-type]
                          restarts_last_hour=3),
              AgentStatus(name="process-server", version="0.1.0", state="running", pid=2, restarts=0))  # type: ignore[arg-type]
    window.on_bridge_engine_changed(EngineStatus(pid=7, version="0.1.0", started_at=0.0, data_dir="/d", agents=agents))
    text = window.engine_label.text()
    assert "log-processor running (3 restarts in the last hour)" in text
    assert "process-server running," not in text and text.endswith("data in /d") and "process-server running" in text
