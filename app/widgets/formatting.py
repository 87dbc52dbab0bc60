"""How the console words and colours engine values."""

from __future__ import annotations

import time

from PySide6.QtCore import QCoreApplication

_HEALTH_COLOURS = {"healthy": "#1e7d32", "warning": "#b26a00", "critical": "#c62828"}
_SEVERITY_COLOURS = {"info": "#37474f", "warning": "#b26a00", "error": "#c62828"}


def tr(text: str) -> str:
    return QCoreApplication.translate("godwit", text)


def age_text(ts: float | None, now: float | None = None) -> str:
    if ts is None:
        return tr("never")
    age = max(0.0, (now or time.time()) - ts)
    if age < 5:
        return tr("just now")
    if age < 90:
        return tr("%d s ago") % age
    if age < 5400:
        return tr("%d min ago") % (age / 60)
    return time.strftime("%Y-%m-%d %H:%M", time.localtime(ts))


def duration_text(seconds: float) -> str:
    if seconds < 90:
        return tr("%d s") % seconds
    if seconds < 5400:
        return tr("%d min") % (seconds / 60)
    return tr("%.1f h") % (seconds / 3600)


def health_text(health: str, cause: str | None) -> str:
    text = tr(health.capitalize())
    if cause:
        text += " · " + cause.replace("-", " ")
    return text


def health_colour(health: str) -> str:
    return _HEALTH_COLOURS.get(health, "#37474f")


def severity_colour(severity: str) -> str:
    return _SEVERITY_COLOURS.get(severity, "#37474f")
