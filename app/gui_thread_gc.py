"""Python's cycle collector, run on the GUI thread only.

Python collects reference cycles in whichever thread happens to allocate when a generation's threshold is crossed; in
the console that can be an executor thread (the one that starts the engine, for example). A Qt object freed there is
destroyed in the wrong thread: Qt prints "Timers cannot be stopped from another thread", its timers stay registered
with the GUI thread's event dispatcher, and the next timer event crashes the process. A closed qasync loop holding a
pending timer did exactly that to the test suite.

So while the console runs, automatic collection is off and :class:`GuiThreadCollector` collects on the GUI thread,
each generation once its threshold is crossed, as the automatic collector would have.
"""

from __future__ import annotations

import gc

from PySide6.QtCore import QObject, QTimer

#: How often the thresholds are looked at. Collection stays as frequent as Python's own for any allocation rate the
#: console has (thousands of objects a second at most).
CHECK_MS = 500


def collect_due() -> int:
    """Collect the oldest generation whose threshold is crossed (as ``gc`` would); the number of objects found
    unreachable (0 when none was due)."""
    counts = gc.get_count()
    thresholds = gc.get_threshold()
    for generation in (2, 1, 0):
        if thresholds[generation] and counts[generation] > thresholds[generation]:
            return gc.collect(generation)
    return 0


class GuiThreadCollector(QObject):
    """Turns automatic collection off while it runs (:meth:`start` … :meth:`stop`) and collects on its own
    thread, the GUI thread, instead."""

    def __init__(self, parent: QObject | None = None) -> None:
        super().__init__(parent)
        self._was_enabled = gc.isenabled()
        self._timer = QTimer(self, interval=CHECK_MS)
        self._timer.timeout.connect(collect_due)

    def start(self) -> None:
        self._was_enabled = gc.isenabled()
        gc.disable()
        self._timer.start()

    def stop(self) -> None:
        """Collect what is left, here, and give collection back to Python as it was."""
        self._timer.stop()
        gc.collect()
        if self._was_enabled:
            gc.enable()
