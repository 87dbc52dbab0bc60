"""Appliance backup and restore: moving an appliance to a fresh data directory, on this host or another.

A backup holds what makes the appliance *itself*: its identity (``appliance.json``), its secrets, its
CA and port certificate, the wrapped data keys, and a consistent copy of the state database (policies,
registered servers, their replication settings and epochs, revocations, events, settings). It does not
hold the replication data: the cache and the target (seed disks and recovery points) are moved beside
it, by :func:`restore_backup` itself (``storage_from``) or by the admin, before the new appliance's
first start. With both, the mobility services continue with delta replication.

The file is ``MAGIC``, a version line and a JSON header line (the scrypt parameters), then a 12-byte
nonce and AES-256-GCM over a tar of the content, with everything before the nonce as associated data.
docs/moving-an-appliance.md is the reference: byte layout, what moves and what does not, the steps.
"""

from __future__ import annotations

import base64
import contextlib
import errno
import fcntl
import io
import json
import logging
import os
import re
import secrets
import shutil
import socket
import sqlite3
import tarfile
import time
import unicodedata
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.scrypt import Scrypt

from engine import __version__, diskspace
from engine.config import DEFAULT_MANAGEMENT_PORT, DataDir
from engine.errors import BackupInvalid, BadInput, ConfigError, DataDirInUse, EngineError, SecretStoreError
from engine.files import data_extents, fsync_dir, write_atomically
from engine.identity import KEY_PASSWORD, PASSPHRASE
from engine.keys import MASTER_KEY
from engine.licence import LICENCE_FILE, NOT_MOVED_META, NOT_MOVED_SECRETS, restore_record
from engine.licence import SECRET_NAMES as LICENCE_SECRET_NAMES
from engine.lock import EngineLock
from engine.pki import AppliancePKI, fingerprint
from engine.ports import NOT_MOVED_META as PORTS_NOT_MOVED_META
from engine.secrets import SecretStore, StoreKind, choose_store
from engine.state import SCHEMA_VERSION, StateDB

log = logging.getLogger(__name__)

#: The largest backup this version writes or reads; a larger file is refused before it is read.
#: (AES-GCM in ``cryptography`` takes at most 2 GiB in one piece; a state database is far smaller.)
MAX_BACKUP = 1 << 30
MAGIC = b"GODWIT-APPLIANCE-BACKUP\n"
#: The format this version writes; it reads this one and older ones (there are none yet).
FORMAT = 1
MIN_PASSPHRASE = 12
#: scrypt's cost: 128 * r * n bytes of memory (128 MiB) and ~0.3 s per try on one core.
SCRYPT_N = 2**17
SCRYPT_R = 8
SCRYPT_P = 1
#: Parameters a backup may ask for: a header cannot make a restore use more than 1 GiB or run for minutes.
_SCRYPT_N_RANGE = (2**15, 2**20)
_SCRYPT_P_MAX = 4
_SALT = 16
_NONCE = 12
_TAG = 16
_MAX_PREAMBLE = 4096  #: magic, version and header lines together
#: Secrets every backup holds: without them the CA key and the data keys cannot be opened.
_REQUIRED_SECRETS = (KEY_PASSWORD, MASTER_KEY)
_NAME = r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}"
_PKI_FILE = re.compile(rf"pki/{_NAME}")
_KEY_FILE = re.compile(rf"keys/{_NAME}\.key")
#: Settings files at the root of a data directory besides appliance.json (e.g. an activated licence).
_ROOT_FILE = re.compile(rf"{_NAME}\.json")
_NOT_BACKED_UP = {"appliance.json", "secrets.json", "manifest.json"}
_FICLONE = 0x40049409  # ioctl: share the whole file's extents (btrfs, XFS); EOPNOTSUPP elsewhere
_COPY_CHUNK = 8 * 1024 * 1024
_SPARSE_UNIT = 64 * 1024  #: the seed disks' block
_ZEROS = bytes(_SPARSE_UNIT)
_STAGING = {"cache": ".cache.restoring", "target": ".target.restoring"}


def secret_names() -> tuple[str, ...]:
    """The secrets a backup carries (a name absent from the store is skipped)."""
    return tuple(dict.fromkeys((KEY_PASSWORD, PASSPHRASE, MASTER_KEY, *LICENCE_SECRET_NAMES)))


# --- the envelope ------------------------------------------------------------------------------------
@dataclass(frozen=True)
class _Kdf:
    n: int
    r: int
    p: int
    salt: bytes

    def header(self) -> bytes:
        return json.dumps({"kdf": "scrypt", "n": self.n, "r": self.r, "p": self.p,
                           "salt": base64.b64encode(self.salt).decode(), "cipher": "aes-256-gcm"}).encode()

    def key(self, passphrase: str) -> bytes:
        return Scrypt(salt=self.salt, length=32, n=self.n, r=self.r, p=self.p).derive(_passphrase_bytes(passphrase))


def _passphrase_bytes(passphrase: str) -> bytes:
    # NFC: the same passphrase typed on another keyboard or system gives the same bytes.
    return unicodedata.normalize("NFC", passphrase).encode()


def check_passphrase(passphrase: str) -> None:
    """Raise :class:`BadInput` for a backup passphrase that is too short."""
    if len(unicodedata.normalize("NFC", passphrase)) < MIN_PASSPHRASE:
        raise BadInput(f"The backup passphrase must be at least {MIN_PASSPHRASE} characters long; "
                       "use a longer one (a few words).")
    try:
        _passphrase_bytes(passphrase)
    except UnicodeEncodeError as exc:  # e.g. a lone surrogate sent over the admin API
        raise BadInput("The backup passphrase is not valid text; type it again.") from exc


def _seal(content: bytes, passphrase: str) -> bytes:
    kdf = _Kdf(n=SCRYPT_N, r=SCRYPT_R, p=SCRYPT_P, salt=secrets.token_bytes(_SALT))
    preamble = MAGIC + f"{FORMAT}\n".encode() + kdf.header() + b"\n"
    nonce = secrets.token_bytes(_NONCE)
    return preamble + nonce + AESGCM(kdf.key(passphrase)).encrypt(nonce, content, preamble)


def _unseal(blob: bytes, passphrase: str) -> bytes:
    """The content of a backup; :class:`BackupInvalid` saying why it cannot be read."""
    if len(blob) > MAX_BACKUP:
        raise BackupInvalid(f"This file is {diskspace.human_bytes(len(blob))}, more than an appliance backup can be "
                            f"({diskspace.human_bytes(MAX_BACKUP)}): it is not a backup.")
    if not blob.startswith(MAGIC):
        raise BackupInvalid("This file is not a Godwit appliance backup (`godwit appliance backup` writes one).")
    version_end = blob.find(b"\n", len(MAGIC), _MAX_PREAMBLE)
    header_end = blob.find(b"\n", version_end + 1, _MAX_PREAMBLE) if version_end > 0 else -1
    if header_end < 0:
        raise BackupInvalid("This appliance backup is truncated or damaged: its header is incomplete.")
    version_text = blob[len(MAGIC):version_end]
    if not version_text.isdigit():
        raise BackupInvalid("This appliance backup is damaged: its version line is not a number.")
    version = int(version_text)
    if version > FORMAT:
        raise BackupInvalid(f"This appliance backup was written by a newer version of Godwit (format {version}; "
                            f"Godwit {__version__} reads format {FORMAT}). Restore it with that version or newer.")
    if version < 1:
        raise BackupInvalid("This appliance backup is damaged: its version line is not valid.")
    kdf = _parse_header(blob[version_end + 1:header_end])
    preamble = blob[:header_end + 1]
    nonce = blob[header_end + 1:header_end + 1 + _NONCE]
    sealed = blob[header_end + 1 + _NONCE:]
    if len(nonce) < _NONCE or len(sealed) < _TAG:
        raise BackupInvalid("This appliance backup is truncated: it ends before its content.")
    try:
        return AESGCM(kdf.key(passphrase)).decrypt(nonce, sealed, preamble)
    except InvalidTag as exc:
        # GCM cannot tell a wrong key from altered bytes; a wrong passphrase is by far the likelier.
        raise BackupInvalid("The passphrase is wrong, or the backup was altered or truncated since it was written: "
                            "check the passphrase file (the passphrase given to `godwit appliance backup`) and "
                            "that the file was copied whole.") from exc


def _parse_header(raw: bytes) -> _Kdf:
    try:
        head = json.loads(raw)
        if not isinstance(head, dict) or head.get("kdf") != "scrypt" or head.get("cipher") != "aes-256-gcm":
            raise ValueError("unknown kdf or cipher")
        n, r, p = head["n"], head["r"], head["p"]
        salt = base64.b64decode(head["salt"], validate=True)
        if not all(type(x) is int for x in (n, r, p)):
            raise ValueError("parameters are not integers")
    except (ValueError, KeyError, TypeError) as exc:
        raise BackupInvalid("This appliance backup is damaged: its header cannot be read.") from exc
    if not (_SCRYPT_N_RANGE[0] <= n <= _SCRYPT_N_RANGE[1] and n & (n - 1) == 0 and r == SCRYPT_R
            and 1 <= p <= _SCRYPT_P_MAX and len(salt) == _SALT):
        raise BackupInvalid("This appliance backup is damaged or not supported: its key derivation parameters are "
                            "outside what Godwit uses.")
    return _Kdf(n=n, r=r, p=p, salt=salt)


def read_backup(path: Path) -> bytes:
    """A backup file's bytes, refused (:class:`BackupInvalid`) before it is read if it is larger than any
    backup can be; :class:`BadInput` if it cannot be read."""
    try:
        with open(path, "rb") as f:
            size = os.fstat(f.fileno()).st_size
            if size > MAX_BACKUP:
                raise BackupInvalid(f"{path} is {diskspace.human_bytes(size)}, more than an appliance backup can be "
                                    f"({diskspace.human_bytes(MAX_BACKUP)}): it is not a backup.")
            return f.read(MAX_BACKUP + 1)
    except OSError as exc:
        raise BadInput(f"Cannot read the backup {path}: {exc.strerror or exc}.") from exc


# --- what a backup holds ---------------------------------------------------------------------------
@dataclass(frozen=True)
class _Content:
    """A backup, opened."""

    created_at: float
    hostname: str
    engine_version: str
    #: appliance.json's object, as the backed-up appliance had it.
    appliance: dict[str, Any]
    secrets: dict[str, str]
    #: Data-directory-relative path -> content: state.db, pki/*, keys/*, other root settings files.
    files: dict[str, bytes]
    servers: int
    replicating: int
    policies: int
    management_port: int | None

    @property
    def appliance_id(self) -> str:
        return str(self.appliance["appliance_id"])


def _state_image(path: Path) -> bytes:
    """A consistent copy of the state database while the engine keeps writing (WAL): one read transaction
    on a connection of our own, copied page by page with SQLite's backup API."""
    if not path.is_file():
        raise ConfigError(f"{path} is missing: this data directory holds no appliance to back up.")
    src = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        src.execute("PRAGMA busy_timeout=5000")
        mem = sqlite3.connect(":memory:")
        try:
            src.backup(mem)  # all pages in one step: one snapshot
            image = bytearray(mem.serialize())
        finally:
            mem.close()
    finally:
        src.close()
    # Bytes 18 and 19 say "WAL" in a WAL database: as a rollback-journal image it opens anywhere (in
    # memory too); the engine turns WAL on again when it opens the restored file.
    image[18] = image[19] = 1
    return bytes(image)


@dataclass(frozen=True)
class _StateFacts:
    schema_version: int
    servers: int
    replicating: int
    policies: int
    management_port: int | None


def _state_facts(image: bytes) -> _StateFacts:
    """What a state database image holds, read in memory; ValueError if it is not one Godwit can use."""
    db = sqlite3.connect(":memory:")
    try:
        db.deserialize(image)
        if db.execute("PRAGMA quick_check").fetchone()[0] != "ok":
            raise ValueError("quick_check failed")
        meta = dict(db.execute("SELECT key, value FROM meta").fetchall())
        port = meta.get("management_port")
        return _StateFacts(schema_version=int(meta.get("schema_version", "0")),
                           servers=int(db.execute("SELECT count(*) FROM servers").fetchone()[0]),
                           replicating=int(db.execute("SELECT count(*) FROM servers WHERE replicate").fetchone()[0]),
                           policies=int(db.execute("SELECT count(*) FROM policies").fetchone()[0]),
                           management_port=int(port) if port and str(port).isdigit() else None)
    except sqlite3.Error as exc:
        raise ValueError(str(exc)) from exc
    finally:
        db.close()


def _dir_files(directory: Path, prefix: str, pattern: re.Pattern[str]) -> list[tuple[str, bytes]]:
    if not directory.is_dir():
        return []
    out = []
    for entry in sorted(directory.iterdir()):
        name = f"{prefix}/{entry.name}" if prefix else entry.name
        if entry.is_file() and not entry.is_symlink() and pattern.fullmatch(name) and \
                entry.name not in _NOT_BACKED_UP and not entry.name.endswith(".tmp"):  # .tmp: a write cut short
            out.append((name, entry.read_bytes()))
    return out


def _tar(members: list[tuple[str, bytes]], mtime: float) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size, info.mode, info.mtime = len(data), 0o600, int(mtime)
            tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def create_backup(*, data_dir: DataDir, store: SecretStore, passphrase: str) -> bytes:
    """An encrypted backup of the appliance of ``data_dir``, whose secrets are in ``store``.

    Safe while the engine runs (it is meant for a worker thread of the running engine): the state
    database is copied in one read transaction of its own. Reads only; writes nothing. Raises
    :class:`BadInput` for a passphrase shorter than :data:`MIN_PASSPHRASE` characters, and
    :class:`~engine.errors.SecretStoreError` if the secrets that open the keys are missing.
    """
    check_passphrase(passphrase)
    started = time.monotonic()
    created_at = time.time()
    log.info("backup.started data_dir=%s", data_dir.root)
    ident_path = data_dir.root / "appliance.json"
    try:
        ident_raw = ident_path.read_bytes()
        ident = json.loads(ident_raw)
    except FileNotFoundError as exc:
        raise ConfigError(f"{ident_path} is missing: this data directory holds no appliance to back up.") from exc
    except ValueError as exc:
        raise ConfigError(f"{ident_path} is damaged: restore it from a backup.") from exc
    if not isinstance(ident, dict) or not isinstance(ident.get("appliance_id"), str):
        raise ConfigError(f"{ident_path} is damaged: restore it from a backup.")
    values = {name: value for name in secret_names() if (value := store.get(name)) is not None}
    missing = [name for name in _REQUIRED_SECRETS if name not in values]
    if missing:
        raise SecretStoreError(f"The appliance's {' and '.join(missing)} are missing from its secret store "
                               f"({store.describe()}): a backup without them could not open its keys.")
    image = _state_image(data_dir.state_db)
    try:
        facts = _state_facts(image)
    except ValueError as exc:
        raise ConfigError(f"The state database {data_dir.state_db} is damaged ({exc}); no backup was written.") \
            from exc
    files = [("appliance.json", ident_raw), ("state.db", image),
             *_dir_files(data_dir.pki, "pki", _PKI_FILE), *_dir_files(data_dir.keys, "keys", _KEY_FILE),
             *_dir_files(data_dir.root, "", _ROOT_FILE)]
    manifest = {"format": FORMAT, "created_at": created_at, "hostname": socket.gethostname(),
                "engine_version": __version__, "appliance_id": ident["appliance_id"], "secrets": values,
                "servers": facts.servers, "replicating": facts.replicating, "policies": facts.policies,
                "files": [name for name, _ in files]}
    content = _tar([("manifest.json", json.dumps(manifest).encode()), *files], created_at)
    if len(content) > MAX_BACKUP - _MAX_PREAMBLE - _NONCE - _TAG:
        raise EngineError(f"The appliance's backup would be {diskspace.human_bytes(len(content))}, more than "
                          f"the {diskspace.human_bytes(MAX_BACKUP)} a backup may be (the state database "
                          f"{data_dir.state_db} is that large).")
    blob = _seal(content, passphrase)
    log.info("backup.complete servers=%d policies=%d files=%d bytes=%d seconds=%.1f", facts.servers,
             facts.policies, len(files), len(blob), time.monotonic() - started)
    return blob


def _open_content(blob: bytes, passphrase: str) -> _Content:
    """Decrypt and check a backup; :class:`BackupInvalid` with the reason."""
    content = _unseal(blob, passphrase)
    members: dict[str, bytes] = {}
    try:
        with tarfile.open(fileobj=io.BytesIO(content), mode="r:") as tar:
            for m in tar:
                if not m.isfile() or m.name in members:
                    raise BackupInvalid(f"This appliance backup is damaged: it holds {m.name!r} twice or not as a "
                                        "file.")
                f = tar.extractfile(m)
                assert f is not None  # a regular file always has one
                members[m.name] = f.read()
    except tarfile.TarError as exc:
        raise BackupInvalid(f"This appliance backup is damaged: its content cannot be read ({exc}).") from exc
    try:
        manifest = json.loads(members.pop("manifest.json"))
        appliance = json.loads(members.pop("appliance.json"))
        secret_values = manifest["secrets"]
        if not isinstance(appliance, dict) or not isinstance(appliance.get("appliance_id"), str) or \
                not isinstance(secret_values, dict) or \
                not all(isinstance(k, str) and isinstance(v, str) for k, v in secret_values.items()):
            raise ValueError("malformed manifest or identity")
        inner = int(manifest["format"])
        listed = manifest["files"]
        created_at, hostname = float(manifest["created_at"]), str(manifest["hostname"])
        engine_version = str(manifest["engine_version"])
    except (KeyError, ValueError, TypeError) as exc:
        raise BackupInvalid("This appliance backup is damaged or incomplete: its manifest or identity is missing or "
                            "cannot be read.") from exc
    if not isinstance(listed, list) or set(listed) != {*members, "appliance.json"}:
        raise BackupInvalid("This appliance backup is incomplete: its files are not those its manifest lists.")
    if inner > FORMAT:
        raise BackupInvalid(f"This appliance backup was written by a newer version of Godwit ({engine_version}, "
                            f"format {inner}). Restore it with that version or newer.")
    for name in members:
        if name != "state.db" and not (_PKI_FILE.fullmatch(name) or _KEY_FILE.fullmatch(name) or
                                       (_ROOT_FILE.fullmatch(name) and name not in _NOT_BACKED_UP)):
            raise BackupInvalid(f"This appliance backup holds {name[:80]!r}, which is not part of an appliance; "
                                "it was not written by Godwit.")
    missing = [n for n in ("state.db", "pki/ca.crt", "pki/ca.key") if n not in members] + \
        [n for n in _REQUIRED_SECRETS if n not in secret_values]
    if missing:
        raise BackupInvalid(f"This appliance backup is incomplete: {', '.join(missing)} missing.")
    try:
        facts = _state_facts(members["state.db"])
    except ValueError as exc:
        raise BackupInvalid(f"The state database in this backup is damaged ({exc}).") from exc
    if facts.schema_version > SCHEMA_VERSION:
        raise BackupInvalid(f"This backup's state database was written by a newer version of Godwit "
                            f"({engine_version}, schema {facts.schema_version}). Restore it with that version or "
                            "newer.")
    return _Content(created_at=created_at, hostname=hostname, engine_version=engine_version, appliance=appliance,
                    secrets=dict(secret_values), files=members, servers=facts.servers,
                    replicating=facts.replicating, policies=facts.policies, management_port=facts.management_port)


# --- restore ---------------------------------------------------------------------------------------
def _engine_pid(data_dir: DataDir) -> str | None:
    """The pid of an engine that holds ``data_dir``'s lock, or None. Probed without creating or changing
    anything."""
    try:
        fd = os.open(data_dir.lock_file, os.O_RDONLY)
    except FileNotFoundError:
        return None
    except OSError as exc:  # not ours to read: another user's engine may hold it
        raise BadInput(f"Cannot tell whether an engine runs on {data_dir.root} ({exc.strerror}): run this as the "
                       "user who runs the engine.") from exc
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            return os.read(fd, 32).decode(errors="replace").strip() or "?"
        fcntl.flock(fd, fcntl.LOCK_UN)
        return None
    finally:
        os.close(fd)


@contextlib.contextmanager
def _engine_lock(data_dir: DataDir) -> Iterator[None]:
    """Hold a data directory's engine lock: no engine starts there meanwhile."""
    lock = EngineLock(data_dir)
    lock.acquire()
    try:
        yield
    finally:
        lock.release()


def _has_files(path: Path) -> bool:
    return path.is_dir() and any(path.iterdir())


def _check_fresh(data_dir: DataDir) -> None:
    """Refuse a data directory an engine runs on or that holds (part of) an appliance; writes nothing."""
    root = data_dir.root
    if root.exists() and not root.is_dir():
        raise BadInput(f"{root} is a file, not a directory: give a new or empty --data-dir.")
    pid = _engine_pid(data_dir)
    if pid is not None:
        raise DataDirInUse(f"A Godwit engine (pid {pid}) is running on {root}. A restore only creates a new "
                           "appliance, in a data directory no engine uses: give another --data-dir.")
    held = [p.name for p in (root / "appliance.json", data_dir.state_db, data_dir.secrets_file) if p.exists()] + \
        [p.name + "/" for p in (data_dir.pki, data_dir.keys) if _has_files(p)]
    if held:
        raise BadInput(f"{root} already holds an appliance ({', '.join(held)}). A restore only creates a new "
                       "appliance: give a new or empty --data-dir (an existing cache/ and target/ may stay).")


def _check_storage_from(old: DataDir, data_dir: DataDir) -> None:
    if not old.root.is_dir():
        raise BadInput(f"{old.root} is not a directory: --storage-from is the old appliance's data directory.")
    if old.root.resolve() == data_dir.root.resolve():
        raise BadInput("--storage-from is the data directory being restored into; give the old appliance's.")
    if not any((old.root / part).is_dir() for part in ("cache", "target")):
        raise BadInput(f"{old.root} has neither cache/ nor target/: it is not the data directory of an appliance "
                       "that replicated.")
    pid = _engine_pid(old)
    if pid is not None:
        raise DataDirInUse(f"The old appliance's engine (pid {pid}) still runs on {old.root}: its cache and "
                           "target keep changing. Stop it (and keep it stopped), then restore again.")
    clash = [part + "/" for part in ("cache", "target") if _has_files(data_dir.root / part)]
    if clash:
        raise BadInput(f"{data_dir.root} already has {' and '.join(clash)}: restore without --storage-from to use "
                       "them, or empty them first.")


def _check_same_appliance(old: DataDir, backup: _Content) -> None:
    path = old.root / "appliance.json"
    try:
        other = json.loads(path.read_bytes()).get("appliance_id")
    except FileNotFoundError:
        return  # e.g. only cache/ and target/ were copied here from the old host
    except (ValueError, AttributeError) as exc:
        raise BadInput(f"{path} is damaged: cannot tell whose replication data {old.root} holds.") from exc
    if other != backup.appliance_id:
        raise BadInput(f"{old.root} is the data directory of appliance {other}, but the backup is of appliance "
                       f"{backup.appliance_id}: its cache and target belong to another appliance.")


def _copy_file(src: Path, dst: Path) -> int:
    """Copy a file durably, holes kept as holes (a clone where the file system can); returns the bytes of
    data copied."""
    with open(src, "rb") as s:
        fd = os.open(dst, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            size = os.fstat(s.fileno()).st_size
            try:
                fcntl.ioctl(fd, _FICLONE, s.fileno())
                os.fsync(fd)
                return size
            except OSError:
                pass  # not a file system that clones, or another one: copy what holds data
            os.ftruncate(fd, size)
            extents = data_extents(s.fileno(), 0, size, block=4096)
            copied = 0
            for lo, hi in extents if extents is not None else [(0, size)]:
                copied += _copy_range(s.fileno(), fd, lo, hi, sparse=extents is None)
            os.fsync(fd)
            return copied
        finally:
            os.close(fd)


def _copy_range(src: int, dst: int, lo: int, hi: int, *, sparse: bool) -> int:
    pos = lo
    if not sparse:
        try:
            while pos < hi:
                n = os.copy_file_range(src, dst, hi - pos, pos, pos)
                if n == 0:  # the file shrank under us: what is left reads as zeros, already a hole
                    return pos - lo
                pos += n
            return hi - lo
        except OSError as exc:
            if exc.errno not in (errno.EXDEV, errno.ENOSYS, errno.EINVAL, errno.EOPNOTSUPP):
                raise
    copied = pos - lo  # what copy_file_range did before it was refused
    while pos < hi:
        data = os.pread(src, min(_COPY_CHUNK, hi - pos), pos)
        if not data:
            break
        for at in range(0, len(data), _SPARSE_UNIT if sparse else len(data)):
            piece = data[at:at + _SPARSE_UNIT] if sparse else data
            if not sparse or piece != _ZEROS[:len(piece)]:  # without hole information, zeros become holes
                os.pwrite(dst, piece, pos + at)
                copied += len(piece)
        pos += len(data)
    return copied


def _copy_tree(src: Path, dst: Path) -> tuple[int, int]:
    """Copy a directory tree of regular files (dirs 0700, files 0600, fsync'd); returns (files, bytes)."""
    dst.mkdir(mode=0o700)
    files = data = 0
    with os.scandir(src) as entries:
        for entry in sorted(entries, key=lambda e: e.name):
            target = dst / entry.name
            if entry.is_dir(follow_symlinks=False):
                f, d = _copy_tree(Path(entry.path), target)
                files, data = files + f, data + d
            elif entry.is_file(follow_symlinks=False):
                data += _copy_file(Path(entry.path), target)
                files += 1
            else:
                log.warning("restore.skipped path=%s: not a regular file or directory", entry.path)
    fsync_dir(dst)
    return files, data


def _allocated(path: Path) -> int:
    total = 0
    for dirpath, _, names in os.walk(path):
        for name in names:
            with contextlib.suppress(OSError):
                st = os.lstat(os.path.join(dirpath, name))
                total += st.st_blocks * 512
    return total


def _check_room(old: DataDir, data_dir: DataDir) -> None:
    """Refuse a copy to another file system that has no room for it (on the same one, a clone may need none)."""
    parts = [old.root / p for p in ("cache", "target") if (old.root / p).is_dir()]
    dest = data_dir.root if data_dir.root.exists() else data_dir.root.parent
    while not dest.exists():
        dest = dest.parent
    if all(p.stat().st_dev == dest.stat().st_dev for p in parts):
        return
    needed = sum(_allocated(p) for p in parts)
    free, _ = diskspace.usage(dest)
    if needed > free:
        raise BadInput(f"Moving the replication data of {old.root} needs {diskspace.human_bytes(needed)}, but only "
                       f"{diskspace.human_bytes(free)} are free at {dest}. Free space there, or use a larger disk.")


def _count(n: int, one: str, many: str | None = None) -> str:
    return f"{n} {one if n == 1 else many or one + 's'}"


def _date(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%d %H:%M UTC")


class _Restore:
    """One restore's writes, in order, so that a failure takes back exactly what it wrote."""

    def __init__(self, data_dir: DataDir) -> None:
        self.data_dir = data_dir
        #: The outermost directory this restore creates (the data directory or an ancestor), if any.
        self.created: Path | None = None
        for path in (data_dir.root, *data_dir.root.parents):
            if path.exists():
                break
            self.created = path
        self.written: list[Path] = []

    def mkdir(self, path: Path) -> None:
        if not path.exists():
            path.mkdir(mode=0o700)
            self.written.append(path)
        os.chmod(path, 0o700)

    def write(self, rel: str, data: bytes) -> None:
        path = self.data_dir.root / rel
        self.written += [path.with_name(path.name + ".tmp"), path]
        write_atomically(path, data)

    def undo(self) -> None:
        if self.created is not None:
            shutil.rmtree(self.created, ignore_errors=True)
            return
        for path in reversed(self.written):
            for p in (path, path.with_name(path.name + "-wal"), path.with_name(path.name + "-shm")):
                if p.is_dir() and not p.is_symlink():
                    shutil.rmtree(p, ignore_errors=True)
                else:
                    with contextlib.suppress(FileNotFoundError):
                        p.unlink()


def restore_backup(blob: bytes, *, passphrase: str, data_dir: DataDir, storage_from: DataDir | None = None) -> str:
    """Create the appliance of a backup in ``data_dir``, a new data directory; returns lines for the admin.

    Offline: refuses, writing nothing, when an engine runs on ``data_dir`` or it already holds an appliance
    (:class:`DataDirInUse`, :class:`BadInput`), and for a backup that cannot be read (:class:`BackupInvalid`).
    The secrets go to the store :func:`choose_store` picks here, then the files, ``appliance.json`` last: a
    restore cut short is never taken for an appliance, and a failure removes what it wrote (secrets put in an
    OS keyring stay there, under the appliance's id). ``storage_from``, the old appliance's data directory on
    this host (its engine stopped), gives its cache and target, copied with holes kept.
    """
    started = time.monotonic()
    _check_fresh(data_dir)
    if storage_from is not None:
        _check_storage_from(storage_from, data_dir)
    store_kind = choose_store()
    backup = _open_content(blob, passphrase)
    if storage_from is not None:
        _check_same_appliance(storage_from, backup)
        _check_room(storage_from, data_dir)
    root = data_dir.root
    log.info("restore.started data_dir=%s appliance=%s storage_from=%s", root, backup.appliance_id,
             storage_from.root if storage_from else None)
    job = _Restore(data_dir)
    new_id = str(uuid.uuid4())
    try:
        root.parent.mkdir(parents=True, exist_ok=True)
        job.mkdir(root)
        with contextlib.ExitStack() as locks:
            if not data_dir.lock_file.exists():
                job.written.append(data_dir.lock_file)
            locks.enter_context(_engine_lock(data_dir))
            if storage_from is not None:
                locks.enter_context(_engine_lock(storage_from))  # no engine starts on the old data meanwhile
            _check_fresh_again(data_dir)
            moved = _write(job, backup, store_kind, storage_from, new_id)
    except BaseException as exc:
        job.undo()
        if isinstance(exc, OSError):
            raise _write_failed(root, exc) from exc
        raise
    log.info("restore.complete appliance=%s servers=%d moved_files=%s seconds=%.1f", backup.appliance_id,
             backup.servers, moved[0] if moved else None, time.monotonic() - started)
    return _summary(data_dir, backup, storage_from, moved, new_id)


def _check_fresh_again(data_dir: DataDir) -> None:
    """Under the lock: nothing became an appliance since the first look (another restore, an engine)."""
    for path in (data_dir.root / "appliance.json", data_dir.state_db, data_dir.secrets_file):
        if path.exists():
            raise BadInput(f"{data_dir.root} became an appliance while restoring ({path.name} appeared); nothing "
                           "was restored. Give a new or empty --data-dir.")


def _write(job: _Restore, backup: _Content, store_kind: StoreKind, storage_from: DataDir | None,
           new_id: str) -> tuple[int, int] | None:
    """The restored appliance is a fresh appliance with the old one's CA, keys, servers and replication: a new id,
    its own evaluation (the old one's evaluation record, warnings and activated licence stay behind; see
    engine/licence.py), and a signed record that says so."""
    data_dir = job.data_dir
    store = SecretStore(store_kind, appliance_id=new_id, file_path=data_dir.secrets_file)
    if store_kind == "file":
        job.written += [data_dir.secrets_file.with_name(data_dir.secrets_file.name + ".tmp"), data_dir.secrets_file]
    for name, value in backup.secrets.items():
        if name not in NOT_MOVED_SECRETS:
            store.set(name, value)
    job.mkdir(data_dir.pki)
    job.mkdir(data_dir.keys)
    for rel, content in sorted(backup.files.items()):
        if rel != LICENCE_FILE:
            job.write(rel, content)
    now = time.time()
    pki = AppliancePKI(data_dir.pki, backup.secrets[KEY_PASSWORD].encode())
    restored = restore_record(pki, appliance_id=new_id, restored_from=backup.appliance_id, at=now)
    state = StateDB(data_dir.state_db)
    try:
        for key in (*NOT_MOVED_META, *PORTS_NOT_MOVED_META):  # the new appliance listens on every address
            state.delete_meta(key)
        moved_text = f"; replication data moved from {storage_from.root}" if storage_from else \
            "; replication data not moved by the restore"
        state.add_event("info", "appliance-restored", f"Appliance restored into {data_dir.root} from the backup "
                        f"taken {_date(backup.created_at)} on {backup.hostname}{moved_text}.")
    finally:
        state.close()
    moved: tuple[int, int] | None = None
    if storage_from is not None:
        files = data = 0
        for part, staging in _STAGING.items():
            src = storage_from.root / part
            if src.is_dir():
                shutil.rmtree(data_dir.root / staging, ignore_errors=True)  # left by a restore that was killed
                job.written.append(data_dir.root / staging)
                f, d = _copy_tree(src, data_dir.root / staging)
                files, data = files + f, data + d
        for part, staging in _STAGING.items():
            if (data_dir.root / staging).is_dir():
                job.written.append(data_dir.root / part)
                os.replace(data_dir.root / staging, data_dir.root / part)  # replaces an empty directory
        fsync_dir(data_dir.root)
        moved = (files, data)
    ident = {key: value for key, value in backup.appliance.items() if key != "evaluation"}
    ident.update(appliance_id=new_id, created_at=now, secret_store=store_kind, restored=restored)
    job.write("appliance.json", json.dumps(ident, indent=1).encode() + b"\n")
    return moved


def _write_failed(root: Path, exc: OSError) -> EngineError:
    where = f" ({exc.filename})" if exc.filename else ""
    if diskspace.is_no_space(exc):
        return EngineError(f"The restore ran out of space in {root}{where}; nothing was restored. Free space there "
                           "(or use a larger disk) and restore again.")
    return EngineError(f"The restore could not write into {root}: {exc.strerror or exc}{where}. Nothing was "
                       "restored; fix that and restore again.")


def _summary(data_dir: DataDir, backup: _Content, storage_from: DataDir | None, moved: tuple[int, int] | None,
             new_id: str) -> str:
    root = data_dir.root
    try:
        fp = fingerprint(x509.load_pem_x509_certificate(backup.files["pki/ca.crt"]))
    except ValueError:
        fp = "(see `godwit setup show`)"
    port = backup.management_port or DEFAULT_MANAGEMENT_PORT
    lines = [f"Restored appliance {backup.appliance_id} into {root} as the new appliance {new_id}, from the backup "
             f"taken {_date(backup.created_at)} on {backup.hostname}: {_count(backup.servers, 'registered server')} "
             f"({backup.replicating} replicating), {_count(backup.policies, 'policy', 'policies')}, its CA, keys and "
             "secrets. It is a fresh appliance: its 180-day evaluation begins at its first start (an activated "
             "licence belongs to the old appliance's id: ask for one for the new id)."]
    if storage_from is not None and moved is not None:
        lines.append(f"Moved the replication data (cache and target: {moved[0]} files, "
                     f"{diskspace.human_bytes(moved[1])} of data) from {storage_from.root}: replication continues "
                     "with delta replication. Never start the old appliance again; delete it once this one runs.")
    elif _has_files(root / "cache") or _has_files(root / "target"):
        lines.append(f"Found cache/ and target/ in {root}: they are used as they are. Never start the old appliance "
                     "again.")
    else:
        lines.append(f"The replication data was not moved. Before the first start, stop the old engine and copy its "
                     f"cache/ and target/ into {root}/ (e.g. `rsync -a --sparse OLD_DATA_DIR/cache OLD_DATA_DIR/target "
                     f"{root}/`); without them every replicating server starts an initial replication again.")
    lines.append(f"Next: start the engine (`godwit serve --data-dir {root}`; it listens on management port {port} as "
                 f"before unless you give --management-port), then run each mobility service with --appliance "
                 f"{socket.gethostname()}:{port} (or this host's address) and the same --state-dir and "
                 f"--ca-fingerprint {fp}.")
    lines.append(f"Not in the backup: changes made after {_date(backup.created_at)} (servers registered, enabled, "
                 "disabled or forgotten, policies, a rotated passphrase): make them again.")
    return "\n".join(lines)
