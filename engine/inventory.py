"""The inventory of source servers: registration, heartbeats, health, revocation."""

from __future__ import annotations

import asyncio
import hmac
import logging
import time
import uuid
from collections.abc import Callable
from typing import TYPE_CHECKING, Literal

from cryptography import x509

from engine.durations import duration_text
from engine.errors import DiskFull, NameTaken, Revoked, TooManyAttempts, UnknownServer, WrongPassphrase
from engine.events import EventHub
from engine.identity import PASSPHRASE, new_passphrase
from engine.links.admin import ServerChanged, ServerRemoved
from engine.links.agent import Ack, Authorization, AuthorizeRequest, HeartbeatRequest, RegisterRequest
from engine.links.management import HeartbeatAnswer, MobilityUpdate, Registered
from engine.pki import AppliancePKI
from engine.records import DiskSpace, Health, HealthCause, ServerReach, ServerState, ServerStatus
from engine.replication import Replication
from engine.secrets import SecretStore
from engine.state import ServerRecord, StateDB

if TYPE_CHECKING:
    from engine.updater.mobility import MobilityUpdates

log = logging.getLogger(__name__)

#: Heartbeats missed before a server is shown as a warning, and seconds before it is critical.
MISSED_FOR_WARNING = 3
CRITICAL_AFTER = 120.0
#: Wrong passphrases an address may send within the window before it must wait.
MAX_FAILED_REGISTRATIONS = 5
FAILED_REGISTRATION_WINDOW = 60.0

#: Asks the licence whether a new server may be registered or enabled (raises LicenceRequired if not).
LicenceCheck = Callable[[Literal["register", "enable"]], None]


def _no_licence_check(what: Literal["register", "enable"]) -> None:
    return None


class Inventory:
    def __init__(self, *, state: StateDB, pki: AppliancePKI, secrets: SecretStore, hub: EventHub,
                 replication: Replication, heartbeat_interval: float, management_port: int,
                 licence_check: LicenceCheck = _no_licence_check) -> None:
        self.replication = replication
        self._state = state
        self._pki = pki
        self._secrets = secrets
        self._hub = hub
        self.heartbeat_interval = heartbeat_interval
        self.management_port = management_port
        self.data_port = 0
        self._licence_check = licence_check
        #: When each server (by id) last reached the management port, on which port, and the data port (this run).
        self._reached: dict[str, ServerReach] = {}
        #: The last (health, cause) seen per server name, to turn changes into events.
        self._health: dict[str, tuple[Health, HealthCause | None]] = {}
        #: Whether a server was last published with a rate, to publish it again when the rate goes stale.
        self._moving: dict[str, bool] = {}
        self._failures: dict[str, list[float]] = {}
        #: The data directory's file system as the supervisor last measured it.
        self.disk_space: DiskSpace | None = None
        #: The mobility version offered to the sources and their updates (None: nothing is offered).
        self.mobility_updates: MobilityUpdates | None = None

    def __repr__(self) -> str:
        return f"<Inventory servers={self._state.count_servers()}>"

    # --- views ------------------------------------------------------------------------------
    def status(self, row: ServerRecord, now: float | None = None) -> ServerStatus:
        now = time.time() if now is None else now
        last = row.last_heartbeat
        age = now - last if last is not None else float("inf")
        health = Health.HEALTHY
        cause: HealthCause | None = None
        detail: str | None = None
        summary = self.replication.summary(row, now)
        disk = self.disk_space if row.replicate else None  # what it costs a server that is not replicating: nothing
        disk_level = disk.level if disk is not None else "ok"
        if disk is not None and disk_level == "full":
            # First: it stops this server's replication, and is why its heartbeats may go unrecorded.
            health, cause, detail = Health.CRITICAL, HealthCause.DISK_FULL, disk.detail
        elif age > self.heartbeat_interval * MISSED_FOR_WARNING:
            health = Health.CRITICAL if age > CRITICAL_AFTER else Health.WARNING
            cause = HealthCause.AGENT_NOT_SEEN
            detail = (f"No heartbeat for {duration_text(age)}. Check that the mobility service runs on "
                      f"{row.hostname} and reaches the appliance on port {self.management_port}.")
        elif summary.cause is not None and summary.state in (ServerState.ERROR, ServerState.PAUSED):
            cause, detail = summary.cause
            health = Health.CRITICAL
        elif disk is not None and disk_level != "ok":
            health = Health.CRITICAL if disk_level == "critical" else Health.WARNING
            cause, detail = HealthCause.DISK_SPACE_LOW, disk.detail
        elif summary.cause is not None:
            cause, detail = summary.cause
            # disk-full: its batches are refused
            health = Health.CRITICAL if cause == HealthCause.DISK_FULL else Health.WARNING
        return ServerStatus(
            server_id=row.server_id, name=row.name, hostname=row.hostname, os=row.os,
            agent_version=row.agent_version, state=summary.state, health=health,
            health_cause=cause, health_detail=detail, registered_at=row.registered_at, last_heartbeat=last,
            address=row.address, disks=self.replication.disk_statuses(row, now),
            replicating=row.replicate, policy=row.policy, max_mbps=row.max_mbps,
            rpo_seconds=summary.rpo, last_recovery_point=summary.last_point, newest_data_at=summary.newest_data_at,
            rpo_threshold=summary.rpo_threshold,
            mobility_version=row.agent_version, mobility_update=self._mobility_status(row),
        )

    def _mobility_status(self, row: ServerRecord) -> str:
        """The server's mobility update as the admin sees it ("" when nothing is offered)."""
        if self.mobility_updates is None:
            return ""
        try:
            return self.mobility_updates.status_of(row, row.agent_version)
        except Exception:  # a bug there must not hide the server
            log.exception("mobility.status-failed server=%s", row.name)
            return ""

    def row(self, name: str) -> ServerRecord:
        row = self._state.server(name=name)
        if row is None:
            raise UnknownServer(f"No server named {name!r} is registered. `godwit vm list` shows the names.")
        return row

    def publish(self, server_id: str) -> None:
        self._publish(server_id)

    def servers(self) -> list[ServerStatus]:
        now = time.time()
        return [self.status(r, now) for r in self._state.servers()]

    def server(self, name: str) -> ServerStatus:
        return self.status(self.row(name))

    def _publish(self, server_id: str) -> None:
        row = self._state.server(server_id=server_id)
        if row is not None:
            status = self.status(row)
            self._note_health(status)
            self._note_rate(status)
            self._hub.publish(ServerChanged(status))

    def _note_health(self, status: ServerStatus) -> bool:
        """Record an event when a server's health cause changes; True if anything changed.

        An event the state database has no room for is recorded later: the change stays unnoted and
        is tried again at the next look (a full disk must not fail the heartbeat that noticed it)."""
        now = (status.health, status.health_cause)
        before = self._health.get(status.name)
        if before is None or before == now:
            self._health[status.name] = now
            return before is None
        cause, old_cause = now[1], before[1]
        try:
            # segment-corrupt is recorded where it happens (the log processor's report), the appliance's
            # disk by the supervisor (once, not per server)
            if cause is not None and cause != old_cause and cause != HealthCause.SEGMENT_CORRUPT \
                    and not cause.about_appliance_disk:
                self._hub.record("warning" if status.health == Health.WARNING else "error",
                                 "server-not-seen" if cause == HealthCause.AGENT_NOT_SEEN else cause.value,
                                 f"{status.name}: {status.health_detail}", server=status.name)
            elif cause is None and old_cause == HealthCause.AGENT_NOT_SEEN:
                self._hub.record("info", "server-seen-again", f"{status.name} is sending heartbeats again.",
                                 server=status.name)
            elif cause is None:
                self._hub.record("info", "server-healthy", f"{status.name} is healthy again.", server=status.name)
        except DiskFull as exc:
            log.warning("health.event-deferred server=%s: %s", status.name, exc)
            return True
        self._health[status.name] = now
        return True

    def _note_rate(self, status: ServerStatus) -> bool:
        """True when a server's rate appeared or went stale since it was last published (it is about to be)."""
        moving = any(d.throughput_bps > 0 for d in status.disks)
        changed = self._moving.get(status.name, False) != moving
        self._moving[status.name] = moving
        return changed

    # --- passphrase ---------------------------------------------------------------------------
    def passphrase(self) -> str:
        value = self._secrets.get(PASSPHRASE)
        assert value is not None, "created at first start"
        return value

    def rotate_passphrase(self) -> None:
        self._secrets.set(PASSPHRASE, new_passphrase())
        self._hub.record("info", "passphrase-rotated",
                         "The registration passphrase was rotated. Registered servers are not affected; "
                         "new servers need the new passphrase.")

    # --- from the management port ------------------------------------------------------------------
    def register(self, request: RegisterRequest) -> Registered:
        reg, address = request.registration, str(request.address)
        name = reg.name
        now = time.monotonic()
        recent = [t for t in self._failures.pop(address, []) if now - t < FAILED_REGISTRATION_WINDOW]
        if recent:  # an address that stopped failing is forgotten: the table does not grow without end
            self._failures[address] = recent
        if len(recent) >= MAX_FAILED_REGISTRATIONS:
            raise TooManyAttempts(f"Too many wrong passphrases from {address}: wait a minute, then register with "
                                  "the passphrase shown on the console's Setup page.")
        if not hmac.compare_digest(reg.passphrase.encode(), self.passphrase().encode()):
            self._failures[address] = [*recent, now]
            self._hub.record("warning", "registration-refused",
                             f"A server calling itself {name!r} from {address} gave a wrong passphrase.")
            raise WrongPassphrase(
                "The appliance refused the registration passphrase. Copy the current passphrase from the "
                "console's Setup page or `godwit setup show` (it changes when rotated)."
            )
        self._licence_check("register")
        if self._state.server(name=name) is not None:
            raise NameTaken(f"A server named {name!r} is already registered with this appliance. Give this one "
                            "another --name, or forget the old one on the appliance (`godwit vm forget`).")
        facts = reg.facts
        server_id = str(uuid.uuid4())
        cert_pem = self._pki.sign_client(reg.csr, server_id)
        serial = x509.load_pem_x509_certificate(cert_pem.encode()).serial_number
        self._state.add_server(server_id=server_id, name=name, hostname=facts.hostname, os=facts.os,
                               agent_version=facts.agent_version, cert_serial=serial, address=address,
                               disks=list(facts.disks))
        # A disk that can be neither frozen (with a file system on it) nor cloned is said so when it registers.
        caveats = "".join(f" {d.path}: {d.note}" for d in facts.disks
                          if d.capture in ("none", "idle-check") or (d.capture == "freeze"
                                                                      and not d.note.startswith("Frozen")))
        self._hub.record("warning" if caveats else "info", "server-registered",
                         f"{name} ({facts.hostname}, {facts.os}) registered with {len(facts.disks)} disk(s).{caveats}",
                         server=name)
        self._publish(server_id)
        row = self._state.server(server_id=server_id)
        assert row is not None, "just added"
        return Registered(server_id=server_id, name=name, certificate=cert_pem,
                          answer=self._answer(row, came_on=request.port))

    def _current(self, server_id: str, serial: int, what: str) -> ServerRecord:
        """The server's row if this certificate is its current one; else :class:`Revoked`."""
        row = self._state.server(server_id=server_id)
        if self._state.is_revoked(serial) or row is None or row.cert_serial != serial:
            log.warning("%s.refused server_id=%s reason=revoked", what, server_id)
            raise Revoked("This server's registration was revoked by the appliance admin. To register it again, "
                          "delete its state directory and run the mobility service with the current passphrase.")
        return row

    def authorize(self, request: AuthorizeRequest) -> Authorization:
        row = self._current(request.server_id, request.serial, "stream")
        self.reached_data(row)
        return Authorization(name=row.name, desired=self.replication.desired_state(row))

    def heartbeat(self, request: HeartbeatRequest) -> HeartbeatAnswer:
        server_id = request.server_id
        row = self._current(server_id, request.serial, "heartbeat")
        facts = request.facts
        self._state.record_heartbeat(server_id, hostname=facts.hostname, os=facts.os,
                                     agent_version=facts.agent_version, address=request.address,
                                     disks=list(facts.disks), at=time.time())
        before = self._reached.get(server_id)
        self._reached[server_id] = ServerReach(name=row.name, management_at=time.time(), management_port=request.port,
                                               data_at=before.data_at if before else None)
        for notice in facts.notices:
            self._hub.record(notice.severity, notice.code, f"{row.name}: {notice.message}",
                             server=row.name)
        if facts.update is not None and self.mobility_updates is not None:
            self.mobility_updates.reported(row, facts.update)
        self.replication.points_taken[server_id] = facts.points
        if facts.clock is not None:  # what the source's clock is ahead of ours (the trip is a rounding error)
            self.replication.clock_skew[server_id] = facts.clock - time.time()
        # a heartbeat changes nothing the desired state depends on; the version it runs is in the facts. The answer
        # comes before the push to the consoles: a mobility update it offers shows as under way at once.
        answer = self._answer(row, came_on=request.port, running=facts.agent_version)
        self._publish(server_id)
        return answer

    def _answer(self, row: ServerRecord, *, came_on: int | None, running: str | None = None) -> HeartbeatAnswer:
        """The answer to a heartbeat (or registration) that came in on the management port ``came_on``: it names
        the current management port only when that is another one (the port moved; a source that reaches this
        one through a forwarded port of another number is left alone), and the mobility version offered to a
        server that runs an older one (``running``, default: the version recorded)."""
        moved = came_on is not None and came_on != self.management_port
        return HeartbeatAnswer(heartbeat_interval=self.heartbeat_interval, data_port=self.data_port,
                               desired=self.replication.desired_state(row),
                               management_port=self.management_port if moved else None,
                               mobility_update=self._mobility_offer(row, running or row.agent_version))

    def _mobility_offer(self, row: ServerRecord, running: str) -> MobilityUpdate | None:
        if self.mobility_updates is None:
            return None
        try:
            return self.mobility_updates.offer(row, running)
        except Exception:  # e.g. a full disk for its note, or a bug: the heartbeat's answer matters more
            log.exception("mobility.offer-failed server=%s", row.name)
            return None

    def feed_access(self, request: AuthorizeRequest) -> Ack:
        """May the holder of this certificate read the mobility feed? Only a registered server's current one
        (:class:`Revoked` otherwise)."""
        self._current(request.server_id, request.serial, "mobility-feed")
        return Ack(True)

    # --- where the servers reach the appliance --------------------------------------------------------
    def reached_data(self, row: ServerRecord) -> None:
        """The server reached the data port (a connection authorized or a batch received) just now."""
        before = self._reached.get(row.server_id)
        self._reached[row.server_id] = ServerReach(
            name=row.name, management_at=before.management_at if before else row.last_heartbeat,
            management_port=before.management_port if before else None, data_at=time.time())

    def reach(self) -> list[ServerReach]:
        """When each registered server last reached each port (the ports used before this engine started
        are not known; its last heartbeat is)."""
        out = []
        for row in self._state.servers():
            seen = self._reached.get(row.server_id)
            out.append(seen or ServerReach(name=row.name, management_at=row.last_heartbeat, management_port=None,
                                           data_at=None))
        return out

    # --- admin -----------------------------------------------------------------------------------
    def forget(self, name: str) -> None:
        row = self.row(name)
        if row.replicate:
            self.replication.disable(row)
        self._state.revoke_server(row.server_id)
        if self.mobility_updates is not None:
            self.mobility_updates.forget(row.server_id)
        self._reached.pop(row.server_id, None)
        self._health.pop(name, None)
        self._moving.pop(name, None)
        self._hub.record("warning", "server-forgotten",
                         f"{name} was forgotten: its certificate is revoked and its next connection is refused.",
                         server=name)
        self._hub.publish(ServerRemoved(name))

    async def watch_health(self) -> None:
        """Notice servers that stop sending heartbeats, and rates that went stale (nobody else would:
        they are silent), and the appliance's disk space as it changes."""
        while True:
            try:
                now = time.time()
                for row in self._state.servers():
                    status = self.status(row, now)
                    if self._note_health(status) | self._note_rate(status):
                        self._hub.publish(ServerChanged(status))
            except Exception:  # e.g. a full disk for the event: keep watching
                log.exception("health.watch-failed")
            await asyncio.sleep(min(1.0, self.heartbeat_interval))
