"""An appliance agent that stops responding (SIGSTOP: as a wedged or swapped-out process looks) is
killed and restarted by the supervisor, the admin is told, and replication heals by itself."""

from __future__ import annotations

import contextlib
import os
import signal
import time
from pathlib import Path

import pytest

from engine.supervisor import HUNG_AFTER
from tests.appliance import Appliance, change_disk, replicating, wait_for

MiB = 1024 * 1024


@pytest.mark.parametrize("agent", ["replication-manager", "process-server", "log-processor"])
def test_a_stopped_agent_is_restarted_and_replication_heals(appliance: Appliance, tmp_path: Path,
                                                            agent: str) -> None:
    """An appliance agent that stops responding is killed and restarted, the admin is told, replication heals."""
    mob, disk = replicating(appliance, "stall-01", 4 * MiB, seed=21)
    try:
        victim = appliance.agent_pid(agent)
        os.kill(victim, signal.SIGSTOP)
        change_disk(disk, seed=22, writes=6)  # the source goes on writing while the agent is stuck
        try:
            event = wait_for(lambda: next((e for e in appliance.events() if e["code"] == "agent-restarted"), None),
                             timeout=HUNG_AFTER + 30, what=f"{agent} to be found unresponsive")
        finally:
            with contextlib.suppress(ProcessLookupError):
                os.kill(victim, signal.SIGCONT)  # a no-op once it was killed
        assert f"{agent} stopped responding for {HUNG_AFTER:.0f} s and was killed" in event["message"], event
        assert appliance.agent_pid(agent) != victim
        change_disk(disk, seed=23, writes=6)
        t = time.time()
        point = appliance.point_after("stall-01", t, timeout=60)
        assert appliance.export("stall-01", point["id"], tmp_path / "p").read_bytes() == disk.read_bytes()
        assert wait_for(lambda: appliance.servers()["stall-01"]["health"] == "healthy", timeout=30,
                        what="health to be healthy again")
        assert mob.proc is not None and mob.proc.poll() is None, "the mobility service gave up"
    finally:
        mob.stop()
