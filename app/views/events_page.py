"""Events: what happened on the appliance, newest first."""

from __future__ import annotations

from PySide6.QtCore import Qt
from PySide6.QtWidgets import QHeaderView, QLabel, QVBoxLayout, QWidget

from app.bridge import EngineBridge
from app.models.events import EventsModel, SortRole
from app.widgets.formatting import tr
from app.widgets.record_table import RecordTable


class EventsPage(QWidget):
    def __init__(self, bridge: EngineBridge, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.model = EventsModel(self)
        self.table = RecordTable(self.model, sort_role=SortRole, sort_column=EventsModel.TIME,
                                 order=Qt.SortOrder.DescendingOrder, object_name="events_table")
        self.table.setColumnWidth(EventsModel.TIME, 150)
        self.table.setColumnWidth(EventsModel.SEVERITY, 80)
        self.table.setColumnWidth(EventsModel.SERVER, 110)
        self.table.horizontalHeader().setSectionResizeMode(EventsModel.MESSAGE, QHeaderView.ResizeMode.Stretch)
        layout = QVBoxLayout(self)
        layout.addWidget(QLabel(tr("Events"), objectName="page_title"))
        layout.addWidget(self.table, 1)
        bridge.events_reset.connect(self.model.set_rows)
        bridge.event_added.connect(self.model.add_event)
