"""The one way the console shows an error (after Anki's ``aqt/errors.py``)."""

from __future__ import annotations

import asyncio
import logging
import sys
import traceback
from types import TracebackType

from PySide6.QtWidgets import QMessageBox, QWidget

from app.bridge import EngineError
from app.widgets.formatting import tr

log = logging.getLogger(__name__)


def show_error(parent: QWidget | None, exc: BaseException) -> None:
    """Cancellation shows nothing; an engine error its message; anything else a generic message."""
    if isinstance(exc, asyncio.CancelledError):
        return
    box = QMessageBox(parent)
    box.setIcon(QMessageBox.Icon.Warning)
    box.setWindowTitle(tr("Godwit"))
    if isinstance(exc, EngineError):
        box.setText(exc.message)
    else:
        log.error("console.unexpected-error", exc_info=exc)
        box.setText(tr("Something went wrong in the console. The details below help us fix it."))
        box.setDetailedText("".join(traceback.format_exception(exc)))
    box.open()


def install_excepthook() -> None:
    """Unhandled exceptions (e.g. from async slots) are logged at CRITICAL and shown, never fatal."""

    def hook(kind: type[BaseException], exc: BaseException, tb: TracebackType | None) -> None:
        from PySide6.QtWidgets import QApplication

        log.critical("console.uncaught", exc_info=(kind, exc, tb))
        show_error(QApplication.activeWindow(), exc)  # a parent keeps the dialog alive

    sys.excepthook = hook
