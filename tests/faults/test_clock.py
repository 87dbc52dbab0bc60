"""The appliance's clock jumps forward and back (libfaketime on the engine's processes only; the
machine's clock is never touched): no recovery point is pruned early, the admin is told, it heals."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import pytest

from tests.appliance import Appliance, change_disk, fake_clock, replicating, wait_for

MiB = 1024 * 1024


@pytest.fixture
def skewed(tmp_path_factory: pytest.TempPathFactory) -> object:
    """An engine whose wall clock is the machine's plus the offset written to ``clock_offset`` (a
    libfaketime offset such as ``+2h``), re-read at every call; monotonic time is left alone, as a
    real clock step leaves it."""
    app = Appliance(tmp_path_factory.mktemp("clock"))
    offset = app.root / "clock_offset"
    app.start(env=fake_clock(offset))
    yield app, offset
    app.stop()


def test_clock_jumps_never_prune_points_early_and_heal(skewed: tuple[Appliance, Path], tmp_path: Path) -> None:
    """Jumps of the appliance's clock prune no point early, show as clock skew, and heal once it is right."""
    app, offset = skewed
    # Retention 1 h: a jump of 2 h forward would make every point look expired.
    mob, disk = replicating(app, "clock-01", 4 * MiB, seed=3)
    try:
        change_disk(disk, seed=4, writes=4)
        app.point_after("clock-01", time.time())
        before = [p["id"] for p in app.points("clock-01")]
        assert len(before) >= 2

        offset.write_text("+2h\n")
        change_disk(disk, seed=5, writes=4)
        t = time.time()
        app.point_after("clock-01", t)
        ids = [p["id"] for p in app.points("clock-01")]
        assert set(before) <= set(ids), "points were pruned because the clock jumped forward"
        server = _skew_reported(app, "behind")
        assert server["rpo_seconds"] < 600, server  # reckoned with the difference taken out, not 2 h
        # A log processor started after the jump keeps the steady clock of this boot.
        os.kill(app.agent_pid("log-processor"), signal.SIGKILL)
        wait_for(lambda: any(e["code"] == "agent-restarted" for e in app.events()), what="the restart")
        change_disk(disk, seed=51, writes=4)
        t = time.time()
        app.point_after("clock-01", t)
        assert set(before) <= {p["id"] for p in app.points("clock-01")}, "pruned after a restart"

        offset.write_text("-2h\n")
        change_disk(disk, seed=6, writes=4)
        t = time.time()
        app.point_after("clock-01", t)
        assert set(before) <= {p["id"] for p in app.points("clock-01")}
        _skew_reported(app, "ahead of")

        offset.write_text("+0\n")  # the admin fixes the clock: it heals by itself
        change_disk(disk, seed=7, writes=4)
        t = time.time()
        last = app.point_after("clock-01", t)
        server = wait_for(lambda: (s := app.servers()["clock-01"])["health"] == "healthy" and s, timeout=30,
                          what="health to be healthy again")
        assert server["state"] == "protected"
        assert app.export("clock-01", last["id"], tmp_path / "p").read_bytes() == disk.read_bytes()
        assert app.export("clock-01", before[0], tmp_path / "old").exists()
        for log in (app.data_dir / "logs").glob("*.log"):
            assert "Traceback" not in log.read_text(errors="replace"), log.name
    finally:
        mob.stop()


def _skew_reported(app: Appliance, how: str) -> dict[str, object]:
    server = wait_for(lambda: (s := app.servers()["clock-01"])["health_cause"] == "clock-skew" and
                      f"is 2.0 h {how} the appliance's" in str(s["health_detail"]) and s,
                      what=f"the source's clock to be reported {how} the appliance's")
    assert server["health"] == "warning" and server["state"] == "protected", server
    return server  # type: ignore[no-any-return]
