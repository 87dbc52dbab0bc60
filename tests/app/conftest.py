"""The console's pages are tested in the look they ship with: the light palette and its style sheet."""

from __future__ import annotations

import pytest
from PySide6.QtWidgets import QApplication

from app.theme import apply_theme


@pytest.fixture(autouse=True, scope="session")
def _console_theme(qapp: QApplication) -> None:
    apply_theme(qapp, "light")
