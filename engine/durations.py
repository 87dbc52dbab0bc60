"""Durations and ages as people type and read them: the one formatter of the CLI, the engine's
messages and the console.

The console passes its translation function as ``tr``; the engine and the CLI speak English.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable

from engine.errors import BadInput

_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([smhd]?)\s*$")
_UNITS = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}


def _same(text: str) -> str:
    return text


def parse_duration(text: str, what: str) -> float:
    """Seconds from ``30s``, ``15m``, ``4h``, ``2d`` or a plain number of seconds."""
    match = _DURATION.match(text.lower())
    if not match:
        raise BadInput(f"{what} {text!r} is not a duration such as 30s, 15m, 4h or 2d.")
    return float(match.group(1)) * _UNITS[match.group(2)]


def setting_text(seconds: float | None) -> str:
    """A duration the way an admin types it back (``15m``, ``2d``, ``90s``); ``off`` for None."""
    if seconds is None:
        return "off"
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size and seconds % size == 0:
            return f"{seconds / size:.0f}{unit}"
    return f"{seconds:g}s"


def duration_text(seconds: float, tr: Callable[[str], str] = _same) -> str:
    """A length of time to read: ``45 s``, ``12 min``, ``3.5 h``."""
    seconds = max(0.0, seconds)
    if seconds < 90:
        return tr("%d s") % seconds
    if seconds < 5400:
        return tr("%d min") % (seconds / 60)
    return tr("%.1f h") % (seconds / 3600)


def age_text(ts: float | None, now: float | None = None, tr: Callable[[str], str] = _same) -> str:
    """How long ago ``ts`` was: ``just now``, ``42 s ago``, ``12 min ago``, else the local date and time."""
    if ts is None:
        return tr("never")
    age = max(0.0, (time.time() if now is None else now) - ts)
    if age < 5:
        return tr("just now")
    if age < 90:
        return tr("%d s ago") % age
    if age < 5400:
        return tr("%d min ago") % (age / 60)
    return time.strftime("%Y-%m-%d %H:%M", time.localtime(ts))
