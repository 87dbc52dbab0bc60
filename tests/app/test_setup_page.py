"""The Setup page's install command for the mobility bundle: shown read-only from the engine's SetupInfo, copied
whole with its own button, and absent (with a word why) from an engine that does not offer it — driven by a fake
bridge with the page's signals and commands."""

from __future__ import annotations

import os
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from PySide6.QtCore import QObject, Signal
from PySide6.QtGui import QGuiApplication
from PySide6.QtWidgets import QApplication

from app.bridge import LicenceStatus, SetupInfo, TargetStatus
from app.views import setup_page
from app.views.setup_page import SetupPage
from engine.mobility_install import install_command

NOW = time.time()
FINGERPRINT = ("5B:1E:9A:C4:77:02:D3:4F:8E:61:0A:B2:9C:3D:E5:F7:21:44:86:C9:0D:7E:A1:B3:5F:6C:98:E2:17:4A:C0:3B")
SETUP = SetupInfo(appliance_id="a7f3c2e1-4b2d-4e0f-9a51-3c8d2f6b7e10", passphrase="RVKT-AMBQ-Z90X-PL3M-W7HD-QN2C",
                  ca_fingerprint=FINGERPRINT, management_port=443, data_port=9443,
                  secret_store="keyring (SecretService)", host="appliance.acme.lan",
                  mobility_command="godwit mobility run --appliance appliance.acme.lan:443 --passphrase-file "
                                   f"passphrase.txt --ca-fingerprint {FINGERPRINT} --state-dir "
                                   "/var/lib/godwit-mobility --disk /dev/sda",
                  setup_completed_at=NOW - 86400,
                  install_command=install_command(host="appliance.acme.lan", management_port=443,
                                                  ca_fingerprint=FINGERPRINT))
LICENCE = LicenceStatus(state="evaluation", days_left=172, expires_at=NOW + 172 * 86400, activated_at=None,
                        licensee=None, max_servers=None, evaluation_started_at=NOW - 8 * 86400)


class FakeBridge(QObject):
    """The signals the Setup page listens to and the commands it calls; nothing is attached (``engine`` None), so
    the page asks nothing of its own."""

    setup_changed = Signal(object)
    licence_changed = Signal(object)
    event_added = Signal(object)

    def __init__(self) -> None:
        super().__init__()
        self.engine: object | None = None
        self.calls: list[str] = []

    async def target(self) -> TargetStatus | None:
        self.calls.append("target")
        return None

    async def rotate_passphrase(self) -> SetupInfo:
        self.calls.append("rotate_passphrase")
        return SETUP


@pytest.fixture
def page(qtbot: Any) -> SetupPage:
    widget = SetupPage(FakeBridge())  # type: ignore[arg-type]
    qtbot.addWidget(widget)
    widget.resize(1060, 800)
    return widget


def test_the_install_command_is_shown_read_only_and_copied_whole(page: SetupPage, qtbot: Any) -> None:
    """The engine's install command fills a read-only field; Copy puts the whole line on the clipboard (even with
    a part of it selected), says "Copied" and reads as before after :data:`COPIED_MS`; a second click meanwhile
    copies the same again."""
    page.bridge.setup_changed.emit(SETUP)
    assert page.install.isReadOnly() and page.install.toPlainText() == SETUP.install_command
    assert page.copy_install.isEnabled()
    page.install.selectAll()
    cursor = page.install.textCursor()
    cursor.setPosition(5)
    page.install.setTextCursor(cursor)
    page.copy_install.click()
    page.copy_install.click()
    assert QGuiApplication.clipboard().text() == SETUP.install_command
    assert page.copy_install.text() == "Copied" and page.copy_command.text() == "Copy command"
    assert page.copied_timer.interval() == setup_page.COPIED_MS
    qtbot.waitUntil(lambda: page.copy_install.text() == "Copy command", timeout=5000)
    page.copy_command.click()
    assert QGuiApplication.clipboard().text() == SETUP.mobility_command


def test_an_engine_without_the_install_command_says_so(page: SetupPage) -> None:
    """SetupInfo from an engine before admin 1.7 has no install command: the field is empty with a word why and
    Copy is disabled; a later SetupInfo that carries one (the engine updated) fills it and enables Copy."""
    page.bridge.setup_changed.emit(replace(SETUP, install_command=""))
    assert page.install.toPlainText() == "" and "does not offer the mobility bundle" in page.install.placeholderText()
    assert not page.copy_install.isEnabled()
    page.bridge.setup_changed.emit(SETUP)
    assert page.install.toPlainText() == SETUP.install_command and page.copy_install.isEnabled()


def test_the_page_renders_with_both_commands(page: SetupPage, qapp: QApplication) -> None:
    """At the console's size the Registration group shows both commands with their hints and Copy buttons beside
    them, none cut off (a screenshot is saved for a look when SHOTS_DIR is set)."""
    page.bridge.setup_changed.emit(SETUP)
    page.bridge.licence_changed.emit(LICENCE)
    page.show()
    qapp.processEvents()
    assert page.install.isVisible() and page.command.isVisible()
    for button in (page.copy_install, page.copy_command):
        assert button.isVisible() and button.isEnabled()
        assert button.width() >= button.sizeHint().width() and button.height() >= button.sizeHint().height()
    assert page.minimumSizeHint().height() <= page.height()
    assert page.install.geometry().bottom() < page.height()
    assert page.copy_install.mapTo(page, page.copy_install.rect().topLeft()).x() > \
        page.install.mapTo(page, page.install.rect().topRight()).x()
    if shots := os.environ.get("SHOTS_DIR"):
        Path(shots).mkdir(parents=True, exist_ok=True)
        page.grab().save(str(Path(shots) / "setup-page-install-command.png"))
