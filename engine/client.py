"""Clients of the engine's local sockets: the admin API (CLI, console) and the agent link.

Both are HTTP with JSON bodies over a Unix socket, each request and answer stamped with its link's
protocol version (:mod:`engine.links`). Errors come back as ``{"code", "message"}`` and are raised
as the matching :class:`~engine.errors.EngineError`.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any, TypeVar

import aiohttp

from engine.config import DataDir
from engine.errors import EngineError, EngineNotRunning, ProtocolError, from_code
from engine.links import HEADER, Link, decode, encode
from engine.links.admin import ADMIN, StreamMessage, decode_message
from engine.records import (
    ApplianceHealth,
    ConnectivityReport,
    EngineStatus,
    Event,
    LicenceStatus,
    Policy,
    PortsStatus,
    Prerequisites,
    RecoveryPoint,
    ServerHistory,
    ServerStatus,
    SetupInfo,
    TargetStatus,
    UpdatesStatus,
    from_json,
)

M = TypeVar("M")

#: What failing to reach (or losing) the socket looks like.
_UNREACHABLE = (aiohttp.ClientConnectionError, aiohttp.ClientPayloadError, FileNotFoundError, ConnectionRefusedError,
                PermissionError)

#: Longest line the event stream may carry (a full server snapshot for many servers fits).
MAX_STREAM_LINE = 16 * 1024 * 1024


class UnixJsonClient:
    """JSON requests to an aiohttp server on a Unix socket."""

    def __init__(self, socket_path: Path, *, link: Link, what: str) -> None:
        self.socket_path = socket_path
        self.link = link
        self._what = what
        self._session: aiohttp.ClientSession | None = None
        #: The version of the link the other end last answered with (None until it answered).
        self.peer_version: tuple[int, int] | None = None

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.socket_path} open={self._session is not None}>"

    def _http(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            self._session = aiohttp.ClientSession(
                connector=aiohttp.UnixConnector(path=str(self.socket_path)),
                timeout=aiohttp.ClientTimeout(total=None, sock_connect=5),
            )
        return self._session

    async def aclose(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    def _unreachable(self, exc: BaseException) -> EngineError:
        """The one translation of "cannot talk to the socket": not ours, or nobody there."""
        if isinstance(exc, PermissionError) or isinstance(getattr(exc, "os_error", None), PermissionError):
            return EngineError(f"{self.socket_path} belongs to another user: run this as the user who runs the "
                               "engine (often root).")
        return EngineNotRunning(self._what)

    async def call(self, method: str, path: str, message: Any, answer: type[M], *, timeout: float = 30) -> M:
        """Send a message of this link and decode its answer."""
        return decode(answer, await self.request(method, path, None if message is None else encode(message),
                                                 timeout=timeout), link=self.link)

    async def request(self, method: str, path: str, body: Any = None, *, timeout: float = 30) -> Any:
        try:
            async with self._http().request(method, f"http://godwit{path}", json=body, headers=self.link.headers,
                                            timeout=aiohttp.ClientTimeout(total=timeout)) as resp:
                data = await resp.json(content_type=None)
        except _UNREACHABLE as exc:
            raise self._unreachable(exc) from exc
        except TimeoutError as exc:
            raise EngineError(f"The engine did not answer within {timeout:.0f} s; see its log in the data "
                              "directory.") from exc
        except ValueError as exc:
            raise ProtocolError("The engine sent an answer that is not JSON.") from exc
        self._check(resp, data)
        return data

    def _check(self, resp: aiohttp.ClientResponse, data: Any) -> None:
        """The one reading of an answer's status and version: an error answer raises its
        :class:`EngineError`, an answer of another major version :class:`VersionMismatch`."""
        if resp.status >= 400:
            if isinstance(data, dict) and "code" in data:
                raise from_code(str(data["code"]), str(data.get("message", "")))
            raise EngineError(f"The engine answered {resp.status}.")
        self.peer_version = self.link.check(resp.headers.get(HEADER), peer="The engine")

    async def stream(self, path: str) -> AsyncIterator[dict[str, Any]]:
        """Newline-delimited JSON messages until the engine closes the stream."""
        try:
            async with self._http().get(f"http://godwit{path}", headers=self.link.headers,
                                        timeout=aiohttp.ClientTimeout(total=None, sock_connect=5)) as resp:
                self._check(resp, await resp.json(content_type=None) if resp.status >= 400 else None)
                buf = b""
                async for chunk in resp.content.iter_any():
                    buf += chunk
                    while b"\n" in buf:
                        line, buf = buf.split(b"\n", 1)
                        if line.strip():
                            yield json.loads(line)
                    if len(buf) > MAX_STREAM_LINE:
                        raise ProtocolError("The engine's event stream sent an over-long line.")
        except _UNREACHABLE as exc:
            raise self._unreachable(exc) from exc


class AdminClient(UnixJsonClient):
    """The admin API of the engine that owns ``data_dir``."""

    def __init__(self, data_dir: DataDir) -> None:
        super().__init__(
            data_dir.admin_socket, link=ADMIN,
            what=f"No Godwit engine is running for {data_dir.root}. Start it with "
            f"`godwit serve --data-dir {data_dir.root}` or open the console.",
        )
        self.data_dir = data_dir

    async def engine_status(self) -> EngineStatus:
        return from_json(EngineStatus, await self.request("GET", "/v1/engine"))

    async def setup(self) -> SetupInfo:
        return from_json(SetupInfo, await self.request("GET", "/v1/setup"))

    async def complete_setup(self) -> SetupInfo:
        """Record that the first-run setup is done (consoles stop opening the wizard by themselves); idempotent."""
        await self._require(5, "record the first-run setup")
        return from_json(SetupInfo, await self.request("POST", "/v1/setup/complete", {}))

    async def prerequisites(self, check: str | None = None) -> Prerequisites:
        """Check the appliance's prerequisites now: every one, or only ``check`` (a :class:`PrerequisiteCheck` key;
        the others are as last checked)."""
        await self._require(5, "check the appliance's prerequisites")
        return decode(Prerequisites, await self.request("POST", "/v1/appliance/prerequisites", {"check": check},
                                                        timeout=60), link=self.link)

    async def server_history(self, name: str, span: str = "hour") -> ServerHistory:
        """Server ``name``'s throughput and RPO over the last ``span`` ("hour" or "day")."""
        await self._require(5, "report a server's history")
        return await self.call("GET", f"/v1/servers/{_quote(name)}/history?span={_quote(span)}", None, ServerHistory)

    async def rotate_passphrase(self) -> SetupInfo:
        return from_json(SetupInfo, await self.request("POST", "/v1/setup/rotate-passphrase"))

    async def servers(self) -> list[ServerStatus]:
        return [from_json(ServerStatus, s) for s in await self.request("GET", "/v1/servers")]

    async def server(self, name: str) -> ServerStatus:
        return from_json(ServerStatus, await self.request("GET", f"/v1/servers/{_quote(name)}"))

    async def forget_server(self, name: str) -> None:
        await self.request("DELETE", f"/v1/servers/{_quote(name)}")

    async def events(self, *, after: int = 0, limit: int = 200) -> list[Event]:
        return [from_json(Event, e) for e in await self.request("GET", f"/v1/events?after={after}&limit={limit}")]

    async def policies(self) -> list[Policy]:
        return [from_json(Policy, p) for p in await self.request("GET", "/v1/policies")]

    async def policy(self, name: str) -> Policy:
        return from_json(Policy, await self.request("GET", f"/v1/policies/{_quote(name)}"))

    async def create_policy(self, **fields: str) -> Policy:
        return from_json(Policy, await self.request("POST", "/v1/policies", fields))

    async def _require(self, minor: int, what: str) -> None:
        """Refuse, in one line, what an engine of an older admin API minor version would not do (it would
        answer that the path does not exist, or ignore a field)."""
        if self.peer_version is None:
            await self.engine_status()
        if self.peer_version is not None and self.peer_version < (self.link.major, minor):
            major, theirs = self.peer_version
            raise EngineError(f"The engine speaks admin API {major}.{theirs}, which cannot {what} (that needs "
                              f"{self.link.major}.{minor}): restart the engine with this version of Godwit.")

    async def edit_policy(self, name: str, **changes: str | float | None) -> Policy:
        """Change only the given settings of a policy (``rpo_threshold``, ``retention``,
        ``crash_consistent_every``, ``app_consistent_every``): text as an admin types it ("15m", "off") or
        seconds (None: off). Checked as a new policy is; nothing changes if one is refused. Returns the policy
        as it is now; its servers follow from their next cycle."""
        await self._require(3, "edit a policy")
        return from_json(Policy, await self.request("PATCH", f"/v1/policies/{_quote(name)}", changes))

    async def delete_policy(self, name: str) -> None:
        """Delete a policy; refused (nothing changes) while a server replicates with it, and for ``default``."""
        await self._require(3, "delete a policy")
        await self.request("DELETE", f"/v1/policies/{_quote(name)}")

    async def enable(self, name: str, policy: str | None) -> ServerStatus:
        return from_json(ServerStatus, await self.request("POST", f"/v1/servers/{_quote(name)}/enable",
                                                          {"policy": policy}))

    async def disable(self, name: str) -> ServerStatus:
        return from_json(ServerStatus, await self.request("POST", f"/v1/servers/{_quote(name)}/disable", {}))

    async def resync(self, name: str) -> ServerStatus:
        return from_json(ServerStatus, await self.request("POST", f"/v1/servers/{_quote(name)}/resync", {}))

    async def update_mobility(self, names: list[str]) -> list[ServerStatus]:
        """Install the offered mobility version on these servers (manual mode's Update, one or a selection); each
        does at its next heartbeat. Returns their new status."""
        return [from_json(ServerStatus, s) for s in await self.request("POST", "/v1/servers/mobility-update",
                                                                        {"names": names})]

    async def set_server(self, name: str, **settings: Any) -> ServerStatus:
        """Change a server's settings, live; only those given: ``max_mbps`` (Mbit/s from 1 to 100000, None: no
        cap) and ``policy`` (the name of the policy a replicating server moves to). All are checked before any
        changes. Returns its new status."""
        if "policy" in settings:
            await self._require(3, "change a server's policy")
        return from_json(ServerStatus, await self.request("POST", f"/v1/servers/{_quote(name)}/settings", settings))

    async def set_policy(self, name: str, policy: str) -> ServerStatus:
        """Move a replicating server to another policy (live: the copy and its points stay)."""
        return await self.set_server(name, policy=policy)

    async def points(self, name: str) -> list[RecoveryPoint]:
        return [from_json(RecoveryPoint, p) for p in await self.request("GET", f"/v1/servers/{_quote(name)}/points")]

    async def export(self, name: str, *, point: str, disk: int, fmt: str, out: Any,
                     progress: Any = None) -> tuple[str, int]:
        """Stream a recovery point of one disk into the file object ``out`` (sparse where zero).
        Returns the point id and the size written."""
        url = f"http://godwit/v1/servers/{_quote(name)}/export?point={_quote(point)}&disk={disk}&format={fmt}"
        try:
            async with self._http().get(url, headers=self.link.headers,
                                        timeout=aiohttp.ClientTimeout(total=None, sock_connect=5)) as resp:
                self._check(resp, await resp.json(content_type=None) if resp.status >= 400 else None)
                total = int(resp.headers["X-Godwit-Size"])
                written = 0
                zero = bytes(65536)
                drain = getattr(out, "drain", None)  # an asynchronous writer paces the download by it
                async for chunk in resp.content.iter_chunked(65536):
                    if chunk == zero[:len(chunk)] and written + len(chunk) < total:
                        out.seek(len(chunk), 1)  # keep the image sparse
                    else:
                        out.write(chunk)
                        if drain is not None:
                            await drain()
                    written += len(chunk)
                    if progress:
                        progress(written, total)
                if written != total:
                    raise aiohttp.ClientPayloadError(f"{written} of {total} bytes")
                out.truncate(written)
                return resp.headers["X-Godwit-Point"], written
        except aiohttp.ClientPayloadError as exc:
            raise EngineError(f"The export of {name} stopped before its end: the engine could not read the point "
                              "(`godwit events` says why).") from exc
        except _UNREACHABLE as exc:
            raise self._unreachable(exc) from exc

    async def licence(self) -> LicenceStatus:
        return from_json(LicenceStatus, await self.request("GET", "/v1/licence"))

    async def activate_licence(self, text: str) -> LicenceStatus:
        """Activate the licence file whose content is ``text`` (the engine checks it; nothing changes if refused)."""
        return from_json(LicenceStatus, await self.request("POST", "/v1/licence", {"licence": text}))

    async def target(self) -> TargetStatus:
        return from_json(TargetStatus, await self.request("GET", "/v1/target"))

    async def set_target(self, kind: str, *, account_url: str | None = None, container: str | None = None,
                         credential: str | None = None) -> TargetStatus:
        """Choose the target new copies go to (the engine checks an Azure container first; nothing changes if
        that fails). The credential travels over the admin socket only and is kept in the secret store."""
        body = {"kind": kind, "account_url": account_url, "container": container, "credential": credential}
        return from_json(TargetStatus, await self.request("PUT", "/v1/target", body, timeout=150))

    async def ports(self) -> PortsStatus:
        return from_json(PortsStatus, await self.request("GET", "/v1/ports"))

    async def set_ports(self, *, management: int | None = None, data: int | None = None, listen: str | None = None,
                        keep_old_for: float | None = None) -> PortsStatus:
        """Move the ports (checked before anything changes; applied live). ``keep_old_for``: seconds the old
        management port stays open for servers that have not moved yet (None: the engine's default)."""
        body = {"management_port": management, "data_port": data, "listen_address": listen,
                "keep_old_for": keep_old_for}
        return from_json(PortsStatus, await self.request("POST", "/v1/ports", body, timeout=60))

    async def test_ports(self) -> ConnectivityReport:
        return from_json(ConnectivityReport, await self.request("POST", "/v1/ports/test", {}, timeout=60))

    async def backup(self, passphrase: str) -> bytes:
        """An encrypted backup of the appliance (see :mod:`engine.backup`)."""
        try:
            async with self._http().post("http://godwit/v1/appliance/backup", json={"passphrase": passphrase},
                                         headers=self.link.headers,
                                         timeout=aiohttp.ClientTimeout(total=300, sock_connect=5)) as resp:
                if resp.status >= 400:
                    self._check(resp, await resp.json(content_type=None))
                self._check(resp, None)
                return await resp.read()
        except _UNREACHABLE as exc:
            raise self._unreachable(exc) from exc
        except TimeoutError as exc:
            raise EngineError("The engine did not finish the backup within 300 s; see its log.") from exc

    # --- appliance health (admin 1.4) ---
    async def appliance_health(self, history: bool = False) -> ApplianceHealth:
        """The appliance's health as last sampled; ``history`` adds the samples of the last 24 hours."""
        await self._require(4, "report the appliance's health")
        return await self.call("GET", "/v1/appliance/health" + ("?history=1" if history else ""), None,
                               ApplianceHealth)

    # --- agent updates (admin 1.2) ---
    async def agent_updates(self) -> UpdatesStatus:
        return await self.call("GET", "/v1/agents", None, UpdatesStatus)

    async def check_updates(self) -> UpdatesStatus:
        """Ask the feed now (waits for the check; an unreachable feed is in ``check_error``)."""
        return await self.call("POST", "/v1/agents/check", {}, UpdatesStatus, timeout=120)

    async def update_agents(self, names: list[str] | None = None) -> UpdatesStatus:
        """Install the available version of ``names`` (None: every outdated agent, together, in dependency
        order). Returns once the install started; progress arrives as UpdatesChanged."""
        return await self.call("POST", "/v1/agents/update", {"names": names, "all": names is None}, UpdatesStatus)

    async def rollback_agent(self, name: str) -> UpdatesStatus:
        return await self.call("POST", "/v1/agents/rollback", {"name": name}, UpdatesStatus, timeout=120)

    async def set_update_mode(self, mode: str | None = None, *, window: str | None = None,
                              now: bool = False) -> UpdatesStatus:
        return await self.call("POST", "/v1/agents/mode", {"mode": mode, "window": window, "now": now},
                               UpdatesStatus)

    async def set_update_feed(self, url: str | None) -> UpdatesStatus:
        return await self.call("POST", "/v1/agents/feed", {"url": url}, UpdatesStatus)

    async def updates(self) -> AsyncIterator[StreamMessage]:
        """The engine's push stream: a :class:`~engine.links.admin.Hello` snapshot first, then one message
        per change (types this version does not know are skipped)."""
        async for data in self.stream("/v1/stream"):
            message = decode_message(data)
            if message is not None:
                yield message


def _quote(name: str) -> str:
    from urllib.parse import quote

    return quote(name, safe="")
