"""Change the target storage: this appliance's own disk, or a container of an Azure Blob Storage account.

The checks are the CLI's (``godwit target set``): the console checks that every field is given and that a
credential file is small text; the engine checks the rest, and probes an Azure container before it keeps it
(created if missing, a page blob written, snapshotted, read back and deleted, the clocks compared), which can take
up to a minute when the account does not answer. The dialog stays open meanwhile; a refusal is one red line under
what was typed, so it can be corrected there. The credential sits in a password field, travels to the engine once
and is never shown, in a label or a tooltip.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

from PySide6.QtCore import Qt, Signal
from PySide6.QtWidgets import (
    QButtonGroup,
    QDialog,
    QDialogButtonBox,
    QFileDialog,
    QFormLayout,
    QHBoxLayout,
    QLabel,
    QLineEdit,
    QProgressBar,
    QPushButton,
    QRadioButton,
    QVBoxLayout,
    QWidget,
)

from app.bridge import EngineBridge, EngineError, TargetStatus
from app.errors import show_error
from app.widgets.formatting import set_tone, show_line, shown, tr
from app.widgets.tasks import TaskOwner

#: A connection string or SAS token is a line of text; a file larger than this is not one (the CLI's limit).
MAX_CREDENTIAL = 8192
#: Longer than any storage account URL; a longer paste is refused before it reaches a message.
MAX_URL = 2048
#: Azure's longest container name.
MAX_CONTAINER = 63
CONNECTION_STRING, SAS_TOKEN = "connection-string", "sas"
#: The tone (console.qss ``QLabel[tone=…]``) of each level of the dialog's line.
_TONES = {"error": "bad", "ok": "ok", "busy": "busy"}


class CredentialFileError(ValueError):
    """A credential file that cannot be used, with the one line that says why."""


def is_connection_string(credential: str) -> bool:
    """Whether the engine reads ``credential`` as a connection string (else as a SAS token): its own test
    (engine/storage/azure.py ``AzureTarget.service``)."""
    return "AccountName=" in credential or "BlobEndpoint=" in credential


def location_text(target: TargetStatus) -> str:
    """Where new copies go, in words: the appliance's disk, or which container of which account."""
    if target.kind == "local":
        return tr("This appliance's own disk (local)")
    if target.kind == "azure" and target.container and target.account_url:
        return tr("Azure Blob Storage: container %s of %s") % (target.container, target.account_url)
    return target.location  # a kind from a newer engine, as it words it


def read_credential_file(path: Path) -> str:
    """The connection string or SAS token in the file at ``path``, stripped. Raises :class:`CredentialFileError`
    for a file that is not a small one-line text file (nothing larger than :data:`MAX_CREDENTIAL` is read)."""
    try:
        if not path.is_file():
            raise CredentialFileError(tr("%s is not a file: choose the file that holds the connection string or "
                                         "SAS token.") % path)
        with open(path, "rb") as f:
            data = f.read(MAX_CREDENTIAL + 1)
    except OSError as exc:
        raise CredentialFileError(tr("Cannot read %s (%s).") % (path, exc.strerror or exc)) from exc
    if len(data) > MAX_CREDENTIAL:
        raise CredentialFileError(tr("%s is larger than 8 KiB: it is not a connection string or SAS token.") % path)
    try:
        text = data.decode().strip()
    except UnicodeDecodeError as exc:
        raise CredentialFileError(tr("%s is not text: it is not a connection string or SAS token.") % path) from exc
    if not text:
        raise CredentialFileError(tr("%s is empty: it must hold the connection string or SAS token.") % path)
    if "\n" in text or "\r" in text:
        raise CredentialFileError(tr("%s holds more than one line: it must hold only the connection string or SAS "
                                     "token.") % path)
    if not text.isprintable():
        raise CredentialFileError(tr("%s is not text: it is not a connection string or SAS token.") % path)
    return text


class TargetDialog(QDialog):
    """Choose where servers enabled from now on replicate. ``target`` is the current one (its account and
    container fill the fields). Emits :attr:`saved` with the engine's answer, then closes; closing it while the
    engine checks stops waiting (the dialog is deleted once its command has ended)."""

    saved = Signal(object)  #: TargetStatus

    def __init__(self, bridge: EngineBridge, target: TargetStatus | None, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.bridge = bridge
        self.target = target
        #: The engine's check under way, referenced until it ends; once closed, the dialog is deleted after it.
        self.tasks = TaskOwner(on_idle=self.deleteLater)
        self.checking = False
        self.setObjectName("target_dialog")
        self.setWindowTitle(tr("Target storage"))
        self.setMinimumWidth(680)

        intro = QLabel(tr("Seed disks and recovery points of the servers enabled from now on go to the target "
                          "storage. The cache stays on this appliance either way."), wordWrap=True)
        now = QLabel(tr("Now: %s") % location_text(target) if target is not None else "", objectName="target_now",
                     wordWrap=True)
        now.setVisible(target is not None)

        self.local_radio = QRadioButton(tr("This appliance's own disk (local)"), objectName="target_local")
        self.azure_radio = QRadioButton(tr("A container of an Azure Blob Storage account"), objectName="target_azure")
        self.kind_group = QButtonGroup(self)
        self.kind_group.addButton(self.local_radio)
        self.kind_group.addButton(self.azure_radio)

        self.account_url = QLineEdit(objectName="target_account_url",
                                     placeholderText="https://ACCOUNT.blob.core.windows.net")
        self.container = QLineEdit(objectName="target_container", placeholderText="replicas")
        self.connection_radio = QRadioButton(tr("Connection string"), objectName="credential_connection_string")
        self.sas_radio = QRadioButton(tr("SAS token"), objectName="credential_sas")
        self.credential_group = QButtonGroup(self)
        self.credential_group.addButton(self.connection_radio)
        self.credential_group.addButton(self.sas_radio)
        self.connection_radio.setChecked(True)
        credential_kind = QHBoxLayout()
        credential_kind.addWidget(self.connection_radio)
        credential_kind.addWidget(self.sas_radio)
        credential_kind.addStretch(1)
        self.credential = QLineEdit(objectName="target_credential", echoMode=QLineEdit.EchoMode.Password)
        self.credential.setPlaceholderText(tr("Paste it here, or load it from a file"))
        self.load_button = QPushButton(tr("Load from file…"), objectName="load_credential")
        self.load_button.clicked.connect(self.on_load_button_clicked)
        credential_row = QHBoxLayout()
        credential_row.addWidget(self.credential, 1)
        credential_row.addWidget(self.load_button)
        credential_hint = QLabel(tr("A connection string holds AccountName=… or BlobEndpoint=…; a SAS token starts "
                                    "with sv=…. The engine keeps it in the appliance's secret store."),
                                 wordWrap=True, objectName="hint")
        container_hint = QLabel(tr("Created if it does not exist: 3 to 63 lowercase letters, digits and hyphens."),
                                wordWrap=True, objectName="hint")
        for hint in (container_hint, credential_hint):  # any height to spare goes below the text, not above
            hint.setAlignment(Qt.AlignmentFlag.AlignLeft | Qt.AlignmentFlag.AlignTop)
        self.azure_box = QWidget(objectName="target_azure_fields")
        form = QFormLayout(self.azure_box)
        form.setContentsMargins(26, 0, 0, 0)  # under the Azure choice, which it belongs to
        form.addRow(tr("Account URL"), self.account_url)
        form.addRow(tr("Container"), self.container)
        form.addRow("", container_hint)
        form.addRow(tr("Credential"), credential_kind)
        form.addRow("", credential_row)
        form.addRow("", credential_hint)

        keep_note = QLabel(tr("Servers already replicating keep their target until they are disabled and enabled "
                              "again; only servers enabled afterwards go to the new one."),
                           wordWrap=True, objectName="hint")
        self.message = QLabel(objectName="target_message", wordWrap=True)
        self.message.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        self.message.hide()
        self.busy_bar = QProgressBar(objectName="target_busy", textVisible=False)
        self.busy_bar.setRange(0, 0)
        self.busy_bar.setFixedWidth(90)
        self.busy_bar.hide()
        line = QHBoxLayout()
        line.addWidget(self.busy_bar, 0, Qt.AlignmentFlag.AlignTop)
        line.addWidget(self.message, 1)

        self.buttons = QDialogButtonBox(QDialogButtonBox.StandardButton.Cancel)
        self.buttons.button(QDialogButtonBox.StandardButton.Cancel).setToolTip(
            tr("Close without changing the target."))
        self.save_button = self.buttons.addButton(tr("Check and save"), QDialogButtonBox.ButtonRole.ActionRole)
        self.save_button.setObjectName("save_target")
        self.save_button.setDefault(True)
        self.save_button.clicked.connect(self.on_save_button_clicked)
        self.buttons.rejected.connect(self.reject)

        layout = QVBoxLayout(self)
        layout.addWidget(intro)
        layout.addSpacing(4)
        layout.addWidget(now)
        layout.addSpacing(6)
        layout.addWidget(self.local_radio)
        layout.addWidget(self.azure_radio)
        layout.addWidget(self.azure_box)
        layout.addSpacing(6)
        layout.addWidget(keep_note)
        layout.addLayout(line)
        layout.addStretch(1)
        layout.addWidget(self.buttons)

        if target is not None and target.kind == "azure":
            self.account_url.setText(target.account_url or "")
            self.container.setText(target.container or "")
            self.azure_radio.setChecked(True)
        else:
            self.local_radio.setChecked(True)
        self.kind_group.buttonToggled.connect(self.on_kind_group_button_toggled)
        self.on_kind_group_button_toggled()
        self._picker: QFileDialog | None = None

    def __repr__(self) -> str:
        return f"<TargetDialog kind={self.kind()} checking={self.checking} tasks={len(self.tasks)}>"

    def kind(self) -> str:
        """The kind of target chosen: ``local`` or ``azure``."""
        return "azure" if self.azure_radio.isChecked() else "local"

    def on_kind_group_button_toggled(self) -> None:
        azure = self.kind() == "azure"
        self.azure_box.setEnabled(azure and not self.checking)
        self.save_button.setText(tr("Check and save") if azure else tr("Save"))

    def say(self, level: str, text: str) -> None:
        """The dialog's one line: "error" (red: a refusal), "busy", "ok", or "" (hidden when empty)."""
        show_line(self.message, level, text)
        set_tone(self.message, _TONES.get(level, ""))

    # --- the credential file -----------------------------------------------------------------------------
    def on_load_button_clicked(self) -> None:
        self._picker = QFileDialog(self, tr("Choose the file that holds the connection string or SAS token"))
        self._picker.setFileMode(QFileDialog.FileMode.ExistingFile)
        self._picker.fileSelected.connect(lambda path: self.load_credential_file(Path(path)))
        self._picker.open()

    def load_credential_file(self, path: Path) -> bool:
        """Put the credential in the file at ``path`` into the field and choose its kind; a file that is not one
        is one red line, and the field keeps what it held."""
        try:
            credential = read_credential_file(path)
        except CredentialFileError as exc:
            self.say("error", str(exc))
            return False
        self.credential.setText(credential)
        (self.connection_radio if is_connection_string(credential) else self.sas_radio).setChecked(True)
        self.say("ok", tr("Loaded the credential from %s.") % path)
        return True

    # --- saving ----------------------------------------------------------------------------------------------
    def problem(self) -> str | None:
        """What is missing from the form, in one line; None when it can be sent (the engine checks the rest)."""
        if self.kind() == "local":
            if self.target is not None and self.target.kind == "local":
                return tr("The target is this appliance's own disk already.")
            return None
        url = self.account_url.text().strip()
        container = self.container.text().strip()
        credential = self.credential.text().strip()
        if not url:
            return tr("Give the storage account's URL, like https://ACCOUNT.blob.core.windows.net.")
        if len(url) > MAX_URL:
            return tr("The account URL is longer than %d characters: give one like "
                      "https://ACCOUNT.blob.core.windows.net.") % MAX_URL
        if not container:
            return tr("Give the container's name (it is created if it does not exist).")
        if len(container) > MAX_CONTAINER:
            return tr("%s is not a container name: 3 to 63 lowercase letters, digits and single hyphens.") % \
                shown(container)
        if not credential:
            return tr("Paste the connection string or SAS token, or load it from a file.")
        if len(credential) > MAX_CREDENTIAL:
            return tr("The credential is longer than 8 KiB: it is not a connection string or SAS token.")
        if not credential.isprintable():
            return tr("The credential holds characters that are not text: paste it again, or load it from a file.")
        if self.connection_radio.isChecked() and not is_connection_string(credential):
            return tr("That is not a connection string (it has no AccountName= or BlobEndpoint=): paste the "
                      "account's connection string, or choose SAS token.")
        if self.sas_radio.isChecked() and is_connection_string(credential):
            return tr("That is a connection string, not a SAS token: choose Connection string, or paste the SAS "
                      "token.")
        return None

    def on_save_button_clicked(self) -> None:
        """Check what was typed, then let the engine check and keep it (nothing starts while a check runs)."""
        if self.checking or self.tasks.closed:
            return
        problem = self.problem()
        if problem is not None:
            self.say("error", problem)
            return
        if self.kind() == "local":
            self.tasks.start(self._save("local"))
        else:
            self.tasks.start(self._save("azure", account_url=self.account_url.text().strip(),
                                        container=self.container.text().strip(),
                                        credential=self.credential.text().strip()))

    def set_checking(self, checking: bool) -> None:
        """While the engine checks, every control waits but Cancel (which closes and stops waiting)."""
        self.checking = checking
        for widget in (self.local_radio, self.azure_radio, self.save_button):
            widget.setEnabled(not checking)
        self.azure_box.setEnabled(self.kind() == "azure" and not checking)
        self.busy_bar.setVisible(checking)

    async def _save(self, kind: str, *, account_url: str | None = None, container: str | None = None,
                    credential: str | None = None) -> None:
        self.set_checking(True)
        if kind == "azure":
            self.say("busy", tr("Checking the container… This takes up to a minute when the account does not "
                                "answer."))
        else:
            self.say("busy", tr("Saving…"))
        try:
            status = await self.bridge.set_target(kind, account_url=account_url, container=container,
                                                  credential=credential)
        except EngineError as exc:
            self.say("error", exc.message)  # the fields keep what was typed, to be corrected
            return
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            self.say("", "")
            show_error(self, exc)
            return
        finally:
            self.set_checking(False)
        self.credential.clear()
        self.target = status
        self.saved.emit(status)
        self.accept()

    # --- closing -------------------------------------------------------------------------------------------
    def done(self, result: int) -> None:
        """Every way of closing (Cancel, Escape, the window's button, after saving): stop waiting for the engine;
        the dialog is deleted once its command has ended."""
        self.tasks.cancel_all()
        super().done(result)

