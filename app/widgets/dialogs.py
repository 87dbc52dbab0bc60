"""Questions to the admin from inside coroutines (through qasync.asyncWrap, never a bare exec())."""

from __future__ import annotations

from PySide6.QtWidgets import QComboBox, QDialog, QDialogButtonBox, QLabel, QMessageBox, QVBoxLayout, QWidget
from qasync import asyncWrap


async def confirm(parent: QWidget, title: str, text: str, action: str) -> bool:
    box = QMessageBox(QMessageBox.Icon.Question, title, text, QMessageBox.StandardButton.Cancel, parent)
    ok = box.addButton(action, QMessageBox.ButtonRole.AcceptRole)
    box.setDefaultButton(QMessageBox.StandardButton.Cancel)
    await asyncWrap(box.exec)
    return box.clickedButton() is ok


async def choose(parent: QWidget, title: str, text: str, options: list[str], action: str) -> str | None:
    """Pick one of ``options`` (e.g. a replication policy); None when cancelled."""
    dialog = QDialog(parent)
    dialog.setWindowTitle(title)
    combo = QComboBox(objectName="choice")
    combo.addItems(options)
    buttons = QDialogButtonBox(QDialogButtonBox.StandardButton.Cancel)
    buttons.addButton(action, QDialogButtonBox.ButtonRole.AcceptRole)
    buttons.accepted.connect(dialog.accept)
    buttons.rejected.connect(dialog.reject)
    layout = QVBoxLayout(dialog)
    layout.addWidget(QLabel(text, wordWrap=True))
    layout.addWidget(combo)
    layout.addWidget(buttons)
    result = await asyncWrap(dialog.exec)
    return combo.currentText() if result == QDialog.DialogCode.Accepted else None
