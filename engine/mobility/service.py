"""``godwit mobility run``: a source server's side of the appliance.

Synchronous on purpose: it is a small loop on someone else's server (register once, then a
heartbeat every few seconds), and the data path it grows into runs best on blocking sockets in
threads (see PERFORMANCE.md). State lives in ``--state-dir``: the server id, its client key and
certificate, and the appliance CA it pinned.

Changes at once: an appliance of management 1.4 names the generation of the server's desired state in each
heartbeat's answer. A thread of its own then long-polls ``GET /v1/desired`` with it, on a second kept-alive
connection; when the appliance answers that the desired state changed (enable, disable, resync, a bandwidth cap,
a policy), the main loop sends its next heartbeat at once instead of at the end of the interval, and follows the
answer. Heartbeats stay the fallback: against an older appliance, or while the long poll fails, nothing else
changes.

Updates: a heartbeat answer may offer a newer mobility version and say to install it now. The service then
downloads it from the appliance's management port (mutual TLS), verifies it against the update feed's
signed metadata from the trusted root it ships with (the appliance re-serves that metadata; it cannot make
a package of its own pass), unpacks it beside the version that runs (:mod:`engine.mobility.versions`), stops
replication the normal way (acknowledged data is durable, tracking state kept) and restarts into it, on
trial: the launcher (:mod:`engine.mobility.launcher`) rolls it back if it does not reach the appliance in
time. Every outcome is reported with the next heartbeat (``ServerFacts.update``).
"""

from __future__ import annotations

import dataclasses
import functools
import json
import logging
import os
import platform
import shutil
import socket
import ssl
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, TypeVar
from urllib.parse import quote

from engine import __version__
from engine.backoff import Backoff
from engine.errors import ApplianceUnreachable, BadInput, EngineError, FeedInvalid, FingerprintMismatch
from engine.files import write_atomically
from engine.links import encode
from engine.links.management import (
    MAX_NOTICES,
    DesiredChange,
    HeartbeatAnswer,
    MobilityUpdate,
    Notice,
    PointFacts,
    Registered,
    ServerFacts,
    UpdateReport,
)
from engine.mobility.appliance_client import MANAGEMENT_TIMEOUT, ApplianceClient, management_client
from engine.mobility.consistency import Freezer
from engine.mobility.replicator import FREEZE_BUDGET, Desired, Replicator, SnapshotHooks, retryable
from engine.mobility.sources import describe
from engine.mobility.versions import CHILD_ENV, RESTART_EXIT, VersionStore
from engine.pki import key_pem, make_csr, new_key, parse_fingerprint, verify_pinned_ca
from engine.records import Disk
from engine.updater import MOBILITY_PACKAGE, version_tuple

log = logging.getLogger(__name__)
T = TypeVar("T")

#: How long a registration or heartbeat the appliance did not take waits before it is sent again.
RETRY = Backoff((1.0, 2.0, 4.0, 8.0, 15.0, 30.0))
#: Heartbeats tried on a management port the appliance moved to before going back to the port that answered,
#: and how long (seconds) that port is then left alone.
TRIAL_ATTEMPTS = 3
SHUN_PORT_FOR = 600.0
#: Notices waiting for a heartbeat, at most (older ones are kept, newer dropped: the first says why).
MAX_PENDING_NOTICES = 64
#: The management port refuses longer text fields.
MAX_TEXT = 512
#: Seconds a long poll of the desired state asks the appliance to hold it (it holds one at most 25 s).
DESIRED_WAIT = 25.0
#: Seconds at most that a wait of the service's loops lasts before it looks at ``stop`` again.
STOP_CHECK = 0.25
#: Seconds between two heartbeats sent early for a change, at least: a long poll that kept answering "changed"
#: must not become a stream of heartbeats.
EARLY_SPACING = 0.2


def read_passphrase(path: Path) -> str:
    """The registration passphrase from a file, or a :class:`BadInput` that says what is wrong."""
    try:
        raw = path.read_bytes()
    except FileNotFoundError as exc:
        raise BadInput(f"Passphrase file {path} does not exist: write the passphrase from the console's "
                       "Setup page into it.") from exc
    except OSError as exc:
        raise BadInput(f"Passphrase file {path} cannot be read ({exc.strerror}).") from exc
    if len(raw) > 1024:
        raise BadInput(f"Passphrase file {path} is {len(raw)} bytes: it should hold only the passphrase.")
    try:
        text = raw.decode("utf-8").strip()
    except UnicodeDecodeError as exc:
        raise BadInput(f"Passphrase file {path} is not text: it should hold only the passphrase.") from exc
    if not 8 <= len(text) <= 128 or not text.isprintable():
        raise BadInput(f"Passphrase file {path} does not hold a passphrase (one line of 8-128 printable "
                       "characters, as shown on the console's Setup page).")
    return text


def parse_appliance(text: str, default_port: int = 443) -> tuple[str, int]:
    host, sep, port = text.strip().rpartition(":")
    if not sep or "]" in port:
        host, port = text.strip(), str(default_port)
    host = host.strip("[]")
    if not host or not port.isdigit() or not 1 <= int(port) <= 65535:
        raise BadInput(f"--appliance {text!r} is not HOST or HOST:PORT (e.g. appliance.example.com:443).")
    return host, int(port)


def disk_size(path: str) -> int:
    fd = os.open(path, os.O_RDONLY)
    try:
        return os.lseek(fd, 0, os.SEEK_END)
    finally:
        os.close(fd)


def _clip(text: str | None) -> str | None:
    """A text cut to what the management port accepts (a long list of mounts must not stop heartbeats)."""
    return None if text is None else text[:MAX_TEXT]


def _disk_facts(path: str, size: int, how: dict[str, str]) -> Disk:
    return Disk(path=path, size=size, capture=_clip(how.get("capture")) or "",
                tracking=_clip(how.get("tracking")) or "", note=_clip(how.get("note")) or "")


def describe_os() -> str:
    try:
        return platform.freedesktop_os_release().get("PRETTY_NAME") or platform.platform()
    except OSError:
        return platform.platform()


def registration_body(*, passphrase: str, csr: str, name: str, facts: ServerFacts) -> dict[str, Any]:
    """``POST /v1/register`` as :meth:`Registration.parse` reads it: the facts' fields beside the others."""
    return {"passphrase": passphrase, "csr": csr, "name": name, **encode(facts)}


@dataclass(frozen=True)
class Identity:
    server_id: str
    name: str
    ca_fingerprint: str


class MobilityService:
    def __init__(self, *, appliance: str, passphrase_file: Path, ca_fingerprint: str, state_dir: Path,
                 disks: list[str], name: str | None, stop: threading.Event,
                 hooks: SnapshotHooks | None = None, freeze_budget: float = FREEZE_BUDGET,
                 version: str = __version__) -> None:
        self.hooks = hooks or SnapshotHooks()
        #: The version that runs (the installed code's, or the installed version the launcher runs).
        self.version = version
        self.versions = VersionStore(state_dir)
        #: Guards the update's state below (the update runs in a thread of its own).
        self._update_lock = threading.Lock()
        self._update_thread: threading.Thread | None = None
        #: What is being installed now, a failure not told yet, and the record's outcome not told yet.
        self._installing: UpdateReport | None = None
        self._update_failure: UpdateReport | None = None
        self._recorded: UpdateReport | None = None
        #: This version reached the appliance since the switch to it (or was never on trial).
        self._confirmed = False
        #: A version downloaded, verified and unpacked: stop, and restart into it.
        self.switch_to: str | None = None
        self.appliance = appliance
        self.host, self.port = parse_appliance(appliance)
        #: While trying a management port the appliance moved to: the port we came from (None otherwise).
        self._trial_from: int | None = None
        #: A moved-to port that did not answer, and until when (monotonic) it is not tried again.
        self._shunned: tuple[int, float] = (0, 0.0)
        self.fingerprint = parse_fingerprint(ca_fingerprint)
        self.passphrase_file = passphrase_file
        self.state_dir = state_dir
        self.disks = [os.path.abspath(d) for d in disks]
        self.name = name or socket.gethostname()
        self.stop = stop
        self.heartbeat_interval = 5.0
        self.data_port: int | None = None
        #: The generation of the desired state the last heartbeat's answer held, and heartbeats answered so far
        #: (guarded by ``_beat``, which is notified after each). None: the appliance names none (before
        #: management 1.4): heartbeats only.
        self._generation: str | None = None
        self._beats = 0
        self._beat = threading.Condition()
        #: Set by the long poll when the desired state changed: the main loop sends a heartbeat at once.
        self._nudge = threading.Event()
        #: The long poll's thread and connection, and the event that ends it (guarded by ``_watch_lock``).
        self._watcher: threading.Thread | None = None
        self._watch_client: ApplianceClient | None = None
        self._watch_stop = threading.Event()
        self._watch_lock = threading.Lock()
        #: Heartbeats sent early because the long poll said that the desired state changed.
        self.early_heartbeats = 0
        self.replicator: Replicator | None = None
        #: A source disk that could not be read stopped replication (None: reading works).
        self.read_failure: str | None = None
        self.freeze_budget = freeze_budget
        self._described: dict[str, dict[str, str]] = {}
        self._notices: list[Notice] = []
        self._notices_lock = threading.Lock()
        for d in self.disks:
            if not os.path.exists(d):
                raise BadInput(f"Disk {d} does not exist: give the path of a block device or disk image with --disk.")
            try:
                disk_size(d)
            except OSError as exc:
                raise BadInput(f"Disk {d} cannot be opened ({exc.strerror}).") from exc

    def __repr__(self) -> str:
        return (f"<MobilityService {self.name} appliance={self.host}:{self.port} disks={len(self.disks)} "
                f"generation={self._generation} early_heartbeats={self.early_heartbeats}>")

    # --- files in the state dir ----------------------------------------------------------------
    @property
    def _identity_file(self) -> Path:
        return self.state_dir / "identity.json"

    @property
    def _port_file(self) -> Path:
        """The management port the appliance moved to, and the --appliance it was learnt under."""
        return self.state_dir / "management-port.json"

    def _learnt_port(self) -> None:
        """Use the management port the appliance told us about, unless the admin gave another --appliance since
        (then the command line wins: e.g. a server pointed at a new appliance, or at the new port by hand)."""
        try:
            raw = json.loads(self._port_file.read_text())
            given, port = str(raw["given"]), int(raw["port"])
        except (OSError, ValueError, KeyError, TypeError):
            return
        if given == self.appliance and 1 <= port <= 65535 and port != self.port:
            log.info("using management port %d, which the appliance moved to (was %d)", port, self.port)
            self.port = port

    def _follow_port(self, port: int | None) -> bool:
        """The appliance names its new management port when the one we used is being left: try it (True: reconnect
        there). It is kept only once a heartbeat got through (:meth:`_kept_port`); a port that did not answer is
        not tried again for a while."""
        if port is None or port == self.port or not 1 <= port <= 65535 or self._trial_from is not None:
            return False
        shunned_port, until = self._shunned
        if port == shunned_port and time.monotonic() < until:
            return False
        log.info("the appliance's management port moved from %d to %d: sending heartbeats there from now on",
                 self.port, port)
        self._trial_from, self.port = self.port, port
        return True

    def _kept_port(self) -> None:
        """A heartbeat got through on the port we moved to: remember it (across restarts)."""
        if self._trial_from is not None:
            self._trial_from = None
            self._save(self._port_file.name, json.dumps({"given": self.appliance, "port": self.port}).encode(), 0o644)

    def _port_failed(self) -> None:
        """The port we moved to did not answer: back to the one that did (the appliance keeps it open meanwhile)."""
        assert self._trial_from is not None
        log.warning("the appliance's new management port %d does not answer from here (a firewall?): back to "
                    "port %d, and trying it again in %.0f min", self.port, self._trial_from, SHUN_PORT_FOR / 60)
        self._shunned = (self.port, time.monotonic() + SHUN_PORT_FOR)
        self.port, self._trial_from = self._trial_from, None

    def load_identity(self) -> Identity | None:
        try:
            raw = json.loads(self._identity_file.read_text())
            ident = Identity(server_id=raw["server_id"], name=raw["name"], ca_fingerprint=raw["ca_fingerprint"])
        except FileNotFoundError:
            return None
        except (ValueError, KeyError, TypeError) as exc:
            raise BadInput(f"{self._identity_file} is damaged: delete the state directory to register anew.") from exc
        if ident.ca_fingerprint != self.fingerprint:
            raise FingerprintMismatch(
                f"{self.state_dir} is registered with the appliance whose CA is {ident.ca_fingerprint}, not "
                f"{self.fingerprint}. Use another --state-dir to register with another appliance.")
        return ident

    def _save(self, name: str, data: bytes, mode: int = 0o600) -> None:
        write_atomically(self.state_dir / name, data, mode=mode)

    # --- what the appliance is told ------------------------------------------------------------------
    def notify(self, severity: Literal["info", "warning"], code: str, message: str) -> None:
        """Tell the admin once, as an event, with the next heartbeat."""
        with self._notices_lock:
            if len(self._notices) < MAX_PENDING_NOTICES:
                self._notices.append(Notice(severity=severity, code=code, message=message[:MAX_TEXT]))

    def facts(self) -> ServerFacts:
        """What this server says about itself in its registration and every heartbeat."""
        disks = []
        replicator = self.replicator
        sources = replicator.sources if replicator is not None and replicator.is_alive() else []
        for i, d in enumerate(self.disks):
            size = self._size_or_zero(d)
            if size == 0:
                log.warning("disk %s is missing or cannot be read; reported with size 0", d)
            if i < len(sources):
                how = sources[i].facts()
            else:
                if d not in self._described:
                    self._described[d] = describe(d)
                how = self._described[d]
            disks.append(_disk_facts(d, size, how))
        with self._notices_lock:
            notices = tuple(self._notices[:MAX_NOTICES])
        points: PointFacts | None = None
        if sources and replicator is not None:
            taken = replicator.capture.facts()
            points = dataclasses.replace(taken, deferred=_clip(taken.deferred), inconsistent=_clip(taken.inconsistent))
        if self.read_failure is not None:
            if replicator is not None and replicator.is_alive() and replicator.cycles_done:
                log.info("the source disks are read again")
                self.read_failure = None
            else:
                points = dataclasses.replace(points or PointFacts(), deferred=_clip(
                    f"Recovery points are deferred: {self.read_failure}. The mobility service retries by itself; "
                    "check the source disk."))
        return ServerFacts(hostname=socket.gethostname(), os=describe_os(), agent_version=self.version,
                           disks=tuple(disks), notices=notices, points=points, clock=time.time(),
                           update=self._update_report())

    def _sent(self, facts: ServerFacts) -> None:
        """The appliance has these notices (and this update report) now."""
        with self._notices_lock:
            del self._notices[:len(facts.notices)]
        self._update_sent(facts.update)

    # --- updates of the service itself ------------------------------------------------------------------
    def _update_report(self) -> UpdateReport | None:
        """What the next heartbeat says about this service's update: a failure first, then an install under way,
        then the outcome the record keeps (updated, rolled back)."""
        with self._update_lock:
            return self._update_failure or self._installing or self._recorded

    def _load_record(self) -> None:
        """At start: the outcome of the switch to this version (or of a rollback to it) to report."""
        record = self.versions.read()
        if record is None or record.current != self.version:
            self._confirmed = True
            return
        self._confirmed = record.confirmed
        report = record.report or {}
        if report.get("outcome") in ("updated", "rolled-back"):
            self._recorded = UpdateReport(version=report.get("version", "")[:64],
                                          outcome=report["outcome"],  # type: ignore[arg-type]
                                          previous=report.get("previous", "")[:64],
                                          reason=report.get("reason", "")[:MAX_TEXT])

    def _update_sent(self, sent: UpdateReport | None) -> None:
        """A heartbeat got through carrying ``sent``: a version on trial is confirmed, what was told is done."""
        with self._update_lock:
            if sent is not None and sent is self._update_failure:
                self._update_failure = None
            told = sent is not None and sent is self._recorded
            if told:
                self._recorded = None
        if self._confirmed and not told:
            return
        record = self.versions.read()
        if record is not None and record.current == self.version:
            try:
                self.versions.write(dataclasses.replace(record, confirmed=True,
                                                        report=None if told else record.report))
            except OSError as exc:  # e.g. a full disk: confirmed with a later heartbeat
                log.warning("could not write %s (%s): trying again with the next heartbeat",
                            self.versions.record_path, exc.strerror or exc)
                return
            if not record.confirmed:
                log.info("mobility %s reached the appliance: it stays", self.version)
        self._confirmed = True

    def _consider(self, offer: MobilityUpdate | None) -> None:
        """Install an offered version when the appliance says so (in a thread: heartbeats and replication go on
        meanwhile). One change at a time: not while an update runs, a failure is not told yet, or this version
        is on trial."""
        if offer is None or not offer.install:
            return
        new, own = version_tuple(offer.version), version_tuple(self.version)
        if new is None or own is None or new <= own:
            return
        with self._update_lock:
            if self._installing is not None or self._update_failure is not None or self.switch_to is not None:
                return
            record = self.versions.read()
            if record is not None and record.current == self.version and record.in_trial(time.time()):
                return
            self._installing = UpdateReport(version=offer.version, outcome="updating", previous=self.version)
            self._update_thread = threading.Thread(target=self._install, args=(offer, self.host, self.port),
                                                   name=f"update-{offer.version}", daemon=True)
        self._update_thread.start()

    def _install(self, offer: MobilityUpdate, host: str, port: int) -> None:
        """Download, verify and unpack ``offer``; then stop the service to restart into it. A failure is kept for
        the next heartbeat; nothing is installed then."""
        log.info("installing mobility %s, which the appliance offers (this is %s)", offer.version, self.version)
        client = None
        try:
            from engine.updater.feed import FeedClient, trusted_root

            where = f"[{host}]" if ":" in host else host
            client = FeedClient(f"https://{where}:{port}/v1/mobility/feed", metadata_dir=self.versions.metadata_dir,
                                download_dir=self.versions.download_dir, trusted_root=trusted_root(),
                                tls=(self.state_dir / "client.crt", self.state_dir / "client.key",
                                     self.state_dir / "ca.crt"))
            index = client.refresh()
            target = index.find(MOBILITY_PACKAGE, offer.version)
            if target is None or (target.path, target.length, target.sha256) != (offer.target, offer.length,
                                                                                 offer.sha256):
                listed = f"{target.path} of {target.length} bytes, sha256 {target.sha256[:16]}…" if target else \
                    f"no mobility {offer.version}"
                raise FeedInvalid(f"The appliance offered mobility {offer.version} as {offer.target} of {offer.length} "
                                  f"bytes, sha256 {offer.sha256[:16]}…, but the signed metadata it serves lists "
                                  f"{listed}: refused, nothing was installed.")
            archive = client.download(target)
            if self.stop.is_set():
                return
            self.versions.prune({self.version})  # the one that runs stays, for rollback
            self.versions.unpack(archive, offer.version)
        except EngineError as exc:
            self._failed(offer, exc.message)
        except Exception as exc:  # a bug: say so plainly, the traceback goes to the log
            log.exception("the update to mobility %s failed", offer.version)
            self._failed(offer, f"the mobility service hit an internal error ({type(exc).__name__}); its log has "
                         "the details.")
        else:
            with self._update_lock:
                self.switch_to = offer.version
            log.info("mobility %s is verified and unpacked: stopping replication to restart into it",
                     offer.version)
            self.stop.set()
            self._nudge.set()  # the main loop sees the stop now, not at the end of its wait
        finally:
            if client is not None:
                client.close()
            shutil.rmtree(self.versions.download_dir, ignore_errors=True)
            with self._update_lock:
                self._installing = None

    def _failed(self, offer: MobilityUpdate, reason: str) -> None:
        log.warning("mobility %s was not installed: %s", offer.version, reason)
        with self._update_lock:
            self._update_failure = UpdateReport(version=offer.version, outcome="update-failed",
                                                previous=self.version, reason=reason[:MAX_TEXT])

    def finish_switch(self) -> None:
        """After the service stopped: make the version it unpacked the one that runs from the next start (on
        trial). Durable when it returns; when it cannot be written, the version that ran runs again (and says
        why in the log)."""
        assert self.switch_to is not None
        try:
            self.versions.switch(self.switch_to, previous=self.version)
        except (EngineError, OSError) as exc:
            why = exc.message if isinstance(exc, EngineError) else str(exc.strerror or exc)
            log.warning("could not switch to mobility %s (%s): mobility %s runs again", self.switch_to, why,
                        self.version)

    def _context(self, *, pinned_ca: bytes | None, client: bool) -> ssl.SSLContext:
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        ctx.minimum_version = ssl.TLSVersion.TLSv1_2
        # The appliance is trusted through the CA the admin pinned by fingerprint, not through names.
        ctx.check_hostname = False
        if pinned_ca is None:
            ctx.verify_mode = ssl.CERT_NONE
        else:
            ctx.load_verify_locations(cadata=pinned_ca.decode())
        if client:
            ctx.load_cert_chain(self.state_dir / "client.crt", self.state_dir / "client.key")
        return ctx

    # --- the service ---------------------------------------------------------------------------------
    def _retrying(self, what: str, fn: Callable[[], T], *, attempts: int | None = None) -> T | None:
        """Call ``fn`` until it succeeds or raises an error that is not :func:`retryable`; None when
        stopped, or after ``attempts`` failures. Each failure is one line that says why, and the wait grows
        up to ``RETRY.longest``."""
        attempt = 0
        unreachable = False
        while not self.stop.is_set() and (attempts is None or attempt < attempts):
            try:
                result = fn()
            except EngineError as exc:
                if not retryable(exc):
                    raise
                delay = RETRY.delay(attempt)
                attempt += 1
                unreachable = isinstance(exc, ApplianceUnreachable)
                if attempts is not None and attempt >= attempts:
                    log.warning("%s: %s", what, exc)
                    break
                log.warning("%s: %s Retrying in %.0f s.", what, exc, delay)
                self.stop.wait(delay)
                continue
            if attempt and unreachable:
                log.info("%s: the appliance %s:%d is reachable again.", what, self.host, self.port)
            elif attempt:
                log.info("%s: the appliance %s:%d accepted it again.", what, self.host, self.port)
            return result
        return None

    def register(self) -> Identity | None:
        passphrase = read_passphrase(self.passphrase_file)

        def attempt() -> Registered:
            with management_client(self.host, self.port, self._context(pinned_ca=None, client=False)) as unpinned:
                ca = unpinned.request("GET", "/v1/ca")
            if ca.status != 200:
                raise FingerprintMismatch(f"{self.host}:{self.port} is not a Godwit appliance's management port.")
            ca_pem = ca.body
            verify_pinned_ca(ca_pem, self.fingerprint)
            key = new_key()
            body = registration_body(passphrase=passphrase, csr=make_csr(key, self.name).decode(), name=self.name,
                                     facts=self.facts())
            with management_client(self.host, self.port, self._context(pinned_ca=ca_pem, client=False)) as pinned:
                answer = pinned.call("POST", "/v1/register", body, Registered)
            self._save("ca.crt", ca_pem, 0o644)
            self._save("client.key", key_pem(key, None))
            self._save("client.crt", answer.certificate.encode(), 0o644)
            return answer

        self.state_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        answer = self._retrying("registration", attempt)
        if answer is None:
            return None
        ident = Identity(server_id=answer.server_id, name=answer.name, ca_fingerprint=self.fingerprint)
        self._save("identity.json", json.dumps(ident.__dict__).encode(), 0o644)
        self._apply(answer.answer)
        self._follow_port(answer.answer.management_port)
        log.info("registered with %s:%d as %s (server id %s)", self.host, self.port, ident.name, ident.server_id)
        return ident

    def _apply(self, answer: HeartbeatAnswer) -> None:
        """Follow what the appliance asks for: heartbeat interval, data port, replicate or not."""
        if isinstance(answer.heartbeat_interval, int | float) and 0.1 <= answer.heartbeat_interval <= 3600:
            self.heartbeat_interval = float(answer.heartbeat_interval)
        if isinstance(answer.data_port, int):
            self.data_port = answer.data_port
        wanted = answer.desired
        if not wanted.replicate or wanted.policy is None or wanted.epoch is None:
            if self.replicator is not None:
                log.info("replication disabled by the appliance: stopping and forgetting local change tracking")
                self._stop_replicator()
                self._forget_tracking()
            return
        sizes = wanted.disk_sizes
        local = [self._size_or_zero(d) for d in self.disks]
        if sizes != local:
            if self.replicator is not None:
                log.error("a disk vanished or changed size (appliance has %s, here %s): replication paused",
                          sizes, local)
            self._stop_replicator()
            return
        desired = Desired(data_port=answer.data_port, policy=wanted.policy, max_mbps=wanted.max_mbps, disk_sizes=sizes,
                          resync_gen=wanted.resync_gen, epoch=wanted.epoch)
        if desired.epoch != self._epoch():
            # Replication was (re-)enabled: what we tracked belongs to an earlier copy; start over.
            self._stop_replicator()
            self._forget_tracking()
            tracking = Replicator.tracking_dir(self.state_dir, desired.epoch)
            (tracking / "resync.json").write_text(json.dumps({"done": desired.resync_gen}))
            (self.state_dir / "epoch.json").write_text(json.dumps({"epoch": desired.epoch}))
        if self.replicator is not None and self.replicator.is_alive() and \
                self.replicator.desired.data_port == desired.data_port:
            self.replicator.desired = desired  # policy and bandwidth cap apply live
            return
        failure = self.replicator.read_failure if self.replicator is not None else None
        if failure is not None and failure != self.read_failure:  # once per failure, not per restart
            self.notify("warning", "source-read-failed", f"Replication stopped: {failure}. It restarts by itself; "
                        "check the source disk.")
        self.read_failure = failure or self.read_failure
        self._stop_replicator()
        ca_pem = (self.state_dir / "ca.crt").read_bytes()
        self.replicator = Replicator(host=self.host, state_dir=self.state_dir, disks=self.disks,
                                     context=self._context(pinned_ca=ca_pem, client=True), desired=desired,
                                     hooks=self.hooks, freeze_budget=self.freeze_budget, notify=self.notify)
        self.replicator.start()
        log.info("replicating %d disk(s) to %s:%d", len(self.disks), self.host, desired.data_port)

    # --- the long poll of the desired state (management 1.4) ------------------------------------------------
    def _heard(self, generation: str | None, context: ssl.SSLContext) -> None:
        """A heartbeat's answer came with this generation of the desired state: the long poll asks about it from
        now on (its thread starts with the first generation an appliance names)."""
        with self._beat:
            self._generation = generation
            self._beats += 1
            self._beat.notify_all()
        if generation is not None and self._watcher is None:
            self._watcher = threading.Thread(target=self._watch_desired, args=(context,), name="desired-state",
                                             daemon=True)
            self._watcher.start()

    def _pause(self, seconds: float) -> None:
        """Wait ``seconds`` for the next heartbeat; less when stopped, or when the long poll says that the desired
        state changed (then the heartbeat goes now)."""
        deadline = time.monotonic() + seconds
        while not self.stop.is_set():
            left = deadline - time.monotonic()
            if left <= 0:
                return
            if self._nudge.wait(min(left, STOP_CHECK)):
                self._nudge.clear()
                if not self.stop.is_set():
                    self.early_heartbeats += 1
                return

    def _await_beat(self, seen: int) -> None:
        """Until a heartbeat after the ``seen``-th was answered (or the long poll ends)."""
        with self._beat:
            while self._beats <= seen and not self._watch_stop.is_set():
                self._beat.wait(STOP_CHECK)

    def _watch_desired(self, context: ssl.SSLContext) -> None:
        """Long-poll ``GET /v1/desired`` with the generation of the last heartbeat's answer, on a connection of its
        own, until the service stops. A change wakes the main loop for a heartbeat, then the poll waits for that
        heartbeat's answer (its new generation). Trouble the appliance may get over is retried with the
        heartbeats' backoff and said only in the debug log (the heartbeats say it); a refusal ends the long poll
        (heartbeats only) and makes the main loop send its heartbeat now, which says why and acts on it."""
        failures = 0
        last_nudge = 0.0
        client: ApplianceClient | None = None
        try:
            while not self._watch_stop.is_set():
                with self._beat:
                    generation, beats = self._generation, self._beats
                if generation is None:  # an answer without one: wait for a heartbeat that brings one
                    self._await_beat(beats)
                    continue
                if client is None or (client.host, client.port) != (self.host, self.port):
                    with self._watch_lock:
                        if self._watch_stop.is_set():
                            return
                        if client is not None:
                            client.close()
                        client = self._watch_client = management_client(
                            self.host, self.port, context, timeout=DESIRED_WAIT + MANAGEMENT_TIMEOUT)
                try:
                    path = f"/v1/desired?after={quote(generation, safe='')}&wait={DESIRED_WAIT:g}"
                    change = client.call("GET", path, None, DesiredChange)
                except EngineError as exc:
                    if self._watch_stop.is_set():
                        return
                    if not retryable(exc):
                        log.info("the appliance refused the long poll of this server's desired state (%s): "
                                 "following it by heartbeats only", exc.message)
                        self._nudge.set()
                        return
                    delay = RETRY.delay(failures)
                    failures += 1
                    log.debug("desired-state.poll-failed retry_in=%.0f: %s", delay, exc.message)
                    self._watch_stop.wait(delay)
                    continue
                failures = 0
                if change.changed and change.generation != generation:
                    self._watch_stop.wait(max(0.0, last_nudge + EARLY_SPACING - time.monotonic()))
                    with self._beat:
                        seen = self._beats
                    last_nudge = time.monotonic()
                    log.info("the appliance changed what this server is to do (desired state %s, was %s): asking it "
                             "now", change.generation, generation)
                    self._nudge.set()
                    self._await_beat(seen)
        finally:
            if client is not None:
                client.close()

    def _stop_watcher(self) -> None:
        """End the long poll: its connection is closed (a request in flight fails at once) and its thread joined."""
        with self._watch_lock:
            self._watch_stop.set()
            client = self._watch_client
        with self._beat:
            self._beat.notify_all()
        if client is not None:
            client.close()
        if self._watcher is not None and self._watcher is not threading.current_thread():
            self._watcher.join(timeout=5)

    def _epoch(self) -> int:
        try:
            return int(json.loads((self.state_dir / "epoch.json").read_text())["epoch"])
        except (OSError, ValueError, KeyError):
            return 0

    def _forget_tracking(self) -> None:
        for d in self.state_dir.glob("epoch-*"):
            shutil.rmtree(d, ignore_errors=True)

    @staticmethod
    def _size_or_zero(path: str) -> int:
        try:
            return disk_size(path)
        except OSError:
            return 0

    def _stop_replicator(self) -> None:
        if self.replicator is not None:
            self.replicator.stop.set()
            self.replicator.join(timeout=30)
            self.replicator = None

    def run(self) -> None:
        """Register if needed, then heartbeat until stopped. Trouble the appliance reports (5xx) is
        retried for as long as it lasts; raises :class:`EngineError` only on a refusal (a revoked
        registration, a wrong passphrase or name) or a wrong identity (see :func:`retryable`)."""
        self.state_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        for mount in Freezer(self.state_dir / "frozen.json").thaw_leftovers():
            self.notify("warning", "thawed", f"{mount} was left frozen by a mobility service that was killed; "
                        "thawed it.")
        self._learnt_port()
        ident = self.load_identity() or self.register()
        if ident is None:
            return
        self._load_record()
        ca_pem = (self.state_dir / "ca.crt").read_bytes()
        context = self._context(pinned_ca=ca_pem, client=True)
        client = management_client(self.host, self.port, context)
        log.info("sending heartbeats to %s:%d as %s", self.host, self.port, ident.name)
        try:
            while not self.stop.is_set():
                facts = self.facts()
                trying = self._trial_from is not None
                answer = self._retrying("heartbeat", functools.partial(client.call, "POST", "/v1/heartbeat", facts,
                                                                       HeartbeatAnswer),
                                        attempts=TRIAL_ATTEMPTS if trying else None)
                if answer is None and trying and not self.stop.is_set():
                    self._port_failed()
                    client.close()
                    client = management_client(self.host, self.port, context)
                    continue
                if answer is not None:
                    self._kept_port()
                    self._sent(facts)
                    self._apply(answer)
                    self._consider(answer.mobility_update)
                    self._heard(answer.desired_generation, context)
                    log.debug("heartbeat.complete interval=%s generation=%s", self.heartbeat_interval,
                              answer.desired_generation)
                    if self._follow_port(answer.management_port):
                        client.close()
                        client = management_client(self.host, self.port, context)
                        continue  # tell the appliance at once that we are on the new port
                self._pause(self.heartbeat_interval)
        finally:
            client.close()
            self._stop_watcher()
            self._stop_replicator()
            thread = self._update_thread
            if thread is not None and thread is not threading.current_thread():
                thread.join(timeout=5)  # a download in flight ends by itself (its deadline); not waited for long


def run(args: Any, argv: list[str] | None = None) -> None:
    """CLI entry for ``godwit mobility run``: blocks until SIGTERM/SIGINT. ``argv`` is this process's ``godwit``
    arguments (default ``sys.argv[1:]``): the launcher runs an installed version with the same ones."""
    import signal
    import sys

    argv = sys.argv[1:] if argv is None else argv
    child = os.environ.get(CHILD_ENV)
    if child is None and VersionStore(Path(args.state_dir)).plan(__version__) is not None:
        from engine.mobility.launcher import Launcher

        raise SystemExit(Launcher(VersionStore(Path(args.state_dir)), argv=argv).run())
    stop = threading.Event()
    terminated = threading.Event()

    def on_signal(*_: Any) -> None:
        terminated.set()
        stop.set()

    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, on_signal)
    hooks = SnapshotHooks(pre_command=args.pre_snapshot, post_command=args.post_snapshot,
                          freeze=tuple(args.freeze or ()))
    if not 1 <= args.freeze_budget_ms <= 60_000:
        raise BadInput("--freeze-budget-ms must be between 1 and 60000.")
    service = MobilityService(appliance=args.appliance, passphrase_file=Path(args.passphrase_file),
                              ca_fingerprint=args.ca_fingerprint, state_dir=Path(args.state_dir), disks=args.disk,
                              name=args.name, stop=stop, hooks=hooks, freeze_budget=args.freeze_budget_ms / 1000,
                              version=child or __version__)
    service.run()
    if service.switch_to is not None and not terminated.is_set():
        service.finish_switch()
        if child is not None:  # the launcher starts the version the record names now
            raise SystemExit(RESTART_EXIT)
        from engine.mobility.launcher import own_command

        log.info("mobility service stopped: restarting into mobility %s", service.switch_to)
        sys.stdout.flush()
        sys.stderr.flush()
        command = own_command(argv)
        os.execv(command[0], command)
    log.info("mobility service stopped")
