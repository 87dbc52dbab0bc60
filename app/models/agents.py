"""The Agents page's table: one row per appliance agent, its versions and where its update stands, updated live
by key (an install's progress repaints the status cell only)."""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import Any

from PySide6.QtCore import Qt
from PySide6.QtGui import QColor

from app.bridge import AgentUpdate, Health
from app.models.table import Index, RecordTableModel
from app.widgets.formatting import health_colour, tr

SortRole = Qt.ItemDataRole.UserRole  #: native, comparable Python value for sorting (versions as number tuples)
KeyRole = Qt.ItemDataRole.UserRole + 1  #: the agent's name, the row's key
ProgressRole = Qt.ItemDataRole.UserRole + 2  #: an install's progress in per mille (status column), or None
ActionRole = Qt.ItemDataRole.UserRole + 3  #: the button the action column holds: "update", "retry" or None

#: How each step of an install reads after "Updating…"; translated when shown.
STAGE_TEXTS: dict[str, str] = {
    "downloading": "downloading",
    "verifying": "verifying",
    "installing": "installing",
    "health-check": "health check",
}
#: Where each status sorts: what needs the admin first.
_STATUS_ORDER = {"update-failed": 0, "cannot-update": 1, "update-available": 2, "updating": 3, "up-to-date": 4}
_STATUS_COLOURS = {"up-to-date": Health.HEALTHY, "update-available": Health.WARNING,
                   "update-failed": Health.CRITICAL, "cannot-update": Health.CRITICAL}
NO_VERSION = "—"


def version_key(version: str | None) -> str:
    """A text that sorts like the version: ``0.10.0`` after ``0.9.1`` (numbers padded); none sorts first. A text,
    not a tuple: the sort proxy compares Qt values, and Qt cannot order Python tuples."""
    if not version:
        return ""
    return ".".join(part.zfill(9) if part.isdigit() else part for part in re.split(r"[.+-]", version))


def status_text(agent: AgentUpdate) -> str:
    """Where ``agent``'s update stands, as the admin reads it; a status from a newer engine shows as it is named."""
    match agent.status:
        case "up-to-date":
            return tr("Up to date")
        case "update-available":
            return tr("Update available")
        case "updating":
            text = tr("Updating…")
            if agent.stage is not None:
                stage = STAGE_TEXTS.get(agent.stage)
                text += " " + (tr(stage) if stage is not None else str(agent.stage))
            if agent.progress is not None:
                text += f" {round(100 * max(0.0, min(1.0, agent.progress)))} %"
            return text
        case "update-failed":
            return tr("Update failed: %s") % agent.reason if agent.reason else tr("Update failed")
        case "cannot-update":
            return tr("Cannot update: %s") % agent.reason if agent.reason else tr("Cannot update")
    return str(agent.status)


def action_of(agent: AgentUpdate) -> str | None:
    """The button of ``agent``'s row: Update when outdated, Retry after a failed install, none otherwise."""
    return {"update-available": "update", "update-failed": "retry"}.get(agent.status)


class AgentsModel(RecordTableModel[AgentUpdate]):
    """The agents in the engine's order, which is the order Update all installs them in."""

    AGENT, INSTALLED, AVAILABLE, STATUS, ACTION = range(5)
    HEADERS = ("Agent", "Installed", "Available", "Status", "")

    def __repr__(self) -> str:
        return f"<AgentsModel rows={[(a.name, a.installed_version, a.status) for a in self._rows]}>"

    # --- changes --------------------------------------------------------------------------------
    def set_rows(self, agents: Iterable[AgentUpdate]) -> None:
        """Replace every row (a reset)."""
        self.beginResetModel()
        self._rows = list(agents)
        self.endResetModel()

    def set_agents(self, agents: Iterable[AgentUpdate]) -> None:
        """Show ``agents``: the same agents in the same order update their changed cells only; any other list
        replaces the rows."""
        agents = list(agents)
        if [a.name for a in agents] != [a.name for a in self._rows]:
            self.set_rows(agents)
            return
        for agent in agents:
            self.update_agent(agent)

    def update_agent(self, agent: AgentUpdate) -> None:
        """Update the row of ``agent.name``: ``dataChanged`` for the cells that changed; nothing if it is gone."""
        row = self.row_of(agent.name)
        if row is None:
            return
        old, self._rows[row] = self._rows[row], agent
        changed = [c for c in range(len(self.HEADERS)) if self._cell(old, c) != self._cell(agent, c)]
        if changed:
            self.dataChanged.emit(self.index(row, min(changed)), self.index(row, max(changed)))

    def row_of(self, name: str) -> int | None:
        for i, a in enumerate(self._rows):
            if a.name == name:
                return i
        return None

    def agent(self, row: int) -> AgentUpdate:
        return self._rows[row]

    def agents(self) -> list[AgentUpdate]:
        return list(self._rows)

    # --- Qt model -------------------------------------------------------------------------------
    def _cell(self, a: AgentUpdate, column: int) -> tuple[Any, ...]:
        """Everything a cell shows, to tell whether it changed."""
        if column == self.STATUS:
            return self._display(a, column), self._progress(a), a.status
        if column == self.ACTION:
            return (action_of(a),)
        if column == self.AGENT:
            return a.title, a.name, a.previous_version
        return (self._display(a, column),)

    def _display(self, a: AgentUpdate, column: int) -> str:
        if column == self.AGENT:
            return a.title
        if column == self.INSTALLED:
            return a.installed_version
        if column == self.AVAILABLE:
            return a.available_version or NO_VERSION
        if column == self.STATUS:
            return status_text(a)
        return ""  # the action column holds a button

    @staticmethod
    def _progress(a: AgentUpdate) -> int | None:
        if a.status != "updating" or a.progress is None:
            return None
        return round(1000 * max(0.0, min(1.0, a.progress)))

    def data(self, index: Index, role: int = Qt.ItemDataRole.DisplayRole) -> Any:
        a, col = self._record(index), index.column()
        if a is None:
            return None
        if role == Qt.ItemDataRole.DisplayRole:
            return self._display(a, col)
        if role == SortRole:
            if col in (self.INSTALLED, self.AVAILABLE):
                return version_key(a.installed_version if col == self.INSTALLED else a.available_version)
            if col == self.STATUS:
                return _STATUS_ORDER.get(str(a.status), len(_STATUS_ORDER)) * 10_000 + (self._progress(a) or 0)
            if col == self.ACTION:
                return action_of(a) or ""
            return a.title.lower()
        if role == KeyRole:
            return a.name
        if role == ProgressRole:
            return self._progress(a) if col == self.STATUS else None
        if role == ActionRole:
            return action_of(a) if col == self.ACTION else None
        if role == Qt.ItemDataRole.ToolTipRole:
            if col == self.AGENT:
                text = a.name
                if a.previous_version:
                    text += " · " + tr("previous version %s (right-click to roll back)") % a.previous_version
                return text
            if col == self.STATUS:
                return status_text(a)
        if role == Qt.ItemDataRole.ForegroundRole and col == self.STATUS and a.status in _STATUS_COLOURS:
            return QColor(health_colour(_STATUS_COLOURS[a.status]))
        return None
