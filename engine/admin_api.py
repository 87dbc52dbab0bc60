"""The engine's local sockets: the admin API (``admin.sock``) and the agent link (``run/agent.sock``).

Both are Unix sockets, mode 0600, in a 0700 directory: only the local admin and the appliance
agents the supervisor started reach them. Every answer is JSON from :func:`engine.records.to_json`;
errors are ``{"code", "message"}``.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any, Protocol

from aiohttp import web

from engine.errors import DiskFull, EngineError, ProtocolError
from engine.export import stream_export
from engine.listener import read_json
from engine.records import to_json
from engine.replication import epoch
from engine.state import is_full

if TYPE_CHECKING:
    from engine.config import DataDir
    from engine.events import EventHub
    from engine.inventory import Inventory
    from engine.records import EngineStatus, SetupInfo
    from engine.replication import Replication
    from engine.state import StateDB


class Engine(Protocol):
    """What the admin API needs of the engine supervisor (which imports this module, not the reverse)."""

    data_dir: DataDir
    state: StateDB
    hub: EventHub
    inventory: Inventory
    replication: Replication

    def status(self) -> EngineStatus: ...

    def setup_info(self) -> SetupInfo: ...


log = logging.getLogger(__name__)
ENGINE = web.AppKey("engine", object)


def _engine(request: web.Request) -> Engine:
    return request.app[ENGINE]  # type: ignore[return-value]


@web.middleware
async def _errors(request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
                  ) -> web.StreamResponse:
    try:
        return await handler(request)
    except EngineError as exc:
        if exc.status >= 500:  # the engine's own trouble (e.g. its disk full), not the caller's: one line
            log.warning("request.refused path=%s status=%s code=%s", request.path, exc.status, exc.code)
        return web.json_response({"code": exc.code, "message": exc.message}, status=exc.status)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        return web.json_response({"code": f"http-{exc.status}", "message": exc.reason}, status=exc.status)
    except Exception as exc:
        if is_full(exc):  # a write the state database did not translate itself: still a state, not a crash
            log.warning("admin.disk-full path=%s", request.path)
            return web.json_response({"code": DiskFull.code, "message": "The appliance's state database cannot be "
                                      "written: the data directory's disk is full. Free space there; the appliance "
                                      "carries on by itself."}, status=DiskFull.status)
        log.exception("admin.internal-error path=%s", request.path)
        return web.json_response({"code": "internal-error", "message": "The engine hit an internal error; its log "
                                  "in the data directory has the details."}, status=500)


def _json(data: Any) -> web.Response:
    return web.json_response(to_json(data))


# --- admin API ---------------------------------------------------------------------------------
async def get_engine(request: web.Request) -> web.Response:
    return _json(_engine(request).status())


async def get_setup(request: web.Request) -> web.Response:
    return _json(_engine(request).setup_info())


async def rotate_passphrase(request: web.Request) -> web.Response:
    engine = _engine(request)
    engine.inventory.rotate_passphrase()
    info = engine.setup_info()
    engine.hub.publish({"type": "setup", "setup": to_json(info)})
    return _json(info)


async def list_servers(request: web.Request) -> web.Response:
    return _json(_engine(request).inventory.servers())


async def show_server(request: web.Request) -> web.Response:
    return _json(_engine(request).inventory.server(request.match_info["name"]))


async def forget_server(request: web.Request) -> web.Response:
    _engine(request).inventory.forget(request.match_info["name"])
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
    return _json(_engine(request).state.events(after=after, limit=limit))


async def stream(request: web.Request) -> web.StreamResponse:
    """Push stream: one ``hello`` snapshot, then every update, as JSON lines; ends on overflow."""
    engine = _engine(request)
    resp = web.StreamResponse(headers={"Content-Type": "application/x-ndjson"})
    await resp.prepare(request)
    with engine.hub.subscribe() as queue:
        last = engine.state.events(limit=1)
        hello = {"type": "hello", "engine": to_json(engine.status()), "setup": to_json(engine.setup_info()),
                 "servers": to_json(engine.inventory.servers()), "last_event_id": last[-1].id if last else 0}
        try:
            await resp.write(json.dumps(hello).encode() + b"\n")
            while True:
                message = await queue.get()
                if message is None:
                    break
                await resp.write(json.dumps(message).encode() + b"\n")
        except ConnectionResetError:
            pass  # the console or CLI went away: nothing to report
    return resp


# --- replication -------------------------------------------------------------------------------
async def list_policies(request: web.Request) -> web.Response:
    return _json(_engine(request).state.policies())


async def show_policy(request: web.Request) -> web.Response:
    return _json(_engine(request).replication.policy(request.match_info["name"]))


async def create_policy(request: web.Request) -> web.Response:
    from engine.replication import make_policy

    body = await read_json(request)
    try:
        policy = make_policy(str(body["name"]), rpo_threshold=str(body["rpo_threshold"]),
                             retention=str(body["retention"]),
                             crash_consistent_every=str(body["crash_consistent_every"]),
                             app_consistent_every=str(body["app_consistent_every"]))
    except KeyError as exc:
        raise ProtocolError(f"Missing field {exc}.") from exc
    return _json(_engine(request).replication.create_policy(policy))


async def enable_server(request: web.Request) -> web.Response:
    engine = _engine(request)
    policy = (await read_json(request)).get("policy")
    if policy is not None and not isinstance(policy, str):
        raise ProtocolError("policy must be a policy's name, or null for the default policy.")
    return _changed(engine, engine.inventory.row(request.match_info["name"]),
                    lambda row: engine.replication.enable(row, policy))


async def disable_server(request: web.Request) -> web.Response:
    engine = _engine(request)
    return _changed(engine, engine.inventory.row(request.match_info["name"]), engine.replication.disable)


async def resync_server(request: web.Request) -> web.Response:
    engine = _engine(request)
    return _changed(engine, engine.inventory.row(request.match_info["name"]), engine.replication.resync)


def _changed(engine: Engine, row: Any, change: Callable[[Any], None]) -> web.Response:
    """Apply an admin's change to a server, push its new status to every console, and return it."""
    change(row)
    engine.inventory.publish(row["server_id"])
    return _json(engine.inventory.server(row["name"]))


async def set_server(request: web.Request) -> web.Response:
    engine = _engine(request)
    body = await read_json(request)
    row = engine.inventory.row(request.match_info["name"])
    if "max_mbps" in body:
        value = body["max_mbps"]
        if value is not None and (not isinstance(value, int | float) or isinstance(value, bool) or value <= 0):
            raise ProtocolError("max_mbps must be a positive number, or null for no limit.")
        engine.state.set_max_mbps(row["server_id"], None if value is None else float(value))
        engine.hub.record("info", "bandwidth-set", f"{row['name']}: bandwidth cap "
                          + ("removed." if value is None else f"set to {value} Mbit/s."), server=row["name"])
    engine.inventory.publish(row["server_id"])
    return _json(engine.inventory.server(row["name"]))


async def list_points(request: web.Request) -> web.Response:
    engine = _engine(request)
    return _json(engine.replication.points(engine.inventory.row(request.match_info["name"])))


async def export_point(request: web.Request) -> web.StreamResponse:
    engine = _engine(request)
    return await stream_export(request, engine.inventory, engine.replication, engine.data_dir.target)


def make_admin_app(engine: Engine) -> web.Application:
    app = web.Application(middlewares=[_errors])
    app[ENGINE] = engine
    r = app.router
    r.add_get("/v1/engine", get_engine)
    r.add_get("/v1/setup", get_setup)
    r.add_post("/v1/setup/rotate-passphrase", rotate_passphrase)
    r.add_get("/v1/servers", list_servers)
    r.add_get("/v1/servers/{name}", show_server)
    r.add_delete("/v1/servers/{name}", forget_server)
    r.add_get("/v1/events", list_events)
    r.add_get("/v1/policies", list_policies)
    r.add_post("/v1/policies", create_policy)
    r.add_get("/v1/policies/{name}", show_policy)
    r.add_post("/v1/servers/{name}/enable", enable_server)
    r.add_post("/v1/servers/{name}/disable", disable_server)
    r.add_post("/v1/servers/{name}/settings", set_server)
    r.add_post("/v1/servers/{name}/resync", resync_server)
    r.add_get("/v1/servers/{name}/points", list_points)
    r.add_get("/v1/servers/{name}/export", export_point)
    r.add_get("/v1/stream", stream)
    return app


# --- agent link --------------------------------------------------------------------------------
async def agent_register(request: web.Request) -> web.Response:
    return web.json_response(_engine(request).inventory.register(await read_json(request)))


async def agent_heartbeat(request: web.Request) -> web.Response:
    return web.json_response(_engine(request).inventory.heartbeat(await read_json(request)))


async def agent_authorize(request: web.Request) -> web.Response:
    """May this certificate stream data, and for which disks? (process server, per connection)."""
    return web.json_response(_engine(request).inventory.authorize(await read_json(request)))


async def agent_received(request: web.Request) -> web.Response:
    engine = _engine(request)
    body = await read_json(request)
    row = engine.state.server(server_id=str(body["server_id"]))
    if row is None or epoch(row) != body.get("epoch"):
        return web.json_response({"ok": False})  # about a copy that is no longer the current one
    if engine.replication.report_received(body):
        engine.hub.record("info", "initial-replication-complete",
                          f"Initial replication of {row['name']} disk {body['disk']} is complete.", server=row["name"])
    engine.inventory.publish(row["server_id"])
    return web.json_response({"ok": True})


async def agent_applied(request: web.Request) -> web.Response:
    engine = _engine(request)
    body = await read_json(request)
    row = engine.state.server(server_id=str(body["server_id"]))
    if row is None or epoch(row) != body.get("epoch"):
        return web.json_response({"ok": False})  # about a copy that was disabled (and perhaps re-enabled)
    before = engine.replication.progress(row["server_id"], int(body["disk"]))
    before_error, before_code = before.error, before.error_code
    engine.replication.report_applied(body)
    code = body.get("error_code") or "segment-corrupt"
    if body.get("error") and (body.get("error"), code) != (before_error, before_code):
        text = f"{row['name']} disk {body['disk']}: {body['error']}"
        if code == "segment-corrupt":
            engine.hub.record("error", "segment-refused", text, server=row["name"])
        else:
            engine.hub.record("warning", "apply-paused", text, server=row["name"])
    elif before_code in ("target-full", "target-unwritable") and not body.get("error"):
        engine.hub.record("info", "apply-resumed", f"{row['name']} disk {body['disk']}: recovery points are "
                          "being created again.", server=row["name"])
    engine.inventory.publish(row["server_id"])
    return web.json_response({"ok": True})


async def agent_replicating(request: web.Request) -> web.Response:
    """What the log processor should apply: every replicating server, its disks and policy."""
    engine = _engine(request)
    out = []
    for row in engine.state.servers():
        if row["replicate"]:
            out.append({"server_id": row["server_id"], "name": row["name"],
                        **engine.replication.desired_state(row)})
    return web.json_response(out)


def make_agent_app(engine: Engine) -> web.Application:
    app = web.Application(middlewares=[_errors], client_max_size=1024 * 1024)
    app[ENGINE] = engine
    app.router.add_post("/agent/register", agent_register)
    app.router.add_post("/agent/heartbeat", agent_heartbeat)
    app.router.add_post("/agent/authorize", agent_authorize)
    app.router.add_post("/agent/received", agent_received)
    app.router.add_post("/agent/applied", agent_applied)
    app.router.add_get("/agent/replicating", agent_replicating)
    return app
