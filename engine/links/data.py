"""The data protocol: mobility service ↔ process-server (data port, mutual TLS).

``GET /v1/streams`` → :class:`StreamStates`; ``POST /v1/streams/{disk}/batches`` with a batch
body (binary, :mod:`engine.protocol`, its own magic ``GDWBAT01``) → the disk's new
:class:`StreamState`. Every request carries ``X-Godwit-Epoch`` (which enabling it belongs to) and
the ``Godwit-Protocol`` header.

1.1: a batch that carries ``X-Godwit-Sender`` (one random name per run of a sender) may be sent before
the batches before it are acknowledged, on other connections, up to :data:`MAX_AHEAD` ahead: the
process server checks and seals them side by side and makes them durable, and acknowledges them, in
order. A batch without the header must be the next one, as in 1.0.

1.2: a run may come packed (flag PACKED, :mod:`engine.protocol`): one zstd frame instead of its bytes, which
the process server unpacks to check the digest and stores as it came. A sender packs only for an appliance
that answered 1.2 or later.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from engine.links import Link

DATA = Link("data", 1, 2, "data protocol")
#: Which enabling of replication a request belongs to (a re-enabled server starts over).
EPOCH_HEADER = "X-Godwit-Epoch"
#: Which run of a sender a batch comes from (1.1): only its own batches follow one another in flight.
SENDER_HEADER = "X-Godwit-Sender"
#: How far ahead of the last acknowledged batch a sender's batches may be (1.1).
MAX_AHEAD = 8


@dataclass(frozen=True)
class StreamState:
    """Where a disk's stream stands on the appliance, durably: what was acknowledged and how far
    initial replication is."""

    epoch: int = 0
    acked_seq: int = 0
    initial_done: int = 0
    initial_complete: bool = False
    bytes_received: int = 0


@dataclass(frozen=True)
class DiskStream:
    """A disk's stream state (its fields beside ``disk`` on the wire)."""

    FLATTENED: ClassVar = ("state",)

    disk: int
    state: StreamState


@dataclass(frozen=True)
class StreamStates:
    """Every disk's stream state, so that a (re)starting source resumes where the appliance stands."""

    disks: tuple[DiskStream, ...] = ()
