"""The replicator's wait between delta cycles: a new desired state ends it, the same one does not."""

from __future__ import annotations

import ssl
import threading
import time
from pathlib import Path

from engine.links.management import PolicyTerms
from engine.mobility.replicator import Desired, Replicator


def _desired(**changes: object) -> Desired:
    terms = PolicyTerms(name="p", crash_consistent_every=60.0, app_consistent_every=None, retention=3600.0)
    values: dict[str, object] = {"data_port": 9443, "policy": terms, "max_mbps": None, "disk_sizes": [1 << 20]}
    values.update(changes)
    return Desired(**values)  # type: ignore[arg-type]


def _replicator(tmp_path: Path) -> Replicator:
    context = ssl.create_default_context()
    return Replicator(host="127.0.0.1", state_dir=tmp_path, disks=[], context=context, desired=_desired())


def _pause_ended_by(replicator: Replicator, change: Desired, seconds: float = 20.0) -> float:
    """How long a pause of ``seconds`` lasted when ``change`` was assigned 0.1 s into it."""
    timer = threading.Timer(0.1, lambda: setattr(replicator, "desired", change))
    started = time.monotonic()
    timer.start()
    replicator._pause(seconds)
    timer.join()
    return time.monotonic() - started


def test_a_resync_or_new_policy_ends_the_wait_for_the_next_cycle(tmp_path: Path) -> None:
    """A resync asked for (or new policy terms) while the replicator waits for its next cycle starts that cycle
    at once, not at the end of the policy's interval."""
    replicator = _replicator(tmp_path)
    assert _pause_ended_by(replicator, _desired(resync_gen=1)) < 15.0
    faster = PolicyTerms(name="p", crash_consistent_every=5.0, app_consistent_every=None, retention=3600.0)
    assert _pause_ended_by(replicator, _desired(resync_gen=1, policy=faster)) < 15.0


def test_the_same_desired_state_again_does_not_end_the_wait(tmp_path: Path) -> None:
    """Every heartbeat hands the replicator the desired state; when nothing changed, it keeps to its cadence."""
    replicator = _replicator(tmp_path)
    assert _pause_ended_by(replicator, _desired(), seconds=1.0) >= 1.0


def test_a_stop_ends_the_wait(tmp_path: Path) -> None:
    """Stopping the replicator ends its wait between cycles."""
    replicator = _replicator(tmp_path)
    threading.Timer(0.1, replicator.stop.set).start()
    started = time.monotonic()
    replicator._pause(30.0)
    assert time.monotonic() - started < 5.0
