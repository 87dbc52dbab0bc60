"""Real processes for tests: an engine daemon (``godwit serve``) and mobility services.

Nothing here is a fake: each object runs the product's own command in a subprocess, on loopback
ports picked free, and talks to it the way an admin or a source server does.
"""

from __future__ import annotations

import json
import os
import resource
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

PYTHON = sys.executable
HEARTBEAT = 0.3
LIBFAKETIME = Path("/usr/lib/x86_64-linux-gnu/faketime/libfaketime.so.1")


def fake_clock(offset_file: Path) -> dict[str, str]:
    """The environment that gives a process (the engine and the agents it starts) a wall clock that is the
    machine's plus the libfaketime offset written to ``offset_file`` (e.g. ``+150d``), re-read at every call;
    monotonic time is left alone, as a real clock step leaves it. Starts at +0."""
    if not LIBFAKETIME.exists():
        raise AssertionError(f"{LIBFAKETIME} is missing: run `bash installers/debian-packages.sh` "
                             "(package libfaketime)")
    if not offset_file.exists():
        offset_file.write_text("+0\n")
    return {"LD_PRELOAD": str(LIBFAKETIME), "FAKETIME_TIMESTAMP_FILE": str(offset_file), "FAKETIME_NO_CACHE": "1",
            "DONT_FAKE_MONOTONIC": "1"}


def _worker_ports() -> Iterator[int]:
    """This test process's own ports: below the kernel's ephemeral range (32768 up), a block of 3,000 for each
    pytest-xdist worker, so no two workers and no outgoing connection ever get the same one."""
    worker = os.environ.get("PYTEST_XDIST_WORKER", "gw0").removeprefix("gw")
    start = 20_000 + 3_000 * (int(worker) if worker.isdigit() else 0)
    yield from range(start, start + 3_000)


_PORTS = _worker_ports()


def free_port() -> int:
    """A port free now and never handed out before in this test run (two calls, in this process or in another
    worker, never give the same one)."""
    for port in _PORTS:
        with socket.socket() as s:
            try:
                s.bind(("0.0.0.0", port))
            except OSError:
                continue
        return port
    raise AssertionError("this test process ran out of its 3,000 ports")


async def until(predicate: Any, timeout: float = 20.0, what: str = "condition") -> None:
    """:func:`wait_for` inside a coroutine on the console's (qasync) loop: it polls with ``asyncio.sleep`` and
    never nests a Qt event loop (``qtbot.waitUntil`` there hangs)."""
    import asyncio

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        await asyncio.sleep(0.02)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")


def wait_for(predicate: Any, timeout: float = 20.0, what: str = "condition") -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")


def godwit(*args: str, timeout: float = 30, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([PYTHON, "-m", "engine", *args], capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, **(env or {})}, stdin=subprocess.DEVNULL)


class Appliance:
    def __init__(self, root: Path, *, open_files: int | None = None, data_dir: Path | None = None) -> None:
        self.root = root
        #: If set, the engine (and the agents it starts) run with RLIMIT_NOFILE (open_files, open_files).
        self.open_files = open_files
        #: ``root / "data"`` unless given (e.g. on a file system of the test's own).
        self.data_dir = data_dir or root / "data"
        self.management_port = free_port()
        self.data_port = free_port()
        self.proc: subprocess.Popen[str] | None = None

    def __repr__(self) -> str:
        return f"<Appliance {self.data_dir} mgmt={self.management_port} pid={self.proc and self.proc.pid}>"

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.management_port}"

    @property
    def output(self) -> str:
        """What ``godwit serve`` printed on stdout and stderr."""
        path = self.root / "serve.out"
        return path.read_text() if path.exists() else ""

    def start(self, *extra: str, env: dict[str, str] | None = None) -> None:
        with open(self.root / "serve.out", "a") as out:
            self.proc = subprocess.Popen(
                [PYTHON, "-m", "engine", "serve", "--data-dir", str(self.data_dir), "--management-port",
                 str(self.management_port), "--data-port", str(self.data_port), "--heartbeat-interval",
                 str(HEARTBEAT), *extra],
                stdout=out, stderr=out, text=True, stdin=subprocess.DEVNULL, env={**os.environ, **(env or {})},
                preexec_fn=self._limit_open_files if self.open_files is not None else None)
        wait_for(self.ready, what="the engine to serve its admin socket and management port")

    def _limit_open_files(self) -> None:
        assert self.open_files is not None
        resource.setrlimit(resource.RLIMIT_NOFILE, (self.open_files, self.open_files))

    def ready(self) -> bool:
        if self.proc is not None and self.proc.poll() is not None:
            raise AssertionError(f"engine exited {self.proc.returncode}: {self.output}")
        if not (self.data_dir / "admin.sock").exists():
            return False
        try:
            engine = self.json("engine", "status")
        except AssertionError:
            return False
        return all(a["state"] == "running" for a in engine["agents"]) and self.port_open()

    def port_open(self) -> bool:
        try:
            socket.create_connection(("127.0.0.1", self.management_port), timeout=1).close()
            return True
        except OSError:
            return False

    def stop(self) -> int | None:
        if self.proc is None or self.proc.poll() is not None:
            return self.proc.returncode if self.proc else None
        self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(15)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            raise

    def kill(self) -> None:
        assert self.proc is not None
        self.proc.kill()
        self.proc.wait()

    def cli(self, *args: str, timeout: float = 30) -> subprocess.CompletedProcess[str]:
        return godwit(*args, "--data-dir", str(self.data_dir), timeout=timeout)

    def json(self, *args: str) -> Any:
        if args == ("engine", "status"):  # not a CLI command: read it from the admin API directly
            return _admin_get(self.data_dir / "admin.sock", "/v1/engine")
        res = self.cli(*args, "--json")
        assert res.returncode == 0, res.stderr
        return json.loads(res.stdout)

    def setup(self) -> dict[str, Any]:
        return self.json("setup", "show")  # type: ignore[no-any-return]

    def servers(self) -> dict[str, dict[str, Any]]:
        return {s["name"]: s for s in self.json("vm", "list")}

    def events(self) -> list[dict[str, Any]]:
        return self.json("events")  # type: ignore[no-any-return]

    def log(self, name: str = "replication-manager") -> str:
        path = self.data_dir / "logs" / f"{name}.log"
        return path.read_text() if path.exists() else ""

    # --- replication, as the admin drives it ----------------------------------------------------
    def enable(self, name: str, **policy: str) -> None:
        """Enable a server with the test policy ``fast`` (a point every second), created on first use."""
        args = {"--crash-consistent-every": "1s", "--retention": "1h", "--rpo-threshold": "1m",
                "--app-consistent-every": "off", **policy}
        if self.cli("policy", "show", "fast").returncode != 0:
            res = self.cli("policy", "create", "fast", *[x for kv in args.items() for x in kv])
            assert res.returncode == 0, res.stderr
        res = self.cli("vm", "enable", name, "--policy", "fast")
        assert res.returncode == 0, res.stderr

    def points(self, name: str) -> list[dict[str, Any]]:
        return self.json("vm", "points", name)  # type: ignore[no-any-return]

    def point_after(self, name: str, t: float, timeout: float = 60) -> dict[str, Any]:
        """The first recovery point whose cycle started after ``t`` (it holds every write made before t)."""
        return wait_for(lambda: next((p for p in self.points(name) if p["id"] / 1000 > t), None), timeout=timeout,
                        what=f"a recovery point of {name} newer than the last change")

    def export(self, name: str, point: int | str, out: Path, fmt: str = "raw") -> Path:
        out.mkdir(parents=True, exist_ok=True)  # as an admin would: `vm export` never creates --out
        res = self.cli("vm", "export", name, "--point", str(point), "--format", fmt, "--out", str(out), timeout=120)
        assert res.returncode == 0, res.stderr
        return out / f"{name}-disk0.{fmt}"

    def agent_pid(self, name: str) -> int:
        return wait_for(lambda: next((a["pid"] for a in self.json("engine", "status")["agents"]
                                      if a["name"] == name and a["state"] == "running"), None),
                        what=f"{name} running")

    def write_passphrase(self, text: str | None = None) -> Path:
        path = self.root / "passphrase.txt"
        path.write_text((text if text is not None else self.setup()["passphrase"]) + "\n")
        return path


def _admin_get(sock: Path, path: str) -> Any:
    import http.client

    class UnixHTTP(http.client.HTTPConnection):
        def connect(self) -> None:
            self.sock = socket.socket(socket.AF_UNIX)
            self.sock.settimeout(5)
            self.sock.connect(str(sock))

    conn = UnixHTTP("godwit")
    try:
        conn.request("GET", path)
        resp = conn.getresponse()
        body = resp.read()
    except OSError as exc:
        raise AssertionError(f"admin socket: {exc}") from exc
    finally:
        conn.close()
    if resp.status != 200:
        raise AssertionError(f"admin socket answered {resp.status}")
    return json.loads(body)


def make_disk(path: Path, size: int = 8 * 1024 * 1024) -> Path:
    with open(path, "wb") as f:
        f.truncate(size)
        f.write(b"godwit test disk\n" * 100)
    return path


class Mobility:
    """A mobility service process, as on a source server."""

    def __init__(self, appliance: Appliance, name: str, *, passphrase_file: Path | None = None,
                 fingerprint: str | None = None, disks: list[Path] | None = None,
                 state_dir: Path | None = None, address: str | None = None, extra: list[str] | None = None,
                 env: dict[str, str] | None = None) -> None:
        self.name = name
        self.env = {**os.environ, **(env or {})}
        self.state_dir = state_dir or appliance.root / f"mobility-{name}"
        self.disks = disks or [make_disk(appliance.root / f"{name}-disk0.img")]
        self.args = [
            "mobility", "run", "--appliance", address or appliance.address,
            "--passphrase-file", str(passphrase_file or appliance.write_passphrase()),
            "--ca-fingerprint", fingerprint or appliance.setup()["ca_fingerprint"],
            "--state-dir", str(self.state_dir), "--name", name, "--verbose",
            *(a for d in self.disks for a in ("--disk", str(d))), *(extra or []),
        ]
        self.proc: subprocess.Popen[str] | None = None

    def __repr__(self) -> str:
        return f"<Mobility {self.name} pid={self.proc and self.proc.pid}>"

    def start(self) -> Mobility:
        self.state_dir.parent.mkdir(parents=True, exist_ok=True)
        self._out = self.state_dir.parent / f"{self.name}.{os.getpid()}.{time.monotonic_ns()}.out"
        with open(self._out, "w") as out:
            self.proc = subprocess.Popen([PYTHON, "-m", "engine", *self.args], stdout=out, stderr=out, text=True,
                                         stdin=subprocess.DEVNULL, env=self.env)
        return self

    @property
    def output(self) -> str:
        return self._out.read_text()

    def run(self, timeout: float = 30) -> subprocess.CompletedProcess[str]:
        """Run to completion (for refusals, which exit)."""
        return godwit(*self.args, timeout=timeout)

    def stop(self) -> tuple[int, str]:
        """SIGTERM, wait; returns the exit code and everything it printed."""
        assert self.proc is not None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        return self.proc.returncode, self.output

    def wait_exit(self, timeout: float = 20) -> tuple[int, str]:
        assert self.proc is not None
        self.proc.wait(timeout=timeout)
        return self.proc.returncode, self.output


def fill_disk(path: Path, size: int, *, seed: int = 1) -> bytes:
    """A sparse source disk with text, binary and random regions; returns its full content."""
    import random

    rng = random.Random(seed)
    with open(path, "wb") as f:
        f.truncate(size)
        f.write(b"\xeb\x63\x90GODWIT" + bytes(500))
        pos = 256 * 1024
        while pos < size - 512 * 1024:
            n = rng.randint(1, 8) * 65536
            kind = rng.choice(("text", "random", "hole"))
            f.seek(pos)
            if kind == "text":
                f.write((b"line %d of the log\n" % pos * (n // 16))[:n])
            elif kind == "random":
                f.write(rng.randbytes(n))
            pos += n + rng.randint(0, 4) * 65536
    return path.read_bytes()


def change_disk(path: Path, *, seed: int, writes: int = 20) -> None:
    """Random 4 KiB-1 MiB writes, some of zeros, as a running server would make."""
    import random

    rng = random.Random(seed)
    size = path.stat().st_size
    with open(path, "r+b") as f:
        for _ in range(writes):
            n = rng.randint(1, 256) * 4096
            off = rng.randrange(0, size - n) // 4096 * 4096
            f.seek(off)
            f.write(bytes(n) if rng.random() < 0.15 else rng.randbytes(n))


class Churn:
    """Writes to a source disk until stopped, as a busy server does (a context manager)."""

    def __init__(self, disk: Path, *, seed: int = 1000) -> None:
        self.disk = disk
        self.seed = seed
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        seed = self.seed
        while not self.stop.is_set():
            change_disk(self.disk, seed=seed, writes=4)
            seed += 1
            time.sleep(0.1)

    def __enter__(self) -> Churn:
        self.thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self.stop.set()
        self.thread.join()


def protect(app: Appliance, mob: Mobility, **policy: str) -> Mobility:
    """Start a mobility service, enable it and wait until its first point exists."""
    mob.start()
    wait_for(lambda: app.servers().get(mob.name), what=f"{mob.name} to register")
    app.enable(mob.name, **policy)
    wait_for(lambda: app.servers()[mob.name]["state"] == "protected", timeout=90, what=f"{mob.name} to be protected")
    return mob


def replicating(app: Appliance, name: str, size: int, *, seed: int, **policy: str) -> tuple[Mobility, Path]:
    """A source server with a filled disk, registered, enabled and protected (its first point exists)."""
    disk = app.root / f"{name}.img"
    fill_disk(disk, size, seed=seed)
    mob = Mobility(app, name, disks=[disk]).start()
    try:
        wait_for(lambda: app.servers().get(name), what=f"{name} to register")
        app.enable(name, **policy)
        wait_for(lambda: app.servers()[name]["state"] == "protected", timeout=60, what=f"{name} to be protected")
    except BaseException:
        mob.stop()  # not left running for a later test to trip over
        raise
    return mob, disk


def kill_9(app: Appliance, mob: Mobility, victim: str) -> None:
    """kill -9 one process of the data path and start it again as its owner would (the engine restarts
    its agents itself)."""
    if victim == "mobility":
        assert mob.proc is not None
        mob.proc.kill()
        mob.proc.wait()
        mob.start()
    elif victim == "engine":
        app.kill()
        app.start()
    else:
        os.kill(app.agent_pid(victim), signal.SIGKILL)


def post_batch(app: Appliance, state_dir: Path, disk: int, body: bytes,
               epoch: int | None = None, sender: str | None = None) -> tuple[int, dict[str, Any]]:
    """POST a batch to the data port as the mobility service of ``state_dir`` would (its client
    certificate, its replication epoch unless another is given; as the run ``sender`` of it, which
    may send batches ahead, when given): ``(status, JSON answer)``."""
    import http.client
    import ssl

    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.load_verify_locations(state_dir / "ca.crt")
    ctx.load_cert_chain(state_dir / "client.crt", state_dir / "client.key")
    conn = http.client.HTTPSConnection("127.0.0.1", app.data_port, context=ctx, timeout=60)
    epoch = json.loads((state_dir / "epoch.json").read_text())["epoch"] if epoch is None else epoch
    try:
        headers = {"X-Godwit-Epoch": str(epoch), **({"X-Godwit-Sender": sender} if sender else {})}
        conn.request("POST", f"/v1/streams/{disk}/batches", body=body, headers=headers)
        resp = conn.getresponse()
        return resp.status, json.loads(resp.read())
    finally:
        conn.close()
