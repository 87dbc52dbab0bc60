"""The commands a view runs on the event loop, each a task kept until it ends.

A view (page, dialog, wizard) starts its engine commands with :meth:`TaskOwner.start`; the owner keeps every task
referenced (asyncio keeps only weak references), shows a bug in one like an async slot's (``sys.excepthook``), and
cancels them all when the view closes.
"""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Callable, Coroutine, Iterator
from typing import Any


class TaskOwner:
    """The tasks of one view. ``on_idle`` is called when the last task ends after :meth:`cancel_all` (a closed
    dialog deletes itself then). Once closed, :meth:`start` starts nothing."""

    def __init__(self, *, on_idle: Callable[[], None] | None = None) -> None:
        self._tasks: set[asyncio.Task[Any]] = set()
        self._on_idle = on_idle
        #: Set by :meth:`cancel_all`: nothing more starts.
        self.closed = False

    def __repr__(self) -> str:
        return f"<TaskOwner running={len(self._tasks)} closed={self.closed}>"

    def __len__(self) -> int:
        return len(self._tasks)

    def __bool__(self) -> bool:
        return bool(self._tasks)

    def __iter__(self) -> Iterator[asyncio.Task[Any]]:
        return iter(list(self._tasks))

    @property
    def running(self) -> bool:
        return bool(self._tasks)

    def start(self, coro: Coroutine[Any, Any, Any]) -> asyncio.Task[Any] | None:
        """Run ``coro`` as a task kept until it ends; None (and the coroutine closed) once the owner is closed."""
        if self.closed:
            coro.close()
            return None
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._finished)
        return task

    def cancel_all(self) -> None:
        """Close: cancel every task (except the one calling, which ends by itself); ``on_idle`` follows once the
        last has ended (at once when none runs)."""
        self.closed = True
        try:
            current = asyncio.current_task()
        except RuntimeError:  # no loop runs (a test closing a view after its loop)
            current = None
        for task in list(self._tasks):
            if task is not current:
                task.cancel()
        if not self._tasks and self._on_idle is not None:
            self._on_idle()

    def _finished(self, task: asyncio.Task[Any]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:  # a bug: shown like an async slot's
            exc = task.exception()
            assert exc is not None
            sys.excepthook(type(exc), exc, exc.__traceback__)
        if self.closed and not self._tasks and self._on_idle is not None:
            self._on_idle()
