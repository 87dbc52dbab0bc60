"""The updater the supervisor runs: it checks the feed, installs agent versions one by one with a
health check, rolls back what fails, and keeps the auto and manual modes.

An install of one agent goes: download (verified against the feed's signed metadata) → verify the
package's manifest → unpack beside the installed versions → switch (``current.json``, durable) →
restart only that agent → health check (it reports ready with the new version, answers TLS on its
port, and still runs a few seconds later) → keep the previous version for rollback. Each stage is
journalled first (:meth:`AgentStore.mark`): an engine killed in the middle rolls the agent back at
its next start and says so. A failed health check switches back, restarts the previous version and
says why (event + status). Several agents are installed in :data:`~engine.updater.AGENT_ORDER`; when
one fails, those the same run updated are rolled back too if the set left would not work together.

The state database has one connection, used from the event loop: nothing here writes it from a
worker thread. Downloads, unpacking and the feed's metadata run in threads.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import re
import shutil
import ssl
import time
from collections.abc import Callable, Coroutine
from datetime import datetime, timedelta
from typing import Any

from engine.config import DataDir
from engine.errors import EngineError, FeedInvalid, Incompatible, UpdateError
from engine.events import EventHub
from engine.records import AgentUpdate, UpdateMode, UpdatesStatus, UpdateStage, UpdateState
from engine.state import StateDB
from engine.supervisor import AgentProcess
from engine.updater import AGENT_ORDER, AGENT_TITLES, update_mode
from engine.updater.compatibility import AgentRelease, problems
from engine.updater.feed import FeedClient, FeedIndex, FeedTarget, trusted_root
from engine.updater.mobility import write_release
from engine.updater.package import parse_version, read_manifest
from engine.updater.store import AgentStore, engine_links

log = logging.getLogger(__name__)

#: How long a new version has to report ready and answer on its port (``GODWIT_UPDATE_HEALTH_DEADLINE``).
HEALTH_DEADLINE = 30.0
#: How long it must then keep running.
SETTLE = 2.0
#: How often the scheduler looks at the clock.
WATCH_EVERY = 15.0
DEFAULT_WINDOW = "00:00"
NO_FEED = "No update feed is set: set one with `godwit agents feed URL` or on the Agents page."
_WINDOW = re.compile(r"^([01]\d|2[0-3]):([0-5]\d)$")
_META = "updates_"


def next_window(after: float, window: str) -> float:
    """The first local time ``window`` (HH:MM) strictly after ``after`` (epoch seconds)."""
    hour, minute = (int(x) for x in window.split(":"))
    start = datetime.fromtimestamp(after)
    at = start.replace(hour=hour, minute=minute, second=0, microsecond=0)
    if at.timestamp() <= after:
        at += timedelta(days=1)
    return at.timestamp()


class Updater:
    """Agent updates of one appliance. Built at start; :meth:`prepare` runs before any agent starts."""

    def __init__(self, *, data_dir: DataDir, state: StateDB, hub: EventHub,
                 probe_address: Callable[[str], tuple[str, int]]) -> None:
        self.data_dir = data_dir
        self.store = AgentStore(data_dir.agents)
        self._state = state
        self._hub = hub
        #: Where a port agent's health check connects: the port name ("management", "data") → (host, port).
        self._probe_address = probe_address
        #: The running agent processes by name; set once they exist.
        self.agents: dict[str, AgentProcess] = {}
        #: Called with the new status on every change (the engine pushes it to the consoles).
        self.on_change: Callable[[UpdatesStatus], None] = lambda _: None
        self._index: FeedIndex | None = None
        self._client: FeedClient | None = None
        self._progress: dict[str, tuple[UpdateStage, float | None]] = {}
        self._lock = asyncio.Lock()
        self._export_lock = asyncio.Lock()  # one export of the mobility feed at a time
        self._tasks: set[asyncio.Task[None]] = set()
        self._health_deadline = float(os.environ.get("GODWIT_UPDATE_HEALTH_DEADLINE", HEALTH_DEADLINE))
        #: Fault injection for the crash tests: hold an install at this stage for a minute.
        self._pause_at = os.environ.get("GODWIT_UPDATE_PAUSE_AT")

    def __repr__(self) -> str:
        versions = {n: (c.version if (c := self.store.current(n)) else None) for n in AGENT_ORDER}
        return f"<Updater mode={self.mode} {versions} updating={sorted(self._progress)}>"

    # --- settings ------------------------------------------------------------------------------------
    def _meta(self, key: str) -> str | None:
        return self._state.get_meta(_META + key)

    def _set_meta(self, key: str, value: str | None) -> None:
        if value is None:
            self._state.delete_meta(_META + key)
        else:
            self._state.set_meta(_META + key, value)

    @property
    def mode(self) -> UpdateMode:
        return update_mode(self._state)

    @property
    def window(self) -> str:
        window = self._meta("window")
        return window if window and _WINDOW.match(window) else DEFAULT_WINDOW

    @property
    def feed_url(self) -> str | None:
        return self._meta("feed_url") or None

    def _failed(self) -> dict[str, list[str]]:
        """Agents whose last install failed: name → [version, reason]."""
        try:
            data = json.loads(self._meta("failed") or "{}")
        except ValueError:
            return {}
        return data if isinstance(data, dict) else {}

    def _set_failed(self, name: str, failure: tuple[str, str] | None) -> None:
        failed = self._failed()
        if failure is None:
            failed.pop(name, None)
        else:
            failed[name] = list(failure)
        self._set_meta("failed", json.dumps(failed))

    def _check_error(self) -> str | None:
        """Why the feed cannot be used now (the last check's failure, or no feed at all); None when it can."""
        return self._meta("check_error") or (NO_FEED if self.feed_url is None else None)

    def _float(self, key: str) -> float | None:
        with contextlib.suppress(TypeError, ValueError):
            return float(self._meta(key))  # type: ignore[arg-type]
        return None

    # --- start-up --------------------------------------------------------------------------------------
    def prepare(self) -> None:
        """Before the agents start: finish what an interrupted install left (roll it back), install the
        engine's own code as the bootstrap version where needed, and remove what is no longer kept."""
        for name in AGENT_ORDER:
            self._recover(name)
            self.store.ensure_bootstrap(name)
            self.store.prune(name)
        if self._meta("last_window") is None:  # the first window is the next one, not one in the past
            self._set_meta("last_window", str(time.time()))

    def _recover(self, name: str) -> None:
        journal = self.store.journal(name)
        if journal is None:
            return
        title, stage = AGENT_TITLES[name], journal.get("stage")
        old, new = str(journal.get("from")), str(journal.get("to"))
        now = self.store.current(name)
        if now is not None and now.version == new and self.store.manifest(name, old) is not None:
            self.store.switch(name, old)
        reason = (f"the engine stopped while it was {stage}; {title} {old} runs again. Press Update to try "
                  "again.")
        self._set_failed(name, (new, f"The update to {new} was interrupted: {reason}"))
        self._hub.record("warning", "agent-update-interrupted", f"The update of {title} to {new} was interrupted: "
                         f"{reason}")
        self.store.end(name)

    # --- status ----------------------------------------------------------------------------------------
    def _available(self, name: str, installed: str) -> FeedTarget | None:
        if self._index is None or self._check_error():
            return None
        newest = self._index.newest(name)
        if newest is None or parse_version(newest.version) <= parse_version(installed):
            return None
        return newest

    def _agent(self, name: str) -> AgentUpdate:
        installed = self.store.current(name)
        version = installed.version if installed else "?"
        available = self._available(name, version)
        state: UpdateState = "up-to-date"
        reason: str | None = None
        stage, progress = self._progress.get(name, (None, None))
        failed = self._failed().get(name)
        check_error = self._check_error()
        if stage is not None:
            state = "updating"
        elif check_error:  # before a failure: a Retry cannot work until the feed does
            state, reason = "cannot-update", check_error
        elif failed and (available is None or available.version == failed[0]) and \
                installed is not None and installed.version != failed[0]:
            state, reason = "update-failed", failed[1]
        elif available is not None:
            problem = self._problems({name: available.version})
            if problem and self._problems(self._newest()):  # not even together with the others
                state, reason = "cannot-update", problem[0]
            else:
                state = "update-available"
        return AgentUpdate(name=name, title=AGENT_TITLES[name], installed_version=version,
                           available_version=available.version if available else None,
                           previous_version=installed.previous if installed else None, status=state, reason=reason,
                           stage=stage, progress=progress)

    def status(self) -> UpdatesStatus:
        agents = tuple(self._agent(name) for name in AGENT_ORDER)
        pending = any(a.available_version for a in agents)
        return UpdatesStatus(mode=self.mode, window=self.window, feed_url=self.feed_url, agents=agents,
                             last_check_at=self._float("last_check_at"),
                             last_success_at=self._float("last_success_at"), check_error=self._check_error(),
                             next_install_at=self._next_window() if self.mode == "auto" and pending else None,
                             mismatched=self._mismatched(agents, pending))

    def _mismatched(self, agents: tuple[AgentUpdate, ...], pending: bool) -> bool:
        """The agents run different versions and that is not the newest set the feed offers (a partial release
        is: nothing is pending and they work together). Without a verified feed, any difference counts."""
        if len({a.installed_version for a in agents}) < 2:
            return False
        return pending or self._index is None or bool(self._problems({}))

    def _publish(self) -> None:
        try:
            self.on_change(self.status())
        except Exception:  # a console's stream is not worth an update
            log.exception("updates.publish-failed")

    # --- compatibility -----------------------------------------------------------------------------------
    def _release(self, name: str, version: str) -> AgentRelease:
        """What the feed's compatibility record says about a version; for one it does not list (the bootstrap),
        what its own manifest says."""
        record = self._index.compatibility.agents.get(name, {}).get(version) if self._index else None
        if record is not None:
            return record
        manifest = self.store.manifest(name, version)
        links = manifest.links if manifest else {}
        return AgentRelease(name=name, version=version, links=dict(links), requires={})

    def _newest(self) -> dict[str, str]:
        """Every agent at the newest version the feed offers."""
        out = {}
        for name in AGENT_ORDER:
            installed = self.store.current(name)
            target = self._available(name, installed.version if installed else "0.0.0")
            if target is not None:
                out[name] = target.version
        return out

    def _problems(self, changes: dict[str, str]) -> list[str]:
        """Why the installed agents with ``changes`` applied would not work together (empty: they would)."""
        chosen = {}
        for name in AGENT_ORDER:
            installed = self.store.current(name)
            version = changes.get(name) or (installed.version if installed else None)
            if version is not None:
                chosen[name] = self._release(name, version)
        return problems(chosen, supervisor_links=engine_links())

    # --- the feed ----------------------------------------------------------------------------------------
    def _feed(self, url: str) -> FeedClient:
        return FeedClient(url, metadata_dir=self.data_dir.updates / "metadata",
                          download_dir=self.data_dir.updates / "downloads", trusted_root=trusted_root())

    async def check(self) -> UpdatesStatus:
        """Ask the feed for what it offers (verified). A failure is kept in the status (and an event when it is
        new): it never raises for the feed's sake."""
        url = self.feed_url
        error: str | None = None
        if url is None:
            error = NO_FEED
        else:
            client = self._feed(url)
            try:
                index = await asyncio.to_thread(client.refresh)
            except EngineError as exc:
                error = exc.message
            except Exception as exc:  # a bug in reading the feed: say it plainly, log the details
                log.exception("updates.check-failed url=%s", url)
                error = f"The update feed at {url} could not be read ({type(exc).__name__}); see the engine's log."
            if url != self.feed_url:  # the admin set another feed while this one answered: its answer is moot
                return self.status()
            if error is None:
                self._index, self._client = index, client
        now = time.time()
        self._set_meta("last_check_at", str(now))
        before = self._meta("check_error")
        self._set_meta("check_error", error)
        if error is None:
            await self._refresh_mobility_feed()
            self._set_meta("last_success_at", str(now))
            offered = ", ".join(f"{AGENT_TITLES[n]} {v}" for n, v in self._newest().items())
            if offered and offered != self._meta("offered"):
                self._hub.record("info", "updates-available", f"Agent updates are available: {offered}.")
            self._set_meta("offered", offered)
        elif error != before:
            self._hub.record("warning", "update-check-failed", error)
        log.info("updates.check-complete url=%s ok=%s", url, error is None)
        self._publish()
        return self.status()

    async def _refresh_mobility_feed(self) -> None:
        """The feed the appliance serves to source servers carries the vendor's timestamp, which expires within
        days: after every successful check it is exported again with the metadata just verified."""
        installed = self.store.current("mobility-package")
        index, client = self._index, self._client
        if installed is None or index is None or client is None:
            return
        feed = self.store.version_dir("mobility-package", installed.version) / "feed"
        target = index.find("mobility-package", installed.version)
        if not feed.is_dir():
            return  # the bootstrap version: sources are offered nothing
        if target is None:
            log.warning("updates.mobility-feed-stale version=%s reason=no longer in the feed", installed.version)
            return
        async with self._export_lock:
            try:
                await asyncio.to_thread(client.export, feed, [target])
            except (EngineError, OSError) as exc:
                log.warning("updates.mobility-feed-stale version=%s: %s", installed.version, exc)

    # --- installing ----------------------------------------------------------------------------------------
    def _plan(self, names: list[str] | None) -> list[tuple[str, FeedTarget]]:
        error = self._check_error()
        if error:
            raise UpdateError(error)
        plan = []
        for name in names if names is not None else AGENT_ORDER:
            if name not in AGENT_TITLES:
                raise UpdateError(f"There is no agent {name!r}: the agents are {', '.join(AGENT_ORDER)}.")
            installed = self.store.current(name)
            target = self._available(name, installed.version if installed else "0.0.0")
            if target is not None:
                plan.append((name, target))
            elif names is not None:
                raise UpdateError(f"{AGENT_TITLES[name]} is up to date ({installed.version if installed else '?'}).")
        found = self._problems({name: target.version for name, target in plan})
        if found:
            advice = " Update all agents together (Update all, or `godwit agents update --all`)." \
                if names is not None and not self._problems(self._newest()) else ""
            raise Incompatible(f"{found[0]}{advice} Nothing was installed.")
        return sorted(plan, key=lambda item: AGENT_ORDER.index(item[0]))

    async def update(self, names: list[str] | None) -> UpdatesStatus:
        """Check the feed, then install the available version of ``names`` (None: every agent that has one).
        Refused as a whole (nothing installed) when the versions would not work together. Returns once the
        install has started; progress goes to :attr:`on_change`."""
        if self._lock.locked():
            raise UpdateError("An update is already running: wait for it to finish (the Agents page shows it).")
        await self.check()
        if self._lock.locked():  # another request started one while the feed answered
            raise UpdateError("An update is already running: wait for it to finish (the Agents page shows it).")
        plan = self._plan(None if names is None else list(dict.fromkeys(names)))
        if plan:
            await self._start(plan)
        return self.status()

    async def _start(self, plan: list[tuple[str, FeedTarget]]) -> asyncio.Task[None]:
        """Take the lock (held by the run from here: no second run can start) and start installing ``plan``."""
        await self._lock.acquire()
        self._queue(plan)
        task = self._spawn(self._install_all(plan))
        task.add_done_callback(lambda _: self._lock.release())  # even if cancelled before it ran
        return task

    def _queue(self, plan: list[tuple[str, FeedTarget]]) -> None:
        """Show every agent of a run as updating at once: the admin sees the whole run."""
        for name, _ in plan:
            self._progress[name] = ("downloading", 0.0)
        self._publish()

    def _spawn(self, coro: Coroutine[Any, Any, None]) -> asyncio.Task[None]:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    async def _install_all(self, plan: list[tuple[str, FeedTarget]]) -> None:
        """Install a run (queued with :meth:`_queue`; the lock, acquired by the caller, is released when the task
        ends)."""
        done: list[str] = []
        try:
            for i, (name, target) in enumerate(plan):
                if not await self._install(name, target):
                    for rest, _ in plan[i + 1:]:
                        self._progress.pop(rest, None)
                    if done and self._problems({}):  # what this run updated needs what failed: undo it
                        for undo in reversed(done):
                            await self._switch_back(undo, why=f"{AGENT_TITLES[name]} could not be updated")
                    break
                done.append(name)
        finally:
            self._progress.clear()
            self._publish()

    async def _stage(self, name: str, stage: str) -> None:
        """Journal that the install of ``name`` reached ``stage`` (durable before the stage's work starts)."""
        await asyncio.to_thread(self.store.stage, name, stage)
        if stage == self._pause_at:
            log.warning("updates.paused name=%s stage=%s (GODWIT_UPDATE_PAUSE_AT)", name, stage)
            await asyncio.sleep(60)

    def _set_progress(self, name: str, stage: UpdateStage, progress: float | None = None) -> None:
        self._progress[name] = (stage, progress)
        self._publish()

    async def _install(self, name: str, target: FeedTarget) -> bool:
        """Install one agent's version; True if it runs and passed its health check."""
        title = AGENT_TITLES[name]
        before = self.store.current(name)
        old = before.version if before else "?"
        client = self._client
        assert client is not None
        loop = asyncio.get_running_loop()
        log.info("updates.install-started name=%s from=%s to=%s", name, old, target.version)
        switched = False
        # The journal ends only once the outcome is durable (installed, or rolled back): a cancelled or crashed
        # install leaves it for the next start to roll back.
        try:
            await asyncio.to_thread(self.store.begin, name, from_version=old, to_version=target.version)
            last = [0.0]

            def progress(done: int, total: int) -> None:  # from the download's thread
                now = time.monotonic()
                if now - last[0] > 0.2 or done == total:
                    last[0] = now
                    loop.call_soon_threadsafe(self._set_progress, name, "downloading", done / total if total else None)

            self._set_progress(name, "downloading", 0.0)
            archive = await asyncio.to_thread(client.download, target, progress)
            await self._stage(name, "verifying")
            self._set_progress(name, "verifying")
            manifest = await asyncio.to_thread(read_manifest, archive)
            if (manifest.name, manifest.version) != (name, target.version):
                raise FeedInvalid(f"The feed's package {target.path} holds {manifest.name} {manifest.version}, not "
                                  f"{name} {target.version}: refused, nothing installed.")
            await self._stage(name, "unpacking")
            self._set_progress(name, "installing")
            await asyncio.to_thread(self.store.unpack, name, archive, target.version)
            if name == "mobility-package":
                await asyncio.to_thread(self._serve_mobility, client, target)
            await self._stage(name, "switching")
            await asyncio.to_thread(self.store.switch, name, target.version)
            switched = True
            await self._stage(name, "switched")
            agent = self.agents.get(name)
            if agent is not None:
                await self._stage(name, "health-check")
                self._set_progress(name, "health-check")
                await agent.restart(f"update to {target.version}")
                problem = await self._health(agent, target.version)
                if problem is not None:
                    raise UpdateError(f"{title} {target.version} failed its health check: {problem}")
        except (EngineError, OSError) as exc:
            message = exc.message if isinstance(exc, EngineError) else f"{exc.strerror or exc}"
            if switched and before is not None:
                await self._switch_back(name, why=message, record=False)
                message += f". Rolled back: {title} {old} runs again."
            else:
                message += "" if message.endswith(".") else "."
            await asyncio.to_thread(self.store.end, name)
            self._set_failed(name, (target.version, message))
            self._hub.record("error", "agent-update-failed", f"{title} was not updated to {target.version}: {message}")
            log.warning("updates.install-failed name=%s version=%s: %s", name, target.version, message)
            return False
        finally:
            self._progress.pop(name, None)
        await asyncio.to_thread(self.store.end, name)
        self._set_failed(name, None)
        removed = await asyncio.to_thread(self.store.prune, name)
        self._hub.record("info", "agent-updated", f"{title} updated from {old} to {target.version}; {old} is kept for "
                         "rollback." + (f" Removed {', '.join(removed)}." if removed else ""))
        log.info("updates.install-complete name=%s version=%s", name, target.version)
        self._publish()
        return True

    def _serve_mobility(self, client: FeedClient, target: FeedTarget) -> None:
        """What source servers take their update from: the package's signed metadata, re-served by the appliance
        (engine/updater/mobility.py), beside the unpacked version."""
        folder = self.store.version_dir("mobility-package", target.version)
        client.export(folder / "feed", [target])
        write_release(folder, target)

    async def _health(self, agent: AgentProcess, version: str) -> str | None:
        """None if the agent, restarted into ``version``, reports ready, answers on its port and keeps running;
        else why not."""
        deadline = time.monotonic() + self._health_deadline
        restarts = agent.restarts
        ready_file = self.data_dir.ready_file(agent.spec.name)
        pid = None
        while True:
            if agent.restarts > restarts:
                return f"it {agent.last_exit or 'exited'} right after it started"
            pid = agent.pid
            with contextlib.suppress(OSError, ValueError):
                ready = json.loads(ready_file.read_text())
                if pid is not None and ready.get("pid") == pid and ready.get("version") == version:
                    break
            if time.monotonic() > deadline:
                return f"it did not report ready within {self._health_deadline:.0f} s"
            await asyncio.sleep(0.1)
        if agent.spec.port is not None:
            host, port = self._probe_address(agent.spec.port)
            context = ssl.create_default_context()
            context.check_hostname, context.verify_mode = False, ssl.CERT_NONE
            try:
                async with asyncio.timeout(10):
                    _, writer = await asyncio.open_connection(host, port, ssl=context)
                writer.close()
                with contextlib.suppress(Exception):
                    await writer.wait_closed()
            except (OSError, TimeoutError, ssl.SSLError) as exc:
                return f"it did not answer TLS on the {agent.spec.port} port {port} ({exc})"
        await asyncio.sleep(SETTLE)
        if agent.pid != pid:
            return f"it {agent.last_exit or 'exited'} {SETTLE:g} s after it reported ready"
        return None

    async def _switch_back(self, name: str, *, why: str, record: bool = True) -> None:
        """Run the previous version of ``name`` again (after a failed health check or install)."""
        title = AGENT_TITLES[name]
        installed = await asyncio.to_thread(self.store.rollback, name)
        agent = self.agents.get(name)
        if agent is not None:
            await agent.restart(f"rollback to {installed.version}")
            problem = await self._health(agent, installed.version)
            if problem is not None:
                log.error("updates.rollback-unhealthy name=%s version=%s: %s", name, installed.version, problem)
        if record:
            self._hub.record("warning", "agent-rolled-back", f"{title} was rolled back to {installed.version}: "
                             f"{why}.")

    async def rollback(self, name: str) -> UpdatesStatus:
        """The admin's rollback of one agent to its previous version (health-checked like an update)."""
        if name not in AGENT_TITLES:
            raise UpdateError(f"There is no agent {name!r}: the agents are {', '.join(AGENT_ORDER)}.")
        if self._lock.locked():
            raise UpdateError("An update is running: wait for it to finish, then roll back.")
        async with self._lock:
            before = self.store.current(name)
            if before is None or before.previous is None:
                raise UpdateError(f"{AGENT_TITLES[name]} has no previous version to roll back to.")
            found = self._problems({name: before.previous})
            if found:
                raise Incompatible(f"{AGENT_TITLES[name]} cannot go back to {before.previous}: {found[0]} Nothing "
                                   "was changed.")
            self._set_progress(name, "installing")
            try:
                await self._switch_back(name, why="the admin asked for it")
            finally:
                self._progress.pop(name, None)
        self._publish()
        return self.status()

    # --- modes and the schedule ------------------------------------------------------------------------------
    def _next_window(self) -> float:
        return next_window(self._float("last_window") or time.time(), self.window)

    def set_mode(self, mode: str | None, *, window: str | None = None, now: bool = False) -> UpdatesStatus:
        """Switch between auto and manual (and/or move the daily window). Back in auto mode, pending updates
        install at the next window, or at once with ``now``."""
        if mode is not None and mode not in ("auto", "manual"):
            raise UpdateError(f"The update mode is auto or manual, not {mode!r}.")
        if window is not None and not _WINDOW.match(window):
            raise UpdateError(f"The update window is a time of day as HH:MM (00:00 to 23:59), not {window!r}.")
        if window is not None:
            self._set_meta("window", window)
            self._set_meta("last_window", str(time.time()))  # the next one is the new time's next occurrence
        if mode is not None and mode != self.mode:
            self._set_meta("mode", mode)
            what = (f"automatic: every day at {self.window} (the appliance's local time) the feed is checked and "
                    "new versions install by themselves" if mode == "auto"
                    else "manual: new versions are shown and install only when an admin asks")
            self._hub.record("info", "update-mode", f"Agent updates are now {what}.")
        if now and self.mode == "auto":
            self._spawn(self._run_window())
        self._publish()
        return self.status()

    def set_feed(self, url: str | None) -> UpdatesStatus:
        """Read updates from ``url`` (http or https). Its metadata starts again from the trusted root."""
        if url is not None and not re.match(r"^https?://[^\s]{1,2000}$", url):
            raise UpdateError(f"The feed URL must start with https:// or http://, not {url[:80]!r}.")
        if url != self.feed_url:
            if self._lock.locked():
                raise UpdateError("An update is running: wait for it to finish, then change the feed.")
            shutil.rmtree(self.data_dir.updates / "metadata", ignore_errors=True)
            self._index, self._client = None, None
            self._set_meta("feed_url", url)
            self._set_meta("check_error", None)
            self._hub.record("info", "update-feed", f"Agent updates are read from {url}." if url else
                             "No update feed is set any more.")
        self._publish()
        return self.status()

    async def _run_window(self) -> None:
        """The daily window: check, and in auto mode install whatever is available."""
        self._set_meta("last_window", str(time.time()))
        await self.check()
        if self.mode != "auto" or self._check_error() or self._lock.locked():
            return
        try:
            plan = self._plan(None)
        except UpdateError as exc:
            self._hub.record("warning", "auto-update-refused", f"Automatic agent updates did not install: {exc}")
            return
        if plan and not self._lock.locked():
            await (await self._start(plan))

    async def watch(self) -> None:
        """Run the daily window when it comes (auto: check and install; manual: check). What the feed offers is
        asked once at start too (never installed then): the Agents page shows it at once."""
        if self.feed_url is not None:
            try:
                await self.check()
            except Exception:
                log.exception("updates.check-failed")
        while True:
            try:
                if time.time() >= self._next_window():
                    await self._run_window()
            except Exception:
                log.exception("updates.window-failed")
            await asyncio.sleep(WATCH_EVERY)

    async def aclose(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

