"""Test set-up: Qt offscreen before anything creates a QApplication; loops for async tests."""

from __future__ import annotations

import asyncio
import gc
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")
os.environ.setdefault("GODWIT_SECRET_STORE", "file")
# The console's QSettings (window geometry) must not touch the developer's own configuration.
os.environ["XDG_CONFIG_HOME"] = tempfile.mkdtemp(prefix="godwit-test-config-")

import pytest

from tests.appliance import Appliance

collect_ignore_glob: list[str] = []


def pytest_asyncio_loop_factories(config: pytest.Config, item: pytest.Item) -> dict[str, object]:
    """Console tests run on the qasync loop (like the console); engine tests on plain asyncio."""
    if item.get_closest_marker("qt_loop"):
        import qasync
        from PySide6.QtWidgets import QApplication

        return {"qt": lambda: qasync.QEventLoop(QApplication.instance() or QApplication([]))}
    return {"asyncio": asyncio.new_event_loop}


@pytest.fixture
def appliance(tmp_path_factory: pytest.TempPathFactory) -> object:
    """A real engine daemon on free loopback ports, with a fast heartbeat."""
    app = Appliance(tmp_path_factory.mktemp("appliance"))
    app.start()
    yield app
    app.stop()


@pytest.fixture
def patient_appliance(tmp_path_factory: pytest.TempPathFactory) -> object:
    """Like ``appliance``, for tests that stop an agent (SIGSTOP) on purpose to hold the data path
    still: its watchdog waits 10 minutes before it restarts an agent that does not answer."""
    app = Appliance(tmp_path_factory.mktemp("appliance"))
    app.start(env={"GODWIT_AGENT_HUNG_AFTER": "600"})
    yield app
    app.stop()


@pytest.fixture(scope="session")
def azurite(tmp_path_factory: pytest.TempPathFactory) -> Iterator[object]:
    """One Azurite per test process, its data in memory: each test uses a container of its own."""
    from tests.azurite import Azurite

    emulator = Azurite(tmp_path_factory.mktemp("azurite")).start()
    yield emulator
    emulator.stop()


@pytest.fixture
def short_tmp() -> Iterator[Path]:
    """A temporary directory with a short path, for a data directory inside a file system a test mounts: the
    engine's Unix sockets there must fit in 107 bytes, and pytest-xdist's tmp_path is long."""
    path = Path(tempfile.mkdtemp(prefix="gdw-"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


def pytest_configure(config: pytest.Config) -> None:
    """Tests collect garbage as the console does (``app/gui_thread_gc.py``): on the main thread only, here after
    each test. A collection in a test's executor thread would free the Qt objects a console test left (a closed qasync
    loop with a pending timer, freed that way, crashed a worker in CI on the next event)."""
    gc.disable()


def _uses_qt(item: pytest.Item) -> bool:
    return item.get_closest_marker("qt_loop") is not None or bool({"qapp", "qtbot"} & set(getattr(item,
                                                                                                "fixturenames", ())))


@pytest.hookimpl(wrapper=True)
def pytest_runtest_teardown(item: pytest.Item, nextitem: pytest.Item | None) -> object:
    """After a test and all its fixtures: the windows a console test left are deleted, on the GUI thread, and the
    garbage collected; what survives is frozen, so the next collection only looks at what the next test made (a
    full collection of a worker's heap takes about 0.1 s, twice per test was over a minute of a run)."""
    try:
        return (yield)
    finally:
        if _uses_qt(item):
            from PySide6.QtCore import QEvent
            from PySide6.QtWidgets import QApplication

            if QApplication.instance() is not None:
                for window in QApplication.topLevelWidgets():
                    if window.parent() is None:
                        window.deleteLater()
                QApplication.sendPostedEvents(None, QEvent.Type.DeferredDelete)
        gc.collect()
        gc.freeze()


def pytest_assertrepr_compare(op: str, left: object, right: object) -> list[str] | None:
    """Two disk images that differ: say where, in one line (pytest's own diff of megabytes takes minutes)."""
    if op != "==" or not isinstance(left, bytes | bytearray) or not isinstance(right, bytes | bytearray):
        return None
    if max(len(left), len(right)) <= 4096:
        return None
    block = 64 * 1024
    blocks = [i for i in range(0, max(len(left), len(right)), block) if left[i:i + block] != right[i:i + block]]
    start = blocks[0] if blocks else 0
    first = start + next((i for i, (a, b) in enumerate(zip(left[start:start + block], right[start:start + block],
                                                              strict=False)) if a != b),
                         min(len(left), len(right)) - start)
    return [f"{len(left)} bytes == {len(right)} bytes",
            f"they first differ at offset {first} (64 KiB block {first // block}); {len(blocks)} blocks of 64 KiB "
            "differ"]
