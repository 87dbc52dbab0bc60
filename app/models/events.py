"""The Events page's table: newest last in the model, shown newest first through the proxies; and the filter the
admin narrows it with (severity, server, text)."""

from __future__ import annotations

import bisect
import html
import time
from typing import Any

from PySide6.QtCore import QAbstractProxyModel, QModelIndex, QObject, Qt
from PySide6.QtGui import QColor

from app import theme
from app.bridge import Event
from app.models.table import Index, RecordTableModel
from app.widgets.formatting import severity_colour, tr

SortRole = Qt.ItemDataRole.UserRole  #: native, comparable Python value for sorting

#: Rows kept in the console; older events stay in the engine (`godwit events`).
MAX_ROWS = 10_000

#: How serious each severity the engine records is (``engine.records.Severity``), least first.
SEVERITY_RANKS: dict[str, int] = {"info": 0, "warning": 1, "error": 2}
#: The rank of the most serious severities: the events the admin must see at once.
CRITICAL_RANK = max(SEVERITY_RANKS.values())
#: The server filter's value for events about the appliance itself (they name no server).
APPLIANCE = ""


def severity_rank(severity: str) -> int:
    """A severity from a newer engine ranks as the most serious: no filter hides it, and it is announced."""
    return SEVERITY_RANKS.get(severity, CRITICAL_RANK)


def is_critical(event: Event) -> bool:
    return severity_rank(event.severity) >= CRITICAL_RANK


class EventsModel(RecordTableModel[Event]):
    TIME, SEVERITY, SERVER, MESSAGE = range(4)
    HEADERS = ("Time", "Severity", "Server", "Message")

    def __repr__(self) -> str:
        return f"<EventsModel rows={len(self._rows)} last={self._rows[-1].id if self._rows else None}>"

    def set_rows(self, events: list[Event]) -> None:
        self.beginResetModel()
        self._rows = list(events[-MAX_ROWS:])
        self.endResetModel()

    def add_event(self, event: Event) -> bool:
        """Append ``event`` (dropping the oldest beyond :data:`MAX_ROWS`); False if it is already here."""
        if self._rows and event.id <= self._rows[-1].id:
            return False  # already have it (it came with the snapshot)
        if len(self._rows) >= MAX_ROWS:
            self.beginRemoveRows(QModelIndex(), 0, 0)
            del self._rows[0]
            self.endRemoveRows()
        pos = len(self._rows)
        self.beginInsertRows(QModelIndex(), pos, pos)
        self._rows.append(event)
        self.endInsertRows()
        return True

    def event_at(self, row: int) -> Event:
        return self._rows[row]

    def events(self) -> list[Event]:
        """Every event held, oldest first."""
        return list(self._rows)

    def data(self, index: Index, role: int = Qt.ItemDataRole.DisplayRole) -> Any:
        e, col = self._record(index), index.column()
        if e is None:
            return None
        if role == Qt.ItemDataRole.DisplayRole:
            if col == self.MESSAGE:
                return " ".join(e.message.splitlines())  # one line in the table; the tooltip has them all
            return (time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(e.ts)), e.severity.capitalize(),
                    e.server or tr("Appliance"))[col]
        if role == SortRole:
            return (e.id, severity_rank(e.severity), e.server or "", e.message)[col]
        if role == Qt.ItemDataRole.ToolTipRole:
            # Rich text, so that Qt wraps a long message instead of showing one line across the screen.
            return (f"<p><b>{html.escape(e.code)}</b></p>"
                    f"<p style='white-space: pre-wrap'>{html.escape(e.message)}</p>")
        if role == Qt.ItemDataRole.ForegroundRole and col == self.SEVERITY:
            return QColor(severity_colour(e.severity))
        if role == Qt.ItemDataRole.ForegroundRole and col == self.SERVER and not e.server:
            return QColor(theme.colour("muted"))  # about the appliance itself, not a server
        return None


class EventsFilter(QAbstractProxyModel):
    """The events the admin asked to see, newest first (or oldest first): at least a severity, of one server (or
    :data:`APPLIANCE`), holding a text in their code or message (case-insensitive).

    Built for thousands of events: an event that arrives is one inserted row, an event the model drops one removed
    row; a new filter or order is one layout change (the view keeps its selection where the rows stay). Only a
    reset of the model resets the view. The order is the model's (time), read one way or the other: a sort proxy
    would compare rows one by one through Python, seconds for each new filter at 10,000 events.
    """

    def __init__(self, events: EventsModel, parent: QObject | None = None) -> None:
        super().__init__(parent)
        self.events = events
        self.min_rank = 0
        self.server: str | None = None
        self.text = ""
        self.newest_first = True
        self._needle = ""
        #: The shown events as positions in the model, oldest first. A position is the event's row plus
        #: :attr:`_offset`, so that dropping the model's oldest rows renumbers nothing.
        self._shown: list[int] = []
        self._offset = 0
        self._removing = 0  #: how many of the oldest shown events are announced as removed
        self._resetting = False
        self.setSourceModel(events)
        events.modelAboutToBeReset.connect(self._begin_reset)
        events.modelReset.connect(self._end_reset)
        events.rowsAboutToBeRemoved.connect(self._on_rows_about_to_be_removed)
        events.rowsRemoved.connect(self._on_rows_removed)
        events.rowsInserted.connect(self._on_rows_inserted)
        # Events do not change and the model neither sorts nor moves them; should it ever, follow it all the same.
        events.dataChanged.connect(self._refilter)
        events.layoutAboutToBeChanged.connect(self._begin_reset)
        events.layoutChanged.connect(self._end_reset)
        events.rowsAboutToBeMoved.connect(self._begin_reset)
        events.rowsMoved.connect(self._end_reset)
        self._shown = self._accepted(0, events.rowCount())

    def __repr__(self) -> str:
        return (f"<EventsFilter shown={len(self._shown)}/{self.events.rowCount()} min_rank={self.min_rank} "
                f"server={self.server!r} text={self.text!r} newest_first={self.newest_first}>")

    # --- the filter and the order --------------------------------------------------------------------
    @property
    def active(self) -> bool:
        """Whether the admin narrowed the events (a severity, a server or a text)."""
        return self.min_rank > 0 or self.server is not None or bool(self._needle)

    def set_filter(self, *, min_rank: int, server: str | None, text: str) -> None:
        """Show the events of at least ``min_rank``, of ``server`` (None: any) holding ``text``; re-filters only
        when something changed."""
        if (min_rank, server, text) == (self.min_rank, self.server, self.text):
            return
        self.min_rank, self.server, self.text = min_rank, server, text
        self._needle = text.strip().casefold()
        self._refilter()

    def set_newest_first(self, newest_first: bool) -> None:
        if newest_first != self.newest_first:
            self._change_layout(self._shown, newest_first)

    def accepts(self, e: Event) -> bool:
        if self.min_rank and severity_rank(e.severity) < self.min_rank:
            return False
        if self.server is not None and (e.server or APPLIANCE) != self.server:
            return False
        return not self._needle or self._needle in e.message.casefold() or self._needle in e.code.casefold()

    def _accepted(self, first: int, end: int) -> list[int]:
        """The positions of the model's rows ``first..end-1`` that pass the filter."""
        at, offset = self.events.event_at, self._offset
        return [row + offset for row in range(first, end) if self.accepts(at(row))]

    def shown_events(self) -> list[Event]:
        """The events shown, oldest first (whichever way the view reads them)."""
        at, offset = self.events.event_at, self._offset
        return [at(pos - offset) for pos in self._shown]

    def event_at(self, row: int) -> Event:
        """The event shown at ``row``."""
        return self.events.event_at(self._shown[self._slot(row, self.newest_first)] - self._offset)

    def _slot(self, row: int, newest_first: bool) -> int:
        """Where the event shown at ``row`` sits in :attr:`_shown` (the other way round, newest first)."""
        return len(self._shown) - 1 - row if newest_first else row

    # --- following the model -------------------------------------------------------------------------
    def _begin_reset(self, *_: object) -> None:
        if not self._resetting:
            self._resetting = True
            self.beginResetModel()

    def _end_reset(self, *_: object) -> None:
        self._offset = 0
        self._removing = 0
        self._shown = self._accepted(0, self.events.rowCount())
        if self._resetting:
            self._resetting = False
            self.endResetModel()

    def _on_rows_about_to_be_removed(self, parent: Index, first: int, last: int) -> None:
        if parent.isValid():
            return
        if first != 0:  # the model drops its oldest rows only; anything else: start again
            self._begin_reset()
            return
        j = bisect.bisect_left(self._shown, last + 1 + self._offset)  # the oldest j shown go
        if j:
            n = len(self._shown)
            self.beginRemoveRows(QModelIndex(), *((n - j, n - 1) if self.newest_first else (0, j - 1)))
            self._removing = j

    def _on_rows_removed(self, parent: Index, first: int, last: int) -> None:
        if parent.isValid():
            return
        if self._resetting:
            self._end_reset()
            return
        self._offset += last - first + 1
        if self._removing:
            del self._shown[:self._removing]
            self._removing = 0
            self.endRemoveRows()

    def _on_rows_inserted(self, parent: Index, first: int, last: int) -> None:
        if parent.isValid():
            return
        if last != self.events.rowCount() - 1:  # the model appends only; anything else: start again
            self._begin_reset()
            self._end_reset()
            return
        new = self._accepted(first, last + 1)
        if new:
            n = len(self._shown)
            self.beginInsertRows(QModelIndex(), *((0, len(new) - 1) if self.newest_first else (n, n + len(new) - 1)))
            self._shown.extend(new)
            self.endInsertRows()

    def _refilter(self, *_: object) -> None:
        self._change_layout(self._accepted(0, self.events.rowCount()), self.newest_first)

    def _change_layout(self, shown: list[int], newest_first: bool) -> None:
        """Show ``shown`` (positions, oldest first) in that order, as one layout change that keeps the indexes of
        the rows that stay."""
        self.layoutAboutToBeChanged.emit()
        before = self.persistentIndexList()
        moves: list[tuple[int, int] | None] = []  # (row, column) after, or None: the row goes
        for index in before:
            row = index.row()
            pos = self._shown[self._slot(row, self.newest_first)] if 0 <= row < len(self._shown) else -1
            i = bisect.bisect_left(shown, pos)
            found = i < len(shown) and shown[i] == pos
            moves.append(((len(shown) - 1 - i if newest_first else i), index.column()) if found else None)
        self._shown, self.newest_first = shown, newest_first
        self.changePersistentIndexList(before, [QModelIndex() if m is None else self.index(*m) for m in moves])
        self.layoutChanged.emit()

    # --- the proxy's contract ------------------------------------------------------------------------
    def mapToSource(self, proxy_index: Index) -> QModelIndex:
        row = proxy_index.row()
        if not proxy_index.isValid() or not 0 <= row < len(self._shown):
            return QModelIndex()
        return self.events.index(self._shown[self._slot(row, self.newest_first)] - self._offset, proxy_index.column())

    def mapFromSource(self, source_index: Index) -> QModelIndex:
        if not source_index.isValid():
            return QModelIndex()
        pos = source_index.row() + self._offset
        i = bisect.bisect_left(self._shown, pos)
        if i == len(self._shown) or self._shown[i] != pos:
            return QModelIndex()
        return self.index(self._slot(i, self.newest_first), source_index.column())

    def index(self, row: int, column: int, parent: Index = QModelIndex()) -> QModelIndex:  # noqa: B008
        if parent.isValid() or not 0 <= row < len(self._shown) or not 0 <= column < self.columnCount():
            return QModelIndex()
        return self.createIndex(row, column)

    def parent(self, child: Index | None = None) -> Any:
        if child is None:  # QObject.parent()
            return QObject.parent(self)
        return QModelIndex()

    def sibling(self, row: int, column: int, index: Index) -> QModelIndex:
        return self.index(row, column)

    def rowCount(self, parent: Index = QModelIndex()) -> int:  # noqa: B008
        return 0 if parent.isValid() else len(self._shown)

    def columnCount(self, parent: Index = QModelIndex()) -> int:  # noqa: B008
        return 0 if parent.isValid() else len(EventsModel.HEADERS)

    def hasChildren(self, parent: Index = QModelIndex()) -> bool:  # noqa: B008
        return not parent.isValid() and bool(self._shown)

    def headerData(self, section: int, orientation: Qt.Orientation, role: int = Qt.ItemDataRole.DisplayRole) -> Any:
        if orientation == Qt.Orientation.Horizontal:
            return self.events.headerData(section, orientation, role)
        return None
