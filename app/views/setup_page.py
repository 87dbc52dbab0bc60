"""Setup: what an admin needs to register a source server, and the appliance's identity."""

from __future__ import annotations

import time

from PySide6.QtCore import Signal
from PySide6.QtGui import QShowEvent
from PySide6.QtWidgets import (
    QFormLayout,
    QGroupBox,
    QHBoxLayout,
    QLabel,
    QPushButton,
    QVBoxLayout,
    QWidget,
)
from qasync import asyncSlot

from app.bridge import EngineBridge, EngineError, Event, LicenceStatus, SetupInfo, TargetStatus
from app.errors import show_error
from app.views.target_dialog import TargetDialog, location_text
from app.widgets.copy_field import COPIED_MS as COPIED_MS  # where the tests read it
from app.widgets.copy_field import CommandField, CopyField
from app.widgets.dialogs import confirm
from app.widgets.formatting import set_tone, tr
from app.widgets.tasks import TaskOwner

#: How many servers the Setup page names before it counts the rest (all of them are in the line's tooltip).
NAMED_SERVERS = 5


def _days_left(days: int) -> str:
    return tr("1 day left") if days == 1 else tr("%d days left") % days


def licence_text(licence: LicenceStatus) -> str:
    """The licence in one line for the Setup page."""
    end = time.strftime("%Y-%m-%d", time.localtime(licence.expires_at)) if licence.expires_at else None
    if licence.state == "expired":
        return tr("Expired on %s: servers that replicate go on; no new server can be added") % end
    if licence.state == "evaluation":
        return tr("Evaluation, %s (ends %s)") % (_days_left(licence.days_left or 0), end)
    servers = tr("unlimited servers") if licence.max_servers is None else tr("up to %d servers") % licence.max_servers
    until = tr("no end") if end is None else tr("%s (ends %s)") % (_days_left(licence.days_left or 0), end)
    return tr("Active for %s, %s, %s") % (licence.licensee, servers, until)


def names_text(names: tuple[str, ...] | list[str]) -> str:
    """``web-01``, ``web-01 and db-01``, ``a, b and c``; past :data:`NAMED_SERVERS` names, ``a, b, c, d, e and 7
    more``."""
    if len(names) > NAMED_SERVERS:
        return tr("%s and %d more") % (", ".join(names[:NAMED_SERVERS]), len(names) - NAMED_SERVERS)
    if len(names) > 1:
        return tr("%s and %s") % (", ".join(names[:-1]), names[-1])
    return names[0] if names else ""


def elsewhere_text(target: TargetStatus) -> str:
    """The servers replicating to another target than the current one, in a sentence ("" when none)."""
    names = target.servers_elsewhere
    if not names:
        return ""
    if len(names) == 1:
        return tr("%s keeps the target it began on until disabled and enabled again.") % names[0]
    return tr("%s keep the target they began on until disabled and enabled again.") % names_text(names)


class SetupPage(QWidget):
    #: The admin asked to activate a licence (the main window opens the dialog).
    activate_licence_requested = Signal()
    #: The admin asked to run the first-run setup wizard again.
    run_wizard_requested = Signal()

    def __init__(self, bridge: EngineBridge, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.bridge = bridge
        self.info: SetupInfo | None = None
        #: The target storage as the engine last reported it (None until then, and from an engine before admin 1.6).
        self.target: TargetStatus | None = None
        #: Whether the target shown may be out of date: asked again when the page shows (or at once if it does).
        self.target_stale = True
        self.target_dialog: TargetDialog | None = None
        self.tasks = TaskOwner()
        self._target_asked = 0

        title = QLabel(tr("Appliance set-up"), objectName="page_title")
        self.wizard_button = QPushButton(tr("Run setup again…"), objectName="run_setup_wizard")
        self.wizard_button.setToolTip(tr("The first-run steps: prerequisites, licence, ports, registration, the "
                                         "default policy and agent updates."))
        self.wizard_button.clicked.connect(self.run_wizard_requested)
        header = QHBoxLayout()
        header.addWidget(title, 1)
        header.addWidget(self.wizard_button)
        intro = QLabel(tr("Register a source server: copy the passphrase into a file on it, then run the "
                          "command below there. The fingerprint lets it check that it talks to this appliance."),
                       wordWrap=True)

        reg = QGroupBox(tr("Registration"))
        form = QFormLayout(reg)
        self.passphrase = CopyField("passphrase")
        self.rotate_button = QPushButton(tr("Rotate…"), objectName="rotate_passphrase")
        self.rotate_button.setToolTip(tr("Issue a new passphrase. Registered servers keep working."))
        self.rotate_button.clicked.connect(self.on_rotate_button_clicked)
        pass_row = QHBoxLayout()
        pass_row.addWidget(self.passphrase, 1)
        pass_row.addWidget(self.rotate_button)
        form.addRow(tr("Passphrase"), pass_row)
        self.fingerprint = CopyField("ca_fingerprint")
        form.addRow(tr("CA fingerprint (SHA-256)"), self.fingerprint)
        command = CommandField("mobility_command", "copy_command", height=74,
                               hint=tr("Replace --disk with the server's disks (one --disk each) and --state-dir "
                                       "with where it may keep its registration."))
        self.command, self.copy_command = command.text_edit, command.copy_button
        form.addRow(tr("On the source server"), command)
        # The same registration for a Linux source without Python 3.11: the bundle, downloaded from this appliance.
        install = CommandField("install_command", "copy_install_command", height=74,
                               accessible=tr("Command that installs the mobility bundle on a source server"),
                               copy_accessible=tr("Copy the install command"),
                               hint=tr("For a Linux source without Python 3.11: downloads the mobility bundle from "
                                       "this appliance, checks it against the CA fingerprint, and installs it. Put "
                                       "the passphrase in passphrase.txt where you run it, and replace "
                                       "--disk /dev/sdX with the server's disks (one --disk each)."))
        self.install, self.copy_install = install.text_edit, install.copy_button
        self.copied_timer = install.copied_timer
        form.addRow(tr("Or install the bundle"), install)

        target = QGroupBox(tr("Target storage"), objectName="target_group")
        tform = QFormLayout(target)
        self.target_location = QLabel(tr("…"), objectName="target_location", wordWrap=True)
        self.change_target_button = QPushButton(tr("Change…"), objectName="change_target")
        self.change_target_button.setToolTip(tr("Choose this appliance's own disk or a container of an Azure Blob "
                                                "Storage account for the servers enabled from now on."))
        self.change_target_button.setEnabled(False)
        self.change_target_button.clicked.connect(self.on_change_target_button_clicked)
        target_row = QHBoxLayout()
        target_row.addWidget(self.target_location, 1)
        target_row.addWidget(self.change_target_button)
        tform.addRow(tr("Location"), target_row)
        self.target_elsewhere = QLabel(objectName="target_elsewhere", wordWrap=True)
        tform.addRow(tr("Elsewhere"), self.target_elsewhere)
        tform.setRowVisible(self.target_elsewhere, False)
        self.target_form = tform
        tform.addRow("", QLabel(tr("Servers enabled from now on replicate there: their seed disks and recovery points. "
                                   "The cache stays on this appliance."), objectName="hint"))

        appliance = QGroupBox(tr("Appliance"))
        aform = QFormLayout(appliance)
        self.appliance_id = QLabel(objectName="appliance_id")
        self.management_port = QLabel(objectName="management_port")
        self.data_port = QLabel(objectName="data_port")
        self.secret_store = QLabel(objectName="secret_store", wordWrap=True)
        aform.addRow(tr("Appliance id"), self.appliance_id)
        aform.addRow(tr("Management port"), self.management_port)
        aform.addRow(tr("Data port"), self.data_port)
        aform.addRow(tr("Secrets"), self.secret_store)
        self.licence = QLabel(tr("…"), objectName="licence_state", wordWrap=True)
        self.activate_button = QPushButton(tr("Activate licence…"), objectName="setup_activate_licence")
        self.activate_button.clicked.connect(self.activate_licence_requested)
        licence_row = QHBoxLayout()
        licence_row.addWidget(self.licence, 1)
        licence_row.addWidget(self.activate_button)
        aform.addRow(tr("Licence"), licence_row)

        layout = QVBoxLayout(self)
        layout.addLayout(header)
        layout.addWidget(intro)
        layout.addWidget(reg)
        layout.addWidget(target)
        layout.addWidget(appliance)
        layout.addStretch(1)
        bridge.setup_changed.connect(self.show_setup)
        bridge.licence_changed.connect(self.show_licence)
        bridge.event_added.connect(self.on_bridge_event_added)
        self.setEnabled(False)

    def show_licence(self, licence: LicenceStatus) -> None:
        self.licence.setText(licence_text(licence))
        self.licence.setProperty("warning", licence.alarm != "none")
        self.licence.style().polish(self.licence)

    def show_setup(self, info: SetupInfo) -> None:
        self.info = info
        self.setEnabled(True)
        self.passphrase.set_text(info.passphrase)
        self.fingerprint.set_text(info.ca_fingerprint)
        self.command.setPlainText(info.mobility_command)
        self.install.setPlainText(info.install_command)
        if not info.install_command:  # an engine before admin 1.7
            self.install.setPlaceholderText(tr("This engine does not offer the mobility bundle: update it to see "
                                               "the command."))
        self.copy_install.setEnabled(bool(info.install_command))
        self.appliance_id.setText(info.appliance_id)
        self.management_port.setText(str(info.management_port))
        self.data_port.setText(str(info.data_port))
        in_file = info.secret_store.startswith("file")
        self.secret_store.setText(("⚠ " if in_file else "") + info.secret_store)
        self.secret_store.setProperty("warning", in_file)
        self.secret_store.style().polish(self.secret_store)
        self.target_changed_elsewhere()

    # --- the target storage ----------------------------------------------------------------------------------
    def target_changed_elsewhere(self) -> None:
        """The target may have changed (an attach, ``godwit target set``, another console, a check this console
        stopped waiting for): ask the engine now if the page shows, else when it next shows."""
        self.target_stale = True
        if self.isVisible():
            self.refresh_target()

    def showEvent(self, event: QShowEvent) -> None:
        super().showEvent(event)
        if self.target_stale and self.info is not None:
            self.refresh_target()

    def refresh_target(self) -> None:
        """Ask the engine where new copies go. Only once it knows an engine: before the first attach there is
        nobody to ask."""
        if self.bridge.engine is None:
            return
        self.target_stale = False
        self._target_asked += 1
        self.tasks.start(self._load_target(self._target_asked))

    async def _load_target(self, asked: int) -> None:
        try:
            target = await self.bridge.target()
        except EngineError as exc:
            if asked == self._target_asked:
                self.target_stale = True  # asked again when the page next shows
                self._show_target_line(tr("The engine did not say: %s") % exc.message, "bad")
            return
        if asked != self._target_asked:
            return  # a later question is under way: its answer is the one to show
        if target is None:
            self.target = None
            self._show_target_line(tr("This engine does not report its target storage."), "muted")
            self.change_target_button.setEnabled(False)
            self.change_target_button.setToolTip(tr("Update the engine to see and change its target storage."))
            self.target_form.setRowVisible(self.target_elsewhere, False)
        else:
            self.show_target(target)

    def _show_target_line(self, text: str, tone: str) -> None:
        self.target_location.setText(text)
        set_tone(self.target_location, tone)

    def show_target(self, target: TargetStatus) -> None:
        """Where new copies go, and which replicating servers keep another target."""
        self.target = target
        self._show_target_line(location_text(target), "")
        self.change_target_button.setEnabled(True)
        elsewhere = elsewhere_text(target)
        self.target_elsewhere.setText(elsewhere)
        self.target_elsewhere.setToolTip(", ".join(target.servers_elsewhere)
                                         if len(target.servers_elsewhere) > NAMED_SERVERS else "")
        self.target_form.setRowVisible(self.target_elsewhere, bool(elsewhere))

    def on_bridge_event_added(self, event: Event) -> None:
        if event.code == "target-changed":
            self.target_changed_elsewhere()

    def on_change_target_button_clicked(self) -> None:
        """Open the target dialog (raised when it is open already); its answer shows here at once."""
        if self.target_dialog is not None:
            self.target_dialog.raise_()
            self.target_dialog.activateWindow()
            return
        self.target_dialog = dialog = TargetDialog(self.bridge, self.target, self)
        dialog.saved.connect(self.show_target)
        dialog.finished.connect(self.on_target_dialog_finished)
        dialog.open()

    def on_target_dialog_finished(self) -> None:
        self.target_dialog = None  # it deletes itself once its command has ended

    @asyncSlot()
    async def on_rotate_button_clicked(self) -> None:
        if not await confirm(self, tr("Rotate the registration passphrase?"),
                             tr("Servers already registered keep working. Servers not yet registered will need "
                                "the new passphrase."), tr("Rotate")):
            return
        self.rotate_button.setEnabled(False)
        try:
            self.show_setup(await self.bridge.rotate_passphrase())
        except Exception as exc:
            show_error(self, exc)
        finally:
            self.rotate_button.setEnabled(True)
