"""Policies: the replication policies, the servers that replicate with each, and creating, editing and deleting them.

The engine sends no message when a policy changes, so the list is asked for when the page is shown and after each
change the admin makes here. The servers that use a policy come from the bridge's live servers.

What the admin types is checked here first, by the rules the engine applies (:func:`check_policy_input`, which the
set-up wizard's policy page uses too), so that nonsense never reaches it; the engine still has the last word, and its
one-line refusal shows in the dialog, which stays open with what was typed. A policy in use cannot be deleted (nor
``default``): Delete waits, and its tooltip says why.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Coroutine
from typing import Any

from PySide6.QtCore import QEvent, QPoint, Qt, QTimer, Signal
from PySide6.QtGui import QAction, QColor, QFont, QFontMetrics, QKeySequence, QShowEvent
from PySide6.QtWidgets import (
    QAbstractItemView,
    QDialog,
    QDialogButtonBox,
    QFormLayout,
    QHBoxLayout,
    QLabel,
    QLineEdit,
    QMenu,
    QPushButton,
    QTableWidget,
    QTableWidgetItem,
    QVBoxLayout,
    QWidget,
)

from app import theme
from app.bridge import EngineBridge, EngineError, Policy, ServerStatus, durations
from app.widgets.dialogs import confirm
from app.widgets.formatting import show_line, shown, tr
from app.widgets.tasks import TaskOwner

#: The policy every server may fall back to; the engine never deletes it.
DEFAULT_POLICY = "default"
#: A policy's name, as the engine takes it (engine/replication.py ``make_policy``).
NAME_RULE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}$")
#: The product's limits on a policy's settings, as the engine checks them (engine/replication.py ``check_policy``):
#: seconds. The engine stays the authority; these only spare it nonsense.
MAX_RETENTION = 15 * 86400
MIN_APP_EVERY, MAX_APP_EVERY = 3600, 12 * 3600
#: The settings, in the order the forms (this page's dialog, the set-up wizard's policy page) and the table show
#: them: field, label, example, what it means.
SETTINGS = (
    ("rpo_threshold", "RPO threshold", "15m", "A server whose newest data here is older than this turns to warning."),
    ("retention", "Retention", "1d", "How long recovery points are kept: at most 15 days."),
    ("crash_consistent_every", "Crash-consistent point every", "5m", "How often a crash-consistent point is taken."),
    ("app_consistent_every", "App-consistent point every", "4h", "How often applications are quiesced for a "
                                                                 "consistent point: 1h to 12h, or off."),
)
#: The table's columns.
NAME, RPO, RETENTION, CRASH, APP, USED_BY = range(6)


def check_policy_input(name: str | None, typed: dict[str, str], *, taken: set[str] = frozenset()) -> dict[str, float |
                                                                                                          None]:
    """The settings an admin typed, in seconds (None: app-consistent points off), checked by the engine's rules;
    ``name`` is checked too unless None (an edit). Raises :class:`ValueError` with one sentence naming the first
    field that does not fit and what it takes."""
    if name is not None:
        if not name.strip():
            raise ValueError(tr("Give the policy a name: letters, digits, '-', '_' or '.', at most 63."))
        if not NAME_RULE.match(name):
            raise ValueError(tr("The name %s does not fit: use letters, digits, '-', '_' or '.' (at most 63), "
                                "starting with a letter or digit.") % shown(name))
        if name in taken:
            raise ValueError(tr("A policy named %s exists already: choose another name, or edit that one.")
                             % shown(name))
    seconds: dict[str, float | None] = {}
    for field, label, example, _about in SETTINGS:
        text = typed[field].strip()
        if field == "app_consistent_every" and text.lower() == "off":
            seconds[field] = None
            continue
        if not text:
            raise ValueError(tr("%s is empty: type a duration such as %s.") % (tr(label), example))
        try:
            seconds[field] = durations.parse_duration(text, tr(label))
        except EngineError:
            more = tr(", or off") if field == "app_consistent_every" else ""
            raise ValueError(tr("%s %s is not a duration such as 30s, 15m, 4h or 2d%s.")
                             % (tr(label), shown(text), more)) from None
    rpo, retention, crash, app = (seconds[f] for f, *_ in SETTINGS)
    assert rpo is not None and retention is not None and crash is not None
    if rpo < 1:
        raise ValueError(tr("The RPO threshold must be at least 1 s."))
    if not 0 < retention <= MAX_RETENTION:
        raise ValueError(tr("The retention must be more than 0 and at most 15 days (15d)."))
    if crash < 1:
        raise ValueError(tr("Crash-consistent points must be at least 1 s apart."))
    if app is not None and not MIN_APP_EVERY <= app <= MAX_APP_EVERY:
        raise ValueError(tr("App-consistent points must be between 1h and 12h apart, or off."))
    return seconds


def policy_changes(policy: Policy, typed: dict[str, str], seconds: dict[str, float | None]) -> dict[str, str]:
    """Editing ``policy``: only the settings whose value changed (``seconds``, from :func:`check_policy_input`), as
    the admin typed them (stripped); "60m" for a 1h setting is no change."""
    return {field: typed[field].strip() for field, *_ in SETTINGS if seconds[field] != getattr(policy, field)}


def setting_text(policy: Policy, field: str) -> str:
    """A setting of ``policy`` as the admin types it: ``15m``, ``7d``, ``off``."""
    return str(durations.setting_text(getattr(policy, field)))


class PolicyDialog(QDialog):
    """New policy (``policy`` None) or Edit ``policy``. Save checks what was typed, then asks the engine (creating
    with every setting; editing with only those that changed); a refusal shows in the dialog, which stays open with
    what was typed. :attr:`saved` carries the policy as the engine now holds it."""

    saved = Signal(object)  #: Policy

    def __init__(self, bridge: EngineBridge, policy: Policy | None, parent: QWidget | None = None, *,
                 taken: set[str] = frozenset(), users: list[str] | None = None) -> None:
        super().__init__(parent)
        self.bridge = bridge
        self.policy = policy
        self.taken = set(taken)
        #: The save under way (at most one).
        self.tasks = TaskOwner()
        self.setObjectName("policy_dialog")
        self.setWindowTitle(tr("New replication policy") if policy is None else tr("Edit policy %s") % policy.name)
        self.setMinimumWidth(600)
        form = QFormLayout()
        form.setFieldGrowthPolicy(QFormLayout.FieldGrowthPolicy.AllNonFixedFieldsGrow)
        self.name = QLineEdit(objectName="policy_name")
        self.name.setPlaceholderText(tr("e.g. gold"))
        self.name.setAccessibleName(tr("Policy name"))
        if policy is None:
            form.addRow(tr("Name:"), self.name)
            form.addRow("", self._help(tr("Letters, digits, '-', '_' or '.'; it cannot be changed later.")))
        else:
            self.name.setText(policy.name)
        self.fields: dict[str, QLineEdit] = {}
        for field, label, example, about in SETTINGS:
            edit = QLineEdit(objectName=f"policy_{field}")
            edit.setPlaceholderText(tr("e.g. %s") % example)
            edit.setAccessibleName(tr(label))
            edit.setToolTip(tr(about))
            if policy is not None:
                edit.setText(setting_text(policy, field))
            edit.textEdited.connect(self._clear_error)
            self.fields[field] = edit
            form.addRow(tr(label) + ":", edit)
            form.addRow("", self._help(tr(about)))
        self.error = QLabel(objectName="policy_error", wordWrap=True)
        self.error.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        self.error.hide()
        self.buttons = QDialogButtonBox(QDialogButtonBox.StandardButton.Cancel)
        self.save_button = self.buttons.addButton(tr("Create") if policy is None else tr("Save"),
                                                  QDialogButtonBox.ButtonRole.AcceptRole)
        self.save_button.setObjectName("policy_save")
        self.save_button.setDefault(True)
        self.buttons.accepted.connect(self.on_save_clicked)
        self.buttons.rejected.connect(self.reject)
        layout = QVBoxLayout(self)
        if policy is not None:
            heading = QLabel(tr("Policy %s") % policy.name, objectName="page_title")
            users = users or []
            names = ", ".join(users[:5]) + (tr(" and %d more") % (len(users) - 5) if len(users) > 5 else "")
            who = (tr("No server replicates with it.") if not users else
                   tr("%s follows the change from its next cycle.") % names if len(users) == 1 else
                   tr("%s follow the change from their next cycle.") % names)
            layout.addWidget(heading)
            layout.addWidget(QLabel(who, objectName="policy_help", wordWrap=True))
            layout.addSpacing(6)
        layout.addLayout(form)
        layout.addWidget(self.error)
        layout.addWidget(self.buttons)
        self.name.textEdited.connect(self._clear_error)

    def __repr__(self) -> str:
        what = self.policy.name if self.policy else "new"
        return f"<PolicyDialog {what} saving={self.task is not None} error={self.error.text()!r}>"

    @property
    def task(self) -> asyncio.Task[Any] | None:
        """The save under way, if any."""
        return next(iter(self.tasks), None)

    @staticmethod
    def _help(text: str) -> QLabel:
        label = QLabel(text, objectName="policy_help", wordWrap=True)
        return label

    def typed(self) -> dict[str, str]:
        return {field: edit.text() for field, edit in self.fields.items()}

    def show_error(self, text: str) -> None:
        self.error.setText(text)
        self.error.setVisible(bool(text))

    def _clear_error(self, *_: object) -> None:
        if self.task is None:
            self.show_error("")

    def on_save_clicked(self) -> None:
        if self.task is not None:  # a second click while the engine answers
            return
        try:
            seconds = check_policy_input(None if self.policy else self.name.text(), self.typed(), taken=self.taken)
        except ValueError as exc:
            self.show_error(str(exc))
            return
        if self.policy is not None:
            changes = policy_changes(self.policy, self.typed(), seconds)
            if not changes:
                self.accept()  # nothing changed: nothing to ask
                return
            call: Coroutine[Any, Any, Policy] = self.bridge.edit_policy(self.policy.name, **changes)
        else:
            typed = {field: text.strip() for field, text in self.typed().items()}
            call = self.bridge.create_policy(self.name.text(), **typed)
        self.tasks.start(self._save(call))

    async def _save(self, call: Coroutine[Any, Any, Policy]) -> None:
        self.show_error("")
        self._set_busy(True)
        try:
            policy = await call
        except EngineError as exc:
            self.show_error(exc.message)
            return
        finally:
            self._set_busy(False)
        self.saved.emit(policy)
        self.accept()

    def _set_busy(self, busy: bool) -> None:
        self.save_button.setEnabled(not busy)
        self.save_button.setText((tr("Creating…") if self.policy is None else tr("Saving…")) if busy else
                                 tr("Create") if self.policy is None else tr("Save"))
        for edit in [self.name, *self.fields.values()]:
            edit.setReadOnly(busy)

    def done(self, result: int) -> None:
        """Cancel, Escape or closing the window while the engine answers stops waiting for it; what the engine was
        already asked may still happen, and the list shows it when it refreshes. (Save accepts once it is saved.)"""
        self.tasks.cancel_all()  # not the save itself, which accepts once saved
        super().done(result)


class PoliciesPage(QWidget):
    #: A policy was created, changed or deleted here (its name): other views may want to ask again.
    policies_changed = Signal(str)

    def __init__(self, bridge: EngineBridge, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.bridge = bridge
        #: The policies as the engine last listed them.
        self.policies: list[Policy] = []
        #: The servers as last reported, by name.
        self.servers: dict[str, ServerStatus] = {}
        #: Every command under way, referenced until it ends.
        self.tasks = TaskOwner()
        #: A command (a refresh, a delete) runs: the buttons that would start another wait.
        self.busy = False
        self.editor: PolicyDialog | None = None
        self._menu: QMenu | None = None

        title = QLabel(tr("Replication policies"), objectName="page_title")
        intro = QLabel(tr("A policy says how often recovery points are taken, how long they are kept and when a "
                          "server's RPO is too old. A policy that servers replicate with cannot be deleted: move "
                          "them to another one first (in their details)."), objectName="hint", wordWrap=True)
        self.new_action = self._action(tr("New…"), "new_policy", self.on_new_requested,
                                       tr("Create a replication policy."), QKeySequence.StandardKey.New)
        self.edit_action = self._action(tr("Edit…"), "edit_policy", self.on_edit_requested,
                                        tr("Change the selected policy's settings; its servers follow from their "
                                           "next cycle."))
        self.delete_action = self._action(tr("Delete…"), "delete_policy", self.on_delete_requested,
                                          tr("Delete the selected policy."), QKeySequence.StandardKey.Delete)
        self.new_button = self._button(self.new_action)
        self.edit_button = self._button(self.edit_action)
        self.delete_button = self._button(self.delete_action)

        self.table = QTableWidget(0, 6, objectName="policies_table")
        self.table.setHorizontalHeaderLabels([tr("Name"), tr("RPO threshold"), tr("Retention"),
                                              tr("Crash-consistent every"), tr("App-consistent every"),
                                              tr("Used by")])
        self.table.verticalHeader().hide()
        self.table.setAlternatingRowColors(True)
        self.table.setSelectionBehavior(QAbstractItemView.SelectionBehavior.SelectRows)
        self.table.setSelectionMode(QAbstractItemView.SelectionMode.SingleSelection)
        self.table.setEditTriggers(QAbstractItemView.EditTrigger.NoEditTriggers)
        self.table.setWordWrap(False)
        self.table.setShowGrid(False)
        self.table.setAccessibleName(tr("Replication policies"))
        header = self.table.horizontalHeader()
        header.setDefaultAlignment(Qt.AlignmentFlag.AlignLeft | Qt.AlignmentFlag.AlignVCenter)
        header.setStretchLastSection(True)
        self._size_columns()
        self.table.itemSelectionChanged.connect(self._update_actions)
        self.table.doubleClicked.connect(lambda *_: self.on_edit_requested())
        self.table.setContextMenuPolicy(Qt.ContextMenuPolicy.CustomContextMenu)
        self.table.customContextMenuRequested.connect(self.on_table_custom_context_menu_requested)

        self.message = QLabel(objectName="policies_message", wordWrap=True)
        self.message.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        self.message.hide()

        bar = QHBoxLayout()
        bar.addWidget(title)
        bar.addStretch(1)
        for button in (self.new_button, self.edit_button, self.delete_button):
            bar.addWidget(button)
        layout = QVBoxLayout(self)
        layout.addLayout(bar)
        layout.addWidget(intro)
        layout.addWidget(self.message)
        layout.addWidget(self.table, 1)

        # The servers that use each policy follow the bridge, at most a few times a second.
        self._later = QTimer(self, singleShot=True, interval=250)
        self._later.timeout.connect(self._show_users)
        bridge.servers_reset.connect(self.on_bridge_servers_reset)
        bridge.server_updated.connect(self.on_bridge_server_updated)
        bridge.server_removed.connect(self.on_bridge_server_removed)
        self._update_actions()

    def __repr__(self) -> str:
        return (f"<PoliciesPage policies={[p.name for p in self.policies]} selected={self.selected_name()} "
                f"busy={self.busy}>")

    # --- building ---------------------------------------------------------------------------------------
    def changeEvent(self, event: QEvent) -> None:
        """The console switched between light and dark: "no server" is drawn in the muted colour of the new one."""
        super().changeEvent(event)
        if event.type() == QEvent.Type.PaletteChange and hasattr(self, "table"):
            self._show_users()

    def _action(self, text: str, name: str, slot: Any, tip: str,
                key: QKeySequence.StandardKey | None = None) -> QAction:
        action = QAction(text, self)
        action.setObjectName(name)
        action.setToolTip(tip)
        action.triggered.connect(lambda *_: slot())
        if key is not None:
            action.setShortcut(QKeySequence(key))
            action.setShortcutContext(Qt.ShortcutContext.WidgetWithChildrenShortcut)
            self.addAction(action)
        return action

    def _button(self, action: QAction) -> QPushButton:
        button = QPushButton(action.text(), objectName=action.objectName())
        button.setToolTip(action.toolTip())
        button.setAccessibleName(action.text().rstrip("…"))
        button.clicked.connect(action.trigger)
        return button

    def _size_columns(self) -> None:
        """Each column as wide as its title or a long value, with room to breathe; Used by takes the rest."""
        bold = QFont(self.table.horizontalHeader().font())
        bold.setWeight(QFont.Weight.DemiBold)  # as the style sheet draws the header
        titles, cells = QFontMetrics(bold), self.table.fontMetrics()
        samples = {NAME: "production-eu", RPO: "15m", RETENTION: "15d", CRASH: "5m", APP: "12h"}
        for column, sample in samples.items():
            title = self.table.horizontalHeaderItem(column).text()
            self.table.setColumnWidth(column, max(titles.horizontalAdvance(title), cells.horizontalAdvance(sample))
                                      + 32)

    # --- the servers --------------------------------------------------------------------------------------
    def on_bridge_servers_reset(self, servers: list[ServerStatus]) -> None:
        self.servers = {s.name: s for s in servers}
        self._later.start()

    def on_bridge_server_updated(self, status: ServerStatus) -> None:
        before = self.servers.get(status.name)
        self.servers[status.name] = status
        if before is None or (before.policy, before.replicating) != (status.policy, status.replicating):
            self._later.start()  # only a change of policy matters here

    def on_bridge_server_removed(self, name: str) -> None:
        if self.servers.pop(name, None) is not None:
            self._later.start()

    def users(self, policy: str) -> list[str]:
        """The servers that replicate with ``policy``, by name."""
        return sorted(s.name for s in self.servers.values() if s.replicating and s.policy == policy)

    # --- the list ------------------------------------------------------------------------------------------
    def showEvent(self, event: QShowEvent) -> None:
        """Shown: ask for the policies (no message tells of a change made elsewhere, e.g. by the CLI)."""
        super().showEvent(event)
        self.start(self.refresh())

    async def refresh(self) -> None:
        """Ask the engine for the policies and list them; a refusal is one red line and the list stays."""
        try:
            policies = await self.bridge.policies()
        except EngineError as exc:
            self.say("error", exc.message)
            return
        self.show_policies(policies)

    def show_policies(self, policies: list[Policy]) -> None:
        """List ``policies`` by name; the selected one stays selected when it is still there."""
        selected = self.selected_name()
        self.policies = sorted(policies, key=lambda p: (p.name != DEFAULT_POLICY, p.name.casefold()))
        self.table.setRowCount(len(self.policies))
        for row, p in enumerate(self.policies):
            cells = [p.name] + [setting_text(p, field) for field, *_ in SETTINGS]
            for column, text in enumerate(cells):
                item = QTableWidgetItem(text)
                item.setData(Qt.ItemDataRole.UserRole, p.name)
                self.table.setItem(row, column, item)
        self._show_users()
        keep = next((row for row, p in enumerate(self.policies) if p.name == selected), 0 if policies else -1)
        if keep >= 0:
            self.table.selectRow(keep)
        self._update_actions()

    def _show_users(self) -> None:
        for row, p in enumerate(self.policies):
            users = self.users(p.name)
            if not users:
                text = tr("no server")
            elif len(users) <= 4:
                text = ", ".join(users)
            else:
                text = tr("%s and %d more") % (", ".join(users[:3]), len(users) - 3)
            item = QTableWidgetItem(text)
            if not users:
                item.setForeground(QColor(theme.colour("muted")))
            item.setToolTip("\n".join(users[:40]) + (tr("\n…and %d more") % (len(users) - 40) if len(users) > 40
                                                      else ""))
            self.table.setItem(row, USED_BY, item)
        self._update_actions()

    def selected(self) -> Policy | None:
        rows = {i.row() for i in self.table.selectedIndexes()}
        return self.policies[min(rows)] if rows and min(rows) < len(self.policies) else None

    def selected_name(self) -> str | None:
        p = self.selected()
        return p.name if p else None

    def why_not_delete(self, policy: Policy) -> str:
        """Why ``policy`` cannot be deleted now, for Delete's tooltip; empty when it can."""
        if policy.name == DEFAULT_POLICY:
            return tr("The policy default cannot be deleted: it is the one replication uses when no other is "
                      "chosen.")
        users = self.users(policy.name)
        if users:
            names = ", ".join(users[:10]) + (tr(" and %d more") % (len(users) - 10) if len(users) > 10 else "")
            return tr("%s is used by %s: move them to another policy first (in their details).") % (policy.name,
                                                                                                  names)
        return ""

    def _update_actions(self) -> None:
        p = self.selected()
        free = not self.busy
        self.new_action.setEnabled(free)
        self.edit_action.setEnabled(free and p is not None)
        why = self.why_not_delete(p) if p is not None else ""
        self.delete_action.setEnabled(free and p is not None and not why)
        self.delete_action.setToolTip(why or (tr("Delete the policy %s.") % p.name if p else
                                              tr("Delete the selected policy.")))
        for action, button in ((self.new_action, self.new_button), (self.edit_action, self.edit_button),
                               (self.delete_action, self.delete_button)):
            button.setEnabled(action.isEnabled())
            button.setToolTip(action.toolTip())

    def on_table_custom_context_menu_requested(self, pos: QPoint) -> None:
        index = self.table.indexAt(pos)
        if index.isValid():
            self.table.selectRow(index.row())
        self.row_menu().popup(self.table.viewport().mapToGlobal(pos))

    def row_menu(self) -> QMenu:
        if self._menu is not None:
            self._menu.deleteLater()
        self._menu = menu = QMenu(self)
        menu.setObjectName("policies_menu")
        for action in (self.new_action, self.edit_action, self.delete_action):
            menu.addAction(action)
        return menu

    # --- commands ------------------------------------------------------------------------------------------
    def start(self, coro: Coroutine[Any, Any, None]) -> asyncio.Task[None] | None:
        """Run a command of this page as a task it keeps until the task ends."""
        return self.tasks.start(coro)

    def say(self, level: str, text: str) -> None:
        """One line under the title: "error" (red: a refusal), "ok" (green), or "" (hidden when empty)."""
        show_line(self.message, level, text)

    def on_new_requested(self) -> None:
        if self.new_action.isEnabled():
            self.open_editor(None)

    def on_edit_requested(self) -> None:
        p = self.selected()
        if p is not None and self.edit_action.isEnabled():
            self.open_editor(p)

    def open_editor(self, policy: Policy | None) -> PolicyDialog:
        """The New or Edit dialog, one at a time (a second request raises the open one)."""
        if self.editor is not None and self.editor.isVisible():
            self.editor.raise_()
            self.editor.activateWindow()
            return self.editor
        if self.editor is not None:
            self.editor.deleteLater()
        self.editor = dialog = PolicyDialog(self.bridge, policy, self, taken={p.name for p in self.policies},
                                            users=self.users(policy.name) if policy is not None else None)
        dialog.saved.connect(self.on_editor_saved)
        dialog.open()
        return dialog

    def on_editor_saved(self, policy: Policy) -> None:
        created = self.editor is not None and self.editor.policy is None
        self.say("ok", (tr("Policy %s created.") if created else tr("Policy %s changed; its servers follow from "
                                                                    "their next cycle.")) % policy.name)
        self.policies_changed.emit(policy.name)
        self.start(self.refresh())

    def on_delete_requested(self) -> None:
        p = self.selected()
        if p is not None and self.delete_action.isEnabled():
            self.busy = True  # before the task starts: a second click finds the page busy
            self._update_actions()
            self.start(self.delete(p))

    async def delete(self, policy: Policy) -> None:
        """Delete ``policy`` once the admin confirms; the engine's refusal (naming the servers) is one red line."""
        self.busy = True
        self._update_actions()
        try:
            if not await confirm(self, tr("Delete policy %s?") % policy.name,
                                 tr("The policy %s is deleted; no server replicates with it.") % policy.name,
                                 tr("Delete")):
                return
            self.say("", "")
            try:
                await self.bridge.delete_policy(policy.name)
            except EngineError as exc:
                self.say("error", exc.message)
            else:
                self.say("ok", tr("Policy %s deleted.") % policy.name)
                self.policies_changed.emit(policy.name)
            await self.refresh()
        finally:
            self.busy = False
            self._update_actions()
