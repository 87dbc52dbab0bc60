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

from PySide6.QtCore import QSettings, QSize, Signal
from PySide6.QtGui import QAction, QCloseEvent, QIcon, QKeySequence
from PySide6.QtWidgets import (
    QDialog,
    QFrame,
    QHBoxLayout,
    QLabel,
    QListWidget,
    QListWidgetItem,
    QMainWindow,
    QMessageBox,
    QStackedWidget,
    QSystemTrayIcon,
    QVBoxLayout,
    QWidget,
)

from app.bridge import EngineBridge, EngineError, EngineStatus, LicenceStatus, SetupInfo
from app.views.agents_page import AgentsPage
from app.views.events_page import EventsPage
from app.views.licence_dialogs import ActivateLicenceDialog, BackupDialog, show_activated
from app.views.overview_page import OverviewPage
from app.views.policies_page import PoliciesPage
from app.views.ports_page import PortsPage
from app.views.server_detail import ServerDetailDialog
from app.views.servers_page import ServersPage
from app.views.setup_page import SetupPage
from app.views.setup_wizard import SetupWizard
from app.views.tray import Alert, AlertWatcher, ConsoleTray
from app.widgets.engine_banner import ENGINE_DOWN, EngineBanner
from app.widgets.formatting import tr
from app.widgets.licence_banner import LicenceBanner
from app.widgets.mismatch_banner import MismatchBanner

log = logging.getLogger(__name__)

_CONNECTION_STYLE = {"attached": "ok", "connecting": "busy", "starting": "busy", "lost": "warn", "stopped": "bad",
                     "failed": "bad"}
#: The console's icons (one line style; resources/icons/).
ICONS = Path(__file__).resolve().parents[2] / "resources" / "icons"


def icon(name: str) -> QIcon:
    return QIcon(str(ICONS / f"{name}.svg"))


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
    PAGES = ("overview", "servers", "policies", "setup", "ports", "agents", "events")
    TITLES = ("Overview", "Servers", "Policies", "Setup", "Ports", "Agents", "Events")
    #: The admin chose Quit (from the tray or Ctrl+Q) and answered about the engine: the console ends.
    quit_requested = Signal()

    def __init__(self, bridge: EngineBridge, *, notifier: LicenceNotifier | None = None,
                 tray_available: Callable[[], bool] = QSystemTrayIcon.isSystemTrayAvailable,
                 offer_setup: bool = True) -> None:
        """``offer_setup`` false: never open the set-up wizard by itself (tests and tools that are not about it)."""
        super().__init__()
        self.bridge = bridge
        self.setWindowTitle(tr("Godwit — %s") % bridge.data_dir.root)
        self.setWindowIcon(icon("godwit"))
        self.overview_page = OverviewPage(bridge)
        self.setup_page = SetupPage(bridge)
        self.servers_page = ServersPage(bridge)
        self.policies_page = PoliciesPage(bridge)
        self.ports_page = PortsPage(bridge)
        self.agents_page = AgentsPage(bridge)
        self.events_page = EventsPage(bridge)

        self.nav = QListWidget(objectName="nav")
        self.nav.setAccessibleName(tr("Pages"))
        for name, title in zip(self.PAGES, self.TITLES, strict=True):
            QListWidgetItem(icon(name), tr(title), self.nav)
        self.nav.setIconSize(QSize(18, 18))
        self.pages = QStackedWidget()
        for page in (self.overview_page, self.servers_page, self.policies_page, self.setup_page, self.ports_page,
                     self.agents_page, self.events_page):
            self.pages.addWidget(page)
        self.nav.currentRowChanged.connect(self.pages.setCurrentIndex)
        self.nav.currentRowChanged.connect(self._page_shown)
        self.nav.setCurrentRow(0)
        #: New errors since the admin last looked at the Events page (its entry in the sidebar counts them).
        self.unseen_errors = 0
        self.events_page.critical_added.connect(self.on_events_page_critical_added)
        #: The open detail dialog of each server (a second double-click raises it).
        self.details: dict[str, ServerDetailDialog] = {}
        self.servers_page.detail_requested.connect(self.show_server_detail)
        self.overview_page.detail_requested.connect(self.show_server_detail)
        self.overview_page.filter_requested.connect(self.show_servers_filtered)
        self.overview_page.page_requested.connect(self.show_page)
        self.overview_page.activate_licence_requested.connect(self.on_licence_banner_activate_clicked)
        #: The first-run setup wizard (opened by itself once per console run while the appliance's set-up is not
        #: complete, and from the Setup page).
        self.wizard: SetupWizard | None = None
        self.setup: SetupInfo | None = None
        self._wizard_offered = not offer_setup
        self.setup_page.run_wizard_requested.connect(self.open_setup_wizard)
        product = QLabel(tr("Godwit"), objectName="product_name")
        product.setAccessibleName(tr("Godwit replication appliance"))
        logo = QLabel(objectName="product_logo")
        logo.setPixmap(icon("godwit").pixmap(QSize(28, 28)))
        brand = QHBoxLayout()
        brand.setContentsMargins(16, 14, 10, 6)
        brand.setSpacing(8)
        brand.addWidget(logo)
        brand.addWidget(product, 1)
        sidebar = QFrame(objectName="sidebar")
        sidebar.setFixedWidth(150)
        side = QVBoxLayout(sidebar)
        side.setContentsMargins(0, 0, 0, 0)
        side.setSpacing(0)
        side.addLayout(brand)
        side.addWidget(self.nav, 1)

        self.engine_banner = EngineBanner()
        self.engine_banner.start_button.clicked.connect(self.on_engine_banner_start_clicked)
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
        body.addWidget(sidebar)
        body.addWidget(self.pages, 1)
        central = QWidget()
        layout = QVBoxLayout(central)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.setSpacing(0)
        layout.addWidget(self.engine_banner)  # above the navigation and every page
        layout.addWidget(self.licence_banner)
        layout.addWidget(self.mismatch_banner)
        layout.addLayout(body, 1)
        self.setCentralWidget(central)
        self.dialog: QDialog | None = None
        self.tray = ConsoleTray(icon("godwit"), self.open_page, available=tray_available, parent=self)
        self.tray.quit_requested.connect(self.on_quit)
        self.alerts = AlertWatcher(bridge, self)
        self.alerts.alert.connect(self.tray.notify)
        self.notifier = notifier or LicenceNotifier(QSettings(), tray_available=lambda: self.tray.available,
                                                    notify=self.notify_desktop)
        #: Set once the admin chose Quit: the close that follows ends the console.
        self.quitting = False
        quit_action = QAction(tr("Quit…"), self)
        quit_action.setShortcut(QKeySequence.StandardKey.Quit)
        quit_action.triggered.connect(self.on_quit)
        self.addAction(quit_action)
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
            self.resize(QSize(1280, 760))

    def show_page(self, name: str) -> None:
        self.nav.setCurrentRow(self.PAGES.index(name))

    def show_servers_filtered(self, health: str, state: str) -> None:
        """The Servers page with only the servers of ``health`` and ``state`` (from the Overview's tiles)."""
        self.servers_page.show_filter(health, state=state)
        self.show_page("servers")

    def open_setup_wizard(self) -> SetupWizard:
        """The first-run setup wizard (raised when it is open already)."""
        if self.wizard is not None and self.wizard.isVisible():
            self.wizard.raise_()
            self.wizard.activateWindow()
            return self.wizard
        if self.wizard is not None:
            self.wizard.deleteLater()
        self.wizard = SetupWizard(self.bridge, self, setup=self.setup)
        self.wizard.open()
        return self.wizard

    def show_server_detail(self, name: str) -> None:
        """Open server ``name``'s details (or raise them when open), seeded with what the console holds."""
        dialog = self.details.get(name)
        if dialog is not None and not dialog.closing and dialog.isVisible():
            dialog.raise_()
            dialog.activateWindow()
            return
        model = self.servers_page.model
        row = model.row_of(name)
        status = model.server(row) if row is not None else None
        events = [e for e in self.events_page.model.events() if e.server == name]
        dialog = ServerDetailDialog(self.bridge, name, self, status=status, events=events)
        # Only this dialog's own entry goes when it is destroyed: a newer one for the server may have replaced it.
        dialog.destroyed.connect(lambda *_, d=dialog: self.details.get(name) is d and self.details.pop(name))
        self.details[name] = dialog
        dialog.show()

    def on_events_page_critical_added(self, _event: object) -> None:
        if self.pages.currentWidget() is not self.events_page or not self.isVisible():
            self.unseen_errors += 1
            self._label_events()

    def _page_shown(self, row: int) -> None:
        if row == self.PAGES.index("events") and self.unseen_errors:
            self.unseen_errors = 0
            self._label_events()

    def _label_events(self) -> None:
        item = self.nav.item(self.PAGES.index("events"))
        item.setText(tr("Events") + (f"  ● {self.unseen_errors}" if self.unseen_errors else ""))
        item.setToolTip(tr("%d new errors since you last looked") % self.unseen_errors if self.unseen_errors
                        else "")

    def open_page(self, name: str) -> None:
        """Bring the window up (from the tray or a notification), on page ``name`` if given."""
        if name:
            self.show_page(name)
        self.showNormal()
        self.raise_()
        self.activateWindow()

    def _show_status(self, level: str, text: str) -> None:
        self.engine_label.setText(text)
        self.engine_label.setProperty("level", level)
        self.engine_label.style().polish(self.engine_label)

    def on_bridge_connection_changed(self, state: str, detail: str) -> None:
        self.engine_banner.show_connection(state, detail)
        self.pages.setEnabled(state == "attached")  # the pages' actions all need the engine
        if state == "attached" and self.bridge.engine is not None:
            self.on_bridge_engine_changed(self.bridge.engine)
        elif state in ENGINE_DOWN:  # the banner says why, once
            self._show_status("bad", tr("■ Engine not running"))
        else:
            self._show_status(_CONNECTION_STYLE.get(state, "warn"), detail)

    def on_engine_banner_start_clicked(self) -> None:
        self.agents_page.start(self._start_engine())

    async def _start_engine(self) -> None:
        self.engine_banner.set_busy(True)
        try:
            await self.bridge.start_engine()
        except EngineError as exc:
            self.engine_banner.message.setText(exc.message)
        finally:
            self.engine_banner.set_busy(False)

    def on_bridge_engine_changed(self, engine: EngineStatus) -> None:
        if self.bridge.state != "attached":
            return
        agents = ", ".join(f"{a.name} {a.state}" + (tr(" (%d restarts in the last hour)") % a.restarts_last_hour
                                                     if a.restarts_last_hour else "")
                           for a in engine.agents) or tr("no agents")
        level = "ok" if engine.healthy else "warn"
        mark = "●" if engine.healthy else "▲"
        self._show_status(level, f"{mark} " + tr("Engine %s running (pid %d) · %s · data in %s")
                          % (engine.version, engine.pid, agents, engine.data_dir))

    # --- the licence ------------------------------------------------------------------------------
    def on_bridge_setup_changed(self, setup: SetupInfo) -> None:
        self.appliance_id = setup.appliance_id
        self.setup = setup
        self._consider_notification()
        # A new appliance: set it up first (an engine before admin 1.5 keeps no record of it: never offered).
        if setup.setup_completed_at is None and not self._wizard_offered and self.bridge.engine_speaks(5):
            self._wizard_offered = True
            self.open_setup_wizard()

    def on_bridge_licence_changed(self, licence: LicenceStatus) -> None:
        self.licence = licence
        self.licence_banner.show_licence(licence)
        self._consider_notification()

    def _consider_notification(self) -> None:
        # The appliance id comes with the set-up, which the engine sends before the licence; wait for both.
        if self.licence is not None and self.appliance_id is not None:
            self.notifier.consider(self.appliance_id, self.licence)

    def notify_desktop(self, title: str, text: str, critical: bool) -> None:
        """A licence notification through the tray; clicking it opens the Setup page, where the licence is."""
        self.tray.notify(Alert(title, text, critical, "setup"))

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

    # --- closing and quitting ------------------------------------------------------------------------------
    def closeEvent(self, event: QCloseEvent) -> None:
        """The close button hides the window to the tray (replication never depended on it); without a tray, or
        after Quit, the console ends."""
        QSettings().setValue("main_window/geometry", self.saveGeometry())
        if self.tray.available and not self.quitting:
            event.ignore()
            self.hide()
            if not QSettings().value("main_window/told_tray", False, type=bool):
                self.tray.notify(Alert(tr("Godwit keeps running"), tr("Replication goes on and the console stays in "
                                       "the tray; choose Quit there to end it."), False, "servers"))
                QSettings().setValue("main_window/told_tray", True)
            return
        super().closeEvent(event)
        if event.isAccepted():
            self.quitting = True
            self.quit_requested.emit()

    def on_quit(self) -> None:
        """Quit, asking whether the engine (and with it replication) stops too."""
        box = QMessageBox(QMessageBox.Icon.Question, tr("Quit the console"),
                          tr("Quit the console only, or stop the engine too?"), parent=self)
        box.setInformativeText(tr("The engine replicates without the console. Stopping it stops replication of "
                                  "every server until it starts again."))
        console_only = box.addButton(tr("Quit console"), QMessageBox.ButtonRole.AcceptRole)
        stop_too = box.addButton(tr("Stop engine and quit"), QMessageBox.ButtonRole.DestructiveRole)
        box.addButton(QMessageBox.StandardButton.Cancel)
        box.setDefaultButton(console_only)
        box.setObjectName("quit_box")
        box.finished.connect(lambda _: self._quit_answered(box.clickedButton(), console_only, stop_too))
        self.dialog = box
        box.open()

    def _quit_answered(self, clicked: object, console_only: object, stop_too: object) -> None:
        if clicked is console_only:
            self.quit()
        elif clicked is stop_too:
            self.agents_page.start(self._stop_engine_and_quit())

    async def _stop_engine_and_quit(self) -> None:
        self._show_status("busy", tr("Stopping the engine…"))
        try:
            await self.bridge.stop_engine()
        except EngineError as exc:
            QMessageBox.warning(self, tr("The engine did not stop"), exc.message)
            return
        self.quit()

    def quit(self) -> None:
        """End the console now (the engine keeps running unless it was stopped)."""
        self.quitting = True
        self.close()
