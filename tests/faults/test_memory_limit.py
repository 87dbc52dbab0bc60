"""The appliance runs short of memory: one agent's address space is capped (``prlimit`` on the running
process). It fails its allocations, says so in one line, exits, and the supervisor starts a fresh one;
replication heals by itself."""

from __future__ import annotations

import subprocess
import time
from pathlib import Path

import pytest

from tests.appliance import Appliance, change_disk, fill_disk, replicating, wait_for

MiB = 1024 * 1024


def _vm_size(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmSize:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmSize")


def test_an_agent_out_of_memory_is_restarted_and_replication_heals(tmp_path_factory: pytest.TempPathFactory,
                                                                    tmp_path: Path) -> None:
    """An agent that runs out of memory says so, is restarted, and replication heals with a byte-exact point."""
    appliance = Appliance(tmp_path_factory.mktemp("memory"))
    # Large buffers mapped afresh each time (as they are once the heap is fragmented), so a cap on the
    # address space bites at the next segment instead of being absorbed by memory already mapped.
    appliance.start(env={"MALLOC_MMAP_THRESHOLD_": str(128 * 1024), "MALLOC_ARENA_MAX": "1"})
    mob, disk = replicating(appliance, "mem-01", 32 * MiB, seed=31)
    try:
        victim = appliance.agent_pid("log-processor")
        cap = _vm_size(victim)  # what it has mapped now, not a page more
        subprocess.run(["prlimit", f"--pid={victim}", f"--as={cap}"], check=True)
        fill_disk(disk, 32 * MiB, seed=32)  # every block changes: segments of several MiB to decrypt
        event = wait_for(lambda: next((e for e in appliance.events() if e["code"] == "agent-restarted"), None),
                         timeout=60, what="the log processor to run out of memory and be restarted")
        assert "log-processor exited with code 1" in event["message"], event
        assert "out of memory" in appliance.log("log-processor")
        change_disk(disk, seed=33, writes=6)
        t = time.time()
        point = appliance.point_after("mem-01", t, timeout=90)
        assert appliance.export("mem-01", point["id"], tmp_path / "p").read_bytes() == disk.read_bytes()
        assert "Traceback" not in appliance.log("log-processor")
    finally:
        mob.stop()
        appliance.stop()
