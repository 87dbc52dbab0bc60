"""Servers: the inventory of registered source servers, live.

The admin finds servers (a search over name, hostname, OS and address; health and state filters), acts on one or
several of them (Enable replication, Resync, Disable, Update mobility; Forget on one) from the buttons, the rows'
context menu or the keyboard, and opens one's details (double-click, Enter, Show details: :attr:`detail_requested`).

A command on several servers asks the engine for each in turn, with the actions waiting and a status line counting
("Resyncing 2 of 5…"); a server the engine refuses gets one line naming it, and the others go on.
"""

from __future__ import annotations

import asyncio
import contextlib
import sys
from collections.abc import Awaitable, Callable, Coroutine, Iterator
from dataclasses import dataclass
from typing import Any

from PySide6.QtCore import QItemSelectionModel, QModelIndex, QPoint, QSettings, Qt, QTimer, Signal
from PySide6.QtGui import QAction, QFont, QFontMetrics, QGuiApplication, QKeySequence, QShortcut
from PySide6.QtWidgets import (
    QAbstractItemView,
    QComboBox,
    QHBoxLayout,
    QLabel,
    QLineEdit,
    QMenu,
    QPushButton,
    QStackedLayout,
    QStyle,
    QVBoxLayout,
    QWidget,
)

from app.bridge import EngineBridge, EngineError, ServerState, ServerStatus
from app.errors import show_error
from app.models.servers import (
    HEALTH_FILTERS,
    STATE_FILTERS,
    KeyRole,
    ProgressRole,
    ServerFilter,
    ServersModel,
    SortRole,
    short_age_text,
)
from app.widgets.dialogs import choose, confirm
from app.widgets.formatting import age_text, duration_text, state_text, tr
from app.widgets.progress_delegate import ProgressDelegate
from app.widgets.record_table import Columns, RecordTable

#: A confirmation lists at most this many names, then says how many more.
LISTED_NAMES = 12
#: How each filter's choices read; translated when shown.
HEALTH_CHOICES = {"all": "All health", "healthy": "Healthy", "warning": "Warning", "critical": "Critical"}
STATE_CHOICES = {"all": "All states", "replicating": "Replicating", "not-replicating": "Not replicating",
                 "attention": "Needs attention"}
#: Mobility updates that Update mobility installs (again).
OUTDATED = ("update-available", "update-failed")


@dataclass(frozen=True)
class Command:
    """How a command on servers reads while it runs and once it ended; translated when shown."""

    doing: str  #: "Resyncing %d of %d…"
    done_one: str  #: all done, one server: its name
    done_all: str  #: all done, several: how many
    done_some: str  #: some failed: how many succeeded of how many
    failed: str  #: one line per server the engine refused: its name and the engine's message


ENABLE = Command("Enabling %d of %d…", "Replication of %s is enabled; it starts at the server's next heartbeat.",
                 "Replication is enabled on %d servers; each starts at its next heartbeat.",
                 "Replication is enabled on %d of %d servers.", "Could not enable replication of %s: %s")
RESYNC = Command("Resyncing %d of %d…", "Resync of %s started.", "Resync started on %d servers.",
                 "Resync started on %d of %d servers.", "Could not resync %s: %s")
DISABLE = Command("Disabling %d of %d…", "Replication of %s is disabled.", "Replication is disabled on %d servers.",
                  "Replication is disabled on %d of %d servers.", "Could not disable replication of %s: %s")
UPDATE_MOBILITY = Command("Updating mobility %d of %d…",
                          "%s installs the new mobility version at its next heartbeat.",
                          "%d servers install the new mobility version at their next heartbeat.",
                          "%d of %d servers install the new mobility version at their next heartbeat.",
                          "Could not update the mobility service of %s: %s")
FORGET = Command("Forgetting %d of %d…", "%s is forgotten.", "%d servers are forgotten.",
                 "%d of %d servers are forgotten.", "Could not forget %s: %s")


def names_text(names: list[str], limit: int = LISTED_NAMES) -> str:
    """The names one per line; beyond ``limit``, how many more."""
    shown = names if len(names) <= limit else names[:limit - 1]
    text = "\n".join(f"  {name}" for name in shown)
    if len(shown) < len(names):
        text += "\n  " + tr("…and %d more") % (len(names) - len(shown))
    return text


def can_enable(s: ServerStatus) -> bool:
    return not s.replicating


def can_resync(s: ServerStatus) -> bool:
    return s.replicating and s.state != ServerState.RESYNCING


def can_disable(s: ServerStatus) -> bool:
    return s.replicating


def can_update_mobility(s: ServerStatus) -> bool:
    return s.mobility_update in OUTDATED


class ServersPage(QWidget):
    #: The admin asked for a server's details (double-click, Enter or Show details): its name.
    detail_requested = Signal(str)

    def __init__(self, bridge: EngineBridge, parent: QWidget | None = None, *,
                 settings: QSettings | None = None) -> None:
        super().__init__(parent)
        self.bridge = bridge
        #: What the table shows of the servers.
        self.filter = ServerFilter()
        #: A command runs: the actions wait.
        self.busy = False
        #: Every command under way, referenced until it ends.
        self.tasks: set[asyncio.Task[None]] = set()
        self._menu: QMenu | None = None
        self._showing_filter = False

        # The table.
        self.model = ServersModel(self)
        self.table = RecordTable(self.model, sort_role=SortRole, sort_column=ServersModel.NAME,
                                 order=Qt.SortOrder.AscendingOrder, object_name="servers_table")
        self.table.setItemDelegateForColumn(ServersModel.PROGRESS, ProgressDelegate(ProgressRole, self.table))
        # The filter looks at the whole record, which changes only with an update (dataChanged for every role); the
        # ages' repaint every second (DisplayRole only) must not filter a thousand rows again.
        self.table.proxy.setFilterRole(KeyRole)
        self.table.setSelectionMode(QAbstractItemView.SelectionMode.ExtendedSelection)
        self.table.setTabKeyNavigation(False)  # Tab leaves the table for the buttons
        self.table.setAccessibleName(tr("Servers"))
        self.table.setContextMenuPolicy(Qt.ContextMenuPolicy.CustomContextMenu)
        self.table.customContextMenuRequested.connect(self.on_table_custom_context_menu_requested)
        self.table.doubleClicked.connect(self.on_table_double_clicked)
        self.table.remember_columns(self.default_columns(), settings if settings is not None else QSettings(),
                                    "servers")

        # The actions: the same on the buttons, in the rows' menu and on the keys.
        self.details_action = self._action(tr("Show details"), "show_details", self.on_details_action_triggered,
                                           tr("Open the selected server's details."),
                                           keys=[QKeySequence(Qt.Key.Key_Return), QKeySequence(Qt.Key.Key_Enter)])
        self.copy_action = self._action(tr("Copy name"), "copy_name", self.copy_names,
                                        tr("Copy the selected servers' names."),
                                        keys=[QKeySequence(QKeySequence.StandardKey.Copy)])
        self.enable_action = self._action(tr("Enable replication…"), "enable_replication", self.on_enable_requested,
                                          tr("Replicate the selected servers that do not replicate yet, with the "
                                             "policy you choose."))
        self.resync_action = self._action(tr("Resync…"), "resync_replication", self.on_resync_requested,
                                          tr("Send every block of the selected servers again (after an error). "
                                             "Recovery points are kept."))
        self.disable_action = self._action(tr("Disable…"), "disable_replication", self.on_disable_requested,
                                           tr("Stop replicating the selected servers and delete their recovery "
                                              "points."), keys=[QKeySequence(QKeySequence.StandardKey.Delete)])
        self.update_mobility_action = self._action(
            tr("Update mobility"), "update_mobility", self.on_update_mobility_requested,
            tr("Install the mobility version the appliance offers on the selected servers."))
        self.forget_action = self._action(tr("Forget…"), "forget_server", self.on_forget_requested,
                                          tr("Revoke the selected server's certificate and remove it from the list "
                                             "(one server at a time)."))
        self.enable_button = self._button(self.enable_action)
        self.resync_button = self._button(self.resync_action)
        self.disable_button = self._button(self.disable_action)
        self.update_mobility_button = self._button(self.update_mobility_action)
        self.forget_button = self._button(self.forget_action)

        # Finding servers.
        self.search = QLineEdit(objectName="servers_search", clearButtonEnabled=True)
        self.search.setPlaceholderText(tr("Search name, hostname, OS or address"))
        self.search.setAccessibleName(tr("Search servers"))
        self.search.setToolTip(tr("Shows the servers whose name, hostname, OS or address holds every word you type "
                                  "(Ctrl+F)."))
        self.search.setMinimumWidth(self.search.fontMetrics().horizontalAdvance(self.search.placeholderText()) + 48)
        self.search.textChanged.connect(self._apply_filter)
        self.search.returnPressed.connect(self.focus_table)
        QShortcut(QKeySequence(Qt.Key.Key_Escape), self.search, self.search.clear,
                  context=Qt.ShortcutContext.WidgetShortcut)
        self.health_filter = self._combo("health_filter", HEALTH_CHOICES, tr("Filter by health"))
        self.state_filter = self._combo("state_filter", STATE_CHOICES, tr("Filter by state"))
        self.clear_filters_button = QPushButton(tr("Clear filters"), objectName="clear_filters")
        self.clear_filters_button.setAccessibleName(tr("Clear the search and the filters"))
        self.clear_filters_button.clicked.connect(lambda: self.show_filter("all"))
        self.clear_filters_button.hide()
        self.count = QLabel(objectName="servers_count")
        find_shortcut = QShortcut(QKeySequence(QKeySequence.StandardKey.Find), self, self.focus_search)
        find_shortcut.setContext(Qt.ShortcutContext.WindowShortcut)  # only while the page shows

        self.status = QLabel(objectName="servers_status", wordWrap=True)
        self.status.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        self.status.setAccessibleName(tr("What the last command did"))
        self.status.hide()

        self.empty = QLabel(tr("No source servers are registered yet.\n\nOn the Setup page you find the command "
                               "to run on a source server;\nit appears here as soon as it registers."),
                            alignment=Qt.AlignmentFlag.AlignCenter, objectName="empty_hint")

        # Layout: the title and the actions; the search and filters; what a command did; the table.
        bar = QHBoxLayout()
        bar.addWidget(QLabel(tr("Replicating servers"), objectName="page_title"))
        bar.addStretch(1)
        for button in (self.enable_button, self.resync_button, self.disable_button, self.update_mobility_button,
                       self.forget_button):
            bar.addWidget(button)
        finder = QHBoxLayout()
        finder.setContentsMargins(0, 0, 0, 0)
        finder.addWidget(self.search)
        finder.addSpacing(8)
        finder.addWidget(QLabel(tr("Health:"), buddy=self.health_filter))
        finder.addWidget(self.health_filter)
        finder.addSpacing(8)
        finder.addWidget(QLabel(tr("Show:"), buddy=self.state_filter))
        finder.addWidget(self.state_filter)
        finder.addWidget(self.clear_filters_button)
        finder.addStretch(1)
        finder.addWidget(self.count)
        listing = QWidget(objectName="servers_listing")
        listing_layout = QVBoxLayout(listing)
        listing_layout.setContentsMargins(0, 0, 0, 0)
        listing_layout.addLayout(finder)
        listing_layout.addWidget(self.status)
        listing_layout.addWidget(self.table, 1)
        self.listing = listing
        self.stack = QStackedLayout()
        self.stack.addWidget(self.empty)
        self.stack.addWidget(listing)
        layout = QVBoxLayout(self)
        layout.addLayout(bar)
        layout.addLayout(self.stack, 1)
        for first, second in ((self.search, self.health_filter), (self.health_filter, self.state_filter),
                              (self.state_filter, self.clear_filters_button), (self.clear_filters_button, self.table),
                              (self.table, self.enable_button), (self.enable_button, self.resync_button),
                              (self.resync_button, self.disable_button),
                              (self.disable_button, self.update_mobility_button),
                              (self.update_mobility_button, self.forget_button)):
            QWidget.setTabOrder(first, second)

        # Live: the engine's updates; the counts and actions follow the rows.
        bridge.servers_reset.connect(self.model.set_rows)
        bridge.server_updated.connect(self.model.update_server)
        bridge.server_removed.connect(self.model.remove_server)
        proxy = self.table.proxy
        for signal in (self.model.modelReset, self.model.rowsInserted, self.model.rowsRemoved, proxy.modelReset,
                       proxy.rowsInserted, proxy.rowsRemoved):
            signal.connect(self._update_counts)
        # Many updates a second arrive with a thousand servers: the actions are weighed once per turn of the loop.
        self._actions_later = QTimer(self, singleShot=True, interval=0)
        self._actions_later.timeout.connect(self._update_actions)
        self.model.dataChanged.connect(lambda *_: self._actions_later.start())
        self.table.selectionModel().selectionChanged.connect(self._update_actions)
        self.table.selectionModel().currentRowChanged.connect(self._update_actions)
        # Ages ("12 s ago") are worked out as a cell is painted: repainting the rows in sight moves them with the
        # clock, where the model's refresh_ages() would have the proxy filter and sort every row each second.
        self._ages = QTimer(self, interval=1000)
        self._ages.timeout.connect(self.table.viewport().update)
        self._ages.start()
        self._update_counts()

    def __repr__(self) -> str:
        return (f"<ServersPage shown={self.table.proxy.rowCount()}/{self.model.rowCount()} filter={self.filter} "
                f"selected={[s.name for s in self.selected_servers()]} busy={self.busy}>")

    # --- building ---------------------------------------------------------------------------------
    def _action(self, text: str, name: str, slot: Callable[[], object], tip: str, *,
                keys: list[QKeySequence] | None = None) -> QAction:
        action = QAction(text, self)
        action.setObjectName(name)
        action.setToolTip(tip)
        action.triggered.connect(lambda *_: slot())
        if keys:
            action.setShortcuts(keys)
            action.setShortcutContext(Qt.ShortcutContext.WidgetShortcut)  # on the table only: not while typing
            self.table.addAction(action)
        action.setEnabled(False)
        return action

    def _button(self, action: QAction) -> QPushButton:
        button = QPushButton(action.text(), objectName=action.objectName(), enabled=False)
        button.setToolTip(action.toolTip())
        button.setAccessibleName(action.text().rstrip("…"))
        button.setAccessibleDescription(action.toolTip())
        button.clicked.connect(action.trigger)
        return button

    def _combo(self, name: str, choices: dict[str, str], accessible: str) -> QComboBox:
        combo = QComboBox(objectName=name)
        for value, text in choices.items():
            combo.addItem(tr(text), value)
        combo.setAccessibleName(accessible)
        combo.currentIndexChanged.connect(self._apply_filter)
        return combo

    def default_columns(self) -> Columns:
        """The columns as they start: wide enough for typical values in this font, the rarely needed ones hidden
        (the header's menu shows them), Health taking the room left (its long causes elide; the tooltip has them)
        so that no horizontal scrollbar shows in the usual window sizes."""
        m = ServersModel
        sample_size = "1023.9 GiB"
        ages = [age_text(0.0, 59 * 60), short_age_text(0.0, 47 * 3600), short_age_text(0.0, 400 * 86400)]
        samples = {
            m.NAME: ["web-prod-eu-01"],
            m.OS: ["Debian GNU/Linux 12 (bookworm)", "Ubuntu 22.04.4 LTS", "Windows Server 2022"],
            m.SIZE: [sample_size],
            m.STATE: [state_text(state) for state in ServerState],
            m.PROGRESS: ["38% · 390 GiB / 1 TiB"],  # and the time left when it fits (the tooltip has it)
            m.THROUGHPUT: [sample_size + "/s"],
            m.RPO: [duration_text(59 * 60)],
            m.LAST_POINT: ages,
            m.MOBILITY: ["0.1.0 · update available"],
            m.LAST_HEARTBEAT: ages,
        }
        cells = self.table.fontMetrics()
        margin = 2 * (self.table.style().pixelMetric(QStyle.PixelMetric.PM_FocusFrameHMargin, None, self.table) + 1)
        bold = QFont(self.table.horizontalHeader().font())
        bold.setWeight(QFont.Weight.DemiBold)  # as the style sheet draws the header
        titles = QFontMetrics(bold)
        widths = {column: max(titles.horizontalAdvance(tr(m.HEADERS[column])) + 16,
                              max(cells.horizontalAdvance(text) for text in texts) + margin + 6)
                  for column, texts in samples.items()}
        widths[m.PROGRESS] += 18  # the bar's own margins
        return Columns(keys=m.KEYS, widths=widths, hidden=frozenset({m.SIZE, m.THROUGHPUT}),
                       always_shown=frozenset({m.NAME}), stretch=m.HEALTH)

    # --- finding servers ------------------------------------------------------------------------------
    def show_filter(self, health: str = "all", *, state: str = "all", text: str = "") -> None:
        """List the servers of ``health`` (one of ``all``, ``healthy``, ``warning``, ``critical``), in ``state``
        (``all``, ``replicating``, ``not-replicating``, ``attention``) and matching ``text``; e.g. another page
        opens this one on ``show_filter("critical")``. Raises ValueError for a value it does not know."""
        wanted = ServerFilter(text, health, state)  # checks the values
        self._showing_filter = True  # one filter change, not three (signals stay on: the search box needs them)
        try:
            self.health_filter.setCurrentIndex(self.health_filter.findData(health))
            self.state_filter.setCurrentIndex(self.state_filter.findData(state))
            self.search.setText(text)
        finally:
            self._showing_filter = False
        self._set_filter(wanted)

    def _apply_filter(self) -> None:
        if self._showing_filter:
            return
        health, state = self.health_filter.currentData(), self.state_filter.currentData()
        assert health in HEALTH_FILTERS and state in STATE_FILTERS
        self._set_filter(ServerFilter(self.search.text(), health, state))

    def _set_filter(self, wanted: ServerFilter) -> None:
        if wanted == self.filter:
            return
        self.filter = wanted
        model = self.model
        self.table.proxy.set_row_filter((lambda row: wanted.accepts(model.server(row))) if wanted.active else None)
        self.clear_filters_button.setVisible(wanted.active)
        self._update_counts()

    def focus_search(self) -> None:
        """Ctrl+F: to the search box, its text selected (typing replaces it)."""
        self.search.setFocus(Qt.FocusReason.ShortcutFocusReason)
        self.search.selectAll()

    def focus_table(self) -> None:
        """Enter in the search box: to the table, on its first row when none is current."""
        self.table.setFocus(Qt.FocusReason.OtherFocusReason)
        if not self.table.currentIndex().isValid() and self.table.proxy.rowCount():
            self.table.selectionModel().setCurrentIndex(
                self.table.proxy.index(0, 0),
                QItemSelectionModel.SelectionFlag.ClearAndSelect | QItemSelectionModel.SelectionFlag.Rows)

    def _update_counts(self, *_: object) -> None:
        total, shown = self.model.rowCount(), self.table.proxy.rowCount()
        self.stack.setCurrentWidget(self.listing if total else self.empty)
        if self.filter.active:
            self.count.setText(tr("%d of %d servers") % (shown, total))
        else:
            self.count.setText(tr("1 server") if total == 1 else tr("%d servers") % total)
        self._update_actions()

    # --- the selection ------------------------------------------------------------------------------
    def _selected_rows(self) -> list[int]:
        """The selected rows of the table, top to bottom (whatever columns are hidden)."""
        rows = {r for span in self.table.selectionModel().selection() for r in range(span.top(), span.bottom() + 1)}
        return sorted(rows)

    def selected_servers(self) -> list[ServerStatus]:
        """The selected servers, in the order shown."""
        return [self.model.server(self.table.source_row(r)) for r in self._selected_rows()]

    def selected(self) -> ServerStatus | None:
        """The one selected server; None when none or several are selected (Forget waits)."""
        servers = self.selected_servers()
        return servers[0] if len(servers) == 1 else None

    def selected_name(self) -> str | None:
        server = self.selected()
        return server.name if server else None

    def current_name(self) -> str | None:
        """The server of the current row (where the keyboard is), else the one selected."""
        index = self.table.currentIndex()
        if index.isValid():
            return self.model.server(self.table.source_row(index.row())).name
        return self.selected_name()

    def outdated(self) -> list[str]:
        """The selected servers whose mobility service has an update it may install."""
        return [s.name for s in self.selected_servers() if can_update_mobility(s)]

    def _update_actions(self, *_: object) -> None:
        servers = self.selected_servers()
        free = not self.busy
        for action, button, applies in (
                (self.enable_action, self.enable_button, can_enable),
                (self.resync_action, self.resync_button, can_resync),
                (self.disable_action, self.disable_button, can_disable),
                (self.update_mobility_action, self.update_mobility_button, can_update_mobility)):
            action.setEnabled(free and any(applies(s) for s in servers))
            button.setEnabled(action.isEnabled())
        self.forget_action.setEnabled(free and len(servers) == 1)
        self.forget_button.setEnabled(self.forget_action.isEnabled())
        self.details_action.setEnabled(self.current_name() is not None)
        self.copy_action.setEnabled(bool(servers))
        self.copy_action.setText(tr("Copy names") if len(servers) > 1 else tr("Copy name"))

    # --- the rows' menu, details, copying ------------------------------------------------------------
    def on_table_custom_context_menu_requested(self, pos: QPoint) -> None:
        index = self.table.indexAt(pos)
        if not index.isValid():
            return
        selection = self.table.selectionModel()
        if index.row() in self._selected_rows():  # the menu acts on the selection it was opened on
            selection.setCurrentIndex(index, QItemSelectionModel.SelectionFlag.NoUpdate)
        else:
            selection.setCurrentIndex(index, QItemSelectionModel.SelectionFlag.ClearAndSelect
                                      | QItemSelectionModel.SelectionFlag.Rows)
        self.row_menu().popup(self.table.viewport().mapToGlobal(pos))

    def row_menu(self) -> QMenu:
        """The rows' context menu: details and name of the current server, then the actions on the selection."""
        if self._menu is not None:
            self._menu.deleteLater()
        self._menu = menu = QMenu(self)
        menu.setObjectName("servers_menu")
        menu.addAction(self.details_action)
        menu.addAction(self.copy_action)
        menu.addSeparator()
        for action in (self.enable_action, self.resync_action, self.disable_action, self.update_mobility_action):
            menu.addAction(action)
        menu.addSeparator()
        menu.addAction(self.forget_action)
        return menu

    def on_table_double_clicked(self, index: QModelIndex) -> None:
        if index.isValid():
            self.detail_requested.emit(self.model.server(self.table.source_row(index.row())).name)

    def on_details_action_triggered(self) -> None:
        name = self.current_name()
        if name is not None:
            self.detail_requested.emit(name)

    def copy_names(self) -> None:
        """The selected servers' names to the clipboard, one a line."""
        names = [s.name for s in self.selected_servers()]
        if names:
            QGuiApplication.clipboard().setText("\n".join(names))

    # --- commands: thin slots, each starting one referenced task ----------------------------------------
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

    def on_enable_requested(self) -> None:
        self.start(self.enable_selected())

    def on_resync_requested(self) -> None:
        self.start(self.resync_selected())

    def on_disable_requested(self) -> None:
        self.start(self.disable_selected())

    def on_update_mobility_requested(self) -> None:
        self.start(self.update_mobility_selected())

    def on_forget_requested(self) -> None:
        self.start(self.forget_selected())

    @contextlib.contextmanager
    def _busy(self) -> Iterator[None]:
        """The actions wait while a command (its questions included) runs."""
        self.busy = True
        self._update_actions()
        try:
            yield
        finally:
            self.busy = False
            self._update_actions()

    def _show_status(self, level: str, text: str) -> None:
        self.status.setText(text)
        self.status.setProperty("level", level)
        self.status.style().polish(self.status)
        self.status.setVisible(bool(text))

    async def _run_each(self, command: Command, names: list[str], call: Callable[[str], Awaitable[object]]) -> None:
        """``call(name)`` for each of ``names`` in turn, the status line counting; a server the engine refuses gets
        one line naming it, and the others go on."""
        done: list[str] = []
        failures: list[str] = []
        unexpected: Exception | None = None
        ended = False
        try:
            for i, name in enumerate(names, 1):
                self._show_status("busy", tr(command.doing) % (i, len(names)))
                try:
                    await call(name)
                except EngineError as exc:
                    failures.append(tr(command.failed) % (name, exc.message))
                except Exception as exc:  # a bug: the one error dialog shows it (and logs it) once the run ends
                    failures.append(tr(command.failed) % (name, tr("something went wrong in the console.")))
                    unexpected = unexpected or exc
                else:
                    done.append(name)
            ended = True
        finally:
            if not ended:  # cancelled: no count left standing
                self._show_status("", "")
        lines = []
        if len(done) == len(names):
            lines.append(tr(command.done_one) % done[0] if len(done) == 1 else tr(command.done_all) % len(done))
        elif done:
            lines.append(tr(command.done_some) % (len(done), len(names)))
        self._show_status("error" if failures else "ok", "\n".join(lines + failures))
        if unexpected is not None:
            show_error(self, unexpected)

    async def enable_selected(self) -> None:
        """Enable replication of the selected servers that do not replicate, with one policy the admin chooses."""
        names = [s.name for s in self.selected_servers() if can_enable(s)]
        if self.busy or not names:
            return
        with self._busy():
            try:
                policies = [p.name for p in await self.bridge.policies()]
            except Exception as exc:
                show_error(self, exc)
                return
            if len(names) == 1:
                title = tr("Enable replication of %s") % names[0]
                text = tr("Choose the replication policy. Initial replication starts at the server's next "
                          "heartbeat.")
            else:
                title = tr("Enable replication of %d servers") % len(names)
                text = tr("Choose the replication policy for these servers. Initial replication starts at each "
                          "one's next heartbeat.") + "\n\n" + names_text(names)
            policy = await choose(self, title, text, policies, tr("Enable"))
            if policy is None:
                return
            await self._run_each(ENABLE, names, lambda name: self.bridge.enable(name, policy))

    async def resync_selected(self) -> None:
        """Resync the selected servers that replicate and are not resyncing already, after one confirmation."""
        names = [s.name for s in self.selected_servers() if can_resync(s)]
        if self.busy or not names:
            return
        with self._busy():
            if len(names) == 1:
                title = tr("Resync %s?") % names[0]
                text = tr("%s sends every block again and the appliance compares it with its copy; this takes as "
                          "long as an initial replication. Recovery points are kept.") % names[0]
            else:
                title = tr("Resync %d servers?") % len(names)
                text = tr("These servers send every block again and the appliance compares it with its copy; this "
                          "takes as long as an initial replication. Recovery points are kept.") + "\n\n" + \
                    names_text(names)
            if await confirm(self, title, text, tr("Resync")):
                await self._run_each(RESYNC, names, self.bridge.resync)

    async def disable_selected(self) -> None:
        """Disable replication of the selected servers that replicate, after one confirmation naming them."""
        names = [s.name for s in self.selected_servers() if can_disable(s)]
        if self.busy or not names:
            return
        with self._busy():
            if len(names) == 1:
                title = tr("Disable replication of %s?") % names[0]
                text = tr("Replication stops and %s's recovery points and cached data on the appliance are "
                          "deleted.") % names[0]
            else:
                title = tr("Disable replication of %d servers?") % len(names)
                text = tr("Replication stops and the recovery points and cached data of these servers on the "
                          "appliance are deleted:") + "\n\n" + names_text(names)
            if await confirm(self, title, text, tr("Disable")):
                await self._run_each(DISABLE, names, self.bridge.disable)

    async def update_mobility_selected(self) -> None:
        """Install the offered mobility version on the selected servers that have an update (or a failed one)."""
        names = self.outdated()
        if self.busy or not names:
            return
        with self._busy():
            await self._run_each(UPDATE_MOBILITY, names, lambda name: self.bridge.update_mobility([name]))

    async def forget_selected(self) -> None:
        """Forget the one selected server, after a confirmation."""
        name = self.selected_name()
        if self.busy or name is None:
            return
        with self._busy():
            if await confirm(self, tr("Forget %s?") % name,
                             tr("%s's certificate is revoked and the appliance refuses it from now on. To add it "
                                "again, register it anew from the source server.") % name, tr("Forget")):
                await self._run_each(FORGET, [name], self.bridge.forget_server)
