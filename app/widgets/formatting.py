"""How the console words and colours engine values.

Durations and ages come from the engine's one formatter (:mod:`engine.durations`, through the
bridge) with the console's :func:`tr`; health causes read as :attr:`HealthCause.label`, as in the CLI.
"""

from __future__ import annotations

from PySide6.QtCore import QCoreApplication, QLocale
from PySide6.QtWidgets import QLabel, QWidget

from app import theme
from app.bridge import Health, HealthCause, ServerState, durations

#: The palette colour (app/theme.py) of each health and event severity.
_HEALTH_COLOURS = {Health.HEALTHY: "ok", Health.WARNING: "warn", Health.CRITICAL: "bad"}
_SEVERITY_COLOURS = {"info": "busy", "warning": "warn", "error": "bad"}
#: How a server's health reads; translated when shown. Every member has one.
HEALTH_TEXTS: dict[Health, str] = {
    Health.HEALTHY: "Healthy",
    Health.WARNING: "Warning",
    Health.CRITICAL: "Critical",
}
#: How a server's state reads in the Status column; translated when shown. Every member has one.
#: How many characters of something the admin typed a message repeats (a pasted page must not fill the window).
SHOWN_CHARS = 40
#: The palette colour (app/theme.py) a label's ``tone`` property gives it through console.qss.
TONES = ("ok", "warn", "bad", "busy", "accent", "muted")
STATE_TEXTS: dict[ServerState, str] = {
    ServerState.REGISTERED: "Registered",
    ServerState.INITIAL_REPLICATION: "Initial replication",
    ServerState.PROTECTED: "Protected",
    ServerState.RESYNCING: "Resyncing",
    ServerState.PAUSED: "Paused",
    ServerState.ERROR: "Error",
}


def tr(text: str) -> str:
    return QCoreApplication.translate("godwit", text)


def age_text(ts: float | None, now: float | None = None) -> str:
    """How long ago ``ts`` was (``12 min ago``), in the console's language."""
    return durations.age_text(ts, now, tr=tr)


def duration_text(seconds: float) -> str:
    """A length of time (``45 s``, ``12 min``, ``3.5 h``), in the console's language."""
    return durations.duration_text(seconds, tr=tr)


def state_text(state: ServerState) -> str:
    """A server's state for the admin; a state from a newer engine shows as the engine names it."""
    text = STATE_TEXTS.get(state)
    return tr(text) if text is not None else str(state)


def health_text(health: Health, cause: HealthCause | None) -> str:
    """``Warning · agent not seen``; a health or cause from a newer engine shows as the engine names it."""
    known = HEALTH_TEXTS.get(health)
    text = tr(known) if known is not None else str(health)
    if cause:
        text += " · " + (cause.label if isinstance(cause, HealthCause) else str(cause))
    return text


def health_colour(health: Health) -> str:
    """The colour a health reads in, from the palette in use."""
    return theme.colour(_HEALTH_COLOURS.get(health, "busy"))


def severity_colour(severity: str) -> str:
    return theme.colour(_SEVERITY_COLOURS.get(severity, "busy"))


def size_text(n: float, precision: int = 1) -> str:
    """A number of bytes for the admin, in the console's locale: ``1.5 GiB`` (binary units, as the CLI)."""
    return QLocale().formattedDataSize(int(n), precision, QLocale.DataSizeFormat.DataSizeIecFormat)


def rate_text(bps: float) -> str:
    """A byte rate for the admin: ``152.3 MiB/s``."""
    return size_text(bps) + "/s"


def shown(text: str) -> str:
    """What the admin typed, as a message repeats it: quoted as the engine quotes it (``'abc'``), cut to
    :data:`SHOWN_CHARS` characters."""
    return repr(text if len(text) <= SHOWN_CHARS else text[:SHOWN_CHARS] + "…")


def health_tone(health: Health) -> str:
    """The tone (:func:`set_tone`) a health reads in."""
    return _HEALTH_COLOURS.get(health, "busy")


def set_tone(widget: QWidget, tone: str) -> None:
    """Colour ``widget``'s text by the palette colour ``tone`` ("ok", "warn", "bad", "busy", "accent", "muted"; ""
    for the normal text) through console.qss, so that it follows a switch between light and dark by itself."""
    if widget.property("tone") == tone:
        return
    widget.setProperty("tone", tone)
    widget.style().unpolish(widget)
    widget.style().polish(widget)


def set_level(label: QWidget, level: str) -> None:
    """Set a widget's ``level`` dynamic property ("ok", "error", "busy", "warning", …) and let console.qss see it."""
    label.setProperty("level", level)
    label.style().unpolish(label)
    label.style().polish(label)


def show_line(label: QLabel, level: str, text: str) -> None:
    """A view's one line saying how a command went: ``level`` "error" (red: a refusal), "ok" (green), "busy", or
    "" with its text; hidden when the text is empty."""
    label.setText(text)
    set_level(label, level)
    label.setVisible(bool(text))

