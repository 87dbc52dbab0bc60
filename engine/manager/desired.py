"""When a server's desired state changes: the replication-manager's side of the long poll ``GET /v1/desired``.

The admin changes a server's desired state (enable, disable, resync, a bandwidth cap, a policy or its settings)
through the supervisor, in another process; the supervisor writes every such change to the state database
(SQLite, WAL) before it answers the admin. So the manager watches the database itself, read-only:

- a server's *generation* is a digest of the columns its desired state is made of (its row in ``servers``, the
  terms of its policy in ``policies``, its certificate serial; a server that is gone has one too). It tells a
  change, not what changed: the new state itself still comes from the supervisor, in a heartbeat's answer;
- while a long poll waits, every :data:`POLL_EVERY` seconds ``PRAGMA data_version`` (a read of SQLite's shared
  memory, no disk I/O) says whether any other connection committed since the last look. Only then does one
  statement put what every server's desired state is made of into one string, in SQLite; heartbeats commit too,
  but leave that string as it was. Only when it changed are the waiting servers' generations read again.

Why the database and not the agent link: the supervisor commits before it answers the admin, so the database is
the one place where a change is visible to every process at once, and watching it needs no new route, no change in
the supervisor and no connection per waiting source between the manager and the supervisor.

Measured on a 2-core machine shared with other work (load average ~11): a look that finds no commit takes
15-45 µs (a ``stat`` every :data:`STAT_EVERY` looks and ``PRAGMA data_version``); the one string for 1,000 servers
takes ~9 ms (17-35 ms when reals were written with ``quote()``); one idle source waiting costs the manager about
0.2 CPU-s a minute (0.3-0.4 % of a core), against about 0.05 without the long poll. Nothing here is durable: a
manager that restarts answers its long polls again from the database.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import os
import sqlite3
import time
from pathlib import Path

log = logging.getLogger(__name__)

#: Seconds between looks at the database while a long poll waits: a change reaches the source within this,
#: plus a heartbeat's round trip.
POLL_EVERY = 0.15
#: Seconds a statement may wait for a lock (a WAL reader waits only while the WAL is reset or recovered).
BUSY_TIMEOUT = 0.05
#: Servers whose generations one statement reads, at most (SQLite's limit on parameters is far above).
CHUNK = 500
#: A failure to read the database is logged at most this often (seconds); long polls then just time out.
WARN_EVERY = 60.0
#: Looks between two checks that the database is still the same file (a restored backup is another one).
STAT_EVERY = 20

#: What a server's desired state is made of (:meth:`engine.replication.Replication.desired_state`), as one text. A
#: column too many costs a spurious heartbeat; one too few delays that change to the next regular heartbeat. Numbers
#: of seconds and Mbit/s are compared to the microsecond as integers: SQLite writes an integer several times faster
#: than a real.
def _real(column: str) -> str:
    return f"ifnull(CAST(round({column} * 1000000) AS INTEGER), 'n')"


_MADE_OF = " || ',' || ".join((
    "quote(s.cert_serial)", "s.replicate", "quote(s.policy)", _real("s.max_mbps"), _real("s.enabled_at"),
    "quote(s.replicated_disks)", "s.resync_gen", _real("p.crash_consistent_every"), _real("p.app_consistent_every"),
    _real("p.retention")))
_FROM = "FROM servers s LEFT JOIN policies p ON p.name = s.policy"
#: Every server's, in one string: whether anything a desired state is made of changed (none of it in Python).
_ALL = (f"SELECT group_concat(x, char(30)) FROM (SELECT s.server_id || ':' || {_MADE_OF} AS x {_FROM} "
        "ORDER BY s.server_id)")
#: Some servers'.
_SOME = f"SELECT s.server_id, {_MADE_OF} {_FROM} WHERE s.server_id IN ({{}})"


def _digest(made_of: str | None) -> str:
    """The generation of a desired state made of ``made_of`` (None: a server that is gone)."""
    return hashlib.blake2b(b"-" if made_of is None else made_of.encode(), digest_size=8).hexdigest()


class _Waiter:
    __slots__ = ("after", "future")

    def __init__(self, after: str, future: asyncio.Future[str]) -> None:
        self.after = after
        self.future = future


class DesiredWatch:
    """The generations of the servers' desired states, read from the state database at ``path``, and the long
    polls waiting for them to change. Used from one event loop; every method is cheap enough to run on it.
    Without a ``path`` there is nothing to watch: no generation, and long polls just time out."""

    def __init__(self, path: Path | None, *, every: float = POLL_EVERY) -> None:
        self.path = path
        self.every = every
        self._db: sqlite3.Connection | None = None
        #: The database file the connection is open on (device, inode): a restored backup is another file.
        self._file: tuple[int, int] | None = None
        self._version: int | None = None
        #: What every server's desired state was made of at the last look that read it.
        self._all: str | None = None
        self._waiters: dict[str, list[_Waiter]] = {}
        self._poller: asyncio.Task[None] | None = None
        self._closed = False
        self._warned_at = 0.0
        #: Looks at the database, and those that found a change and read the waiting servers' generations.
        self.looks = 0
        self.reads = 0

    def __repr__(self) -> str:
        waiting = sum(len(w) for w in self._waiters.values())
        return (f"<DesiredWatch {self.path} waiting={waiting} servers={len(self._waiters)} looks={self.looks} "
                f"reads={self.reads}{' closed' if self._closed else ''}>")

    # --- the database ---------------------------------------------------------------------------------
    def _connection(self, *, check: bool = True) -> sqlite3.Connection:
        """The read-only connection, opened anew when the database file was replaced (a restore); ``check=False``
        skips that check (a stat) when a connection is open."""
        if self.path is None:
            raise FileNotFoundError("no state database to watch")
        if not check and self._db is not None:
            return self._db
        st = os.stat(self.path)
        file = (st.st_dev, st.st_ino)
        if self._db is None or file != self._file:
            if self._db is not None:
                self._db.close()
            self._db = None
            db = sqlite3.connect(f"file:{self.path}?mode=ro", uri=True, isolation_level=None,
                                 timeout=BUSY_TIMEOUT)
            self._db, self._file, self._version, self._all = db, file, None, None
        return self._db

    def _failed(self, exc: Exception) -> None:
        if self._db is not None:
            self._db.close()
        self._db = None
        now = time.monotonic()
        if now - self._warned_at >= WARN_EVERY:
            self._warned_at = now
            log.warning("desired.unreadable path=%s: %s; sources learn changes at their next heartbeat", self.path,
                        exc)

    def _read(self, server_ids: list[str]) -> dict[str, str]:
        db = self._connection()
        made_of: dict[str, str] = {}
        for i in range(0, len(server_ids), CHUNK):
            chunk = server_ids[i:i + CHUNK]
            made_of.update(db.execute(_SOME.format(",".join("?" * len(chunk))), chunk).fetchall())
        return {sid: _digest(made_of.get(sid)) for sid in server_ids}

    def generation(self, server_id: str) -> str | None:
        """The generation of the server's desired state now; None when the database cannot be read (then the
        source relies on heartbeats)."""
        if self._closed or self.path is None:
            return None
        try:
            return self._read([server_id])[server_id]
        except (sqlite3.Error, OSError) as exc:
            self._failed(exc)
            return None

    def _committed(self) -> bool:
        """Whether another connection committed since the last look (True at the first look, or after the
        database file was replaced)."""
        db = self._connection(check=self.looks % STAT_EVERY == 0)
        version = int(db.execute("PRAGMA data_version").fetchone()[0])
        changed, self._version = version != self._version, version
        return changed

    def _any_changed(self) -> bool:
        """Whether what any server's desired state is made of changed since the last look that read it."""
        now: str | None = self._connection().execute(_ALL).fetchone()[0]
        changed, self._all = now != self._all, now
        return changed

    # --- long polls -------------------------------------------------------------------------------------
    async def wait(self, server_id: str, after: str, timeout: float) -> str:
        """The generation of the server's desired state once it is not ``after``, or ``after`` when ``timeout``
        seconds passed first (or the watch closed, or the database cannot be read). Cancellation-safe."""
        now = self.generation(server_id)
        if now is not None and now != after:
            return now
        if self._closed or timeout <= 0:
            return after
        future: asyncio.Future[str] = asyncio.get_running_loop().create_future()
        waiter = _Waiter(after, future)
        self._waiters.setdefault(server_id, []).append(waiter)
        if self.path is not None and (self._poller is None or self._poller.done()):
            self._poller = asyncio.create_task(self._poll(), name="desired-watch")
        try:
            return await asyncio.wait_for(asyncio.shield(future), timeout)
        except TimeoutError:
            return after
        finally:
            waiting = self._waiters.get(server_id, [])
            if waiter in waiting:
                waiting.remove(waiter)
            if not waiting:
                self._waiters.pop(server_id, None)

    async def _poll(self) -> None:
        """Look at the database every :attr:`every` seconds while a long poll waits."""
        while self._waiters and not self._closed:
            await asyncio.sleep(self.every)
            if not self._waiters:
                break
            self.looks += 1
            try:
                if not self._committed() or not self._any_changed():
                    continue
                self.reads += 1
                generations = self._read(list(self._waiters))
            except (sqlite3.Error, OSError) as exc:
                self._failed(exc)
                continue
            for server_id, generation in generations.items():
                for waiter in self._waiters.get(server_id, []):
                    if generation != waiter.after and not waiter.future.done():
                        waiter.future.set_result(generation)

    def close(self) -> None:
        """Answer every waiting long poll now (unchanged) and stop looking: the manager is stopping, and its
        long polls must not hold its shutdown. Idempotent."""
        self._closed = True
        for waiting in self._waiters.values():
            for waiter in waiting:
                if not waiter.future.done():
                    waiter.future.set_result(waiter.after)
        if self._poller is not None:
            self._poller.cancel()
        if self._db is not None:
            self._db.close()
            self._db = None
