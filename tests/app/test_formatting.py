"""How the console words engine values: every state and health has a text, causes read as the engine
labels them, and durations come from the engine's one formatter in the console's language."""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest
from PySide6.QtCore import QCoreApplication, QTranslator

from app.bridge import Health, HealthCause, ServerState
from app.widgets import formatting as fmt

_GERMAN = {"%d s ago": "vor %d s", "%d min": "%d Min.", "never": "nie", "Protected": "Geschützt", "Warning": "Warnung"}


class _German(QTranslator):
    """A translator for a few of the formatter's strings, as a .qm file would give."""

    def translate(self, context: str, source: str, disambiguation: str | None = None, n: int = -1) -> str:
        return _GERMAN.get(source, source) if context == "godwit" else source

    def isEmpty(self) -> bool:
        return False


@pytest.fixture
def german(qapp: QCoreApplication) -> Iterator[QTranslator]:
    translator = _German()
    assert QCoreApplication.installTranslator(translator)
    yield translator
    QCoreApplication.removeTranslator(translator)


def test_every_state_and_health_has_a_text(qapp: QCoreApplication) -> None:
    """Each ServerState and Health member has its own console text; a newer engine's value shows as it came."""
    assert set(fmt.STATE_TEXTS) == set(ServerState)
    assert set(fmt.HEALTH_TEXTS) == set(Health)
    assert fmt.state_text(ServerState.INITIAL_REPLICATION) == "Initial replication"
    assert len({fmt.state_text(s) for s in ServerState}) == len(ServerState)
    assert fmt.state_text("migrating") == "migrating"  # type: ignore[arg-type]


def test_health_text_reads_the_cause_label(qapp: QCoreApplication) -> None:
    """A cause reads as HealthCause.label after the health; no cause shows the health alone."""
    assert fmt.health_text(Health.HEALTHY, None) == "Healthy"
    assert fmt.health_text(Health.CRITICAL, HealthCause.SEGMENT_CORRUPT) == "Critical · segment corrupt"
    for cause in HealthCause:
        assert fmt.health_text(Health.WARNING, cause) == f"Warning · {cause.label}"
        assert "-" not in fmt.health_text(Health.WARNING, cause)
    assert fmt.health_text(Health.WARNING, "quota-exceeded") == "Warning · quota-exceeded"  # type: ignore[arg-type]
    assert fmt.health_colour(Health.CRITICAL) != fmt.health_colour(Health.HEALTHY) != fmt.health_colour(Health.WARNING)


def test_durations_and_ages_read_as_before(qapp: QCoreApplication) -> None:
    """Durations and ages keep the console's wording: seconds, minutes, hours, then a local date and time."""
    assert [fmt.duration_text(s) for s in (0, 45, 89, 90, 720, 5399, 12600)] == [
        "0 s", "45 s", "89 s", "1 min", "12 min", "89 min", "3.5 h"]
    now = 1_750_000_000.0
    assert fmt.age_text(None) == "never"
    assert [fmt.age_text(now - age, now) for age in (0, 4.9, 42, 720)] == [
        "just now", "just now", "42 s ago", "12 min ago"]
    old = now - 3 * 86400
    assert fmt.age_text(old, now) == time.strftime("%Y-%m-%d %H:%M", time.localtime(old))
    assert fmt.age_text(time.time() - 42) in ("42 s ago", "43 s ago")  # without ``now``: the clock


def test_texts_use_the_console_translation(german: QTranslator) -> None:
    """The shared formatter words durations in the console's language, as do states and health."""
    now = 1_750_000_000.0
    assert fmt.age_text(now - 42, now) == "vor 42 s"
    assert fmt.age_text(None) == "nie"
    assert fmt.duration_text(720) == "12 Min."
    assert fmt.state_text(ServerState.PROTECTED) == "Geschützt"
    assert fmt.health_text(Health.WARNING, HealthCause.RPO_EXCEEDED) == "Warnung · rpo exceeded"


def test_sizes_rates_and_quoted_input_have_one_formatter(qapp: QCoreApplication) -> None:
    """Sizes and rates read in binary units everywhere (the pages, the models, the dialogs share them); what the
    admin typed is quoted as the engine quotes it and a pasted page is cut to 40 characters."""
    assert fmt.size_text(1536) == "1.5 KiB" and fmt.size_text(40 << 30) == "40.0 GiB"
    assert fmt.size_text(3 << 30, 0) == "3 GiB"
    assert fmt.rate_text(80 << 20) == "80.0 MiB/s"
    assert fmt.shown("abc") == "'abc'"
    assert fmt.shown("x" * 10_000) == "'" + "x" * 40 + "…'"
