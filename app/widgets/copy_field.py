"""A read-only value with a Copy button (passphrase, fingerprint, commands)."""

from __future__ import annotations

from PySide6.QtGui import QFontDatabase, QGuiApplication
from PySide6.QtWidgets import QHBoxLayout, QLineEdit, QPushButton, QWidget

from app.widgets.formatting import tr


class CopyField(QWidget):
    def __init__(self, object_name: str, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.setObjectName(object_name)
        self.edit = QLineEdit(readOnly=True)
        self.edit.setFont(QFontDatabase.systemFont(QFontDatabase.SystemFont.FixedFont))
        self.edit.setObjectName(f"{object_name}_value")
        self.copy_button = QPushButton(tr("Copy"))
        self.copy_button.setObjectName(f"{object_name}_copy")
        self.copy_button.clicked.connect(self.on_copy_button_clicked)
        layout = QHBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.addWidget(self.edit, 1)
        layout.addWidget(self.copy_button)

    def set_text(self, text: str) -> None:
        self.edit.setText(text)
        self.edit.setCursorPosition(0)

    def text(self) -> str:
        return self.edit.text()

    def on_copy_button_clicked(self) -> None:
        QGuiApplication.clipboard().setText(self.edit.text())
        self.copy_button.setText(tr("Copied"))
