"""The ``local`` storage backend: segment files and sparse seed disks under the data directory.

Layout (docs/segment-format.md): ``cache/<server id>/<epoch>/disk<N>/`` holds the segments
(``<seq>.seg``), the stream state (``stream.json``) and ``refused/``; ``target/<server id>/<epoch>/
disk<N>/`` holds the seed disk (``seed.img``), ``meta.json``, the undo logs and ``lock``. Nothing
outside this module knows it.

Recovery points of a seed disk are kept as undo logs: once a point exists, the first write to a
block after it saves the block's previous content in that point's undo log. The disk at point P is
then, block by block, the oldest saved copy from P's log or a newer one, else the seed disk itself.
Pruning the oldest point deletes its log. Every write is ordered so that a crash at any moment
leaves a state that re-applying the same segment completes (see docs/segment-format.md).
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import fcntl
import json
import mmap
import os
import shutil
import struct
import threading
import zlib
from collections.abc import Iterator
from pathlib import Path

from engine import diskspace
from engine.codec import Block
from engine.errors import CacheFull, NotFound, TargetUnwritable
from engine.files import data_extents, write_atomically
from engine.links.data import StreamState
from engine.protocol import BLOCK, MAX_RUN
from engine.records import from_json, to_json
from engine.storage import PointImage, PointInfo, RefusalRecord, StoredStream, rechunk

STREAM_FILE = "stream.json"  #: the process server's durable state of a disk's stream, next to its segments
_UNDO = struct.Struct(">QIBI")  # offset, length, flags (1 = was zeros), crc32 of the data
_WAS_ZERO = 1
_ZERO_BLOCK = bytes(BLOCK)


class LocalStorage:
    """Cache and target under the data directory (``cache/`` and ``target/``)."""

    kind = "local"

    def __init__(self, root: Path) -> None:
        self.cache_root = root / "cache"
        self.target_root = root / "target"
        self._cache: LocalCache | None = None

    def __repr__(self) -> str:
        return f"<LocalStorage cache={self.cache_root} target={self.target_root}>"

    @property
    def cache(self) -> LocalCache:
        """Created on first use: the engine supervisor, which only deletes and exports, never makes it."""
        if self._cache is None:
            self._cache = LocalCache(self.cache_root)
        return self._cache

    def target_disk(self, replica: str, disk: int, size: int) -> LocalTargetDisk:
        return LocalTargetDisk(self.target_root / replica / f"disk{disk}", size)

    @contextlib.contextmanager
    def open_point(self, replica: str, disk: int, size: int, point_id: int, *, chunk: int,
                   name: str) -> Iterator[PointImage]:
        if not (self.target_root / replica / f"disk{disk}").is_dir():  # disabled meanwhile: never create it anew
            raise NotFound(f"Recovery point {point_id} of {name} is gone: replication of {name} was disabled.")
        # The log processor applies nothing to this disk (it skips it) while the lock is held; the
        # disk's metadata is read only once it is, so the point cannot be pruned meanwhile.
        with self.target_disk(replica, disk, size).locked():
            target = self.target_disk(replica, disk, size)
            point = next((p for p in target.points() if p.id == point_id), None)
            if point is None:
                raise NotFound(f"Recovery point {point_id} of {name} was just pruned; export a newer one.")
            yield PointImage(point, target.size, target.read_point(point_id, chunk))

    def delete_server(self, server_id: str) -> None:
        for root in (self.cache_root, self.target_root):
            _remove_tree(root / server_id)

    def delete_older_copies(self, server_id: str, epoch: int) -> None:
        for root in (self.cache_root, self.target_root):
            base = root / server_id
            if not base.is_dir():
                continue
            for old in base.iterdir():
                if old.name.isdigit() and int(old.name) < epoch:
                    _remove_tree(old)

    def target_location(self) -> str:
        return str(self.target_root)

    def probe_target(self) -> str:
        probe = self.target_root / f".probe-{os.getpid()}-{os.urandom(4).hex()}"  # two checks at once: two probes
        data = os.urandom(4096)
        try:
            self.target_root.mkdir(parents=True, exist_ok=True)
            write_atomically(probe, data)
            if probe.read_bytes() != data:
                raise OSError(errno.EIO, "the probe read back differently")
            probe.unlink()
        except OSError as exc:
            with contextlib.suppress(OSError):
                probe.unlink()
            raise TargetUnwritable(f"The target storage {self.target_root} cannot be written ({exc.strerror or exc}). "
                                   "Check the file system and its permissions.") from exc
        return f"{self.target_root} is writable; " + self.target_room()

    def target_room(self) -> str:
        try:
            return diskspace.where(diskspace.mount_point(self.target_root), *diskspace.usage(self.target_root))
        except OSError:
            return f"the file system of {self.target_root}"


def _remove_tree(path: Path) -> None:
    """Delete a directory tree that an agent may still be writing into: renamed away first (atomic), so that a
    late write by its path fails instead of leaving the directory half-deleted (``rmtree`` racing a writer
    cannot remove a directory that just got a new file)."""
    trash = path.with_name(f".deleting-{path.name}-{os.getpid()}-{os.urandom(4).hex()}")
    try:
        os.rename(path, trash)
    except FileNotFoundError:
        return
    except OSError:
        trash = path  # cannot rename (another file system?): delete in place, as well as it goes
    shutil.rmtree(trash, ignore_errors=True)


class LocalCache:
    """Segment files, one directory per disk of each copy; the stream state in a file next to them."""

    def __init__(self, root: Path) -> None:
        self.root = root
        root.mkdir(parents=True, exist_ok=True)
        self._mount: str | None = None

    def __repr__(self) -> str:
        return f"<LocalCache {self.root} used={self.used_bytes()}>"

    def _dir(self, replica: str, disk: int) -> Path:
        return self.root / replica / f"disk{disk}"

    def _mount_point(self) -> str:
        if self._mount is None:  # asked once: where the cache lives does not move
            self._mount = diskspace.mount_point(self.root)
        return self._mount

    def _out_of_space(self) -> CacheFull:
        """The refusal for a write that failed with ENOSPC after :meth:`check_room` let it through:
        another writer took the space meanwhile, or the file system has no inodes left."""
        return diskspace.out_of_space(self.root, self._mount_point())

    def put_segment(self, replica: str, disk: int, seq: int, data: bytes | memoryview) -> None:
        d = self._dir(replica, disk)
        try:
            d.mkdir(parents=True, exist_ok=True)
            write_atomically(d / f"{seq:016d}.seg", data)
        except OSError as exc:
            if diskspace.is_no_space(exc):
                raise self._out_of_space() from exc
            raise

    def segments(self, replica: str, disk: int) -> list[int]:
        d = self._dir(replica, disk)
        if not d.is_dir():
            return []
        return sorted(int(p.name[:16]) for p in d.iterdir() if p.name.endswith(".seg") and p.name[:16].isdigit())

    def get_segment(self, replica: str, disk: int, seq: int) -> bytes:
        return (self._dir(replica, disk) / f"{seq:016d}.seg").read_bytes()

    def read_segment(self, replica: str, disk: int, seq: int, buffer: bytearray) -> memoryview:
        with open(self._dir(replica, disk) / f"{seq:016d}.seg", "rb", buffering=0) as f:
            size = os.fstat(f.fileno()).st_size
            view = memoryview(buffer if size <= len(buffer) else bytearray(size))[:size]
            got = 0
            while got < size:
                n = f.readinto(view[got:])
                if not n:  # shortened under us: what was read is all there is (it will not authenticate)
                    break
                got += n
            return view[:got]

    def delete_segment(self, replica: str, disk: int, seq: int) -> None:
        with contextlib.suppress(FileNotFoundError):
            (self._dir(replica, disk) / f"{seq:016d}.seg").unlink()

    def used_bytes(self) -> int:
        """Bytes of segments waiting to be applied (refused ones are kept aside and not counted)."""
        return sum(self.used_bytes_by_server().values())

    def used_bytes_by_server(self) -> dict[str, int]:
        used: dict[str, int] = {}
        for p in self.root.glob("*/*/disk*/*.seg"):  # <server id>/<epoch>/disk<N>/<seq>.seg
            with contextlib.suppress(FileNotFoundError):  # the log processor deletes as we count
                server = p.relative_to(self.root).parts[0]
                used[server] = used.get(server, 0) + p.stat().st_size
        return used

    def set_aside(self, replica: str, disk: int, seq: int) -> None:
        src = self._dir(replica, disk) / f"{seq:016d}.seg"
        refused = src.parent / "refused"
        refused.mkdir(exist_ok=True)
        with contextlib.suppress(FileNotFoundError):
            src.rename(refused / src.name)

    def stream_state(self, replica: str, disk: int) -> StreamState | None:
        try:
            return _read_stream(self._dir(replica, disk) / STREAM_FILE)
        except FileNotFoundError:
            return None

    def save_stream_state(self, replica: str, disk: int, state: StreamState) -> None:
        path = self._dir(replica, disk) / STREAM_FILE
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            write_atomically(path, json.dumps(to_json(state)).encode())
        except OSError as exc:
            if diskspace.is_no_space(exc):
                raise self._out_of_space() from exc
            raise

    def stream_states(self) -> list[StoredStream]:
        out = []
        for path in self.root.glob(f"*/*/disk*/{STREAM_FILE}"):
            if path.parents[2].name.startswith("."):  # being deleted (see _remove_tree)
                continue
            try:
                state = _read_stream(path)
                out.append(StoredStream(path.parents[2].name, int(path.parent.name.removeprefix("disk")), state))
            except (OSError, ValueError):
                continue
        return out

    def check_room(self, incoming: int) -> None:
        # Before the disk is full, not when it is: the log processor, the state database and the logs
        # need room too (statvfs is cheap enough to ask per batch).
        diskspace.check_room(self.root, self._mount_point(), incoming)


def _read_stream(path: Path) -> StreamState:
    """A stream state file; ValueError if it is not one. Fields a newer process server added are ignored."""
    data = json.loads(path.read_text())
    if not isinstance(data, dict):
        raise ValueError(f"{path} does not hold a stream state")
    try:
        return from_json(StreamState, data)
    except TypeError as exc:
        raise ValueError(f"{path} does not hold a stream state") from exc


_libc = ctypes.CDLL(None, use_errno=True)
_libc.fallocate.argtypes = (ctypes.c_int, ctypes.c_int, ctypes.c_int64, ctypes.c_int64)
_PUNCH_HOLE = 0x02 | 0x01  # FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE


def _zero(fd: int, offset: int, length: int) -> None:
    """Make a range read as zeros: a hole punched where the file system can (no data written, space
    freed), else zeros written."""
    if _libc.fallocate(fd, _PUNCH_HOLE, offset, length) == 0:
        return
    err = ctypes.get_errno()
    if err not in (errno.EOPNOTSUPP, errno.ENOSYS, errno.EINVAL):
        raise OSError(err, os.strerror(err))
    for off in range(offset, offset + length, BLOCK):
        os.pwrite(fd, _ZERO_BLOCK[:min(BLOCK, offset + length - off)], off)


#: Direct writes need their buffer, offset and length aligned to the device's block (4 KiB covers them all).
_DIRECT_ALIGN = 4096
_aligned = threading.local()


def _open_direct(path: Path) -> int | None:
    """A second descriptor of the seed disk that writes around the page cache (O_DIRECT), or None where the
    file system does not offer it (tmpfs, some network file systems). Data written to a seed disk is not read
    back soon; copying it through the page cache cost the log processor more CPU than everything else it
    does for a block (decrypting and decompressing included)."""
    flag = getattr(os, "O_DIRECT", 0)
    if not flag:
        return None
    try:
        return os.open(path, os.O_WRONLY | flag)
    except OSError as exc:
        if exc.errno == errno.EINVAL:
            return None
        raise


def _write(fd: int, direct: int | None, data: bytes | memoryview, offset: int) -> None:
    """Write a block's data at ``offset``: through ``direct`` when it is open and the range is aligned (the
    data copied into an aligned buffer kept per thread), else through the page cache. The caller fsyncs."""
    whole = len(data) - len(data) % _DIRECT_ALIGN
    if direct is None or offset % _DIRECT_ALIGN or not whole:
        os.pwrite(fd, data, offset)
        return
    buf = getattr(_aligned, "buf", None)
    if buf is None or len(buf) < whole:
        buf = _aligned.buf = mmap.mmap(-1, max(whole, MAX_RUN))  # page-aligned, reused
    view = memoryview(buf)
    try:
        view[:whole] = memoryview(data)[:whole]
        done = 0
        while done < whole:
            try:
                done += os.pwrite(direct, view[done:whole], offset + done)
            except OSError as exc:
                if exc.errno != errno.EINVAL:  # e.g. out of space: the caller's to handle
                    raise
                os.pwrite(fd, view[done:whole], offset + done)  # an alignment this file system refuses
                done = whole
    finally:
        view.release()
    if whole < len(data):  # a disk's last block may end off the alignment
        os.pwrite(fd, memoryview(data)[whole:], offset + whole)


def _data_blocks(fd: int, lo: int, hi: int) -> list[int]:
    """Offsets of the blocks in ``[lo, hi)`` that hold data (not holes)."""
    extents = data_extents(fd, lo, hi, block=BLOCK)
    if extents is None:  # cannot tell: treat all as data
        return list(range(lo, hi, BLOCK))
    return [off for start, end in extents for off in range(start, end, BLOCK)]


class LocalTargetDisk(RefusalRecord):
    """A seed disk (sparse file), its undo logs and points, with one writer at a time (flock)."""

    def __init__(self, root: Path, size: int) -> None:
        self.root = root
        root.mkdir(parents=True, exist_ok=True)
        self._meta_path = root / "meta.json"
        meta = json.loads(self._meta_path.read_text()) if self._meta_path.exists() else {}
        self.size = int(meta.get("size", size))
        self.applied_seq = int(meta.get("applied_seq", 0))
        #: A segment refused as corrupt (0: none); applying waits there until a resync.
        self.refused_seq = int(meta.get("refused_seq", 0))
        #: The resync generation in force when that segment was refused; a later one mends it.
        self.refused_gen = int(meta.get("refused_gen", 0))
        #: The last resync generation fully applied.
        self.resync_done = int(meta.get("resync_done", 0))
        #: The latest resync generation that had segments applied.
        self.resync_seen = int(meta.get("resync_seen", self.resync_done))
        self._points = [PointInfo(**p) for p in meta.get("points", [])]
        self._seed = root / "seed.img"
        if not self._seed.exists():
            with open(self._seed, "wb") as f:
                f.truncate(self.size)
        self._saved: set[int] | None = None  # blocks saved in the newest point's undo log

    def __repr__(self) -> str:
        return f"<LocalTargetDisk {self.root} applied={self.applied_seq} points={[p.id for p in self._points]}>"

    @contextlib.contextmanager
    def locked(self, *, blocking: bool = True) -> Iterator[None]:
        """Exclusive use of this disk across processes (the log processor applies, an export reads).
        Non-blocking: raises BlockingIOError if someone else holds it."""
        fd = os.open(self.root / "lock", os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | (0 if blocking else fcntl.LOCK_NB))
            yield
        finally:
            os.close(fd)

    def _undo_path(self, point_id: int) -> Path:
        return self.root / f"undo-{point_id:016d}.log"

    def _save_meta(self) -> None:
        meta = {"size": self.size, "applied_seq": self.applied_seq, "refused_seq": self.refused_seq,
                "refused_gen": self.refused_gen,
                "resync_done": self.resync_done, "resync_seen": self.resync_seen,
                "points": [p.__dict__ for p in self._points]}
        write_atomically(self._meta_path, json.dumps(meta).encode())

    def _scan_undo(self, path: Path, *, repair: bool) -> dict[int, tuple[int, int, bool]]:
        """Block offset -> (data position, length, was zero) of each valid record; cut a torn tail."""
        index: dict[int, tuple[int, int, bool]] = {}
        if not path.exists():
            return index
        with open(path, "r+b" if repair else "rb") as f:
            pos = 0
            while True:
                head = f.read(_UNDO.size)
                if len(head) < _UNDO.size:
                    break
                offset, length, flags, crc = _UNDO.unpack(head)
                was_zero = bool(flags & _WAS_ZERO)
                data = b"" if was_zero else f.read(length)
                if not was_zero and (len(data) < length or zlib.crc32(data) != crc):
                    break
                index[offset] = (pos + _UNDO.size, length, was_zero)
                pos = f.tell()
            if repair and pos != os.fstat(f.fileno()).st_size:
                f.truncate(pos)
        return index

    def apply(self, seq: int, blocks: list[Block], *, point: PointInfo | None = None,
              resync_pass: int | None = None, resync_done: int | None = None) -> None:
        """Write a segment's blocks durably; then, in the same metadata write as ``applied_seq``, the
        point its bookmark takes and the resync generation it completes (so a crash never keeps one
        without the other)."""
        if seq <= self.applied_seq:
            return
        fd = os.open(self._seed, os.O_RDWR)
        direct = _open_direct(self._seed) if any(b.data is not None for b in blocks) else None
        try:
            if self._points:
                try:
                    self._save_old(fd, blocks)
                except BaseException:
                    self._saved = None  # rescan (and repair) the log before trusting it again
                    raise
            for b in blocks:
                if b.data is None:
                    _zero(fd, b.offset, b.length)
                else:
                    _write(fd, direct, b.data, b.offset)
            if direct is not None:
                os.fsync(direct)  # the direct writes' allocations, and the device's write cache
            os.fsync(fd)
        finally:
            if direct is not None:
                os.close(direct)
            os.close(fd)
        if point is not None and not any(p.id == point.id for p in self._points):
            write_atomically(self._undo_path(point.id), b"")
            self._points.append(point)
            self._saved = set()
        if resync_pass is not None:
            self.resync_seen = max(self.resync_seen, resync_pass)
        if resync_done is not None:
            self.resync_done = max(self.resync_done, resync_done)
        self.applied_seq = seq
        self._save_meta()

    def _save_old(self, fd: int, blocks: list[Block]) -> None:
        """First write after the newest point: keep the block's previous content (durably, first)."""
        path = self._undo_path(self._points[-1].id)
        if self._saved is None:
            self._saved = set(self._scan_undo(path, repair=True))
        records = []
        offsets = set()
        for b in blocks:
            # Zeros over a hole change nothing and need no saving: a zero run costs what it overwrites.
            span = range(b.offset, b.offset + b.length, BLOCK) if b.data is not None else \
                _data_blocks(fd, b.offset, b.offset + b.length)
            for off in span:
                if off in self._saved or off in offsets:
                    continue
                n = min(BLOCK, self.size - off)
                old = os.pread(fd, n, off)
                if old == _ZERO_BLOCK[:n]:
                    records.append(_UNDO.pack(off, n, _WAS_ZERO, 0))
                else:
                    records += [_UNDO.pack(off, n, 0, zlib.crc32(old)), old]
                offsets.add(off)
        if records:
            with open(path, "ab") as f:
                f.write(b"".join(records))
                f.flush()
                os.fsync(f.fileno())
        self._saved |= offsets  # only once they are durable

    def points(self) -> list[PointInfo]:
        return list(self._points)

    def delete_point(self, point_id: int) -> None:
        """Only the oldest point can go: newer ones do not need its log."""
        if not self._points or self._points[0].id != point_id:
            raise ValueError("only the oldest recovery point can be deleted")
        self._points.pop(0)
        self._save_meta()
        with contextlib.suppress(FileNotFoundError):
            self._undo_path(point_id).unlink()

    def read_point(self, point_id: int | None, chunk: int = BLOCK) -> Iterator[tuple[int, bytes | None]]:
        if point_id is not None and point_id not in {p.id for p in self._points}:
            raise KeyError(point_id)
        return rechunk(self._blocks(point_id), size=self.size, unit=BLOCK, chunk=chunk)

    def _blocks(self, point_id: int | None) -> Iterator[tuple[int, bytes | None]]:
        """The disk at a point block by block (``None``: a block of zeros)."""
        saved: dict[int, tuple[Path, int, int, bool]] = {}
        if point_id is not None:
            ids = [p.id for p in self._points]
            for pid in reversed(ids[ids.index(point_id):]):  # newest first; older logs win
                path = self._undo_path(pid)
                for off, (pos, length, was_zero) in self._scan_undo(path, repair=False).items():
                    saved[off] = (path, pos, length, was_zero)
        files: dict[Path, int] = {}
        seed = os.open(self._seed, os.O_RDONLY)
        try:
            for off in range(0, self.size, BLOCK):
                n = min(BLOCK, self.size - off)
                if off in saved:
                    path, pos, length, was_zero = saved[off]
                    if was_zero:
                        yield off, None
                        continue
                    if path not in files:
                        files[path] = os.open(path, os.O_RDONLY)
                    data = os.pread(files[path], length, pos)
                else:
                    data = os.pread(seed, n, off)
                yield off, (None if data == _ZERO_BLOCK[:n] else data)
        finally:
            os.close(seed)
            for fd in files.values():
                os.close(fd)
