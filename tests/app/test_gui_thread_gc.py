"""The console collects garbage on the GUI thread only: a Qt object freed by a collection in an executor thread
crashes the next event (a closed qasync loop with a pending timer did that to a CI run)."""

from __future__ import annotations

import gc
import threading
import time
from collections.abc import Iterator
from typing import ClassVar

import pytest
from PySide6.QtWidgets import QApplication

from app.gui_thread_gc import CHECK_MS, GuiThreadCollector


class Cycle:
    """Cyclic garbage that records the thread it was freed on."""

    freed_on: ClassVar[list[int]] = []

    def __init__(self) -> None:
        self.me = self

    def __del__(self) -> None:
        Cycle.freed_on.append(threading.get_ident())


@pytest.fixture
def automatic_gc() -> Iterator[None]:
    """As in the console before the collector starts (the test suite itself keeps automatic collection off)."""
    gc.collect()
    gc.enable()
    try:
        yield
    finally:
        gc.disable()


def allocate_in_a_thread(*, enable_gc: bool = False) -> None:
    """Enough container allocations to cross every generation's threshold many times over."""
    def churn() -> None:
        if enable_gc:
            gc.enable()
        for _ in range(200):
            junk = [[] for _ in range(2000)]
            del junk

    worker = threading.Thread(target=churn)
    worker.start()
    worker.join()


def make_garbage() -> None:
    """More cycles than the youngest generation's threshold: the next collection, wherever it runs, frees them."""
    Cycle.freed_on.clear()
    for _ in range(3 * gc.get_threshold()[0]):
        Cycle()


def test_without_the_collector_a_worker_thread_frees_the_gui_threads_garbage() -> None:
    """The hazard itself, as Python behaves: the thread that allocates collects."""
    make_garbage()  # automatic collection is off in the suite: none runs before the worker's
    try:
        allocate_in_a_thread(enable_gc=True)  # turned on in the worker, or starting it would collect here
    finally:
        gc.disable()
    assert threading.main_thread().ident not in Cycle.freed_on and Cycle.freed_on


def test_garbage_is_freed_on_the_gui_thread_not_in_a_worker_thread(qapp: QApplication, automatic_gc: None) -> None:
    """With the collector running, a worker thread's allocations collect nothing; the GUI thread's next check
    frees every cycle, and stopping gives automatic collection back."""
    collector = GuiThreadCollector(qapp)
    collector.start()
    try:
        assert not gc.isenabled()
        make_garbage()
        allocate_in_a_thread()
        assert Cycle.freed_on == []  # the worker's allocations collected nothing
        deadline = time.monotonic() + 10 * CHECK_MS / 1000
        while not Cycle.freed_on and time.monotonic() < deadline:
            qapp.processEvents()
            time.sleep(0.01)
        # The threshold was crossed, so the GUI thread's next check collected, and every cycle was freed there.
        assert len(Cycle.freed_on) == 3 * gc.get_threshold()[0]
        assert set(Cycle.freed_on) == {threading.main_thread().ident}
    finally:
        collector.stop()
    assert gc.isenabled()  # given back as it was


def test_stop_collects_what_is_left_and_keeps_collection_off_when_it_was_off(qapp: QApplication) -> None:
    """Stopping collects what is left on the GUI thread, and leaves collection off when it was off before."""
    assert not gc.isenabled()  # the suite's own setting
    collector = GuiThreadCollector(qapp)
    collector.start()
    Cycle.freed_on.clear()
    Cycle()
    collector.stop()
    assert Cycle.freed_on == [threading.main_thread().ident] and not gc.isenabled()
