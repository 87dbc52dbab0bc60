"""The management port: registration of source servers and their heartbeats, the mobility feed and bundle.

The manager terminates TLS, checks every request, and forwards what it accepted to the
supervisor over the agent link; the supervisor owns the state and the CA key. The mobility
feed (``GET /v1/mobility/feed/...``) is served from the data directory to registered servers:
the verified update metadata and package of the mobility version the appliance offers
(:mod:`engine.updater.mobility`). The mobility bundle (``GET /v1/mobility/bundle``) and the CA
certificate are public: a source that is not registered yet downloads them to install the
mobility service (:mod:`engine.mobility_install`).

A registered source long-polls ``GET /v1/desired`` (management 1.4) to learn at once that its desired state
changed; the manager tells that from the state database (:mod:`engine.manager.desired`), and the heartbeat the
source then sends brings the new state from the supervisor.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import os
import re
from pathlib import Path

from aiohttp import web

from engine.agents import AgentContext
from engine.client import UnixJsonClient
from engine.config import DataDir
from engine.errors import CertificateRequired, NotFound
from engine.http_server import error_middleware, read_json, speaks
from engine.identity import open_pki
from engine.links import encode
from engine.links.agent import Ack, AuthorizeRequest, HeartbeatRequest, Registered, RegisterRequest
from engine.links.management import MANAGEMENT, DesiredChange, DesiredWait, HeartbeatAnswer, Registration, ServerFacts
from engine.listener import KEEPALIVE_TIMEOUT, ConnectionGuard, TlsListener
from engine.manager.desired import DesiredWatch
from engine.mobility_install import BUNDLES_ENV, bundles_dir, newest_bundle
from engine.pki import PeerIdentity, peer_identity
from engine.updater.mobility import mobility_release

log = logging.getLogger(__name__)

#: Registration and heartbeat bodies are a few KiB; anything bigger is refused with 413.
MAX_BODY = 64 * 1024
LINK = web.AppKey("link", UnixJsonClient)
CA_PEM = web.AppKey("ca_pem", bytes)
#: One part of a path in the mobility feed: a file or folder name, never "." or ".." or hidden.
_FEED_PART = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,199}$")


def _port(request: web.Request) -> int | None:
    """The management port a request came in on (two while the port moves)."""
    sockname = request.transport.get_extra_info("sockname") if request.transport else None
    return int(sockname[1]) if sockname else None


async def get_ca(request: web.Request) -> web.Response:
    """The CA certificate, for a mobility service (``/v1/ca``) or the install line (``/v1/ca.pem``) to compare
    with the fingerprint it was given."""
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
    # The generation is read before the supervisor answers: a change in between makes the source's next long poll
    # answer at once (one heartbeat more), never one that the answer lacks and the long poll misses.
    generation = request.app[WATCH].generation(peer.server_id)
    answer = await request.app[LINK].call("POST", "/agent/heartbeat", beat, HeartbeatAnswer)
    return web.json_response(encode(dataclasses.replace(answer, desired_generation=generation)))


async def desired(request: web.Request) -> web.Response:
    """The long poll ``GET /v1/desired?after=G&wait=S`` (management 1.4): answers as soon as the server's desired
    state is no longer at generation ``G``, or after ``S`` seconds (at most 25) unchanged. Only a registered
    server's current certificate is served (asked of the supervisor once per poll)."""
    peer = peer_identity(request.transport.get_extra_info("peercert") if request.transport else None)
    if peer is None:
        raise CertificateRequired("The desired state is served to registered servers only, with the client "
                                  "certificate this appliance issued at registration.")
    asked = DesiredWait.parse(request.query)
    await request.app[LINK].call("POST", "/agent/mobility-feed", AuthorizeRequest(peer.server_id, peer.serial), Ack)
    generation = await request.app[WATCH].wait(peer.server_id, asked.after, asked.wait)
    return web.json_response(encode(DesiredChange(generation=generation, changed=generation != asked.after)))


class MobilityFeed:
    """The files of the mobility version the appliance offers, for the servers it registered."""

    def __init__(self, data_dir: DataDir | None) -> None:
        self.data_dir = data_dir

    def __repr__(self) -> str:
        return f"<MobilityFeed {self.data_dir.root if self.data_dir else None}>"

    async def check(self, link: UnixJsonClient, peer: PeerIdentity) -> None:
        """Raise :class:`Revoked` unless the certificate is a registered server's current one (asked of the
        supervisor, which owns the inventory, for every file: an update is a handful of requests)."""
        await link.call("POST", "/agent/mobility-feed", AuthorizeRequest(peer.server_id, peer.serial), Ack)

    def file(self, tail: str) -> Path:
        """The feed's file at ``tail`` (``metadata/...`` or ``targets/...``); :class:`NotFound` for anything
        else, including a path that leads out of the feed."""
        if self.data_dir is None:
            raise NotFound("This appliance offers no mobility version.")
        release = mobility_release(self.data_dir)
        if release is None:
            raise NotFound("This appliance offers no mobility version: its mobility package is the one it came "
                           "with.")
        parts = tail.split("/")
        if len(parts) < 2 or len(parts) > 8 or parts[0] not in ("metadata", "targets") or \
                not all(_FEED_PART.match(p) for p in parts):
            raise NotFound(f"There is no {tail[:100]!r} in the mobility feed.")
        root = release.feed_dir.resolve()
        path = root.joinpath(*parts).resolve()
        if not path.is_relative_to(root) or not path.is_file():
            raise NotFound(f"There is no {tail[:100]!r} in the mobility feed.")
        return path


FEED = web.AppKey("feed", MobilityFeed)
#: The watch of the servers' desired states (without a data directory it watches nothing: long polls time out).
WATCH = web.AppKey("desired_watch", DesiredWatch)
#: The folder the mobility bundles are served from (:func:`engine.mobility_install.bundles_dir`).
BUNDLES = web.AppKey("bundles", Path)


async def mobility_feed(request: web.Request) -> web.StreamResponse:
    """A file of the mobility feed, streamed, for a registered server (its client certificate)."""
    peer = peer_identity(request.transport.get_extra_info("peercert") if request.transport else None)
    if peer is None:
        raise CertificateRequired("The mobility feed is served to registered servers only, with the client "
                                  "certificate this appliance issued at registration.")
    feed = request.app[FEED]
    await feed.check(request.app[LINK], peer)
    tail = request.match_info["tail"]
    path = await asyncio.to_thread(feed.file, tail)
    if tail.startswith("targets/agents/"):  # the package: once per update of a server
        log.info("mobility-feed.serve server_id=%s file=%s bytes=%d", peer.server_id, tail, path.stat().st_size)
    return web.FileResponse(path, chunk_size=256 * 1024,
                            headers={"Content-Type": "application/json" if path.suffix == ".json"
                                     else "application/octet-stream"})


async def mobility_bundle(request: web.Request) -> web.StreamResponse:
    """The newest mobility bundle, streamed from its file (ranges too: the install line resumes a download the
    port cut off). Public: a source that is not registered yet has no certificate, and the bundle holds no
    secret; the line checks the CA by its fingerprint before it trusts the download."""
    directory = request.app[BUNDLES]
    bundle = await asyncio.to_thread(newest_bundle, directory)
    if bundle is None:
        raise NotFound(f"This appliance has no mobility bundle installed: copy godwit-mobility-VERSION-linux-"
                       f"x86_64.tar.gz from the Godwit release to {directory} on the appliance, or install the "
                       "mobility service's package on the source and run `godwit mobility run` there.")
    if "Range" not in request.headers:  # one line per download, not per resumption
        log.info("mobility-bundle.serve version=%s address=%s bytes=%d", bundle.version, request.remote, bundle.size)
    return web.FileResponse(bundle.path, chunk_size=256 * 1024,
                            headers={"Content-Type": "application/gzip",
                                     "Content-Disposition": f'attachment; filename="{bundle.filename}"'})


def make_app(link: UnixJsonClient, ca_pem: bytes, data_dir: DataDir | None = None, *,
             bundles: Path | None = None) -> web.Application:
    """The management port's application; ``bundles`` is where the mobility bundles are (default
    :func:`~engine.mobility_install.bundles_dir`, which ``$GODWIT_MOBILITY_BUNDLES`` overrides). With a data
    directory, long polls of ``GET /v1/desired`` watch its state database; they are all answered when the
    application shuts down."""
    app = web.Application(client_max_size=MAX_BODY, middlewares=[error_middleware("management port", network=True)])
    speaks(app, MANAGEMENT, peer="The mobility service")
    app[LINK] = link
    app[CA_PEM] = ca_pem
    app[FEED] = MobilityFeed(data_dir)
    app[BUNDLES] = bundles or bundles_dir()
    watch = app[WATCH] = DesiredWatch(data_dir.state_db if data_dir is not None else None)

    async def release(_: web.Application) -> None:
        watch.close()

    app.on_shutdown.append(release)
    app.router.add_get("/v1/ca", get_ca)
    app.router.add_get("/v1/ca.pem", get_ca)
    app.router.add_get("/v1/mobility/bundle", mobility_bundle)
    app.router.add_post("/v1/register", register)
    app.router.add_post("/v1/heartbeat", heartbeat)
    app.router.add_get("/v1/desired", desired)
    app.router.add_get("/v1/mobility/feed/{tail:.+}", mobility_feed)
    return app


async def serve(ctx: AgentContext) -> None:
    _, store = ctx.require_appliance()
    socks = ctx.require_listen_sockets()
    pki = open_pki(ctx.data_dir, store)
    link = ctx.supervisor_link()
    guard = ConnectionGuard()
    app = make_app(link, pki.ca_cert_path.read_bytes(), ctx.data_dir)
    app.middlewares.insert(0, guard.middleware)
    runner = web.AppRunner(app, access_log=None, handle_signals=False, keepalive_timeout=KEEPALIVE_TIMEOUT,
                           logger=TlsListener.peer_logger())
    await runner.setup()
    # While the management port moves, the old port is served too (one guard: one budget for both).
    context = pki.server_context()
    listeners = [TlsListener(sock, context, runner, port_name="management", guard=guard) for sock in socks]
    for listener in listeners:
        listener.start()
    log.info("management.listening addresses=%s bundles=%s%s", [s.getsockname() for s in socks], app[BUNDLES],
             f" (from ${BUNDLES_ENV})" if BUNDLES_ENV in os.environ else "")
    ctx.ready()
    try:
        await ctx.stop.wait()
    finally:
        app[WATCH].close()  # long polls answered first: they must not hold the listeners' close
        for listener in listeners:
            await listener.close()
        await runner.cleanup()
        await link.aclose()
