"""Where each disk's stream stands: the cache's stream states, remembered in memory between batches."""

from __future__ import annotations

from engine.errors import EpochChanged
from engine.links.data import StreamState
from engine.storage import CacheStore, StoredStream, replica


class Streams:
    """The last saved stream state of each disk, read from the cache once and saved there (durably)
    after each segment."""

    def __init__(self, cache: CacheStore) -> None:
        self._cache = cache
        self._states: dict[tuple[str, int], StreamState] = {}

    def __repr__(self) -> str:
        return f"<Streams {len(self._states)} loaded>"

    def get(self, server_id: str, disk: int, epoch: int) -> StreamState:
        """The disk's stream in this replication epoch (a fresh one if the stored state is older)."""
        key = (server_id, disk)
        if key not in self._states:
            self._states[key] = self._cache.stream_state(replica(server_id, epoch), disk) or StreamState(epoch=epoch)
        if self._states[key].epoch > epoch:  # a batch that waited while the admin enabled replication anew
            raise EpochChanged("Replication of this server was enabled anew; start over from the appliance's "
                               "stream state.")
        if self._states[key].epoch != epoch:
            self._states[key] = StreamState(epoch=epoch)
        return self._states[key]

    def save(self, server_id: str, disk: int, state: StreamState) -> None:
        """Durable when it returns (the batch may be acknowledged); raises CacheFull without room."""
        self._cache.save_stream_state(replica(server_id, state.epoch), disk, state)
        self._states[(server_id, disk)] = state

    def stored(self) -> list[StoredStream]:
        """Every stream state in the cache, e.g. to report them after a restart."""
        return self._cache.stream_states()

    def forget(self, server_id: str) -> None:
        for key in [k for k in self._states if k[0] == server_id]:
            del self._states[key]
