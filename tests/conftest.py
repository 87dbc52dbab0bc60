"""Test set-up: Qt offscreen before anything creates a QApplication; loops for async tests."""

from __future__ import annotations

import asyncio
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


@pytest.fixture
def short_tmp() -> Iterator[Path]:
    """A temporary directory with a short path, for a data directory inside a file system a test mounts: the
    engine's Unix sockets there must fit in 107 bytes, and pytest-xdist's tmp_path is long."""
    path = Path(tempfile.mkdtemp(prefix="gdw-"))
    yield path
    shutil.rmtree(path, ignore_errors=True)

