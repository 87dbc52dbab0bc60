"""What change tracking and consistent points cost on the source (PERFORMANCE.md and issue targets).

Real loop devices (root), a real engine and a real mobility service:

- idle: a tracked 16 GiB device nobody writes to, for ``--idle-seconds``: bytes read from it and the
  mobility service's CPU (heartbeats every 5 s, cycles every 5 s, a point every 10 s);
- a 1 % change of that device (random 4 KiB-1 MiB writes): bytes read from the device until the
  next point, against the bytes written;
- freeze per point under a steady write load: ext4 on a 1 GiB device, a writer doing fsync'd
  4 KiB-256 KiB writes without pause, a point every 2 s; median, 99th percentile and maximum of the
  time writers were held up, and how many points were deferred or not crash-consistent.

    sudo .venv/bin/python benchmarks/consistency.py --size-gib 16 --idle-seconds 60 --points 60
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.appliance import Appliance, Mobility, wait_for  # noqa: E402
from tests.source_disks import MiB, change_device, filesystem_on_loop, loop_device, sectors_read  # noqa: E402


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def policy(app: Appliance, name: str, every: str) -> None:
    res = app.cli("policy", "create", name, "--crash-consistent-every", every, "--retention", "1h",
                  "--app-consistent-every", "off")
    assert res.returncode == 0, res.stderr


def enable(app: Appliance, mob: Mobility, policy_name: str) -> None:
    mob.start()
    wait_for(lambda: app.servers().get(mob.name), what="registration")
    res = app.cli("vm", "enable", mob.name, "--policy", policy_name)
    assert res.returncode == 0, res.stderr
    wait_for(lambda: app.servers()[mob.name]["state"] == "protected", timeout=3600, what="initial replication")


def idle_and_change(app: Appliance, root: Path, size: int, idle_seconds: float) -> None:
    with loop_device(root / "big.img", size) as device:
        mob = Mobility(app, "big-01", disks=[Path(device)])
        began = time.monotonic()
        enable(app, mob, "every10s")
        print(f"initial replication of a {size / 2**30:.0f} GiB sparse device: {time.monotonic() - began:.1f} s")
        assert mob.proc is not None
        try:
            app.point_after("big-01", time.time(), timeout=120)
            read0, cpu0, t0 = sectors_read(device), cpu_seconds(mob.proc.pid), time.monotonic()
            time.sleep(idle_seconds)
            elapsed = time.monotonic() - t0
            idle_read = (sectors_read(device) - read0) * 512
            idle_cpu = (cpu_seconds(mob.proc.pid) - cpu0) / elapsed
            print(f"idle {elapsed:.0f} s: read {idle_read} bytes from the disk; mobility CPU {idle_cpu:.2%} of a core")

            changed = change_device(device, 0.01, seed=3)
            before = sectors_read(device)
            t = time.time()
            app.point_after("big-01", t, timeout=300)
            read = (sectors_read(device) - before) * 512
            print(f"1 % change: {changed / 1e6:.1f} MB written, {read / 1e6:.1f} MB read until the next point "
                  f"({read / changed:.2f}x)")
        finally:
            mob.stop()


def freezes_under_load(app: Appliance, root: Path, points: int) -> None:
    with filesystem_on_loop(root, "busy", size=1024 * MiB) as (device, mnt):
        mob = Mobility(app, "busy-01", disks=[Path(device)])
        enable(app, mob, "every2s")
        writer = subprocess.Popen([sys.executable, "-c", _STEADY_WRITER, str(mnt / "data.bin")])
        try:
            t = time.time()
            wait_for(lambda: len([p for p in app.points("busy-01") if p["id"] / 1000 > t]) >= points,
                     timeout=points * 20, what=f"{points} points under load")
            kinds = [p["kind"] for p in app.points("busy-01") if p["id"] / 1000 > t]
        finally:
            writer.terminate()
            writer.wait()
            mob.stop()
        frozen = sorted(float(line.split("frozen_ms=")[1].split()[0])
                        for line in mob.output.splitlines() if "frozen_ms=" in line)
        deferred = mob.output.count("point.deferred")
        p99 = frozen[min(len(frozen) - 1, int(len(frozen) * 0.99))]
        print(f"freeze under steady fsync'd writes ({len(frozen)} windows, {len(kinds)} points): median "
              f"{statistics.median(frozen):.1f} ms, p99 {p99:.1f} ms, max {frozen[-1]:.1f} ms; "
              f"deferred {deferred}; kinds {sorted(set(kinds))}")


_STEADY_WRITER = """
import os, random, sys
rng = random.Random(5)
fd = os.open(sys.argv[1], os.O_RDWR | os.O_CREAT, 0o644)
os.ftruncate(fd, 512 * 1024 * 1024)
while True:
    n = rng.randint(1, 64) * 4096
    os.pwrite(fd, rng.randbytes(n), rng.randrange(0, 512 * 1024 * 1024 - n) // 4096 * 4096)
    os.fsync(fd)
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--size-gib", type=int, default=16)
    parser.add_argument("--idle-seconds", type=float, default=60)
    parser.add_argument("--points", type=int, default=60, help="points to time under load (0: skip)")
    args = parser.parse_args()
    if os.geteuid() != 0:
        sys.exit("benchmarks/consistency.py needs root (loop devices, block-layer tracing, freezing)")
    with tempfile.TemporaryDirectory(prefix="godwit-bench-consistency-") as tmp:
        app = Appliance(Path(tmp))
        app.start("--heartbeat-interval", "5")
        try:
            policy(app, "every10s", "10s")
            policy(app, "every2s", "2s")
            idle_and_change(app, Path(tmp), args.size_gib * 1024 * MiB, args.idle_seconds)
            if args.points:
                freezes_under_load(app, Path(tmp), args.points)
        finally:
            app.stop()


if __name__ == "__main__":
    main()
