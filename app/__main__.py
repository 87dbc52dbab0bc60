"""``godwit console`` (and ``python -m app``): open the console on a data directory's engine."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
import sys
from pathlib import Path

RESOURCES = Path(__file__).resolve().parent.parent / "resources"


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="godwit console", description="Godwit desktop console")
    parser.add_argument("--data-dir", type=Path, help="appliance data directory")
    parser.add_argument("--management-port", type=int, help="management port for an engine the console starts")
    parser.add_argument("--data-port", type=int, help="data port for an engine the console starts")
    parser.add_argument("--screenshot", type=Path, metavar="DIR",
                        help="save a PNG of every page to DIR once attached, then quit (demo, docs)")
    parser.add_argument("--screenshot-servers", type=int, default=0, metavar="N",
                        help="with --screenshot: wait until N servers are listed (at most 60 s)")
    parser.add_argument("--exit-when-usable", type=int, metavar="N", help=argparse.SUPPRESS)  # benchmarks
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    from app.bridge import default_data_dir

    data_dir = args.data_dir or default_data_dir()
    if not (os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY") or os.environ.get("QT_QPA_PLATFORM")):
        print("godwit: no display to open the console on. Run it on a desktop session, over `ssh -X`, or set "
              "QT_QPA_PLATFORM=offscreen; the engine runs without it (`godwit serve`).", file=sys.stderr)
        return 1
    from app.bridge import setup_console_logging

    os.umask(0o077)  # the console's log and settings are the admin's alone
    try:
        setup_console_logging(data_dir)
    except OSError as exc:
        print(f"godwit: cannot use the data directory {data_dir} ({exc.strerror}). Run the console as the user "
              "who owns it, or give another --data-dir.", file=sys.stderr)
        return 1

    import qasync
    from PySide6.QtGui import QIcon
    from PySide6.QtWidgets import QApplication

    from app.errors import install_excepthook

    app = QApplication.instance() or QApplication(sys.argv[:1])
    assert isinstance(app, QApplication)
    app.setOrganizationName("Godwit")
    app.setApplicationName("Godwit console")
    app.setDesktopFileName("godwit")
    app.setWindowIcon(QIcon(str(RESOURCES / "icons" / "godwit.svg")))
    from app.theme import follow_desktop

    follow_desktop(app)  # light or dark as the desktop is, and again when it switches
    install_excepthook()
    from app.gui_thread_gc import GuiThreadCollector

    collector = GuiThreadCollector(app)  # Qt objects must never be freed by a collection in an executor thread
    collector.start()
    try:
        with contextlib.suppress(asyncio.CancelledError):
            qasync.run(run_console(app, data_dir, args))
    finally:
        collector.stop()  # the closed loop (and its Qt timers) is freed here, on the GUI thread
    return 0


async def run_console(app: object, data_dir: Path, args: argparse.Namespace) -> None:
    from PySide6.QtWidgets import QApplication

    from app.bridge import EngineBridge
    from app.views.main_window import MainWindow

    assert isinstance(app, QApplication)
    engine_args: list[str] = []
    if args.management_port:
        engine_args += ["--management-port", str(args.management_port)]
    if args.data_port:
        engine_args += ["--data-port", str(args.data_port)]
    bridge = EngineBridge(data_dir, engine_args=engine_args)
    window = MainWindow(bridge)
    window.show()
    # Quit only after the bridge is closed: stopping the loop under a pending coroutine loses the cleanup.
    app.setQuitOnLastWindowClosed(False)
    closed = asyncio.Event()
    app.lastWindowClosed.connect(closed.set)
    window.quit_requested.connect(closed.set)  # Quit from the tray: the window was hidden, not the last closed
    bridge.start()
    shooter = None
    if args.screenshot:
        shooter = asyncio.ensure_future(take_screenshots(app, window, args.screenshot, args.screenshot_servers))
    elif args.exit_when_usable is not None:
        shooter = asyncio.ensure_future(exit_when_usable(window, args.exit_when_usable))
    await closed.wait()
    if shooter is not None:
        shooter.cancel()
    await bridge.aclose()


async def exit_when_usable(window: object, servers: int) -> None:
    """For ``benchmarks/console_stall.py``: print ``usable`` once the window is attached and lists ``servers``
    rows, then quit (the benchmark times the launch up to that line)."""
    from app.views.main_window import MainWindow

    assert isinstance(window, MainWindow)
    while not (window.bridge.state == "attached" and window.servers_page.model.rowCount() >= servers
               and window.isVisible()):
        await asyncio.sleep(0.01)
    print("usable", flush=True)
    window.quit()


async def take_screenshots(app: object, window: object, out_dir: Path, servers: int) -> None:
    """Wait until attached (and ``servers`` rows are listed), then save each page as PNG and quit."""
    import time

    from PySide6.QtWidgets import QApplication

    from app.views.main_window import MainWindow

    assert isinstance(app, QApplication) and isinstance(window, MainWindow)
    log = logging.getLogger("app.screenshot")
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if window.bridge.state == "attached" and window.servers_page.model.rowCount() >= servers:
            break
        await asyncio.sleep(0.1)
    else:
        log.warning("screenshot: gave up waiting for %d servers", servers)
    window.resize(1180, 640)  # the same frame whatever geometry an earlier session saved
    await asyncio.sleep(0.6)  # let coalesced updates and the status bar settle
    out_dir.mkdir(parents=True, exist_ok=True)
    for page in (*window.PAGES[1:], window.PAGES[0]):  # the first page last: the window is left on it
        window.show_page(page)
        await asyncio.sleep(0.2)
        path = out_dir / f"console-{page}.png"
        window.grab().save(str(path))
        print(f"saved {path}", flush=True)
    window.close()


if __name__ == "__main__":
    sys.exit(main())
