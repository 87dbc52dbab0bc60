"""Guards against a Qt binding that corrupts the interpreter.

PySide6 6.12.0 under Python 3.11 drops a reference to ``True`` on every ``Signal.emit()``; after a
few hundred emits the interpreter aborts ("bool_dealloc: deallocating True or False"), which took the
console down within seconds of live updates. This pins the behaviour we depend on.
"""

from __future__ import annotations

import sys

from PySide6.QtCore import QObject, Signal


class _Emitter(QObject):
    fired = Signal(object)


def test_signal_emit_keeps_reference_counts(qapp: object) -> None:
    """300 emits leave the reference counts of True, False and None where they were (PySide6 6.12.0 broke this)."""
    emitter = _Emitter()
    seen: list[object] = []
    emitter.fired.connect(seen.append)
    before = sys.getrefcount(True), sys.getrefcount(False), sys.getrefcount(None)
    for i in range(300):
        emitter.fired.emit(i)
    after = sys.getrefcount(True), sys.getrefcount(False), sys.getrefcount(None)
    assert len(seen) == 300
    # Allow for a few references the test itself creates; a leak per emit would show as ~300.
    assert all(abs(a - b) < 20 for a, b in zip(after, before, strict=True)), (before, after)
