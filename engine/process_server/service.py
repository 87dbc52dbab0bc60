"""The data port: mobility services stream batches of changed blocks here.

For each batch: the sender's certificate must be its server's current one and the server must be
replicating; the sequence number must be the next one for that disk (or, from a data 1.1 sender, up
to ``MAX_AHEAD`` beyond it); the body must parse and every run must match its digest and lie inside
the disk. The batch becomes one encrypted, authenticated segment in the cache, made durable (fsync)
before the acknowledgement is sent. CPU work runs in a thread pool, never on the loop that serves the
socket.

Batches of one disk that arrive together (a sender keeps a few in flight, on several connections) are
read, checked and sealed side by side, but made durable and acknowledged one after another, in order
(:class:`Turn`): a batch never becomes durable before the one before it, so what was acknowledged is
always a prefix of the stream. A batch ahead of its turn waits for it; it is refused
(:class:`WaitingForEarlier`, the sender sends again) if a batch before it was refused or did not come
within ``TURN_WAIT``, and (:class:`OutOfOrder`) if the batch before it came from another run of the
sender (one that stopped while its batches were on their way).
"""

from __future__ import annotations

import asyncio
import logging
import os
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

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
    WaitingForEarlier,
)
from engine.http_server import error_middleware, speaks
from engine.identity import open_pki
from engine.keys import DataKeys, master_key
from engine.links import encode
from engine.links.agent import Ack, Authorization, AuthorizeRequest, ReceivedReport
from engine.links.data import DATA, EPOCH_HEADER, MAX_AHEAD, SENDER_HEADER, DiskStream, StreamState, StreamStates
from engine.listener import KEEPALIVE_TIMEOUT, ConnectionGuard, TlsListener
from engine.pki import peer_identity
from engine.process_server.streams import Streams
from engine.protocol import HEADER_SIZE, MAX_BATCH, BatchHeader, Bookmark, Kind, batch_seq, decode_batch
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
#: How long a batch that came ahead of its turn waits for the batches before it.
TURN_WAIT = 30.0
#: Batches ahead of their turn that are read at once, of every disk of every server: each holds a body and a
#: segment in memory (a batch whose turn it is never waits for one of these).
AHEAD_SLOTS = 8


async def read_header(request: web.Request) -> bytes:
    """The first bytes of the request's body: the batch header, which says which batch it is."""
    try:
        return await request.content.readexactly(HEADER_SIZE)
    except asyncio.IncompleteReadError as exc:
        raise ProtocolError("The batch is shorter than its header.") from exc


async def read_body(request: web.Request, buffer: bytearray, length: int, header: bytes = b"") -> memoryview:
    """The request's body (``length`` bytes, its Content-Length; ``header`` of them already read) read into
    ``buffer``; a view of it."""
    view = memoryview(buffer)
    view[:len(header)] = header
    got = len(header)
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


class Turn:
    """One disk's stream among its batches in flight: the write of a segment and its stream state, one batch at
    a time (``lock``), and what the batches waiting for their turn need to know."""

    def __init__(self) -> None:
        self.lock = asyncio.Lock()
        #: Which run of the sender (``SENDER_HEADER``) the batch acknowledged last came from.
        self.sender = ""
        #: A batch that was not taken: those after it are refused until it is acknowledged.
        self.failed: int | None = None

    def __repr__(self) -> str:
        return f"<Turn sender={self.sender!r} failed={self.failed}>"

    def failed_before(self, seq: int) -> bool:
        return self.failed is not None and self.failed < seq


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
        self._turns: dict[tuple[str, int], Turn] = {}
        #: Notified whenever a stream's acknowledged batch advances, a batch is refused or an ahead slot is freed:
        #: what batches waiting for their turn or for a slot wait on.
        self._progress = asyncio.Condition()
        self._ahead_free = AHEAD_SLOTS
        #: Bytes of the batches admitted and not yet stored, per server id: counted against the cache's room.
        self._in_flight: dict[str, int] = {}
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
        unpacker = getattr(self._local, "unpacker", None)
        if unpacker is None:  # one per pool thread, as the compressor below
            unpacker = self._local.unpacker = zstandard.ZstdDecompressor()
        header, runs = decode_batch(body, disk_size=size, unpacker=unpacker)
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
        epoch = int(auth.desired.epoch or 0)
        sender = request.headers.get(SENDER_HEADER, "")
        turn = self._turns.setdefault((server_id, disk), Turn())

        def acked() -> int:
            return self.streams.get(server_id, disk, epoch).acked_seq

        try:
            async with asyncio.timeout(BODY_GRACE + length / MIN_RATE):
                first = await read_header(request)
        except TimeoutError as exc:
            raise self._too_slow() from exc
        seq = batch_seq(first)
        arrived = acked()
        if seq <= arrived and sender and sender == turn.sender:  # sent again after its answer was lost
            return web.json_response(encode(self.streams.get(server_id, disk, epoch)))
        if seq <= arrived or seq > arrived + (MAX_AHEAD if sender else 1):
            raise OutOfOrder(f"Expected batch {arrived + 1} of disk {disk}, got {seq}.")
        if turn.failed_before(seq):
            raise self._waiting(disk, seq, turn)
        slot = False
        try:
            if seq > arrived + 1:  # ahead of its turn: wait for a slot, or for its turn
                await self._wait(lambda: self._ahead_free > 0 or acked() >= seq - 1 or turn.failed_before(seq),
                                 disk, seq, turn)
                if turn.failed_before(seq):
                    raise self._waiting(disk, seq, turn)
                if acked() < seq - 1:
                    self._ahead_free -= 1
                    slot = True
            new = await self._take(request, length, server_id, disk, size, epoch, sender, seq, arrived, first, turn,
                                   acked)
        except (WaitingForEarlier, OutOfOrder):
            raise
        except Exception:
            if seq > acked():  # those after it cannot be taken before it
                turn.failed = seq if turn.failed is None else min(turn.failed, seq)
                await self._notify()
            raise
        finally:
            if slot:
                self._ahead_free += 1
                await self._notify()
        log.debug("batch.complete server=%s disk=%s seq=%s bytes=%s", server_id, disk, seq, length)
        self._report(server_id, disk, new, cache_full=False)
        return web.json_response(encode(new))

    async def _take(self, request: web.Request, length: int, server_id: str, disk: int, size: int, epoch: int,
                    sender: str, seq: int, arrived: int, first: bytes, turn: Turn,
                    acked: Callable[[], int]) -> StreamState:
        """Read the rest of the batch, check and seal it (side by side with the batches around it), then, in its
        turn, make it durable: the disk's new stream state."""
        self._admit(server_id, disk, self.streams.get(server_id, disk, epoch), length)
        self._in_flight[server_id] = self._in_flight.get(server_id, 0) + length
        out, buffer = self.segments.take(), self.bodies.take()
        reusable = reading = True
        loop = asyncio.get_running_loop()
        try:
            try:
                async with asyncio.timeout(BODY_GRACE + length / MIN_RATE):
                    body = await read_body(request, buffer, length, first)
            except TimeoutError as exc:
                raise self._too_slow() from exc
            try:
                segment, header = await loop.run_in_executor(self.pool, self._seal, server_id, epoch, seq, body,
                                                             disk, size, out)
                del body
                self.bodies.give(buffer)  # the segment is all that is needed now: another batch reads into it
                reading = False
                await self._wait(lambda: acked() >= seq - 1 or turn.failed_before(seq), disk, seq, turn)
                async with turn.lock:
                    state = self.streams.get(server_id, disk, epoch)
                    if state.acked_seq >= seq:  # the same batch, sent again meanwhile, was taken
                        if sender and sender == turn.sender:
                            return state
                        raise OutOfOrder(f"Expected batch {state.acked_seq + 1} of disk {disk}, got {seq}.")
                    if state.acked_seq < seq - 1:
                        raise self._waiting(disk, seq, turn)
                    if state.acked_seq > arrived and sender != turn.sender:
                        raise OutOfOrder(f"Batch {seq - 1} of disk {disk} came from another run of the sender "
                                         "than this one: start over from the appliance's stream state.")
                    return await self._store(server_id, disk, state, sender, seq, header, segment, length, turn)
            except asyncio.CancelledError:
                reusable = False  # the pool may still be using them
                raise
        finally:
            self._in_flight[server_id] -= length
            if reusable:
                if reading:
                    self.bodies.give(buffer)
                self.segments.give(out)

    async def _store(self, server_id: str, disk: int, state: StreamState, sender: str, seq: int,
                     header: BatchHeader, segment: memoryview, length: int, turn: Turn) -> StreamState:
        """The segment, then the stream state that acknowledges it, durably (in the batch's turn)."""
        loop = asyncio.get_running_loop()
        try:
            await loop.run_in_executor(self.pool, self.cache.put_segment, replica(server_id, state.epoch), disk, seq,
                                       segment)
            stored = len(segment)
            self.cache_used += stored
            self.cache_used_by[server_id] = self.cache_used_by.get(server_id, 0) + stored
            initial_done = max(state.initial_done, header.initial_done) if header.kind == Kind.INITIAL \
                else state.initial_done
            new = StreamState(epoch=state.epoch, acked_seq=seq, initial_done=initial_done,
                              initial_complete=state.initial_complete or (
                                  header.kind == Kind.INITIAL and header.bookmark != Bookmark.NONE),
                              bytes_received=state.bytes_received + length)
            await loop.run_in_executor(self.pool, self.streams.save, server_id, disk, new)
        except CacheFull as exc:
            # Another writer took the room meanwhile. Nothing is acknowledged: a segment written
            # without its stream state is replaced when the batch is sent again.
            self._report(server_id, disk, state, cache_full=True, detail=exc.message)
            raise
        turn.sender = sender
        if turn.failed is not None and turn.failed <= seq:
            turn.failed = None
        await self._notify()
        return new

    async def _wait(self, ready: Callable[[], bool], disk: int, seq: int, turn: Turn) -> None:
        """Until ``ready()``; :class:`WaitingForEarlier` after ``TURN_WAIT``."""
        async with self._progress:
            try:
                async with asyncio.timeout(TURN_WAIT):
                    await self._progress.wait_for(ready)
            except TimeoutError:
                raise self._waiting(disk, seq, turn) from None

    async def _notify(self) -> None:
        async with self._progress:
            self._progress.notify_all()

    @staticmethod
    def _waiting(disk: int, seq: int, turn: Turn) -> WaitingForEarlier:
        if turn.failed is not None and turn.failed < seq:
            return WaitingForEarlier(f"Batch {turn.failed} of disk {disk} was not taken: send it again before "
                                     f"batch {seq}.")
        return WaitingForEarlier(f"Batch {seq} of disk {disk} came {TURN_WAIT:.0f} s before the batches before it: "
                                 "send them first.")

    @staticmethod
    def _too_slow() -> ProtocolError:
        return ProtocolError(f"The batch arrived slower than {MIN_RATE // 1024} KiB/s; the connection was dropped.")

    def _admit(self, server_id: str, disk: int, state: StreamState, length: int) -> None:
        """Raise :class:`CacheFull` (and say why to the admin) if the cache has no room for a batch of ``length``
        beside the batches already admitted and not yet stored."""
        coming = self._in_flight.get(server_id, 0)
        if self.cache_used + sum(self._in_flight.values()) >= self.cache_limit:  # a batch may be larger than it
            self._report(server_id, disk, state, cache_full=True)
            raise CacheFull("The appliance's cache is full; retry when the log processor has caught up.")
        if self.cache_used_by.get(server_id, 0) + coming >= self.server_quota:  # one server cannot fill it for all
            self._report(server_id, disk, state, cache_full=True, share_full=True)
            raise CacheFull(f"This server's share of the appliance's cache is full "
                            f"({human_bytes(self.server_quota)} waiting to be applied); retry when the log "
                            "processor has applied its backlog.")
        try:
            # Batches are refused before the disk is down to its reserve.
            self.cache.check_room(length + sum(self._in_flight.values()))
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
