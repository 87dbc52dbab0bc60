"""The engine's local sockets: the admin API (``admin.sock``) and the agent link (``run/agent.sock``).

Both are Unix sockets, mode 0600, in a 0700 directory: only the local admin and the appliance
agents the supervisor started reach them. The messages are those of :mod:`engine.links.admin` and
:mod:`engine.links.agent`, serialised by :func:`engine.links.encode`; errors are ``{"code",
"message"}`` (:mod:`engine.http_server`). Handlers only translate HTTP: what a request means is
decided by the services (:mod:`engine.services`).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from typing import Any

from aiohttp import web

from engine.appliance_health import ApplianceHealthMonitor
from engine.errors import BadInput, EngineError, NotFound, ProtocolError
from engine.http_server import error_middleware, read_json, speaks
from engine.links import decode, encode
from engine.links.admin import ADMIN, Hello, encode_message
from engine.links.agent import (
    AGENT_LINK,
    AppliedReport,
    AuthorizeRequest,
    HeartbeatRequest,
    ReceivedReport,
    RegisterRequest,
    Replicating,
    ReplicatingServer,
)
from engine.prerequisites import unknown_check
from engine.replication import check_max_mbps, make_policy
from engine.services import Services
from engine.state import ServerRecord
from engine.storage import replica
from engine.storage.vhd import SECTOR, padded_size, vhd_footer

log = logging.getLogger(__name__)
SERVICES = web.AppKey("services", Services)
HEALTH = web.AppKey("health", ApplianceHealthMonitor)


def _services(request: web.Request) -> Services:
    return request.app[SERVICES]


def _json(data: Any) -> web.Response:
    return web.json_response(encode(data))


# --- admin API ---------------------------------------------------------------------------------
async def get_engine(request: web.Request) -> web.Response:
    return _json(_services(request).status())


async def get_setup(request: web.Request) -> web.Response:
    return _json(_services(request).setup_info())


async def rotate_passphrase(request: web.Request) -> web.Response:
    return _json(_services(request).rotate_passphrase())


async def complete_setup(request: web.Request) -> web.Response:
    """Record that the first-run setup is done (idempotent: the first time stays); answers the set-up. The body
    (``{}``) says nothing yet."""
    return _json(_services(request).complete_setup())


async def check_prerequisites(request: web.Request) -> web.Response:
    """Run the prerequisites' checks, all (``{"check": null}``) or one (``{"check": "clock"}``)."""
    check = (await read_json(request)).get("check")
    if check is not None and not isinstance(check, str):
        raise unknown_check(check)
    return _json(await _services(request).check_prerequisites(check))


async def server_history(request: web.Request) -> web.Response:
    """A server's throughput and RPO samples: ``?span=hour`` (the default) or ``day``."""
    return _json(_services(request).server_history(request.match_info["name"], request.query.get("span", "hour")))


async def list_servers(request: web.Request) -> web.Response:
    return _json(_services(request).inventory.servers())


async def show_server(request: web.Request) -> web.Response:
    return _json(_services(request).inventory.server(request.match_info["name"]))


async def forget_server(request: web.Request) -> web.Response:
    _services(request).forget(request.match_info["name"])
    return web.json_response({"ok": True})


def _int_query(request: web.Request, key: str, default: int, maximum: int) -> int:
    try:
        value = int(request.query.get(key, default))
    except ValueError as exc:
        raise ProtocolError(f"{key} must be an integer.") from exc
    return max(0, min(value, maximum))


async def list_events(request: web.Request) -> web.Response:
    after = _int_query(request, "after", 0, 2**62)
    limit = _int_query(request, "limit", 200, 10_000)
    return _json(_services(request).state.events(after=after, limit=limit))


async def stream(request: web.Request) -> web.StreamResponse:
    """Push stream: one ``hello`` snapshot, then every update, as JSON lines; ends on overflow."""
    services = _services(request)
    resp = web.StreamResponse(headers={"Content-Type": "application/x-ndjson"})
    await resp.prepare(request)
    with services.hub.subscribe() as queue:
        last = services.state.events(limit=1)
        hello = Hello(engine=services.status(), setup=services.setup_info(),
                      servers=tuple(services.inventory.servers()), last_event_id=last[-1].id if last else 0,
                      licence=services.licence.status(), ports=services.ports.status(),
                      updates=services.updater.status(),
                      health=request.app[HEALTH].health() if HEALTH in request.app else None)
        try:
            await resp.write(json.dumps(encode_message(hello)).encode() + b"\n")
            while True:
                message = await queue.get()
                if message is None:
                    break
                await resp.write(json.dumps(encode_message(message)).encode() + b"\n")
        except ConnectionResetError:
            pass  # the console or CLI went away: nothing to report
    return resp


async def get_appliance_health(request: web.Request) -> web.Response:
    """The appliance's health: level, alerts and the values they were judged on; ``?history=1`` adds the samples
    of the last 24 hours (one a minute)."""
    if HEALTH not in request.app:
        raise EngineError("This engine does not measure the appliance's health.")
    flag = request.query.get("history", "0")
    if flag not in ("0", "1"):
        raise BadInput(f"history={flag[:40]!r} is not understood: ask with history=1 for the samples, or leave it out.")
    history = flag == "1"
    return _json(request.app[HEALTH].health(history=history))


# --- licence, ports, backup ----------------------------------------------------------------------
async def get_licence(request: web.Request) -> web.Response:
    return _json(_services(request).licence.status())


async def activate_licence(request: web.Request) -> web.Response:
    text = (await read_json(request)).get("licence")
    if not isinstance(text, str):
        raise ProtocolError("licence must be the text of a licence file.")
    return _json(_services(request).activate_licence(text))


async def get_target(request: web.Request) -> web.Response:
    return _json(_services(request).target())


async def set_target(request: web.Request) -> web.Response:
    body = await read_json(request)
    kind = _text_or_none(body, "kind")
    if kind is None:
        raise ProtocolError("kind must be local or azure.")
    return _json(await _services(request).set_target(
        kind, account_url=_text_or_none(body, "account_url"), container=_text_or_none(body, "container"),
        credential=_text_or_none(body, "credential"),
        still_wanted=lambda: request.transport is not None and not request.transport.is_closing()))


async def get_ports(request: web.Request) -> web.Response:
    return _json(_services(request).ports.status())


async def set_ports(request: web.Request) -> web.Response:
    body = await read_json(request)
    return _json(await _services(request).ports.change(
        management=body.get("management_port"), data=body.get("data_port"),
        listen=_text_or_none(body, "listen_address"), keep_old_for=body.get("keep_old_for")))


def _text_or_none(body: dict[str, Any], key: str) -> str | None:
    value = body.get(key)
    if value is not None and not isinstance(value, str):
        raise ProtocolError(f"{key} must be text.")
    return value


async def test_ports(request: web.Request) -> web.Response:
    return _json(await _services(request).ports.check())


async def backup_appliance(request: web.Request) -> web.Response:
    passphrase = (await read_json(request)).get("passphrase")
    if not isinstance(passphrase, str):
        raise ProtocolError("passphrase must be text.")
    return web.Response(body=await _services(request).backup(passphrase), content_type="application/octet-stream")


# --- replication -------------------------------------------------------------------------------
async def list_policies(request: web.Request) -> web.Response:
    return _json(_services(request).state.policies())


async def show_policy(request: web.Request) -> web.Response:
    return _json(_services(request).replication.policy(request.match_info["name"]))


async def create_policy(request: web.Request) -> web.Response:
    body = await read_json(request)
    try:
        policy = make_policy(str(body["name"]), rpo_threshold=str(body["rpo_threshold"]),
                             retention=str(body["retention"]),
                             crash_consistent_every=str(body["crash_consistent_every"]),
                             app_consistent_every=str(body["app_consistent_every"]))
    except KeyError as exc:
        raise ProtocolError(f"Missing field {exc}.") from exc
    return _json(_services(request).replication.create_policy(policy))


def _typed_setting(setting: str, value: Any) -> str:
    """A policy setting as the admin API takes it: text as typed ("15m", "off"), a number of seconds, or null
    for off; the text an admin would have typed for it."""
    if isinstance(value, str):
        return value
    if value is None:
        return "off"
    if isinstance(value, int | float) and not isinstance(value, bool):
        return f"{value}s"
    raise ProtocolError(f"{setting} must be a duration such as 15m, a number of seconds, or null for off.")


async def edit_policy(request: web.Request) -> web.Response:
    """Change the settings of a policy the body names (only those); answers the policy as it is now."""
    body = await read_json(request)
    changes = {setting: _typed_setting(setting, value) for setting, value in body.items()}
    return _json(_services(request).edit_policy(request.match_info["name"], changes))


async def delete_policy(request: web.Request) -> web.Response:
    _services(request).delete_policy(request.match_info["name"])
    return web.json_response({"ok": True})


async def enable_server(request: web.Request) -> web.Response:
    policy = (await read_json(request)).get("policy")
    if policy is not None and not isinstance(policy, str):
        raise ProtocolError("policy must be a policy's name, or null for the default policy.")
    return _json(_services(request).enable(request.match_info["name"], policy))


async def disable_server(request: web.Request) -> web.Response:
    services = _services(request)
    return _json(services.change_server(request.match_info["name"], services.replication.disable))


async def resync_server(request: web.Request) -> web.Response:
    services = _services(request)
    return _json(services.change_server(request.match_info["name"], services.replication.resync))


async def set_server(request: web.Request) -> web.Response:
    """A server's settings, applied live: ``policy`` (a policy's name) and ``max_mbps`` (Mbit/s, null for no
    cap), each only when given. Both are checked before either changes."""
    services = _services(request)
    body = await read_json(request)
    policy = _text_or_none(body, "policy")
    cap = check_max_mbps(body["max_mbps"]) if "max_mbps" in body else None

    def change(row: ServerRecord) -> None:
        if policy is not None:
            services.replication.set_policy(row, policy)  # first: it may refuse, and then nothing changed
        if "max_mbps" in body:
            services.replication.set_max_mbps(row, cap)

    return _json(services.change_server(request.match_info["name"], change))


async def update_mobility(request: web.Request) -> web.Response:
    """The mobility service's Update on the named servers (``{"names": [...]}``): their new status."""
    names = (await read_json(request)).get("names")
    if not (isinstance(names, list) and names and all(isinstance(n, str) and n for n in names)):
        raise BadInput("Name the servers whose mobility service to update.")
    return _json(_services(request).update_mobility(names))


async def list_points(request: web.Request) -> web.Response:
    services = _services(request)
    return _json(services.replication.points(services.inventory.row(request.match_info["name"])))


#: An export reads and sends the point this many bytes at a time.
EXPORT_CHUNK = 4 * 1024 * 1024


async def export_point(request: web.Request) -> web.StreamResponse:
    """A recovery point of one disk as a raw image or a fixed VHD, streamed (zeros are sent as zeros)."""
    services = _services(request)
    row = services.inventory.row(request.match_info["name"])
    fmt = request.query.get("format", "raw")
    if fmt not in ("raw", "vhd"):
        raise BadInput(f"Format {fmt!r} is not raw or vhd.")
    disks = row.disks
    try:
        disk = int(request.query.get("disk", "0"))
        size = disks[disk].size
    except (ValueError, IndexError) as exc:
        raise BadInput(f"{row.name} has disks 0 to {len(disks) - 1}.") from exc
    points = services.replication.points(row)
    if not points:
        raise NotFound(f"{row.name} has no recovery point yet: wait for its initial replication to finish.")
    wanted = request.query.get("point", "latest")
    point_id = points[-1].id if wanted == "latest" else next((p.id for p in points if str(p.id) == wanted), None)
    if point_id is None:
        raise NotFound(f"{row.name} has no recovery point {wanted}; `godwit vm points {row.name}` lists them.")
    loop = asyncio.get_running_loop()
    opening = services.storage.open_point(replica(row.server_id, row.epoch or 0), disk, size, point_id,
                                          chunk=EXPORT_CHUNK, name=row.name)
    # Opening takes the disk's lock, which the log processor may hold for a slice: not on this loop. A
    # request cancelled meanwhile gives the lock back as soon as the thread has it.
    entered = loop.run_in_executor(None, opening.__enter__)
    try:
        image = await asyncio.shield(entered)
    except asyncio.CancelledError:
        entered.add_done_callback(lambda f: f.cancelled() or f.exception() or opening.__exit__(None, None, None))
        raise
    with contextlib.ExitStack() as held:
        held.push(opening)
        padded = padded_size(image.size)
        total = padded + (SECTOR if fmt == "vhd" else 0)
        resp = web.StreamResponse(headers={"Content-Type": "application/octet-stream", "X-Godwit-Size": str(total),
                                           "X-Godwit-Point": str(image.point.id)})
        resp.content_length = total
        await resp.prepare(request)
        zeros = memoryview(bytes(EXPORT_CHUNK))
        try:
            while (piece := await loop.run_in_executor(None, next, image.chunks, None)) is not None:
                off, data = piece
                await resp.write(data if data is not None else zeros[:min(EXPORT_CHUNK, image.size - off)])
        except (EngineError, OSError) as exc:
            # The answer has begun: it is cut short (the client sees an incomplete image and says so), and why
            # is an event, never a byte of an image that failed its check.
            why = exc.message if isinstance(exc, EngineError) else f"the point could not be read ({exc})"
            services.hub.record("error", "export-failed", f"The export of point {image.point.id} of disk {disk} "
                                f"stopped: {why}", server=row.name)
            resp.force_close()
            return resp
        if padded > image.size:
            await resp.write(bytes(padded - image.size))
        if fmt == "vhd":
            await resp.write(vhd_footer(padded))
    await resp.write_eof()
    return resp


# --- agent updates -------------------------------------------------------------------------------------
def _optional_text(data: dict[str, Any], key: str) -> str | None:
    value = data.get(key)
    if value is not None and not isinstance(value, str):
        raise BadInput(f"{key} must be text.")
    return value


async def get_agents(request: web.Request) -> web.Response:
    return _json(_services(request).updater.status())


async def check_agents(request: web.Request) -> web.Response:
    return _json(await _services(request).updater.check())


async def update_agents(request: web.Request) -> web.Response:
    data = await read_json(request)
    names = data.get("names")
    if data.get("all") is True:
        names = None
    elif not (isinstance(names, list) and names and all(isinstance(n, str) for n in names)):
        raise BadInput("Name the agents to update, or ask for all of them.")
    return _json(await _services(request).updater.update(names))


async def rollback_agent(request: web.Request) -> web.Response:
    name = _optional_text(await read_json(request), "name")
    if not name:
        raise BadInput("Name the agent to roll back.")
    return _json(await _services(request).updater.rollback(name))


async def set_update_mode(request: web.Request) -> web.Response:
    data = await read_json(request)
    updater = _services(request).updater
    return _json(updater.set_mode(_optional_text(data, "mode"), window=_optional_text(data, "window"),
                                  now=data.get("now") is True))


async def set_update_feed(request: web.Request) -> web.Response:
    return _json(_services(request).updater.set_feed(_optional_text(await read_json(request), "url")))


def make_admin_app(services: Services, *, health: ApplianceHealthMonitor | None = None) -> web.Application:
    app = web.Application(middlewares=[error_middleware("admin API", network=False)])
    speaks(app, ADMIN, peer="The CLI or console")
    app[SERVICES] = services
    if health is not None:
        app[HEALTH] = health
    r = app.router
    r.add_get("/v1/engine", get_engine)
    r.add_get("/v1/setup", get_setup)
    r.add_post("/v1/setup/rotate-passphrase", rotate_passphrase)
    r.add_post("/v1/setup/complete", complete_setup)
    r.add_get("/v1/servers", list_servers)
    r.add_post("/v1/servers/mobility-update", update_mobility)
    r.add_get("/v1/servers/{name}", show_server)
    r.add_delete("/v1/servers/{name}", forget_server)
    r.add_get("/v1/events", list_events)
    r.add_get("/v1/policies", list_policies)
    r.add_post("/v1/policies", create_policy)
    r.add_get("/v1/policies/{name}", show_policy)
    r.add_patch("/v1/policies/{name}", edit_policy)
    r.add_delete("/v1/policies/{name}", delete_policy)
    r.add_post("/v1/servers/{name}/enable", enable_server)
    r.add_post("/v1/servers/{name}/disable", disable_server)
    r.add_post("/v1/servers/{name}/settings", set_server)
    r.add_post("/v1/servers/{name}/resync", resync_server)
    r.add_get("/v1/servers/{name}/points", list_points)
    r.add_get("/v1/servers/{name}/export", export_point)
    r.add_get("/v1/servers/{name}/history", server_history)
    r.add_get("/v1/target", get_target)
    r.add_put("/v1/target", set_target)
    r.add_get("/v1/licence", get_licence)
    r.add_post("/v1/licence", activate_licence)
    r.add_get("/v1/ports", get_ports)
    r.add_post("/v1/ports", set_ports)
    r.add_post("/v1/ports/test", test_ports)
    r.add_post("/v1/appliance/backup", backup_appliance)
    r.add_get("/v1/appliance/health", get_appliance_health)
    r.add_post("/v1/appliance/prerequisites", check_prerequisites)
    r.add_get("/v1/agents", get_agents)
    r.add_post("/v1/agents/check", check_agents)
    r.add_post("/v1/agents/update", update_agents)
    r.add_post("/v1/agents/rollback", rollback_agent)
    r.add_post("/v1/agents/mode", set_update_mode)
    r.add_post("/v1/agents/feed", set_update_feed)
    r.add_get("/v1/stream", stream)
    return app


# --- agent link --------------------------------------------------------------------------------
async def _message(request: web.Request, cls: type[Any]) -> Any:
    return decode(cls, await read_json(request), link=AGENT_LINK)


async def agent_register(request: web.Request) -> web.Response:
    return _json(_services(request).inventory.register(await _message(request, RegisterRequest)))


async def agent_heartbeat(request: web.Request) -> web.Response:
    return _json(_services(request).inventory.heartbeat(await _message(request, HeartbeatRequest)))


async def agent_authorize(request: web.Request) -> web.Response:
    """May this certificate stream data, and for which disks? (process server, per connection)."""
    return _json(_services(request).inventory.authorize(await _message(request, AuthorizeRequest)))


async def agent_mobility_feed(request: web.Request) -> web.Response:
    """May this certificate read the mobility feed? (replication-manager, per request of the feed)."""
    return _json(_services(request).inventory.feed_access(await _message(request, AuthorizeRequest)))


async def agent_received(request: web.Request) -> web.Response:
    return _json(_services(request).received(await _message(request, ReceivedReport)))


async def agent_applied(request: web.Request) -> web.Response:
    return _json(_services(request).applied(await _message(request, AppliedReport)))


async def agent_replicating(request: web.Request) -> web.Response:
    """What the log processor should apply: every replicating server, its disks and policy."""
    services = _services(request)
    servers = tuple(ReplicatingServer(server_id=row.server_id, name=row.name,
                                      desired=services.replication.desired_state(row))
                    for row in services.state.servers() if row.replicate)
    return _json(Replicating(servers))


def make_agent_app(services: Services) -> web.Application:
    app = web.Application(middlewares=[error_middleware("agent link", network=False)], client_max_size=1024 * 1024)
    speaks(app, AGENT_LINK, peer="An appliance agent")
    app[SERVICES] = services
    app.router.add_post("/agent/register", agent_register)
    app.router.add_post("/agent/heartbeat", agent_heartbeat)
    app.router.add_post("/agent/authorize", agent_authorize)
    app.router.add_post("/agent/mobility-feed", agent_mobility_feed)
    app.router.add_post("/agent/received", agent_received)
    app.router.add_post("/agent/applied", agent_applied)
    app.router.add_get("/agent/replicating", agent_replicating)
    return app
