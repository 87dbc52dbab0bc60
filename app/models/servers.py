"""The Servers page's table: one row per registered source server, updated live by key."""

from __future__ import annotations

import time
from typing import Any

from PySide6.QtCore import QLocale, QModelIndex, QObject, Qt
from PySide6.QtGui import QColor

from app.bridge import ServerState, ServerStatus
from app.models.table import Index, RecordTableModel
from app.widgets.formatting import age_text, duration_text, health_colour, health_text, state_text, tr

SortRole = Qt.ItemDataRole.UserRole  #: native, comparable Python value for sorting (sizes overflow Qt ints)
KeyRole = Qt.ItemDataRole.UserRole + 1  #: the server's name, the row's key
ProgressRole = Qt.ItemDataRole.UserRole + 2  #: initial replication progress in per mille, or None


#: How a server's mobility update reads in the table.
MOBILITY_STATES = {"update-available": "update available", "updating": "updating…", "update-failed": "update failed"}


def mobility_text(s: ServerStatus) -> str:
    """The mobility version a server runs, and its update when there is one: "0.1.0 · update available"."""
    version = s.mobility_version or s.agent_version
    state = MOBILITY_STATES.get(s.mobility_update)
    return f"{version} · {state}" if state else version


def progress_of(s: ServerStatus) -> tuple[int, int]:
    return sum(d.bytes_done for d in s.disks), sum(d.bytes_total for d in s.disks)


class ServersModel(RecordTableModel[ServerStatus]):
    NAME, OS, SIZE, STATE, PROGRESS, THROUGHPUT, RPO, LAST_POINT, HEALTH, MOBILITY, LAST_HEARTBEAT = range(11)
    HEADERS = ("Name", "OS", "Size", "Status", "Progress", "Throughput", "RPO", "Last point", "Health",
               "Mobility", "Heartbeat")

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
        changed = [c for c in range(len(self.HEADERS))
                   if self._display(old, c) != self._display(status, c)
                   or (c == self.PROGRESS and self._progress(old) != self._progress(status))]
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
        """Ages move with the clock; repaint those columns only."""
        if self._rows:
            self.dataChanged.emit(self.index(0, self.RPO), self.index(len(self._rows) - 1, self.LAST_HEARTBEAT),
                                  [Qt.ItemDataRole.DisplayRole])

    def server(self, row: int) -> ServerStatus:
        return self._rows[row]

    # --- Qt model -------------------------------------------------------------------------------
    def _size(self, n: float) -> str:
        return self._locale.formattedDataSize(int(n), 1, QLocale.DataSizeFormat.DataSizeIecFormat)

    @staticmethod
    def _progress(s: ServerStatus) -> int | None:
        done, total = progress_of(s)
        if not s.replicating or total == 0:
            return None
        return int(1000 * done / total)

    def _display(self, s: ServerStatus, column: int) -> str:
        if column == self.NAME:
            return s.name
        if column == self.OS:
            return s.os
        if column == self.SIZE:
            return self._size(s.total_size)
        if column == self.STATE:
            return state_text(s.state)
        if column == self.PROGRESS:
            return self._progress_text(s)
        if column == self.THROUGHPUT:
            rate = sum(d.throughput_bps for d in s.disks)
            return self._size(rate) + "/s" if s.state == ServerState.INITIAL_REPLICATION and rate else ""
        if column == self.RPO:
            return duration_text(s.rpo_seconds) if s.rpo_seconds is not None else ""
        if column == self.LAST_POINT:
            return age_text(s.last_recovery_point) if s.last_recovery_point else ""
        if column == self.HEALTH:
            return health_text(s.health, s.health_cause)
        if column == self.MOBILITY:
            return mobility_text(s)
        return age_text(s.last_heartbeat)

    def _progress_text(self, s: ServerStatus) -> str:
        done, total = progress_of(s)
        if not s.replicating:
            return tr("Not replicating")
        if s.state in (ServerState.PAUSED, ServerState.ERROR):
            return tr("Stopped: see Health")
        if s.state == ServerState.RESYNCING:
            return tr("Resyncing every block")
        if s.state != ServerState.INITIAL_REPLICATION:
            return tr("Done")
        short = QLocale.DataSizeFormat.DataSizeIecFormat
        text = (f"{100 * done / total:.0f}% · {self._locale.formattedDataSize(done, 0, short)} / "
                f"{self._locale.formattedDataSize(total, 0, short)}") if total else ""
        etas = [d.eta_seconds for d in s.disks if d.eta_seconds is not None]
        if etas:
            text += " · " + duration_text(max(etas))
        return text

    def data(self, index: Index, role: int = Qt.ItemDataRole.DisplayRole) -> Any:
        s, col = self._record(index), index.column()
        if s is None:
            return None
        if role == Qt.ItemDataRole.DisplayRole:
            return self._display(s, col)
        if role == ProgressRole:
            return self._progress(s) if col == self.PROGRESS and s.state == ServerState.INITIAL_REPLICATION else None
        if role == SortRole:
            return {self.SIZE: s.total_size, self.PROGRESS: progress_of(s)[0],
                    self.THROUGHPUT: sum(d.throughput_bps for d in s.disks), self.RPO: s.rpo_seconds or 0.0,
                    self.LAST_POINT: -(s.last_recovery_point or 0.0),
                    self.LAST_HEARTBEAT: -(s.last_heartbeat or 0.0)}.get(col, self._display(s, col).lower())
        if role == KeyRole:
            return s.name
        if role == Qt.ItemDataRole.ToolTipRole:
            if col == self.SIZE:
                return "\n".join(f"{d.path}  {self._size(d.size)}" for d in s.disks)
            if col == self.HEALTH and s.health_detail:
                return s.health_detail
            if col == self.LAST_HEARTBEAT and s.last_heartbeat:
                return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(s.last_heartbeat))
            if col == self.LAST_POINT and s.last_recovery_point:
                return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(s.last_recovery_point))
            if col == self.NAME:
                policy = f" · policy {s.policy}" if s.policy else ""
                return f"{s.hostname} · {s.address or 'unknown address'} · mobility {s.agent_version}{policy}"
        if role == Qt.ItemDataRole.ForegroundRole and col == self.HEALTH:
            return QColor(health_colour(s.health))
        if role == Qt.ItemDataRole.TextAlignmentRole and col in (self.SIZE, self.THROUGHPUT, self.RPO):
            return int(Qt.AlignmentFlag.AlignRight | Qt.AlignmentFlag.AlignVCenter)
        return None
