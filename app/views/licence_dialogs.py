"""The licence banner's two ways out: activate a licence file, or move to a fresh appliance.

Both dialogs open without blocking (``open()``) and do their engine work in async slots while they
stay open: a refusal is shown inside the dialog, under what the admin typed or chose, so it can be
corrected there (an error box would hide the form it is about).
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

from PySide6.QtCore import Qt, Signal
from PySide6.QtGui import QFontDatabase
from PySide6.QtWidgets import (
    QDialog,
    QDialogButtonBox,
    QFileDialog,
    QFormLayout,
    QHBoxLayout,
    QLabel,
    QLineEdit,
    QMessageBox,
    QPushButton,
    QVBoxLayout,
    QWidget,
)
from qasync import asyncSlot

from app.bridge import (
    MIN_PASSPHRASE,
    EngineBridge,
    EngineError,
    LicenceStatus,
    read_licence_file,
    write_atomically,
)
from app.errors import show_error
from app.widgets.formatting import size_text, tr

#: A licence file is small signed text; anything larger is not one, and is not sent to the engine.
MOVING_DOC = "docs/moving-an-appliance.md"


def _error_label(object_name: str) -> QLabel:
    label = QLabel(objectName=object_name, wordWrap=True)
    label.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
    label.hide()
    return label


class ActivateLicenceDialog(QDialog):
    """Choose a licence file; the console reads it and the engine checks and activates it."""

    activated = Signal(object)  #: LicenceStatus

    def __init__(self, bridge: EngineBridge, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.bridge = bridge
        self.setObjectName("activate_licence_dialog")
        self.setWindowTitle(tr("Activate a licence"))
        self.setMinimumWidth(560)
        intro = QLabel(tr("Choose the licence file you received for this appliance. The engine checks it; if it "
                          "refuses the file, nothing changes."), wordWrap=True)
        self.path = QLineEdit(objectName="licence_file", placeholderText=tr("Licence file"))
        self.browse_button = QPushButton(tr("Choose…"), objectName="browse_licence")
        self.browse_button.clicked.connect(self.on_browse_button_clicked)
        row = QHBoxLayout()
        row.addWidget(self.path, 1)
        row.addWidget(self.browse_button)
        self.error = _error_label("licence_error")
        self.buttons = QDialogButtonBox(QDialogButtonBox.StandardButton.Cancel)
        self.activate_button = self.buttons.addButton(tr("Activate"), QDialogButtonBox.ButtonRole.ActionRole)
        self.activate_button.setObjectName("activate_licence_file")
        self.activate_button.setDefault(True)
        self.activate_button.clicked.connect(self.on_activate_button_clicked)
        self.buttons.rejected.connect(self.reject)
        layout = QVBoxLayout(self)
        layout.addWidget(intro)
        layout.addLayout(row)
        layout.addWidget(self.error)
        layout.addWidget(self.buttons)
        self._picker: QFileDialog | None = None

    def on_browse_button_clicked(self) -> None:
        self._picker = QFileDialog(self, tr("Choose the licence file"))
        self._picker.setFileMode(QFileDialog.FileMode.ExistingFile)
        self._picker.fileSelected.connect(self.path.setText)
        self._picker.open()

    def show_refusal(self, text: str) -> None:
        self.error.setText(text)
        self.error.show()
        self.adjustSize()  # room for the wrapped line

    @asyncSlot()
    async def on_activate_button_clicked(self) -> None:
        path = self.path.text().strip()
        if not path:
            self.show_refusal(tr("Choose the licence file first."))
            return
        self.activate_button.setEnabled(False)
        self.error.hide()
        try:
            licence = await self.bridge.activate_licence(read_licence_file(Path(path)))
        except EngineError as exc:  # a file that cannot be read, or the engine's refusal
            self.show_refusal(exc.message)
        except Exception as exc:
            show_error(self, exc)
        else:
            self.activated.emit(licence)
            self.accept()
        finally:
            self.activate_button.setEnabled(True)


def activated_text(licence: LicenceStatus) -> str:
    """What the console says once a licence is active."""
    text = tr("The licence is active")
    if licence.licensee:
        text += tr(" for %s") % licence.licensee
    if licence.expires_at is not None:
        text += tr(" until %s") % time.strftime("%Y-%m-%d", time.localtime(licence.expires_at))
    text += "."
    if licence.max_servers is not None:
        text += " " + tr("Up to %d servers may replicate.") % licence.max_servers
    return text


def show_activated(parent: QWidget, licence: LicenceStatus) -> QMessageBox:
    box = QMessageBox(QMessageBox.Icon.Information, tr("Licence activated"), activated_text(licence),
                      QMessageBox.StandardButton.Ok, parent)
    box.setObjectName("licence_activated")
    box.open()
    return box


class BackupDialog(QDialog):
    """Move to a fresh appliance: what it takes, and an encrypted backup written to a file of the admin's."""

    def __init__(self, bridge: EngineBridge, parent: QWidget | None = None, *, suggested_name: str = "") -> None:
        super().__init__(parent)
        self.bridge = bridge
        self.setObjectName("backup_dialog")
        self.setWindowTitle(tr("Move to a fresh appliance"))
        self.setMinimumWidth(620)
        intro = QLabel(tr(
            "<p>A fresh appliance can take this one's place, with its identity, registered servers and settings:</p>"
            "<ol><li>Write an encrypted backup of this appliance here, protected by a passphrase.</li>"
            "<li>Copy the file to the new appliance and restore it there with<br>"
            "<code>godwit appliance restore FILE --passphrase-file F</code><br>"
            "(F: a file that holds the passphrase).</li>"
            "<li>Stop this appliance once the new one runs.</li></ol>"
            "<p>Every step, and what to check afterwards, is in <code>%s</code>.</p>") % MOVING_DOC,
            wordWrap=True, objectName="backup_intro")
        intro.setTextFormat(Qt.TextFormat.RichText)

        self.path = QLineEdit(objectName="backup_file", placeholderText=tr("Where to write the backup"))
        self._suggested_name = suggested_name
        self.browse_button = QPushButton(tr("Choose…"), objectName="browse_backup")
        self.browse_button.clicked.connect(self.on_browse_button_clicked)
        file_row = QHBoxLayout()
        file_row.addWidget(self.path, 1)
        file_row.addWidget(self.browse_button)
        self.passphrase = QLineEdit(objectName="backup_passphrase", echoMode=QLineEdit.EchoMode.Password)
        self.passphrase_again = QLineEdit(objectName="backup_passphrase_again", echoMode=QLineEdit.EchoMode.Password)
        hint = QLabel(tr("At least %d characters. Keep it apart from the file: without it the backup cannot be "
                         "restored.") % MIN_PASSPHRASE, wordWrap=True, objectName="hint")
        form = QFormLayout()
        form.addRow(tr("Backup file"), file_row)
        form.addRow(tr("Passphrase"), self.passphrase)
        form.addRow(tr("Passphrase again"), self.passphrase_again)
        form.addRow("", hint)

        self.error = _error_label("backup_error")
        self.written_note = QLabel(objectName="backup_done", wordWrap=True)
        self.written_note.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        self.written_note.hide()
        self.restore_command = QLineEdit(objectName="restore_command", readOnly=True)
        self.restore_command.setFont(QFontDatabase.systemFont(QFontDatabase.SystemFont.FixedFont))
        self.restore_command.hide()
        self.buttons = QDialogButtonBox(QDialogButtonBox.StandardButton.Close)
        self.write_button = self.buttons.addButton(tr("Write backup"), QDialogButtonBox.ButtonRole.ActionRole)
        self.write_button.setObjectName("write_backup")
        self.write_button.setDefault(True)
        self.write_button.clicked.connect(self.on_write_button_clicked)
        self.buttons.rejected.connect(self.reject)

        layout = QVBoxLayout(self)
        layout.addWidget(intro)
        layout.addLayout(form)
        layout.addWidget(self.error)
        layout.addWidget(self.written_note)
        layout.addWidget(self.restore_command)
        layout.addWidget(self.buttons)
        self._picker: QFileDialog | None = None
        self.written: Path | None = None

    def on_browse_button_clicked(self) -> None:
        self._picker = QFileDialog(self, tr("Write the backup to"))
        self._picker.setAcceptMode(QFileDialog.AcceptMode.AcceptSave)
        self._picker.setFileMode(QFileDialog.FileMode.AnyFile)
        if self._suggested_name:
            self._picker.selectFile(self._suggested_name)
        self._picker.fileSelected.connect(self.path.setText)
        self._picker.open()

    def show_refusal(self, text: str) -> None:
        self.error.setText(text)
        self.error.show()
        self.adjustSize()  # room for the wrapped line

    def problem(self) -> str | None:
        """What is wrong with the form, in a sentence; None when the backup can be written."""
        text = self.path.text().strip()
        if not text:
            return tr("Choose where to write the backup.")
        path = Path(text).expanduser()
        if path.is_dir():
            return tr("%s is a folder. Choose a file name in it.") % path
        if not path.parent.is_dir():
            return tr("The folder %s does not exist. Choose another place.") % path.parent
        if len(self.passphrase.text()) < MIN_PASSPHRASE:
            return tr("The passphrase must have at least %d characters.") % MIN_PASSPHRASE
        if self.passphrase.text() != self.passphrase_again.text():
            return tr("The two passphrases differ. Type the same one twice.")
        return None

    @asyncSlot()
    async def on_write_button_clicked(self) -> None:
        problem = self.problem()
        if problem is not None:
            self.show_refusal(problem)
            return
        path = Path(self.path.text().strip()).expanduser()
        self.write_button.setEnabled(False)
        self.error.hide()
        self.restore_command.hide()
        self.written_note.setText(tr("Writing the backup…"))
        self.written_note.show()
        try:
            data = await self.bridge.backup(self.passphrase.text())
            await asyncio.get_running_loop().run_in_executor(None, write_atomically, path, data)
        except OSError as exc:
            self.written_note.hide()
            self.show_refusal(tr("Cannot write %s (%s). Choose another place.") % (path, exc.strerror or exc))
        except EngineError as exc:
            self.written_note.hide()
            self.show_refusal(exc.message)
        except Exception as exc:
            self.written_note.hide()
            show_error(self, exc)
        else:
            self.written = path
            self.passphrase.clear()
            self.passphrase_again.clear()
            self.written_note.setText(tr("The backup is written to %s (%s, readable by you only). Copy it to the new "
                                 "appliance and restore it there:") % (path, size_text(len(data))))
            self.written_note.show()
            self.restore_command.setText(f"godwit appliance restore {path} --passphrase-file F")
            self.restore_command.setCursorPosition(0)
            self.restore_command.show()
            self.adjustSize()
        finally:
            self.write_button.setEnabled(True)

