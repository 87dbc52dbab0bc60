"""The management port: registration of source servers and their heartbeats.

The manager terminates TLS, checks every request, and forwards what it accepted to the
supervisor over the agent link; the supervisor owns the state and the CA key.
"""

from __future__ import annotations

import logging

from aiohttp import web

from engine.agents import AgentContext
from engine.client import UnixJsonClient
from engine.errors import CertificateRequired
from engine.http_server import error_middleware, read_json, speaks
from engine.identity import open_pki
from engine.links import encode
from engine.links.agent import HeartbeatAnswer, HeartbeatRequest, Registered, RegisterRequest
from engine.links.management import MANAGEMENT, Registration, ServerFacts
from engine.listener import KEEPALIVE_TIMEOUT, ConnectionGuard, TlsListener
from engine.pki import peer_identity

log = logging.getLogger(__name__)

#: Registration and heartbeat bodies are a few KiB; anything bigger is refused with 413.
MAX_BODY = 64 * 1024
LINK = web.AppKey("link", UnixJsonClient)
CA_PEM = web.AppKey("ca_pem", bytes)


def _port(request: web.Request) -> int | None:
    """The management port a request came in on (two while the port moves)."""
    sockname = request.transport.get_extra_info("sockname") if request.transport else None
    return int(sockname[1]) if sockname else None


async def get_ca(request: web.Request) -> web.Response:
    """The CA certificate, for a mobility service to compare with the fingerprint it was given."""
    return web.Response(body=request.app[CA_PEM], content_type="application/x-pem-file")


async def register(request: web.Request) -> web.Response:
    reg = Registration.parse(await read_json(request))
    answer = await request.app[LINK].call("POST", "/agent/register",
                                          RegisterRequest(reg, request.remote, port=_port(request)), Registered)
    log.info("register.complete name=%s address=%s", reg.name, request.remote)
    return web.json_response(encode(answer))


async def heartbeat(request: web.Request) -> web.Response:
    peer = peer_identity(request.transport.get_extra_info("peercert") if request.transport else None)
    if peer is None:
        raise CertificateRequired("Heartbeats need the client certificate this appliance issued at registration.")
    facts = ServerFacts.parse(await read_json(request))
    beat = HeartbeatRequest(server_id=peer.server_id, serial=peer.serial, facts=facts, address=request.remote,
                            port=_port(request))
    return web.json_response(encode(await request.app[LINK].call("POST", "/agent/heartbeat", beat, HeartbeatAnswer)))


def make_app(link: UnixJsonClient, ca_pem: bytes) -> web.Application:
    app = web.Application(client_max_size=MAX_BODY, middlewares=[error_middleware("management port", network=True)])
    speaks(app, MANAGEMENT, peer="The mobility service")
    app[LINK] = link
    app[CA_PEM] = ca_pem
    app.router.add_get("/v1/ca", get_ca)
    app.router.add_post("/v1/register", register)
    app.router.add_post("/v1/heartbeat", heartbeat)
    return app


async def serve(ctx: AgentContext) -> None:
    _, store = ctx.require_appliance()
    socks = ctx.require_listen_sockets()
    pki = open_pki(ctx.data_dir, store)
    link = ctx.supervisor_link()
    guard = ConnectionGuard()
    app = make_app(link, pki.ca_cert_path.read_bytes())
    app.middlewares.insert(0, guard.middleware)
    runner = web.AppRunner(app, access_log=None, handle_signals=False, keepalive_timeout=KEEPALIVE_TIMEOUT,
                           logger=TlsListener.peer_logger())
    await runner.setup()
    # While the management port moves, the old port is served too (one guard: one budget for both).
    context = pki.server_context()
    listeners = [TlsListener(sock, context, runner, port_name="management", guard=guard) for sock in socks]
    for listener in listeners:
        listener.start()
    log.info("management.listening addresses=%s", [s.getsockname() for s in socks])
    try:
        await ctx.stop.wait()
    finally:
        for listener in listeners:
            await listener.close()
        await runner.cleanup()
        await link.aclose()
