"""The data port: mobility services stream batches of changed blocks here.

For each batch: the sender's certificate must be its server's current one and the server must be
replicating; the sequence number must be the next one for that disk; the body must parse and every
run must match its digest and lie inside the disk. The batch becomes one encrypted, authenticated
segment in the cache, made durable (fsync) before the acknowledgement is sent. CPU work runs in a
thread pool, never on the loop that serves the socket.
"""

from __future__ import annotations

import asyncio
import logging
import os
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from typing import cast

import zstandard
from aiohttp import web

from engine.agents import AgentContext
from engine.codec import SEGMENT_MAX, Buffers, SegmentIdent, keep_freed_memory, seal_into
from engine.diskspace import human_bytes
from engine.errors import (
    CacheFull,
    CertificateRequired,
    EngineError,
    EpochChanged,
    NotReplicating,
    OutOfOrder,
    ProtocolError,
)
from engine.http_server import error_middleware, speaks
from engine.identity import open_pki
from engine.keys import DataKeys, master_key
from engine.links import encode
from engine.links.agent import Ack, Authorization, AuthorizeRequest, ReceivedReport
from engine.links.data import DATA, EPOCH_HEADER, DiskStream, StreamState, StreamStates
from engine.listener import KEEPALIVE_TIMEOUT, ConnectionGuard, TlsListener
from engine.pki import peer_identity
from engine.process_server.streams import Streams
from engine.protocol import MAX_BATCH, BatchHeader, Bookmark, Kind, decode_batch
from engine.storage import open_storage, replica

log = logging.getLogger(__name__)

#: A batch body must arrive at least this fast (bytes/s), plus a grace, or the connection is dropped.
MIN_RATE = 64 * 1024
BODY_GRACE = 30.0
AUTH_TTL = 1.0
REPORT_EVERY = 0.5
DEFAULT_CACHE_LIMIT_MB = 4096
#: The share of the cache one server may fill (``GODWIT_CACHE_SERVER_QUOTA_MB`` sets it in MiB): a server whose
#: segments wait in the cache up to it waits, while the others go on.
SERVER_SHARE = 0.5
#: Freed memory kept for the next batches (see :func:`engine.codec.keep_freed_memory`): a few batches' worth.
KEEP_FREED = 64 * 1024 * 1024


async def read_body(request: web.Request, buffer: bytearray, length: int) -> memoryview:
    """The request's body (``length`` bytes, its Content-Length) read into ``buffer``; a view of it."""
    view = memoryview(buffer)
    got = 0
    while got < length:
        chunk = await request.content.readany()
        if not chunk:
            break
        if got + len(chunk) > length:
            raise ProtocolError("The batch is longer than its Content-Length.")
        view[got:got + len(chunk)] = chunk
        got += len(chunk)
    if got != length:
        raise ProtocolError(f"The batch ended after {got} of its {length} bytes.")
    return view[:length]


class ProcessServer:
    def __init__(self, ctx: AgentContext) -> None:
        _, store = ctx.require_appliance()
        self.pki = open_pki(ctx.data_dir, store)
        self.keys = DataKeys(ctx.data_dir.keys, master_key(store))
        self.cache = open_storage(ctx.data_dir, store).cache
        self.streams = Streams(self.cache)
        self.link = ctx.supervisor_link()
        self.pool = ThreadPoolExecutor(max_workers=2, thread_name_prefix="process")
        self.cache_limit = int(os.environ.get("GODWIT_CACHE_LIMIT_MB", DEFAULT_CACHE_LIMIT_MB)) * 1024 * 1024
        self.cache_used = 0
        quota = os.environ.get("GODWIT_CACHE_SERVER_QUOTA_MB")
        self.server_quota = int(quota) * 1024 * 1024 if quota else int(self.cache_limit * SERVER_SHARE)
        #: Bytes waiting in the cache per server id (counted again every report; grown by each batch meanwhile).
        self.cache_used_by: dict[str, int] = {}
        self._auth: dict[tuple[str, int], tuple[float, Authorization]] = {}
        self._locks: dict[tuple[str, int], asyncio.Lock] = {}
        self._reports: dict[tuple[str, int], ReceivedReport] = {}
        self._local = threading.local()
        self.bodies = Buffers(MAX_BATCH)
        self.segments = Buffers(SEGMENT_MAX)

    def __repr__(self) -> str:
        return f"<ProcessServer streams={self.streams} cache_used={self.cache_used}>"

    async def authorize(self, request: web.Request) -> tuple[str, Authorization]:
        peer = peer_identity(request.transport.get_extra_info("peercert") if request.transport else None)
        if peer is None:
            raise CertificateRequired("The data port needs the client certificate this appliance issued.")
        key = (peer.server_id, peer.serial)
        sender_epoch = request.headers.get(EPOCH_HEADER, "")
        cached = self._auth.get(key)
        if cached is None or time.monotonic() - cached[0] > AUTH_TTL or \
                str(cached[1].desired.epoch) != sender_epoch:  # the admin may just have re-enabled it
            answer = await self.link.call("POST", "/agent/authorize", AuthorizeRequest(peer.server_id, peer.serial),
                                          Authorization)
            cached = (time.monotonic(), answer)
            self._auth[key] = cached
        auth = cached[1]
        if not auth.desired.replicate or auth.desired.epoch is None:
            self.streams.forget(peer.server_id)
            raise NotReplicating(f"Replication of {auth.name} is not enabled on the appliance.")
        if str(auth.desired.epoch) != sender_epoch:
            raise EpochChanged(f"Replication of {auth.name} was enabled anew; start over from the "
                               "appliance's stream state.")
        return peer.server_id, auth

    def _seal(self, server_id: str, epoch: int, seq: int, body: memoryview, disk: int,
              size: int, out: bytearray) -> tuple[memoryview, BatchHeader]:
        """Runs in the pool: parse and check the batch, then build the segment in ``out``."""
        header, runs = decode_batch(cast(bytes, body), disk_size=size)  # it reads any buffer
        if header.disk != disk:
            raise ProtocolError("The batch names another disk than its URL.")
        if header.seq != seq:
            raise OutOfOrder(f"Expected batch {seq} of disk {disk}, got {header.seq}.")
        compressor = getattr(self._local, "compressor", None)
        if compressor is None:  # one per pool thread: a compressor is not safe to share
            compressor = self._local.compressor = zstandard.ZstdCompressor(level=1)
        segment = seal_into(self.keys.get(server_id, create=True), SegmentIdent(server_id, disk, seq, epoch), header,
                            runs, compressor, out)
        return segment, header

    async def batch(self, request: web.Request) -> web.Response:
        server_id, auth = await self.authorize(request)
        try:
            disk = int(request.match_info["disk"])
            size = auth.desired.disks[disk].size
        except (ValueError, IndexError) as exc:
            raise ProtocolError("No such disk on this server.") from exc
        length = request.content_length
        if length is None or length > MAX_BATCH:
            raise ProtocolError(f"A batch needs a Content-Length of at most {MAX_BATCH} bytes.")
        lock = self._locks.setdefault((server_id, disk), asyncio.Lock())
        async with lock:
            state = self.streams.get(server_id, disk, int(auth.desired.epoch or 0))
            expected = state.acked_seq + 1
            buffer, out = self.bodies.take(), self.segments.take()
            reusable = True
            try:
                try:
                    async with asyncio.timeout(BODY_GRACE + length / MIN_RATE):
                        body = await read_body(request, buffer, length)
                except TimeoutError as exc:
                    raise ProtocolError(f"The batch arrived slower than {MIN_RATE // 1024} KiB/s; "
                                        "the connection was dropped.") from exc
                self._admit(server_id, disk, state, length)
                loop = asyncio.get_running_loop()
                try:
                    segment, header = await loop.run_in_executor(self.pool, self._seal, server_id, state.epoch,
                                                                 expected, body, disk, size, out)
                    stored = len(segment)
                    await loop.run_in_executor(self.pool, self.cache.put_segment, replica(server_id, state.epoch),
                                               disk, expected, segment)
                except asyncio.CancelledError:
                    reusable = False  # the pool may still be using them
                    raise
                except CacheFull as exc:
                    # Another writer took the room meanwhile. Nothing is acknowledged: a segment written
                    # without its stream state is replaced when the batch is sent again.
                    self._report(server_id, disk, state, cache_full=True, detail=exc.message)
                    raise
            finally:
                if reusable:
                    self.bodies.give(buffer)
                    self.segments.give(out)
            try:
                self.cache_used += stored
                self.cache_used_by[server_id] = self.cache_used_by.get(server_id, 0) + stored
                initial_done = max(state.initial_done, header.initial_done) if header.kind == Kind.INITIAL \
                    else state.initial_done
                new = StreamState(epoch=state.epoch, acked_seq=expected, initial_done=initial_done,
                                  initial_complete=state.initial_complete or (
                                      header.kind == Kind.INITIAL and header.bookmark != Bookmark.NONE),
                                  bytes_received=state.bytes_received + length)
                await loop.run_in_executor(self.pool, self.streams.save, server_id, disk, new)
            except CacheFull as exc:
                # Another writer took the room meanwhile. Nothing is acknowledged: a segment written
                # without its stream state is replaced when the batch is sent again.
                self._report(server_id, disk, state, cache_full=True, detail=exc.message)
                raise
        log.debug("batch.complete server=%s disk=%s seq=%s bytes=%s", server_id, disk, expected, length)
        self._report(server_id, disk, new, cache_full=False)
        return web.json_response(encode(new))

    def _admit(self, server_id: str, disk: int, state: StreamState, length: int) -> None:
        """Raise :class:`CacheFull` (and say why to the admin) if the cache has no room for a batch of ``length``."""
        if self.cache_used >= self.cache_limit:  # admitted while below: a batch may be larger than the limit
            self._report(server_id, disk, state, cache_full=True)
            raise CacheFull("The appliance's cache is full; retry when the log processor has caught up.")
        if self.cache_used_by.get(server_id, 0) >= self.server_quota:  # one server cannot fill it for all
            self._report(server_id, disk, state, cache_full=True, share_full=True)
            raise CacheFull(f"This server's share of the appliance's cache is full "
                            f"({human_bytes(self.server_quota)} waiting to be applied); retry when the log "
                            "processor has applied its backlog.")
        try:
            self.cache.check_room(length)  # batches are refused before the disk is down to its reserve
        except CacheFull as exc:
            self._report(server_id, disk, state, cache_full=True, detail=exc.message)  # the admin sees why
            raise

    async def stream_states(self, request: web.Request) -> web.Response:
        server_id, auth = await self.authorize(request)
        epoch = int(auth.desired.epoch or 0)
        states = StreamStates(tuple(DiskStream(d.index, self.streams.get(server_id, d.index, epoch))
                                    for d in auth.desired.disks))
        return web.json_response(encode(states))

    def _report(self, server_id: str, disk: int, state: StreamState, *, cache_full: bool,
                detail: str | None = None, share_full: bool = False) -> None:
        """Queue a progress report; ``detail`` says why batches are refused, when the disk's room is why."""
        self._reports[(server_id, disk)] = ReceivedReport(server_id=server_id, disk=disk, state=state,
                                                          cache_full=cache_full, cache_full_detail=detail,
                                                          share_full=share_full)

    async def report_loop(self) -> None:
        """Progress to the supervisor, coalesced; and the cache's real size (the log processor frees it)."""
        loop = asyncio.get_running_loop()
        while True:
            await asyncio.sleep(REPORT_EVERY)
            try:
                self.cache_used_by = await loop.run_in_executor(self.pool, self.cache.used_bytes_by_server)
                self.cache_used = sum(self.cache_used_by.values())
            except OSError as exc:  # keep the last figure; never let back-pressure stick
                log.warning("cache.size-unknown %s", exc)
            reports, self._reports = self._reports, {}
            for key, report in reports.items():
                try:
                    await self.link.call("POST", "/agent/received", report, Ack)
                except EngineError as exc:  # e.g. the engine restarting, or its disk full: sent again next time
                    log.warning("report.failed %s", exc)
                    self._reports.setdefault(key, report)  # unless a newer one came meanwhile


async def serve(ctx: AgentContext) -> None:
    sock, *_ = ctx.require_listen_sockets()
    keep_freed_memory(KEEP_FREED)
    server = ProcessServer(ctx)
    server.cache_used_by = server.cache.used_bytes_by_server()
    server.cache_used = sum(server.cache_used_by.values())
    for stored in server.streams.stored():  # the supervisor may have restarted too
        server._report(stored.server_id, stored.disk, stored.state, cache_full=False)
    guard = ConnectionGuard()
    app = web.Application(client_max_size=MAX_BATCH,
                          middlewares=[guard.middleware, error_middleware("data port", network=True)])
    speaks(app, DATA, peer="The mobility service")
    app.router.add_get("/v1/streams", server.stream_states)
    app.router.add_post("/v1/streams/{disk}/batches", server.batch)
    runner = web.AppRunner(app, access_log=None, handle_signals=False, keepalive_timeout=KEEPALIVE_TIMEOUT,
                           logger=TlsListener.peer_logger())
    await runner.setup()
    listener = TlsListener(sock, server.pki.server_context(), runner, port_name="data", guard=guard)
    listener.start()
    reporter = asyncio.create_task(server.report_loop())
    log.info("data.listening address=%s", sock.getsockname())
    ctx.ready()
    try:
        await ctx.stop.wait()
    finally:
        reporter.cancel()
        await listener.close()
        await runner.cleanup()
        await server.link.aclose()
        server.pool.shutdown(wait=True)
