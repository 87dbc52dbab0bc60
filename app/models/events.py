"""The Events page's table: newest last in the model, shown newest first through the proxy."""

from __future__ import annotations

import time
from typing import Any

from PySide6.QtCore import QModelIndex, Qt
from PySide6.QtGui import QColor

from app.bridge import Event
from app.models.table import Index, RecordTableModel
from app.widgets.formatting import severity_colour

SortRole = Qt.ItemDataRole.UserRole  #: native, comparable Python value for sorting

#: Rows kept in the console; older events stay in the engine (`godwit events`).
MAX_ROWS = 5000


class EventsModel(RecordTableModel[Event]):
    TIME, SEVERITY, SERVER, MESSAGE = range(4)
    HEADERS = ("Time", "Severity", "Server", "Message")

    def __repr__(self) -> str:
        return f"<EventsModel rows={len(self._rows)} last={self._rows[-1].id if self._rows else None}>"

    def set_rows(self, events: list[Event]) -> None:
        self.beginResetModel()
        self._rows = list(events[-MAX_ROWS:])
        self.endResetModel()

    def add_event(self, event: Event) -> None:
        if self._rows and event.id <= self._rows[-1].id:
            return  # already have it (it came with the snapshot)
        if len(self._rows) >= MAX_ROWS:
            self.beginRemoveRows(QModelIndex(), 0, 0)
            del self._rows[0]
            self.endRemoveRows()
        pos = len(self._rows)
        self.beginInsertRows(QModelIndex(), pos, pos)
        self._rows.append(event)
        self.endInsertRows()

    def event_at(self, row: int) -> Event:
        return self._rows[row]

    def data(self, index: Index, role: int = Qt.ItemDataRole.DisplayRole) -> Any:
        e, col = self._record(index), index.column()
        if e is None:
            return None
        if role == Qt.ItemDataRole.DisplayRole:
            return (time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(e.ts)), e.severity.capitalize(),
                    e.server or "", e.message)[col]
        if role == SortRole:
            return (e.id, e.severity, e.server or "", e.message)[col]
        if role == Qt.ItemDataRole.ToolTipRole:
            return f"{e.code}: {e.message}"
        if role == Qt.ItemDataRole.ForegroundRole and col == self.SEVERITY:
            return QColor(severity_colour(e.severity))
        return None
