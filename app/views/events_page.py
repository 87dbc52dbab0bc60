"""Events: what happened on the appliance, newest first; narrowed by severity, server and a search, exported to
JSON or CSV as shown.

New events of the most serious severity are announced through :attr:`EventsPage.critical_added` (for the window's
navigation and tray), so the admin sees them without opening the page; the events the page is filled with
(history, and the engine's snapshot after a re-attach) are not announced.
"""

from __future__ import annotations

import asyncio
import dataclasses
import sys
import time
from collections.abc import Coroutine
from pathlib import Path
from typing import Any

from PySide6.QtCore import Qt, Signal
from PySide6.QtGui import QKeyEvent, QKeySequence, QShortcut
from PySide6.QtWidgets import (
    QComboBox,
    QHBoxLayout,
    QHeaderView,
    QLabel,
    QLineEdit,
    QMenu,
    QPushButton,
    QVBoxLayout,
    QWidget,
)

from app.bridge import EngineBridge, Event
from app.models.events import (
    APPLIANCE,
    SEVERITY_RANKS,
    EventsFilter,
    EventsModel,
    SortRole,
    is_critical,
    severity_rank,
)
from app.widgets.dialogs import confirm
from app.widgets.export import FORMATS, ask_export_path, export_records
from app.widgets.formatting import show_line, tr
from app.widgets.record_table import RecordTable

#: The severity filter's choices: the least serious severity rank each shows, and how it reads.
SEVERITY_FILTERS: dict[int, str] = {0: "All severities", 1: "Warnings and errors", 2: "Errors only"}
#: The fields of an exported event, in order: those ``godwit events --json`` prints.
EXPORT_FIELDS = tuple(f.name for f in dataclasses.fields(Event))


def count_text(shown: int, total: int, *, filtered: bool) -> str:
    """``12 of 480 events`` while a filter narrows them, else ``480 events``."""
    if filtered:
        return tr("%d of %d events") % (shown, total)
    return tr("1 event") if total == 1 else tr("%d events") % total


class SearchBox(QLineEdit):
    """A search field that Escape empties (and, once empty, passes on)."""

    def keyPressEvent(self, event: QKeyEvent) -> None:
        if event.key() == Qt.Key.Key_Escape and self.text():
            self.clear()
            return
        super().keyPressEvent(event)


class EventsPage(QWidget):
    #: A new event of the most serious severity arrived (an :class:`Event`); once per event, never for the events
    #: the page is filled with (history, or the engine's snapshot after a re-attach).
    critical_added = Signal(object)

    def __init__(self, bridge: EngineBridge, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.model = EventsModel(self)
        self.filter = EventsFilter(self.model, self)
        #: Whether the page holds the engine's events yet: events that arrive after that are new.
        self.filled = False
        #: Every command under way (exports), referenced until it ends.
        self.tasks: set[asyncio.Task[None]] = set()
        self.exporting = False
        self._servers: set[str] = set()
        self._export_folder = Path.home()

        # The filters, the search, the count and Export.
        self.severity_combo = QComboBox(objectName="events_severity")
        for rank, text in SEVERITY_FILTERS.items():
            self.severity_combo.addItem(tr(text), rank)
        self.severity_combo.setAccessibleName(tr("Severity filter"))
        self.severity_combo.setToolTip(tr("Show only the events this serious or more."))
        self.server_combo = QComboBox(objectName="events_server")
        self.server_combo.setAccessibleName(tr("Server filter"))
        self.server_combo.setToolTip(tr("Show only the events of one server, or of the appliance itself."))
        self.server_combo.setSizeAdjustPolicy(QComboBox.SizeAdjustPolicy.AdjustToContents)
        self._fill_servers()
        self.search = SearchBox(objectName="events_search", placeholderText=tr("Search codes and messages (Ctrl+F)"))
        self.search.setClearButtonEnabled(True)
        self.search.setAccessibleName(tr("Search events"))
        self.find_shortcut = QShortcut(QKeySequence(QKeySequence.StandardKey.Find), self)
        self.find_shortcut.activated.connect(self.on_find_shortcut_activated)
        self.count = QLabel(objectName="events_count")
        self.count.setAccessibleName(tr("Event count"))
        self.export_button = QPushButton(tr("Export"), objectName="export_events")
        self.export_button.setAccessibleName(tr("Export events"))
        self.export_button.setToolTip(tr("Write the events shown (as filtered) to a JSON or CSV file."))
        menu = QMenu(self.export_button)
        self.export_json_action = menu.addAction(tr("Export as JSON…"))
        self.export_json_action.triggered.connect(self.on_export_json_action_triggered)
        self.export_csv_action = menu.addAction(tr("Export as CSV…"))
        self.export_csv_action.triggered.connect(self.on_export_csv_action_triggered)
        self.export_button.setMenu(menu)
        self.message = QLabel(objectName="events_message", wordWrap=True)
        self.message.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        self.message.hide()
        bar = QHBoxLayout()
        bar.addWidget(self.severity_combo)
        bar.addWidget(self.server_combo)
        bar.addWidget(self.search, 1)
        bar.addWidget(self.count)
        bar.addWidget(self.export_button)

        # The events. Newest first by the model's own order; the Time header turns it round. Other columns do not
        # sort: the filters narrow them instead, and sorting 10,000 rows through a proxy takes seconds.
        self.table = RecordTable(self.filter, sort_role=SortRole, sort_column=-1, order=Qt.SortOrder.AscendingOrder,
                                 object_name="events_table")
        self.table.setAccessibleName(tr("Events"))
        self.table.setSortingEnabled(False)
        header = self.table.horizontalHeader()
        header.setSectionsClickable(True)
        header.setSortIndicatorShown(True)
        header.setSortIndicator(EventsModel.TIME, Qt.SortOrder.DescendingOrder)
        header.sectionClicked.connect(self.on_header_section_clicked)
        self._fit_columns()

        layout = QVBoxLayout(self)
        layout.addWidget(QLabel(tr("Events"), objectName="page_title"))
        layout.addLayout(bar)
        layout.addWidget(self.message)
        layout.addWidget(self.table, 1)

        self.severity_combo.currentIndexChanged.connect(self._apply_filter)
        self.server_combo.currentIndexChanged.connect(self._apply_filter)
        self.search.textChanged.connect(self._apply_filter)
        for signal in (self.filter.rowsInserted, self.filter.rowsRemoved, self.filter.modelReset,
                       self.filter.layoutChanged):
            signal.connect(self._show_count)
        self._show_count()
        bridge.events_reset.connect(self.on_bridge_events_reset)
        bridge.event_added.connect(self.on_bridge_event_added)

    def __repr__(self) -> str:
        return (f"<EventsPage shown={self.filter.rowCount()}/{self.model.rowCount()} "
                f"severity>={self.filter.min_rank} server={self.filter.server!r} search={self.filter.text!r} "
                f"filled={self.filled} exporting={len(self.tasks)}>")

    # --- the engine's events --------------------------------------------------------------------------
    def on_bridge_events_reset(self, events: list[Event]) -> None:
        """The engine's latest events (on attaching, and again on each re-attach): shown, never announced."""
        self.model.set_rows(events)
        self.filled = True
        self._servers = {e.server for e in self.model.events() if e.server}
        self._fill_servers()

    def on_bridge_event_added(self, event: Event) -> None:
        if not self.model.add_event(event):
            return  # the snapshot had it
        if event.server and event.server not in self._servers:
            self._servers.add(event.server)
            self._fill_servers()
        if self.filled and is_critical(event):
            self.critical_added.emit(event)

    # --- the filters ------------------------------------------------------------------------------------
    def show_filter(self, severity: str | None = None, server: str | None = None) -> None:
        """Show the events of at least ``severity`` (``"warning"``: warnings and errors, ``"error"``: errors only,
        None: all) about ``server`` (None: all; :data:`APPLIANCE`: the appliance's own), with no search text.
        For other pages, e.g. "this server's errors"; showing the page is theirs."""
        rank = 0 if severity is None else severity_rank(severity)
        if server is not None and server != APPLIANCE and server not in self._servers:
            self._servers.add(server)  # no event of it yet: the filter shows none until one comes
            self._fill_servers()
        for combo, value in ((self.severity_combo, rank), (self.server_combo, server)):
            combo.blockSignals(True)
            combo.setCurrentIndex(max(0, combo.findData(value)))
            combo.blockSignals(False)
        self.search.blockSignals(True)
        self.search.clear()
        self.search.blockSignals(False)
        self._apply_filter()

    def _fill_servers(self) -> None:
        """All servers, the appliance, then each server seen (by name); the choice stays."""
        chosen = self.server_combo.currentData() if self.server_combo.count() else None
        names = sorted(self._servers | ({chosen} if chosen else set()))
        self.server_combo.blockSignals(True)
        self.server_combo.clear()
        self.server_combo.addItem(tr("All servers"), None)
        self.server_combo.addItem(tr("Appliance"), APPLIANCE)
        for name in names:
            self.server_combo.addItem(name, name)
        self.server_combo.setCurrentIndex(max(0, self.server_combo.findData(chosen)))
        self.server_combo.blockSignals(False)

    def _apply_filter(self, *_: object) -> None:
        rank = self.severity_combo.currentData()
        self.filter.set_filter(min_rank=rank if isinstance(rank, int) else 0, server=self.server_combo.currentData(),
                               text=self.search.text())
        self._show_count()

    def _show_count(self, *_: object) -> None:
        shown = self.filter.rowCount()
        self.count.setText(count_text(shown, self.model.rowCount(), filtered=self.filter.active))
        self.export_button.setEnabled(shown > 0 and not self.exporting)

    def on_find_shortcut_activated(self) -> None:
        self.search.setFocus(Qt.FocusReason.ShortcutFocusReason)
        self.search.selectAll()

    def on_header_section_clicked(self, section: int) -> None:
        """The Time header turns the order round; the others keep it (the header shows the order in force)."""
        header = self.table.horizontalHeader()
        if section == EventsModel.TIME:
            self.filter.set_newest_first(header.sortIndicatorOrder() == Qt.SortOrder.DescendingOrder)
        order = Qt.SortOrder.DescendingOrder if self.filter.newest_first else Qt.SortOrder.AscendingOrder
        header.setSortIndicator(EventsModel.TIME, order)

    def _fit_columns(self) -> None:
        """Time as wide as a time, Severity as its longest word, Server a name; Message takes the rest."""
        cell, head = self.table.fontMetrics(), self.table.horizontalHeader().fontMetrics()
        pad = 24  # the cell's margins, and the header's sort arrow
        samples = {EventsModel.TIME: ["8888-88-88 88:88:88"],
                   EventsModel.SEVERITY: [s.capitalize() for s in SEVERITY_RANKS],
                   EventsModel.SERVER: ["web-server-01"]}  # a longer name is elided; the column can be widened
        for col, texts in samples.items():
            self.table.setColumnWidth(col, pad + max(head.horizontalAdvance(EventsModel.HEADERS[col]),
                                                     *(cell.horizontalAdvance(t) for t in texts)))
        self.table.horizontalHeader().setSectionResizeMode(EventsModel.MESSAGE, QHeaderView.ResizeMode.Stretch)

    # --- export -------------------------------------------------------------------------------------
    def start(self, coro: Coroutine[Any, Any, None]) -> asyncio.Task[None]:
        """Run a command of this page as a task it keeps until the task ends."""
        task = asyncio.ensure_future(coro)
        self.tasks.add(task)
        task.add_done_callback(self._finished)
        return task

    def _finished(self, task: asyncio.Task[None]) -> None:
        self.tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:  # a bug: shown like an async slot's
            exc = task.exception()
            assert exc is not None
            sys.excepthook(type(exc), exc, exc.__traceback__)

    def on_export_json_action_triggered(self) -> None:
        self.start(self.export("json"))

    def on_export_csv_action_triggered(self) -> None:
        self.start(self.export("csv"))

    def _say(self, level: str, text: str) -> None:
        show_line(self.message, level, text)

    async def export(self, fmt: str) -> None:
        """Ask where, then write the events shown (oldest first, as ``godwit events`` lists them) as ``fmt``; an
        existing file is replaced only once the admin confirms, and whole or not at all."""
        self.exporting = True
        self._show_count()
        self._say("", "")
        try:
            await self._export(fmt)
        finally:
            self.exporting = False
            self._show_count()

    async def _export(self, fmt: str) -> None:
        suffix = FORMATS[fmt][1]
        suggested = self._export_folder / f"godwit-events-{time.strftime('%Y-%m-%d-%H%M')}.{suffix}"
        path = await ask_export_path(self, tr("Export the events shown"), suggested, fmt)
        if path is None:
            return
        if path.is_dir():
            self._say("error", tr("%s is a folder. Choose a file name in it.") % path)
            return
        if path.exists() and not await confirm(
                self, tr("Replace %s?") % path.name,
                tr("%s already exists. Replace it with the events shown?") % path, tr("Replace")):
            return
        events = self.filter.shown_events()
        try:
            await asyncio.get_running_loop().run_in_executor(None, export_records, path, events, EXPORT_FIELDS, fmt)
        except OSError as exc:
            self._say("error", tr("Could not write %s (%s). Choose another folder and export again.")
                      % (path, exc.strerror or exc))
            return
        self._export_folder = path.parent
        self._say("ok", (tr("Exported 1 event to %s.") % path) if len(events) == 1
                  else tr("Exported %d events to %s.") % (len(events), path))
