"""Events the admin should know about, and the push stream that carries them to the console.

:class:`EventHub` writes each event to the state database and fans every update (events, server
changes, engine status) out to the subscribers of the admin API's ``/v1/stream``. A subscriber
that falls too far behind is dropped; its client reconnects and receives a fresh snapshot.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterator
from contextlib import contextmanager

from engine.links.admin import EventAdded, StreamMessage
from engine.records import Event, Severity
from engine.state import StateDB

log = logging.getLogger(__name__)

#: Messages a subscriber may have pending before it is dropped (and resyncs on reconnect).
SUBSCRIBER_QUEUE = 4096
_LEVEL = {"info": logging.INFO, "warning": logging.WARNING, "error": logging.ERROR}


class EventHub:
    def __init__(self, state: StateDB) -> None:
        self._state = state
        self._subscribers: set[asyncio.Queue[StreamMessage | None]] = set()

    def __repr__(self) -> str:
        return f"<EventHub subscribers={len(self._subscribers)}>"

    def record(self, severity: Severity, code: str, message: str, *, server: str | None = None) -> Event:
        """Store an event durably, log it, and push it to every subscriber."""
        event = self._state.add_event(severity, code, message, server)
        log.log(_LEVEL[severity], "event code=%s server=%s: %s", code, server, message)
        self.publish(EventAdded(event))
        return event

    def publish(self, message: StreamMessage) -> None:
        for queue in list(self._subscribers):
            try:
                queue.put_nowait(message)
            except asyncio.QueueFull:
                self._subscribers.discard(queue)
                queue.get_nowait()  # make room for the end-of-stream marker
                queue.put_nowait(None)
                log.warning("stream.dropped reason=subscriber-behind")

    def close(self) -> None:
        """End every subscriber's stream (the engine is stopping)."""
        for queue in list(self._subscribers):
            self._subscribers.discard(queue)
            while queue.full():
                queue.get_nowait()
            queue.put_nowait(None)

    @contextmanager
    def subscribe(self) -> Iterator[asyncio.Queue[StreamMessage | None]]:
        """A queue of messages; ``None`` means the subscriber fell behind and must resync."""
        queue: asyncio.Queue[StreamMessage | None] = asyncio.Queue(SUBSCRIBER_QUEUE)
        self._subscribers.add(queue)
        try:
            yield queue
        finally:
            self._subscribers.discard(queue)
