"""The appliance's prerequisites, as the first-run wizard and ``godwit appliance check`` show them.

Each check says what it found (with the figures) and, unless it is ok, what to do, in one sentence each:

``ports``
    the management and data ports: served by this engine, or (a port it does not hold) free; a port another
    program holds names that program.
``cache-space``
    free space of the file system that holds the cache (the data directory), by :data:`CACHE_RULE`.
``clock``
    whether the system clock is synchronised (``timedatectl``, else the kernel's ``adjtimex``); a machine that
    cannot tell is a warning, never a failure.
``secret-store``
    which store protects the appliance's secrets: the OS keyring, or a file protected by its permissions only.
``sizing``
    CPUs and memory against :data:`SIZING` for the number of registered servers.
``target``
    the target storage can be written: a probe is written, synced, read back and removed (the storage's own
    :meth:`~engine.storage.Storage.probe_target`).

The checks that touch files, sockets or programs run in worker threads; what they need from the state database is
read on the event loop first (:class:`Facts`), and nothing here writes it.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import errno
import logging
import os
import shutil
import socket
import struct
import subprocess
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from engine import diskspace
from engine.diskspace import human_bytes
from engine.errors import BadInput, EngineError
from engine.ports import who_listens
from engine.protocol import MAX_BATCH
from engine.records import PrerequisiteCheck, Prerequisites, PrerequisiteStatus
from engine.secrets import FILE_STORE_NOTE

log = logging.getLogger(__name__)

#: Every check, in the order they are shown, with its title.
TITLES: dict[str, str] = {
    "ports": "Ports free",
    "cache-space": "Free space for the cache",
    "clock": "Clock in sync",
    "secret-store": "Secret store",
    "sizing": "CPU and memory",
    "target": "Target storage reachable",
}
CHECKS = tuple(TITLES)

GIB = 1024**3
#: The sizing table: up to this many servers, at least this many CPUs and GiB of memory. Beyond its last row an
#: appliance is out of its size: add another appliance.
SIZING: tuple[tuple[int, int, int], ...] = ((10, 2, 4), (50, 4, 8), (150, 8, 16))
#: The memory a machine reports (MemTotal) is what it has less what the kernel keeps: this share of a row's memory
#: is enough.
MEMORY_TOLERANCE = 0.9
#: The cache's sizing rule. Free space must hold a day's churn of the registered servers (:data:`DAILY_CHURN` of
#: their disks, at least :data:`MIN_CACHE_FREE`), so that a day of the target storage being unreachable is ridden
#: out; and stay above the appliance health's warning level (30 % free, :mod:`engine.diskspace`). Below the
#: process server's own reserve the appliance refuses replication data: that fails.
DAILY_CHURN = 0.10
MIN_CACHE_FREE = 8 * GIB
CACHE_RULE = (f"free space for a day's churn ({DAILY_CHURN * 100:.0f} % of the registered servers' disks, at least "
              f"{human_bytes(MIN_CACHE_FREE)}) and at least {diskspace.WARNING_FREE * 100:.0f} % of the file system")
#: How long ``timedatectl`` may take to answer.
TIMEDATECTL_TIMEOUT = 5.0
_RANK: dict[PrerequisiteStatus, int] = {"ok": 0, "warning": 1, "failed": 2}


def worst(statuses: Sequence[PrerequisiteStatus]) -> PrerequisiteStatus:
    return max(statuses, key=lambda s: _RANK[s], default="ok")


def _check(key: str, status: PrerequisiteStatus, found: str, action: str = "") -> PrerequisiteCheck:
    return PrerequisiteCheck(key=key, title=TITLES[key], status=status, found=found,
                             action="" if status == "ok" else action)


# --- ports ---------------------------------------------------------------------------------------
#: Seconds a port's agent has to complete a TLS handshake, and a whole check to finish.
HANDSHAKE_TIMEOUT = 3.0
CHECK_TIMEOUT = 20.0
#: The appliance agent that serves each port.
PORT_AGENTS = {"management": "replication-manager", "data": "process-server"}


@dataclass(frozen=True)
class PortFact:
    """A port the appliance is configured with: ``held`` when this engine has it bound, and then ``reach``, where
    its agent answers on this machine."""

    what: str  # "management" | "data"
    port: int
    held: bool
    reach: tuple[str, int] | None = None


def _handshake(address: tuple[str, int]) -> Exception | None:
    """None when a TLS handshake with ``address`` completes (its certificate is not what is checked here)."""
    import ssl

    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    try:
        with socket.create_connection(address, timeout=HANDSHAKE_TIMEOUT) as raw, \
                context.wrap_socket(raw, server_hostname=address[0]):
            return None
    except (OSError, ssl.SSLError) as exc:
        return exc


def _try_bind(address: str, port: int) -> OSError | None:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((address, port))
        sock.listen(1)
    except OSError as exc:
        return exc
    finally:
        sock.close()
    return None


def check_ports(ports: Sequence[PortFact], listen: str) -> PrerequisiteCheck:
    """Each port is served by this engine, or free; one another program holds fails, naming the program."""
    found: list[str] = []
    actions: list[str] = []
    statuses: list[PrerequisiteStatus] = []
    for p in ports:
        if p.held:
            failure = _handshake(p.reach) if p.reach is not None else None
            if failure is None:
                statuses.append("ok")
                found.append(f"the {p.what} port {p.port} is served by this engine on {listen}")
            else:
                agent = PORT_AGENTS.get(p.what, p.what)
                statuses.append("failed")
                found.append(f"the {p.what} port {p.port} is open but its {agent} does not answer "
                             f"({getattr(failure, 'strerror', None) or failure})")
                actions.append(f"read logs/{agent}.log in the data directory; the engine restarts an agent that "
                               "stops answering, and the Events page says when")
            continue
        failure = _try_bind(listen, p.port)
        if failure is None:
            statuses.append("ok")
            found.append(f"the {p.what} port {p.port} is free on {listen}")
        elif failure.errno == errno.EADDRINUSE:
            program = who_listens(p.port)
            statuses.append("failed")
            found.append(f"the {p.what} port {p.port} is in use by another program"
                         + (f", {program}" if program else " (its name is not visible to the engine)"))
            actions.append(f"stop that program or choose another {p.what} port (the Ports page, or godwit ports set "
                           f"--{p.what} N)")
        elif failure.errno in (errno.EACCES, errno.EPERM):
            statuses.append("failed")
            found.append(f"the {p.what} port {p.port} is privileged and the engine may not bind it")
            actions.append(f"run the engine as root or with CAP_NET_BIND_SERVICE, or choose a {p.what} port above "
                           "1023")
        else:
            statuses.append("failed")
            found.append(f"the {p.what} port {p.port} cannot be opened on {listen} ({failure.strerror})")
            actions.append(f"choose another listen address or {p.what} port (the Ports page, or godwit ports set)")
    return _check("ports", worst(statuses), _sentence("; ".join(found)), _sentence("; ".join(actions)))


def _sentence(text: str) -> str:
    return text[:1].upper() + text[1:] + "." if text else ""


# --- cache space -----------------------------------------------------------------------------------
def check_cache_space(path: Path, protected_bytes: int, *,
                      usage: Callable[[Path], tuple[int, int]] = diskspace.usage) -> PrerequisiteCheck:
    """Free space of the file system holding ``path`` (the cache) against :data:`CACHE_RULE`, for registered
    servers whose disks total ``protected_bytes``."""
    try:
        free, size = usage(path)
        mount = diskspace.mount_point(path)
    except OSError as exc:
        return _check("cache-space", "failed", f"The file system of {path} cannot be measured ({exc.strerror}).",
                      "Check that the data directory's disk is mounted and readable.")
    churn = max(MIN_CACHE_FREE, int(protected_bytes * DAILY_CHURN))
    reserve = diskspace.batch_reserve(size) + MAX_BATCH
    percent = 100 * free / size if size else 0.0
    found = (f"The cache is on {mount}: {human_bytes(free)} free of {human_bytes(size)} ({int(percent)} %). Rule: "
             f"{CACHE_RULE}; for {human_bytes(protected_bytes)} of registered disks that is {human_bytes(churn)}.")
    if free < reserve:
        return _check("cache-space", "failed", found + f" Below {human_bytes(reserve)} free the appliance refuses "
                      "replication data.", f"Free space on {mount} or move the data directory to a disk with at "
                      f"least {human_bytes(churn)} free.")
    if free < churn or free < size * diskspace.WARNING_FREE:
        return _check("cache-space", "warning", found, f"Give the data directory a disk with at least "
                      f"{human_bytes(max(churn, int(size * diskspace.WARNING_FREE)))} free, or free space on {mount}, "
                      "before protecting more servers.")
    return _check("cache-space", "ok", found)


# --- clock ---------------------------------------------------------------------------------------
def timedatectl_synchronised() -> bool | None:
    """What systemd says (``timedatectl show -p NTPSynchronized``); None when there is no answer (no systemd)."""
    exe = shutil.which("timedatectl")
    if exe is None:
        return None
    try:
        done = subprocess.run([exe, "show", "-p", "NTPSynchronized", "--value"], capture_output=True, text=True,
                              timeout=TIMEDATECTL_TIMEOUT, stdin=subprocess.DEVNULL, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return None
    value = done.stdout.strip()
    return {"yes": True, "no": False}.get(value) if done.returncode == 0 else None


#: adjtimex(2): its answer when the clock is not synchronised, and the status bit that says so.
_TIME_ERROR = 5
_STA_UNSYNC = 0x0040
#: The start of ``struct timex`` on 64-bit Linux: modes, offset, freq, maxerror, esterror (µs), status.
_TIMEX_HEAD = "=I4xqqqqi"


def kernel_clock() -> tuple[bool, float] | None:
    """What the kernel says (``adjtimex`` reading only): synchronised, and its estimated error in seconds; None
    when it cannot be asked."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        buf = ctypes.create_string_buffer(512)  # larger than struct timex; modes 0: read only, no privilege needed
        state = libc.adjtimex(buf)
    except (OSError, AttributeError):
        return None
    if state < 0:
        return None
    _, _, _, _, esterror, status = struct.unpack_from(_TIMEX_HEAD, buf, 0)
    return state != _TIME_ERROR and not status & _STA_UNSYNC, esterror / 1e6


def check_clock(*, systemd: Callable[[], bool | None] = timedatectl_synchronised,
                kernel: Callable[[], tuple[bool, float] | None] = kernel_clock) -> PrerequisiteCheck:
    """Whether the system clock is synchronised; a machine that cannot tell is a warning."""
    action = ("Run an NTP client on this machine (e.g. systemd-timesyncd or chrony) pointed at your time servers: "
              "recovery point times, the RPO and the licence rely on the clock.")
    said = systemd()
    if said is True:
        return _check("clock", "ok", "systemd says the clock is synchronised by NTP.")
    if said is False:
        return _check("clock", "warning", "systemd says the clock is not synchronised by NTP.", action)
    answer = kernel()
    if answer is None:
        return _check("clock", "warning", "Cannot tell whether the clock is synchronised: neither timedatectl nor "
                      "the kernel answered.", action)
    synced, error = answer
    if synced:
        return _check("clock", "ok", f"The kernel says the clock is synchronised (estimated error "
                      f"{error * 1000:.0f} ms).")
    return _check("clock", "warning", "The kernel says the clock is not synchronised: no NTP client has set it.",
                  action)


# --- secret store ----------------------------------------------------------------------------------
def check_secret_store(kind: str, description: str, secrets_file: Path) -> PrerequisiteCheck:
    """The OS keyring is ok; a file protected by its permissions only is a warning."""
    if kind == "file":
        return _check("secret-store", "warning", f"The appliance's secrets are in a {FILE_STORE_NOTE} "
                      f"({secrets_file}).", "Keep the data directory readable by the engine's user only, and back "
                      "the appliance up (godwit appliance backup): there is no OS keyring on this machine.")
    return _check("secret-store", "ok", f"The appliance's secrets are in the {description}.")


# --- sizing --------------------------------------------------------------------------------------
def memory_bytes(meminfo: Path = Path("/proc/meminfo")) -> int | None:
    with contextlib.suppress(OSError, ValueError, IndexError):
        for line in meminfo.read_text().splitlines():
            if line.startswith("MemTotal:"):
                return int(line.split()[1]) * 1024
    return None


def cpu_count() -> int:
    """The CPUs this engine may run on (a cgroup or affinity may give it fewer than the machine has)."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def sizing_text() -> str:
    return "; ".join(f"up to {n} servers: {c} CPUs and {m} GiB" for n, c, m in SIZING)


def check_sizing(servers: int, *, cpus: int, memory: int | None) -> PrerequisiteCheck:
    """CPUs and memory against the row of :data:`SIZING` for ``servers`` registered servers: below the smallest
    row fails, below the row needed warns, more servers than the table holds warns."""
    have = f"{cpus} CPUs and " + (f"{memory / GIB:.1f} GiB of memory" if memory is not None else "unknown memory")
    table = f"(sizing: {sizing_text()})"
    row = next((r for r in SIZING if servers <= r[0]), None)
    found = f"This machine has {have} for {servers} registered server(s) {table}."

    def short(r: tuple[int, int, int]) -> bool:
        return cpus < r[1] or (memory is not None and memory < r[2] * GIB * MEMORY_TOLERANCE)

    smallest = SIZING[0]
    if short(smallest):
        return _check("sizing", "failed", found, f"Give this machine at least {smallest[1]} CPUs and {smallest[2]} "
                      "GiB of memory.")
    if row is None:
        biggest = SIZING[-1]
        return _check("sizing", "warning", found, f"One appliance is sized for at most {biggest[0]} servers: add "
                      "another appliance for the rest.")
    if short(row):
        return _check("sizing", "warning", found, f"For up to {row[0]} servers give this machine {row[1]} CPUs and "
                      f"{row[2]} GiB of memory.")
    if memory is None:
        return _check("sizing", "warning", found, "Check this machine's memory against the sizing table.")
    return _check("sizing", "ok", found)


# --- target --------------------------------------------------------------------------------------
def check_target(kind: str, probe: Callable[[], str]) -> PrerequisiteCheck:
    """The target storage takes a probe (written, synced, read back, removed)."""
    try:
        said = probe()
    except EngineError as exc:
        return _check("target", "failed", f"The {kind} target storage cannot be written: {exc.message}",
                      "Fix the target (its permissions, its free space or its account) and check again.")
    except OSError as exc:
        return _check("target", "failed", f"The {kind} target storage cannot be reached ({exc.strerror or exc}).",
                      "Fix the target (its permissions, its free space or its account) and check again.")
    return _check("target", "ok", _sentence(f"the {kind} target storage took a probe: {said}"))


# --- running them ----------------------------------------------------------------------------------
@dataclass(frozen=True)
class Facts:
    """What the checks need from the running engine, read on its event loop (the state database's thread)."""

    ports: tuple[PortFact, ...]
    listen_address: str
    #: The directory that holds the cache.
    cache_path: Path
    servers: int
    #: The registered servers' disks, in bytes.
    protected_bytes: int
    secret_kind: str
    secret_description: str
    secrets_file: Path
    target_kind: str
    probe_target: Callable[[], str]


def run_check(key: str, facts: Facts) -> PrerequisiteCheck:
    """One check, blocking (run it in a worker thread)."""
    if key == "ports":
        return check_ports(facts.ports, facts.listen_address)
    if key == "cache-space":
        return check_cache_space(facts.cache_path, facts.protected_bytes)
    if key == "clock":
        return check_clock()
    if key == "secret-store":
        return check_secret_store(facts.secret_kind, facts.secret_description, facts.secrets_file)
    if key == "sizing":
        return check_sizing(facts.servers, cpus=cpu_count(), memory=memory_bytes())
    if key == "target":
        return check_target(facts.target_kind, facts.probe_target)
    raise unknown_check(key)


def unknown_check(key: object) -> BadInput:
    return BadInput(f"There is no prerequisite {str(key)[:40]!r}: the checks are {', '.join(CHECKS)}.")


class PrerequisiteChecker:
    """Runs the checks (all, or one) in worker threads and keeps what each last found."""

    def __init__(self, facts: Callable[[], Facts], *, run: Callable[[str, Facts], PrerequisiteCheck] = run_check
                 ) -> None:
        self._facts = facts
        self._run = run
        self._last: dict[str, PrerequisiteCheck] = {}
        self.checked_at: float | None = None

    def __repr__(self) -> str:
        return f"<PrerequisiteChecker {[(c.key, c.status) for c in self.last().checks]}>"

    def last(self) -> Prerequisites:
        """The checks as last run, in their order (those never run are left out)."""
        return Prerequisites(checks=tuple(self._last[k] for k in CHECKS if k in self._last),
                             checked_at=self.checked_at)

    async def _run_one(self, key: str, facts: Facts) -> PrerequisiteCheck:
        """One check in a worker thread; one that hangs (a target that does not answer) is a failure after
        :data:`CHECK_TIMEOUT` seconds, and its thread is left to end by itself."""
        try:
            return await asyncio.wait_for(asyncio.to_thread(self._run, key, facts), CHECK_TIMEOUT)
        except TimeoutError:
            log.warning("prerequisites.timeout key=%s", key)
            return _check(key, "failed", f"The check did not finish within {CHECK_TIMEOUT:g} s.",
                          "Check again; if it keeps taking this long, read the engine's log in the data directory.")

    async def check(self, key: str | None = None) -> Prerequisites:
        """Run every check, or only ``key`` (a :class:`BadInput` naming the checks for another); the others stay
        as last checked."""
        if key is not None and key not in TITLES:
            raise unknown_check(key)
        facts = self._facts()  # on the loop
        keys = CHECKS if key is None else (key,)
        started = time.monotonic()
        found = await asyncio.gather(*(self._run_one(k, facts) for k in keys))
        for k, c in zip(keys, found, strict=True):
            self._last[k] = c
        self.checked_at = time.time()
        log.info("prerequisites.checked keys=%s statuses=%s seconds=%.2f", ",".join(keys),
                 ",".join(c.status for c in found), time.monotonic() - started)
        return self.last()
