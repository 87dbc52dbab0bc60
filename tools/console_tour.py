"""``make screenshots``: every page, the set-up wizard's steps and the main dialogs of the console, rendered against
a real demo appliance, at 1280x800 and 1920x1080, into ``docs/screenshots/<size>/``.

Starts the demo (``tools/demo.py --no-console``: a real engine, three real mobility services replicating sample
disks, a signed update feed offering newer agents) in its own directory, waits until a recovery point and some
history exist, then opens the console in this process and walks it: each page, web-01's details (each tab), the
first-run wizard (each step, applying nothing), the policy editor, the licence and backup dialogs, the Quit
question, and the Overview and Servers pages in the dark palette. The demo is stopped at the end unless ``--keep``.

Run it under a virtual display (the Makefile does): ``xvfb-run -a -s "-screen 0 1920x1080x24" python
tools/console_tour.py``; with no display it renders offscreen.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

if TYPE_CHECKING:
    from PySide6.QtWidgets import QWidget

    from app.views.main_window import MainWindow

SIZES = ((1280, 800), (1920, 1080))
PY = sys.executable


class TourFailed(Exception):
    """Something the tour waits for did not happen; ``str()`` says what."""


async def until(predicate: Callable[[], object], what: str, timeout: float = 90.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise TourFailed(f"gave up waiting for {what}")
        await asyncio.sleep(0.1)


async def settle(seconds: float = 0.4) -> None:
    """Let coalesced updates, layouts and the first paint happen (the qasync loop runs Qt's events meanwhile)."""
    await asyncio.sleep(seconds)


class Camera:
    """Saves widgets as ``<out>/<W>x<H>/<name>.png`` and lists what it saved."""

    def __init__(self, out: Path) -> None:
        self.out = out
        self.size = SIZES[0]
        self.saved: list[Path] = []

    def __repr__(self) -> str:
        return f"<Camera {self.out} {self.size} saved={len(self.saved)}>"

    async def shoot(self, widget: QWidget, name: str) -> None:
        await settle()
        folder = self.out / f"{self.size[0]}x{self.size[1]}"
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / f"{name}.png"
        if not widget.grab().save(str(path)):
            raise TourFailed(f"could not save {path}")
        self.saved.append(path)
        print(f"saved {path.relative_to(ROOT) if path.is_relative_to(ROOT) else path}", flush=True)


async def tour(window: MainWindow, camera: Camera, dark: bool) -> None:
    """Walk the console at the camera's size."""
    from PySide6.QtWidgets import QDialog, QWidget

    from app.views.licence_dialogs import ActivateLicenceDialog, BackupDialog

    w, h = camera.size
    window.resize(w, h)
    for name in window.PAGES:
        window.show_page(name)
        await camera.shoot(window, f"page-{name}")
    if dark:
        return

    # web-01 in detail, each tab.
    window.show_page("servers")
    window.show_server_detail("web-01")
    detail = window.details["web-01"]
    detail.resize(min(1100, w - 80), min(720, h - 80))
    await until(lambda: detail.server is not None and detail.points, "web-01's details and points")
    for index in range(detail.tabs.count()):
        detail.tabs.setCurrentIndex(index)
        await settle(1.0)  # the charts load their samples
        await camera.shoot(detail, "detail-" + detail.tabs.tabText(index).lower().replace(" ", "-"))
    detail.close()

    # The first-run wizard, each step (Next only shows the next step: nothing was changed, nothing is applied).
    wizard = window.open_setup_wizard()
    await until(lambda: wizard.isVisible(), "the wizard")
    wizard.resize(min(960, w - 80), min(680, h - 80))
    step = 1
    while True:
        await settle(1.0)
        await camera.shoot(wizard, f"wizard-{step}-{wizard.currentPage().objectName() or step}")
        if wizard.nextId() == -1:
            break
        current = wizard.currentId()
        wizard.next()
        await until(lambda c=current: wizard.currentId() != c, f"wizard step {step + 1}", timeout=30)  # type: ignore[misc]
        step += 1
    wizard.reject()

    # The main dialogs.
    dialogs: list[tuple[str, QDialog]] = [
        ("dialog-activate-licence", ActivateLicenceDialog(window.bridge, window)),
        ("dialog-backup", BackupDialog(window.bridge, window, suggested_name="godwit-demo.backup")),
    ]
    for name, dialog in dialogs:
        dialog.show()
        await camera.shoot(dialog, name)
        dialog.reject()
    window.show_page("policies")
    policies = window.policies_page
    await until(lambda: any(p.name == "demo" for p in policies.policies), "the demo policy listed")
    editor = policies.open_editor(next(p for p in policies.policies if p.name == "demo"))
    await camera.shoot(editor, "dialog-policy-edit")
    editor.reject()
    window.on_quit()
    box = window.dialog
    assert isinstance(box, QWidget)
    await camera.shoot(box, "dialog-quit")
    box.close()


async def run(data_dir: Path, out: Path) -> int:
    from PySide6.QtCore import QSettings
    from PySide6.QtWidgets import QApplication

    from app.bridge import EngineBridge
    from app.theme import apply_theme
    from app.views.main_window import LicenceNotifier, MainWindow

    qapp = QApplication.instance()
    assert isinstance(qapp, QApplication)
    qapp.setQuitOnLastWindowClosed(False)  # the tour ends the loop itself, after its last dialog closed
    apply_theme(qapp, "light")
    bridge = EngineBridge(data_dir, start_engine=False)
    window = MainWindow(bridge, offer_setup=False, notifier=LicenceNotifier(QSettings(), tray_available=lambda: False,
                                                         notify=lambda *_: None), tray_available=lambda: False)
    window.show()
    bridge.start()
    camera = Camera(out)
    try:
        await until(lambda: bridge.state == "attached" and window.servers_page.model.rowCount() >= 3,
                    "the console to list the demo's three servers")
        for size in SIZES:
            camera.size = size
            await tour(window, camera, dark=False)
        apply_theme(qapp, "dark")
        camera.out = out / "dark"
        camera.size = SIZES[0]
        await tour(window, camera, dark=True)
        apply_theme(qapp, "light")
    finally:
        window.quitting = True
        window.close()
        await bridge.aclose()
    print(f"{len(camera.saved)} screenshots in {out}")
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--demo", type=Path, default=ROOT / ".demo-screenshots", help="the demo's directory")
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "screenshots")
    parser.add_argument("--keep", action="store_true", help="leave the demo running afterwards")
    args = parser.parse_args()
    if not (os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY")):
        os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")
    os.environ["GODWIT_CONSOLE_THEME"] = "light"
    os.environ["XDG_CONFIG_HOME"] = str(args.demo.resolve() / "console-config")  # no saved geometry or columns
    demo = [PY, str(ROOT / "tools" / "demo.py"), "--dir", str(args.demo)]
    if subprocess.run([*demo, "--no-console"]).returncode != 0:
        print("screenshots: the demo did not start", file=sys.stderr)
        return 1
    data_dir = args.demo.resolve() / "appliance"
    try:
        _wait_for_history(data_dir)
        import qasync
        from PySide6.QtWidgets import QApplication

        app = QApplication.instance() or QApplication(sys.argv[:1])
        app.setOrganizationName("Godwit")
        app.setApplicationName("Godwit console")
        try:
            return qasync.run(run(data_dir, args.out.resolve()))  # type: ignore[no-any-return]
        except TourFailed as exc:
            print(f"screenshots: {exc}", file=sys.stderr)
            return 1
    finally:
        if not args.keep:
            subprocess.run([*demo, "--stop"])


def _wait_for_history(data_dir: Path, seconds: float = 40.0) -> None:
    """Give the charts a minute or so of samples: wait until web-01's hour has a few of them (or ``seconds``)."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        res = subprocess.run([PY, "-m", "engine", "vm", "history", "web-01", "--json", "--data-dir", str(data_dir)],
                             capture_output=True, text=True)
        if res.returncode == 0 and len(json.loads(res.stdout).get("samples", [])) >= 4:
            return
        time.sleep(2)


if __name__ == "__main__":
    sys.exit(main())
