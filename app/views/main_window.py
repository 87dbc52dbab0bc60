"""The console's main window: navigation, pages, and the engine's health in the status bar."""

from __future__ import annotations

from PySide6.QtCore import QSettings, QSize
from PySide6.QtGui import QCloseEvent
from PySide6.QtWidgets import QHBoxLayout, QLabel, QListWidget, QMainWindow, QStackedWidget, QWidget

from app.bridge import EngineBridge, EngineStatus
from app.views.events_page import EventsPage
from app.views.servers_page import ServersPage
from app.views.setup_page import SetupPage
from app.widgets.formatting import tr

_CONNECTION_STYLE = {"attached": "ok", "connecting": "busy", "starting": "busy", "lost": "warn", "failed": "bad"}


class MainWindow(QMainWindow):
    PAGES = ("servers", "setup", "events")

    def __init__(self, bridge: EngineBridge) -> None:
        super().__init__()
        self.bridge = bridge
        self.setWindowTitle(tr("Godwit — %s") % bridge.data_dir.root)
        self.setup_page = SetupPage(bridge)
        self.servers_page = ServersPage(bridge)
        self.events_page = EventsPage(bridge)

        self.nav = QListWidget(objectName="nav")
        self.nav.addItems([tr("Servers"), tr("Setup"), tr("Events")])
        self.nav.setFixedWidth(150)
        self.pages = QStackedWidget()
        for page in (self.servers_page, self.setup_page, self.events_page):
            self.pages.addWidget(page)
        self.nav.currentRowChanged.connect(self.pages.setCurrentIndex)
        self.nav.setCurrentRow(0)

        central = QWidget()
        layout = QHBoxLayout(central)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.setSpacing(0)
        layout.addWidget(self.nav)
        layout.addWidget(self.pages, 1)
        self.setCentralWidget(central)

        self.engine_label = QLabel(tr("Connecting to the engine…"), objectName="engine_status")
        self.engine_label.setProperty("level", "busy")
        self.statusBar().addWidget(self.engine_label, 1)
        bridge.connection_changed.connect(self.on_bridge_connection_changed)
        bridge.engine_changed.connect(self.on_bridge_engine_changed)

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

    def closeEvent(self, event: QCloseEvent) -> None:
        QSettings().setValue("main_window/geometry", self.saveGeometry())
        super().closeEvent(event)
