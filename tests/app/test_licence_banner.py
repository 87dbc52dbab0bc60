"""The licence in the console: the banner above every page (amber, red, hidden), one desktop notification
per threshold, and the activation and move dialogs — driven by a fake bridge with the bridge's signals."""

from __future__ import annotations

import asyncio
import dataclasses
import os
import stat
import time
from pathlib import Path
from typing import Any

import pytest
from PySide6.QtCore import QObject, QSettings, Signal
from PySide6.QtGui import QColor
from PySide6.QtWidgets import QApplication, QDialogButtonBox, QMessageBox
from pytestqt.qtbot import QtBot

from app.bridge import DataDir, EngineBridge, EngineError, LicenceStatus, SetupInfo
from app.views.licence_dialogs import ActivateLicenceDialog, BackupDialog
from app.views.main_window import LicenceNotifier, MainWindow, notification_title
from app.widgets.licence_banner import LicenceBanner
from engine.errors import LicenceInvalid  # test data only: what the engine raises for a refused licence
from engine.licence import MAX_LICENCE_FILE
from engine.links.admin import Hello, LicenceChanged
from tests.app.scripted import ScriptedClient
from tests.appliance import until

QSS = Path(__file__).resolve().parents[2] / "resources" / "console.qss"
DAY = 86400.0
STARTED = time.time() - 150 * DAY
SETUP = SetupInfo(appliance_id="appl-7f3a", passphrase="p", ca_fingerprint="f", management_port=9443,
                  data_port=9444, secret_store="file", host="h", mobility_command="godwit mobility run")
WARN_30 = ("This appliance's evaluation licence ends in 30 days. Activate a licence, or move to a fresh appliance "
           "before then.")


def licence(days_left: int | None, *, state: str = "evaluation", alarm: str = "none", message: str = "",
            threshold: int | None = None, expires_at: float | None = None) -> LicenceStatus:
    return LicenceStatus(state=state, days_left=days_left,  # type: ignore[arg-type]
                         expires_at=STARTED + 180 * DAY if expires_at is None else expires_at, activated_at=None,
                         licensee=None, max_servers=None, evaluation_started_at=STARTED,
                         alarm=alarm, message=message, threshold=threshold)  # type: ignore[arg-type]


NO_ALARM = licence(100)
WARNING = licence(30, alarm="warning", message=WARN_30, threshold=30)
WARNING_14 = licence(14, alarm="warning", message="Ends in 14 days.", threshold=14)
CRITICAL = licence(3, alarm="critical", message="Ends in 3 days: activate a licence now.", threshold=3)
EXPIRED = licence(0, state="expired", alarm="critical", message="The evaluation licence has expired.", threshold=0)
ACTIVE = LicenceStatus(state="active", days_left=None, expires_at=None, activated_at=time.time(), licensee="Acme",
                       max_servers=50, evaluation_started_at=STARTED)


class FakeBridge(QObject):
    """The bridge's signals and the licence commands; records calls, answers from ``answers``."""

    connection_changed = Signal(str, str)
    engine_changed = Signal(object)
    setup_changed = Signal(object)
    servers_reset = Signal(list)
    server_updated = Signal(object)
    server_removed = Signal(str)
    events_reset = Signal(list)
    event_added = Signal(object)
    licence_changed = Signal(object)
    ports_changed = Signal(object)
    updates_changed = Signal(object)
    health_changed = Signal(object)

    def __init__(self, root: Path) -> None:
        super().__init__()
        self.data_dir = DataDir(root)
        self.state = "attached"
        self.engine = None
        self.licence: LicenceStatus | None = None
        self.ports = None
        self.updates = None
        self.health = None
        self.calls: list[tuple[str, Any]] = []
        self.answers: dict[str, Any] = {}

    async def _answer(self, name: str, arg: Any) -> Any:
        self.calls.append((name, arg))
        await asyncio.sleep(0.01)
        answer = self.answers[name]
        if isinstance(answer, BaseException):
            raise answer
        return answer

    async def policies(self) -> list[object]:
        return []

    async def activate_licence(self, text: str) -> LicenceStatus:
        status: LicenceStatus = await self._answer("activate_licence", text)
        self.licence = status
        self.licence_changed.emit(status)
        return status

    async def backup(self, passphrase: str) -> bytes:
        data: bytes = await self._answer("backup", passphrase)
        return data


def _background(widget: LicenceBanner) -> QColor:
    return widget.grab().toImage().pixelColor(4, 4)


# --- the banner ------------------------------------------------------------------------------------
def test_banner_shows_the_alarm_in_its_colour(qtbot: QtBot) -> None:
    """No alarm hides the banner; a warning shows the engine's sentence on amber, critical and expired on red."""
    banner = LicenceBanner()
    banner.setStyleSheet(QSS.read_text())
    qtbot.addWidget(banner)
    banner.resize(900, 60)
    banner.show_licence(NO_ALARM)
    assert banner.isHidden() and banner.level == "none"

    banner.show_licence(WARNING)
    assert not banner.isHidden() and banner.level == "warning"
    assert banner.message.text() == WARN_30
    assert _background(banner).name() == "#fff3d6"  # the style sheet's amber reaches the widget
    assert banner.activate_button.text() == "Activate licence…"
    assert banner.move_button.text() == "Move to a fresh appliance…"
    assert repr(banner) == "<LicenceBanner level=warning visible=True days_left=30>"

    banner.show_licence(CRITICAL)
    assert banner.level == "critical" and banner.message.text() == CRITICAL.message
    assert _background(banner).name() == "#fde4e1"  # red

    banner.show_licence(EXPIRED)  # stays red until a licence is activated
    assert not banner.isHidden() and banner.level == "critical"
    assert banner.message.text() == "The evaluation licence has expired."

    banner.show_licence(ACTIVE)
    assert banner.isHidden() and banner.level == "none"


@pytest.mark.asyncio
@pytest.mark.qt_loop
async def test_banner_is_above_every_page(qtbot: QtBot, tmp_path: Path) -> None:
    """The banner sits above the navigation and stays shown whichever page is open; Ports is between Setup
    and Events."""
    bridge = FakeBridge(tmp_path)
    window = _window_without_tray(bridge, tmp_path)
    qtbot.addWidget(window)
    window.show()
    assert window.PAGES == ("overview", "servers", "policies", "setup", "ports", "agents", "events")
    assert [window.nav.item(i).text() for i in range(window.nav.count())] == \
        ["Overview", "Servers", "Policies", "Setup", "Ports", "Agents", "Events"]
    assert not window.licence_banner.isVisible()
    bridge.setup_changed.emit(SETUP)
    bridge.licence_changed.emit(WARNING)
    for page in window.PAGES:
        window.show_page(page)
        assert window.pages.currentWidget() is getattr(window, f"{page}_page")
        assert window.licence_banner.isVisible(), page
        banner_bottom = window.licence_banner.mapTo(window, window.licence_banner.rect().bottomLeft()).y()
        assert banner_bottom < window.pages.mapTo(window, window.pages.rect().topLeft()).y()
        assert banner_bottom < window.nav.mapTo(window, window.nav.rect().topLeft()).y()
    bridge.licence_changed.emit(ACTIVE)
    assert not window.licence_banner.isVisible()


def _no_notify(title: str, text: str, critical: bool) -> None:
    raise AssertionError("no notification expected")


# --- the desktop notification ----------------------------------------------------------------------
def test_notification_once_per_threshold_across_restarts(tmp_path: Path) -> None:
    """Each threshold is told once per appliance, also after a restart (QSettings); a new licence end warns
    anew; without a tray nothing is shown and nothing remembered."""
    settings_file = str(tmp_path / "console.ini")
    shown: list[tuple[str, str, bool]] = []
    tray = {"available": True}

    def notifier() -> LicenceNotifier:
        return LicenceNotifier(QSettings(settings_file, QSettings.Format.IniFormat),
                               tray_available=lambda: tray["available"], notify=lambda *a: shown.append(a))

    first = notifier()
    assert not first.consider("appl-7f3a", NO_ALARM)
    assert first.consider("appl-7f3a", WARNING)
    assert shown == [("Godwit: 30 days left on the licence", WARN_30, False)]
    assert not first.consider("appl-7f3a", WARNING)  # the daily LicenceChanged of day 29 repeats threshold 30
    restarted = notifier()
    assert not restarted.consider("appl-7f3a", WARNING)
    assert restarted.notified("appl-7f3a", WARNING) == {30}
    assert len(shown) == 1

    tray["available"] = False  # e.g. offscreen: skipped quietly, not remembered
    assert not restarted.consider("appl-7f3a", WARNING_14)
    assert len(shown) == 1 and restarted.notified("appl-7f3a", WARNING_14) == {30}
    tray["available"] = True
    assert restarted.consider("appl-7f3a", WARNING_14)
    assert restarted.consider("appl-7f3a", CRITICAL)
    assert restarted.consider("appl-7f3a", EXPIRED)
    assert shown[1:] == [("Godwit: 14 days left on the licence", "Ends in 14 days.", False),
                         ("Godwit: 3 days left on the licence", CRITICAL.message, True),
                         ("Godwit: the licence has expired", EXPIRED.message, True)]
    assert notifier().notified("appl-7f3a", CRITICAL) == {30, 14, 3, 0}

    # Another appliance, and another licence end on this one, start again.
    assert notifier().consider("appl-other", CRITICAL)
    renewed = licence(30, alarm="warning", message=WARN_30, threshold=30, expires_at=STARTED + 400 * DAY)
    assert notifier().consider("appl-7f3a", renewed)
    assert len(shown) == 6
    assert notification_title(licence(1, alarm="critical", message="x", threshold=1)) == \
        "Godwit: 1 day left on the licence"


def test_window_notifies_once_the_appliance_is_known(qtbot: QtBot, tmp_path: Path) -> None:
    """The window asks for a notification when the licence reaches a threshold, keyed by the appliance id
    that comes with the set-up; a repeat of the same threshold asks nothing."""
    shown: list[tuple[str, str, bool]] = []
    notifier = LicenceNotifier(QSettings(str(tmp_path / "s.ini"), QSettings.Format.IniFormat),
                               tray_available=lambda: True, notify=lambda *a: shown.append(a))
    bridge = FakeBridge(tmp_path)
    window = MainWindow(bridge, notifier=notifier, offer_setup=False)
    qtbot.addWidget(window)
    bridge.licence_changed.emit(WARNING)
    assert shown == []  # which appliance? not known yet
    bridge.setup_changed.emit(SETUP)
    assert shown == [("Godwit: 30 days left on the licence", WARN_30, False)]
    bridge.licence_changed.emit(WARNING)
    bridge.setup_changed.emit(SETUP)
    assert len(shown) == 1
    bridge.licence_changed.emit(CRITICAL)
    assert shown[-1][2] is True and len(shown) == 2
    assert notifier.notified("appl-7f3a", CRITICAL) == {30, 3}


def test_window_skips_the_tray_offscreen(qtbot: QtBot, tmp_path: Path) -> None:
    """The real decision: offscreen there is no system tray, so the window shows nothing and remembers nothing."""
    from PySide6.QtWidgets import QSystemTrayIcon

    assert not QSystemTrayIcon.isSystemTrayAvailable()
    bridge = FakeBridge(tmp_path)
    window = MainWindow(bridge, offer_setup=False)
    qtbot.addWidget(window)
    window.notifier.settings = QSettings(str(tmp_path / "s.ini"), QSettings.Format.IniFormat)
    bridge.setup_changed.emit(SETUP)
    bridge.licence_changed.emit(WARNING)
    assert window.tray.icon is None and not window.tray.available
    assert window.notifier.notified("appl-7f3a", WARNING) == set()


# --- the bridge ------------------------------------------------------------------------------------
@pytest.mark.asyncio
@pytest.mark.qt_loop
async def test_bridge_passes_the_licence_on(tmp_path: Path, qapp: QApplication) -> None:
    """The licence of the Hello and of each LicenceChanged reaches licence_changed and bridge.licence; a Hello
    from an engine before admin 1.1 (no licence) emits nothing."""
    from app.bridge import EngineStatus

    engine = EngineStatus(pid=1, version="0.1.0", started_at=0.0, data_dir="/d")
    bridge = EngineBridge(tmp_path, start_engine=False)
    seen: list[LicenceStatus] = []
    bridge.licence_changed.connect(seen.append)
    bridge.client = ScriptedClient([Hello(engine=engine, setup=SETUP, servers=(), last_event_id=0)])  # type: ignore[assignment]
    await bridge._follow()
    assert seen == [] and bridge.licence is None
    bridge.client = ScriptedClient([  # type: ignore[assignment]
        Hello(engine=engine, setup=SETUP, servers=(), last_event_id=0, licence=WARNING),
        LicenceChanged(CRITICAL),
    ])
    await bridge._follow()
    assert seen == [WARNING, CRITICAL] and bridge.licence == CRITICAL
    await bridge.aclose()


# --- the dialogs -----------------------------------------------------------------------------------
def _window_without_tray(bridge: FakeBridge, tmp_path: Path) -> MainWindow:
    return MainWindow(bridge, offer_setup=False,
                      notifier=LicenceNotifier(QSettings(str(tmp_path / "s.ini"), QSettings.Format.IniFormat),
                                                        tray_available=lambda: False, notify=_no_notify))


@pytest.mark.asyncio
@pytest.mark.qt_loop
async def test_activation_shows_the_refusal_then_activates(tmp_path: Path, qapp: QApplication) -> None:
    """Activate licence… opens the dialog; the console sends the file's text; a refusal shows the engine's line
    in the dialog, which stays open; files over 64 KiB or not text are not sent; an accepted licence hides the
    banner and says so."""
    bridge = FakeBridge(tmp_path)
    window = _window_without_tray(bridge, tmp_path)
    window.show()
    try:
        bridge.setup_changed.emit(SETUP)
        bridge.licence_changed.emit(CRITICAL)
        window.licence_banner.activate_button.click()
        dialog = window.dialog
        assert isinstance(dialog, ActivateLicenceDialog) and dialog.isVisible()
        window.licence_banner.activate_button.click()  # a second click raises the same dialog
        assert window.dialog is dialog
        dialog.buttons.button(QDialogButtonBox.StandardButton.Cancel).click()
        assert not dialog.isVisible()
        window.licence_banner.activate_button.click()
        assert window.dialog is not dialog
        dialog = window.dialog
        assert isinstance(dialog, ActivateLicenceDialog) and dialog.isVisible()

        dialog.activate_button.click()
        await until(lambda: dialog.error.isVisible(), what="the console's hint")
        assert dialog.error.text() == "Choose the licence file first."

        big = tmp_path / "big.lic"
        big.write_bytes(b"x" * (MAX_LICENCE_FILE + 1))
        dialog.path.setText(str(big))
        dialog.activate_button.click()
        await until(lambda: "larger than any licence file" in dialog.error.text(), what="the size refusal")
        binary = tmp_path / "photo.jpg"
        binary.write_bytes(b"\xff\xd8\xff\xe0" * 10)
        dialog.path.setText(str(binary))
        dialog.activate_button.click()
        await until(lambda: "(not text)" in dialog.error.text(), what="the text refusal")
        assert bridge.calls == []

        lic = tmp_path / "acme.lic"
        lic.write_text("-----BEGIN GODWIT LICENCE-----\nabc\n")
        dialog.path.setText(str(lic))
        refusal = "This licence is for appliance appl-0000, not this one (appl-7f3a). Ask for a licence for this one."
        bridge.answers["activate_licence"] = LicenceInvalid(refusal)
        dialog.activate_button.click()
        await until(lambda: dialog.error.text() == refusal, what="the engine's refusal")
        assert dialog.isVisible() and dialog.activate_button.isEnabled()
        assert dialog.path.text() == str(lic)
        assert bridge.calls == [("activate_licence", "-----BEGIN GODWIT LICENCE-----\nabc\n")]
        assert window.licence_banner.isVisible()

        bridge.answers["activate_licence"] = ACTIVE
        dialog.activate_button.click()
        await until(lambda: not dialog.isVisible(), what="the dialog to close")
        assert not window.licence_banner.isVisible()
        await until(lambda: window.findChild(QMessageBox, "licence_activated") is not None, what="the confirmation")
        box = window.findChild(QMessageBox, "licence_activated")
        assert box.text() == "The licence is active for Acme. Up to 50 servers may replicate."
        box.close()
    finally:
        window.close()


@pytest.mark.asyncio
@pytest.mark.qt_loop
async def test_move_writes_an_encrypted_backup(tmp_path: Path, qapp: QApplication) -> None:
    """Move to a fresh appliance… explains the move (restore command, the doc), checks the passphrase (twice,
    at least 12 characters), writes the engine's bytes to the chosen file with mode 0600 and shows how to
    restore it; an engine error is shown in the dialog."""
    bridge = FakeBridge(tmp_path)
    window = _window_without_tray(bridge, tmp_path)
    window.show()
    try:
        bridge.setup_changed.emit(SETUP)
        bridge.licence_changed.emit(EXPIRED)
        window.licence_banner.move_button.click()
        dialog = window.dialog
        assert isinstance(dialog, BackupDialog) and dialog.isVisible()
        intro = dialog.findChild(type(dialog.written_note), "backup_intro").text()
        assert "godwit appliance restore FILE --passphrase-file F" in intro
        assert "docs/moving-an-appliance.md" in intro
        assert dialog.path.text().endswith(f"godwit-appl-7f3a-{time.strftime('%Y-%m-%d')}.backup")

        out = tmp_path / "appliance.backup"
        dialog.path.setText(str(out))
        dialog.passphrase.setText("short")
        dialog.passphrase_again.setText("short")
        dialog.write_button.click()
        await until(lambda: dialog.error.isVisible(), what="the length hint")
        assert dialog.error.text() == "The passphrase must have at least 12 characters."
        dialog.passphrase.setText("correct horse battery")
        dialog.passphrase_again.setText("correct horse batterY")
        dialog.write_button.click()
        await until(lambda: dialog.error.text().startswith("The two passphrases differ"), what="the mismatch")
        dialog.path.setText(str(tmp_path / "missing" / "x.backup"))
        dialog.passphrase_again.setText("correct horse battery")
        dialog.write_button.click()
        await until(lambda: dialog.error.text().startswith("The folder"), what="the folder hint")
        assert bridge.calls == []

        dialog.path.setText(str(out))
        bridge.answers["backup"] = EngineError("The secret store is locked. Unlock it and try again.")
        dialog.write_button.click()
        await until(lambda: dialog.error.text() == "The secret store is locked. Unlock it and try again.",
                    what="the engine's error")
        assert not out.exists() and not dialog.written_note.isVisible() and dialog.write_button.isEnabled()

        old_umask = os.umask(0o022)  # a permissive umask must not make the backup readable by others
        try:
            bridge.answers["backup"] = b"GODWIT-BACKUP\x00" + bytes(range(256)) * 40
            dialog.write_button.click()
            await until(lambda: dialog.restore_command.isVisible(), what="the backup to be written")
        finally:
            os.umask(old_umask)
        assert bridge.calls[-1] == ("backup", "correct horse battery")
        assert out.read_bytes() == bridge.answers["backup"]
        assert stat.S_IMODE(out.stat().st_mode) == 0o600
        assert not dialog.error.isVisible()
        assert str(out) in dialog.written_note.text()
        assert dialog.restore_command.text() == f"godwit appliance restore {out} --passphrase-file F"
        assert dialog.passphrase.text() == "" and dialog.passphrase_again.text() == ""
        assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".appliance")] == []
        dialog.buttons.button(QDialogButtonBox.StandardButton.Close).click()
        assert not dialog.isVisible()
        window.licence_banner.move_button.click()  # a fresh dialog; the closed one goes
        assert window.dialog is not dialog and window.dialog.isVisible()
    finally:
        window.close()


def test_setup_page_licence_line() -> None:
    """The Setup page's licence line says the state, the days left (singular for one) and the end."""
    from app.views.setup_page import licence_text

    assert licence_text(licence(150)).startswith("Evaluation, 150 days left (ends ")
    assert licence_text(licence(1, alarm="critical", threshold=1)).startswith("Evaluation, 1 day left")
    assert licence_text(EXPIRED).startswith("Expired on ")
    active = dataclasses.replace(licence(None, state="active"), expires_at=None, licensee="Example Ltd", max_servers=5)
    assert licence_text(active) == "Active for Example Ltd, up to 5 servers, no end"
