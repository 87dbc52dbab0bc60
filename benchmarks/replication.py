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
import contextlib
import json
import os
import random
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
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


def churn_ranges(size: int, fraction: float, seed: int) -> list[tuple[int, int]]:
    """Where :func:`churn` writes, as ``(offset, length)``: random 4 KiB-1 MiB writes, 4 KiB aligned, until
    ``fraction`` of ``size`` is written. The same for the same seed (what they write is random every time)."""
    rng = random.Random(seed)
    target, written, ranges = int(size * fraction), 0, []
    while written < target:
        n = rng.randint(1, 256) * 4096
        ranges.append((rng.randrange(0, size - n) // 4096 * 4096, n))
        written += n
    return ranges


def churn(path: Path, fraction: float, seed: int) -> int:
    """Overwrite ``fraction`` of the disk at :func:`churn_ranges` with random bytes; returns the bytes written."""
    written = 0
    with open(path, "r+b") as f:
        for offset, n in churn_ranges(path.stat().st_size, fraction, seed):
            f.seek(offset)
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


class AckWatch(threading.Thread):
    """Every acknowledged stream state of the disks as the process server puts it in place, sampled every 2 ms:
    ``(when, total bytes received)``. *When* is the ctime of its ``stream.json`` (written durably before the
    batch is acknowledged; the reply follows the directory's fsync)."""

    def __init__(self, data_dir: Path) -> None:
        super().__init__(name="ack-watch", daemon=True)
        self.paths = sorted((data_dir / "cache").rglob("stream.json"))
        self.samples: list[tuple[float, int]] = []
        self._done = threading.Event()

    def run(self) -> None:
        last: tuple[int, ...] = ()
        while not self._done.wait(0.002):
            try:
                stamps = tuple(p.stat().st_ctime_ns for p in self.paths)
                if stamps == last:
                    continue
                total = sum(json.loads(p.read_text())["bytes_received"] for p in self.paths)
                if tuple(p.stat().st_ctime_ns for p in self.paths) != stamps:
                    continue  # replaced meanwhile: read it again
            except (OSError, ValueError, KeyError):
                continue
            last = stamps
            self.samples.append((max(stamps) / 1e9, total))

    def stop(self) -> None:
        self._done.set()
        self.join()


@dataclass
class Godwit:
    """A real engine (``godwit serve``) and a real mobility service replicating one disk image to it."""

    client: AdminClient
    data_dir: Path
    mobility: subprocess.Popen[bytes]
    name: str
    #: Every process of the engine (supervisor and agents) and the mobility service, by name.
    pids: dict[str, int] = field(default_factory=dict)

    def check_alive(self) -> None:
        """RuntimeError if the mobility service has exited (nothing would ever arrive)."""
        if self.mobility.poll() is not None:
            raise RuntimeError(f"the mobility service exited with status {self.mobility.returncode}")

    def stalled(self, what: str) -> RuntimeError:
        """The error for a wait that saw no progress, with the last error each agent logged."""
        errors = []
        for log in sorted((self.data_dir / "logs").glob("*.log")):
            lines = [line for line in log.read_text(errors="replace").splitlines() if line.strip()]
            last = next((line.strip() for line in reversed(lines) if "Error" in line or " ERROR " in line), None)
            if last is not None:
                errors.append(f"{log.stem}: {last[-200:]}")
        return RuntimeError(f"{what}{'; ' + '; '.join(errors) if errors else ''}")


@asynccontextmanager
async def godwit(work: Path, disk: Path, *, heartbeat_interval: float | None = 0.5, azurite: Azurite | None = None,
                 container: str = "bench", name: str = "bench") -> AsyncIterator[Godwit]:
    """An engine with its data in ``work/appliance`` and a mobility service for ``disk``, registered as ``name``
    but not enabled (``heartbeat_interval`` None: the engine's default). On the way out, also on an error or a
    cancellation, both are stopped and every engine process is gone when it returns."""
    data_dir = work / "appliance"
    env = {**os.environ, "GODWIT_SECRET_STORE": "file"}
    g = [sys.executable, "-m", "engine"]
    heartbeat = [] if heartbeat_interval is None else ["--heartbeat-interval", str(heartbeat_interval)]
    mob: subprocess.Popen[bytes] | None = None
    client: AdminClient | None = None
    pids: dict[str, int] = {}
    try:
        subprocess.run([*g, "serve", "--background", "--data-dir", str(data_dir), "--management-port",
                        str(free_port()), "--data-port", str(free_port()), *heartbeat], env=env, check=True,
                       capture_output=True)
        client = AdminClient(DataDir(data_dir))
        engine = await client.engine_status()
        pids = {"supervisor": engine.pid, **{a.name: a.pid for a in engine.agents if a.pid}}
        setup = await client.setup()
        (work / "pp").write_text(setup.passphrase)
        mob = subprocess.Popen([*g, "mobility", "run", "--appliance", f"127.0.0.1:{setup.management_port}",
                                "--passphrase-file", str(work / "pp"), "--ca-fingerprint", setup.ca_fingerprint,
                                "--state-dir", str(work / "state"), "--disk", str(disk), "--name", name],
                               env=env, stderr=subprocess.DEVNULL)
        pids["mobility"] = mob.pid
        while not [s for s in await client.servers() if s.name == name]:
            if mob.poll() is not None:
                raise RuntimeError(f"the mobility service exited with {mob.returncode} before it registered")
            await asyncio.sleep(0.05)
        if azurite is not None:
            await client.set_target("azure", account_url=azurite.account_url, container=container,
                                    credential=azurite.connection_string)
        yield Godwit(client, data_dir, mob, name, pids)
    finally:
        if mob is not None:
            mob.terminate()
            try:
                mob.wait(30)
            except subprocess.TimeoutExpired:
                mob.kill()
                mob.wait()
        if client is not None:
            await client.aclose()
        _stop_engine(data_dir, pids)


def _stop_engine(data_dir: Path, pids: dict[str, int]) -> None:
    """SIGTERM to the supervisor, up to 60 s for it to stop its agents, then SIGKILL to whatever is left."""
    try:
        supervisor = int((data_dir / "engine.lock").read_text())
    except (OSError, ValueError):
        supervisor = pids.get("supervisor", 0)
    alive = {p for p in {supervisor, *pids.values()} if p}
    if supervisor:
        with contextlib.suppress(ProcessLookupError):
            os.kill(supervisor, signal.SIGTERM)
    deadline = time.monotonic() + 60
    while (data_dir / "admin.sock").exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    for pid in alive:  # the agents stop with the supervisor; any still there (a hung one) is killed
        while Path(f"/proc/{pid}").exists() and "zombie" not in _proc_state(pid) and time.monotonic() < deadline:
            time.sleep(0.05)
        with contextlib.suppress(ProcessLookupError):
            if Path(f"/proc/{pid}").exists() and "zombie" not in _proc_state(pid):
                os.kill(pid, signal.SIGKILL)


def _proc_state(pid: int) -> str:
    try:
        return next((line for line in Path(f"/proc/{pid}/status").read_text().splitlines()
                     if line.startswith("State:")), "").lower()
    except OSError:
        return "gone"


@dataclass(frozen=True)
class Initial:
    """``vm enable`` until the whole disk is durable in the cache, and until its first recovery point."""

    cached_s: float
    applied_s: float
    cpu_s: dict[str, float]


#: Seconds without progress after which a wait gives up (RuntimeError) rather than hang.
STALL = 120.0


async def replicate_initial(g: Godwit, *, cadence: str = "1s") -> Initial:
    """Create policy ``bench`` (crash-consistent points every ``cadence``), enable the server with it and wait for
    its first recovery point. The clock starts when ``vm enable`` returns; RuntimeError after :data:`STALL`
    seconds without progress."""
    client = g.client
    await client.create_policy(name="bench", rpo_threshold="1m", retention="1h", crash_consistent_every=cadence,
                               app_consistent_every="off")
    engine = await client.engine_status()  # every agent is up by now
    g.pids.update({a.name: a.pid for a in engine.agents if a.pid})
    pids = {k: p for k, p in g.pids.items() if k != "supervisor"}
    cpu0 = {k: cpu_seconds(p) for k, p in pids.items()}
    await client.enable(g.name, "bench")
    t0 = time.monotonic()
    t_cached = t_applied = None
    progress, moved = None, t0
    while t_applied is None:
        g.check_alive()
        s = await client.server(g.name)
        if (s.state, s.disks[0].bytes_done) != progress:
            progress, moved = (s.state, s.disks[0].bytes_done), time.monotonic()
        elif time.monotonic() - moved > STALL:
            raise g.stalled(f"no progress for {STALL:.0f} s ({s.state}, {s.disks[0].bytes_done} bytes done, no "
                            "recovery point)")
        if t_cached is None and s.disks[0].bytes_done == s.disks[0].bytes_total and s.state != "registered":
            t_cached = time.monotonic()
        if s.state == "protected":
            t_applied = time.monotonic()
        await asyncio.sleep(0.02)
    assert t_cached is not None
    return Initial(t_cached - t0, t_applied - t0, {k: cpu_seconds(p) - cpu0[k] for k, p in pids.items()})


@dataclass(frozen=True)
class Change:
    """A churn of the disk until the recovery point that holds it."""

    changed: int  #: bytes written
    sent: int  #: bytes the process server received for them
    delta_cycle_s: float  #: the cycle's start until its recovery point
    change_to_point_s: float  #: the last write until the recovery point, with the wait for the next cycle
    change_to_ack_s: float  #: the last write until the cycle's last batch was durable in the cache (acknowledged)


async def replicate_change(g: Godwit, disk: Path, *, fraction: float, seed: int,
                           align: float | None = None) -> Change:
    """Churn ``fraction`` of ``disk`` (:func:`churn`) and wait for the first recovery point of a cycle that
    started after the last write. ``align``: start the churn that many seconds after the next cycle's first
    acknowledgement (None: at once)."""
    watch = AckWatch(g.data_dir)
    watch.start()
    try:
        if align is not None:
            t0 = time.time()
            while not watch.samples:  # the state as it stands
                await asyncio.sleep(0.005)
            seen = len(watch.samples)
            while len(watch.samples) == seen:
                g.check_alive()
                if time.time() - t0 > STALL:
                    raise g.stalled(f"no delta cycle in {STALL:.0f} s")
                await asyncio.sleep(0.005)
            await asyncio.sleep(max(0.0, watch.samples[-1][0] + align - time.time()))
        before = received(g.data_dir)
        changed = churn(disk, fraction, seed)
        t_change = time.time()  # every write is done: the next cycle must carry all of them
        while True:
            g.check_alive()
            points = [p for p in await g.client.points(g.name) if p.id / 1000 > t_change]
            if points:
                break
            if time.time() - t_change > STALL:
                raise g.stalled(f"no recovery point {STALL:.0f} s after the change")
            await asyncio.sleep(0.01)
        total = received(g.data_dir)
    finally:
        watch.stop()
    # The change is durable once the batch with its last block is: after it, only batches without data (a cycle's
    # bookmark, tens of bytes) arrive. Each batch with data carries at least one block (far more than 4 KiB). Before
    # the change the total is below that by all it sent.
    acked = min((t for t, n in watch.samples if n >= total - 4096), default=float("nan"))
    point = points[0]
    return Change(changed=changed, sent=total - before,
                  delta_cycle_s=point.created_at - point.id / 1000, change_to_point_s=point.created_at - t_change,
                  change_to_ack_s=acked - t_change)


async def peak_rss_all(g: Godwit) -> dict[str, int]:
    """Peak RSS (VmHWM) of every process so far, by name."""
    engine = await g.client.engine_status()
    rss = {a.name: peak_rss(a.pid) for a in engine.agents if a.pid}
    rss["mobility"] = peak_rss(g.mobility.pid)
    rss["supervisor"] = peak_rss(engine.pid)
    return rss


async def one_run(size: int, seed: int, work: Path, azurite: Azurite | None) -> dict[str, float]:
    disk = work / "disk.img"
    make_disk(disk, size, seed)
    subprocess.run(["sync"], check=True)
    async with godwit(work, disk, azurite=azurite, container=f"bench-{seed}") as g:
        initial = await replicate_initial(g, cadence="1s")
        await asyncio.sleep(2.5)  # let an idle cycle or two pass
        change = await replicate_change(g, disk, fraction=0.01, seed=seed + 1)
        rss = await peak_rss_all(g)
    return {"initial_cached_mbps": size / initial.cached_s / 1e6,
            "initial_applied_mbps": size / initial.applied_s / 1e6,
            "delta_cycle_s": change.delta_cycle_s, "change_to_point_s": change.change_to_point_s,
            "changed_mb": change.changed / 1e6, "sent_mb": change.sent / 1e6,
            **{f"rss_{k}_mb": v / 1e6 for k, v in rss.items()},
            **{f"initial_cpu_{k}_s": v for k, v in initial.cpu_s.items()}}


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
