"""``make demo``: a real appliance replicating three sample source servers, in the console.

Starts ``godwit serve`` on a demo data directory (ports above 1024), writes three sparse sample
disks with realistic content, starts a real mobility service for each, enables replication with a
fast demo policy (a crash-consistent point every 30 s), keeps a little churn going on the disks,
and opens the console. db-01 and files-01 replicate under a bandwidth cap so their initial
replication can be watched. With no display it runs the console on a virtual framebuffer (Xvfb),
saves screenshots of its pages and prints the server list. It also publishes a signed update feed
on loopback offering version 0.2.0 of every agent and puts agent updates in manual mode, so the
Agents page shows an Update button on each agent. With ``--target azure`` (``make demo TARGET=azure``) it
starts Azurite, the Azure Blob Storage emulator, with its data in the demo directory, and sets it as the
appliance's target before enabling the servers. Everything keeps running in the background until
``make demo-stop``.
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
CAPS = {"db-01": "400", "files-01": "150"}  # Mbit/s, so initial replication is visible
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
    """The pid of the engine holding the demo's lock; None if no engine holds it (a stale pid file)."""
    import fcntl

    try:
        fd = os.open(appliance / "engine.lock", os.O_RDONLY)
    except OSError:
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        return None  # nobody holds it
    except BlockingIOError:
        return int(os.read(fd, 32).decode().strip() or 0) or None
    finally:
        os.close(fd)


def alive(pid: int | None) -> bool:
    """Whether ``pid`` is one of the demo's processes (not a stranger that reused the number)."""
    if not pid:
        return False
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return False
    return b"engine" in cmdline or b"demo.py" in cmdline or b"azurite" in cmdline


def publish_feed(demo: Path) -> str:
    """A signed update feed on loopback offering version 0.2.0 of every agent (built from this checkout, with the
    demo's own keys): the Agents page has something to update. Returns its URL."""
    feed, keys = demo / "feed", demo / "feed-keys"
    if not (feed / "metadata" / "timestamp.json").exists():
        subprocess.run([PY, str(Path(__file__).parent / "release.py"), "--feed", str(feed), "--keys", str(keys),
                        "--version", "0.2.0"], check=True, stdout=subprocess.DEVNULL)
    pid_file, port_file = demo / "feed.pid", demo / "feed.port"
    if not (pid_file.exists() and alive(int(pid_file.read_text())) and port_file.exists()):
        port = 18080
        while not port_free(port):
            port += 1
        proc = subprocess.Popen([PY, __file__, "--dir", str(demo), "--serve-feed", str(port)],
                                stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                start_new_session=True)
        pid_file.write_text(str(proc.pid))
        port_file.write_text(str(port))
    os.environ["GODWIT_UPDATE_ROOT"] = str(feed / "metadata" / "1.root.json")  # the demo feed's trusted root
    return f"http://127.0.0.1:{port_file.read_text().strip()}"


def serve_feed(demo: Path, port: int) -> None:
    import functools
    import http.server

    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(demo / "feed"))
    http.server.ThreadingHTTPServer(("127.0.0.1", port), handler).serve_forever()


def start_azurite(demo: Path) -> tuple[str, str] | None:
    """Azurite for ``--target azure``, its data in the demo directory, on the same port at every start (the
    target names it); returns its account URL and connection string."""
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    from tests.azurite import Azurite

    pid_file, port_file = demo / "azurite.pid", demo / "azurite.port"
    azurite = Azurite(demo / "azurite-logs", directory=demo / "azurite-data")
    (demo / "azurite-data").mkdir(parents=True, exist_ok=True)
    if port_file.exists():
        azurite.port = int(port_file.read_text())
    if not (pid_file.exists() and alive(int(pid_file.read_text()))):
        try:
            azurite.start()
        except AssertionError as exc:
            print(f"demo: {exc}", file=sys.stderr)
            return None
        assert azurite.proc is not None
        pid_file.write_text(str(azurite.proc.pid))
        port_file.write_text(str(azurite.port))
        print(f"demo: Azurite (the Azure Blob Storage emulator) listens on {azurite.account_url}")
    return azurite.account_url, azurite.connection_string


def start(demo: Path, *, console: bool = True, target: str = "local") -> int:
    appliance = demo / "appliance"
    demo.mkdir(exist_ok=True)
    os.environ["GODWIT_SECRET_STORE"] = "file"  # keep the demo out of the admin's own keyring
    feed_url = publish_feed(demo)
    if godwit("setup", "show", "--data-dir", str(appliance)).returncode != 0:
        mgmt, data = pick_ports()
        with open(demo / "engine.out", "ab") as out:
            # The demo's sources run on this machine: the appliance listens on loopback only.
            subprocess.Popen([PY, "-m", "engine", "serve", "--data-dir", str(appliance), "--management-port",
                              str(mgmt), "--data-port", str(data), "--listen", "127.0.0.1"], stdout=out, stderr=out,
                             stdin=subprocess.DEVNULL, start_new_session=True)
        deadline = time.monotonic() + 30
        while godwit("setup", "show", "--data-dir", str(appliance)).returncode != 0:
            if time.monotonic() > deadline:
                print(f"demo: the engine did not start; see {demo / 'engine.out'}", file=sys.stderr)
                return 1
            time.sleep(0.2)
    setup = json.loads(godwit("setup", "show", "--json", "--data-dir", str(appliance)).stdout)
    if godwit("agents", "feed", feed_url, "--data-dir", str(appliance)).returncode == 0:
        # Manual mode: the Agents page shows an Update button on each agent the feed has a newer version of.
        godwit("agents", "mode", "manual", "--data-dir", str(appliance))
        godwit("agents", "check", "--data-dir", str(appliance))
        print(f"demo: update feed {feed_url} offers version 0.2.0 of every agent (manual mode: press Update)")
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
        fd = os.open(src / "passphrase.txt", os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(setup["passphrase"] + "\n")
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

    if godwit("policy", "show", "demo", "--data-dir", str(appliance)).returncode != 0:
        godwit("policy", "create", "demo", "--rpo-threshold", "5m", "--retention", "2h", "--crash-consistent-every",
               "30s", "--app-consistent-every", "off", "--data-dir", str(appliance))
    if target == "azure":
        azure = start_azurite(demo)
        if azure is None:
            return 1
        secret = demo / "azurite.conn"
        fd = os.open(secret, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(azure[1])
        res = godwit("target", "set", "azure", "--account-url", azure[0], "--container", "demo",
                     "--connection-string-file", str(secret), "--data-dir", str(appliance))
        if res.returncode != 0:
            print(f"demo: {res.stderr.strip()}", file=sys.stderr)
            return 1
        print(f"demo: {res.stdout.splitlines()[0]}")
    for name in SERVERS:
        if not next(s for s in listed if s["name"] == name)["replicating"]:
            if name in CAPS:
                godwit("vm", "set", name, "--max-mbps", CAPS[name], "--data-dir", str(appliance))
            godwit("vm", "enable", name, "--policy", "demo", "--data-dir", str(appliance))
    churn = demo / "churn.pid"
    if not (churn.exists() and alive(int(churn.read_text()))):
        proc = subprocess.Popen([PY, __file__, "--dir", str(demo), "--churn"], stdin=subprocess.DEVNULL,
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
        churn.write_text(str(proc.pid))
    print("demo: replication enabled (policy 'demo'); waiting for web-01's first recovery point")
    deadline = time.monotonic() + 120
    while godwit("vm", "points", "web-01", "--json", "--data-dir", str(appliance)).stdout.strip() in ("", "[]"):
        if time.monotonic() > deadline:
            print("demo: web-01 has no recovery point after 120 s; see .demo/appliance/logs", file=sys.stderr)
            break
        time.sleep(0.5)

    if not console:  # make screenshots drives its own console
        return 0
    command = [PY, "-m", "app", "--data-dir", str(appliance)]
    if os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY"):
        print("demo: opening the console; close it when done (replication keeps running).")
        subprocess.run(command)
    else:
        xvfb = shutil.which("xvfb-run")
        shots = demo / "screenshots"
        if xvfb is None:
            print("demo: no display and no xvfb-run: rendering offscreen instead")
            env = {**os.environ, "QT_QPA_PLATFORM": "offscreen"}
            subprocess.run([*command, "--screenshot", str(shots), "--screenshot-servers", str(len(SERVERS))],
                           env=env, timeout=120)
        else:
            print("demo: no display: rendering the console on a virtual framebuffer (Xvfb)")
            env = {**os.environ, "QT_QPA_PLATFORM": "xcb"}
            subprocess.run([xvfb, "-a", "-s", "-screen 0 1280x800x24 -nolisten tcp", *command, "--screenshot",
                            str(shots), "--screenshot-servers", str(len(SERVERS))], env=env, timeout=120)
    print()
    subprocess.run([PY, "-m", "engine", "vm", "list", "--data-dir", str(appliance)])
    print(f"\nThe appliance and its three sample servers keep running. Try:\n"
          f"  .venv/bin/godwit vm list --data-dir {appliance}\n"
          f"  .venv/bin/godwit events --follow --data-dir {appliance}\n"
          f"  .venv/bin/godwit console --data-dir {appliance}\n"
          f"Stop everything with: make demo-stop")
    return 0


def churn(demo: Path) -> None:
    """A little ongoing change on the sample disks: a few 4 KiB-256 KiB writes every few seconds."""
    rng = random.Random()
    disks = [demo / "sources" / name / "disk0.img" for name in SERVERS]
    while True:
        for disk in disks:
            size = disk.stat().st_size
            with open(disk, "r+b") as f:
                for _ in range(rng.randint(1, 4)):
                    n = rng.randint(1, 64) * 4096
                    f.seek(rng.randrange(0, size - n) // 4096 * 4096)
                    text = b"log line %d\n" % rng.randint(0, 10**6)
                    f.write(rng.randbytes(n) if rng.random() < 0.5 else (text * (n // len(text) + 1))[:n])
        time.sleep(rng.uniform(2, 6))


def stop(demo: Path) -> int:
    pids = [int(p.read_text()) for p in (demo / "sources").glob("*/mobility.pid") if p.read_text().strip()]
    for name in ("churn.pid", "feed.pid", "azurite.pid"):
        if (demo / name).exists():
            pids.append(int((demo / name).read_text()))
    engine = engine_pid(demo / "appliance")
    if alive(engine):
        pids.append(engine)  # type: ignore[arg-type]
    for pid in pids:
        if alive(pid):
            os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + 15
    while any(alive(p) for p in pids) and time.monotonic() < deadline:
        time.sleep(0.1)
    for p in [*(demo / "sources").glob("*/mobility.pid"), demo / "churn.pid", demo / "feed.pid", demo / "azurite.pid"]:
        p.unlink(missing_ok=True)
    print(f"demo: stopped ({len(pids)} processes). The demo data stays in {demo}; `make clean` removes it.")
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--dir", type=Path, default=Path(".demo"))
    parser.add_argument("--stop", action="store_true")
    parser.add_argument("--no-console", action="store_true", help="start everything but do not open the console")
    parser.add_argument("--target", choices=["local", "azure"], default="local",
                        help="replicate to this appliance's disk, or into Azurite (a local Azure Blob emulator)")
    parser.add_argument("--churn", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--serve-feed", type=int, metavar="PORT", help=argparse.SUPPRESS)
    args = parser.parse_args()
    demo = args.dir.resolve()
    if args.serve_feed:
        serve_feed(demo, args.serve_feed)
        return 0
    if args.churn:
        churn(demo)
        return 0
    return stop(demo) if args.stop else start(demo, console=not args.no_console, target=args.target)


if __name__ == "__main__":
    sys.exit(main())
