"""The ``azure`` target: seed disks as page blobs in an Azure Blob Storage container, recovery points as blob
snapshots, and nothing readable by the storage account (docs/azure-layout.md).

Segments stay in the appliance's local cache (:class:`~engine.storage.local.LocalCache`) until applied: an outage
of the account only lengthens the backlog. Each seed disk is three things under ``<server id>/<epoch>/disk<N>/``:

- ``seed``: a page blob of *slots*, one per 64 KiB block of the source disk, each the block encrypted with
  AES-256-GCM (padded to 64 KiB) followed by a 512-byte trailer (magic, format, length, nonce, tag, offset). A
  slot never written, or cleared for a run of zeros, reads as zeros: a hole, and a hole in an export.
- its snapshots: the recovery points, each with its point id, kind and source time in the snapshot's metadata.
- ``meta``: the disk's state (applied segment, resync generations, points and their snapshots), encrypted too,
  replaced only under an ETag condition, so two appliances never both write one copy of a server.

The key of a seed disk is derived (HKDF-SHA256) from the server's data key and the copy's name, and each block's
position is authenticated with it: a page changed in the account, or moved, fails the check on reading and is
reported, never returned.

The SDK's asyncio client runs on one event loop thread per process; the storage interface stays synchronous (the
log processor applies from a thread pool), each call waiting for its coroutine there.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import json
import os
import struct
import threading
import time
import warnings
from collections import deque
from collections.abc import Awaitable, Callable, Coroutine, Iterator
from concurrent.futures import Future
from dataclasses import dataclass
from datetime import datetime
from typing import Any, TypeVar

from azure.core import MatchConditions
from azure.core.exceptions import (
    AzureError,
    ClientAuthenticationError,
    HttpResponseError,
    ResourceExistsError,
    ResourceModifiedError,
    ResourceNotFoundError,
)
from azure.storage.blob.aio import BlobClient, BlobLeaseClient, BlobServiceClient, ContainerClient, ExponentialRetry
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from engine.codec import Block
from engine.errors import EngineError, NotFound, TargetCorrupt, TargetTaken, TargetUnreachable, TargetUnwritable
from engine.protocol import BLOCK
from engine.storage import PointImage, PointInfo, RefusalRecord, rechunk
from engine.storage.local import LocalCache, LocalStorage

T = TypeVar("T")

# aiohttp warns that a body over 1 MiB given as bytes blocks its event loop while it is copied: that loop is the
# storage's own thread (nothing else waits on it), and 4 MiB page writes take a quarter of the round trips.
warnings.filterwarnings("ignore", "Sending a large body directly with raw bytes", ResourceWarning)

SECTOR = 512
#: A block's slot in the seed blob: the block's ciphertext (padded to a whole block), then its trailer sector.
SLOT = BLOCK + SECTOR
_TRAILER = struct.Struct(">4sBxxxI12s16sQ")  # magic, format, length, nonce, tag, block offset
_MAGIC = b"GDWS"
_FORMAT = 1
_HOLE = bytes(SECTOR)
_ZEROS = bytes(BLOCK)
#: Slots per request: a page write is at most 4 MiB.
SLOTS_PER_REQUEST = (4 * 1024 * 1024) // SLOT
#: Requests under way at once per call (writing a segment, reading a point).
CONCURRENCY = 8
LEASE_SECONDS = 15  #: the shortest Azure allows: a holder that died (or an outage) keeps it the least
#: How long a request may take before it is given up (the SDK retries within it).
REQUEST_TIMEOUT = 120.0


@dataclass(frozen=True)
class AzureLocation:
    """Where seed disks go: a container of a storage account, and the credential to reach it (a connection
    string or a SAS token; never shown, never logged)."""

    account_url: str
    container: str
    credential: str

    def __repr__(self) -> str:
        return f"<AzureLocation {self.account_url} container={self.container}>"

    def describe(self) -> str:
        return f"container {self.container} of {self.account_url}"

    def service(self) -> BlobServiceClient:
        # The SDK's own retries stay short (its default waits 15 s and more between tries): the log processor
        # retries a disk with its own backoff, and says why meanwhile.
        options: dict[str, Any] = {"retry_policy": ExponentialRetry(initial_backoff=1, increment_base=2,
                                                                    retry_total=2),
                                   "connection_timeout": 10, "read_timeout": 60}
        if "AccountName=" in self.credential or "BlobEndpoint=" in self.credential:
            return BlobServiceClient.from_connection_string(self.credential, **options)
        return BlobServiceClient(self.account_url, credential=self.credential.lstrip("?"), **options)


class _IoThread:
    """The event loop the SDK's clients live on, one per process, started on first use."""

    _lock = threading.Lock()
    _instance: _IoThread | None = None

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self._containers: dict[AzureLocation, ContainerClient] = {}
        threading.Thread(target=self.loop.run_forever, name="azure-io", daemon=True).start()

    @classmethod
    def get(cls) -> _IoThread:
        with cls._lock:
            if cls._instance is None:
                cls._instance = _IoThread()
            return cls._instance

    def container(self, location: AzureLocation) -> ContainerClient:
        """The container's client, one per location and process (its connection pool belongs to this loop)."""
        with self._lock:
            client = self._containers.get(location)
        if client is None:
            async def make() -> ContainerClient:
                return location.service().get_container_client(location.container)

            client = _result(self.submit(make()))
            with self._lock:
                client = self._containers.setdefault(location, client)
        return client

    def submit(self, coro: Coroutine[Any, Any, T]) -> Future[T]:
        return asyncio.run_coroutine_threadsafe(coro, self.loop)

    def run(self, coro: Coroutine[Any, Any, T], where: str) -> T:
        """Run ``coro`` there and wait; the SDK's errors become ours (see :func:`_translate`)."""
        return _result(self.submit(_translated(coro, where)))


def _result(future: Future[T]) -> T:
    try:
        return future.result(REQUEST_TIMEOUT)
    except TimeoutError as exc:
        future.cancel()
        raise TargetUnreachable(errno.ETIMEDOUT, f"the storage account did not answer within "
                                                 f"{REQUEST_TIMEOUT:.0f} s") from exc


async def _translated(coro: Awaitable[T], where: str) -> T:
    try:
        return await coro
    except TargetUnreachable:
        raise
    except AzureError as exc:
        raise _translate(exc, where) from exc
    except (TimeoutError, OSError) as exc:
        raise TargetUnreachable(errno.EHOSTUNREACH, f"{where} cannot be reached ({exc})") from exc


def _translate(exc: AzureError, where: str) -> Exception:
    """The SDK's error as the one line an admin acts on."""
    code = getattr(exc, "error_code", None)
    code = getattr(code, "value", code)  # a StorageErrorCode, as the account spells it
    if isinstance(exc, ClientAuthenticationError) or getattr(exc, "status_code", None) in (401, 403):
        return TargetUnwritable(f"The storage account refused the credential for {where} ({code or 'forbidden'}): "
                                "give a connection string or SAS token that may read, write, create and delete "
                                "there (`godwit target set azure ...`).")
    if isinstance(exc, HttpResponseError) and exc.status_code is not None and exc.status_code < 500 \
            and exc.status_code not in (408, 429):
        reason = (exc.reason or "").strip() or str(code or exc.status_code)
        return TargetUnwritable(f"The storage account refused a request for {where} ({exc.status_code} {reason}).")
    status = getattr(exc, "status_code", None)
    detail = f"HTTP {status}" if status else type(exc).__name__
    return TargetUnreachable(errno.EHOSTUNREACH, f"{where} cannot be reached ({detail})")


def disk_key(data_key: bytes, replica: str, disk: int) -> bytes:
    """The key of one seed disk: each copy of each disk has its own, so no nonce is ever shared between them."""
    return HKDF(hashes.SHA256(), 32, salt=None, info=f"godwit seed {replica}/disk{disk}".encode()).derive(data_key)


def seal_block(aead: AESGCM, name: str, offset: int, data: bytes | memoryview) -> bytes:
    """A block's slot: its ciphertext padded to a whole block, then the trailer sector."""
    nonce = os.urandom(12)
    sealed = aead.encrypt(nonce, data, f"{name}@{offset}".encode())
    trailer = _TRAILER.pack(_MAGIC, _FORMAT, len(data), nonce, sealed[-16:], offset)
    return b"".join((sealed[:-16], bytes(BLOCK - len(data)), trailer, bytes(SECTOR - _TRAILER.size)))


def open_block(aead: AESGCM, name: str, offset: int, slot: bytes) -> bytes | None:
    """A slot's block (None: a hole); :class:`TargetCorrupt` if it is not what the appliance wrote there."""
    trailer = slot[BLOCK:]
    if trailer == _HOLE:
        return None
    magic, fmt, length, nonce, tag, where = _TRAILER.unpack_from(trailer)
    if magic != _MAGIC or fmt != _FORMAT or where != offset or length > BLOCK:
        raise TargetCorrupt(f"The block at offset {offset} of {name} in the target storage is not one the appliance "
                            "wrote: the storage account's data was changed outside the appliance.")
    try:
        return aead.decrypt(nonce, slot[:length] + tag, f"{name}@{offset}".encode())
    except InvalidTag:
        raise TargetCorrupt(f"The block at offset {offset} of {name} in the target storage fails its integrity "
                            "check: the storage account's data was changed outside the appliance.") from None


class AzureStorage:
    """The cache of ``local``, and seed disks in an Azure Blob Storage container. ``data_key`` gives a server's
    data key (the one its segments are encrypted with)."""

    kind = "azure"

    def __init__(self, local: LocalStorage, location: AzureLocation, data_key: Callable[[str], bytes]) -> None:
        self._local = local
        self.location = location
        self._data_key = data_key
        self._io = _IoThread.get()

    def __repr__(self) -> str:
        return f"<AzureStorage {self.location!r}>"

    @property
    def cache(self) -> LocalCache:
        return self._local.cache

    def container(self) -> ContainerClient:
        return self._io.container(self.location)

    def target_disk(self, replica: str, disk: int, size: int) -> AzureTargetDisk:
        server_id = replica.split("/", 1)[0]
        key = disk_key(self._data_key(server_id), replica, disk)
        return AzureTargetDisk(self._io, self.container(), f"{replica}/disk{disk}", size, key)

    @contextlib.contextmanager
    def open_point(self, replica: str, disk: int, size: int, point_id: int, *, chunk: int,
                   name: str) -> Iterator[PointImage]:
        target = self.target_disk(replica, disk, size)
        if not target.exists:
            raise NotFound(f"Recovery point {point_id} of {name} is gone: replication of {name} was disabled.")
        with target.locked():
            target.reload()
            point = next((p for p in target.points() if p.id == point_id), None)
            if point is None:
                raise NotFound(f"Recovery point {point_id} of {name} was just pruned; export a newer one.")
            yield PointImage(point, target.size, target.read_point(point_id, chunk))

    def _delete(self, prefix: str, keep: Callable[[str], bool] = lambda _: False) -> None:
        container = self.container()

        async def delete() -> None:
            names = [b.name async for b in container.list_blobs(name_starts_with=prefix)]
            for name in names:
                if keep(name):
                    continue
                blob = container.get_blob_client(name)
                with contextlib.suppress(ResourceNotFoundError, HttpResponseError):
                    await BlobLeaseClient(blob).break_lease(lease_break_period=0)
                with contextlib.suppress(ResourceNotFoundError):
                    await blob.delete_blob(delete_snapshots="include")

        self._io.run(delete(), self.location.describe())

    def delete_server(self, server_id: str) -> None:
        self._local.delete_server(server_id)
        self._delete(f"{server_id}/")

    def delete_older_copies(self, server_id: str, epoch: int) -> None:
        self._local.delete_older_copies(server_id, epoch)

        def keep(name: str) -> bool:
            part = name.split("/")[1]
            return not part.isdigit() or int(part) >= epoch

        self._delete(f"{server_id}/", keep)

    def target_location(self) -> str:
        return self.location.describe()

    def target_room(self) -> str:
        return f"the {self.location.describe()}"

    def probe_target(self) -> str:
        """A page blob in the container (created first if it does not exist): write a page, snapshot it, read both
        back, delete it. Each failure is one line that says what to fix."""
        container = self.container()
        name = f".probe-{os.getpid()}-{os.urandom(4).hex()}"
        page = os.urandom(SECTOR)

        async def probe() -> float:
            blob = container.get_blob_client(name)
            before = time.time()
            try:
                created = await blob.create_page_blob(SECTOR)
            except ResourceNotFoundError:  # no container yet: made now (a SAS for an existing one need not may)
                with contextlib.suppress(ResourceExistsError):
                    await container.create_container()
                before = time.time()
                created = await blob.create_page_blob(SECTOR)
            after = time.time()
            try:
                await blob.upload_page(page, 0, SECTOR)
                snapshot = await blob.create_snapshot()
                read = await (await blob.download_blob()).readall()
                snapped = await (await container.get_blob_client(name, snapshot=str(snapshot["snapshot"]))
                                 .download_blob()).readall()
                if read != page or snapped != page:
                    raise TargetUnwritable(f"A probe page blob in the {self.location.describe()} read back "
                                           "differently: check the account.")
            finally:
                with contextlib.suppress(AzureError):
                    await blob.delete_blob(delete_snapshots="include")
            modified = created["last_modified"]
            assert isinstance(modified, datetime)
            server = modified.timestamp()
            return max(0.0, before - 1 - server, server - after - 1)  # Last-Modified has whole seconds

        skew = self._io.run(probe(), self.location.describe())
        if skew > 300:
            raise TargetUnwritable(f"The appliance's clock is {skew:.0f} s off the storage account's: the account "
                                   "refuses requests more than 15 minutes off. Set the clock (NTP).")
        return f"the {self.location.describe()} takes page blobs and snapshots (clock {skew:.0f} s off)"


class AzureTargetDisk(RefusalRecord):
    """A seed disk in a page blob; its metadata and points as of the last read (:meth:`reload`)."""

    def __init__(self, io: _IoThread, container: ContainerClient, name: str, size: int, key: bytes) -> None:
        self._io = io
        self._container = container
        self.name = name
        self._aead = AESGCM(key)
        self._seed: BlobClient = container.get_blob_client(f"{name}/seed")
        self._meta: BlobClient = container.get_blob_client(f"{name}/meta")
        self._etag: str | None = None
        self._lease: BlobLeaseClient | None = None
        self.size = size
        self.applied_seq = self.refused_seq = self.refused_gen = self.resync_done = self.resync_seen = 0
        self._points: list[tuple[PointInfo, str]] = []  # each point and its snapshot
        self.exists = self.reload()

    def __repr__(self) -> str:
        return f"<AzureTargetDisk {self.name} applied={self.applied_seq} points={[p.id for p, _ in self._points]}>"

    def _run(self, coro: Coroutine[Any, Any, T]) -> T:
        return self._io.run(coro, f"seed disk {self.name}")

    @property
    def _slots(self) -> int:
        return -(-self.size // BLOCK)

    # --- metadata ------------------------------------------------------------------------------------------
    def reload(self) -> bool:
        """Read the disk's metadata anew; False if the disk does not exist yet."""
        async def read() -> tuple[bytes, str] | None:
            try:
                download = await self._meta.download_blob()
            except ResourceNotFoundError:
                return None
            return await download.readall(), download.properties.etag

        found = self._run(read())
        if found is None:
            return False
        sealed, self._etag = found
        try:
            meta = json.loads(self._aead.decrypt(sealed[:12], sealed[12:], f"{self.name}/meta".encode()))
        except (InvalidTag, ValueError) as exc:
            raise TargetCorrupt(f"The metadata of seed disk {self.name} in the target storage fails its integrity "
                                "check: it was changed outside the appliance.") from exc
        if meta.get("format") != _FORMAT:
            raise TargetCorrupt(f"The metadata of seed disk {self.name} is of format {meta.get('format')!r}, which "
                                "this appliance does not know: a newer appliance wrote it; update this one.")
        self.size = int(meta["size"])
        self.applied_seq, self.refused_seq = int(meta["applied_seq"]), int(meta["refused_seq"])
        self.refused_gen, self.resync_done = int(meta["refused_gen"]), int(meta["resync_done"])
        self.resync_seen = int(meta["resync_seen"])
        self._points = [(PointInfo(p["id"], p["created_at"], p["kind"], p["source_time"]), p["snapshot"])
                        for p in meta["points"]]
        return True

    def _save_meta(self) -> None:
        meta = {"format": _FORMAT, "size": self.size, "applied_seq": self.applied_seq,
                "refused_seq": self.refused_seq, "refused_gen": self.refused_gen, "resync_done": self.resync_done,
                "resync_seen": self.resync_seen,
                "points": [{**p.__dict__, "snapshot": snap} for p, snap in self._points]}
        nonce = os.urandom(12)
        sealed = nonce + self._aead.encrypt(nonce, json.dumps(meta).encode(), f"{self.name}/meta".encode())
        condition: dict[str, Any] = ({"etag": self._etag, "match_condition": MatchConditions.IfNotModified}
                                     if self._etag else {"match_condition": MatchConditions.IfMissing})

        async def write() -> str:
            result = await self._meta.upload_blob(sealed, overwrite=True, **condition)
            return str(result["etag"])

        try:
            self._etag = self._run(write())
        except TargetUnwritable as exc:
            if not isinstance(exc.__cause__, ResourceModifiedError | ResourceExistsError):
                raise
            if self._landed(meta):  # an earlier try of ours was written, and only its answer lost
                return
            raise TargetTaken(f"Seed disk {self.name} was changed by another writer since this appliance read "
                              "it: two appliances must not replicate one server into one container.") from exc

    def _landed(self, meta: dict[str, Any]) -> bool:
        """Whether the metadata in the account is ``meta`` (then its ETag is taken as ours)."""
        async def read() -> tuple[bytes, str]:
            download = await self._meta.download_blob()
            return await download.readall(), str(download.properties.etag)

        sealed, etag = self._run(read())
        try:
            stored = json.loads(self._aead.decrypt(sealed[:12], sealed[12:], f"{self.name}/meta".encode()))
        except (InvalidTag, ValueError):
            return False
        if stored != json.loads(json.dumps(meta)):
            return False
        self._etag = etag
        return True

    def _create(self) -> None:
        """The seed blob and its first metadata (a disk is created on its first write)."""
        async def create() -> None:
            with contextlib.suppress(ResourceExistsError):
                await self._seed.create_page_blob(self._slots * SLOT, match_condition=MatchConditions.IfMissing)

        self._run(create())
        self._save_meta()
        self.exists = True

    # --- the lock ------------------------------------------------------------------------------------------
    @contextlib.contextmanager
    def locked(self, *, blocking: bool = True) -> Iterator[None]:
        """A lease on the seed blob, renewed while held: writes need it, and another holder (an export, the log
        processor, another appliance) waits or gets BlockingIOError."""
        if not self.exists:
            self._create()
        lease = BlobLeaseClient(self._seed)

        async def acquire() -> bool:
            try:
                await lease.acquire(lease_duration=LEASE_SECONDS)
                return True
            except HttpResponseError as exc:
                if exc.status_code == 409:
                    return False
                raise

        while not self._run(acquire()):
            if not blocking:
                raise BlockingIOError(errno.EWOULDBLOCK, f"seed disk {self.name} is in use")
            time.sleep(0.2)
        renewing = self._io.submit(self._renew(lease))
        self._lease = lease
        try:
            yield
        finally:
            self._lease = None
            renewing.cancel()
            async def release() -> None:
                await lease.release()

            with contextlib.suppress(OSError, EngineError):
                self._run(release())

    @staticmethod
    async def _renew(lease: BlobLeaseClient) -> None:
        while True:
            await asyncio.sleep(LEASE_SECONDS / 3)
            with contextlib.suppress(AzureError):
                await lease.renew()

    # --- writing -------------------------------------------------------------------------------------------
    def _writes(self, blocks: list[Block]) -> list[tuple[int, bytes | None, int]]:
        """The segment as page writes: ``(blob offset, slots or None to clear, length)``, consecutive slots of
        one kind merged up to a request's size. A block written twice in a segment is written once, as last."""
        slots: dict[int, bytes | memoryview | None] = {}
        for b in blocks:
            for off in range(b.offset, b.offset + b.length, BLOCK):
                n = min(BLOCK, b.offset + b.length - off, self.size - off)
                slots[off] = None if b.data is None else b.data[off - b.offset:off - b.offset + n]
        writes: list[tuple[int, bytes | None, int]] = []
        run: list[bytes] = []
        start, clearing, count = -1, False, 0
        for off in sorted(slots):
            data = slots[off]
            index = off // BLOCK
            if count and (index != start + count or clearing != (data is None) or count == SLOTS_PER_REQUEST):
                writes.append((start * SLOT, None if clearing else b"".join(run), count * SLOT))
                run, count = [], 0
            if not count:
                start, clearing = index, data is None
            if data is not None:
                run.append(seal_block(self._aead, self.name, off, data))
            count += 1
        if count:
            writes.append((start * SLOT, None if clearing else b"".join(run), count * SLOT))
        return writes

    def apply(self, seq: int, blocks: list[Block], *, point: PointInfo | None = None,
              resync_pass: int | None = None, resync_done: int | None = None) -> None:
        """The blocks first (concurrently: the pages of one segment are disjoint), then the point's snapshot
        (one left by a crash before the metadata was written is reused), then the metadata, under its ETag.
        Re-applying after a crash anywhere writes the same blocks again and ends in the same state."""
        if seq <= self.applied_seq:
            return
        if not self.exists:
            self._create()
        lease = self._lease.id if self._lease is not None else None
        writes = self._writes(blocks)

        async def write(limit: asyncio.Semaphore, offset: int, data: bytes | None, length: int) -> None:
            async with limit:
                if data is None:
                    await self._seed.clear_page(offset, length, lease=lease)
                else:
                    await self._seed.upload_page(data, offset, length, lease=lease)

        async def write_all() -> str | None:
            limit = asyncio.Semaphore(CONCURRENCY)
            await _gather(write(limit, *w) for w in writes)
            if point is None or any(p.id == point.id for p, _ in self._points):
                return None
            async for snap in self._container.list_blobs(name_starts_with=self._seed.blob_name,
                                                          include=["snapshots", "metadata"]):
                if snap.snapshot and (snap.metadata or {}).get("point") == str(point.id):
                    return str(snap.snapshot)
            made = await self._seed.create_snapshot(
                metadata={"point": str(point.id), "kind": point.kind, "source_time": repr(point.source_time)},
                lease=lease)
            return str(made["snapshot"])

        snapshot = self._run(write_all())
        if snapshot is not None and point is not None:
            self._points.append((point, snapshot))
        if resync_pass is not None:
            self.resync_seen = max(self.resync_seen, resync_pass)
        if resync_done is not None:
            self.resync_done = max(self.resync_done, resync_done)
        self.applied_seq = seq
        self._save_meta()

    # --- points --------------------------------------------------------------------------------------------
    def points(self) -> list[PointInfo]:
        return [p for p, _ in self._points]

    def delete_point(self, point_id: int) -> None:
        """Only the oldest point goes; the metadata first, so a crash leaves a snapshot no point names, never a
        point without its snapshot."""
        if not self._points or self._points[0][0].id != point_id:
            raise ValueError("only the oldest recovery point can be deleted")
        _, snapshot = self._points.pop(0)
        self._save_meta()

        async def delete() -> None:
            with contextlib.suppress(ResourceNotFoundError):
                await self._container.get_blob_client(self._seed.blob_name, snapshot=snapshot).delete_blob()

        self._run(delete())

    def read_point(self, point_id: int | None, chunk: int = BLOCK) -> Iterator[tuple[int, bytes | None]]:
        snapshot = None
        if point_id is not None:
            snapshot = next((s for p, s in self._points if p.id == point_id), None)
            if snapshot is None:
                raise KeyError(point_id)
        return rechunk(self._blocks(snapshot), size=self.size, unit=BLOCK, chunk=chunk)

    def _blocks(self, snapshot: str | None) -> Iterator[tuple[int, bytes | None]]:
        """The disk block by block (None: zeros), reading only the slots written, a few requests ahead."""
        if not self.exists:
            yield from ((off, None) for off in range(0, self.size, BLOCK))
            return
        blob = self._container.get_blob_client(self._seed.blob_name, snapshot=snapshot)

        async def written() -> list[int]:
            slots: set[int] = set()
            async for r in blob.list_page_ranges():
                if not r.cleared and r.start is not None and r.end is not None:
                    slots.update(range(r.start // SLOT, r.end // SLOT + 1))
            return sorted(s for s in slots if s < self._slots)

        async def fetch(first: int, count: int) -> bytes:
            return await (await blob.download_blob(first * SLOT, count * SLOT)).readall()

        slots = self._run(written())
        requests: list[list[int]] = []  # runs of consecutive written slots, a request's size at most
        for s in slots:
            if requests and s == requests[-1][0] + requests[-1][1] and requests[-1][1] < SLOTS_PER_REQUEST:
                requests[-1][1] += 1
            else:
                requests.append([s, 1])
        ahead: deque[tuple[int, int, Future[bytes]]] = deque()
        pending = iter(requests)
        where = f"seed disk {self.name}"
        nxt = 0
        try:
            while True:
                while len(ahead) < CONCURRENCY:
                    req = next(pending, None)
                    if req is None:
                        break
                    ahead.append((req[0], req[1], self._io.submit(_translated(fetch(req[0], req[1]), where))))
                if not ahead:
                    break
                first, count, future = ahead.popleft()
                data = _result(future)
                for s in range(nxt, first):
                    yield s * BLOCK, None
                for i in range(count):
                    off = (first + i) * BLOCK
                    block = open_block(self._aead, self.name, off, data[i * SLOT:(i + 1) * SLOT])
                    yield off, None if block is None or block == _ZEROS[:len(block)] else block
                nxt = first + count
            for s in range(nxt, self._slots):
                yield s * BLOCK, None
        finally:  # a reader that stops early (a failed check, a cancelled export) leaves no request running
            for _, _, future in ahead:
                future.cancel()


async def _gather(coros: Iterator[Coroutine[Any, Any, None]]) -> None:
    """Run them all at once; the first failure cancels the rest and is raised as itself."""
    tasks = [asyncio.ensure_future(c) for c in coros]
    try:
        await asyncio.gather(*tasks)
    except BaseException:
        for t in tasks:
            t.cancel()
        raise
