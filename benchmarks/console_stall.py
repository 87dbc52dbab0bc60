"""Console event-loop stall while many source servers heartbeat (PERFORMANCE.md target: p99 <= 50 ms).

Starts a real engine, a load process that registers N servers through the real management port
(mutual TLS, one thread per server, heartbeat every --heartbeat seconds), and the real console
(offscreen) attached to the engine. It then measures how late a 10 ms asyncio sleep wakes up on the
console's qasync loop while the Servers page receives the live updates.

It also times the launch of a fresh console (``python -m app``) to a window attached to the engine that lists
every server, while they heartbeat (PERFORMANCE.md target: usable window <= 2 s).

    .venv/bin/python benchmarks/console_stall.py --servers 1000 --seconds 20 --runs 3
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
#: Seconds the load's servers have to register (16 at a time, as from one address).
REGISTER_WITHIN = 300.0
sys.path.insert(0, str(ROOT))


def run_load(args: argparse.Namespace) -> None:
    """The load process: N mobility services in threads, as N source servers would."""
    from engine import logs
    from engine.listener import MAX_UNAUTHENTICATED_PER_ADDRESS
    from engine.mobility.service import MobilityService

    logs.to_stderr()
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)  # a socket and a disk for each of N servers
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, min(hard, 8 * args.servers + 256)), hard))
    stop = threading.Event()
    disk = Path(args.state_root) / "disk.img"
    disk.parent.mkdir(parents=True, exist_ok=True)
    with open(disk, "wb") as f:
        f.truncate(64 << 20)
    services = [MobilityService(appliance=args.appliance, passphrase_file=Path(args.passphrase_file),
                                ca_fingerprint=args.fingerprint, state_dir=Path(args.state_root) / f"s{i}",
                                disks=[str(disk)], name=f"server-{i:03d}", stop=stop) for i in range(args.servers)]
    # All these servers share 127.0.0.1, and the management port takes only so many connections without a
    # client certificate from one address: register a few at a time, as servers on their own addresses would.
    at_once = MAX_UNAUTHENTICATED_PER_ADDRESS // 2
    started: list[MobilityService] = []
    for service in services:
        while sum(not (s.state_dir / "client.crt").exists() for s in started) >= at_once:
            time.sleep(0.02)
        threading.Thread(target=service.run, daemon=True).start()
        started.append(service)
    try:
        sys.stdin.read()  # until the parent closes our stdin
    finally:
        stop.set()


async def measure(args: argparse.Namespace, data_dir: Path) -> tuple[list[float], float]:
    """The loop's lateness samples, and how many server updates a second reached the console meanwhile."""
    from app.bridge import EngineBridge
    from app.views.main_window import MainWindow

    bridge = EngineBridge(data_dir, start_engine=False)
    window = MainWindow(bridge, offer_setup=False)
    window.show()
    bridge.start()
    deadline = time.monotonic() + REGISTER_WITHIN
    while window.servers_page.model.rowCount() < args.servers:
        if time.monotonic() > deadline:
            raise SystemExit(f"only {window.servers_page.model.rowCount()} servers registered in "
                             f"{REGISTER_WITHIN:.0f} s")
        await asyncio.sleep(0.1)
    await asyncio.sleep(2 * args.heartbeat)
    updates = [0]
    bridge.server_updated.connect(lambda _status: updates.__setitem__(0, updates[0] + 1))
    lags: list[float] = []
    started = time.monotonic()
    end = started + args.seconds
    while time.monotonic() < end:
        t0 = time.monotonic()
        await asyncio.sleep(0.010)
        lags.append(time.monotonic() - t0 - 0.010)
    rate = updates[0] / (time.monotonic() - started)
    await bridge.aclose()
    window.close()
    return lags, rate


def one_run(args: argparse.Namespace) -> dict[str, float]:
    import qasync
    from PySide6.QtWidgets import QApplication

    with tempfile.TemporaryDirectory(prefix="godwit-stall-") as tmp:
        root = Path(args.keep) if args.keep else Path(tmp)
        data_dir = root / "appliance"
        env = {**os.environ, "GODWIT_SECRET_STORE": "file"}
        from tests.appliance import free_port

        mgmt, data = free_port(), free_port()
        engine = subprocess.run([sys.executable, "-m", "engine", "serve", "--background", "--data-dir", str(data_dir),
                                 "--management-port", str(mgmt), "--data-port", str(data), "--heartbeat-interval",
                                 str(args.heartbeat)], env=env, capture_output=True, text=True, check=True)
        del engine
        setup = json.loads(subprocess.run([sys.executable, "-m", "engine", "setup", "show", "--json", "--data-dir",
                                           str(data_dir)], capture_output=True, text=True, check=True).stdout)
        (root / "pp").write_text(setup["passphrase"])
        load = subprocess.Popen([sys.executable, __file__, "--load", "--appliance", f"127.0.0.1:{mgmt}",
                                 "--passphrase-file", str(root / "pp"), "--fingerprint", setup["ca_fingerprint"],
                                 "--servers", str(args.servers), "--state-root", str(root / "load")],
                                stdin=subprocess.PIPE, env=env)
        try:
            app = QApplication.instance() or QApplication([])
            loop = qasync.QEventLoop(app)
            lags, rate = loop.run_until_complete(measure(args, data_dir))
            loop.close()
            launches = [launch_to_usable(data_dir, args.servers, root / f"config-{i}") for i in range(args.launches)]
        finally:
            assert load.stdin is not None
            load.stdin.close()
            try:
                load.wait(30)
            except subprocess.TimeoutExpired:
                load.kill()
                load.wait()
            finally:  # the engine runs detached: stop it even when the run failed
                pid = int((data_dir / "engine.lock").read_text())
                os.kill(pid, 15)
                while (data_dir / "admin.sock").exists():
                    time.sleep(0.05)
    lags.sort()
    return {"p50_ms": 1000 * lags[len(lags) // 2], "p99_ms": 1000 * lags[int(len(lags) * 0.99)],
            "max_ms": 1000 * lags[-1], "samples": float(len(lags)),
            "launch_s": statistics.median(launches) if launches else float("nan"), "updates_per_s": rate}


def launch_to_usable(data_dir: Path, servers: int, config: Path) -> float:
    """Seconds from starting ``python -m app`` (a fresh interpreter, its own settings) to a window attached to the
    engine and listing every server, while they all heartbeat."""
    env = {**os.environ, "XDG_CONFIG_HOME": str(config)}
    started = time.monotonic()
    console = subprocess.Popen([sys.executable, "-m", "app", "--data-dir", str(data_dir), "--exit-when-usable",
                                str(servers)], cwd=ROOT, env=env, stdout=subprocess.PIPE, text=True)
    assert console.stdout is not None
    try:
        for line in console.stdout:
            if line.strip() == "usable":
                return time.monotonic() - started
        raise SystemExit(f"the console ended without becoming usable (exit {console.wait()})")
    finally:
        try:
            console.wait(30)
        except subprocess.TimeoutExpired:
            console.kill()
            console.wait()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--servers", type=int, default=200)
    parser.add_argument("--seconds", type=float, default=20)
    parser.add_argument("--heartbeat", type=float, default=1.0, help="heartbeat interval the engine asks for")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--launches", type=int, default=3, help="console launches timed to a usable window per run")
    parser.add_argument("--keep", metavar="DIR", help="run in DIR (empty or new) and keep it: the engine's logs")
    parser.add_argument("--load", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--appliance", help=argparse.SUPPRESS)
    parser.add_argument("--passphrase-file", help=argparse.SUPPRESS)
    parser.add_argument("--fingerprint", help=argparse.SUPPRESS)
    parser.add_argument("--state-root", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.load:
        run_load(args)
        return
    os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")
    results = []
    for i in range(args.runs):
        r = one_run(args)
        results.append(r)
        print(f"run {i + 1}: p50 {r['p50_ms']:.1f} ms  p99 {r['p99_ms']:.1f} ms  max {r['max_ms']:.1f} ms  "
              f"({int(r['samples'])} samples, {r['updates_per_s']:.0f} server updates/s); launch to usable "
              f"{r['launch_s']:.2f} s", flush=True)
    med = {k: statistics.median(r[k] for r in results) for k in ("p50_ms", "p99_ms", "max_ms", "launch_s",
                                                                  "updates_per_s")}
    print(f"\nmedian of {args.runs} runs, {args.seconds:.0f} s each")
    print("| servers | heartbeat | updates reaching the console | loop lag p50 | p99 | max | launch to usable window |")
    print("|---|---|---|---|---|---|---|")
    print(f"| {args.servers} | {args.heartbeat:g} s | {med['updates_per_s']:.0f}/s | {med['p50_ms']:.1f} ms | "
          f"{med['p99_ms']:.1f} ms | {med['max_ms']:.1f} ms | {med['launch_s']:.2f} s |")


if __name__ == "__main__":
    main()
