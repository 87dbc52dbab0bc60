"""The appliance's state database (SQLite, WAL): servers, revocations, events, settings, the servers' last day.

Only the engine supervisor opens it for writing; one connection, used from its event loop.
Statements are small and indexed, so they run inline.

A full disk is a state, not a crash: every write runs through :meth:`StateDB._write`. When SQLite
reports SQLITE_FULL, the database's reserve file (:class:`~engine.diskspace.SpaceReserve`) is given
back and the write tried once more; if there is no reserve left, the write raises
:class:`~engine.errors.DiskFull` (503, one line for whoever asked) and nothing was changed. The
supervisor creates the reserve again once there is room.
"""

from __future__ import annotations

import json
import logging
import sqlite3
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

from engine import diskspace
from engine.errors import DiskFull
from engine.records import Disk, Event, Policy, Severity, from_json, to_json

log = logging.getLogger(__name__)
T = TypeVar("T")

SCHEMA_VERSION = 1
_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS servers (
    server_id TEXT PRIMARY KEY,
    name TEXT NOT NULL UNIQUE,
    hostname TEXT NOT NULL,
    os TEXT NOT NULL,
    agent_version TEXT NOT NULL,
    cert_serial TEXT NOT NULL,
    registered_at REAL NOT NULL,
    last_heartbeat REAL,
    address TEXT,
    disks TEXT NOT NULL DEFAULT '[]',
    replicate INTEGER NOT NULL DEFAULT 0,
    policy TEXT,
    max_mbps REAL,
    enabled_at REAL,
    replicated_disks TEXT,
    resync_gen INTEGER NOT NULL DEFAULT 0
);
CREATE TABLE IF NOT EXISTS policies (
    name TEXT PRIMARY KEY,
    rpo_threshold REAL NOT NULL,
    retention REAL NOT NULL,
    crash_consistent_every REAL NOT NULL,
    app_consistent_every REAL
);
CREATE TABLE IF NOT EXISTS revoked (
    cert_serial TEXT PRIMARY KEY,
    server_id TEXT NOT NULL,
    name TEXT NOT NULL,
    revoked_at REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS events (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    ts REAL NOT NULL,
    severity TEXT NOT NULL,
    code TEXT NOT NULL,
    message TEXT NOT NULL,
    server TEXT
);
-- A server's mobility update (engine/updater/mobility.py): the version the admin asked it to install, the one
-- it was told to install, when, and when it said it is at it (an update under way), and the last version that
-- failed there and why.
CREATE TABLE IF NOT EXISTS mobility_updates (
    server_id TEXT PRIMARY KEY REFERENCES servers(server_id) ON DELETE CASCADE,
    requested TEXT,
    started_version TEXT,
    started_at REAL,
    acknowledged_at REAL,
    failed_version TEXT,
    failed_reason TEXT
);
-- Each server's history of the last day, one row a minute (engine/server_history.py): what the server detail
-- charts after the engine restarted. Rows older than a day are deleted as new ones come; a forgotten server's go.
CREATE TABLE IF NOT EXISTS server_history (
    server_id TEXT NOT NULL REFERENCES servers(server_id) ON DELETE CASCADE,
    at REAL NOT NULL,
    received_bps REAL NOT NULL,
    applied_bps REAL NOT NULL,
    rpo_seconds REAL,
    PRIMARY KEY (server_id, at)
) WITHOUT ROWID;
-- The minute's pruning and the start-up load go by time across every server.
CREATE INDEX IF NOT EXISTS server_history_at ON server_history(at);
"""


@dataclass(frozen=True)
class ServerRecord:
    """A registered source server as the state database holds it."""

    server_id: str
    name: str
    hostname: str
    os: str
    agent_version: str
    cert_serial: int
    registered_at: float
    last_heartbeat: float | None
    address: str | None
    #: The disks as the source last described them.
    disks: tuple[Disk, ...]
    replicate: bool
    policy: str | None
    max_mbps: float | None
    enabled_at: float | None
    #: The disks' sizes when replication was enabled: the seed disks' sizes (the current sizes when
    #: not replicating).
    replicated_sizes: tuple[int, ...]
    resync_gen: int

    @property
    def epoch(self) -> int | None:
        """Which enabling of replication is current (ms timestamp): state left from an earlier one is
        never reused. None when the server does not replicate."""
        return int(self.enabled_at * 1000) if self.replicate and self.enabled_at is not None else None

    @classmethod
    def _from_row(cls, r: sqlite3.Row) -> ServerRecord:
        disks = tuple(from_json(Disk, d) for d in json.loads(r["disks"]))
        raw = r["replicated_disks"]
        sizes = tuple(int(x) for x in json.loads(raw)) if raw else tuple(d.size for d in disks)
        return cls(server_id=r["server_id"], name=r["name"], hostname=r["hostname"], os=r["os"],
                   agent_version=r["agent_version"], cert_serial=int(r["cert_serial"], 16),
                   registered_at=r["registered_at"], last_heartbeat=r["last_heartbeat"], address=r["address"],
                   disks=disks, replicate=bool(r["replicate"]), policy=r["policy"], max_mbps=r["max_mbps"],
                   enabled_at=r["enabled_at"], replicated_sizes=sizes, resync_gen=int(r["resync_gen"]))


@dataclass(frozen=True)
class MobilityUpdateRecord:
    """Where a server's mobility update stands, as the state database holds it (all None: nothing)."""

    server_id: str
    #: The version the admin asked this server to install (manual mode's Update).
    requested: str | None = None
    #: The version the server was told to install, and when: an update under way.
    started_version: str | None = None
    started_at: float | None = None
    #: When the server said it is installing that version (None: not yet).
    acknowledged_at: float | None = None
    #: The last version that failed to install (or was rolled back) on this server, and why.
    failed_version: str | None = None
    failed_reason: str | None = None


_MOBILITY_FIELDS = ("requested", "started_version", "started_at", "acknowledged_at", "failed_version",
                    "failed_reason")


def is_full(exc: BaseException) -> bool:
    """SQLite's "database or disk is full", told by its result code (never by its text)."""
    return isinstance(exc, sqlite3.Error) and (getattr(exc, "sqlite_errorcode", 0) & 0xFF) == sqlite3.SQLITE_FULL


class StateDB:
    def __init__(self, path: Path, *, reserve_bytes: int = 0) -> None:
        """Open (or create) the database; ``reserve_bytes`` > 0 keeps a reserve file next to it (see
        the module's doc; :meth:`keep_reserve` creates it)."""
        self.path = path
        self.reserve = diskspace.SpaceReserve(path.with_name(path.name + ".reserve"), reserve_bytes)
        try:
            self._db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
            self._db.row_factory = sqlite3.Row
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=FULL")
            self._db.execute("PRAGMA busy_timeout=5000")
            self._db.execute("PRAGMA foreign_keys=ON")
            self._write(lambda db: db.executescript(_SCHEMA), transaction=False)
        except sqlite3.Error as exc:
            if is_full(exc):
                raise self._full() from exc
            raise
        self._write(lambda db: db.execute("INSERT OR IGNORE INTO meta(key, value) VALUES('schema_version', ?)",
                                          (str(SCHEMA_VERSION),)))

    def __repr__(self) -> str:
        return f"<StateDB {self.path} reserve={self.reserve.held} servers={self.count_servers()}>"

    def close(self) -> None:
        self._db.close()

    @contextmanager
    def _tx(self) -> Iterator[sqlite3.Connection]:
        self._db.execute("BEGIN IMMEDIATE")
        try:
            yield self._db
            self._db.execute("COMMIT")
        except BaseException:
            # SQLITE_FULL (and a few others) may have rolled the transaction back already.
            if self._db.in_transaction:
                self._db.execute("ROLLBACK")
            raise

    def _write(self, change: Callable[[sqlite3.Connection], T], *, transaction: bool = True,
               use_reserve: bool = True) -> T:
        """Run ``change`` in one transaction. On SQLITE_FULL the reserve is released and the change
        tried once more; without a reserve to release it raises :class:`DiskFull` and nothing changed.
        A write that may wait for room (``use_reserve=False``: the servers' history) never takes the reserve:
        it raises :class:`DiskFull` at once."""
        def attempt() -> T:
            if not transaction:
                return change(self._db)
            with self._tx() as db:
                return change(db)

        try:
            return attempt()
        except sqlite3.Error as exc:
            if not is_full(exc):
                raise
            if not use_reserve or not self.reserve.release():
                raise self._full() from exc
            log.warning("state.reserve-released path=%s: the disk is full; the state database used its reserve",
                        self.reserve.path)
        try:
            return attempt()
        except sqlite3.Error as exc:
            if is_full(exc):
                raise self._full() from exc
            raise

    def _full(self) -> DiskFull:
        try:
            free, size = diskspace.usage(self.path.parent)
            fs = diskspace.where(diskspace.mount_point(self.path.parent), free, size)
        except OSError:
            fs = f"the file system of {self.path.parent}"
        return DiskFull(f"The appliance's state database {self.path} cannot be written: {fs} is full. Nothing "
                        "was changed. Free space there; the appliance carries on by itself once there is room.")

    def keep_reserve(self) -> bool:
        """Create the reserve file if it is missing and there is room; True if it is held."""
        return self.reserve.fill()

    # --- settings ---------------------------------------------------------------------------
    def get_meta(self, key: str) -> str | None:
        row = self._db.execute("SELECT value FROM meta WHERE key=?", (key,)).fetchone()
        return None if row is None else str(row[0])

    def set_meta(self, key: str, value: str) -> None:
        self._write(lambda db: db.execute(
            "INSERT INTO meta(key, value) VALUES(?, ?) ON CONFLICT(key) DO UPDATE SET value=excluded.value",
            (key, value)))

    def delete_meta(self, key: str, *, prefix: bool = False) -> None:
        """Delete one key, or with ``prefix`` every key that starts with it."""
        if prefix:
            pattern = key.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_") + "%"
            self._write(lambda db: db.execute("DELETE FROM meta WHERE key LIKE ? ESCAPE '\\'", (pattern,)))
        else:
            self._write(lambda db: db.execute("DELETE FROM meta WHERE key = ?", (key,)))

    # --- servers ----------------------------------------------------------------------------
    def count_servers(self) -> int:
        return int(self._db.execute("SELECT count(*) FROM servers").fetchone()[0])

    def servers(self) -> list[ServerRecord]:
        return [ServerRecord._from_row(r) for r in self._db.execute("SELECT * FROM servers ORDER BY name")]

    def server(self, *, server_id: str | None = None, name: str | None = None) -> ServerRecord | None:
        if server_id is not None:
            row = self._db.execute("SELECT * FROM servers WHERE server_id=?", (server_id,)).fetchone()
        else:
            row = self._db.execute("SELECT * FROM servers WHERE name=?", (name,)).fetchone()
        return None if row is None else ServerRecord._from_row(row)

    def add_server(self, *, server_id: str, name: str, hostname: str, os: str, agent_version: str,
                   cert_serial: int, address: str | None, disks: list[Disk]) -> None:
        now = time.time()
        self._write(lambda db: db.execute(
            "INSERT INTO servers(server_id, name, hostname, os, agent_version, cert_serial, registered_at,"
            " last_heartbeat, address, disks) VALUES(?,?,?,?,?,?,?,?,?,?)",
            (server_id, name, hostname, os, agent_version, format(cert_serial, "x"), now, now, address,
             _disks_json(disks)),
        ))

    def record_heartbeat(self, server_id: str, *, hostname: str, os: str, agent_version: str,
                         address: str | None, disks: list[Disk], at: float) -> None:
        self._write(lambda db: db.execute(
            "UPDATE servers SET hostname=?, os=?, agent_version=?, address=?, disks=?, last_heartbeat=?"
            " WHERE server_id=?",
            (hostname, os, agent_version, address, _disks_json(disks), at, server_id),
        ))

    def revoke_server(self, server_id: str) -> None:
        """Remove a server from the inventory and refuse its certificate from now on."""
        def change(db: sqlite3.Connection) -> None:
            row = db.execute("SELECT name, cert_serial FROM servers WHERE server_id=?", (server_id,)).fetchone()
            if row is None:
                return
            db.execute("INSERT OR IGNORE INTO revoked(cert_serial, server_id, name, revoked_at) VALUES(?,?,?,?)",
                       (row["cert_serial"], server_id, row["name"], time.time()))
            db.execute("DELETE FROM servers WHERE server_id=?", (server_id,))

        self._write(change)

    def set_replication(self, server_id: str, *, replicate: bool, policy: str | None,
                        disk_sizes: list[int] | None = None) -> None:
        """Start or stop replicating; ``disk_sizes`` are the sizes the seed disks are made with."""
        enabled_at = time.time() if replicate else None
        self._write(lambda db: db.execute(
            "UPDATE servers SET replicate=?, policy=?, enabled_at=?, replicated_disks=?, resync_gen=0"
            " WHERE server_id=?", (int(replicate), policy, enabled_at, json.dumps(disk_sizes) if replicate else None,
                                   server_id)))

    def set_policy(self, server_id: str, policy: str) -> None:
        self._write(lambda db: db.execute("UPDATE servers SET policy=? WHERE server_id=?", (policy, server_id)))

    def request_resync(self, server_id: str) -> None:
        self._write(lambda db: db.execute("UPDATE servers SET resync_gen=resync_gen+1 WHERE server_id=?",
                                          (server_id,)))

    def set_max_mbps(self, server_id: str, max_mbps: float | None) -> None:
        self._write(lambda db: db.execute("UPDATE servers SET max_mbps=? WHERE server_id=?", (max_mbps, server_id)))

    # --- mobility updates ---------------------------------------------------------------------
    def mobility_update(self, server_id: str) -> MobilityUpdateRecord:
        """Where the server's mobility update stands (an empty record when nothing was ever noted)."""
        row = self._db.execute("SELECT * FROM mobility_updates WHERE server_id=?", (server_id,)).fetchone()
        if row is None:
            return MobilityUpdateRecord(server_id=server_id)
        return MobilityUpdateRecord(server_id=server_id, **{k: row[k] for k in _MOBILITY_FIELDS})

    def mobility_updates(self) -> list[MobilityUpdateRecord]:
        return [MobilityUpdateRecord(server_id=r["server_id"], **{k: r[k] for k in _MOBILITY_FIELDS})
                for r in self._db.execute("SELECT * FROM mobility_updates")]

    def set_mobility_update(self, record: MobilityUpdateRecord) -> None:
        """Store the record whole (a server that is gone is ignored: its row went with it)."""
        values = tuple(getattr(record, k) for k in _MOBILITY_FIELDS)
        self._write(lambda db: db.execute(
            f"INSERT INTO mobility_updates(server_id, {', '.join(_MOBILITY_FIELDS)})"
            " SELECT ?,?,?,?,?,?,? WHERE EXISTS (SELECT 1 FROM servers WHERE server_id=?)"
            f" ON CONFLICT(server_id) DO UPDATE SET {', '.join(f'{k}=excluded.{k}' for k in _MOBILITY_FIELDS)}",
            (record.server_id, *values, record.server_id)))

    # --- policies ---------------------------------------------------------------------------
    def policies(self) -> list[Policy]:
        return [_policy(r) for r in self._db.execute("SELECT * FROM policies ORDER BY name")]

    def policy(self, name: str) -> Policy | None:
        row = self._db.execute("SELECT * FROM policies WHERE name=?", (name,)).fetchone()
        return None if row is None else _policy(row)

    def add_policy(self, p: Policy) -> None:
        self._write(lambda db: db.execute(
            "INSERT INTO policies(name, rpo_threshold, retention, crash_consistent_every, app_consistent_every)"
            " VALUES(?,?,?,?,?)", (p.name, p.rpo_threshold, p.retention, p.crash_consistent_every,
                                   p.app_consistent_every)))

    def update_policy(self, p: Policy) -> None:
        """Store a policy's new settings (its servers read them at their next look)."""
        self._write(lambda db: db.execute(
            "UPDATE policies SET rpo_threshold=?, retention=?, crash_consistent_every=?, app_consistent_every=?"
            " WHERE name=?", (p.rpo_threshold, p.retention, p.crash_consistent_every, p.app_consistent_every, p.name)))

    def policy_users(self, name: str) -> list[str]:
        """The names of the servers that replicate with this policy, sorted."""
        return [str(r[0]) for r in self._db.execute(
            "SELECT name FROM servers WHERE replicate=1 AND policy=? ORDER BY name", (name,))]

    def delete_policy(self, name: str) -> bool:
        """Delete a policy that no replicating server uses (checked in the same statement). False, and nothing
        deleted, when one does or when there is no such policy."""
        cur = self._write(lambda db: db.execute(
            "DELETE FROM policies WHERE name=? AND NOT EXISTS"
            " (SELECT 1 FROM servers WHERE replicate=1 AND policy=?)", (name, name)))
        return cur.rowcount > 0

    def is_revoked(self, serial: int) -> bool:
        row = self._db.execute("SELECT 1 FROM revoked WHERE cert_serial=?", (format(serial, "x"),)).fetchone()
        return row is not None

    # --- the servers' history ---------------------------------------------------------------------
    def add_history(self, rows: list[tuple[str, float, float, float, float | None]], *, keep_after: float) -> None:
        """Store day samples ``(server_id, at, received_bps, applied_bps, rpo_seconds)`` of registered servers and
        delete those taken before ``keep_after``, in one transaction. On a full disk it raises :class:`DiskFull`
        without touching the reserve (the samples are not worth it)."""
        def change(db: sqlite3.Connection) -> None:
            db.executemany("INSERT OR REPLACE INTO server_history(server_id, at, received_bps, applied_bps, "
                           "rpo_seconds) SELECT ?, ?, ?, ?, ? WHERE EXISTS (SELECT 1 FROM servers WHERE server_id=?)",
                           [(*row, row[0]) for row in rows])
            db.execute("DELETE FROM server_history WHERE at < ?", (keep_after,))

        self._write(change, use_reserve=False)

    def history(self, *, since: float) -> list[tuple[str, float, float, float, float | None]]:
        """The stored day samples taken after ``since``, per server, oldest first."""
        return [(r[0], r[1], r[2], r[3], r[4]) for r in self._db.execute(
            "SELECT server_id, at, received_bps, applied_bps, rpo_seconds FROM server_history WHERE at > ? "
            "ORDER BY server_id, at", (since,))]

    # --- events -----------------------------------------------------------------------------
    def add_event(self, severity: Severity, code: str, message: str, server: str | None = None) -> Event:
        ts = time.time()
        cur = self._write(lambda db: db.execute(
            "INSERT INTO events(ts, severity, code, message, server) VALUES(?,?,?,?,?)",
            (ts, severity, code, message, server)))
        return Event(id=int(cur.lastrowid or 0), ts=ts, severity=severity, code=code, message=message, server=server)

    def events(self, *, after: int = 0, limit: int = 200) -> list[Event]:
        """The newest ``limit`` events with an id above ``after``, oldest first."""
        rows = self._db.execute(
            "SELECT * FROM (SELECT * FROM events WHERE id>? ORDER BY id DESC LIMIT ?) ORDER BY id",
            (after, limit),
        ).fetchall()
        return [Event(id=r["id"], ts=r["ts"], severity=r["severity"], code=r["code"], message=r["message"],
                      server=r["server"]) for r in rows]


def _policy(r: sqlite3.Row) -> Policy:
    return Policy(name=r["name"], rpo_threshold=r["rpo_threshold"], retention=r["retention"],
                  crash_consistent_every=r["crash_consistent_every"], app_consistent_every=r["app_consistent_every"])


def _disks_json(disks: list[Disk]) -> str:
    return json.dumps([to_json(d) for d in disks])

