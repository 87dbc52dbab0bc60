"""The Servers page's table: one row per registered source server, updated live by key."""

from __future__ import annotations

import time
from typing import Any

from PySide6.QtCore import QLocale, QModelIndex, QObject, Qt
from PySide6.QtGui import QColor

from app.bridge import ServerStatus
from app.models.table import Index, RecordTableModel
from app.widgets.formatting import age_text, health_colour, health_text

SortRole = Qt.ItemDataRole.UserRole  #: native, comparable Python value for sorting (sizes overflow Qt ints)
KeyRole = Qt.ItemDataRole.UserRole + 1  #: the server's name, the row's key


class ServersModel(RecordTableModel[ServerStatus]):
    NAME, OS, DISKS, SIZE, LAST_HEARTBEAT, STATE, HEALTH = range(7)
    HEADERS = ("Name", "OS", "Disks", "Total size", "Last heartbeat", "State", "Health")

    def __init__(self, parent: QObject | None = None) -> None:
        super().__init__(parent)
        self._locale = QLocale()

    def __repr__(self) -> str:
        return f"<ServersModel rows={[s.name for s in self._rows]}>"

    # --- changes --------------------------------------------------------------------------------
    def set_rows(self, servers: list[ServerStatus]) -> None:
        self.beginResetModel()
        self._rows = sorted(servers, key=lambda s: s.name)
        self.endResetModel()

    def _row_of(self, name: str) -> int | None:
        for i, s in enumerate(self._rows):
            if s.name == name:
                return i
        return None

    def update_server(self, status: ServerStatus) -> None:
        """Insert a new server or update the changed cells of a known one."""
        row = self._row_of(status.name)
        if row is None:
            pos = len(self._rows)
            self.beginInsertRows(QModelIndex(), pos, pos)
            self._rows.append(status)
            self.endInsertRows()
            return
        old, self._rows[row] = self._rows[row], status
        changed = [c for c in range(len(self.HEADERS)) if self._display(old, c) != self._display(status, c)]
        if changed:
            self.dataChanged.emit(self.index(row, min(changed)), self.index(row, max(changed)))

    def remove_server(self, name: str) -> None:
        row = self._row_of(name)
        if row is None:
            return
        self.beginRemoveRows(QModelIndex(), row, row)
        del self._rows[row]
        self.endRemoveRows()

    def refresh_ages(self) -> None:
        """Last-heartbeat ages move with the clock; repaint that column only."""
        if self._rows:
            self.dataChanged.emit(self.index(0, self.LAST_HEARTBEAT),
                                  self.index(len(self._rows) - 1, self.LAST_HEARTBEAT),
                                  [Qt.ItemDataRole.DisplayRole])

    def server(self, row: int) -> ServerStatus:
        return self._rows[row]

    # --- Qt model -------------------------------------------------------------------------------
    def _size(self, n: int) -> str:
        return self._locale.formattedDataSize(n, 1, QLocale.DataSizeFormat.DataSizeIecFormat)

    def _display(self, s: ServerStatus, column: int) -> str:
        if column == self.NAME:
            return s.name
        if column == self.OS:
            return s.os
        if column == self.DISKS:
            return str(len(s.disks))
        if column == self.SIZE:
            return self._size(s.total_size)
        if column == self.LAST_HEARTBEAT:
            return age_text(s.last_heartbeat)
        if column == self.STATE:
            return s.state.replace("-", " ").capitalize()
        return health_text(s.health, s.health_cause)

    def data(self, index: Index, role: int = Qt.ItemDataRole.DisplayRole) -> Any:
        s, col = self._record(index), index.column()
        if s is None:
            return None
        if role == Qt.ItemDataRole.DisplayRole:
            return self._display(s, col)
        if role == SortRole:
            return {self.DISKS: len(s.disks), self.SIZE: s.total_size,
                    self.LAST_HEARTBEAT: -(s.last_heartbeat or 0.0)}.get(col, self._display(s, col).lower())
        if role == KeyRole:
            return s.name
        if role == Qt.ItemDataRole.ToolTipRole:
            if col == self.DISKS:
                return "\n".join(f"{d.path}  {self._size(d.size)}" for d in s.disks)
            if col == self.HEALTH and s.health_detail:
                return s.health_detail
            if col == self.LAST_HEARTBEAT and s.last_heartbeat:
                return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(s.last_heartbeat))
            if col == self.NAME:
                return f"{s.hostname} · {s.address or 'unknown address'} · mobility {s.agent_version}"
        if role == Qt.ItemDataRole.ForegroundRole and col == self.HEALTH:
            return QColor(health_colour(s.health))
        if role == Qt.ItemDataRole.TextAlignmentRole and col in (self.DISKS, self.SIZE):
            return int(Qt.AlignmentFlag.AlignRight | Qt.AlignmentFlag.AlignVCenter)
        return None
