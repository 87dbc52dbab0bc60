"""The Servers page's table: one row per registered source server, updated live by key; and the filter the admin
narrows it with (search text, health, state)."""

from __future__ import annotations

import time
from dataclasses import dataclass
from functools import cached_property
from typing import Any

from PySide6.QtCore import QModelIndex, QObject, Qt
from PySide6.QtGui import QColor

from app.bridge import Health, ServerState, ServerStatus
from app.models.table import Index, RecordTableModel
from app.widgets.formatting import (
    age_text,
    duration_text,
    health_colour,
    health_text,
    rate_text,
    size_text,
    state_text,
    tr,
)

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


def over_threshold(s: ServerStatus, now: float) -> bool:
    """Whether the server's RPO at ``now`` is above its policy's threshold."""
    rpo = s.rpo_at(now)
    return rpo is not None and s.rpo_threshold is not None and rpo > s.rpo_threshold


def rpo_tooltip(s: ServerStatus, now: float) -> str:
    """What the RPO and the last point mean, for this server, now."""
    rpo = s.rpo_at(now)
    lines = [tr("RPO: how old the newest data the appliance holds for this server is (what a failover now would "
                "lose): %s.") % (duration_text(rpo) if rpo is not None else tr("no consistent data yet"))]
    if s.rpo_threshold is not None:
        lines.append(tr("The policy's threshold is %s%s.") % (duration_text(s.rpo_threshold),
                                                             tr(": above it") if over_threshold(s, now) else ""))
    if s.last_recovery_point:
        lines.append(tr("Newest recovery point: %s (points are what you can restore or export).")
                     % age_text(s.last_recovery_point))
    return "\n".join(lines)


def progress_of(s: ServerStatus) -> tuple[int, int]:
    return sum(d.bytes_done for d in s.disks), sum(d.bytes_total for d in s.disks)


#: Where :func:`engine.durations.age_text` stops counting minutes and names the date and time instead.
_MINUTES_LIMIT = 90 * 60
#: Up to this age a short age counts hours; beyond, it names the day.
_HOURS_LIMIT = 48 * 3600


def short_age_text(ts: float | None, now: float | None = None) -> str:
    """An age that fits a narrow column: ``12 s ago`` and ``12 min ago`` as everywhere, then ``3.5 h ago`` for two
    days, then the date (``2024-05-01``); the tooltip has the full time."""
    now = time.time() if now is None else now
    if ts is None or now - ts < _MINUTES_LIMIT:
        return age_text(ts, now)
    if now - ts < _HOURS_LIMIT:
        return tr("%s ago") % duration_text(now - ts)
    return time.strftime("%Y-%m-%d", time.localtime(ts))


#: Where each health sorts: the servers that need the admin first.
_HEALTH_ORDER = {Health.CRITICAL: 0, Health.WARNING: 1, Health.HEALTHY: 2}
#: The health filter's values: every server, or those of one health.
HEALTH_FILTERS = ("all", Health.HEALTHY.value, Health.WARNING.value, Health.CRITICAL.value)
#: The state filter's values: every server, those that replicate, those that do not, those the admin must look at.
STATE_FILTERS = ("all", "replicating", "not-replicating", "attention")


def needs_attention(s: ServerStatus) -> bool:
    """Whether the admin should look at ``s``: it is not healthy, or its replication stopped with an error."""
    return s.health != Health.HEALTHY or s.state == ServerState.ERROR


@dataclass(frozen=True)
class ServerFilter:
    """Which servers the Servers page lists: those whose name, hostname, OS or address holds every word of
    ``text`` (case-insensitive), of ``health`` (one of :data:`HEALTH_FILTERS`) and in ``state`` (one of
    :data:`STATE_FILTERS`)."""

    text: str = ""
    health: str = "all"
    state: str = "all"

    def __post_init__(self) -> None:
        if self.health not in HEALTH_FILTERS:
            raise ValueError(f"health filter {self.health!r} is not one of {HEALTH_FILTERS}")
        if self.state not in STATE_FILTERS:
            raise ValueError(f"state filter {self.state!r} is not one of {STATE_FILTERS}")

    @cached_property
    def words(self) -> tuple[str, ...]:
        """The search text's words, case-folded."""
        return tuple(self.text.casefold().split())

    @property
    def active(self) -> bool:
        """Whether it may leave out any server at all."""
        return bool(self.words) or self.health != "all" or self.state != "all"

    def accepts(self, s: ServerStatus) -> bool:
        if self.health != "all" and s.health != self.health:
            return False
        if self.state == "replicating" and not s.replicating:
            return False
        if self.state == "not-replicating" and s.replicating:
            return False
        if self.state == "attention" and not needs_attention(s):
            return False
        if not self.words:
            return True
        fields = " ".join((s.name, s.hostname, s.os, s.address or "")).casefold()  # a word never spans two
        return all(word in fields for word in self.words)


class ServersModel(RecordTableModel[ServerStatus]):
    """The servers, found by name: updates change the cells that changed, new servers are inserted and gone ones
    removed; a snapshot resets the rows only when none of its servers is already shown (so that a view keeps its
    selection when the console attaches again)."""

    NAME, OS, SIZE, STATE, PROGRESS, THROUGHPUT, RPO, LAST_POINT, HEALTH, MOBILITY, LAST_HEARTBEAT = range(11)
    HEADERS = ("Name", "OS", "Size", "Status", "Progress", "Throughput", "RPO", "Last point", "Health",
               "Mobility", "Heartbeat")
    #: Each column's name in saved settings: stable across versions and languages.
    KEYS = ("name", "os", "size", "status", "progress", "throughput", "rpo", "last_point", "health", "mobility",
            "heartbeat")

    def __init__(self, parent: QObject | None = None) -> None:
        super().__init__(parent)
        self._index: dict[str, int] = {}  #: name -> row

    def __repr__(self) -> str:
        return f"<ServersModel rows={[s.name for s in self._rows]}>"

    # --- changes --------------------------------------------------------------------------------
    def set_rows(self, servers: list[ServerStatus]) -> None:
        """Show ``servers`` (a full snapshot): a reset when none of them is shown yet, else the servers gone are
        removed, the known ones updated and the new ones inserted, row by row."""
        known = {s.name for s in servers} & self._index.keys()
        if not known:
            self.beginResetModel()
            self._rows = sorted(servers, key=lambda s: s.name)
            self._reindex()
            self.endResetModel()
            return
        keep = {s.name for s in servers}
        for gone in [s.name for s in self._rows if s.name not in keep]:
            self.remove_server(gone)
        for status in sorted(servers, key=lambda s: s.name):
            self.update_server(status)

    def _reindex(self) -> None:
        self._index = {s.name: i for i, s in enumerate(self._rows)}

    def row_of(self, name: str) -> int | None:
        return self._index.get(name)

    def update_server(self, status: ServerStatus) -> None:
        """Insert a new server or update the changed cells of a known one."""
        row = self._index.get(status.name)
        if row is None:
            pos = len(self._rows)
            self.beginInsertRows(QModelIndex(), pos, pos)
            self._rows.append(status)
            self._index[status.name] = pos
            self.endInsertRows()
            return
        old, self._rows[row] = self._rows[row], status
        if old == status:
            return
        changed = [c for c in range(len(self.HEADERS)) if self._cell(old, c) != self._cell(status, c)]
        if changed:
            self.dataChanged.emit(self.index(row, min(changed)), self.index(row, max(changed)))

    def remove_server(self, name: str) -> None:
        row = self._index.get(name)
        if row is None:
            return
        self.beginRemoveRows(QModelIndex(), row, row)
        del self._rows[row]
        self._reindex()
        self.endRemoveRows()

    def refresh_ages(self) -> None:
        """Ages move with the clock; repaint those columns only."""
        if self._rows:
            self.dataChanged.emit(self.index(0, self.RPO), self.index(len(self._rows) - 1, self.LAST_HEARTBEAT),
                                  [Qt.ItemDataRole.DisplayRole])

    def server(self, row: int) -> ServerStatus:
        return self._rows[row]

    def servers(self) -> list[ServerStatus]:
        return list(self._rows)

    # --- Qt model -------------------------------------------------------------------------------
    @staticmethod
    def _progress(s: ServerStatus) -> int | None:
        done, total = progress_of(s)
        if not s.replicating or total == 0:
            return None
        return int(1000 * done / total)

    def _cell(self, s: ServerStatus, column: int) -> tuple[Any, ...]:
        """Everything a cell shows (its text, bar, colour and the facts of its tooltip), to tell whether it
        changed; the Name cell also stands for what the filter searches (hostname, address)."""
        text = self._display(s, column)
        if column == self.NAME:
            return text, s.hostname, s.address, s.agent_version, s.policy, s.replicating
        if column == self.PROGRESS:
            return text, self._progress(s)
        if column == self.HEALTH:
            return text, s.health, s.health_detail
        if column == self.SIZE:
            return text, tuple((d.path, d.size) for d in s.disks)
        return (text,)

    def _display(self, s: ServerStatus, column: int) -> str:
        if column == self.NAME:
            return s.name
        if column == self.OS:
            return s.os
        if column == self.SIZE:
            return size_text(s.total_size)
        if column == self.STATE:
            return state_text(s.state)
        if column == self.PROGRESS:
            return self._progress_text(s)
        if column == self.THROUGHPUT:
            rate = sum(d.throughput_bps for d in s.disks)
            return rate_text(rate) if s.state == ServerState.INITIAL_REPLICATION and rate else ""
        if column == self.RPO:  # aged here, at every repaint: it grows while nothing arrives
            rpo = s.rpo_at(time.time())
            return duration_text(rpo) if rpo is not None else ""
        if column == self.LAST_POINT:
            return short_age_text(s.last_recovery_point) if s.last_recovery_point else ""
        if column == self.HEALTH:
            return health_text(s.health, s.health_cause)
        if column == self.MOBILITY:
            return mobility_text(s)
        return short_age_text(s.last_heartbeat)

    def _progress_text(self, s: ServerStatus) -> str:
        done, total = progress_of(s)
        if not s.replicating:
            return tr("Not replicating")
        if s.state in (ServerState.PAUSED, ServerState.ERROR):
            return tr("Stopped: see Health")
        if s.state == ServerState.RESYNCING:
            resync = [d for d in s.disks if d.phase == "resync"]
            done, total = sum(d.bytes_done for d in resync), sum(d.bytes_total for d in resync)
            return tr("Resync %d%%") % (100 * done // total) if total else tr("Resyncing every block")
        if s.state != ServerState.INITIAL_REPLICATION:
            return tr("Done")
        text = f"{100 * done / total:.0f}% · {size_text(done, 0)} / {size_text(total, 0)}" if total else ""
        etas = [d.eta_seconds for d in s.disks if d.eta_seconds is not None]
        if etas:
            text += " · " + duration_text(max(etas))
        return text

    def _sort_key(self, s: ServerStatus, column: int) -> Any:
        if column == self.SIZE:
            return s.total_size
        if column == self.PROGRESS:
            return progress_of(s)[0]
        if column == self.THROUGHPUT:
            return sum(d.throughput_bps for d in s.disks)
        if column == self.RPO:
            return s.rpo_at(time.time()) or 0.0
        if column == self.LAST_POINT:
            return -(s.last_recovery_point or 0.0)
        if column == self.LAST_HEARTBEAT:
            return -(s.last_heartbeat or 0.0)
        if column == self.HEALTH:  # a health from a newer engine sorts with the critical ones
            return f"{_HEALTH_ORDER.get(s.health, 0)} {self._display(s, column).lower()}"
        return self._display(s, column).lower()

    def data(self, index: Index, role: int = Qt.ItemDataRole.DisplayRole) -> Any:
        s, col = self._record(index), index.column()
        if s is None:
            return None
        if role == Qt.ItemDataRole.DisplayRole:
            return self._display(s, col)
        if role == ProgressRole:
            return self._progress(s) if col == self.PROGRESS and s.state == ServerState.INITIAL_REPLICATION else None
        if role == SortRole:
            return self._sort_key(s, col)
        if role == KeyRole:
            return s.name
        if role == Qt.ItemDataRole.ToolTipRole:
            if col == self.SIZE:
                return "\n".join(f"{d.path}  {size_text(d.size)}" for d in s.disks)
            if col == self.HEALTH:
                return s.health_detail or health_text(s.health, s.health_cause)
            if col == self.PROGRESS and s.state == ServerState.INITIAL_REPLICATION:
                rate = sum(d.throughput_bps for d in s.disks)
                return self._progress_text(s) + (f" · {rate_text(rate)}" if rate else "")
            if col in (self.OS, self.MOBILITY):  # in full, should the column be narrower
                return self._display(s, col) or None
            if col == self.RPO:
                return rpo_tooltip(s, time.time())
            if col == self.LAST_HEARTBEAT and s.last_heartbeat:
                return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(s.last_heartbeat))
            if col == self.LAST_POINT and s.last_recovery_point:
                return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(s.last_recovery_point))
            if col == self.NAME:
                policy = f" · policy {s.policy}" if s.policy else ""
                return f"{s.hostname} · {s.address or 'unknown address'} · mobility {s.agent_version}{policy}"
        if role == Qt.ItemDataRole.ForegroundRole and col == self.HEALTH:
            return QColor(health_colour(s.health))
        if role == Qt.ItemDataRole.ForegroundRole and col == self.RPO and over_threshold(s, time.time()):
            return QColor(health_colour(Health.WARNING))
        if role == Qt.ItemDataRole.TextAlignmentRole and col in (self.SIZE, self.THROUGHPUT, self.RPO):
            return int(Qt.AlignmentFlag.AlignRight | Qt.AlignmentFlag.AlignVCenter)
        return None
