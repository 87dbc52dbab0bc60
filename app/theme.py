"""The console's look: a light and a dark palette that follow the desktop's colour scheme.

``resources/console.qss`` is the one style sheet; it names colours as ``@token`` (``@text``, ``@bad``…), which
:func:`apply_theme` fills from the palette in use. The same palette gives the Fusion style its :class:`QPalette`
and the health and severity colours the tables draw (:func:`colour`). The desktop's scheme is followed live; an
admin can pin one with ``GODWIT_CONSOLE_THEME=light|dark`` (screenshots do).
"""

from __future__ import annotations

import logging
import os
import re
from pathlib import Path

from PySide6.QtCore import Qt
from PySide6.QtGui import QColor, QGuiApplication, QPalette
from PySide6.QtWidgets import QApplication

log = logging.getLogger(__name__)

STYLE_SHEET = Path(__file__).resolve().parent.parent / "resources" / "console.qss"
#: Each palette's colours by token. Health colours keep their meaning in both (green fine, amber warning, red
#: critical), lighter on dark surfaces so they stay readable.
PALETTES: dict[str, dict[str, str]] = {
    "light": {
        "window": "#f6f7f9", "surface": "#ffffff", "alt_row": "#f3f6f9", "header": "#eef1f4", "border": "#d9dee4",
        "text": "#1f2a36", "muted": "#5f6b78", "accent": "#2f6fb3", "selection": "#d4e4f6",
        "sidebar": "#1f2a36", "sidebar_text": "#d8dee6",
        "ok": "#1e7d32", "warn": "#945800", "bad": "#c62828", "busy": "#37474f",
        "warn_bg": "#fff3d6", "warn_border": "#e0a030", "warn_text": "#5c3b00",
        "bad_bg": "#fde4e1", "bad_border": "#c62828", "bad_text": "#7f1414",
        "track": "#e6ebf1", "fill": "#9cc3ee",
        "chart_received": "#1565c0", "chart_applied": "#2e7d32", "chart_rpo": "#6a1b9a",
    },
    "dark": {
        "window": "#1b1f24", "surface": "#23292f", "alt_row": "#283038", "header": "#2c343d", "border": "#3a434d",
        "text": "#e3e8ee", "muted": "#9aa7b4", "accent": "#4f8fd6", "selection": "#2f4f73",
        "sidebar": "#12161a", "sidebar_text": "#c9d1da",
        "ok": "#66bb6a", "warn": "#ffb74d", "bad": "#f47f7f", "busy": "#b0bec5",
        "warn_bg": "#3d3016", "warn_border": "#c58a25", "warn_text": "#ffe2a8",
        "bad_bg": "#46201f", "bad_border": "#f47f7f", "bad_text": "#ffd2cf",
        "track": "#2f3842", "fill": "#3f6e9e",
        "chart_received": "#64b5f6", "chart_applied": "#81c784", "chart_rpo": "#ce93d8",
    },
}
_TOKEN = re.compile(r"@([a-z_]+)")
_current = "light"


def current() -> str:
    """The palette in use: "light" or "dark"."""
    return _current


def colour(token: str) -> str:
    """A colour of the palette in use (``colour("bad")``)."""
    return PALETTES[_current][token]


def style_sheet(name: str, source: str | None = None) -> str:
    """``console.qss`` (or ``source``) with its ``@tokens`` filled from palette ``name``; an unknown token is a
    bug in the sheet and says so."""
    colours = PALETTES[name]
    text = STYLE_SHEET.read_text() if source is None else source

    def fill(match: re.Match[str]) -> str:
        token = match.group(1)
        if token not in colours:
            raise KeyError(f"console.qss uses @{token}, which no palette defines")
        return colours[token]

    return _TOKEN.sub(fill, text)


def wanted_scheme(app: QGuiApplication) -> str:
    """The admin's choice (``GODWIT_CONSOLE_THEME``) or else the desktop's colour scheme."""
    pinned = os.environ.get("GODWIT_CONSOLE_THEME", "").strip().lower()
    if pinned in PALETTES:
        return pinned
    return "dark" if app.styleHints().colorScheme() == Qt.ColorScheme.Dark else "light"


def _palette(name: str) -> QPalette:
    c = {k: QColor(v) for k, v in PALETTES[name].items()}
    p = QPalette()
    role = QPalette.ColorRole
    for r, token in ((role.Window, "window"), (role.WindowText, "text"), (role.Base, "surface"),
                     (role.AlternateBase, "alt_row"), (role.Text, "text"), (role.Button, "header"),
                     (role.ButtonText, "text"), (role.ToolTipBase, "surface"), (role.ToolTipText, "text"),
                     (role.Highlight, "accent"), (role.HighlightedText, "surface" if name == "light" else "text"),
                     (role.PlaceholderText, "muted"), (role.Link, "accent"), (role.Mid, "border")):
        p.setColor(r, c[token])
    disabled = QPalette.ColorGroup.Disabled
    for r in (role.WindowText, role.Text, role.ButtonText):
        p.setColor(disabled, r, c["muted"])
    return p


def apply_theme(app: QApplication, name: str | None = None) -> str:
    """Give ``app`` the Fusion style, the palette ``name`` (default: :func:`wanted_scheme`) and the style sheet;
    returns the palette's name."""
    global _current
    _current = name or wanted_scheme(app)
    if not app.property("godwit_fusion"):  # once: replacing the style under an open QWizard crashes Qt
        app.setStyle("Fusion")
        app.setProperty("godwit_fusion", True)
    app.setPalette(_palette(_current))
    app.setStyleSheet(style_sheet(_current))
    log.info("theme.applied palette=%s", _current)
    return _current


def follow_desktop(app: QApplication) -> None:
    """Apply the theme now and again whenever the desktop switches between light and dark."""
    apply_theme(app)
    app.styleHints().colorSchemeChanged.connect(lambda _scheme: apply_theme(app))
