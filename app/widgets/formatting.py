"""How the console words and colours engine values.

Durations and ages come from the engine's one formatter (:mod:`engine.durations`, through the
bridge) with the console's :func:`tr`; health causes read as :attr:`HealthCause.label`, as in the CLI.
"""

from __future__ import annotations

from PySide6.QtCore import QCoreApplication

from app.bridge import Health, HealthCause, ServerState, durations

_HEALTH_COLOURS = {Health.HEALTHY: "#1e7d32", Health.WARNING: "#b26a00", Health.CRITICAL: "#c62828"}
_SEVERITY_COLOURS = {"info": "#37474f", "warning": "#b26a00", "error": "#c62828"}
#: How a server's health reads; translated when shown. Every member has one.
HEALTH_TEXTS: dict[Health, str] = {
    Health.HEALTHY: "Healthy",
    Health.WARNING: "Warning",
    Health.CRITICAL: "Critical",
}
#: How a server's state reads in the Status column; translated when shown. Every member has one.
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
    return _HEALTH_COLOURS.get(health, "#37474f")


def severity_colour(severity: str) -> str:
    return _SEVERITY_COLOURS.get(severity, "#37474f")
