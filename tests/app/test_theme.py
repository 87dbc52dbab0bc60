"""The light and dark palettes: every colour the style sheet names exists in both, text stays readable on its
surfaces, and the admin's choice or the desktop's scheme picks one."""

from __future__ import annotations

import pytest
from PySide6.QtGui import QColor
from PySide6.QtWidgets import QApplication

from app import theme
from app.bridge import Health
from app.widgets.formatting import health_colour


def _luminance(hex_colour: str) -> float:
    def channel(v: int) -> float:
        c = v / 255
        return c / 12.92 if c <= 0.03928 else ((c + 0.055) / 1.055) ** 2.4

    q = QColor(hex_colour)
    return 0.2126 * channel(q.red()) + 0.7152 * channel(q.green()) + 0.0722 * channel(q.blue())


def _contrast(a: str, b: str) -> float:
    hi, lo = sorted((_luminance(a), _luminance(b)), reverse=True)
    return (hi + 0.05) / (lo + 0.05)


@pytest.mark.parametrize("name", sorted(theme.PALETTES))
def test_every_token_of_the_style_sheet_is_in_each_palette(name: str) -> None:
    """Filling console.qss from a palette leaves no token behind, and a token no palette has is refused by name."""
    sheet = theme.style_sheet(name)
    assert "@" not in sheet
    with pytest.raises(KeyError, match="@nope"):
        theme.style_sheet(name, "QLabel { color: @nope; }")


@pytest.mark.parametrize("name", sorted(theme.PALETTES))
def test_text_and_health_colours_are_readable_on_their_surfaces(name: str) -> None:
    """WCAG contrast: body text at least 7:1 on surfaces, health colours and banner text at least 4.5:1."""
    p = theme.PALETTES[name]
    for surface in ("window", "surface", "alt_row"):
        assert _contrast(p["text"], p[surface]) >= 7, (name, surface)
        for token in ("ok", "warn", "bad", "muted"):
            assert _contrast(p[token], p[surface]) >= 4.5, (name, token, surface)
    assert _contrast(p["warn_text"], p["warn_bg"]) >= 4.5 and _contrast(p["bad_text"], p["bad_bg"]) >= 4.5


def test_the_admins_choice_wins_and_health_colours_follow_the_palette(qapp: QApplication,
                                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    """GODWIT_CONSOLE_THEME pins the palette; the tables' health colours come from the palette in use."""
    try:
        monkeypatch.setenv("GODWIT_CONSOLE_THEME", "dark")
        assert theme.apply_theme(qapp) == "dark" and theme.current() == "dark"
        assert health_colour(Health.CRITICAL) == theme.PALETTES["dark"]["bad"]
        assert qapp.palette().color(qapp.palette().ColorRole.Window).name() == theme.PALETTES["dark"]["window"]
        monkeypatch.setenv("GODWIT_CONSOLE_THEME", "light")
        assert theme.apply_theme(qapp) == "light"
        assert health_colour(Health.CRITICAL) == theme.PALETTES["light"]["bad"]
    finally:
        theme.apply_theme(qapp, "light")
