"""The first-run setup wizard: prerequisites, licence, ports, registration, the default policy, agent updates.

The main window opens it on a new appliance (``SetupInfo.setup_completed_at is None``) and the Setup page opens it
again on request. Every page shows what the appliance has now and applies only what the admin changed, when they
press Next (or Finish): the page stays up while the engine answers (Next waits), and a refusal is the engine's one
line under the fields, which keep what was typed. Closing the wizard half-way cancels what is under way and loses
nothing already applied; until Finish records the set-up as done (:meth:`EngineBridge.complete_setup`) the console
opens the wizard again at its next start.
"""

from __future__ import annotations

import asyncio
import contextlib
import html
import time
from collections.abc import Callable, Coroutine
from functools import partial
from typing import Any

from PySide6.QtCore import Qt, Signal
from PySide6.QtWidgets import (
    QButtonGroup,
    QCheckBox,
    QFormLayout,
    QFrame,
    QHBoxLayout,
    QLabel,
    QLineEdit,
    QProgressBar,
    QPushButton,
    QRadioButton,
    QScrollArea,
    QVBoxLayout,
    QWidget,
    QWizard,
    QWizardPage,
)

from app.bridge import (
    EngineBridge,
    EngineError,
    LicenceStatus,
    Policy,
    PortsStatus,
    PrerequisiteCheck,
    Prerequisites,
    SetupInfo,
    UpdatesStatus,
    check_address,
    check_port,
    durations,
)
from app.errors import show_error
from app.views.agents_page import mode_text
from app.views.licence_dialogs import ActivateLicenceDialog, activated_text
from app.views.policies_page import DEFAULT_POLICY, SETTINGS, check_policy_input, policy_changes
from app.views.ports_page import moving_text
from app.views.setup_page import licence_text
from app.widgets.copy_field import COPIED_MS as COPIED_MS  # where the tests read it
from app.widgets.copy_field import CommandField, CopyField
from app.widgets.formatting import SHOWN_CHARS, set_level, tr
from app.widgets.tasks import TaskOwner

#: The marks of a prerequisite's status (a status from a newer engine shows "?", coloured as failed).
MARKS = {"ok": "✔", "warning": "▲", "failed": "✖"}
STATUS_TEXTS = {"ok": "OK", "warning": "Warning", "failed": "Failed"}
#: What does not work while a check is not ok, by check key (a key from a newer engine says so generically).
CONSEQUENCES = {
    "ports": "source servers cannot register or send data on a port another program holds",
    "cache-space": "the cache can fill up, and replication then pauses until space is freed",
    "clock": "recovery point times, the RPO and the licence's days are reckoned from a wrong clock",
    "secret-store": "the keys that protect replicated data are only as safe as the files they are kept in",
    "sizing": "with many servers replicating at once, the appliance may fall behind (the RPO grows)",
    "target": "replicas cannot be written to the target storage; the cache holds the data meanwhile",
}


def _engine_check(check: Callable[[str], object], text: str) -> str | None:
    """The engine's own check of what the admin typed (the same words as its refusal); a pasted page is cut first,
    so that the message repeats only a short part (it is refused either way)."""
    try:
        check(text if len(text) <= SHOWN_CHARS else text[:SHOWN_CHARS] + "…")
    except EngineError as exc:
        return exc.message
    return None


def port_number(text: str) -> int | None:
    """The port ``text`` names, or None when it is not a plain number (a pasted page of digits is not converted:
    Python refuses ints of more than 4300 digits)."""
    text = text.strip()
    return int(text) if text.isascii() and text.isdigit() and len(text) <= 5 else None


def port_problem(text: str, what: str) -> str | None:
    """Why ``text`` is not a port number (``what``: "management"), in one line, as the engine says it
    (engine/ports.py ``check_port``); None when it is one."""
    if not text.strip():
        return tr("Type the %s port: a number from 1 to 65535.") % what
    number = port_number(text)
    return _engine_check(lambda t: check_port(number if number is not None else t, what), text.strip())


def listen_problem(text: str) -> str | None:
    """Why ``text`` is not an IPv4 address to listen on, in one line, as the engine says it (engine/ports.py
    ``check_address``); None when it is one."""
    if not text.strip():
        return tr("Type the address to listen on (0.0.0.0 for every IPv4 address of this machine).")
    return _engine_check(check_address, text.strip())


def consequence(check: PrerequisiteCheck) -> str:
    """What does not work while ``check`` is not ok, as half a sentence."""
    known = CONSEQUENCES.get(check.key)
    return tr(known) if known is not None else tr("%s may not work") % check.title


def summary_text(prerequisites: Prerequisites) -> tuple[str, str]:
    """The prerequisites in a few lines (what will not work, and that the admin may go on), and their level:
    "ok", "warning" or "failed" (the worst check)."""
    bad = [c for c in prerequisites.checks if c.status != "ok"]
    if not prerequisites.checks:
        return tr("The engine reported no checks."), "warning"
    if not bad:
        return tr("All %d checks passed.") % len(prerequisites.checks), "ok"
    level = "failed" if any(c.status != "warning" for c in bad) else "warning"
    head = tr("1 of %d checks needs attention.") % len(prerequisites.checks) if len(bad) == 1 else \
        tr("%d of %d checks need attention.") % (len(bad), len(prerequisites.checks))
    head += " " + tr("You can go on and fix them later; until then:")
    lines = [f"{MARKS.get(c.status, '?')} {c.title}: {consequence(c)}." for c in bad]
    return "\n".join([head, *lines]), level


# --- the pages' common part ------------------------------------------------------------------------------
class WizardPage(QWizardPage):
    """A page that applies what the admin changed when they press Next: while the engine answers, the page shows
    that it works and Next waits; a refusal is shown in one line and the page stays."""

    #: The text of the busy line while the page applies its changes.
    APPLYING = "Applying…"

    def __init__(self, setup: SetupWizard, title: str, subtitle: str, *, expand: bool = False) -> None:
        """``expand``: the page's body takes the room there is (a list); else the page's lines sit under it."""
        super().__init__()
        self.setup = setup
        self.bridge = setup.bridge
        #: The page's title as text (the header shows it larger, as rich text).
        self.plain_title = title
        self.setTitle(f"<span style='font-size:14pt; font-weight:600'>{html.escape(title)}</span>")
        self.setSubTitle(subtitle)
        self.setAccessibleName(title)
        #: True while the page's changes are being applied (Next and Finish wait).
        self.applying = False
        #: Set when the changes were applied: the Next that follows passes without asking again.
        self._applied = False
        self.body = QVBoxLayout()
        self.message = QLabel(objectName="wizard_message", wordWrap=True)
        self.message.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        self.message.hide()
        self.engine_note = QLabel(objectName="wizard_engine", wordWrap=True)
        self.engine_note.hide()
        self.busy_bar = QProgressBar(objectName="wizard_busy", minimum=0, maximum=0, textVisible=False)
        self.busy_bar.setFixedWidth(120)
        self.busy_bar.setAccessibleName(tr("Working"))
        self.busy_label = QLabel(objectName="wizard_busy_text")
        busy = QHBoxLayout()
        busy.addWidget(self.busy_bar)
        busy.addWidget(self.busy_label, 1)
        self.busy_bar.hide()
        self.busy_label.hide()
        # The page's lines sit under its fields; above a list that takes the room (else they would be far below).
        layout = QVBoxLayout(self)
        if not expand:
            layout.addLayout(self.body)
        layout.addWidget(self.message)
        layout.addWidget(self.engine_note)
        layout.addLayout(busy)
        if expand:
            layout.addLayout(self.body, 1)
        else:
            layout.addStretch(1)

    def say(self, level: str, text: str) -> None:
        """One line under the page: "error" (a refusal), "warning", "ok"; hidden when ``text`` is empty."""
        self.message.setText(text)
        set_level(self.message, level)
        self.message.setVisible(bool(text))

    def set_busy(self, text: str | None) -> None:
        """Show that the page works (``text`` says on what), or that it is done (None)."""
        self.busy_bar.setVisible(text is not None)
        self.busy_label.setVisible(text is not None)
        self.busy_label.setText(text or "")

    def show_engine(self, state: str, detail: str) -> None:
        """While the console has no engine, say so once on the page (what was typed stays)."""
        down = state in ("stopped", "failed", "lost")
        note = tr("Nothing can be applied until it runs again; what you type here stays.")
        self.engine_note.setText(f"{detail} {note}" if down else "")
        set_level(self.engine_note, "warning")
        self.engine_note.setVisible(down)

    # --- applying ----------------------------------------------------------------------------------
    def problem(self) -> str | None:
        """What is wrong with what the admin typed, in one line; None when it can be sent."""
        return None

    def pending(self) -> bool:
        """Whether the page has something to apply."""
        return False

    async def apply(self) -> None:
        """Apply the page's changes; raises the engine's :class:`EngineError` when refused."""

    def fields(self) -> list[QWidget]:
        """The controls that wait while the page applies its changes."""
        return []

    def enable_fields(self, enabled: bool) -> None:
        for widget in self.fields():
            widget.setEnabled(enabled)

    def advance(self) -> None:
        """After a successful apply: go on as the admin asked."""
        self.setup.next()

    def isComplete(self) -> bool:
        return not self.applying

    def validatePage(self) -> bool:
        """Next (or Finish): pass when there is nothing to apply; else check what was typed, start applying it and
        stay (the page moves on by itself once the engine has accepted it)."""
        if self.applying:
            return False
        if self._applied:
            self._applied = False
            return True
        problem = self.problem()
        if problem is not None:
            self.say("error", problem)
            return False
        if not self.pending():
            return True
        self.setup.start(self._apply())
        return False

    async def _apply(self) -> None:
        self.applying = True
        self.completeChanged.emit()
        self.say("", "")
        self.set_busy(tr(self.APPLYING))
        self.enable_fields(False)
        ok = False
        try:
            await self.apply()
            ok = True
        except EngineError as exc:
            self.say("error", exc.message)  # the fields keep what was typed, to be corrected
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            show_error(self, exc)
        finally:
            self.applying = False
            self.set_busy(None)
            self.enable_fields(True)
            self.completeChanged.emit()
        if ok and self.setup.currentPage() is self and not self.setup.closing:
            self._applied = True
            self.advance()


# --- 1. prerequisites --------------------------------------------------------------------------------------
class _CheckRow(QFrame):
    """One prerequisite: its mark, title, what was found and what to do, and its own Re-check button."""

    def __init__(self, check: PrerequisiteCheck, title_width: int) -> None:
        super().__init__(objectName="prerequisite_row")
        self.setAttribute(Qt.WidgetAttribute.WA_StyledBackground, True)
        self.key = check.key
        self.check = check
        self.mark = QLabel(objectName="prerequisite_mark", alignment=Qt.AlignmentFlag.AlignCenter)
        self.mark.setFixedWidth(28)
        self.title = QLabel(objectName="prerequisite_title", wordWrap=True)
        self.title.setFixedWidth(title_width)
        self.found = QLabel(objectName="prerequisite_found", wordWrap=True)
        self.found.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        self.action = QLabel(objectName="prerequisite_action", wordWrap=True)
        self.action.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        self.button = QPushButton(tr("Re-check"), objectName=f"recheck_{check.key}")
        self.button.setFixedWidth(96)
        texts = QVBoxLayout()
        texts.setSpacing(2)
        texts.addWidget(self.found)
        texts.addWidget(self.action)
        layout = QHBoxLayout(self)
        layout.setContentsMargins(4, 8, 4, 8)
        layout.addWidget(self.mark, 0, Qt.AlignmentFlag.AlignTop)
        layout.addWidget(self.title, 0, Qt.AlignmentFlag.AlignTop)
        layout.addLayout(texts, 1)
        layout.addWidget(self.button, 0, Qt.AlignmentFlag.AlignTop)
        self.show_check(check)

    def show_check(self, check: PrerequisiteCheck) -> None:
        self.check = check
        level = check.status if check.status in MARKS else "failed"
        status = tr(STATUS_TEXTS.get(check.status, check.status))
        self.mark.setText(MARKS.get(check.status, "?"))
        self.mark.setToolTip(status)
        self.mark.setAccessibleName(status)
        set_level(self.mark, level)
        self.title.setText(check.title)
        self.found.setText(check.found)
        self.action.setText(tr("What to do: %s") % check.action if check.action else "")
        self.action.setVisible(bool(check.action))
        set_level(self.action, level)
        self.button.setAccessibleName(tr("Re-check %s") % check.title)
        self.setAccessibleName(f"{check.title}: {status}. {check.found} {check.action}".strip())


class PrerequisitesPage(WizardPage):
    """What the appliance needs, checked by the engine; one check or all again. A failed check does not stop the
    admin: the page says what will not work until it is fixed."""

    TITLE_WIDTH = 170

    def __init__(self, setup: SetupWizard) -> None:
        super().__init__(setup, tr("Prerequisites"),
                         tr("What this appliance needs to replicate well, as the engine finds it now."), expand=True)
        self.setObjectName("prerequisites_page")
        #: The checks as last reported, by key, in the engine's order.
        self.rows: dict[str, _CheckRow] = {}
        #: The keys being checked now ("" for all).
        self.checking: set[str] = set()
        self.checked_at: float | None = None
        self.recheck_all_button = QPushButton(tr("Re-check all"), objectName="recheck_all")
        self.recheck_all_button.setAccessibleName(tr("Re-check all prerequisites"))
        self.recheck_all_button.clicked.connect(self.on_recheck_all_button_clicked)
        self.checked_label = QLabel(objectName="prerequisites_checked")
        bar = QHBoxLayout()
        bar.addWidget(self.checked_label, 1)
        bar.addWidget(self.recheck_all_button)
        self.header = QWidget()
        header = QHBoxLayout(self.header)
        header.setContentsMargins(4, 0, 4, 0)
        self.header.hide()  # until there are checks under it
        for text, width in (("", 28), (tr("Check"), self.TITLE_WIDTH), (tr("What was found and what to do"), 0)):
            label = QLabel(text, objectName="prerequisites_header")
            if width:
                label.setFixedWidth(width)
                header.addWidget(label)
            else:
                header.addWidget(label, 1)
        self.list = QWidget(objectName="prerequisites_list")
        self.list.setAttribute(Qt.WidgetAttribute.WA_StyledBackground, True)
        self.list_layout = QVBoxLayout(self.list)
        self.list_layout.setContentsMargins(0, 0, 0, 0)
        self.list_layout.setSpacing(0)
        self.list_layout.addStretch(1)
        scroll = QScrollArea(objectName="prerequisites_scroll", widgetResizable=True)
        scroll.setWidget(self.list)
        scroll.setFrameShape(QFrame.Shape.NoFrame)
        scroll.setHorizontalScrollBarPolicy(Qt.ScrollBarPolicy.ScrollBarAlwaysOff)
        self.summary = QLabel(objectName="prerequisites_summary", wordWrap=True)
        self.summary.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        self.summary.hide()
        self.body.addLayout(bar)
        self.body.addWidget(self.summary)
        self.body.addSpacing(6)
        self.body.addWidget(self.header)
        self.body.addWidget(scroll, 1)

    def __repr__(self) -> str:
        return f"<PrerequisitesPage rows={[(k, r.check.status) for k, r in self.rows.items()]} " \
               f"checking={sorted(self.checking)}>"

    def initializePage(self) -> None:
        if not self.rows and not self.checking:
            self.setup.start(self.recheck(None))

    # --- showing -----------------------------------------------------------------------------------
    def show_prerequisites(self, prerequisites: Prerequisites) -> None:
        """Show every check (the rows follow the engine's list)."""
        for row in self.rows.values():
            row.deleteLater()
        self.rows = {}
        for check in prerequisites.checks:
            row = _CheckRow(check, self.TITLE_WIDTH)
            row.setProperty("first", not self.rows)
            row.button.clicked.connect(partial(self.on_row_button_clicked, check.key))
            self.list_layout.insertWidget(self.list_layout.count() - 1, row)
            self.rows[check.key] = row
        self.header.setVisible(bool(self.rows))
        self._checked(prerequisites.checked_at)

    def show_check(self, check: PrerequisiteCheck, checked_at: float | None) -> None:
        """Show one check again; the other rows stay as they are."""
        row = self.rows.get(check.key)
        if row is None:
            return
        row.show_check(check)
        self._checked(checked_at)

    def _checked(self, at: float | None) -> None:
        self.checked_at = at if at is not None else time.time()
        self.checked_label.setText(tr("Checked at %s.") % time.strftime("%H:%M:%S", time.localtime(self.checked_at)))
        text, level = summary_text(Prerequisites(tuple(r.check for r in self.rows.values()), self.checked_at))
        self.summary.setText(text)
        set_level(self.summary, level)
        self.summary.show()

    def _update_buttons(self) -> None:
        everything = "" in self.checking
        self.recheck_all_button.setEnabled(not self.checking)
        for key, row in self.rows.items():
            row.button.setEnabled(not everything and key not in self.checking)
            row.button.setText(tr("Checking…") if everything or key in self.checking else tr("Re-check"))

    # --- checking ----------------------------------------------------------------------------------
    def on_recheck_all_button_clicked(self) -> None:
        if not self.checking:
            self.setup.start(self.recheck(None))

    def on_row_button_clicked(self, key: str, *_: object) -> None:
        if "" not in self.checking and key not in self.checking:
            self.setup.start(self.recheck(key))

    async def recheck(self, key: str | None) -> None:
        """Check ``key`` again (None: all). Only that row changes; the admin may go on meanwhile."""
        self.checking.add(key or "")
        self._update_buttons()
        if key is None and not self.rows:
            self.checked_label.setText("")
        self.set_busy(tr("Checking the prerequisites…") if key is None else
                      tr("Checking %s…") % self.rows[key].check.title if key in self.rows else tr("Checking…"))
        try:
            result = await self.bridge.prerequisites(key)
        except EngineError as exc:
            self.say("error", tr("The checks did not run: %s") % exc.message)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            show_error(self, exc)
        else:
            self.say("", "")
            if key is None:
                self.show_prerequisites(result)
            else:
                for check in result.checks:
                    if check.key == key:
                        self.show_check(check, result.checked_at)
        finally:
            self.checking.discard(key or "")
            if not self.checking:
                self.set_busy(None)
            self._update_buttons()


# --- 2. licence ----------------------------------------------------------------------------------------------
class LicencePage(WizardPage):
    """The licence: the evaluation and its end, with Activate now; or later, from the Setup page."""

    def __init__(self, setup: SetupWizard) -> None:
        super().__init__(setup, tr("Licence"),
                         tr("This appliance starts with an evaluation licence; activate yours now or later."))
        self.setObjectName("licence_page")
        self.licence: LicenceStatus | None = None
        self.state = QLabel(tr("Waiting for the engine to report the licence…"), objectName="wizard_licence",
                            wordWrap=True)
        self.detail = QLabel(objectName="wizard_licence_detail", wordWrap=True)
        self.activate_button = QPushButton(tr("Activate now…"), objectName="wizard_activate_licence")
        self.activate_button.setAccessibleName(tr("Activate a licence file now"))
        self.activate_button.clicked.connect(self.on_activate_button_clicked)
        later = QLabel(tr("Or later: press Next; the Setup page and the licence banner offer Activate licence "
                          "whenever you have the file."), objectName="hint", wordWrap=True)
        row = QHBoxLayout()
        row.addWidget(self.activate_button)
        row.addWidget(later, 1)
        self.body.addWidget(self.state)
        self.body.addWidget(self.detail)
        self.body.addSpacing(12)
        self.body.addLayout(row)
        self.dialog: ActivateLicenceDialog | None = None
        if self.bridge.licence is not None:
            self.show_licence(self.bridge.licence)

    def __repr__(self) -> str:
        return f"<LicencePage state={self.licence.state if self.licence else None}>"

    def show_licence(self, licence: LicenceStatus) -> None:
        self.licence = licence
        self.state.setText(licence_text(licence))
        set_level(self.state, licence.alarm)
        if licence.state == "evaluation":
            text = tr("During the evaluation everything works. When it ends, servers that replicate go on, but no "
                      "new server can be added until a licence is activated.")
            if licence.message:
                text = licence.message + " " + text
        elif licence.state == "expired":
            text = licence.message or tr("Activate a licence to add servers again.")
        else:
            text = activated_text(licence)
        self.detail.setText(text)
        self.activate_button.setText(tr("Activate now…") if licence.state != "active" else
                                     tr("Activate another licence…"))

    def on_activate_button_clicked(self) -> None:
        """Open the console's Activate licence dialog (one at a time); the page follows the new licence."""
        if self.dialog is not None and self.dialog.isVisible():
            self.dialog.raise_()
            return
        if self.dialog is not None:
            self.dialog.deleteLater()
        self.dialog = ActivateLicenceDialog(self.bridge, self)
        self.dialog.activated.connect(self.on_dialog_activated)
        self.dialog.open()

    def on_dialog_activated(self, licence: LicenceStatus) -> None:
        self.show_licence(licence)
        self.say("ok", activated_text(licence))


# --- 3. ports -------------------------------------------------------------------------------------------------
class PortsPage(WizardPage):
    """Where the appliance listens. The engine checks a change before anything moves."""

    APPLYING = "Moving the ports…"

    def __init__(self, setup: SetupWizard) -> None:
        super().__init__(setup, tr("Ports and listen address"),
                         tr("Where source servers reach this appliance; registered servers learn new ports at their "
                            "next heartbeat."))
        self.setObjectName("ports_page")
        self.ports: PortsStatus | None = None
        self.management_edit = QLineEdit(objectName="wizard_management_port")
        self.data_edit = QLineEdit(objectName="wizard_data_port")
        self.listen_edit = QLineEdit(objectName="wizard_listen_address")
        for edit, name in ((self.management_edit, tr("Management port")), (self.data_edit, tr("Data port")),
                           (self.listen_edit, tr("Listen address"))):
            edit.setAccessibleName(name)
            edit.setMaximumWidth(220)
            edit.textEdited.connect(lambda *_: self.say("", ""))
        self.management_edit.setToolTip(tr("Source servers register and send heartbeats to this port."))
        self.data_edit.setToolTip(tr("Source servers send the replicated data to this port."))
        self.listen_edit.setToolTip(tr("0.0.0.0 listens on every IPv4 address of this machine."))
        form = QFormLayout()
        form.addRow(tr("Management port"), self._with_hint(self.management_edit,
                                                          tr("registration and heartbeats (default 443)")))
        form.addRow(tr("Data port"), self._with_hint(self.data_edit, tr("replicated data (default 9443)")))
        form.addRow(tr("Listen address"), self._with_hint(self.listen_edit,
                                                         tr("0.0.0.0: every IPv4 address of this machine")))
        self.current = QLabel(tr("The engine has not reported its ports yet; you can set them later on the Ports "
                                 "page."), objectName="wizard_ports_current", wordWrap=True)
        self.moving = QLabel(objectName="wizard_moving", wordWrap=True)
        self.moving.hide()
        note = QLabel(tr("Next applies what you changed. Open these ports in the firewall in front of the appliance; "
                         "the Ports page lists every rule and tests connectivity."), objectName="hint", wordWrap=True)
        self.body.addLayout(form)
        self.body.addWidget(self.current)
        self.body.addWidget(self.moving)
        self.body.addWidget(note)
        if self.bridge.ports is not None:
            self.show_ports(self.bridge.ports)

    def __repr__(self) -> str:
        p = self.ports
        now = f"{p.management_port}/{p.data_port}@{p.listen_address}" if p else None
        return f"<PortsPage ports={now} changes={self.changes() if self.problem() is None else 'invalid'}>"

    @staticmethod
    def _with_hint(edit: QLineEdit, hint: str) -> QHBoxLayout:
        row = QHBoxLayout()
        row.addWidget(edit)
        row.addWidget(QLabel(hint, objectName="hint"), 1)
        return row

    def show_ports(self, ports: PortsStatus, *, fill: bool = False) -> None:
        """Show ``ports``; the fields follow unless the admin has changed them (or ``fill``)."""
        editing = self.ports is not None and (self.problem() is not None or bool(self.changes()))
        self.ports = ports
        self.current.setText(tr("Now: management port %d, data port %d, listening on %s.")
                             % (ports.management_port, ports.data_port, ports.listen_address))
        text = moving_text(ports)
        self.moving.setText(text)
        self.moving.setVisible(bool(text))
        if fill or not editing:
            self.management_edit.setText(str(ports.management_port))
            self.data_edit.setText(str(ports.data_port))
            self.listen_edit.setText(ports.listen_address)

    def fields(self) -> list[QWidget]:
        return [self.management_edit, self.data_edit, self.listen_edit]

    def problem(self) -> str | None:
        if self.ports is None:
            return None  # an engine that has not told its ports: nothing to change here (the Ports page later)
        problem = port_problem(self.management_edit.text(), tr("management")) or \
            port_problem(self.data_edit.text(), tr("data")) or listen_problem(self.listen_edit.text())
        if problem is None and port_number(self.management_edit.text()) == port_number(self.data_edit.text()):
            problem = tr("The management and data ports must differ (both are %s).") % self.data_edit.text().strip()
        return problem

    def changes(self) -> dict[str, Any]:
        """What the fields change, as :meth:`EngineBridge.set_ports` takes it (checked by :meth:`problem` first)."""
        if self.ports is None:
            return {}
        changed: dict[str, Any] = {}
        management, data = port_number(self.management_edit.text()), port_number(self.data_edit.text())
        if management != self.ports.management_port:
            changed["management"] = management
        if data != self.ports.data_port:
            changed["data"] = data
        listen = check_address(self.listen_edit.text())
        if listen != self.ports.listen_address:
            changed["listen"] = listen
        return changed

    def pending(self) -> bool:
        return bool(self.changes())

    async def apply(self) -> None:
        ports = await self.bridge.set_ports(**self.changes())
        self.show_ports(ports, fill=True)

    def advance(self) -> None:
        """A moving management port stays on the page, so that the admin reads when the old one closes."""
        if self.ports is not None and self.ports.old_management_port is not None:
            self._applied = False  # nothing is pending now: the next Next passes by itself
            self.say("ok", tr("Applied. Press Next to go on."))
            return
        super().advance()


# --- 4. registration ----------------------------------------------------------------------------------------------
class RegistrationPage(WizardPage):
    """What a source server needs to register: the passphrase, the CA fingerprint and the command to run there."""

    def __init__(self, setup: SetupWizard) -> None:
        super().__init__(setup, tr("Registration"),
                         tr("Source servers register with this passphrase, checking the appliance by its "
                            "fingerprint."))
        self.setObjectName("registration_page")
        self.passphrase = CopyField("wizard_passphrase")
        self.passphrase.edit.setAccessibleName(tr("Registration passphrase"))
        self.passphrase.copy_button.setAccessibleName(tr("Copy the passphrase"))
        self.fingerprint = CopyField("wizard_ca_fingerprint")
        self.fingerprint.edit.setAccessibleName(tr("CA fingerprint (SHA-256)"))
        self.fingerprint.copy_button.setAccessibleName(tr("Copy the CA fingerprint"))
        command = CommandField("wizard_mobility_command", "wizard_copy_command", height=84,
                               accessible=tr("Command to run on the source server"),
                               copy_accessible=tr("Copy the command"))
        self.command, self.copy_command, self.copied_timer = command.text_edit, command.copy_button, \
            command.copied_timer
        form = QFormLayout()
        form.addRow(tr("Passphrase"), self.passphrase)
        form.addRow(tr("CA fingerprint (SHA-256)"), self.fingerprint)
        steps = QLabel(tr("On each source server: put the passphrase in a file readable only by root, then run the "
                          "command below. Replace --disk with the server's disks (one --disk each) and --state-dir "
                          "with where it may keep its registration."), objectName="hint", wordWrap=True)
        self.waiting = QLabel(tr("Waiting for the engine…"), objectName="hint")
        self.body.addLayout(form)
        self.body.addSpacing(8)
        self.body.addWidget(steps)
        self.body.addWidget(command)
        self.body.addWidget(QLabel(tr("You can come back to this on the Setup page, which can also rotate the "
                                      "passphrase."), objectName="hint", wordWrap=True))
        self.body.addWidget(self.waiting)
        self.info: SetupInfo | None = None

    def __repr__(self) -> str:
        return f"<RegistrationPage appliance={self.info.appliance_id if self.info else None}>"

    def show_setup(self, info: SetupInfo) -> None:
        self.info = info
        self.waiting.hide()
        self.passphrase.set_text(info.passphrase)
        self.fingerprint.set_text(info.ca_fingerprint)
        self.command.setPlainText(info.mobility_command)


# --- 5. the default policy ---------------------------------------------------------------------------------------
class PolicyPage(WizardPage):
    """The settings of the policy named ``default``, which servers replicate with unless given another."""

    APPLYING = "Saving the default policy…"

    def __init__(self, setup: SetupWizard) -> None:
        super().__init__(setup, tr("Default replication policy"),
                         tr("How often servers make recovery points and how long they are kept, unless you give a "
                            "server another policy."))
        self.setObjectName("policy_page")
        self.policy: Policy | None = None
        self.loading = False
        self.edits: dict[str, QLineEdit] = {}
        form = QFormLayout()
        for key, label, example, hint in SETTINGS:  # as the Policies page's dialog labels and explains them
            edit = QLineEdit(objectName=f"policy_{key}")
            edit.setAccessibleName(tr(label))
            edit.setPlaceholderText(tr("e.g. %s") % example)
            edit.setToolTip(tr(hint))
            edit.setMaximumWidth(120)
            edit.textEdited.connect(lambda *_: self.say("", ""))
            self.edits[key] = edit
            row = QHBoxLayout()
            row.addWidget(edit)
            if key == "app_consistent_every":
                self.app_off = QCheckBox(tr("Off"), objectName="policy_app_consistent_off")
                self.app_off.setAccessibleName(tr("No app-consistent points"))
                self.app_off.toggled.connect(self.on_app_off_toggled)
                row.addWidget(self.app_off)
            row.addWidget(QLabel(tr(hint), objectName="hint", wordWrap=True), 1)
            form.addRow(tr(label) + ":", row)
        hint = QLabel(tr("Durations as 30s, 15m, 4h or 2d. Servers that replicate with this policy follow from their "
                         "next cycle."), objectName="hint", wordWrap=True)
        self.body.addLayout(form)
        self.body.addWidget(hint)

    def __repr__(self) -> str:
        changes = self.changes() if self.problem() is None else "invalid"
        return f"<PolicyPage policy={self.policy} changes={changes}>"

    def initializePage(self) -> None:
        if self.policy is None and not self.loading:
            self.setup.start(self.load())

    async def load(self) -> None:
        """Read the default policy from the engine and show it."""
        self.loading = True
        self.set_busy(tr("Reading the default policy…"))
        self.enable_fields(False)
        try:
            policies = await self.bridge.policies()
        except EngineError as exc:
            self.say("error", exc.message)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            show_error(self, exc)
        else:
            policy = next((p for p in policies if p.name == DEFAULT_POLICY), None)
            if policy is None:
                self.say("warning", tr("The engine has no policy named “%s”; press Next to go on.") % DEFAULT_POLICY)
            else:
                self.show_policy(policy)
        finally:
            self.loading = False
            self.set_busy(None)
            self.enable_fields(self.policy is not None)

    def show_policy(self, policy: Policy) -> None:
        self.policy = policy
        for key, *_ in SETTINGS:
            seconds = getattr(policy, key)
            self.edits[key].setText(durations.setting_text(seconds) if seconds is not None else "")
        self.app_off.setChecked(policy.app_consistent_every is None)
        if policy.app_consistent_every is None:
            self.edits["app_consistent_every"].setText("4h")  # what "on" would start from
        self.app_off_changed()

    def on_app_off_toggled(self, _checked: bool) -> None:
        self.say("", "")
        self.app_off_changed()

    def app_off_changed(self) -> None:
        self.edits["app_consistent_every"].setEnabled(self.policy is not None and not self.applying
                                                      and not self.app_off.isChecked())

    def fields(self) -> list[QWidget]:
        return [*self.edits.values(), self.app_off]

    def enable_fields(self, enabled: bool) -> None:
        super().enable_fields(enabled)
        self.app_off_changed()  # the app-consistent interval stays off while Off is ticked

    def typed(self) -> dict[str, str]:
        """What the fields say, as the Policies page's check takes it (Off ticked: "off")."""
        typed = {key: edit.text() for key, edit in self.edits.items()}
        if self.app_off.isChecked():
            typed["app_consistent_every"] = "off"
        return typed

    def problem(self) -> str | None:
        """What does not fit the product's limits, in the Policies page's words (:func:`check_policy_input`)."""
        if self.policy is None:
            return None
        try:
            check_policy_input(None, self.typed())
        except ValueError as exc:
            return str(exc)
        return None

    def changes(self) -> dict[str, str]:
        """The settings the admin changed, as typed ("15m", "off"); compared by what they mean ("60m" is "1h").
        Checked by :meth:`problem` first."""
        if self.policy is None:
            return {}
        typed = self.typed()
        return policy_changes(self.policy, typed, check_policy_input(None, typed))

    def pending(self) -> bool:
        return bool(self.changes())

    async def apply(self) -> None:
        self.show_policy(await self.bridge.edit_policy(DEFAULT_POLICY, **self.changes()))


# --- 6. agent updates ---------------------------------------------------------------------------------------------
class UpdatesPage(WizardPage):
    """How the appliance's agents update: by themselves in a daily window, or when the admin presses Update.
    Finish applies the mode, then records the set-up as done."""

    APPLYING = "Finishing the set-up…"

    def __init__(self, setup: SetupWizard) -> None:
        super().__init__(setup, tr("Agent updates"),
                         tr("How the appliance's own agents take new versions from the signed update feed."))
        self.setObjectName("updates_page")
        self.updates: UpdatesStatus | None = None
        #: Set once the engine has recorded the set-up as done.
        self.completed: SetupInfo | None = None
        self.auto_radio = QRadioButton(tr("Automatic (recommended)"), objectName="wizard_mode_auto")
        self.manual_radio = QRadioButton(tr("Manual"), objectName="wizard_mode_manual")
        self.auto_radio.setAccessibleName(tr("Automatic updates"))
        self.manual_radio.setAccessibleName(tr("Manual updates"))
        self.modes = QButtonGroup(self)
        self.modes.addButton(self.auto_radio)
        self.modes.addButton(self.manual_radio)
        self.modes.buttonClicked.connect(lambda *_: self.say("", ""))
        auto_hint = QLabel(tr("Agents install new versions together, every day in the install window, with a health "
                              "check and automatic rollback. Replication pauses only for a reconnect."),
                           objectName="hint", wordWrap=True)
        manual_hint = QLabel(tr("The Agents page lists new versions; they install only when you press Update or "
                                "Update all."), objectName="hint", wordWrap=True)
        for hint in (auto_hint, manual_hint):
            hint.setIndent(24)
        self.mode_now = QLabel(objectName="wizard_mode_now", wordWrap=True)
        self.body.addWidget(self.auto_radio)
        self.body.addWidget(auto_hint)
        self.body.addSpacing(8)
        self.body.addWidget(self.manual_radio)
        self.body.addWidget(manual_hint)
        self.body.addSpacing(12)
        self.body.addWidget(self.mode_now)
        self.body.addWidget(QLabel(tr("Finish applies your choice and ends the set-up. You can change it at any time "
                                      "on the Agents page."), objectName="hint", wordWrap=True))
        if self.bridge.updates is not None:
            self.show_updates(self.bridge.updates)
        else:
            self.mode_now.setText(tr("The engine has not reported its update settings yet; Finish keeps them as "
                                     "they are."))
            for radio in (self.auto_radio, self.manual_radio):
                radio.setEnabled(False)

    def __repr__(self) -> str:
        return f"<UpdatesPage mode={self.updates.mode if self.updates else None} chosen={self.chosen()} " \
               f"completed={self.completed is not None}>"

    def show_updates(self, updates: UpdatesStatus) -> None:
        """Show the engine's mode; the choice follows unless the admin has changed it."""
        follow = self.updates is None or self.chosen() == self.updates.mode
        self.updates = updates
        for radio in (self.auto_radio, self.manual_radio):
            radio.setEnabled(not self.applying)
        if follow:
            (self.auto_radio if updates.mode == "auto" else self.manual_radio).setChecked(True)
        self.mode_now.setText(tr("Now: %s") % mode_text(updates))

    def chosen(self) -> str | None:
        return "auto" if self.auto_radio.isChecked() else "manual" if self.manual_radio.isChecked() else None

    def fields(self) -> list[QWidget]:
        return [self.auto_radio, self.manual_radio] if self.updates is not None else []

    def pending(self) -> bool:
        return self.completed is None

    async def apply(self) -> None:
        mode = self.chosen()
        if self.updates is not None and mode is not None and mode != self.updates.mode:
            self.show_updates(await self.bridge.set_update_mode(mode))
        self.completed = await self.bridge.complete_setup()

    def advance(self) -> None:
        self.setup.accept()


# --- the wizard ------------------------------------------------------------------------------------------------------
class SetupWizard(QWizard):
    """The first-run set-up, re-runnable. ``setup``: the set-up as the console last heard it (the registration page
    shows it; :attr:`EngineBridge.setup_changed` keeps it current).

    Closing it (Cancel, Escape, the window's close button) cancels what is under way and calls nothing further;
    what was applied stays. Finish applies the last page and records the set-up as done, then emits
    :attr:`finished_setup`.
    """

    #: The engine recorded the set-up as done (SetupInfo, with ``setup_completed_at``).
    finished_setup = Signal(object)
    PREREQUISITES, LICENCE, PORTS, REGISTRATION, POLICY, UPDATES = range(6)

    def __init__(self, bridge: EngineBridge, parent: QWidget | None = None, *, setup: SetupInfo | None = None) -> None:
        super().__init__(parent)
        self.bridge = bridge
        self.setObjectName("setup_wizard")
        self.setWindowTitle(tr("Set up the appliance"))
        self.setWizardStyle(QWizard.WizardStyle.ModernStyle)
        self.setOption(QWizard.WizardOption.NoBackButtonOnStartPage, True)
        self.resize(980, 680)
        #: Every engine command under way, referenced until it ends.
        self.tasks = TaskOwner()
        #: Set once the wizard closes: nothing more starts.
        self.closing = False
        self.prerequisites_page = PrerequisitesPage(self)
        self.licence_page = LicencePage(self)
        self.ports_page = PortsPage(self)
        self.registration_page = RegistrationPage(self)
        self.policy_page = PolicyPage(self)
        self.updates_page = UpdatesPage(self)
        for number, page in enumerate((self.prerequisites_page, self.licence_page, self.ports_page,
                                       self.registration_page, self.policy_page, self.updates_page)):
            self.setPage(number, page)
        for which, name in ((QWizard.WizardButton.NextButton, tr("Next")), (QWizard.WizardButton.BackButton,
                            tr("Back")), (QWizard.WizardButton.FinishButton, tr("Finish set-up")),
                            (QWizard.WizardButton.CancelButton, tr("Close"))):
            self.button(which).setAccessibleName(name)
        self.setButtonText(QWizard.WizardButton.CancelButton, tr("Close"))
        self.button(QWizard.WizardButton.CancelButton).setToolTip(
            tr("Close the wizard; what you applied stays, and it opens again at the next start until you finish."))
        if setup is not None:
            self.registration_page.show_setup(setup)
        if bridge.state != "attached":
            self._on_connection_changed(bridge.state, "")
        self._connections = (
            (bridge.setup_changed, self.registration_page.show_setup),
            (bridge.licence_changed, self.licence_page.show_licence),
            (bridge.ports_changed, self.ports_page.show_ports),
            (bridge.updates_changed, self.updates_page.show_updates),
            (bridge.connection_changed, self._on_connection_changed),
        )
        for signal, slot in self._connections:
            signal.connect(slot)

    def __repr__(self) -> str:
        return f"<SetupWizard page={self.currentId()} tasks={len(self.tasks)} closing={self.closing} " \
               f"completed={self.updates_page.completed is not None}>"

    def _on_connection_changed(self, state: str, detail: str) -> None:
        for page_id in self.pageIds():
            page = self.page(page_id)
            if isinstance(page, WizardPage):
                page.show_engine(state, detail or tr("The engine is not running."))

    # --- tasks -----------------------------------------------------------------------------------------
    def start(self, coro: Coroutine[Any, Any, None]) -> asyncio.Task[None] | None:
        """Run a command of the wizard as a task it keeps until the task ends (nothing once it closes)."""
        return self.tasks.start(coro)

    # --- closing -------------------------------------------------------------------------------------
    def done(self, result: int) -> None:
        """Finish (once the last page has applied) or Close: cancel what is under way and stop listening."""
        if result == QWizard.DialogCode.Accepted and not self.validateCurrentPage():
            return  # the last page applies first; it accepts again once the engine has answered
        if not self.closing:
            self.closing = True
            self.tasks.cancel_all()  # not the task that finishes the set-up and closes
            for signal, slot in self._connections:
                with contextlib.suppress(RuntimeError, TypeError):
                    signal.disconnect(slot)
        completed = self.updates_page.completed
        super(QWizard, self).done(result)  # QWizard.done would validate the page again
        if result == QWizard.DialogCode.Accepted and completed is not None:
            self.finished_setup.emit(completed)
