"""Log set-up for the engine's entry points (daemon, agents, CLI, mobility service).

Two things keep a log useful when something goes wrong over and over:

- Repeated lines are rate-limited (:class:`RateLimiter`): of the records with the same message
  (template and arguments) from the same logger at the same level, at most :data:`BURST` within
  :data:`WINDOW` seconds are written; the rest are counted, and one line says how many were
  suppressed once the window is over. The arguments are part of what makes a repeat: a refusal of
  another request, or another error, is news and gets its own line (invariant 4: one warning line
  per bad request), while the same error every 0.1 s is not.
- A log file on a full disk (:class:`LogFile`) drops records instead of printing Python's
  "--- Logging error ---" and a traceback to stderr for each; it writes again, with one line
  saying how many records were lost, as soon as there is room.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import logging.handlers
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TextIO

FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
#: Seconds over which repeats of one message are counted, and how many are written in one.
WINDOW = 60.0
BURST = 5
#: Distinct messages tracked at most; beyond, those never repeated are forgotten first.
MAX_TRACKED = 4096
#: errno values of a write that failed for want of room (ENOSPC; EDQUOT for a user over quota).
_NO_SPACE = (errno.ENOSPC, errno.EDQUOT)


@dataclass
class _Repeats:
    started: float
    name: str
    level: int
    message: str
    written: int = 0
    suppressed: int = 0


class RateLimiter:
    """Decides which records a handler writes. Thread-safe (the mobility service logs from threads)."""

    def __init__(self, *, window: float = WINDOW, burst: int = BURST,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.window = window
        self.burst = burst
        self._clock = clock
        self._seen: dict[tuple[str, int, str, str], _Repeats] = {}
        self._next_sweep = 0.0
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        with self._lock:
            suppressed = sum(r.suppressed for r in self._seen.values())
        return f"<RateLimiter tracked={len(self._seen)} suppressed={suppressed}>"

    def admit(self, record: logging.LogRecord) -> list[logging.LogRecord]:
        """The records to write for ``record``: itself unless suppressed, after a summary line for
        every message whose window ended with lines suppressed."""
        now = self._clock()
        out: list[logging.LogRecord] = []
        try:
            message = record.getMessage()
        except Exception:  # arguments that do not fit the template: the handler reports that itself
            message = str(record.msg)
        key = (record.name, record.levelno, str(record.msg), message)
        with self._lock:
            if now >= self._next_sweep:  # at most once a second: windows that ended
                self._next_sweep = now + 1.0
                for k, r in list(self._seen.items()):
                    if now - r.started >= self.window:
                        del self._seen[k]
                        if r.suppressed:
                            out.append(self._summary(r))
            if len(self._seen) >= MAX_TRACKED:
                for k in [k for k, r in self._seen.items() if not r.suppressed]:
                    del self._seen[k]
            repeats = self._seen.get(key)
            if repeats is None or now - repeats.started >= self.window:
                if repeats is not None and repeats.suppressed:
                    out.append(self._summary(repeats))
                repeats = self._seen[key] = _Repeats(started=now, name=record.name, level=record.levelno,
                                                     message=message)
            if repeats.written < self.burst:
                repeats.written += 1
                out.append(record)
            else:
                repeats.suppressed += 1
        return out

    def _summary(self, r: _Repeats) -> logging.LogRecord:
        return logging.LogRecord(r.name, r.level, __file__, 0, "%d more of this line were suppressed in %.0f s: %s",
                                 (r.suppressed, self.window, r.message[:300]), None)


class LogFile(logging.handlers.RotatingFileHandler):
    """A rotating log file that rate-limits repeats and survives a full disk (see the module's doc)."""

    def __init__(self, path: Path, *, limiter: RateLimiter | None = None) -> None:
        super().__init__(path, maxBytes=5 * 1024 * 1024, backupCount=3)
        self.limiter = limiter or RateLimiter()
        self.dropped = 0
        self._failed = False

    def __repr__(self) -> str:
        return f"<LogFile {self.baseFilename} dropped={self.dropped}>"

    def handle(self, record: logging.LogRecord) -> bool:
        if not self.filter(record):
            return False
        for r in self.limiter.admit(record):
            self.acquire()
            try:
                self._write(r)
            finally:
                self.release()
        return True

    def _write(self, record: logging.LogRecord) -> None:
        if self.dropped:
            note = logging.LogRecord("engine.logs", logging.WARNING, __file__, 0,
                                     "%d log records were dropped: the disk was full", (self.dropped,), None)
            if not self._emit(note):
                self.dropped += 1
                return
            self.dropped = 0
        if not self._emit(record):
            self.dropped += 1

    def _emit(self, record: logging.LogRecord) -> bool:
        self._failed = False
        self.emit(record)
        return not self._failed

    def handleError(self, record: logging.LogRecord) -> None:
        exc = sys.exc_info()[1]
        if isinstance(exc, OSError) and exc.errno in _NO_SPACE:
            self._failed = True
            stream, self.stream = self.stream, None
            if stream is not None:
                with contextlib.suppress(OSError):
                    stream.close()  # its buffer cannot be written either: dropped with the record
            return
        super().handleError(record)


class RateLimitedStream(logging.StreamHandler):  # type: ignore[type-arg]
    """A stream handler (stderr) that rate-limits repeats."""

    def __init__(self, stream: TextIO | None = None, *, limiter: RateLimiter | None = None) -> None:
        super().__init__(stream)
        self.limiter = limiter or RateLimiter()

    def handle(self, record: logging.LogRecord) -> bool:
        if not self.filter(record):
            return False
        for r in self.limiter.admit(record):
            super().handle(r)
        return True


def to_file(path: Path, *, level: int = logging.INFO) -> None:
    """Rotating log file (5 MiB x 4). Called once, by the entry point of a process."""
    path.parent.mkdir(parents=True, exist_ok=True)
    handler = LogFile(path)
    handler.setFormatter(logging.Formatter(FORMAT))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)


def to_stderr(*, level: int = logging.WARNING) -> None:
    handler = RateLimitedStream(sys.stderr)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s", "%H:%M:%S"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
