"""The console in the system tray: desktop notifications for what an admin must not miss, and the console
kept running (and replication watched) while its window is closed.

:class:`AlertWatcher` turns the bridge's signals into alerts, each once per change: a server turning
critical, an appliance agent lost (it crashed, or the engine stopped), an agent update that failed. The
licence thresholds come from :class:`~app.views.main_window.LicenceNotifier`. An alert names the console page
that shows it; clicking the notification opens that page.

:class:`ConsoleTray` is the icon, its menu (Open console, Quit…) and the notifications. Without a system tray
(offscreen, a bare X server) it shows nothing and the window's close button quits as before.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass

from PySide6.QtCore import QObject, Signal
from PySide6.QtGui import QAction, QIcon
from PySide6.QtWidgets import QMenu, QSystemTrayIcon

from app.bridge import EngineBridge, EngineStatus, ServerStatus, UpdatesStatus
from app.widgets.formatting import tr

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Alert:
    """One desktop notification: its title and sentence, whether it is critical, and the page that shows it."""

    title: str
    text: str
    critical: bool
    page: str


class AlertWatcher(QObject):
    """Watches the bridge and emits :attr:`alert` once per change an admin must see. What was already so when
    the console attached (a server critical since yesterday) is not news: it is on the pages."""

    alert = Signal(object)  #: Alert

    def __init__(self, bridge: EngineBridge, parent: QObject | None = None) -> None:
        super().__init__(parent)
        self._health: dict[str, str] = {}
        self._agents: dict[str, str] | None = None
        self._updates: dict[str, str] | None = None
        self._attached_once = False
        bridge.servers_reset.connect(self.on_servers_reset)
        bridge.server_updated.connect(self.on_server_updated)
        bridge.server_removed.connect(lambda name: self._health.pop(name, None))
        bridge.engine_changed.connect(self.on_engine_changed)
        bridge.updates_changed.connect(self.on_updates_changed)
        bridge.connection_changed.connect(self.on_connection_changed)

    def __repr__(self) -> str:
        return f"<AlertWatcher servers={len(self._health)} agents={self._agents}>"

    def on_servers_reset(self, servers: list[ServerStatus]) -> None:
        self._health = {s.name: s.health for s in servers}

    def on_server_updated(self, server: ServerStatus) -> None:
        before = self._health.get(server.name)
        self._health[server.name] = server.health
        if server.health == "critical" and before is not None and before != "critical":
            why = server.health_detail or tr("see the Servers page")
            self.alert.emit(Alert(tr("Godwit: %s is critical") % server.name, why, True, "servers"))

    def on_engine_changed(self, engine: EngineStatus) -> None:
        states = {a.name: a.state for a in engine.agents}
        before, self._agents = self._agents, states
        if before is None:
            return
        for name, state in states.items():
            if state in ("restarting", "stopped") and before.get(name) == "running":
                self.alert.emit(Alert(tr("Godwit: appliance agent %s stopped") % name,
                                      tr("The engine restarts it by itself; replication through it waits until "
                                         "then. The Events page says why it stopped."), True, "events"))

    def on_updates_changed(self, updates: UpdatesStatus) -> None:
        states = {a.name: a.status for a in updates.agents}
        before, self._updates = self._updates, states
        if before is None:
            return
        for agent in updates.agents:
            if agent.status == "update-failed" and before.get(agent.name) != "update-failed":
                self.alert.emit(Alert(tr("Godwit: %s was not updated") % agent.title,
                                      agent.reason or tr("See the Agents page."), False, "agents"))

    def on_connection_changed(self, state: str, detail: str) -> None:
        if state == "attached":
            self._attached_once = True
        elif state == "stopped" and self._attached_once:
            self._agents = None  # a new engine's agents are not news
            self.alert.emit(Alert(tr("Godwit: the engine stopped"), detail, True, "servers"))


class ConsoleTray(QObject):
    """The tray icon with its menu and notifications. ``open_page(name)`` brings the window up on a page;
    ``quit_requested`` asks the window to quit (it asks the admin about the engine first)."""

    quit_requested = Signal()

    def __init__(self, icon: QIcon, open_page: Callable[[str], None], *,
                 available: Callable[[], bool] = QSystemTrayIcon.isSystemTrayAvailable,
                 parent: QObject | None = None) -> None:
        super().__init__(parent)
        self.available = available()
        self._open_page = open_page
        self._page = "servers"  # the page the last notification was about
        self.icon: QSystemTrayIcon | None = None
        self.shown: list[Alert] = []  #: every notification shown, newest last (tests, and a future history)
        if not self.available:
            return
        self.icon = QSystemTrayIcon(icon, self)
        self.icon.setToolTip(tr("Godwit console"))
        menu = QMenu()
        self._menu = menu  # the tray does not own its menu
        open_action = QAction(tr("Open console"), menu)
        open_action.triggered.connect(lambda: self._open_page(""))
        quit_action = QAction(tr("Quit…"), menu)
        quit_action.triggered.connect(self.quit_requested)
        menu.addAction(open_action)
        menu.addSeparator()
        menu.addAction(quit_action)
        self.icon.setContextMenu(menu)
        self.icon.activated.connect(self._activated)
        self.icon.messageClicked.connect(lambda: self._open_page(self._page))
        self.icon.show()

    def __repr__(self) -> str:
        return f"<ConsoleTray available={self.available} shown={len(self.shown)}>"

    def _activated(self, reason: QSystemTrayIcon.ActivationReason) -> None:
        if reason in (QSystemTrayIcon.ActivationReason.Trigger, QSystemTrayIcon.ActivationReason.DoubleClick):
            self._open_page("")

    def notify(self, alert: Alert) -> bool:
        """Show ``alert`` on the desktop; False (logged) when there is no tray to show it."""
        if self.icon is None:
            log.info("tray.notify-skipped title=%r reason=no-system-tray", alert.title)
            return False
        self._page = alert.page
        self.shown.append(alert)
        kind = QSystemTrayIcon.MessageIcon.Critical if alert.critical else QSystemTrayIcon.MessageIcon.Warning
        self.icon.showMessage(alert.title, alert.text, kind, 30_000)
        log.info("tray.notified title=%r page=%s", alert.title, alert.page)
        return True
