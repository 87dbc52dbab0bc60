"""Screenshots of the console's licence banner and Ports page, from a real engine, for docs/screenshots.

Starts ``godwit serve`` on a temporary data directory with its wall clock moved by libfaketime (the
engine and its mobility services only; the machine's clock is left alone), registers two real
mobility services (web-01, db-01) that share the engine's clock, and opens the console on it. Then:

- db-01 stops, the management port moves from the Ports page (web-01 follows, db-01 cannot) and
  the connectivity test runs -> ``console-ports.png``; db-01 starts again and follows;
- clock +150 days (30 days of evaluation left): the Servers page under the amber banner
  -> ``console-licence-30-days.png``;
- clock +177 days (3 days left): the Setup page under the red banner -> ``console-licence-3-days.png``.

``--agents`` renders the Agents page instead, with no engine: a real bridge over a scripted admin client
(``tests/app/scripted.py``) pushes one :class:`UpdatesStatus` per state (:func:`agent_states`) ->
``console-agents-<state>.png``.

Renders offscreen (``QWidget.grab()``) unless a display is set, e.g. under
``xvfb-run -a -s "-screen 0 1280x800x24 -nolisten tcp" .venv/bin/python tools/screenshots.py``.
Everything it started is stopped before it returns.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.appliance import Appliance, Mobility, free_port, wait_for  # noqa: E402

if TYPE_CHECKING:
    from app.bridge import EngineBridge
    from app.views.main_window import MainWindow
    from engine.records import UpdatesStatus

LIBFAKETIME = Path("/usr/lib/x86_64-linux-gnu/faketime/libfaketime.so.1")
SIZE = (1280, 800)  # the frame of the other console screenshots (make screenshots)


class ShotFailed(Exception):
    """A step did not happen in time; ``str()`` says which."""


def _show(bridge: EngineBridge) -> MainWindow:
    """The console's window at the screenshots' size, shown, its bridge started (no tray, no notifications)."""
    from PySide6.QtCore import QSettings

    from app.views.main_window import LicenceNotifier, MainWindow

    window = MainWindow(bridge, offer_setup=False, notifier=LicenceNotifier(QSettings(), tray_available=lambda: False,
                                                         notify=lambda *_: None))
    window.resize(*SIZE)
    window.show()
    bridge.start()
    return window


async def until(predicate: Callable[[], object], what: str, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        await asyncio.sleep(0.05)
    raise ShotFailed(f"timed out waiting for {what}")


async def shoot(window: object, out: Path, offset: Path, app: Appliance, db: Mobility) -> None:
    from app.views.main_window import MainWindow

    assert isinstance(window, MainWindow)
    bridge = window.bridge
    servers = window.servers_page.model
    await until(lambda: bridge.state == "attached" and servers.rowCount() == 2 and window.ports_page.ports,
                "the console to attach and list both servers")

    def save(name: str) -> None:
        # No processEvents() here: it would run other tasks inside this one. The sleeps before let it paint.
        path = out / name
        window.grab().save(str(path))
        print(f"saved {path}", flush=True)

    # The Ports page while the management port moves: db-01 is down, so it cannot follow yet.
    db.stop()  # a second at most: the console can wait
    page = window.ports_page
    window.show_page("ports")
    page.management_edit.setValue(free_port())
    page.apply_button.click()
    await until(lambda: page.message.property("level") in ("ok", "error"), "the management port to move")
    if page.message.property("level") == "error":
        raise ShotFailed(f"the engine refused the move: {page.message.text()}")
    await moved(window, ("db-01",))
    page.test_button.click()
    await until(lambda: page.checks_model.rowCount() > 0, "the connectivity results")
    await asyncio.sleep(0.5)
    save("console-ports.png")

    db.start()  # it reaches the old port, still open, and is told the new one
    await moved(window, ())

    offset.write_text("+150d\n")
    await until(lambda: window.licence_banner.level == "warning", "the 30-day banner")
    window.show_page("servers")
    await asyncio.sleep(1.5)  # a heartbeat or two at the new time, and the ages settle
    save("console-licence-30-days.png")

    offset.write_text("+177d\n")
    await until(lambda: window.licence_banner.level == "critical", "the 3-day banner")
    window.show_page("setup")  # the banner is above every page
    await asyncio.sleep(1.0)
    save("console-licence-3-days.png")


async def moved(window: object, not_moved: tuple[str, ...]) -> None:
    """Wait until the engine counts ``not_moved`` as the servers still on the old management port, and the
    console shows it."""
    from app.views.main_window import MainWindow

    assert isinstance(window, MainWindow)
    bridge, page = window.bridge, window.ports_page
    deadline = time.monotonic() + 30
    while (await bridge.client.ports()).servers_not_moved != not_moved:
        if time.monotonic() > deadline:
            raise ShotFailed(f"the servers not moved are not {not_moved} after 30 s")
        await asyncio.sleep(0.2)
    try:
        await until(lambda: page.ports is not None and page.ports.servers_not_moved == not_moved,
                    "the engine to push the ports once a server moved", timeout=3)
    except ShotFailed as exc:
        print(f"screenshots: warning: {exc}; asking the engine instead", flush=True)
        await bridge.refresh_ports()


def agent_states(now: float) -> dict[str, UpdatesStatus]:
    """The Agents page's states to show: name -> the :class:`UpdatesStatus` the scripted engine pushes."""
    from engine.records import AgentUpdate, UpdatesStatus

    titles = {"log-processor": "Log processor", "process-server": "Process server",
              "replication-manager": "Replication manager", "mobility-package": "Mobility package"}
    feed = "https://updates.godwit.example/stable"

    def agent(name: str, status: str = "up-to-date", installed: str = "0.1.0", available: str | None = None,
              previous: str | None = None, **kw: object) -> AgentUpdate:
        return AgentUpdate(name=name, title=titles[name], installed_version=installed, available_version=available,
                           previous_version=previous, status=status, **kw)  # type: ignore[arg-type]

    def updates(*agents: AgentUpdate, **kw: object) -> UpdatesStatus:
        base: dict[str, object] = dict(mode="manual", window="00:00", feed_url=feed, last_check_at=now - 12 * 60,
                                       last_success_at=now - 12 * 60)
        return UpdatesStatus(agents=agents, **{**base, **kw})  # type: ignore[arg-type]

    outdated = [agent(n, "update-available", available="0.2.0") for n in titles]
    return {
        "up-to-date": updates(*(agent(n, installed="0.2.0", previous="0.1.0") for n in titles), mode="auto"),
        "update-available": updates(*outdated),
        "updating": updates(agent("log-processor", installed="0.2.0", previous="0.1.0"),
                            agent("process-server", "updating", available="0.2.0", stage="downloading",
                                  progress=0.45),
                            *outdated[2:]),
        "update-failed": updates(
            outdated[0],
            agent("process-server", "update-failed", available="0.2.0",
                  reason="0.2.0 did not pass its health check (no answer on the data port within 60 s); 0.1.0 "
                         "runs again. See the engine log, then retry."),
            *outdated[2:]),
        "cannot-update": updates(
            agent("log-processor", "cannot-update", available="0.3.0",
                  reason="the feed's metadata expired on 2031-05-01 and could not be renewed. Check that the "
                         "appliance reaches the feed, then press Check now."),
            agent("process-server", "cannot-update",
                  reason="0.3.0 needs Replication manager 0.3.0, which the feed does not offer yet. Wait for the "
                         "next release."),
            agent("replication-manager"), agent("mobility-package"),
            last_check_at=now - 90, last_success_at=now - 2 * 86400,
            check_error="The update feed did not answer (connection refused). Check the appliance's network or "
                        "the feed address, then press Check now."),
        "mismatched": updates(outdated[0], agent("process-server", installed="0.2.0", previous="0.1.0"),
                              *outdated[2:], mismatched=True),
    }


def agents_shots(out: Path, root: Path) -> int:
    """The Agents page in each of :func:`agent_states`, from a scripted engine (nothing is started)."""
    import qasync
    from PySide6.QtWidgets import QApplication

    from app.bridge import EngineBridge
    from app.theme import apply_theme
    from engine.links.admin import Hello, UpdatesChanged
    from engine.records import AgentStatus, EngineStatus, SetupInfo
    from tests.app.scripted import ScriptedClient

    qapp = QApplication.instance() or QApplication(sys.argv[:1])
    assert isinstance(qapp, QApplication)
    qapp.setOrganizationName("Godwit")
    qapp.setApplicationName("Godwit console")
    apply_theme(qapp, "light")
    states = agent_states(time.time())
    engine = EngineStatus(pid=2317, version="0.1.0", started_at=time.time() - 3600, data_dir="/var/lib/godwit",
                          agents=tuple(AgentStatus(n, "0.1.0", "running", 2318 + i, 0)
                                       for i, n in enumerate(("replication-manager", "process-server",
                                                              "log-processor"))))
    setup = SetupInfo(appliance_id="appl-7f3a", passphrase="p", ca_fingerprint="f", management_port=9443,
                      data_port=9444, secret_store="file", host="godwit-01", mobility_command="godwit mobility run")
    first = next(iter(states.values()))

    async def run() -> None:
        bridge = EngineBridge(root / "data", start_engine=False)  # no engine there: the client is scripted
        client = ScriptedClient([Hello(engine=engine, setup=setup, servers=(), last_event_id=0, updates=first)],
                                keep_open=True)
        bridge.client = client  # type: ignore[assignment]
        window = _show(bridge)
        try:
            page = window.agents_page
            await until(lambda: bridge.state == "attached" and page.updates is not None, "the scripted engine")
            window.show_page("agents")
            for name, status in states.items():
                client.push(UpdatesChanged(status))
                await until(lambda s=status: page.updates == s, f"the {name} state")  # type: ignore[misc]
                await asyncio.sleep(0.3)  # let it lay out and paint
                path = out / f"console-agents-{name}.png"
                window.grab().save(str(path))
                print(f"saved {path}", flush=True)
        finally:
            await bridge.aclose()
            window.close()

    qasync.run(run())
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "screenshots", help="where to save the PNGs")
    parser.add_argument("--agents", action="store_true",
                        help="render the Agents page in each update state from a scripted engine instead")
    args = parser.parse_args(argv)
    if args.agents:
        if not os.environ.get("DISPLAY"):
            os.environ["QT_QPA_PLATFORM"] = "offscreen"
        root = Path(tempfile.mkdtemp(prefix="godwit-screenshots-"))
        os.environ["XDG_CONFIG_HOME"] = str(root / "config")
        try:
            args.out.mkdir(parents=True, exist_ok=True)
            return agents_shots(args.out, root)
        except ShotFailed as exc:
            print(f"screenshots: {exc}", file=sys.stderr)
            return 1
        finally:
            shutil.rmtree(root, ignore_errors=True)
    if not LIBFAKETIME.exists():
        print(f"screenshots: {LIBFAKETIME} is missing (Debian package libfaketime)", file=sys.stderr)
        return 1
    if not os.environ.get("DISPLAY"):
        os.environ["QT_QPA_PLATFORM"] = "offscreen"
    root = Path(tempfile.mkdtemp(prefix="godwit-screenshots-"))
    os.environ["XDG_CONFIG_HOME"] = str(root / "config")  # the console's QSettings stay out of the user's own
    os.environ.setdefault("GODWIT_SECRET_STORE", "file")
    offset = root / "clock_offset"
    offset.write_text("+0\n")
    clock = {"LD_PRELOAD": str(LIBFAKETIME), "FAKETIME_TIMESTAMP_FILE": str(offset), "FAKETIME_NO_CACHE": "1",
             "DONT_FAKE_MONOTONIC": "1"}
    app = Appliance(root)
    app.start(env=clock)
    mobs = [Mobility(app, name, env=clock) for name in ("web-01", "db-01")]
    try:
        for mob in mobs:
            mob.start()
        wait_for(lambda: len(app.servers()) == 2, what="web-01 and db-01 to register")
        args.out.mkdir(parents=True, exist_ok=True)
        return run_console(app, mobs[1], offset, args.out)
    except ShotFailed as exc:
        print(f"screenshots: {exc}", file=sys.stderr)
        return 1
    finally:
        for mob in mobs:
            if mob.proc is not None:
                mob.stop()
        app.stop()
        shutil.rmtree(root, ignore_errors=True)


def run_console(app: Appliance, db: Mobility, offset: Path, out: Path) -> int:
    import qasync
    from PySide6.QtWidgets import QApplication

    from app.bridge import EngineBridge
    from app.theme import apply_theme

    qapp = QApplication.instance() or QApplication(sys.argv[:1])
    assert isinstance(qapp, QApplication)
    qapp.setOrganizationName("Godwit")
    qapp.setApplicationName("Godwit console")
    apply_theme(qapp, "light")

    async def run() -> None:
        bridge = EngineBridge(app.data_dir, start_engine=False)
        window = _show(bridge)
        try:
            await shoot(window, out, offset, app, db)
        finally:
            await bridge.aclose()
            window.close()

    qasync.run(run())
    return 0


if __name__ == "__main__":
    sys.exit(main())
