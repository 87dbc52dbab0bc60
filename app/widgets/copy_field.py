"""A read-only value with a Copy button (passphrase, fingerprint, commands)."""

from __future__ import annotations

from PySide6.QtCore import Qt, QTimer
from PySide6.QtGui import QFontDatabase, QGuiApplication
from PySide6.QtWidgets import QHBoxLayout, QLabel, QLineEdit, QPlainTextEdit, QPushButton, QVBoxLayout, QWidget

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


#: Milliseconds a command's Copy button says "Copied" before it reads as before.
COPIED_MS = 2000


class CommandField(QWidget):
    """A command to paste on another machine: read-only, fixed font, an optional hint below, and a Copy command
    button that copies it whole (never a selection of it) and says "Copied" for :data:`COPIED_MS`."""

    def __init__(self, object_name: str, copy_name: str, *, height: int, accessible: str = "",
                 copy_accessible: str = "", hint: str = "", parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.text_edit = QPlainTextEdit(readOnly=True, objectName=object_name)
        self.text_edit.setFont(QFontDatabase.systemFont(QFontDatabase.SystemFont.FixedFont))
        self.text_edit.setFixedHeight(height)
        self.copy_button = QPushButton(tr("Copy command"), objectName=copy_name)
        if accessible:
            self.text_edit.setAccessibleName(accessible)
        if copy_accessible:
            self.copy_button.setAccessibleName(copy_accessible)
        self.copy_button.clicked.connect(self.on_copy_button_clicked)
        self.copied_timer = QTimer(self, singleShot=True, interval=COPIED_MS)
        self.copied_timer.timeout.connect(self.on_copied_timer_timeout)
        box = QVBoxLayout()
        box.addWidget(self.text_edit)
        if hint:
            box.addWidget(QLabel(hint, wordWrap=True, objectName="hint"))
        layout = QHBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.addLayout(box, 1)
        layout.addWidget(self.copy_button, 0, Qt.AlignmentFlag.AlignTop)

    def on_copy_button_clicked(self) -> None:
        QGuiApplication.clipboard().setText(self.text_edit.toPlainText())
        self.copy_button.setText(tr("Copied"))
        self.copied_timer.start()

    def on_copied_timer_timeout(self) -> None:
        self.copy_button.setText(tr("Copy command"))
