"""Connections that never authenticate cannot starve the appliance's ports of file descriptors.

An engine runs with a hard RLIMIT_NOFILE of 256 (so raising the soft limit to the hard one does not
help). From other loopback addresses an attacker keeps more connections than that open against
both TLS ports: silent after the TCP connect, silent after a TLS handshake without a client
certificate, and slowloris (one header byte a second). Meanwhile a legitimate mobility service
registers and replicates, and a recovery point exports byte-exact. Then a client with a valid
certificate tries to hold far more connections than one certificate may. In the end every attacker
connection has been closed by the appliance, the agents never ran out of descriptors nor
restarted, and their logs carry short refusals instead of a flood or a traceback.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import os
import random
import re
import resource
import ssl
import threading
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.appliance import Appliance, Mobility, change_disk, fill_disk, wait_for

MiB = 1024 * 1024
OPEN_FILES = 256
ATTACKERS = ("127.0.0.2", "127.0.0.3")
#: More addresses than the cap on connections without a client certificate (half the budget) allows in total.
CROWD = tuple(f"127.0.0.{i}" for i in range(10, 16))
KINDS = ("tcp", "tls", "slowloris")
#: Per attacker address, port and kind: 2 x 3 x 50 = 300 connections per port, more than the agents' limit.
SLOTS = 50
#: A connection the appliance closed after it had been open this long was closed by a deadline, not refused.
HELD = 5.0
#: The listener's rate-limited warning lines, at most, for the whole test.
MAX_LINES = 120


class Attack:
    """Attacker connections on an asyncio loop in a thread: each slot connects, holds the connection until
    the appliance closes it, and connects again while the attack runs."""

    def __init__(self, ca: Path, *, cert: tuple[Path, Path] | None = None) -> None:
        self.ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        self.ctx.check_hostname = False
        self.ctx.load_verify_locations(ca)
        if cert:
            self.ctx.load_cert_chain(*cert)
        self.loop = asyncio.new_event_loop()
        self.loop.set_exception_handler(lambda loop, context: None)  # peers closing on us is the point
        self.thread = threading.Thread(target=self.loop.run_forever, name="attack", daemon=True)
        self.thread.start()
        self.running = True
        self.attempts: Counter[tuple[int, str]] = Counter()
        self.refused: Counter[tuple[int, str]] = Counter()  # connect or handshake ended by the appliance
        self.held: Counter[tuple[int, str]] = Counter()  # closed by the appliance after HELD s or more
        self.open = 0
        self._tasks: list[concurrent.futures.Future[None]] = []

    def __repr__(self) -> str:
        return (f"<Attack running={self.running} open={self.open} attempts={sum(self.attempts.values())} "
                f"refused={sum(self.refused.values())} held={dict(self.held)}>")

    def start(self, port: int, source: str, kind: str, slots: int, *, again: bool = True, spread: float = 1.0) -> None:
        for _ in range(slots):
            self._tasks.append(asyncio.run_coroutine_threadsafe(self._slot(port, source, kind, again, spread),
                                                                self.loop))

    def stop(self) -> None:
        """No more new connections; those open stay open until the appliance closes them."""
        self.running = False

    def close(self) -> None:
        self.running = False

        async def cancel() -> None:
            for task in asyncio.all_tasks():
                if task is not asyncio.current_task():
                    task.cancel()
            await asyncio.sleep(0.1)

        asyncio.run_coroutine_threadsafe(cancel(), self.loop).result(10)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)
        self.loop.close()

    def finished(self) -> bool:
        return all(task.done() for task in self._tasks)

    async def _slot(self, port: int, source: str, kind: str, again: bool, spread: float) -> None:
        key = (port, kind)
        await asyncio.sleep(spread * random.random())
        while self.running:
            self.attempts[key] += 1
            try:
                async with asyncio.timeout(30):
                    reader, writer = await asyncio.open_connection(
                        "127.0.0.1", port, local_addr=(source, 0), ssl=None if kind == "tcp" else self.ctx)
            except (OSError, TimeoutError):
                self.refused[key] += 1
            else:
                self.open += 1
                opened = time.monotonic()
                try:
                    await self._hold(reader, writer, slow=kind == "slowloris")
                finally:
                    self.open -= 1
                    writer.transport.abort()
                if time.monotonic() - opened >= HELD:
                    self.held[key] += 1
                else:
                    self.refused[key] += 1
            if not again:
                return
            await asyncio.sleep(1.0 + random.random())

    @staticmethod
    async def _hold(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, *, slow: bool) -> None:
        """Until the appliance closes the connection: say nothing, or send headers one byte a second."""
        headers = b"GET /v1/ca HTTP/1.1\r\nHost: appliance\r\nX-Slow: " + b"a" * 4000
        sent = 0
        while True:
            if slow and sent < len(headers):
                writer.write(headers[sent:sent + 1])
                sent += 1
            try:
                async with asyncio.timeout(1.0 if slow else None):
                    data = await reader.read(65536)
            except TimeoutError:
                continue
            except OSError:  # reset: closed by the appliance too
                return
            if not data:
                return


class FdWatch:
    """The most file descriptors each agent process had open, sampled from /proc while the test runs."""

    def __init__(self, pids: dict[str, int]) -> None:
        self.pids = pids
        self.most: Counter[str] = Counter()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="fd-watch", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(0.2):
            for name, pid in self.pids.items():
                with contextlib.suppress(OSError):  # a process that just ended
                    self.most[name] = max(self.most[name], len(os.listdir(f"/proc/{pid}/fd")))

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(5)


@pytest.fixture
def limited(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Appliance]:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != resource.RLIM_INFINITY and soft < 4096:  # the attacker itself holds several hundred sockets
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(4096, hard) if hard != resource.RLIM_INFINITY else 4096,
                                                    hard))
    app = Appliance(tmp_path_factory.mktemp("limits"), open_files=OPEN_FILES)
    app.start()
    yield app
    app.stop()


def _listener_warnings(app: Appliance, agent: str) -> list[str]:
    return [ln for ln in app.log(agent).splitlines() if " WARNING engine.listener:" in ln]


def test_unauthenticated_connections_cannot_starve_the_ports(limited: Appliance, tmp_path: Path) -> None:
    """Floods of connections without a certificate never starve the ports: a real server keeps replicating."""
    app = limited
    agents = ("replication-manager", "process-server")
    pids = {name: app.agent_pid(name) for name in agents}
    fds = FdWatch(pids)
    attack = Attack(app.data_dir / "pki" / "ca.crt")
    crowd = Attack(app.data_dir / "pki" / "ca.crt")
    attacks = [attack, crowd]
    ports = (app.management_port, app.data_port)
    try:
        for port in ports:
            for source in ATTACKERS:
                for kind in KINDS:
                    attack.start(port, source, kind, SLOTS)
        slots = len(ports) * len(ATTACKERS) * len(KINDS) * SLOTS
        wait_for(lambda: sum(attack.attempts.values()) >= slots, what=f"every attacker slot to connect: {attack}")

        # A legitimate server registers, replicates, and its point is byte-exact, while the attack goes on.
        disk = app.root / "legit-01.img"
        fill_disk(disk, 4 * MiB, seed=21)
        mob = Mobility(app, "legit-01", disks=[disk]).start()
        try:
            wait_for(lambda: app.servers().get("legit-01"), what="legit-01 to register")
            app.enable("legit-01")
            wait_for(lambda: app.servers()["legit-01"]["state"] == "protected", timeout=60,
                     what="legit-01 to be protected")
            assert app.export("legit-01", "latest", tmp_path / "a").read_bytes() == disk.read_bytes()
            assert "etrying" not in mob.output, mob.output  # the attack went unnoticed
            # What the attackers got in is closed by a deadline (handshake, first request) of its own.
            wait_for(lambda: all(attack.held[(port, kind)] for port in ports for kind in KINDS), timeout=40,
                     what=f"the appliance to close connections that were held: {attack}")
            attack.stop()

            # A crowd from more addresses than the cap on connections without a certificate allows makes the
            # appliance close the oldest of them; a client with a valid certificate tries to hold more connections
            # than one certificate may (and than the data port's budget). The legitimate server goes on meanwhile.
            for source in CROWD:
                crowd.start(app.management_port, source, "tls", SLOTS)
            stolen = Attack(mob.state_dir / "ca.crt", cert=(mob.state_dir / "client.crt", mob.state_dir / "client.key"))
            attacks.append(stolen)
            stolen.start(app.data_port, "127.0.0.4", "tls", 2 * OPEN_FILES, again=False, spread=3.0)
            wait_for(lambda: stolen.refused[(app.data_port, "tls")] > 0, timeout=30,
                     what=f"connections beyond the budget to be refused: {stolen}")
            wait_for(lambda: "to admit a new one" in app.log("replication-manager"), timeout=30,
                     what=f"the crowd to be thinned out: {crowd}")
            heartbeat = app.servers()["legit-01"]["last_heartbeat"]
            change_disk(disk, seed=22, writes=5)
            t = time.time()
            point = app.point_after("legit-01", t, timeout=90)
            assert app.export("legit-01", point["id"], tmp_path / "b").read_bytes() == disk.read_bytes()
            assert app.servers()["legit-01"]["last_heartbeat"] > heartbeat
        finally:
            for a in attacks:
                a.stop()
            _, output = mob.stop()
        for needle in ("etrying", "unreachable", "ERROR"):  # the attacks went unnoticed
            assert needle not in output, output

        # Every connection the attackers hold is closed by the appliance (nobody here closes one).
        wait_for(lambda: all(a.finished() for a in attacks), timeout=60,
                 what=f"the appliance to close the attackers' connections: {attacks}")
        assert stolen.held[(app.data_port, "tls")] > 0  # closed by the first-request deadline
    finally:
        fds.stop()
        for a in attacks:
            a.close()

    attempts = sum(sum(a.attempts.values()) for a in attacks)
    assert attempts > 2 * len(ports) * OPEN_FILES
    for name in agents:
        assert f"open_files={OPEN_FILES} hard={OPEN_FILES}" in app.log(name)
        assert fds.most[name] < OPEN_FILES, (name, fds.most)  # never ran out
    status = {a["name"]: a for a in app.json("engine", "status")["agents"]}
    for name in agents:
        assert status[name]["state"] == "running" and status[name]["pid"] == pids[name]  # never restarted
    for name in (*agents, "engine"):
        assert "Traceback" not in app.log(name), name
    manager, data = (_listener_warnings(app, name) for name in agents)
    for lines in (manager, data):
        text = "\n".join(lines)
        assert "accept failed" not in text
        assert re.search(r"refused a connection from 127\.0\.0\.[23]: it has \d+ connections without a client "
                         r"certificate open", text)
        assert "sent no TLS handshake within" in text
        assert "sent no complete request within" in text
        assert re.search(r"\d+ more in the last \d+ s: connections refused", text)  # summed up, not one per refusal
        assert len(lines) <= MAX_LINES and len(lines) * 20 < attempts, (len(lines), attempts)
    assert re.search(r"closed the oldest connection without a client certificate from 127\.0\.0\.\d+ to admit",
                     "\n".join(manager))
    assert re.search(r"holds more than \d+ connections with client certificate", "\n".join(data))
    assert "file-descriptor limit" not in "\n".join(manager)  # those without a certificate get half the budget
