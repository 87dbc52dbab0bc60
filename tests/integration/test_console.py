"""The console against a real engine and real mobility services, on the qasync loop."""

from __future__ import annotations

import asyncio
import os
import signal
import time
from pathlib import Path

import pytest
from PySide6.QtGui import QGuiApplication
from PySide6.QtWidgets import QApplication, QMessageBox

from app.bridge import EngineBridge, ServerState
from app.views.main_window import MainWindow
from tests.appliance import HEARTBEAT, Appliance, Mobility, free_port, until

pytestmark = [pytest.mark.asyncio, pytest.mark.qt_loop]


def _stop_engine_of(data_dir: Path) -> None:
    """Stop an engine the console started (it outlives the console by design)."""
    try:
        pid = int((data_dir / "engine.lock").read_text())
        os.kill(pid, signal.SIGTERM)
    except (OSError, ValueError):
        return
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return
        time.sleep(0.05)


def _visible_texts(window: MainWindow) -> str:
    from PySide6.QtWidgets import QLabel, QLineEdit, QPlainTextEdit

    texts = [w.text() for w in window.findChildren(QLabel) + window.findChildren(QLineEdit)]
    texts += [w.toPlainText() for w in window.findChildren(QPlainTextEdit)]
    return "\n".join(texts)


async def test_console_shows_live_servers_and_setup(appliance: Appliance, qapp: QApplication) -> None:
    """A registered server, the setup details and passphrase rotations reach the pages live; Forget revokes it."""
    bridge = EngineBridge(appliance.data_dir, start_engine=False)
    window = MainWindow(bridge, offer_setup=False)
    window.show()
    bridge.start()
    mob = Mobility(appliance, "web-01").start()
    try:
        await until(lambda: bridge.state == "attached", what="the console to attach")
        assert window.engine_label.property("level") == "ok"
        assert "replication-manager running" in window.engine_label.text()
        model = window.servers_page.model
        await until(lambda: model.rowCount() == 1, what="web-01 in the Servers table")
        assert model.data(model.index(0, model.NAME)) == "web-01"
        assert model.data(model.index(0, model.STATE)) == "Registered"
        assert window.pages.currentWidget() is window.overview_page  # the first page
        window.show_page("servers")
        assert window.servers_page.table.isVisible()

        setup = bridge.client
        info = await setup.setup()
        assert window.setup_page.passphrase.text() == info.passphrase
        assert window.setup_page.fingerprint.text() == info.ca_fingerprint
        assert info.mobility_command in window.setup_page.command.toPlainText()
        window.setup_page.passphrase.copy_button.click()
        assert QGuiApplication.clipboard().text() == info.passphrase
        assert "protected by file permissions only" in _visible_texts(window)

        # A rotation made elsewhere (the CLI) reaches the page through the push stream.
        await bridge.client.rotate_passphrase()
        await until(lambda: window.setup_page.passphrase.text() != info.passphrase, what="the new passphrase")
        events = window.events_page.model
        await until(lambda: events.event_at(events.rowCount() - 1).code == "passphrase-rotated", what="the event")

        # And from the Setup page's own button, after a confirmation.
        shown = window.setup_page.passphrase.text()
        window.show_page("setup")
        window.setup_page.rotate_button.click()
        await until(lambda: isinstance(QApplication.activeModalWidget(), QMessageBox), what="the confirmation")
        box = QApplication.activeModalWidget()
        assert isinstance(box, QMessageBox)
        next(b for b in box.buttons() if b.text() == "Rotate").click()
        await until(lambda: window.setup_page.passphrase.text() != shown, what="the rotated passphrase")
        assert window.setup_page.passphrase.text() == (await bridge.client.setup()).passphrase

        # The last heartbeat column moves on its own; it shows a recent time.
        assert model.data(model.index(0, model.LAST_HEARTBEAT)) in ("just now", "1 s ago", "2 s ago")

        # The admin forgets the server: select its row, click Forget…, confirm.
        page = window.servers_page
        window.show_page("servers")
        assert not page.forget_button.isEnabled()
        page.table.selectRow(0)
        assert page.forget_button.isEnabled()
        page.forget_button.click()
        await until(lambda: isinstance(QApplication.activeModalWidget(), QMessageBox), what="the confirmation")
        box = QApplication.activeModalWidget()
        assert isinstance(box, QMessageBox) and "web-01" in box.text()
        forget = next(b for b in box.buttons() if b.text() == "Forget")
        forget.click()
        await until(lambda: model.rowCount() == 0, what="web-01 to leave the table")
        assert page.empty.isVisible()
        code, _ = mob.wait_exit()
        assert code == 1  # its certificate is revoked: the mobility service was refused and stopped
    finally:
        mob.stop()
        await bridge.aclose()
        window.close()


async def test_console_starts_the_engine_and_reattaches_after_a_crash(tmp_path: Path, qapp: QApplication) -> None:
    """With no engine the console starts one, and after the engine is killed it starts another and re-attaches."""
    data_dir = tmp_path / "embedded"
    mgmt, data = free_port(), free_port()
    bridge = EngineBridge(data_dir, engine_args=["--management-port", str(mgmt), "--data-port", str(data),
                                                 "--heartbeat-interval", str(HEARTBEAT)])
    window = MainWindow(bridge, offer_setup=False)
    window.show()
    states: list[str] = []
    bridge.connection_changed.connect(lambda state, _detail: states.append(state))
    bridge.start()
    mob = None
    try:
        await until(lambda: bridge.state == "attached", timeout=30, what="the console to start and attach")
        assert states[:2] == ["starting", "attached"]
        first_pid = bridge.engine.pid  # type: ignore[union-attr]

        app = Appliance(tmp_path)  # the same data dir, driven from outside the console
        app.data_dir, app.management_port = data_dir, mgmt
        mob = Mobility(app, "db-01").start()
        model = window.servers_page.model
        await until(lambda: model.rowCount() == 1, what="db-01 in the table")

        os.kill(first_pid, signal.SIGKILL)  # the engine crashes
        await until(lambda: bridge.attach_count == 2, timeout=40, what="the console to re-attach")
        assert states.count("starting") == 2 and states[-1] == "attached"
        assert bridge.engine.pid != first_pid  # type: ignore[union-attr]
        assert window.engine_label.property("level") == "ok"
        await until(lambda: model.rowCount() == 1, what="db-01 back in the table")
        before = model.server(0).last_heartbeat or 0.0
        await until(lambda: (model.server(0).last_heartbeat or 0.0) > before, timeout=30,
                    what="heartbeats to reach the new engine")
    finally:
        if mob is not None:
            mob.stop()
        await bridge.aclose()
        window.close()
        _stop_engine_of(data_dir)


async def test_console_says_why_the_engine_cannot_start(tmp_path: Path, qapp: QApplication) -> None:
    """An engine that cannot start (its port taken) shows its one-line reason in the engine banner; the status
    bar says it is not running, marked bad."""
    import socket

    with socket.socket() as busy:
        busy.bind(("0.0.0.0", 0))
        busy.listen()
        port = busy.getsockname()[1]
        bridge = EngineBridge(tmp_path / "d", engine_args=["--management-port", str(port), "--data-port",
                                                           str(free_port())])
        window = MainWindow(bridge, offer_setup=False)
        bridge.start()
        try:
            await until(lambda: bridge.state == "failed", timeout=30, what="the failure to be reported")
            assert window.engine_label.property("level") == "bad"
            program = Path(f"/proc/{os.getpid()}/comm").read_text().strip()  # this test holds the port
            assert not window.engine_banner.isHidden()  # the reason is said once, in the banner with Start engine
            assert window.engine_banner.message.text() == (
                f"The management port {port} is in use by another program, {program} (pid {os.getpid()}). Stop "
                "that program, or choose another port with --management-port.")
        finally:
            await bridge.aclose()
            window.close()


async def test_console_enables_and_disables_replication(appliance: Appliance, qapp: QApplication,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    """Enable, Resync and Disable from the Servers page drive a server to Protected, back to Protected and off; its
    details cap its bandwidth and export its newest point byte for byte."""
    from PySide6.QtWidgets import QComboBox, QDialog, QDialogButtonBox

    from tests.appliance import fill_disk

    disk = appliance.root / "src.img"
    fill_disk(disk, 8 * 1024 * 1024, seed=3)
    bridge = EngineBridge(appliance.data_dir, start_engine=False)
    window = MainWindow(bridge, offer_setup=False)
    window.show()
    bridge.start()
    mob = Mobility(appliance, "app-01", disks=[disk]).start()
    page = window.servers_page
    model = page.model
    try:
        await until(lambda: model.rowCount() == 1, what="app-01 in the table")
        page.table.selectRow(0)
        assert page.enable_button.isEnabled() and not page.disable_button.isEnabled()
        assert model.data(model.index(0, model.PROGRESS)) == "Not replicating"
        page.enable_button.click()
        await until(lambda: isinstance(QApplication.activeModalWidget(), QDialog), what="the policy dialog")
        dialog = QApplication.activeModalWidget()
        combo = dialog.findChild(QComboBox, "choice")
        assert combo is not None and combo.currentText() == "default"
        buttons = dialog.findChild(QDialogButtonBox)
        next(b for b in buttons.buttons() if b.text() == "Enable").click()
        await until(lambda: model.server(0).state == ServerState.PROTECTED, timeout=60, what="app-01 to be protected")
        assert model.data(model.index(0, model.STATE)) == "Protected"
        assert model.server(0).last_recovery_point is not None
        assert model.data(model.index(0, model.LAST_POINT)) == "just now"
        assert page.disable_button.isEnabled() and not page.enable_button.isEnabled()

        # Its details: a double-click opens them; a cap applies live; the newest point exports byte for byte.
        page.detail_requested.emit("app-01")
        detail = window.details["app-01"]
        await until(lambda: detail.server is not None and detail.points, what="the details and their points")
        await detail.apply_cap(40)
        assert (await bridge.client.server("app-01")).max_mbps == 40 and "40 Mbit/s" in detail.message.text()
        page.detail_requested.emit("app-01")
        assert list(window.details.values()) == [detail]  # the same dialog, raised
        out = appliance.root / "exported"
        out.mkdir()

        async def into_out(*_: object) -> Path:
            return out

        monkeypatch.setattr("app.views.server_detail.choose_folder", into_out)
        await detail.export(detail.points[0], "raw")
        assert (out / "app-01-disk0.raw").read_bytes() == disk.read_bytes(), detail.message.text()
        assert sorted(p.name for p in out.iterdir()) == ["app-01-disk0.raw"]  # no partial file left
        detail.close()
        await until(lambda: "app-01" not in window.details, what="the closed dialog to go")

        page.resync_button.click()
        await until(lambda: isinstance(QApplication.activeModalWidget(), QMessageBox), what="the confirmation")
        box = QApplication.activeModalWidget()
        next(b for b in box.buttons() if b.text() == "Resync").click()
        await until(lambda: "resync-requested" in [e.code for e in (
            window.events_page.model.event_at(i) for i in range(window.events_page.model.rowCount()))],
            what="the resync to be requested")
        await until(lambda: model.server(0).state == ServerState.PROTECTED, timeout=60, what="the resync to finish")
        page.disable_button.click()
        await until(lambda: isinstance(QApplication.activeModalWidget(), QMessageBox), what="the confirmation")
        box = QApplication.activeModalWidget()
        next(b for b in box.buttons() if b.text() == "Disable").click()
        await until(lambda: not model.server(0).replicating, what="replication to stop")
        assert model.data(model.index(0, model.STATE)) == "Registered"
    finally:
        mob.stop()
        await bridge.aclose()
        window.close()


async def test_an_engine_the_admin_stopped_stays_stopped_until_start_engine(appliance: Appliance,
                                                                           qapp: QApplication) -> None:
    """An engine the console did not start and the admin stopped is not started again: the console says so once
    in its banner, greys the pages, and its Start engine button starts one; Quit can stop it again."""
    bridge = EngineBridge(appliance.data_dir)  # may start engines, but did not start this one
    window = MainWindow(bridge, tray_available=lambda: False, offer_setup=False)
    window.show()
    bridge.start()
    qapp.setQuitOnLastWindowClosed(False)  # as the console runs: Quit ends it, not the loop under the test
    try:
        await until(lambda: bridge.state == "attached", what="the console to attach")
        assert window.engine_banner.isHidden() and window.pages.isEnabled()
        await asyncio.get_running_loop().run_in_executor(None, appliance.stop)
        await until(lambda: bridge.state == "stopped", what="the console to notice")
        await asyncio.sleep(3.0)
        assert not (appliance.data_dir / "admin.sock").exists() and bridge.state == "stopped"
        assert window.engine_banner.isVisible() and "not running" in window.engine_banner.message.text()
        assert not window.pages.isEnabled()

        window.engine_banner.start_button.click()
        await until(lambda: bridge.state == "attached", timeout=60, what="Start engine to start one and attach")
        assert window.engine_banner.isHidden() and window.pages.isEnabled()
        assert (appliance.data_dir / "admin.sock").exists()

        quits: list[bool] = []
        window.quit_requested.connect(lambda: quits.append(True))
        window.on_quit()
        box = window.dialog
        assert isinstance(box, QMessageBox)
        stop = next(b for b in box.buttons() if b.text() == "Stop engine and quit")
        stop.click()
        await until(lambda: quits and not bridge._engine_alive(), timeout=40, what="the engine to stop and Quit")
        assert not (appliance.data_dir / "admin.sock").exists()
    finally:
        await bridge.aclose()
        window.close()
        qapp.setQuitOnLastWindowClosed(True)
        _stop_engine_of(appliance.data_dir)
