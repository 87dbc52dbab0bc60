"""The console's main window: navigation, pages, the licence and agent-version banners above them, and the
engine's health in the status bar.

The licence also reaches the desktop: one tray notification per warning threshold per appliance
(:class:`LicenceNotifier`), remembered across restarts.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from pathlib import Path

from PySide6.QtCore import QSettings, QSize
from PySide6.QtGui import QCloseEvent
from PySide6.QtWidgets import (
    QDialog,
    QHBoxLayout,
    QLabel,
    QListWidget,
    QMainWindow,
    QStackedWidget,
    QStyle,
    QSystemTrayIcon,
    QVBoxLayout,
    QWidget,
)

from app.bridge import EngineBridge, EngineStatus, LicenceStatus, SetupInfo
from app.views.agents_page import AgentsPage
from app.views.events_page import EventsPage
from app.views.licence_dialogs import ActivateLicenceDialog, BackupDialog, show_activated
from app.views.ports_page import PortsPage
from app.views.servers_page import ServersPage
from app.views.setup_page import SetupPage
from app.widgets.formatting import tr
from app.widgets.licence_banner import LicenceBanner
from app.widgets.mismatch_banner import MismatchBanner

log = logging.getLogger(__name__)

_CONNECTION_STYLE = {"attached": "ok", "connecting": "busy", "starting": "busy", "lost": "warn", "failed": "bad"}


class LicenceNotifier:
    """Tells the desktop once per licence warning threshold (30, 14, 7, 3, 1 days left; 0: expired) per
    appliance and licence end, remembered in ``settings`` so that a restart of the console does not repeat it.

    ``notify(title, text, critical)`` shows the notification; with no system tray (``tray_available()``
    false, e.g. offscreen) nothing is shown and nothing is remembered, so a later console on a desktop
    still tells the admin.
    """

    def __init__(self, settings: QSettings, *, tray_available: Callable[[], bool],
                 notify: Callable[[str, str, bool], None]) -> None:
        self.settings = settings
        self.tray_available = tray_available
        self.notify = notify

    def __repr__(self) -> str:
        return f"<LicenceNotifier {self.settings.fileName()}>"

    @staticmethod
    def _key(appliance_id: str, licence: LicenceStatus) -> str:
        # A new licence (another end) warns again from its first threshold.
        return f"licence_notified/{appliance_id}-{int(licence.expires_at or 0)}"

    def notified(self, appliance_id: str, licence: LicenceStatus) -> set[int]:
        """The thresholds already told for this appliance and licence."""
        value = self.settings.value(self._key(appliance_id, licence), "")
        return {int(t) for t in str(value or "").split(",") if t.strip().isdigit()}

    def consider(self, appliance_id: str, licence: LicenceStatus) -> bool:
        """Notify if ``licence`` has reached a threshold not yet told; whether it did."""
        if licence.threshold is None or licence.alarm == "none" or not licence.message:
            return False
        told = self.notified(appliance_id, licence)
        if licence.threshold in told:
            return False
        if not self.tray_available():
            log.info("licence.notify-skipped threshold=%s reason=no-system-tray", licence.threshold)
            return False
        self.notify(notification_title(licence), licence.message, licence.alarm == "critical")
        self.settings.setValue(self._key(appliance_id, licence),
                               ",".join(str(t) for t in sorted(told | {licence.threshold}, reverse=True)))
        self.settings.sync()
        log.info("licence.notified threshold=%s", licence.threshold)
        return True


def notification_title(licence: LicenceStatus) -> str:
    if licence.state == "expired" or licence.threshold == 0:
        return tr("Godwit: the licence has expired")
    days = licence.days_left if licence.days_left is not None else licence.threshold
    return tr("Godwit: 1 day left on the licence") if days == 1 else \
        tr("Godwit: %d days left on the licence") % (days or 0)


class MainWindow(QMainWindow):
    PAGES = ("servers", "setup", "ports", "agents", "events")

    def __init__(self, bridge: EngineBridge, *, notifier: LicenceNotifier | None = None) -> None:
        super().__init__()
        self.bridge = bridge
        self.setWindowTitle(tr("Godwit — %s") % bridge.data_dir.root)
        self.setup_page = SetupPage(bridge)
        self.servers_page = ServersPage(bridge)
        self.ports_page = PortsPage(bridge)
        self.agents_page = AgentsPage(bridge)
        self.events_page = EventsPage(bridge)

        self.nav = QListWidget(objectName="nav")
        self.nav.addItems([tr("Servers"), tr("Setup"), tr("Ports"), tr("Agents"), tr("Events")])
        self.nav.setFixedWidth(150)
        self.pages = QStackedWidget()
        for page in (self.servers_page, self.setup_page, self.ports_page, self.agents_page, self.events_page):
            self.pages.addWidget(page)
        self.nav.currentRowChanged.connect(self.pages.setCurrentIndex)
        self.nav.setCurrentRow(0)

        self.licence_banner = LicenceBanner()
        self.licence_banner.activate_button.clicked.connect(self.on_licence_banner_activate_clicked)
        self.licence_banner.move_button.clicked.connect(self.on_licence_banner_move_clicked)
        self.setup_page.activate_licence_requested.connect(self.on_licence_banner_activate_clicked)
        self.mismatch_banner = MismatchBanner()
        self.mismatch_banner.update_all_button.clicked.connect(self.on_mismatch_banner_update_all_clicked)
        self.mismatch_banner.show_agents_button.clicked.connect(lambda: self.show_page("agents"))
        bridge.updates_changed.connect(self.mismatch_banner.show_updates)
        body = QHBoxLayout()
        body.setContentsMargins(0, 0, 0, 0)
        body.setSpacing(0)
        body.addWidget(self.nav)
        body.addWidget(self.pages, 1)
        central = QWidget()
        layout = QVBoxLayout(central)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.setSpacing(0)
        layout.addWidget(self.licence_banner)  # above the navigation and every page
        layout.addWidget(self.mismatch_banner)
        layout.addLayout(body, 1)
        self.setCentralWidget(central)
        self.dialog: QDialog | None = None
        self.tray: QSystemTrayIcon | None = None
        self.notifier = notifier or LicenceNotifier(QSettings(), tray_available=QSystemTrayIcon.isSystemTrayAvailable,
                                                    notify=self.notify_desktop)
        self.licence: LicenceStatus | None = None
        self.appliance_id: str | None = None

        self.engine_label = QLabel(tr("Connecting to the engine…"), objectName="engine_status")
        self.engine_label.setProperty("level", "busy")
        self.statusBar().addWidget(self.engine_label, 1)
        bridge.connection_changed.connect(self.on_bridge_connection_changed)
        bridge.engine_changed.connect(self.on_bridge_engine_changed)
        bridge.setup_changed.connect(self.on_bridge_setup_changed)
        bridge.licence_changed.connect(self.on_bridge_licence_changed)

        settings = QSettings()
        geometry = settings.value("main_window/geometry")
        if geometry is not None:
            self.restoreGeometry(geometry)  # type: ignore[arg-type]
        else:
            self.resize(QSize(1180, 640))

    def show_page(self, name: str) -> None:
        self.nav.setCurrentRow(self.PAGES.index(name))

    def _show_status(self, level: str, text: str) -> None:
        self.engine_label.setText(text)
        self.engine_label.setProperty("level", level)
        self.engine_label.style().polish(self.engine_label)

    def on_bridge_connection_changed(self, state: str, detail: str) -> None:
        if state == "attached" and self.bridge.engine is not None:
            self.on_bridge_engine_changed(self.bridge.engine)
        else:
            self._show_status(_CONNECTION_STYLE.get(state, "warn"), detail)

    def on_bridge_engine_changed(self, engine: EngineStatus) -> None:
        if self.bridge.state != "attached":
            return
        agents = ", ".join(f"{a.name} {a.state}" for a in engine.agents) or tr("no agents")
        level = "ok" if engine.healthy else "warn"
        mark = "●" if engine.healthy else "▲"
        self._show_status(level, f"{mark} " + tr("Engine %s running (pid %d) · %s · data in %s")
                          % (engine.version, engine.pid, agents, engine.data_dir))

    # --- the licence ------------------------------------------------------------------------------
    def on_bridge_setup_changed(self, setup: SetupInfo) -> None:
        self.appliance_id = setup.appliance_id
        self._consider_notification()

    def on_bridge_licence_changed(self, licence: LicenceStatus) -> None:
        self.licence = licence
        self.licence_banner.show_licence(licence)
        if self.tray is not None and licence.alarm == "none":
            self.tray.hide()  # activated: nothing left to warn about
        self._consider_notification()

    def _consider_notification(self) -> None:
        # The appliance id comes with the set-up, which the engine sends before the licence; wait for both.
        if self.licence is not None and self.appliance_id is not None:
            self.notifier.consider(self.appliance_id, self.licence)

    def notify_desktop(self, title: str, text: str, critical: bool) -> None:
        """A desktop notification through the system tray (its icon appears with the first one)."""
        if self.tray is None:
            self.tray = QSystemTrayIcon(self.style().standardIcon(QStyle.StandardPixmap.SP_MessageBoxWarning), self)
            self.tray.setToolTip(tr("Godwit console"))
            self.tray.messageClicked.connect(self._bring_to_front)
            self.tray.activated.connect(self._bring_to_front)
        self.tray.show()
        icon = QSystemTrayIcon.MessageIcon.Critical if critical else QSystemTrayIcon.MessageIcon.Warning
        self.tray.showMessage(title, text, icon, 30_000)

    def _bring_to_front(self, *_: object) -> None:
        self.showNormal()
        self.raise_()
        self.activateWindow()

    def _open_dialog(self, dialog: QDialog) -> None:
        """Open ``dialog`` without blocking; one licence dialog at a time (a second click raises it)."""
        if self.dialog is not None and self.dialog.isVisible():
            self.dialog.raise_()
            self.dialog.activateWindow()
            return
        if self.dialog is not None:
            self.dialog.deleteLater()  # the last one, closed: dialogs are children of the window until deleted
        self.dialog = dialog
        dialog.open()

    def on_licence_banner_activate_clicked(self) -> None:
        dialog = ActivateLicenceDialog(self.bridge, self)
        dialog.activated.connect(lambda licence: show_activated(self, licence))
        self._open_dialog(dialog)

    def on_licence_banner_move_clicked(self) -> None:
        name = f"godwit-{self.appliance_id or 'appliance'}-{time.strftime('%Y-%m-%d')}.backup"
        dialog = BackupDialog(self.bridge, self, suggested_name=name)
        dialog.path.setText(str(Path.home() / name))
        self._open_dialog(dialog)

    # --- agent versions ------------------------------------------------------------------------------
    def on_mismatch_banner_update_all_clicked(self) -> None:
        """The banner's Update all is the Agents page's: its controls wait too, and it shows a refusal."""
        self.agents_page.start(self._update_all_from_banner())

    async def _update_all_from_banner(self) -> None:
        self.mismatch_banner.set_busy(True)
        try:
            await self.agents_page.update_all()
        finally:
            self.mismatch_banner.set_busy(False)

    def closeEvent(self, event: QCloseEvent) -> None:
        QSettings().setValue("main_window/geometry", self.saveGeometry())
        super().closeEvent(event)
