"""The console's licence banner and Ports page against a real engine on the qasync loop; the engine's clock is
moved with libfaketime (the engine's processes only; the console and the machine keep the real time)."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest
from PySide6.QtCore import QSettings
from PySide6.QtWidgets import QApplication

from app.bridge import EngineBridge
from app.theme import apply_theme
from app.views.main_window import LicenceNotifier, MainWindow
from tests.appliance import Appliance, fake_clock, free_port, until

pytestmark = [pytest.mark.asyncio, pytest.mark.qt_loop]



@pytest.fixture
def skewed(tmp_path_factory: pytest.TempPathFactory) -> object:
    """An engine whose wall clock is the machine's plus the libfaketime offset in ``clock_offset``, re-read at
    every call; it starts at +0 so its evaluation starts now."""
    app = Appliance(tmp_path_factory.mktemp("licence"))
    offset = app.root / "clock_offset"
    app.start(env=fake_clock(offset))
    yield app, offset
    app.stop()


def _window(bridge: EngineBridge, settings: Path, shown: list[tuple[str, str, bool]]) -> MainWindow:
    notifier = LicenceNotifier(QSettings(str(settings), QSettings.Format.IniFormat), tray_available=lambda: True,
                               notify=lambda *a: shown.append(a))
    window = MainWindow(bridge, notifier=notifier, offer_setup=False)
    qapp = QApplication.instance()
    assert isinstance(qapp, QApplication)
    apply_theme(qapp, "light")  # the console's own colours, so the banner's can be checked
    window.resize(1180, 640)
    window.show()
    return window


async def test_banner_follows_the_engines_licence(skewed: tuple[Appliance, Path], qapp: QApplication,
                                                  tmp_path: Path) -> None:
    """No banner at the start of the evaluation; at 30 days left an amber banner with the engine's sentence on
    every page and one notification; at 3 days left a red one and a second notification."""
    app, offset = skewed
    shown: list[tuple[str, str, bool]] = []
    bridge = EngineBridge(app.data_dir, start_engine=False)
    window = _window(bridge, tmp_path / "console.ini", shown)
    banner = window.licence_banner
    bridge.start()
    try:
        await until(lambda: bridge.state == "attached" and bridge.licence is not None, what="the licence")
        assert bridge.licence is not None and bridge.licence.state == "evaluation"
        assert bridge.licence.days_left == 180 and bridge.licence.alarm == "none"
        assert not banner.isVisible() and shown == []

        offset.write_text("+150d\n")
        await until(lambda: banner.level == "warning", what="the 30-day banner")
        licence = await bridge.client.licence()
        assert (licence.days_left, licence.threshold, licence.alarm) == (30, 30, "warning")
        assert banner.message.text() == licence.message and "ends in 30 days" in licence.message
        assert banner.grab().toImage().pixelColor(4, 4).name() == "#fff3d6"  # amber
        for page in window.PAGES:
            window.show_page(page)
            assert banner.isVisible(), page
        assert shown == [("Godwit: 30 days left on the licence", licence.message, False)]

        offset.write_text("+177d\n")
        await until(lambda: banner.level == "critical", what="the 3-day banner")
        licence = await bridge.client.licence()
        assert (licence.days_left, licence.threshold, licence.alarm) == (3, 3, "critical")
        assert banner.message.text() == licence.message and "ends in 3 days" in licence.message
        assert banner.grab().toImage().pixelColor(4, 4).name() == "#fde4e1"  # red
        assert banner.isVisible()
        assert shown[1:] == [("Godwit: 3 days left on the licence", licence.message, True)]
    finally:
        await bridge.aclose()
        window.close()


async def test_ports_page_shows_and_moves_the_data_port(appliance: Appliance, qapp: QApplication,
                                                        tmp_path: Path) -> None:
    """The Ports page shows the engine's ports and firewall rules; a data port in use is refused with the
    engine's line and the typed value kept; a free one is applied live and answers; the connectivity test
    lists its results."""
    bridge = EngineBridge(appliance.data_dir, start_engine=False)
    window = _window(bridge, tmp_path / "console.ini", [])
    page = window.ports_page
    window.show_page("ports")
    bridge.start()
    try:
        await until(lambda: page.ports is not None, what="the ports")
        assert (page.management_edit.value(), page.data_edit.value()) == (appliance.management_port,
                                                                          appliance.data_port)
        listen = page.listen_edit.text()
        assert listen == (await bridge.client.ports()).listen_address
        assert page.current.text() == (f"Now: management port {appliance.management_port}, data port "
                                       f"{appliance.data_port}, listening on {listen}.")
        ports_in_rules = {page.firewall_model.data(page.firewall_model.index(r, 2))
                          for r in range(page.firewall_model.rowCount())}
        assert {str(appliance.management_port), str(appliance.data_port)} <= ports_in_rules

        with socket.socket() as busy:  # another program holds the port the admin types
            busy.bind(("0.0.0.0", 0))
            busy.listen()
            taken = busy.getsockname()[1]
            page.data_edit.setValue(taken)
            page.apply_button.click()
            await until(lambda: page.message.property("level") == "error", timeout=30, what="the refusal")
        assert f"port {taken} is in use" in page.message.text()
        assert "\n" not in page.message.text()
        assert page.data_edit.value() == taken and page.ports.data_port == appliance.data_port  # type: ignore[union-attr]

        new = free_port()
        page.data_edit.setValue(new)
        page.apply_button.click()
        await until(lambda: page.message.property("level") == "ok", timeout=30, what="the new data port")
        assert page.ports is not None and page.ports.data_port == new
        assert (await bridge.client.ports()).data_port == new
        assert page.data_edit.value() == new and f"data port {new}" in page.current.text()
        await until(lambda: _answers(new), timeout=20, what=f"the new data port {new} to answer")

        page.test_button.click()
        await until(lambda: page.checks_model.rowCount() > 0, timeout=60, what="the connectivity results")
        checks = {c.name: c for c in (page.checks_model.check(r) for r in range(page.checks_model.rowCount()))}
        assert checks["data port"].ok and f":{new} " in checks["data port"].detail, checks
        assert checks["management port"].ok, checks
        failed = sum(not c.ok for c in checks.values())
        assert page.summary.property("level") == ("bad" if failed else "ok")
        assert page.checks_model.data(page.checks_model.index(0, 1)) in ("OK", "Failed")
    finally:
        await bridge.aclose()
        window.close()


def _answers(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=1).close()
        return True
    except OSError:
        return False
