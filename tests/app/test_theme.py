"""The light and dark palettes: every colour the style sheet names exists in both, text stays readable on its
surfaces, and the admin's choice or the desktop's scheme picks one."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest
from PySide6.QtGui import QColor
from PySide6.QtWidgets import QApplication, QLabel, QVBoxLayout, QWizard, QWizardPage

from app import theme
from app.bridge import Health
from app.views import server_detail
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


_COLOUR = re.compile(r"#[0-9a-fA-F]{3,8}\b|\brgba?\(|\b(?:color|background(?:-color)?)\s*:", re.IGNORECASE)


def _strings(node: ast.AST) -> list[str]:
    """The literal text in ``node``: string constants and the fixed parts of f-strings."""
    return [n.value for n in ast.walk(node) if isinstance(n, ast.Constant) and isinstance(n.value, str)]


def test_no_view_sets_a_literal_colour_in_a_style_sheet() -> None:
    """Colours come from console.qss and its palette tokens (or theme.colour when painted), never from a style sheet
    set in code: those would not follow a switch to dark. Allowed: setStyleSheet("") (a reset) and the app-level
    sheet that apply_theme fills from the palette."""
    root = Path(theme.__file__).resolve().parent
    found = []
    for path in sorted(root.rglob("*.py")):
        tree = ast.parse(path.read_text(), str(path))
        constants = {t.id: node.value for node in tree.body if isinstance(node, ast.Assign)
                     for t in node.targets if isinstance(t, ast.Name)}
        for call in ast.walk(tree):
            if not (isinstance(call, ast.Call) and isinstance(call.func, ast.Attribute)
                    and call.func.attr == "setStyleSheet" and call.args):
                continue
            arg = call.args[0]
            if isinstance(arg, ast.Name) and arg.id in constants:  # a module's STYLE = "..." block
                arg = constants[arg.id]
            if any(_COLOUR.search(text) for text in _strings(arg)):
                found.append(f"{path.relative_to(root.parent)}:{call.lineno}")
    assert found == []


def test_the_chart_colours_are_in_each_palette_and_readable() -> None:
    """The server detail's chart lines are palette tokens of both palettes, at least 3:1 against the chart's
    surface (WCAG for graphics)."""
    for name, palette in theme.PALETTES.items():
        for token in (server_detail.RECEIVED_COLOUR, server_detail.APPLIED_COLOUR, server_detail.RPO_COLOUR,
                      server_detail.THRESHOLD_COLOUR):
            assert _contrast(palette[token], palette["surface"]) >= 3, (name, token)


def test_switching_palettes_with_a_wizard_open(qapp: QApplication) -> None:
    """The desktop switching to dark and back while the set-up wizard is open restyles it (Fusion is set once:
    replacing the style under an open QWizard crashed Qt)."""
    wizard = QWizard()
    wizard.setWizardStyle(QWizard.WizardStyle.ModernStyle)
    page = QWizardPage()
    page.setTitle("Prerequisites")
    QVBoxLayout(page).addWidget(QLabel("Checked."))
    wizard.addPage(page)
    wizard.show()
    try:
        for name in ("dark", "light", "dark"):
            assert theme.apply_theme(qapp, name) == name
            qapp.processEvents()
            assert wizard.palette().color(wizard.palette().ColorRole.Window).name() == theme.PALETTES[name]["window"]
    finally:
        wizard.close()
        theme.apply_theme(qapp, "light")
