"""Events: what happened on the appliance, newest first."""

from __future__ import annotations

from PySide6.QtCore import QSortFilterProxyModel, Qt
from PySide6.QtWidgets import QAbstractItemView, QHeaderView, QLabel, QTableView, QVBoxLayout, QWidget

from app.bridge import EngineBridge
from app.models.events import EventsModel, SortRole
from app.widgets.formatting import tr


class EventsPage(QWidget):
    def __init__(self, bridge: EngineBridge, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.model = EventsModel(self)
        self.proxy = QSortFilterProxyModel(self)
        self.proxy.setSourceModel(self.model)
        self.proxy.setSortRole(SortRole)
        self.table = QTableView(objectName="events_table")
        self.table.setModel(self.proxy)
        self.table.setSortingEnabled(True)
        self.table.sortByColumn(EventsModel.TIME, Qt.SortOrder.DescendingOrder)
        self.table.setSelectionBehavior(QAbstractItemView.SelectionBehavior.SelectRows)
        self.table.verticalHeader().hide()
        self.table.setShowGrid(False)
        self.table.setWordWrap(False)
        self.table.setAlternatingRowColors(True)
        header = self.table.horizontalHeader()
        header.setStretchLastSection(True)
        self.table.setColumnWidth(EventsModel.TIME, 150)
        self.table.setColumnWidth(EventsModel.SEVERITY, 80)
        self.table.setColumnWidth(EventsModel.SERVER, 110)
        header.setSectionResizeMode(EventsModel.MESSAGE, QHeaderView.ResizeMode.Stretch)
        layout = QVBoxLayout(self)
        layout.addWidget(QLabel(tr("Events"), objectName="page_title"))
        layout.addWidget(self.table, 1)
        bridge.events_reset.connect(self.model.set_rows)
        bridge.event_added.connect(self.model.add_event)
