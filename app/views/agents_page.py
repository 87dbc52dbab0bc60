"""Agents: the appliance's agents and their versions, updating them from the signed feed, rolling one back.

Everything shown comes from the engine's :class:`UpdatesStatus` (:attr:`EngineBridge.updates_changed`); the
commands return at once and the install's stages arrive through the push stream. While a command runs, the
controls that would start another one wait; while the engine installs, Update and Update all wait too.
"""

from __future__ import annotations

import asyncio
import sys
import time
from collections.abc import Coroutine
from functools import partial
from typing import Any

from PySide6.QtCore import QModelIndex, QPersistentModelIndex, QPoint, QSize, Qt, QTime, QTimer
from PySide6.QtWidgets import (
    QButtonGroup,
    QDialog,
    QDialogButtonBox,
    QGroupBox,
    QHBoxLayout,
    QHeaderView,
    QInputDialog,
    QLabel,
    QLineEdit,
    QMenu,
    QMessageBox,
    QPushButton,
    QRadioButton,
    QStyleOptionViewItem,
    QTimeEdit,
    QVBoxLayout,
    QWidget,
)
from qasync import asyncWrap

from app.bridge import AgentUpdate, EngineBridge, UpdatesStatus
from app.errors import show_error
from app.models.agents import ActionRole, AgentsModel, ProgressRole, SortRole
from app.widgets.dialogs import confirm
from app.widgets.formatting import age_text, duration_text, tr
from app.widgets.progress_delegate import ProgressDelegate
from app.widgets.record_table import RecordTable

#: Seconds between refreshes of the relative times on the page ("5 min ago").
REFRESH_S = 15


def checked_text(updates: UpdatesStatus, now: float | None = None) -> str:
    """``Last checked: 5 min ago (last successful: 2 h ago)``; the second part only when it differs."""
    if updates.last_check_at is None:
        return tr("Last checked: never")
    text = tr("Last checked: %s") % age_text(updates.last_check_at, now)
    if updates.last_success_at != updates.last_check_at or updates.check_error:
        text += " " + tr("(last successful: %s)") % age_text(updates.last_success_at, now)
    return text


def mode_text(updates: UpdatesStatus, now: float | None = None) -> str:
    """What the mode means for the admin; in auto mode, when the pending updates install."""
    if updates.mode != "auto":
        return tr("Updates install only when you press Update or Update all.")
    text = tr("Updates install by themselves every day at %s (the appliance's local time); replication pauses "
              "only for a reconnect.") % updates.window
    if updates.next_install_at is not None:
        now = time.time() if now is None else now
        left = updates.next_install_at - now
        when = tr("in %s") % duration_text(left) if left > 0 else tr("any moment now")
        text += " " + tr("The pending updates install at %s (%s).") % (_clock_text(updates.next_install_at, now),
                                                                      when)
    return text


def _clock_text(ts: float, now: float) -> str:
    """An absolute time: the time of day when it is the same day as ``now``, else the date too."""
    same_day = time.localtime(ts)[:3] == time.localtime(now)[:3]
    return time.strftime("%H:%M" if same_day else "%Y-%m-%d %H:%M", time.localtime(ts))


def _outdated(updates: UpdatesStatus | None) -> list[AgentUpdate]:
    """The agents Update all would install: an available version, or a failed install to try again."""
    if updates is None:
        return []
    return [a for a in updates.agents if a.status in ("update-available", "update-failed")]


def _installing(updates: UpdatesStatus | None) -> bool:
    return updates is not None and any(a.status == "updating" for a in updates.agents)


class _StatusDelegate(ProgressDelegate):
    """The status cell: a bar while an install measures its progress; room above and below a wrapped reason."""

    def sizeHint(self, option: QStyleOptionViewItem, index: QModelIndex | QPersistentModelIndex) -> QSize:
        hint = super().sizeHint(option, index)
        return QSize(hint.width(), hint.height() + 10)


class AgentsPage(QWidget):
    #: Groups of controls, each waiting while one of its commands runs.
    INSTALL, CHECK, MODE, FEED = "install", "check", "mode", "feed"

    def __init__(self, bridge: EngineBridge, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.bridge = bridge
        #: The agent updates as the engine last reported them.
        self.updates: UpdatesStatus | None = None
        #: The groups whose command runs now (see :attr:`INSTALL`…).
        self.busy: set[str] = set()
        #: Every command under way, referenced until it ends.
        self.tasks: set[asyncio.Task[None]] = set()
        #: The button of each row that has one, by agent name.
        self.row_buttons: dict[str, QPushButton] = {}
        self._menu: QMenu | None = None

        title = QLabel(tr("Agents"), objectName="page_title")
        intro = QLabel(tr("The appliance's agents and their versions. Updates come from a signed feed and are "
                          "verified before they install; an agent that fails its health check after an update goes "
                          "back to the version it ran."), wordWrap=True)

        # Installing, and asking the feed.
        installing = QGroupBox(tr("Updates"))
        self.update_all_button = QPushButton(tr("Update all"), objectName="update_all", enabled=False)
        self.update_all_button.setToolTip(tr("Install the available version of every outdated agent, together."))
        self.update_all_button.clicked.connect(self.on_update_all_button_clicked)
        self.advice = QLabel(objectName="hint", wordWrap=True)
        self.check_button = QPushButton(tr("Check now"), objectName="check_updates")
        self.check_button.setToolTip(tr("Ask the update feed for new versions now."))
        self.check_button.clicked.connect(self.on_check_button_clicked)
        self.checked = QLabel(objectName="last_checked", wordWrap=True)
        self.check_error = QLabel(objectName="check_error", wordWrap=True)
        self.check_error.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        self.check_error.hide()
        update_bar = QHBoxLayout()
        update_bar.addWidget(self.update_all_button)
        update_bar.addWidget(self.advice, 1)
        check_bar = QHBoxLayout()
        check_bar.addWidget(self.check_button)
        check_bar.addWidget(self.checked, 1)
        install_layout = QVBoxLayout(installing)
        install_layout.addLayout(update_bar)
        install_layout.addLayout(check_bar)
        install_layout.addWidget(self.check_error)
        install_layout.addStretch(1)

        # How updates install, and from where.
        settings = QGroupBox(tr("Settings"))
        self.auto_radio = QRadioButton(tr("Automatic"), objectName="mode_auto")
        self.manual_radio = QRadioButton(tr("Manual"), objectName="mode_manual")
        self._modes = QButtonGroup(self)  # exclusive; the engine's answer checks one
        self._modes.addButton(self.auto_radio)
        self._modes.addButton(self.manual_radio)
        self.auto_radio.clicked.connect(self.on_auto_radio_clicked)
        self.manual_radio.clicked.connect(self.on_manual_radio_clicked)
        self.window_edit = QTimeEdit(objectName="update_window", displayFormat="HH:mm")
        self.window_edit.setToolTip(tr("When automatic updates install each day, in the appliance's local time."))
        self.window_edit.editingFinished.connect(self.on_window_edit_editing_finished)
        self.mode_line = QLabel(objectName="mode_text", wordWrap=True)
        self.feed = QLabel(objectName="feed_url")
        self.feed.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        self.feed_button = QPushButton(tr("Change…"), objectName="change_feed")
        self.feed_button.setToolTip(tr("Use another update feed (e.g. a mirror inside your network)."))
        self.feed_button.clicked.connect(self.on_feed_button_clicked)
        mode_bar = QHBoxLayout()
        mode_bar.addWidget(QLabel(tr("Mode:")))
        mode_bar.addWidget(self.auto_radio)
        mode_bar.addWidget(self.manual_radio)
        mode_bar.addSpacing(16)
        mode_bar.addWidget(QLabel(tr("Daily at")))
        mode_bar.addWidget(self.window_edit)
        mode_bar.addStretch(1)
        feed_bar = QHBoxLayout()
        feed_bar.addWidget(QLabel(tr("Feed:")))
        feed_bar.addWidget(self.feed, 1)
        feed_bar.addWidget(self.feed_button)
        settings_layout = QVBoxLayout(settings)
        settings_layout.addLayout(mode_bar)
        settings_layout.addWidget(self.mode_line)
        settings_layout.addLayout(feed_bar)
        settings_layout.addStretch(1)

        # The agents.
        self.model = AgentsModel(self)
        self.table = RecordTable(self.model, sort_role=SortRole, sort_column=-1, order=Qt.SortOrder.AscendingOrder,
                                 object_name="agents_table")
        self.table.horizontalHeader().setSortIndicatorClearable(True)  # back to the engine's order
        self.table.setWordWrap(True)
        self.table.setItemDelegateForColumn(AgentsModel.STATUS, _StatusDelegate(ProgressRole, self.table))
        header = self.table.horizontalHeader()
        header.setStretchLastSection(False)
        header.setSectionResizeMode(AgentsModel.STATUS, QHeaderView.ResizeMode.Stretch)
        for col, width in ((AgentsModel.AGENT, 170), (AgentsModel.INSTALLED, 90), (AgentsModel.AVAILABLE, 90),
                           (AgentsModel.ACTION, 96)):
            self.table.setColumnWidth(col, width)
        header.sectionResized.connect(lambda *_: QTimer.singleShot(0, self.table, self._fit_rows))
        self.table.setContextMenuPolicy(Qt.ContextMenuPolicy.CustomContextMenu)
        self.table.customContextMenuRequested.connect(self.on_table_custom_context_menu_requested)
        self.model.modelReset.connect(self._rows_changed)
        self.model.dataChanged.connect(self._rows_changed)
        self.rollback_hint = QLabel(tr("Right-click an agent to roll it back to the version it ran before."),
                                    objectName="hint")
        self.rollback_hint.hide()  # until an agent has a version to go back to

        top = QHBoxLayout()
        top.addWidget(installing, 1)
        top.addWidget(settings, 1)
        layout = QVBoxLayout(self)
        layout.addWidget(title)
        layout.addWidget(intro)
        layout.addLayout(top)
        layout.addWidget(self.table)
        layout.addWidget(self.rollback_hint)
        layout.addStretch(1)

        self._refresh = QTimer(self, interval=REFRESH_S * 1000)
        self._refresh.timeout.connect(self._show_times)
        self._refresh.start()
        bridge.updates_changed.connect(self.show_updates)
        self.setEnabled(False)
        if bridge.updates is not None:
            self.show_updates(bridge.updates)

    def __repr__(self) -> str:
        u = self.updates
        agents = [(a.name, a.status) for a in u.agents] if u else None
        return f"<AgentsPage mode={u.mode if u else None} agents={agents} busy={sorted(self.busy)}>"

    # --- showing the engine's status ------------------------------------------------------------
    def show_updates(self, updates: UpdatesStatus) -> None:
        self.updates = updates
        self.setEnabled(True)
        self.model.set_agents(updates.agents)
        self._show_times()
        self.check_error.setText(updates.check_error or "")
        self.check_error.setVisible(bool(updates.check_error))
        self.feed.setText(updates.feed_url or tr("No update feed is set."))
        self.feed.setToolTip(updates.feed_url or "")
        self.rollback_hint.setVisible(any(a.previous_version for a in updates.agents))
        self._show_mode()
        self._update_controls()

    def _show_times(self) -> None:
        if self.updates is None:
            return
        if self.CHECK not in self.busy:
            self.checked.setText(checked_text(self.updates))
        self.mode_line.setText(mode_text(self.updates))

    def _show_mode(self, *, force: bool = False) -> None:
        """The radio buttons and the time follow the engine; the time not while the admin edits it, unless
        ``force`` (a command of this page ended: after a refusal, the engine's time comes back)."""
        if self.updates is None:
            return
        (self.auto_radio if self.updates.mode == "auto" else self.manual_radio).setChecked(True)
        window = QTime.fromString(self.updates.window, "HH:mm")
        if window.isValid() and (force or not self.window_edit.hasFocus()):
            self.window_edit.setTime(window)
        self.mode_line.setText(mode_text(self.updates))

    def _update_controls(self) -> None:
        installing = _installing(self.updates)
        install_free = self.INSTALL not in self.busy and not installing
        self.update_all_button.setEnabled(install_free and bool(_outdated(self.updates)))
        if installing and self.updates is not None:
            names = ", ".join(a.title for a in self.updates.agents if a.status == "updating")
            self.advice.setText(tr("Installing %s. Update and Update all wait until it ends.") % names)
        else:
            self.advice.setText(tr("Updating all agents together is recommended: they install in the order they "
                                   "depend on each other and keep working together."))
        for button in self.row_buttons.values():
            button.setEnabled(install_free)
        self.check_button.setEnabled(self.CHECK not in self.busy)
        for widget in (self.auto_radio, self.manual_radio):
            widget.setEnabled(self.MODE not in self.busy)
        auto = self.updates is not None and self.updates.mode == "auto"
        self.window_edit.setEnabled(self.MODE not in self.busy and auto)
        self.feed_button.setEnabled(self.FEED not in self.busy)

    # --- the row buttons ---------------------------------------------------------------------------
    def _rows_changed(self, top_left: QModelIndex | None = None, bottom_right: QModelIndex | None = None,
                      *_: object) -> None:
        if top_left is None or bottom_right is None or bottom_right.column() >= AgentsModel.ACTION:
            self._place_buttons()
        QTimer.singleShot(0, self.table, self._fit_rows)  # after the proxy and the view have caught up

    def _fit_rows(self) -> None:
        """Rows as high as their wrapped reasons; the table as high as its rows (a few agents leave room below)."""
        self.table.resizeRowsToContents()
        rows = self.model.rowCount()
        height = sum(self.table.rowHeight(r) for r in range(rows))
        height += max(0, 4 - rows) * self.table.verticalHeader().defaultSectionSize()
        self.table.setFixedHeight(height + self.table.horizontalHeader().sizeHint().height()
                                  + 2 * self.table.frameWidth() + 2)

    def _place_buttons(self) -> None:
        """An Update button on each outdated row, Retry on a failed one, nothing elsewhere."""
        kept: dict[str, QPushButton] = {}
        for row, agent in enumerate(self.model.agents()):
            action = self.model.data(self.model.index(row, AgentsModel.ACTION), ActionRole)
            cell = self.table.proxy.mapFromSource(self.model.index(row, AgentsModel.ACTION))
            button, holder = self.row_buttons.get(agent.name), self.table.indexWidget(cell)
            if button is not None and holder is not None and button.parent() is holder \
                    and button.property("action") == action:
                kept[agent.name] = button
                continue
            if action is None:
                if self.table.indexWidget(cell) is not None:
                    self.table.setIndexWidget(cell, QWidget())  # an empty cell (the old widget is deleted)
                continue
            button = QPushButton(tr("Update") if action == "update" else tr("Retry"), objectName=f"{action}_button")
            button.setProperty("action", action)
            button.setProperty("agent", agent.name)
            button.setToolTip(tr("Install %s %s.") % (agent.title, agent.available_version or "")
                              if action == "update" else tr("Try the install of %s again.") % agent.title)
            button.clicked.connect(partial(self.on_row_button_clicked, agent.name))
            holder = QWidget()
            box = QHBoxLayout(holder)
            box.setContentsMargins(6, 2, 6, 2)
            box.addWidget(button)
            self.table.setIndexWidget(cell, holder)
            kept[agent.name] = button
        self.row_buttons = kept
        self._update_controls()

    # --- slots: thin, each starts one referenced task ------------------------------------------------------
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

    def on_update_all_button_clicked(self) -> None:
        self.start(self.update_all())

    def on_row_button_clicked(self, name: str, *_: object) -> None:
        """Update and Retry alike install the available version of that one agent."""
        self.start(self.update_agents([name]))

    def on_check_button_clicked(self) -> None:
        self.start(self.check_now())

    def on_auto_radio_clicked(self) -> None:
        self.start(self.set_mode("auto"))

    def on_manual_radio_clicked(self) -> None:
        self.start(self.set_mode("manual"))

    def on_window_edit_editing_finished(self) -> None:
        window = self.window_edit.time().toString("HH:mm")
        if self.updates is not None and window != self.updates.window:
            self.start(self.set_window(window))

    def on_feed_button_clicked(self) -> None:
        self.start(self.change_feed())

    def on_table_custom_context_menu_requested(self, pos: QPoint) -> None:
        index = self.table.indexAt(pos)
        if not index.isValid():
            return
        menu = self.row_menu(self.model.agent(self.table.source_row(index.row())))
        if menu is not None:
            menu.popup(self.table.viewport().mapToGlobal(pos))

    def row_menu(self, agent: AgentUpdate) -> QMenu | None:
        """The context menu of ``agent``'s row: Roll back to its previous version, if it has one."""
        if not agent.previous_version:
            return None
        if self._menu is not None:
            self._menu.deleteLater()
        self._menu = menu = QMenu(self)
        action = menu.addAction(tr("Roll back to %s") % agent.previous_version)
        action.setEnabled(self.INSTALL not in self.busy and not _installing(self.updates))
        action.triggered.connect(lambda: self.start(self.roll_back(agent.name)))
        return menu

    # --- commands ----------------------------------------------------------------------------------
    async def _run(self, group: str, call: Coroutine[Any, Any, object]) -> bool:
        """Await one engine command with ``group``'s controls waiting; whether it succeeded. The answer reaches
        the page through :attr:`EngineBridge.updates_changed`."""
        self.busy.add(group)
        self._update_controls()
        try:
            await call
        except Exception as exc:
            show_error(self, exc)
            return False
        finally:
            self.busy.discard(group)
            self._show_mode(force=True)
            self._update_controls()
        return True

    async def update_agents(self, names: list[str]) -> None:
        """Update (or Retry) the agents ``names``."""
        await self._run(self.INSTALL, self.bridge.update_agents(names))

    async def update_all(self) -> None:
        """Update all: every outdated agent, together, in the engine's order."""
        await self._run(self.INSTALL, self.bridge.update_agents(None))

    async def roll_back(self, name: str) -> None:
        agent = next((a for a in self.model.agents() if a.name == name), None)
        if agent is None or not agent.previous_version:
            return
        if not await confirm(self, tr("Roll back %s?") % agent.title,
                             tr("%s goes back from %s to %s. Replication pauses only for a reconnect; the agents "
                                "then run different versions until you update them together.")
                             % (agent.title, agent.installed_version, agent.previous_version), tr("Roll back")):
            return
        await self._run(self.INSTALL, self.bridge.rollback_agent(name))

    async def check_now(self) -> None:
        self.checked.setText(tr("Checking the update feed…"))
        try:
            await self._run(self.CHECK, self.bridge.check_updates())
        finally:
            self._show_times()

    async def set_mode(self, mode: str) -> None:
        """Switch to ``mode``; to auto with updates pending, the admin chooses: install now or at the window."""
        if self.updates is None or mode == self.updates.mode:
            self._show_mode()
            return
        now = False
        pending = [a for a in self.updates.agents if a.status == "update-available"]
        if mode == "auto" and pending:
            answer = await self._ask_when(len(pending), self.updates.window)
            if answer is None:
                self._show_mode()  # cancelled: the radio buttons show the engine's mode again
                return
            now = answer
        await self._run(self.MODE, self.bridge.set_update_mode(mode, now=now))

    async def _ask_when(self, count: int, window: str) -> bool | None:
        """Install the pending updates now (True), at the next window (False), or cancel (None)."""
        text = (tr("1 agent update is waiting.") if count == 1 else tr("%d agent updates are waiting.") % count) + \
            " " + tr("Install now, or at the next install time (%s, the appliance's local time)?") % window
        box = QMessageBox(QMessageBox.Icon.Question, tr("Switch to automatic updates"), text,
                          QMessageBox.StandardButton.Cancel, self)
        box.setObjectName("install_when")
        now = box.addButton(tr("Install now"), QMessageBox.ButtonRole.AcceptRole)
        later = box.addButton(tr("At %s") % window, QMessageBox.ButtonRole.AcceptRole)
        box.setDefaultButton(later)
        await asyncWrap(box.exec)
        clicked = box.clickedButton()
        box.deleteLater()
        return True if clicked is now else False if clicked is later else None

    async def set_window(self, window: str) -> None:
        await self._run(self.MODE, self.bridge.set_update_mode(None, window=window))

    async def change_feed(self) -> None:
        current = self.updates.feed_url if self.updates is not None else None
        url = await self._ask_feed(current or "")
        if url is None or url == current:
            return
        await self._run(self.FEED, self.bridge.set_update_feed(url))

    async def _ask_feed(self, current: str) -> str | None:
        """The address the admin typed (OK waits for one), or None when cancelled."""
        dialog = QInputDialog(self)
        dialog.setObjectName("feed_dialog")
        dialog.setWindowTitle(tr("Update feed"))
        dialog.setLabelText(tr("The address of the update feed (a signed TUF repository, e.g. a mirror inside "
                               "your network). The engine checks it before it keeps it."))
        dialog.setTextValue(current)
        dialog.setOkButtonText(tr("Use this feed"))
        dialog.resize(560, dialog.sizeHint().height())
        buttons = dialog.findChild(QDialogButtonBox)
        ok = buttons.button(QDialogButtonBox.StandardButton.Ok) if buttons is not None else None
        if ok is not None:  # OK waits for an address
            dialog.textValueChanged.connect(lambda text: ok.setEnabled(bool(text.strip())))
            ok.setEnabled(bool(current.strip()))
        edit = dialog.findChild(QLineEdit)
        if edit is not None:
            edit.selectAll()
        result = await asyncWrap(dialog.exec)
        text = dialog.textValue().strip()
        dialog.deleteLater()
        return text if result == QDialog.DialogCode.Accepted and text else None
