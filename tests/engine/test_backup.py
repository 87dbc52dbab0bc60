"""Appliance backup and restore (engine/backup.py): real data directories, real SQLite, the file secret store
(and an in-memory keyring where the new host has one)."""

from __future__ import annotations

import base64
import errno
import hashlib
import json
import logging
import os
import stat
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import keyring
import pytest

from engine import backup
from engine.config import DataDir
from engine.errors import BackupInvalid, BadInput, DataDirInUse, EngineError
from engine.identity import KEY_PASSWORD, PASSPHRASE, ApplianceIdentity, create_secrets_and_pki, open_pki
from engine.keys import MASTER_KEY, DataKeys, master_key
from engine.licence import NOT_MOVED_SECRETS, SECRET_NAMES
from engine.lock import EngineLock
from engine.records import Disk, Policy
from engine.secrets import SecretStore
from engine.state import StateDB
from tests.engine.memory_keyring import MemoryKeyring

MiB = 1024 * 1024
PASSWORD = "correct horse battery staple"
SEED_SIZE = 64 * MiB
#: Where the test seed disk holds data; the rest is holes.
SEED_DATA = ((3 * MiB, os.urandom(MiB)), (40 * MiB, os.urandom(MiB)))
EVALUATION = {"started_at": 1700000000.0, "signature": "c2lnbmVk"}


def _make_appliance(root: Path) -> tuple[DataDir, SecretStore, dict[str, Any]]:
    """An appliance as its engine leaves it: identity, secrets, PKI, data keys, state, cache and target."""
    dd = DataDir(root)
    dd.create()
    ident = ApplianceIdentity.create(dd)
    store = ident.secrets(dd)
    create_secrets_and_pki(dd, ident, store)
    raw = json.loads((root / "appliance.json").read_text())
    raw["evaluation"] = EVALUATION  # what engine/licence.py adds: kept as it is
    (root / "appliance.json").write_text(json.dumps(raw))
    for name in SECRET_NAMES:
        store.set(name, f"value of {name}")
    (root / "licence.json").write_text('{"licence": "signed text"}')
    state = StateDB(dd.state_db)
    state.add_policy(Policy(name="gold", rpo_threshold=60, retention=3600, crash_consistent_every=30,
                            app_consistent_every=None))
    for i, name in enumerate(("web-01", "db-01", "old-01")):
        state.add_server(server_id=f"sid-{i}", name=name, hostname=name, os="Linux", agent_version="1",
                         cert_serial=0x100 + i, address="10.0.0.1", disks=[Disk("/dev/sda", SEED_SIZE)])
    state.set_replication("sid-0", replicate=True, policy="gold", disk_sizes=[SEED_SIZE])
    state.revoke_server("sid-2")
    epoch = state.server(server_id="sid-0").epoch  # type: ignore[union-attr]
    state.set_meta("management_port", "8443")
    state.add_event("info", "initial-replication-complete", "Initial replication of web-01 disk 0 is complete.")
    state.close()
    keys = DataKeys(dd.keys, master_key(store))
    data_keys = {sid: keys.get(sid, create=True) for sid in ("sid-0", "sid-1")}
    disk = root / "target" / "sid-0" / str(epoch) / "disk0"
    disk.mkdir(parents=True)
    with open(disk / "seed.img", "wb") as f:
        f.truncate(SEED_SIZE)
        for off, data in SEED_DATA:
            f.seek(off)
            f.write(data)
    (disk / "meta.json").write_text(json.dumps({"size": SEED_SIZE, "applied_seq": 7, "points": []}))
    (disk / "lock").touch()
    cache = root / "cache" / "sid-0" / str(epoch) / "disk0"
    cache.mkdir(parents=True)
    (cache / "stream.json").write_text(json.dumps({"epoch": epoch, "acked_seq": 8, "initial_done": SEED_SIZE,
                                                   "initial_complete": True, "bytes_received": 3 * MiB}))
    (cache / f"{8:016d}.seg").write_bytes(os.urandom(5000))
    return dd, store, {"epoch": epoch, "data_keys": data_keys}


@pytest.fixture(scope="module")
def source(tmp_path_factory: pytest.TempPathFactory) -> tuple[DataDir, SecretStore, dict[str, Any], bytes]:
    """An old appliance and a backup of it."""
    dd, store, facts = _make_appliance(tmp_path_factory.mktemp("old") / "data")
    return dd, store, facts, backup.create_backup(data_dir=dd, store=store, passphrase=PASSWORD)


def _tree(root: Path) -> dict[str, tuple[int, int, str]] | None:
    """Everything under ``root``: path -> (mode, size, sha256); None if it does not exist."""
    if not root.exists():
        return None
    out: dict[str, tuple[int, int, str]] = {}
    for path in sorted(root.rglob("*")):
        st = path.lstat()
        digest = hashlib.sha256(path.read_bytes()).hexdigest() if path.is_file() else ""
        out[str(path.relative_to(root))] = (st.st_mode, st.st_size, digest)
    return out


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_round_trip_brings_the_appliance_back_with_its_replication_data(
        source: tuple[DataDir, SecretStore, dict[str, Any], bytes], tmp_path: Path) -> None:
    """Restored into a fresh data directory with the old one's storage: a new appliance id with the same CA,
    secrets, data keys, servers, policies and revocations, and a byte-exact, still sparse cache and target;
    keys 0600, directories 0700. The old evaluation record, warnings and activated licence stay behind."""
    old, old_store, facts, blob = source
    new = DataDir(tmp_path / "new" / "data")
    text = backup.restore_backup(blob, passphrase=PASSWORD, data_dir=new, storage_from=old)

    ident_old = json.loads((old.root / "appliance.json").read_text())
    ident_new = json.loads((new.root / "appliance.json").read_text())
    assert ident_new["appliance_id"] != ident_old["appliance_id"] and "evaluation" not in ident_new
    assert ident_new["secret_store"] == ident_old["secret_store"]  # the new host has no keyring either
    assert ident_new["restored"]["from"] == ident_old["appliance_id"]
    assert ident_old["evaluation"] == EVALUATION
    ident = ApplianceIdentity.load(new)
    assert ident is not None and ident.appliance_id == ident_new["appliance_id"]
    store = ident.secrets(new)
    for name in (KEY_PASSWORD, PASSPHRASE, MASTER_KEY, *(n for n in SECRET_NAMES if n not in NOT_MOVED_SECRETS)):
        assert store.get(name) == old_store.get(name) is not None
    for name in NOT_MOVED_SECRETS:
        assert store.get(name) is None
    pki = open_pki(new, store)
    assert pki.ca_fingerprint() == open_pki(old, old_store).ca_fingerprint()
    pki.ca_key()  # opens with the restored key password
    pki.server_context()
    keys = DataKeys(new.keys, master_key(store))
    assert {sid: keys.get(sid) for sid in facts["data_keys"]} == facts["data_keys"]
    assert not (new.root / "licence.json").exists()

    state_old, state_new = StateDB(old.state_db), StateDB(new.state_db)
    try:
        assert state_new.servers() == state_old.servers()
        assert [s.name for s in state_new.servers()] == ["db-01", "web-01"]
        assert state_new.server(name="web-01").epoch == facts["epoch"]  # type: ignore[union-attr]
        assert state_new.policies() == state_old.policies()
        assert state_new.is_revoked(0x102) and not state_new.is_revoked(0x100)
        assert state_new.get_meta("management_port") == "8443"
        assert state_new._db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        codes = [e.code for e in state_new.events()]
        assert codes[-2:] == ["initial-replication-complete", "appliance-restored"]
    finally:
        state_old.close()
        state_new.close()

    for part in ("cache", "target"):
        for src in (old.root / part).rglob("*"):
            dst = new.root / part / src.relative_to(old.root / part)
            assert dst.exists(), dst
            if src.is_file():
                assert dst.read_bytes() == src.read_bytes(), dst
                assert _mode(dst) == 0o600
            else:
                assert _mode(dst) == 0o700
    seed = next((new.root / "target").rglob("seed.img"))
    assert seed.stat().st_size == SEED_SIZE
    assert seed.stat().st_blocks * 512 <= 3 * MiB  # 2 MiB of data; the holes stayed holes
    assert not any(p.name.endswith((".restoring", ".tmp")) for p in new.root.rglob("*"))

    for path in (new.root, new.pki, new.keys):
        assert _mode(path) == 0o700
    for path in [*new.pki.iterdir(), *new.keys.iterdir(), new.state_db, new.secrets_file,
                 new.root / "appliance.json"]:
        assert _mode(path) == 0o600, path
    assert "2 registered servers (1 replicating), 1 policy," in text
    assert f"from {old.root}" in text and "delta replication" in text
    assert "--ca-fingerprint " + pki.ca_fingerprint() in text and ":8443" in text
    assert "Not in the backup: changes made after" in text


def test_restore_uses_the_new_hosts_keyring(source: tuple[DataDir, SecretStore, dict[str, Any], bytes],
                                            tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """On a host with an OS keyring the secrets go there: appliance.json says so, every other field is kept,
    and no secrets file is written."""
    old, old_store, _, blob = source
    before = keyring.get_keyring()
    ring = MemoryKeyring()
    keyring.set_keyring(ring)
    monkeypatch.setenv("GODWIT_SECRET_STORE", "keyring")
    try:
        new = DataDir(tmp_path / "data")
        backup.restore_backup(blob, passphrase=PASSWORD, data_dir=new)
        ident_old = json.loads((old.root / "appliance.json").read_text())
        ident_new = json.loads((new.root / "appliance.json").read_text())
        assert ident_new["secret_store"] == "keyring" and ident_new["restored"]["from"] == ident_old["appliance_id"]
        assert not new.secrets_file.exists()
        service = f"godwit/{ident_new['appliance_id']}"  # its own entries: never the old appliance's
        assert ring.values[(service, MASTER_KEY)] == old_store.get(MASTER_KEY)
        ident = ApplianceIdentity.load(new)
        assert ident is not None
        open_pki(new, ident.secrets(new)).ca_key()
    finally:
        keyring.set_keyring(before)


def test_restore_without_storage_says_what_to_copy(source: tuple[DataDir, SecretStore, dict[str, Any], bytes],
                                                   tmp_path: Path) -> None:
    """Without --storage-from nothing of the cache or target moves, and the admin is told what to copy; a cache
    and target already copied into the new data directory are taken as they are."""
    _, _, _, blob = source
    bare = DataDir(tmp_path / "bare")
    text = backup.restore_backup(blob, passphrase=PASSWORD, data_dir=bare)
    assert not (bare.root / "cache").exists() and not (bare.root / "target").exists()
    assert "not moved" in text and "rsync -a --sparse" in text and "initial replication again" in text

    copied = DataDir(tmp_path / "copied")
    copied.root.mkdir()
    (copied.root / "target").mkdir()
    (copied.root / "target" / "x").write_text("seed")
    text = backup.restore_backup(blob, passphrase=PASSWORD, data_dir=copied)
    assert "used as they are" in text
    assert (copied.root / "target" / "x").read_text() == "seed"


def test_backup_format_is_as_documented(source: tuple[DataDir, SecretStore, dict[str, Any], bytes]) -> None:
    """Magic line, version line, JSON header with the scrypt parameters, 12-byte nonce, AES-256-GCM; the header
    is authenticated: a weaker KDF cannot be swapped in."""
    _, _, _, blob = source
    magic, version, header, _ = blob.split(b"\n", 3)
    assert magic + b"\n" == backup.MAGIC == b"GODWIT-APPLIANCE-BACKUP\n"
    assert version == b"1"
    head = json.loads(header)
    assert head["kdf"] == "scrypt" and head["cipher"] == "aes-256-gcm"
    assert head["n"] >= 2**15 and head["r"] == 8 and head["p"] == 1 and len(base64.b64decode(head["salt"])) == 16
    weaker = blob.replace(header, header.replace(b'"n": %d' % head["n"], b'"n": 32768'))
    assert weaker != blob
    with pytest.raises(BackupInvalid, match="passphrase is wrong, or the backup was altered"):
        backup.restore_backup(weaker, passphrase=PASSWORD, data_dir=DataDir(Path("/nonexistent/never")))


def test_secrets_are_never_logged(source: tuple[DataDir, SecretStore, dict[str, Any], bytes], tmp_path: Path,
                                  caplog: pytest.LogCaptureFixture) -> None:
    """Neither the backup passphrase nor a secret of the appliance reaches the log."""
    old, store, _, _ = source
    caplog.set_level(logging.DEBUG)
    blob = backup.create_backup(data_dir=old, store=store, passphrase=PASSWORD)
    backup.restore_backup(blob, passphrase=PASSWORD, data_dir=DataDir(tmp_path / "d"))
    assert "backup.complete" in caplog.text and "restore.complete" in caplog.text
    for secret in (PASSWORD, *(store.get(n) for n in backup.secret_names())):
        assert secret and secret not in caplog.text


def test_backup_is_consistent_while_the_engine_writes(tmp_path: Path) -> None:
    """A backup taken while another connection keeps writing (WAL) is one consistent snapshot."""
    dd, store, _ = _make_appliance(tmp_path / "live")
    writer = StateDB(dd.state_db)
    stop = threading.Event()

    def write() -> None:
        while not stop.is_set():
            writer.add_event("info", "busy", "x" * 2000)

    thread = threading.Thread(target=write)
    thread.start()
    try:
        blobs = [backup.create_backup(data_dir=dd, store=store, passphrase=PASSWORD) for _ in range(3)]
    finally:
        stop.set()
        thread.join()
        writer.close()
    counts = []
    for i, blob in enumerate(blobs):
        new = DataDir(tmp_path / f"r{i}")
        backup.restore_backup(blob, passphrase=PASSWORD, data_dir=new)
        db = StateDB(new.state_db)
        try:
            assert db._db.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
            counts.append(db._db.execute("SELECT count(*) FROM events WHERE code='busy'").fetchone()[0])
        finally:
            db.close()
    assert counts == sorted(counts) and counts[-1] > 0


def test_short_backup_passphrase_is_refused(source: tuple[DataDir, SecretStore, dict[str, Any], bytes]) -> None:
    """A backup passphrase shorter than 12 characters is refused with a sentence saying how long it must be."""
    old, store, _, _ = source
    with pytest.raises(BadInput, match="at least 12 characters"):
        backup.create_backup(data_dir=old, store=store, passphrase="short pass")


def _flip(blob: bytes, at: int) -> bytes:
    return blob[:at] + bytes([blob[at] ^ 0x01]) + blob[at + 1:]


def _bad_blobs(blob: bytes) -> dict[str, tuple[bytes, str]]:
    header_end = blob.index(b"\n", len(backup.MAGIC) + 2)
    salt = json.loads(blob[len(backup.MAGIC) + 2:header_end]).get("salt", "").encode()
    return {
        "truncated by one byte": (blob[:-1], "altered or truncated"),
        "truncated in the content": (blob[:len(blob) // 2], "altered or truncated"),
        "truncated in the header": (blob[:header_end - 5], "header is incomplete"),
        "truncated before the content": (blob[:header_end + 5], "ends before its content"),
        "empty": (b"", "not a Godwit appliance backup"),
        "garbage": (os.urandom(4096), "not a Godwit appliance backup"),
        "flipped in the magic": (_flip(blob, 3), "not a Godwit appliance backup"),
        "another salt": (blob.replace(salt, base64.b64encode(bytes(16)), 1), "altered"),
        "flipped in the nonce": (_flip(blob, header_end + 3), "altered"),
        "flipped in the content": (_flip(blob, len(blob) // 2), "altered"),
        "flipped in the tag": (_flip(blob, len(blob) - 1), "altered"),
        "newer format": (blob.replace(b"\n1\n", b"\n2\n", 1), "newer version of Godwit"),
        "header not JSON": (blob[:len(backup.MAGIC) + 2] + b"{nope\n" + blob[header_end + 1:], "header"),
    }


@pytest.mark.parametrize("case", list(_bad_blobs(b"GODWIT-APPLIANCE-BACKUP\n1\n{}\n" + b"x" * 200)))
def test_unreadable_backups_are_refused_and_change_nothing(
        case: str, source: tuple[DataDir, SecretStore, dict[str, Any], bytes], tmp_path: Path) -> None:
    """Truncated, altered, foreign or newer backups are refused with the reason; the data directory (here one with
    a copied cache, and one that does not exist yet) stays as it was."""
    _, _, _, blob = source
    bad, reason = _bad_blobs(blob)[case]
    existing = DataDir(tmp_path / "existing")
    (existing.root / "cache").mkdir(parents=True)
    (existing.root / "cache" / "seg").write_bytes(b"segment")
    before = _tree(existing.root)
    for dd in (existing, DataDir(tmp_path / "absent")):
        with pytest.raises(BackupInvalid, match=reason):
            backup.restore_backup(bad, passphrase=PASSWORD, data_dir=dd)
    assert _tree(existing.root) == before
    assert not (tmp_path / "absent").exists()


def test_wrong_passphrase_is_refused(source: tuple[DataDir, SecretStore, dict[str, Any], bytes],
                                     tmp_path: Path) -> None:
    """A restore with the wrong passphrase says the passphrase is wrong and creates no data directory."""
    _, _, _, blob = source
    with pytest.raises(BackupInvalid, match="passphrase is wrong"):
        backup.restore_backup(blob, passphrase=PASSWORD + "!", data_dir=DataDir(tmp_path / "d"))
    assert not (tmp_path / "d").exists()


def test_huge_files_are_refused_before_they_are_read(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A file larger than any backup is refused from its size; a blob that large too."""
    huge = tmp_path / "huge.backup"
    with open(huge, "wb") as f:
        f.write(backup.MAGIC)
        f.truncate(backup.MAX_BACKUP + 1)  # sparse: nothing of it is read
    with pytest.raises(BackupInvalid, match="more than an appliance backup can be"):
        backup.read_backup(huge)
    with pytest.raises(BadInput, match="Cannot read the backup"):
        backup.read_backup(tmp_path / "missing.backup")
    monkeypatch.setattr(backup, "MAX_BACKUP", 1000)
    with pytest.raises(BackupInvalid, match="more than an appliance backup can be"):
        backup.restore_backup(backup.MAGIC + bytes(1000), passphrase=PASSWORD, data_dir=DataDir(tmp_path / "d"))
    assert not (tmp_path / "d").exists()


@pytest.mark.parametrize("held", ["appliance.json", "state.db", "secrets.json", "pki/ca.crt"])
def test_a_data_dir_holding_an_appliance_is_refused(held: str, source: tuple[DataDir, SecretStore, dict[str, Any],
                                                    bytes], tmp_path: Path) -> None:
    """A restore never writes over an appliance, or part of one."""
    _, _, _, blob = source
    dd = DataDir(tmp_path / "data")
    (dd.root / held).parent.mkdir(parents=True, exist_ok=True)
    (dd.root / held).write_text("{}")
    before = _tree(dd.root)
    with pytest.raises(BadInput, match="already holds an appliance"):
        backup.restore_backup(blob, passphrase=PASSWORD, data_dir=dd)
    assert _tree(dd.root) == before


def test_a_data_dir_with_a_running_engine_is_refused(source: tuple[DataDir, SecretStore, dict[str, Any], bytes],
                                                     tmp_path: Path) -> None:
    """A restore into a data directory whose engine runs is refused, naming that engine's pid; nothing changes."""
    _, _, _, blob = source
    dd = DataDir(tmp_path / "data")
    dd.root.mkdir()
    lock = EngineLock(dd)
    lock.acquire()
    try:
        before = _tree(dd.root)
        with pytest.raises(DataDirInUse, match=f"engine \\(pid {os.getpid()}\\) is running"):
            backup.restore_backup(blob, passphrase=PASSWORD, data_dir=dd)
        assert _tree(dd.root) == before
    finally:
        lock.release()


def test_storage_from_a_running_engine_is_refused(source: tuple[DataDir, SecretStore, dict[str, Any], bytes],
                                                  tmp_path: Path) -> None:
    """The old appliance's cache and target are not copied while its engine may still change them."""
    old, _, _, blob = source
    lock = EngineLock(old)
    lock.acquire()
    try:
        old_before = _tree(old.root)
        with pytest.raises(DataDirInUse, match="still runs on"):
            backup.restore_backup(blob, passphrase=PASSWORD, data_dir=DataDir(tmp_path / "data"), storage_from=old)
        assert not (tmp_path / "data").exists()
        assert _tree(old.root) == old_before
    finally:
        lock.release()


def test_storage_from_refusals(source: tuple[DataDir, SecretStore, dict[str, Any], bytes], tmp_path: Path) -> None:
    """Storage of another appliance, of nothing, of the target itself, or onto a cache already there: refused."""
    old, _, _, blob = source
    other, _, _ = _make_appliance(tmp_path / "other")
    empty = DataDir(tmp_path / "empty")
    empty.root.mkdir()
    full = DataDir(tmp_path / "full")
    (full.root / "cache").mkdir(parents=True)
    (full.root / "cache" / "x").touch()
    cases = [(DataDir(tmp_path / "a"), other, "belong to another appliance"),
             (DataDir(tmp_path / "b"), empty, "neither cache/ nor target/"),
             (old, old, "already holds an appliance"),
             (full, old, "already has cache/")]
    for dd, storage, reason in cases:
        before = _tree(dd.root)
        with pytest.raises(BadInput, match=reason):
            backup.restore_backup(blob, passphrase=PASSWORD, data_dir=dd, storage_from=storage)
        assert _tree(dd.root) == before
    with pytest.raises(BadInput, match="being restored into"):
        backup.restore_backup(blob, passphrase=PASSWORD, data_dir=empty, storage_from=empty)


@pytest.fixture
def failing_copy(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """The disk fills up after the first file of the storage is copied."""
    real = backup._copy_file
    calls = []

    def copy(src: Path, dst: Path) -> int:
        calls.append(src)
        if len(calls) > 1:
            raise OSError(errno.ENOSPC, "No space left on device", str(dst))
        return real(src, dst)

    monkeypatch.setattr(backup, "_copy_file", copy)
    yield
    assert len(calls) == 2


def test_a_restore_cut_short_takes_back_what_it_wrote(
        source: tuple[DataDir, SecretStore, dict[str, Any], bytes], tmp_path: Path, failing_copy: None) -> None:
    """A restore that fails half-way leaves no appliance, nor any part of one; the data directory is as before."""
    old, _, _, blob = source
    existing = DataDir(tmp_path / "existing")
    (existing.root / "logs").mkdir(parents=True)
    before = _tree(existing.root)
    with pytest.raises(EngineError, match="ran out of space"):
        backup.restore_backup(blob, passphrase=PASSWORD, data_dir=existing, storage_from=old)
    assert _tree(existing.root) == before


def test_a_restore_cut_short_removes_the_directory_it_made(
        source: tuple[DataDir, SecretStore, dict[str, Any], bytes], tmp_path: Path, failing_copy: None) -> None:
    """A restore that fails half-way into a directory it created removes that directory and says nothing was
    restored."""
    old, _, _, blob = source
    with pytest.raises(EngineError, match="nothing was restored"):
        backup.restore_backup(blob, passphrase=PASSWORD, data_dir=DataDir(tmp_path / "new" / "data"),
                              storage_from=old)
    assert not (tmp_path / "new").exists()


@pytest.mark.parametrize("without", ["hole information", "copy_file_range"])
def test_sparse_copy_falls_back_and_keeps_holes(without: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Where the file system cannot tell holes, zero runs become holes; where copy_file_range is refused (another
    file system, an old kernel), data is read and written. Either way the copy is byte-exact and sparse."""
    src = tmp_path / "seed.img"
    with open(src, "wb") as f:
        f.truncate(SEED_SIZE)
        for off, data in SEED_DATA:
            f.seek(off)
            f.write(data)
    if without == "hole information":
        monkeypatch.setattr(backup, "data_extents", lambda *a, **k: None)
    else:
        def refuse(*args: object) -> int:
            raise OSError(errno.EXDEV, "Invalid cross-device link")

        monkeypatch.setattr(os, "copy_file_range", refuse)
    copied = backup._copy_file(src, tmp_path / "copy.img")
    assert copied == 2 * MiB
    assert (tmp_path / "copy.img").read_bytes() == src.read_bytes()
    assert (tmp_path / "copy.img").stat().st_blocks * 512 <= 3 * MiB


def test_a_restored_appliance_is_a_fresh_one_with_its_own_evaluation(
        source: tuple[DataDir, SecretStore, dict[str, Any], bytes], tmp_path: Path) -> None:
    """The restored appliance's evaluation begins when it was restored, not when its (older) CA was made; with
    its signed restore record removed, the CA's date counts again (removing it never helps)."""
    from engine.events import EventHub
    from engine.licence import EVALUATION_DAYS, LicenceKeeper

    old, _, _, blob = source
    new = DataDir(tmp_path / "data")
    backup.restore_backup(blob, passphrase=PASSWORD, data_dir=new)
    ca_made = open_pki(old, ApplianceIdentity.load(old).secrets(old)).ca_cert()  # type: ignore[union-attr]
    restored_at = json.loads((new.root / "appliance.json").read_text())["restored"]["at"]
    assert ca_made.not_valid_before_utc.timestamp() + 2 * 86400 < restored_at  # the CA is older (backdated)

    def start(data_dir: DataDir) -> float:
        ident = ApplianceIdentity.load(data_dir)
        assert ident is not None
        store = ident.secrets(data_dir)
        state = StateDB(data_dir.state_db)
        try:
            keeper = LicenceKeeper(data_dir=data_dir, identity=ident, store=store, state=state, hub=EventHub(state),
                                   pki=open_pki(data_dir, store), clock=lambda: restored_at + 60)
            assert keeper.status().days_left == EVALUATION_DAYS
            return keeper.evaluation_started_at
        finally:
            state.close()

    assert start(new) == restored_at
    raw = json.loads((new.root / "appliance.json").read_text())
    del raw["restored"]
    (new.root / "appliance.json").write_text(json.dumps(raw))
    assert start(new) < restored_at
