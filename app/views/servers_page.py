"""Servers: the inventory of registered source servers, live."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from PySide6.QtCore import Qt, QTimer
from PySide6.QtWidgets import (
    QAbstractItemView,
    QHBoxLayout,
    QLabel,
    QPushButton,
    QStackedLayout,
    QVBoxLayout,
    QWidget,
)
from qasync import asyncSlot

from app.bridge import EngineBridge, ServerState, ServerStatus
from app.errors import show_error
from app.models.servers import ProgressRole, ServersModel, SortRole
from app.widgets.dialogs import choose, confirm
from app.widgets.formatting import tr
from app.widgets.progress_delegate import ProgressDelegate
from app.widgets.record_table import RecordTable


class ServersPage(QWidget):
    def __init__(self, bridge: EngineBridge, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.bridge = bridge
        self.model = ServersModel(self)
        self.table = RecordTable(self.model, sort_role=SortRole, sort_column=ServersModel.NAME,
                                 order=Qt.SortOrder.AscendingOrder, object_name="servers_table")
        self.table.setItemDelegateForColumn(ServersModel.PROGRESS, ProgressDelegate(ProgressRole, self.table))
        for col, width in ((ServersModel.NAME, 85), (ServersModel.OS, 110), (ServersModel.SIZE, 75),
                           (ServersModel.STATE, 115), (ServersModel.PROGRESS, 140), (ServersModel.THROUGHPUT, 92),
                           (ServersModel.RPO, 50), (ServersModel.LAST_POINT, 90), (ServersModel.HEALTH, 80),
                           (ServersModel.MOBILITY, 150)):
            self.table.setColumnWidth(col, width)

        self.empty = QLabel(tr("No source servers are registered yet.\n\nOn the Setup page you find the command "
                               "to run on a source server;\nit appears here as soon as it registers."),
                            alignment=Qt.AlignmentFlag.AlignCenter, objectName="empty_hint")
        self.stack = QStackedLayout()
        self.stack.addWidget(self.empty)
        self.stack.addWidget(self.table)

        self.count = QLabel(objectName="servers_count")
        self.enable_button = QPushButton(tr("Enable replication…"), objectName="enable_replication", enabled=False)
        self.enable_button.clicked.connect(self.on_enable_button_clicked)
        self.resync_button = QPushButton(tr("Resync…"), objectName="resync_replication", enabled=False)
        self.resync_button.setToolTip(tr("Send every block of the selected server again (after an error). "
                                         "Recovery points are kept."))
        self.resync_button.clicked.connect(self.on_resync_button_clicked)
        self.disable_button = QPushButton(tr("Disable…"), objectName="disable_replication", enabled=False)
        self.disable_button.setToolTip(tr("Stop replicating the selected server and delete its recovery points."))
        self.disable_button.clicked.connect(self.on_disable_button_clicked)
        self.forget_button = QPushButton(tr("Forget…"), objectName="forget_server", enabled=False)
        self.forget_button.setToolTip(tr("Revoke the selected server's certificate and remove it from the list."))
        self.forget_button.clicked.connect(self.on_forget_button_clicked)
        self.update_mobility_button = QPushButton(tr("Update mobility"), objectName="update_mobility", enabled=False)
        self.update_mobility_button.setToolTip(tr("Install the mobility version the appliance offers on the selected "
                                                  "servers (Ctrl- or Shift-click to select several)."))
        self.update_mobility_button.clicked.connect(self.on_update_mobility_button_clicked)
        bar = QHBoxLayout()
        bar.addWidget(QLabel(tr("Replicating servers"), objectName="page_title"))
        bar.addStretch(1)
        bar.addWidget(self.count)
        bar.addWidget(self.enable_button)
        bar.addWidget(self.resync_button)
        bar.addWidget(self.disable_button)
        bar.addWidget(self.forget_button)
        bar.addWidget(self.update_mobility_button)

        layout = QVBoxLayout(self)
        layout.addLayout(bar)
        layout.addLayout(self.stack, 1)

        bridge.servers_reset.connect(self.model.set_rows)
        bridge.server_updated.connect(self.model.update_server)
        bridge.server_updated.connect(lambda _s: self._update_buttons())
        bridge.server_removed.connect(self.model.remove_server)
        for signal in (self.model.modelReset, self.model.rowsInserted, self.model.rowsRemoved):
            signal.connect(self._update_counts)
        self.table.setSelectionMode(QAbstractItemView.SelectionMode.ExtendedSelection)  # bulk mobility updates
        self.table.selectionModel().selectionChanged.connect(self._update_buttons)
        self._ages = QTimer(self, interval=1000)
        self._ages.timeout.connect(self.model.refresh_ages)
        self._ages.start()
        self._update_counts()

    def _update_counts(self) -> None:
        n = self.model.rowCount()
        self.stack.setCurrentWidget(self.table if n else self.empty)
        self.count.setText(f"{n} " + (tr("server") if n == 1 else tr("servers")))
        self._update_buttons()

    def _update_buttons(self) -> None:
        server = self.selected()
        self.forget_button.setEnabled(server is not None)
        self.enable_button.setEnabled(server is not None and not server.replicating)
        self.disable_button.setEnabled(server is not None and server.replicating)
        self.resync_button.setEnabled(server is not None and server.replicating
                                      and server.state != ServerState.RESYNCING)
        self.update_mobility_button.setEnabled(bool(self.outdated()))

    def outdated(self) -> list[str]:
        """The selected servers whose mobility service has an update it may install."""
        rows = self.table.selectionModel().selectedRows()
        servers = [self.model.server(self.table.source_row(r.row())) for r in rows]
        return [s.name for s in servers if s.mobility_update in ("update-available", "update-failed")]

    def selected(self) -> ServerStatus | None:
        """The one selected server; None when none or several are selected (the per-server buttons wait)."""
        rows = self.table.selectionModel().selectedRows()
        if len(rows) != 1:
            return None
        return self.model.server(self.table.source_row(rows[0].row()))

    def selected_name(self) -> str | None:
        server = self.selected()
        return server.name if server else None

    @asyncSlot()
    async def on_enable_button_clicked(self) -> None:
        name = self.selected_name()
        if name is None:
            return
        self.enable_button.setEnabled(False)
        try:
            policies = [p.name for p in await self.bridge.policies()]
            policy = await choose(self, tr("Enable replication of %s") % name,
                                  tr("Choose the replication policy. Initial replication starts at the server's "
                                     "next heartbeat."), policies, tr("Enable"))
            if policy is not None:
                await self.bridge.enable(name, policy)
        except Exception as exc:
            show_error(self, exc)
        finally:
            self._update_buttons()

    async def _confirmed(self, button: QPushButton, title: str, text: str, action: str,
                         call: Callable[[str], Awaitable[object]]) -> None:
        """Ask, then run one engine command for the selected server with its button disabled."""
        name = self.selected_name()
        if name is None or not await confirm(self, title % name, text % name, action):
            return
        button.setEnabled(False)
        try:
            await call(name)
        except Exception as exc:
            show_error(self, exc)
        finally:
            self._update_buttons()

    @asyncSlot()
    async def on_resync_button_clicked(self) -> None:
        await self._confirmed(
            self.resync_button, tr("Resync %s?"),
            tr("%s sends every block again and the appliance compares it with its copy; this takes as long as an "
               "initial replication. Recovery points are kept."), tr("Resync"), self.bridge.resync)

    @asyncSlot()
    async def on_disable_button_clicked(self) -> None:
        await self._confirmed(
            self.disable_button, tr("Disable replication of %s?"),
            tr("Replication stops and %s's recovery points and cached data on the appliance are deleted."),
            tr("Disable"), self.bridge.disable)

    @asyncSlot()
    async def on_update_mobility_button_clicked(self) -> None:
        names = self.outdated()
        if not names:
            return
        self.update_mobility_button.setEnabled(False)
        try:
            await self.bridge.update_mobility(names)
        except Exception as exc:
            show_error(self, exc)
        finally:
            self._update_buttons()

    @asyncSlot()
    async def on_forget_button_clicked(self) -> None:
        await self._confirmed(
            self.forget_button, tr("Forget %s?"),
            tr("%s's certificate is revoked and the appliance refuses it from now on. To add it again, register "
               "it anew from the source server."), tr("Forget"), self.bridge.forget_server)
