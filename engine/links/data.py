"""The data protocol: mobility service ↔ process-server (data port, mutual TLS).

``GET /v1/streams`` → :class:`StreamStates`; ``POST /v1/streams/{disk}/batches`` with a batch
body (binary, :mod:`engine.protocol`, its own magic ``GDWBAT01``) → the disk's new
:class:`StreamState`. Every request carries ``X-Godwit-Epoch`` (which enabling it belongs to) and
the ``Godwit-Protocol`` header.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from engine.links import Link

DATA = Link("data", 1, 0, "data protocol")
#: Which enabling of replication a request belongs to (a re-enabled server starts over).
EPOCH_HEADER = "X-Godwit-Epoch"


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
