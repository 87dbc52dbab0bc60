"""Setup: what an admin needs to register a source server, and the appliance's identity."""

from __future__ import annotations

import time

from PySide6.QtCore import Signal
from PySide6.QtGui import QFontDatabase, QGuiApplication
from PySide6.QtWidgets import (
    QFormLayout,
    QGroupBox,
    QHBoxLayout,
    QLabel,
    QPlainTextEdit,
    QPushButton,
    QVBoxLayout,
    QWidget,
)
from qasync import asyncSlot

from app.bridge import EngineBridge, LicenceStatus, SetupInfo
from app.errors import show_error
from app.widgets.copy_field import CopyField
from app.widgets.dialogs import confirm
from app.widgets.formatting import tr


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


class SetupPage(QWidget):
    #: The admin asked to activate a licence (the main window opens the dialog).
    activate_licence_requested = Signal()
    #: The admin asked to run the first-run setup wizard again.
    run_wizard_requested = Signal()

    def __init__(self, bridge: EngineBridge, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.bridge = bridge
        self.info: SetupInfo | None = None

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
        self.command = QPlainTextEdit(readOnly=True, objectName="mobility_command")
        self.command.setFont(QFontDatabase.systemFont(QFontDatabase.SystemFont.FixedFont))
        self.command.setFixedHeight(74)
        self.copy_command = QPushButton(tr("Copy command"), objectName="copy_command")
        self.copy_command.clicked.connect(self.on_copy_command_clicked)
        cmd_box = QVBoxLayout()
        cmd_box.addWidget(self.command)
        cmd_box.addWidget(QLabel(tr("Replace --disk with the server's disks (one --disk each) and --state-dir with "
                                    "where it may keep its registration."), wordWrap=True, objectName="hint"))
        cmd_row = QHBoxLayout()
        cmd_row.addLayout(cmd_box, 1)
        cmd_row.addWidget(self.copy_command)
        form.addRow(tr("On the source server"), cmd_row)

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
        layout.addWidget(appliance)
        layout.addStretch(1)
        bridge.setup_changed.connect(self.show_setup)
        bridge.licence_changed.connect(self.show_licence)
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
        self.appliance_id.setText(info.appliance_id)
        self.management_port.setText(str(info.management_port))
        self.data_port.setText(str(info.data_port))
        in_file = info.secret_store.startswith("file")
        self.secret_store.setText(("⚠ " if in_file else "") + info.secret_store)
        self.secret_store.setProperty("warning", in_file)
        self.secret_store.style().polish(self.secret_store)

    def on_copy_command_clicked(self) -> None:
        QGuiApplication.clipboard().setText(self.command.toPlainText())
        self.copy_command.setText(tr("Copied"))

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
