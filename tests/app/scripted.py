"""An admin client for bridge tests of one layer: its stream is a fixed list of messages, then the end."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator


class ScriptedClient:
    """Stands in for :class:`engine.client.AdminClient` in ``EngineBridge.client``."""

    def __init__(self, messages: list[object], *, events: list[object] | None = None) -> None:
        self.messages = messages
        self._events = events or []

    async def updates(self) -> AsyncIterator[object]:
        for message in self.messages:
            yield message
            await asyncio.sleep(0)

    async def events(self, *, limit: int) -> list[object]:
        return self._events[-limit:]

    async def aclose(self) -> None:
        pass
