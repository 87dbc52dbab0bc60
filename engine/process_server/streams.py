"""Where each disk's stream stands, durably: what was acknowledged, how far initial replication is."""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path

from engine.files import write_atomically
from engine.links.data import StreamState
from engine.storage import replica
from engine.storage.local import STREAM_FILE


class Streams:
    """One JSON file per disk in the cache directory, replaced atomically after each segment."""

    def __init__(self, cache_root: Path) -> None:
        self._root = cache_root
        self._states: dict[tuple[str, int], StreamState] = {}

    def __repr__(self) -> str:
        return f"<Streams {len(self._states)} loaded>"

    def _path(self, server_id: str, disk: int, epoch: int) -> Path:
        return self._root / replica(server_id, epoch) / f"disk{disk}" / STREAM_FILE

    def get(self, server_id: str, disk: int, epoch: int) -> StreamState:
        """The disk's stream in this replication epoch (a fresh one if the stored state is older)."""
        key = (server_id, disk)
        if key not in self._states:
            path = self._path(server_id, disk, epoch)
            state = StreamState(epoch=epoch)
            if path.exists():
                state = StreamState(**json.loads(path.read_text()))
            self._states[key] = state
        if self._states[key].epoch != epoch:
            self._states[key] = StreamState(epoch=epoch)
        return self._states[key]

    def save(self, server_id: str, disk: int, state: StreamState) -> None:
        path = self._path(server_id, disk, state.epoch)
        path.parent.mkdir(parents=True, exist_ok=True)
        write_atomically(path, json.dumps(asdict(state)).encode())
        self._states[(server_id, disk)] = state

    def stored(self) -> list[tuple[str, int, StreamState]]:
        """Every stream state on disk (``(server id, disk, state)``), e.g. to report them after a restart."""
        out = []
        for path in self._root.glob("*/*/disk*/stream.json"):
            try:
                state = StreamState(**json.loads(path.read_text()))
                out.append((path.parents[2].name, int(path.parent.name.removeprefix("disk")), state))
            except (OSError, ValueError, TypeError):
                continue
        return out

    def forget(self, server_id: str) -> None:
        for key in [k for k in self._states if k[0] == server_id]:
            del self._states[key]
