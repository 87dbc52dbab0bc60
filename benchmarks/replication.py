"""Replication end to end through real processes and TLS (PERFORMANCE.md targets).

Generates a disk (default 2 GiB: about half sparse; text-like, binary-like and incompressible
parts), registers a real mobility service with a real engine, enables replication and measures:

- initial replication: source MB/s until the last batch is durable in the cache, and until applied
  (first recovery point);
- a delta cycle after 1 % churn in random 4 KiB-1 MiB writes: cycle start to recovery point, and
  change to recovery point; bytes sent for it;
- peak RSS of each process.

``--target azure`` replicates into Azurite on loopback (started here, its data in memory) instead of the
appliance's own disk: the same figures, for the azure target.

    .venv/bin/python benchmarks/replication.py --size-gib 2 --runs 3 [--target azure]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from engine.client import AdminClient  # noqa: E402
from engine.config import DataDir  # noqa: E402
from tests.appliance import free_port  # noqa: E402
from tests.azurite import Azurite  # noqa: E402

MiB = 1024 * 1024


def make_disk(path: Path, size: int, seed: int) -> None:
    rng = random.Random(seed)
    words = b"replication appliance segment kernel nginx GET /api 200 OK user session commit".split()
    line = b" ".join(rng.choice(words) for _ in range(10)) + b"\n"
    text = (line * (MiB // len(line) + 1))[:MiB]
    binary = bytes(rng.getrandbits(8) if i % 16 < 5 else 0 for i in range(64 * 1024)) * 16
    with open(path, "wb") as f:
        f.truncate(size)
        pos = 0
        while pos < size:
            chunk = min(size - pos, 8 * MiB)
            f.seek(pos)
            for _ in range(chunk // MiB // 2):  # write the first half of each 8 MiB, leave the rest a hole
                kind = rng.random()
                f.write(text if kind < 0.34 else binary if kind < 0.67 else os.urandom(MiB))
            pos += chunk


def churn(path: Path, fraction: float, seed: int) -> int:
    rng = random.Random(seed)
    size = path.stat().st_size
    target, written = int(size * fraction), 0
    with open(path, "r+b") as f:
        while written < target:
            n = rng.randint(1, 256) * 4096
            f.seek(rng.randrange(0, size - n) // 4096 * 4096)
            f.write(os.urandom(n))
            written += n
    return written


def peak_rss(pid: int) -> int:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def cpu_seconds(pid: int) -> float:
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def received(data_dir: Path) -> int:
    return sum(json.loads(p.read_text())["bytes_received"] for p in (data_dir / "cache").rglob("stream.json"))


async def one_run(size: int, seed: int, work: Path, azurite: Azurite | None) -> dict[str, float]:
    data_dir = work / "appliance"
    env = {**os.environ, "GODWIT_SECRET_STORE": "file"}
    g = [sys.executable, "-m", "engine"]
    subprocess.run([*g, "serve", "--background", "--data-dir", str(data_dir), "--management-port", str(free_port()),
                    "--data-port", str(free_port()), "--heartbeat-interval", "0.5"], env=env, check=True,
                   capture_output=True)
    client = AdminClient(DataDir(data_dir))
    disk = work / "disk.img"
    make_disk(disk, size, seed)
    subprocess.run(["sync"], check=True)
    setup = await client.setup()
    (work / "pp").write_text(setup.passphrase)
    mob = subprocess.Popen([*g, "mobility", "run", "--appliance", f"127.0.0.1:{setup.management_port}",
                            "--passphrase-file", str(work / "pp"), "--ca-fingerprint", setup.ca_fingerprint,
                            "--state-dir", str(work / "state"), "--disk", str(disk), "--name", "bench"],
                           env=env, stderr=subprocess.DEVNULL)
    try:
        while not [s for s in await client.servers() if s.name == "bench"]:
            await asyncio.sleep(0.05)
        if azurite is not None:
            await client.set_target("azure", account_url=azurite.account_url, container=f"bench-{seed}",
                                    credential=azurite.connection_string)
        await client.create_policy(name="bench", rpo_threshold="1m", retention="1h", crash_consistent_every="1s",
                                   app_consistent_every="off")
        engine = await client.engine_status()
        pids = {a.name: a.pid for a in engine.agents if a.pid}
        pids["mobility"] = mob.pid
        cpu0 = {k: cpu_seconds(p) for k, p in pids.items()}
        await client.enable("bench", "bench")
        t0 = time.monotonic()
        t_cached = t_applied = None
        while t_applied is None:
            s = await client.server("bench")
            if t_cached is None and s.disks[0].bytes_done == s.disks[0].bytes_total and s.state != "registered":
                t_cached = time.monotonic()
            if s.state == "protected":
                t_applied = time.monotonic()
            await asyncio.sleep(0.02)
        assert t_cached is not None
        cpu = {k: cpu_seconds(p) - cpu0[k] for k, p in pids.items()}
        await asyncio.sleep(2.5)  # let an idle cycle or two pass
        before = received(data_dir)
        changed = churn(disk, 0.01, seed + 1)
        t_change = time.time()  # every write is done: the next cycle must carry all of them
        while True:
            points = [p for p in await client.points("bench") if p.id / 1000 > t_change]
            if points:
                break
            await asyncio.sleep(0.01)
        point = points[0]
        sent = received(data_dir) - before
        engine = await client.engine_status()
        rss = {a.name: peak_rss(a.pid) for a in engine.agents if a.pid}
        rss["mobility"] = peak_rss(mob.pid)
        rss["supervisor"] = peak_rss(engine.pid)
        return {"initial_cached_mbps": size / (t_cached - t0) / 1e6,
                "initial_applied_mbps": size / (t_applied - t0) / 1e6,
                "delta_cycle_s": point.created_at - point.id / 1000, "change_to_point_s": point.created_at - t_change,
                "changed_mb": changed / 1e6, "sent_mb": sent / 1e6,
                **{f"rss_{k}_mb": v / 1e6 for k, v in rss.items()},
                **{f"initial_cpu_{k}_s": v for k, v in cpu.items()}}
    finally:
        mob.terminate()
        mob.wait(30)
        await client.aclose()
        pid = int((data_dir / "engine.lock").read_text())
        os.kill(pid, 15)
        while (data_dir / "admin.sock").exists():
            time.sleep(0.05)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size-gib", type=float, default=2.0)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--work", type=Path, default=None, help="scratch directory (default: a temporary one)")
    parser.add_argument("--target", choices=["local", "azure"], default="local",
                        help="where seed disks go (azure: Azurite on loopback, started here)")
    args = parser.parse_args()
    size = int(args.size_gib * 1024 * MiB) // MiB * MiB
    results = []
    for i in range(args.runs):
        with tempfile.TemporaryDirectory(prefix="godwit-bench-", dir=args.work) as tmp:
            azurite = Azurite(Path(tmp) / "azurite").start() if args.target == "azure" else None
            try:
                r = asyncio.run(one_run(size, 100 + i, Path(tmp), azurite))
            finally:
                if azurite is not None:
                    azurite.stop()
        results.append(r)
        print(f"run {i + 1}: " + "  ".join(f"{k}={v:.2f}" for k, v in r.items()), flush=True)
    print(f"\nmedian of {args.runs} runs, {args.size_gib:g} GiB disk, target {args.target}")
    print("| figure | value |\n|---|---|")
    for key in results[0]:
        print(f"| {key} | {statistics.median(r[key] for r in results):.2f} |")


if __name__ == "__main__":
    main()
