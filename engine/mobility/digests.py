"""What the appliance holds of a source disk, as one 16-byte xxh3 digest per 64 KiB block.

A block read is sent only if its digest differs from the one here. The file ``disk<N>.digests`` in
the tracking directory holds the digests the appliance acknowledged, updated only after it did, so
after any crash a block is sent again rather than lost.
"""

from __future__ import annotations

import os
import threading
from pathlib import Path

from engine.protocol import BLOCK, digest

DIGEST = 16
ZERO_DIGEST = digest(bytes(BLOCK))
UNKNOWN_DIGEST = b"\xff" * DIGEST  # matches no block's digest


class Tracker:
    """The block digests of one source disk: as the appliance acknowledged them (on disk), and as it
    will have them once the batches in flight land (what a new read is compared with: a block that
    went A -> B -> A while B was in flight must be sent again)."""

    def __init__(self, path: Path, size: int) -> None:
        self.path = path
        self.blocks = -(-size // BLOCK)
        #: True when no usable tracking was found (first start, or lost with a power cut).
        self.fresh = not (path.exists() and path.stat().st_size == self.blocks * DIGEST)
        if not self.fresh:
            self.digests = bytearray(path.read_bytes())
        else:
            self.digests = bytearray(ZERO_DIGEST * self.blocks)  # the seed disk starts as zeros
            path.write_bytes(self.digests)
        self._fd = os.open(path, os.O_RDWR)
        self._in_flight: dict[int, tuple[bytes, int]] = {}  # block -> (digest, batch token)
        self._tokens = 0
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        return f"<Tracker {self.path.name} blocks={self.blocks} in_flight={len(self._in_flight)}>"

    def close(self) -> None:
        os.close(self._fd)

    def get(self, block: int) -> bytes:
        flying = self._in_flight.get(block)
        return flying[0] if flying else bytes(self.digests[block * DIGEST:(block + 1) * DIGEST])

    def was_data(self, block: int) -> bool:
        """Whether the appliance holds (or will hold) anything but zeros in this block: a block that is
        a hole now but was not is sent as zeros."""
        return self.get(block) != ZERO_DIGEST

    def reset(self) -> None:
        """The appliance holds nothing of this disk (a new seed disk: zeros): every block with data is sent."""
        with self._lock:
            self._in_flight.clear()
            self.digests[:] = ZERO_DIGEST * self.blocks
            os.pwrite(self._fd, self.digests, 0)

    def forget(self) -> None:
        """Assume nothing about the appliance's copy: every block counts as changed (a resync)."""
        with self._lock:
            self._in_flight.clear()
            self.digests[:] = UNKNOWN_DIGEST * self.blocks
            os.pwrite(self._fd, self.digests, 0)

    def sending(self, updates: dict[int, bytes]) -> int:
        """These blocks are queued to be sent with these digests; returns the batch's token for :meth:`commit`."""
        with self._lock:
            self._tokens += 1
            for block, dig in updates.items():
                self._in_flight[block] = (dig, self._tokens)
            return self._tokens

    def commit(self, updates: dict[int, bytes], token: int) -> None:
        """Record acknowledged blocks (no fsync needed: a lost update only means sending again)."""
        with self._lock:
            for block, dig in updates.items():
                self.digests[block * DIGEST:(block + 1) * DIGEST] = dig
                os.pwrite(self._fd, dig, block * DIGEST)
                flying = self._in_flight.get(block)
                if flying is not None and flying[1] == token:  # else a later batch is in flight for it
                    del self._in_flight[block]
