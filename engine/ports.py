"""The appliance's ports: where it listens, moving them while it runs, and checking that they answer.

The supervisor binds every listening socket itself (:func:`bind_listening`), so an admin's change is
checked by binding the new socket *before* anything else changes: a port out of range, in use by
another program (named when ``/proc`` tells), privileged without the privilege, or an address that
is not this machine's is one line and changes nothing. Then :class:`PortsControl` hands the new
socket to the agent that serves it (:class:`~engine.supervisor.Launcher`) and restarts only that
agent; the engine, the other agents and every acknowledged batch stay as they are (a batch in
flight is not acknowledged, so the source sends it again).

A new data port reaches the mobility services with their next heartbeat answer. A new management
port is learnt the same way, so the old port stays open beside the new one until every registered
server has sent a heartbeat to the new one, or until the admin's deadline; a server that missed it
is named in an event that says how to point it at the new port.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import functools
import ipaddress
import itertools
import json
import logging
import os
import socket
import ssl
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

from engine.config import DEFAULT_DATA_PORT, DEFAULT_MANAGEMENT_PORT
from engine.durations import duration_text
from engine.errors import BadInput, EngineError, PortError
from engine.events import EventHub
from engine.records import ConnectivityCheck, ConnectivityReport, FirewallRule, PortsStatus
from engine.state import StateDB

if TYPE_CHECKING:
    from engine.inventory import Inventory
    from engine.storage.target import RoutedStorage
    from engine.supervisor import AgentProcess, Launcher

log = logging.getLogger(__name__)

DEFAULT_LISTEN_ADDRESS = "0.0.0.0"
#: Seconds the old management port stays open, at most, for servers that have not reached the new one.
DEFAULT_KEEP_OLD_PORT = 24 * 3600.0
MAX_KEEP_OLD_PORT = 30 * 24 * 3600.0
#: How often the old management port's servers are counted.
CHECK_EVERY = 1.0
#: Seconds a connectivity check may take per port.
CHECK_TIMEOUT = 5.0

# The state database's meta keys.
_MANAGEMENT, _DATA, _LISTEN = "management_port", "data_port", "listen_address"
_OLD, _OLD_CLOSES, _STRANDED = "old_management_port", "old_port_closes_at", "servers_not_moved"
#: What belongs to the host (its addresses) or to a move under way there: not carried to another appliance.
NOT_MOVED_META = (_LISTEN, _OLD, _OLD_CLOSES, _STRANDED)


# --- binding ------------------------------------------------------------------------------------
def who_listens(port: int) -> str | None:
    """The program that listens on TCP ``port`` ("nginx (pid 812)"), when ``/proc`` tells; else None."""
    inodes: set[str] = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with contextlib.suppress(OSError):
            for line in Path(table).read_text().splitlines()[1:]:
                fields = line.split()
                if len(fields) > 9 and fields[3] == "0A" and int(fields[1].rsplit(":", 1)[1], 16) == port:
                    inodes.add(f"socket:[{fields[9]}]")
    if not inodes:
        return None
    for pid in filter(str.isdigit, os.listdir("/proc")):
        with contextlib.suppress(OSError):
            for fd in os.listdir(f"/proc/{pid}/fd"):
                with contextlib.suppress(OSError):
                    if os.readlink(f"/proc/{pid}/fd/{fd}") in inodes:
                        name = Path(f"/proc/{pid}/comm").read_text().strip()
                        return f"{name} (pid {pid})"
    return None


def local_addresses() -> list[str]:
    """The IPv4 addresses of this machine's interfaces, as ``/proc`` lists them."""
    found: set[str] = set()
    with contextlib.suppress(OSError):
        # fib_trie lists each local address as a leaf followed by "/32 host LOCAL".
        lines = Path("/proc/net/fib_trie").read_text().splitlines()
        for before, line in itertools.pairwise(lines):
            if "/32 host LOCAL" in line:
                found.add(before.strip().split()[-1])
    return sorted(found, key=lambda a: ipaddress.ip_address(a))


def check_address(text: str) -> str:
    """An IPv4 listen address an admin typed, normalised; :class:`BadInput` if it is not one."""
    try:
        addr = ipaddress.ip_address(text.strip())
    except ValueError:
        raise BadInput(f"{text!r} is not an IP address: give an IPv4 address of this machine, or 0.0.0.0 for "
                       "every address.") from None
    if addr.version != 4:
        raise BadInput(f"{text} is an IPv6 address: the appliance listens on IPv4 (give an IPv4 address of this "
                       "machine, or 0.0.0.0 for every address).")
    return str(addr)


def check_port(value: object, what: str) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or not 1 <= value <= 65535:
        raise BadInput(f"The {what} port must be a number between 1 and 65535, not {value!r}.")
    return value


def bind_listening(host: str, port: int, *, what: str, hint: str) -> socket.socket:
    """Bind a listening TCP socket, or raise a one-line :class:`PortError` that says what to do.

    ``hint`` says how the admin picks another port ("choose another port with --data-port"). Port 0 (any
    free port) only checks that ``host`` is an address of this machine."""
    if port != 0:
        check_port(port, what)
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
        sock.listen(512)
    except PermissionError as exc:
        sock.close()
        start = _unprivileged_start()
        raise PortError(
            f"The {what} port {port} is privileged (below {start}) and the engine may not bind it: run the engine as "
            "root, grant it CAP_NET_BIND_SERVICE (setcap 'cap_net_bind_service=+ep' on the Python binary), or "
            f"{hint} above {start - 1}.") from exc
    except OSError as exc:
        sock.close()
        if exc.errno == errno.EADDRINUSE:
            program = who_listens(port)
            by = f"by another program, {program}" if program else "by another program"
            raise PortError(f"The {what} port {port} is in use {by}. Stop that program, or {hint}.") from exc
        if exc.errno == errno.EADDRNOTAVAIL:
            mine = ", ".join(local_addresses()) or "none found"
            raise PortError(f"{host} is not an address of this machine (its addresses: {mine}): give one of them, "
                            "or 0.0.0.0 for every address.") from exc
        raise PortError(f"The {what} port {port} cannot be opened on {host} ({exc.strerror}).") from exc
    sock.setblocking(False)
    sock.set_inheritable(True)
    return sock


def _unprivileged_start() -> int:
    try:
        return int(Path("/proc/sys/net/ipv4/ip_unprivileged_port_start").read_text())
    except (OSError, ValueError):
        return 1024


def _port_of(sock: socket.socket) -> int:
    return int(sock.getsockname()[1])


# --- the ports of a running appliance --------------------------------------------------------------
@dataclass
class _OldPort:
    """The management port being left: served until every server moved or until ``closes_at``."""

    sock: socket.socket
    closes_at: float
    port: int = 0

    def __post_init__(self) -> None:
        self.port = self.port or _port_of(self.sock)  # kept: a closed socket no longer tells


class PortsControl:
    """The appliance's listening sockets and the changes an admin makes to them."""

    def __init__(self, *, state: StateDB, hub: EventHub, launcher: Launcher, listen_address: str,
                 old: tuple[socket.socket, float] | None) -> None:
        self._state = state
        self._hub = hub
        self._launcher = launcher
        self.listen_address = listen_address
        self._old = _OldPort(*old) if old else None
        self._lock = asyncio.Lock()
        #: The servers not moved yet, as last pushed to the consoles.
        self._not_moved: tuple[str, ...] = ()
        #: Set by the engine once the agents and the inventory exist.
        self.agents: Mapping[str, AgentProcess] = {}
        self.inventory: Inventory | None = None
        self.storage: RoutedStorage | None = None
        self.ca_pem: bytes = b""
        #: Called after every change (the engine pushes the new ports and set-up to the consoles).
        self.on_change: Callable[[], None] = lambda: None

    def __repr__(self) -> str:
        old = f" old={self._old.port}" if self._old else ""
        return f"<PortsControl {self.listen_address} mgmt={self.management_port} data={self.data_port}{old}>"

    @classmethod
    def open(cls, *, state: StateDB, hub: EventHub, launcher_for: Callable[[dict[str, tuple[socket.socket, ...]]],
             Launcher], management: int | None, data: int | None, listen: str | None) -> PortsControl:
        """Bind the ports at start: those given on the command line, else the stored ones, else the defaults
        (443, 9443, every address). The old management port of a move that was under way is bound again
        while its time lasts (quietly skipped if it cannot be)."""
        stored = int(state.get_meta(_MANAGEMENT) or 0)
        mgmt = management or stored or DEFAULT_MANAGEMENT_PORT
        data = data or int(state.get_meta(_DATA) or DEFAULT_DATA_PORT)
        address = check_address(listen or state.get_meta(_LISTEN) or DEFAULT_LISTEN_ADDRESS)
        if mgmt == data:
            raise PortError(f"The management and data ports must differ (both are {mgmt}).")
        mgmt_sock = bind_listening(address, mgmt, what="management", hint="choose another port with --management-port")
        try:
            data_sock = bind_listening(address, data, what="data", hint="choose another port with --data-port")
        except PortError:
            mgmt_sock.close()
            raise
        old: tuple[socket.socket, float] | None = None
        old_port, closes_at = state.get_meta(_OLD), float(state.get_meta(_OLD_CLOSES) or 0)
        moved_by_flag = bool(stored and mgmt != stored)
        if moved_by_flag and not (old_port and closes_at > time.time()):
            # a management port given on the command line moves it: the sources know the stored one
            old_port, closes_at = str(stored), time.time() + DEFAULT_KEEP_OLD_PORT
        if old_port and int(old_port) not in (mgmt, data) and closes_at > time.time():
            try:
                old = (bind_listening(address, int(old_port), what="old management", hint="-"), closes_at)
            except PortError as exc:
                log.warning("ports.old-not-reopened port=%s: %s", old_port, exc)
        sockets = {"management": (mgmt_sock, *((old[0],) if old else ())), "data": (data_sock,)}
        ports = cls(state=state, hub=hub, launcher=launcher_for(sockets), listen_address=address, old=old)
        ports._save()
        if moved_by_flag:
            kept = f"; {stored} stays open until every registered server has reached {mgmt}" if old else ""
            ports._record("info", "ports-changed", f"Ports changed: the management port moved from {stored} to {mgmt} "
                          f"(--management-port){kept}.")
        return ports

    # --- what is served -----------------------------------------------------------------------------
    @property
    def launcher(self) -> Launcher:
        """Hands the sockets to the agents (the supervisor starts every agent through it)."""
        return self._launcher

    @property
    def management_port(self) -> int:
        return _port_of(self._launcher.sockets["management"][0])

    @property
    def data_port(self) -> int:
        return _port_of(self._launcher.sockets["data"][0])

    def close(self) -> None:
        for socks in self._launcher.sockets.values():
            for sock in socks:
                sock.close()

    def servers_not_moved(self) -> tuple[str, ...]:
        """Registered servers not seen on the current management port since this engine started."""
        if self.inventory is None:
            return ()
        return tuple(sorted(r.name for r in self.inventory.reach() if r.management_port != self.management_port))

    def status(self) -> PortsStatus:
        old = self._old
        return PortsStatus(management_port=self.management_port, data_port=self.data_port,
                           listen_address=self.listen_address, firewall=self.firewall(),
                           old_management_port=old.port if old else None,
                           old_port_closes_at=old.closes_at if old else None,
                           servers_not_moved=self.servers_not_moved() if old else ())

    def firewall(self) -> tuple[FirewallRule, ...]:
        """The rules the network around the appliance needs."""
        rules = [FirewallRule("inbound", "TCP", self.management_port, "source servers",
                              "registration and heartbeats (management port)"),
                 FirewallRule("inbound", "TCP", self.data_port, "source servers", "replication data (data port)")]
        if self._old:
            rules.append(FirewallRule("inbound", "TCP", self._old.port, "source servers",
                                      "the old management port, until every server has moved"))
        setting = self.storage.setting() if self.storage is not None else None
        if setting is None or setting.kind == "local":
            rules.append(FirewallRule("outbound", "-", None, "target storage",
                                      "none: the target storage is this appliance's own disk"))
        else:
            url = urlsplit(setting.account_url or "")
            port = url.port or (80 if url.scheme == "http" else 443)
            rules.append(FirewallRule("outbound", "TCP", port, url.hostname or "the storage account",
                                      f"target storage: Azure Blob Storage ({url.scheme.upper() or 'HTTPS'})"))
        return tuple(rules)

    # --- changing them ----------------------------------------------------------------------------
    async def change(self, *, management: int | None = None, data: int | None = None, listen: str | None = None,
                     keep_old_for: float | None = None) -> PortsStatus:
        """Check the new ports by binding them, then move the agents to them. Nothing changes when a check
        fails (:class:`~engine.errors.EngineError`, one line). Returns the ports now served."""
        async with self._lock:
            return await self._change(management, data, listen, keep_old_for)

    async def _change(self, management: int | None, data: int | None, listen: str | None,
                      keep_old_for: float | None) -> PortsStatus:
        mgmt_now, data_now, address_now = self.management_port, self.data_port, self.listen_address
        mgmt = mgmt_now if management is None else check_port(management, "management")
        data_port = data_now if data is None else check_port(data, "data")
        address = address_now if listen is None else check_address(listen)
        keep = DEFAULT_KEEP_OLD_PORT if keep_old_for is None else keep_old_for
        if isinstance(keep, bool) or not isinstance(keep, int | float) or not 0 <= keep <= MAX_KEEP_OLD_PORT:
            raise BadInput("How long the old management port stays open must be between 0 and 30 days.")
        if mgmt == data_port:
            raise BadInput(f"The management and data ports must differ (both would be {mgmt}).")
        move_mgmt, move_data, move_address = mgmt != mgmt_now, data_port != data_now, address != address_now
        if not (move_mgmt or move_data or move_address):
            return self.status()
        if move_address and (move_mgmt or move_data):
            # an address change rebinds every port in its agent's restart: one kind of change at a time keeps a
            # failure from leaving the ports half-moved
            raise BadInput("Change the listen address on its own, then the ports (or the reverse).")
        old = self._old
        if move_mgmt and old is not None and mgmt == old.port:
            if move_data:
                raise BadInput(f"Port {mgmt} is the management port being left: move back to it on its own.")
            await self._move_back(keep)
            return self.status()
        ours = {mgmt_now: "management port", data_now: "data port"}
        if old:
            ours[old.port] = "old management port, open until every server has moved (move the management port " \
                "back to it on its own, or wait until it closes)"
        for port, what, moving in ((mgmt, "management", move_mgmt), (data_port, "data", move_data)):
            if moving and port in ours:
                raise BadInput(f"Port {port} is this appliance's {ours[port]}: choose another {what} port, or move "
                               "the ports one at a time.")
        left_behind = self.servers_not_moved() if move_mgmt and old is not None else ()
        new = await asyncio.to_thread(self._bind_new, address, mgmt if (move_mgmt or move_address) else None,
                                      data_port if (move_data or move_address) else None)
        await self._apply(new, address=address, keep=keep, moved_from=mgmt_now if move_mgmt else None)
        changes = []
        if move_address:
            changes.append(f"both ports now listen on {address} (were on {address_now})")
        if move_data:
            changes.append(f"the data port moved from {data_now} to {data_port}; mobility services follow with their "
                           "next heartbeat")
        if move_mgmt:
            until = (f"until every registered server has reached the new one, at most until "
                     f"{time.strftime('%Y-%m-%d %H:%M', time.localtime(time.time() + keep))}") if keep else \
                "closed at once, as asked"
            changes.append(f"the management port moved from {mgmt_now} to {mgmt}; the old port stays open {until}"
                           if keep else f"the management port moved from {mgmt_now} to {mgmt}; the old port was "
                           "closed at once, as asked: servers that have not moved must be pointed at the new port")
        if old is not None and move_mgmt:
            changes.append(f"the earlier old port {old.port} closed"
                           + (f"; not moved from it: {', '.join(left_behind)}" if left_behind else ""))
            self._strand(left_behind)
        self._record("info", "ports-changed", "Ports changed: " + "; ".join(changes) + ".")
        self.on_change()
        return self.status()

    async def _move_back(self, keep: float) -> None:
        """The management port moves back to the one being left (still open): the two swap, nothing is bound."""
        assert self._old is not None
        sockets = self._launcher.sockets
        current, back = sockets["management"][0], self._old.sock
        was = _port_of(current)
        if keep > 0:
            self._old = _OldPort(current, time.time() + keep)
            sockets["management"] = (back, current)
        else:
            self._old = None
            sockets["management"] = (back,)
        self._save()
        if self.inventory is not None:
            self.inventory.management_port = self.management_port
        try:
            await self._restart("replication-manager", "the management port moved back")
        finally:
            if keep <= 0:
                current.close()
        self._record("info", "ports-changed", f"Ports changed: the management port moved back from {was} to "
                     f"{self.management_port}" + (f"; {was} stays open until every server is back" if keep > 0 else "")
                     + ".")
        self.on_change()

    def _strand(self, names: tuple[str, ...]) -> None:
        """Remember servers left on a closed management port: an event says when each one is back."""
        if names:
            before = set(json.loads(self._state.get_meta(_STRANDED) or "[]"))
            self._state.set_meta(_STRANDED, json.dumps(sorted(before | set(names))))

    def _bind_new(self, address: str, mgmt: int | None, data: int | None) -> dict[str, socket.socket]:
        """Bind the sockets a change needs; all or none. A port that stays the same on another address is
        bound after its old socket is closed (two sockets cannot share it): checked first, then moved."""
        bound: dict[str, socket.socket] = {}
        try:
            for name, port in (("management", mgmt), ("data", data)):
                if port is None:
                    continue
                hint = f"choose another {name} port"
                current = self._launcher.sockets[name][0]
                if port == _port_of(current) and address != self.listen_address:
                    # same port, other address: check the address now, take the port over when applying
                    probe = bind_listening(address, 0, what=name, hint=hint)
                    probe.close()
                    continue
                bound[name] = bind_listening(address, port, what=name, hint=hint)
        except EngineError:
            for sock in bound.values():
                sock.close()
            raise
        return bound

    async def _apply(self, new: dict[str, socket.socket], *, address: str, keep: float, moved_from: int | None) -> None:
        sockets = self._launcher.sockets
        address_before = self.listen_address
        # A port that stays the same on a new address: its agent holds it until it exits, so it is bound again
        # between the agent's stop and its start.
        rebind = {name for name in ("management", "data") if address != address_before and name not in new}
        changed = set(new) | rebind
        to_close: list[socket.socket] = []
        if "data" in new:
            to_close.append(sockets["data"][0])
            sockets["data"] = (new["data"],)
        if "management" in new:
            current, *older = sockets["management"]
            to_close.extend(older)  # an earlier move's old port: a second move closes it
            if moved_from is not None and keep > 0:
                self._old = _OldPort(current, time.time() + keep)
                sockets["management"] = (new["management"], current)
            else:
                self._old = None
                to_close.append(current)
                sockets["management"] = (new["management"],)
        self.listen_address = address
        self._save()
        if self.inventory is not None:
            self.inventory.management_port = self.management_port
            self.inventory.data_port = self.data_port
        try:
            for agent, name in (("process-server", "data"), ("replication-manager", "management")):
                if name in changed:
                    between = functools.partial(self._rebind, name, address, address_before) if name in rebind \
                        else None
                    await self._restart(agent, f"the {name} port changed", between=between)
        finally:
            for sock in to_close:
                sock.close()

    def _rebind(self, name: str, address: str, before: str) -> None:
        """Bind ``name``'s port on ``address`` in place of its socket on ``before`` (whose agent has exited)."""
        sockets = self._launcher.sockets
        current, *rest = sockets[name]
        port = _port_of(current)
        current.close()
        try:
            fresh = bind_listening(address, port, what=name, hint=f"choose another {name} port")
        except EngineError as exc:
            sockets[name] = (bind_listening(before, port, what=name, hint="-"), *rest)
            self.listen_address = before
            self._save()
            raise PortError(f"The {name} port {port} could not move to {address} and still listens on {before}: "
                            f"{exc.message}") from exc
        sockets[name] = (fresh, *rest)

    async def _restart(self, agent: str, reason: str, *, between: Callable[[], None] | None = None) -> None:
        process = self.agents.get(agent)
        if process is not None:
            await process.restart(reason, between=between)
        elif between is not None:
            between()

    def _save(self) -> None:
        self._state.set_meta(_MANAGEMENT, str(self.management_port))
        self._state.set_meta(_DATA, str(self.data_port))
        self._state.set_meta(_LISTEN, self.listen_address)
        if self._old:
            self._state.set_meta(_OLD, str(self._old.port))
            self._state.set_meta(_OLD_CLOSES, repr(self._old.closes_at))
        else:
            self._state.delete_meta(_OLD)
            self._state.delete_meta(_OLD_CLOSES)

    def _record(self, severity: str, code: str, message: str) -> None:
        try:
            self._hub.record(severity, code, message)  # type: ignore[arg-type]
        except EngineError as exc:  # e.g. a full disk: the change is made, the event is logged instead
            log.warning("event.not-recorded code=%s: %s", code, exc)

    # --- the old management port ---------------------------------------------------------------------
    async def watch(self) -> None:
        """Close the old management port once every registered server has reached the new one (or at its
        deadline, naming those that had not), and say when such a server reaches the new port later."""
        while True:
            try:
                async with self._lock:
                    await self._check_old()
                self._check_stranded()
            except Exception:  # a bug, or a full disk: keep watching
                log.exception("ports.watch-failed")
            await asyncio.sleep(CHECK_EVERY)

    async def _check_old(self) -> None:
        old = self._old
        if old is None:
            return
        waiting = self.servers_not_moved()
        if waiting != self._not_moved:  # a server moved: the consoles show who is left
            self._not_moved = waiting
            self.on_change()
        if waiting and time.time() < old.closes_at:
            return
        self._old = None
        sockets = self._launcher.sockets
        sockets["management"] = (sockets["management"][0],)
        self._save()
        await self._restart("replication-manager", "the old management port closed")
        old.sock.close()
        new = self.management_port
        if waiting:
            host = self.listen_address if self.listen_address != DEFAULT_LISTEN_ADDRESS else socket.gethostname()
            self._strand(waiting)
            self._record("warning", "old-port-closed",
                         f"The old management port {old.port} is closed; {len(waiting)} server(s) had not reached the "
                         f"new port {new}: {', '.join(waiting)}. Restart their mobility service with --appliance "
                         f"{host}:{new} (same --state-dir and --ca-fingerprint).")
        else:
            self._record("info", "old-port-closed", f"The old management port {old.port} is closed: every registered "
                         f"server has reached the new port {new}.")
        self.on_change()

    def _check_stranded(self) -> None:
        raw = self._state.get_meta(_STRANDED)
        if not raw or self.inventory is None:
            return
        stranded = set(json.loads(raw))
        back = {r.name for r in self.inventory.reach() if r.name in stranded and r.management_port ==
                self.management_port}
        registered = {r.name for r in self.inventory.reach()}
        for name in sorted(back):
            self._record("info", "server-reached-new-port",
                         f"{name} reached the new management port {self.management_port}; it replicates as before.")
        left = (stranded - back) & registered
        if left != stranded:
            if left:
                self._state.set_meta(_STRANDED, json.dumps(sorted(left)))
            else:
                self._state.delete_meta(_STRANDED)
            self.on_change()

    # --- checking them -----------------------------------------------------------------------------
    async def check(self) -> ConnectivityReport:
        """Both ports answer TLS with the appliance's certificate; the target storage can be written; when
        each registered server last reached each port."""
        ports = [("management port", self.management_port, True), ("data port", self.data_port, False)]
        if self._old:
            ports.append(("old management port", self._old.port, True))
        checks = list(await asyncio.gather(*(asyncio.to_thread(self._check_port, name, port, mgmt)
                                             for name, port, mgmt in ports)))
        checks.append(await asyncio.to_thread(self._check_target))
        servers = tuple(self.inventory.reach()) if self.inventory is not None else ()
        return ConnectivityReport(checks=tuple(checks), servers=servers)

    def _check_port(self, name: str, port: int, management: bool) -> ConnectivityCheck:
        host = "127.0.0.1" if self.listen_address == DEFAULT_LISTEN_ADDRESS else self.listen_address
        agent = "replication-manager" if management else "process-server"
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        ctx.check_hostname = False  # the appliance is trusted through its CA, as the mobility service does
        ctx.load_verify_locations(cadata=self.ca_pem.decode())
        started = time.monotonic()
        try:
            with socket.create_connection((host, port), timeout=CHECK_TIMEOUT) as raw, \
                    ctx.wrap_socket(raw) as tls:
                tls.sendall(b"GET /v1/ca HTTP/1.1\r\nHost: appliance\r\nConnection: close\r\n\r\n")
                status_line = tls.recv(256).split(b"\r\n", 1)[0].decode("latin-1")
                version = tls.version()
        except ssl.SSLCertVerificationError as exc:
            return ConnectivityCheck(name, False, f"{host}:{port} answered with a certificate this appliance's CA did "
                                     f"not sign ({exc.verify_message}).",
                                     f"Another program serves port {port}: stop it, or move the {name}.")
        except (OSError, ssl.SSLError) as exc:
            return ConnectivityCheck(name, False, f"{host}:{port} did not accept TLS ({exc}).",
                                     f"Check that the {agent} agent runs (`godwit events`) and that nothing on this "
                                     "machine blocks the port.")
        ms = (time.monotonic() - started) * 1000
        if not status_line.startswith("HTTP/1."):
            return ConnectivityCheck(name, False, f"{host}:{port} accepted TLS but did not answer HTTP.",
                                     f"Check the {agent} agent's log in the data directory's logs/.")
        return ConnectivityCheck(name, True, f"{host}:{port} accepts {version} with this appliance's certificate "
                                 f"and answers ({status_line.split(' ', 1)[1]}, {ms:.0f} ms).")

    def _check_target(self) -> ConnectivityCheck:
        if self.storage is None:
            return ConnectivityCheck("target storage", False, "The storage is not open yet.", "Try again in a moment.")
        try:
            return ConnectivityCheck(f"target storage ({self.storage.kind})", True, self.storage.probe_target())
        except EngineError as exc:
            return ConnectivityCheck(f"target storage ({self.storage.kind})", False, exc.message,
                                     "Free space or fix the permissions where the target lives, then test again.")


def old_port_text(status: PortsStatus, now: float | None = None) -> str:
    """While the management port moves: a sentence on the old port (empty otherwise)."""
    if status.old_management_port is None or status.old_port_closes_at is None:
        return ""
    left = max(0.0, status.old_port_closes_at - (time.time() if now is None else now))
    waiting = ", ".join(status.servers_not_moved) or "none"
    return (f"The old management port {status.old_management_port} stays open until every server has moved, at most "
            f"{duration_text(left)} more; not moved yet: {waiting}.")
