"""Questions to the admin from inside coroutines (through qasync.asyncWrap, never a bare exec())."""

from __future__ import annotations

from PySide6.QtWidgets import QMessageBox, QWidget
from qasync import asyncWrap


async def confirm(parent: QWidget, title: str, text: str, action: str) -> bool:
    box = QMessageBox(QMessageBox.Icon.Question, title, text, QMessageBox.StandardButton.Cancel, parent)
    ok = box.addButton(action, QMessageBox.ButtonRole.AcceptRole)
    box.setDefaultButton(QMessageBox.StandardButton.Cancel)
    await asyncWrap(box.exec)
    return box.clickedButton() is ok
