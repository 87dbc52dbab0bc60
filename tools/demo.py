"""``make demo``: a real appliance with three registered sample source servers, in the console.

Starts ``godwit serve`` on a demo data directory (ports above 1024), writes three sparse sample
disks with realistic content, starts a real mobility service for each, and opens the console. With
no display it runs the console on a virtual framebuffer (Xvfb), saves screenshots of its pages and
prints the server list. Everything keeps running in the background until ``make demo-stop``.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

PY = sys.executable
SERVERS = {"web-01": 256, "db-01": 384, "files-01": 512}  # name -> disk size in MiB
PORTS = (10443, 19443)
MiB = 1024 * 1024


def godwit(*args: str, capture: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run([PY, "-m", "engine", *args], capture_output=capture, text=True, stdin=subprocess.DEVNULL)


def port_free(port: int) -> bool:
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("0.0.0.0", port))
        except OSError:
            return False
    return True


def pick_ports() -> tuple[int, int]:
    mgmt, data = PORTS
    while not port_free(mgmt):
        mgmt += 1
    while not port_free(data) or data == mgmt:
        data += 1
    return mgmt, data


def write_sample_disk(path: Path, size_mib: int, seed: int) -> None:
    """A sparse image: a boot sector, text-like and binary-like areas, incompressible data, holes."""
    if path.exists() and path.stat().st_size == size_mib * MiB:
        return
    rng = random.Random(seed)
    words = b"replication appliance godwit recovery point segment kernel nginx request GET /api 200 OK user".split()
    with open(path, "wb") as f:
        f.truncate(size_mib * MiB)
        f.write(b"\xeb\x63\x90GODWITDEMO" + bytes(497) + b"\x55\xaa")
        offset = 1 * MiB
        while offset < size_mib * MiB - 4 * MiB:
            kind = rng.choice(("text", "binary", "random", "hole", "hole"))
            length = rng.randint(1, 4) * MiB
            f.seek(offset)
            if kind == "text":
                line = b" ".join(rng.choice(words) for _ in range(12)) + b"\n"
                f.write((line * (length // len(line) + 1))[:length])
            elif kind == "binary":
                block = bytes(rng.getrandbits(8) if i % 16 < 4 else 0 for i in range(4096))
                f.write(block * (length // 4096))
            elif kind == "random":
                f.write(os.urandom(length // 4))
            offset += length + rng.randint(4, 24) * MiB


def engine_pid(appliance: Path) -> int | None:
    try:
        return int((appliance / "engine.lock").read_text().strip())
    except (OSError, ValueError):
        return None


def alive(pid: int | None) -> bool:
    if not pid:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def start(demo: Path) -> int:
    appliance = demo / "appliance"
    demo.mkdir(exist_ok=True)
    os.environ["GODWIT_SECRET_STORE"] = "file"  # keep the demo out of the admin's own keyring
    if godwit("setup", "show", "--data-dir", str(appliance)).returncode != 0:
        mgmt, data = pick_ports()
        with open(demo / "engine.out", "ab") as out:
            subprocess.Popen([PY, "-m", "engine", "serve", "--data-dir", str(appliance), "--management-port",
                              str(mgmt), "--data-port", str(data)], stdout=out, stderr=out,
                             stdin=subprocess.DEVNULL, start_new_session=True)
        deadline = time.monotonic() + 30
        while godwit("setup", "show", "--data-dir", str(appliance)).returncode != 0:
            if time.monotonic() > deadline:
                print(f"demo: the engine did not start; see {demo / 'engine.out'}", file=sys.stderr)
                return 1
            time.sleep(0.2)
    setup = json.loads(godwit("setup", "show", "--json", "--data-dir", str(appliance)).stdout)
    print(f"demo: appliance running in {appliance} (management port {setup['management_port']}, "
          f"data port {setup['data_port']})")

    pids = {}
    for i, (name, size) in enumerate(SERVERS.items()):
        src = demo / "sources" / name
        src.mkdir(parents=True, exist_ok=True)
        pid_file = src / "mobility.pid"
        if pid_file.exists() and alive(int(pid_file.read_text())):
            continue
        disk = src / "disk0.img"
        write_sample_disk(disk, size, seed=i)
        (src / "passphrase.txt").write_text(setup["passphrase"] + "\n")
        with open(src / "mobility.out", "ab") as out:
            proc = subprocess.Popen(
                [PY, "-m", "engine", "mobility", "run", "--appliance", f"127.0.0.1:{setup['management_port']}",
                 "--passphrase-file", str(src / "passphrase.txt"), "--ca-fingerprint", setup["ca_fingerprint"],
                 "--state-dir", str(src / "state"), "--disk", str(disk), "--name", name],
                stdout=out, stderr=out, stdin=subprocess.DEVNULL, start_new_session=True)
        pid_file.write_text(str(proc.pid))
        pids[name] = proc.pid
    if pids:
        print(f"demo: started mobility services for {', '.join(pids)}")

    deadline = time.monotonic() + 30
    while True:
        listed = json.loads(godwit("vm", "list", "--json", "--data-dir", str(appliance)).stdout or "[]")
        if {s["name"] for s in listed} >= set(SERVERS):
            break
        if time.monotonic() > deadline:
            print("demo: the sample servers did not register; see .demo/sources/*/mobility.out", file=sys.stderr)
            return 1
        time.sleep(0.2)

    console = [PY, "-m", "app", "--data-dir", str(appliance)]
    if os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY"):
        print("demo: opening the console; close it when done (replication keeps running).")
        subprocess.run(console)
    else:
        xvfb = shutil.which("xvfb-run")
        shots = demo / "screenshots"
        if xvfb is None:
            print("demo: no display and no xvfb-run: rendering offscreen instead")
            env = {**os.environ, "QT_QPA_PLATFORM": "offscreen"}
            subprocess.run([*console, "--screenshot", str(shots), "--screenshot-servers", str(len(SERVERS))],
                           env=env, timeout=120)
        else:
            print("demo: no display: rendering the console on a virtual framebuffer (Xvfb)")
            env = {**os.environ, "QT_QPA_PLATFORM": "xcb"}
            subprocess.run([xvfb, "-a", "-s", "-screen 0 1280x800x24 -nolisten tcp", *console, "--screenshot",
                            str(shots), "--screenshot-servers", str(len(SERVERS))], env=env, timeout=120)
    print()
    subprocess.run([PY, "-m", "engine", "vm", "list", "--data-dir", str(appliance)])
    print(f"\nThe appliance and its three sample servers keep running. Try:\n"
          f"  .venv/bin/godwit vm list --data-dir {appliance}\n"
          f"  .venv/bin/godwit events --follow --data-dir {appliance}\n"
          f"  .venv/bin/godwit console --data-dir {appliance}\n"
          f"Stop everything with: make demo-stop")
    return 0


def stop(demo: Path) -> int:
    pids = [int(p.read_text()) for p in (demo / "sources").glob("*/mobility.pid") if p.read_text().strip()]
    engine = engine_pid(demo / "appliance")
    if alive(engine):
        pids.append(engine)  # type: ignore[arg-type]
    for pid in pids:
        if alive(pid):
            os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + 15
    while any(alive(p) for p in pids) and time.monotonic() < deadline:
        time.sleep(0.1)
    for p in (demo / "sources").glob("*/mobility.pid"):
        p.unlink()
    print(f"demo: stopped ({len(pids)} processes). The demo data stays in {demo}; `make clean` removes it.")
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--dir", type=Path, default=Path(".demo"))
    parser.add_argument("--stop", action="store_true")
    args = parser.parse_args()
    demo = args.dir.resolve()
    return stop(demo) if args.stop else start(demo)


if __name__ == "__main__":
    sys.exit(main())
