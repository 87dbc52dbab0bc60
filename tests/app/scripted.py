"""An admin client for bridge and page tests of one layer: its stream is a fixed list of messages, then (when
``keep_open``) whatever the test pushes, then the end; its agent-update commands answer from ``answers`` and are
recorded in ``calls``."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

_END = object()


class ScriptedClient:
    """Stands in for :class:`engine.client.AdminClient` in ``EngineBridge.client``.

    ``answers[name]`` is what the command ``name`` returns: a value, an exception to raise, or a list of them (one
    per call, the last one repeated). While ``gate`` is set to an unset :class:`asyncio.Event`, commands wait for it
    (a test can look at the console while a command runs).
    """

    def __init__(self, messages: list[object], *, events: list[object] | None = None, keep_open: bool = False,
                 answers: dict[str, Any] | None = None) -> None:
        self.messages = messages
        self._events = events or []
        self._keep_open = keep_open
        self._pushed: asyncio.Queue[object] = asyncio.Queue()
        self.answers: dict[str, Any] = answers or {}
        self.calls: list[tuple[str, Any]] = []
        self.gate: asyncio.Event | None = None

    def __repr__(self) -> str:
        return f"<ScriptedClient calls={[name for name, _ in self.calls]} pushed={self._pushed.qsize()}>"

    # --- the push stream --------------------------------------------------------------------------
    async def updates(self) -> AsyncIterator[object]:
        for message in self.messages:
            yield message
            await asyncio.sleep(0)
        while self._keep_open:
            message = await self._pushed.get()
            if message is _END:
                return
            yield message

    def push(self, message: object) -> None:
        """Send ``message`` on the stream (``keep_open`` clients, after the scripted messages)."""
        self._pushed.put_nowait(message)

    def end(self) -> None:
        """End the stream after what was pushed."""
        self._pushed.put_nowait(_END)

    async def events(self, *, limit: int) -> list[object]:
        return self._events[-limit:]

    async def aclose(self) -> None:
        pass

    # --- agent updates (admin 1.2) ----------------------------------------------------------------
    async def _answer(self, name: str, args: Any) -> Any:
        self.calls.append((name, args))
        if self.gate is not None:
            await self.gate.wait()
        await asyncio.sleep(0)
        answer = self.answers[name]
        if isinstance(answer, list):
            answer = answer.pop(0) if len(answer) > 1 else answer[0]
        if isinstance(answer, BaseException):
            raise answer
        return answer

    async def agent_updates(self) -> Any:
        return await self._answer("agent_updates", None)

    async def check_updates(self) -> Any:
        return await self._answer("check_updates", None)

    async def update_agents(self, names: list[str] | None = None) -> Any:
        return await self._answer("update_agents", names)

    async def rollback_agent(self, name: str) -> Any:
        return await self._answer("rollback_agent", name)

    async def set_update_mode(self, mode: str | None = None, *, window: str | None = None, now: bool = False) -> Any:
        return await self._answer("set_update_mode", {"mode": mode, "window": window, "now": now})

    async def set_update_feed(self, url: str | None) -> Any:
        return await self._answer("set_update_feed", url)
