"""Servers: the inventory of registered source servers, live."""

from __future__ import annotations

from PySide6.QtCore import Qt, QTimer
from PySide6.QtWidgets import QHBoxLayout, QLabel, QPushButton, QStackedLayout, QVBoxLayout, QWidget
from qasync import asyncSlot

from app.bridge import EngineBridge
from app.errors import show_error
from app.models.servers import ServersModel, SortRole
from app.widgets.dialogs import confirm
from app.widgets.formatting import tr
from app.widgets.record_table import RecordTable


class ServersPage(QWidget):
    def __init__(self, bridge: EngineBridge, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.bridge = bridge
        self.model = ServersModel(self)
        self.table = RecordTable(self.model, sort_role=SortRole, sort_column=ServersModel.NAME,
                                 order=Qt.SortOrder.AscendingOrder, object_name="servers_table")
        for col, width in ((ServersModel.NAME, 160), (ServersModel.OS, 240), (ServersModel.DISKS, 60),
                           (ServersModel.SIZE, 100), (ServersModel.LAST_HEARTBEAT, 120), (ServersModel.STATE, 110)):
            self.table.setColumnWidth(col, width)

        self.empty = QLabel(tr("No source servers are registered yet.\n\nOn the Setup page you find the command "
                               "to run on a source server;\nit appears here as soon as it registers."),
                            alignment=Qt.AlignmentFlag.AlignCenter, objectName="empty_hint")
        self.stack = QStackedLayout()
        self.stack.addWidget(self.empty)
        self.stack.addWidget(self.table)

        self.count = QLabel(objectName="servers_count")
        self.forget_button = QPushButton(tr("Forget…"), objectName="forget_server", enabled=False)
        self.forget_button.setToolTip(tr("Revoke the selected server's certificate and remove it from the list."))
        self.forget_button.clicked.connect(self.on_forget_button_clicked)
        bar = QHBoxLayout()
        bar.addWidget(QLabel(tr("Replicating servers"), objectName="page_title"))
        bar.addStretch(1)
        bar.addWidget(self.count)
        bar.addWidget(self.forget_button)

        layout = QVBoxLayout(self)
        layout.addLayout(bar)
        layout.addLayout(self.stack, 1)

        bridge.servers_reset.connect(self.model.set_rows)
        bridge.server_updated.connect(self.model.update_server)
        bridge.server_removed.connect(self.model.remove_server)
        for signal in (self.model.modelReset, self.model.rowsInserted, self.model.rowsRemoved):
            signal.connect(self._update_counts)
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
        self.forget_button.setEnabled(self.selected_name() is not None)

    def selected_name(self) -> str | None:
        rows = self.table.selectionModel().selectedRows()
        if not rows:
            return None
        return self.model.server(self.table.source_row(rows[0].row())).name

    @asyncSlot()
    async def on_forget_button_clicked(self) -> None:
        name = self.selected_name()
        if name is None:
            return
        if not await confirm(self, tr("Forget %s?") % name,
                             tr("%s's certificate is revoked and the appliance refuses it from now on. To add it "
                                "again, register it anew from the source server.") % name, tr("Forget")):
            return
        self.forget_button.setEnabled(False)
        try:
            await self.bridge.forget_server(name)
        except Exception as exc:
            show_error(self, exc)
        finally:
            self._update_buttons()
