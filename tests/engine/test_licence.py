"""The licence keeper on real files, a real SQLite state database, a real CA and the file secret store;
only the clock is injected (days pass in microseconds)."""

from __future__ import annotations

import base64
import datetime as dt
import json
import os
import sqlite3
import stat
import subprocess
import sys
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import keyring
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.x509.oid import NameOID
from keyring.backends import fail

from engine.config import DataDir
from engine.errors import DiskFull, LicenceInvalid, LicenceRequired
from engine.events import EventHub
from engine.identity import ApplianceIdentity
from engine.licence import (
    ADVICE,
    DAY,
    DEFAULT_PUBLIC_KEY,
    EVALUATION_DAYS,
    MAX_LICENCE_FILE,
    META_EVALUATION,
    META_HIGH_WATER,
    SECRET_EVALUATION,
    SECRET_HIGH_WATER,
    SECRET_NAMES,
    WARN_AT_DAYS,
    Licence,
    LicenceKeeper,
    encode_licence,
    load_public_key,
    read_licence_file,
)
from engine.pki import BACKDATE, AppliancePKI
from engine.records import Event, LicenceStatus
from engine.secrets import SecretStore
from engine.state import StateDB
from tests.engine.memory_keyring import MemoryKeyring

ROOT = Path(__file__).resolve().parents[2]
VENDOR = Ed25519PrivateKey.generate()  # the test's vendor key pair; the shipped one is never used to sign here
IMPOSTOR = Ed25519PrivateKey.generate()


def public_pem(key: Ed25519PrivateKey) -> bytes:
    return key.public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)


class Clock:
    """The keeper's clock: stands still until a test moves it."""

    def __init__(self, t: float) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t


@dataclass
class Rig:
    """One appliance's data directory with the pieces the engine hands the keeper."""

    data_dir: DataDir
    identity: ApplianceIdentity
    store: SecretStore
    pki: AppliancePKI
    state: StateDB
    clock: Clock
    #: When the CA was made: the first start of this appliance.
    t0: float
    keepers: list[LicenceKeeper] = field(default_factory=list)

    @property
    def hub(self) -> EventHub:
        return EventHub(self.state)

    def keeper(self, **kwargs: object) -> LicenceKeeper:
        """A keeper as the engine builds one at a start: the identity read from disk again."""
        ident = ApplianceIdentity.load(self.data_dir)
        assert ident is not None
        args: dict[str, object] = {"public_key_pem": public_pem(VENDOR), **kwargs}
        keeper = LicenceKeeper(data_dir=self.data_dir, identity=ident, store=self.store, state=self.state,
                               hub=self.hub, pki=self.pki, clock=self.clock, **args)  # type: ignore[arg-type]
        self.keepers.append(keeper)
        return keeper

    def at(self, days: float) -> None:
        self.clock.t = self.t0 + days * DAY

    def events(self, code: str | None = None) -> list[Event]:
        return [e for e in self.state.events(limit=100_000) if code is None or e.code == code]

    def licence_events(self) -> list[tuple[str, str]]:
        return [(e.code, e.severity) for e in self.events() if e.code.startswith(("licence", "clock"))]

    def appliance_json(self) -> dict[str, object]:
        return json.loads((self.data_dir.root / "appliance.json").read_text())  # type: ignore[no-any-return]

    def edit_appliance_json(self, change: Callable[[dict[str, object]], None]) -> None:
        raw = self.appliance_json()
        change(raw)
        (self.data_dir.root / "appliance.json").write_text(json.dumps(raw))

    def secrets_file(self) -> dict[str, str]:
        return json.loads(self.data_dir.secrets_file.read_text())  # type: ignore[no-any-return]

    def sql(self, statement: str, *params: object) -> None:
        """Edit the state database from outside, as an admin with the sqlite3 shell would."""
        db = sqlite3.connect(self.data_dir.state_db)
        with db:
            db.execute(statement, params)
        db.close()

    def reinstall(self) -> None:
        """A new state database; appliance.json, the PKI and the secrets stay."""
        self.state.close()
        for suffix in ("", "-wal", "-shm"):
            Path(f"{self.data_dir.state_db}{suffix}").unlink(missing_ok=True)
        self.state = StateDB(self.data_dir.state_db)

    def licence(self, *, key: Ed25519PrivateKey = VENDOR, appliance_id: str | None = None,
                licensee: str = "Example Ltd", max_servers: int | None = 5, days: float | None = 365,
                licence_id: str = "lic-1") -> str:
        now = self.clock()
        return encode_licence(Licence(licence_id=licence_id, appliance_id=appliance_id or self.identity.appliance_id,
                                      licensee=licensee, max_servers=max_servers, issued_at=now - 60,
                                      expires_at=None if days is None else now + days * DAY), key)


@pytest.fixture
def rig(tmp_path: Path) -> Iterator[Rig]:
    """An appliance made as an engine of before this change made it: the CA, then appliance.json (no
    evaluation record yet), the file secret store; the clock stands at the CA's creation."""
    data_dir = DataDir(tmp_path / "data")
    data_dir.create()
    appliance_id = str(uuid.uuid4())
    pki = AppliancePKI(data_dir.pki, b"key-password")
    pki.create(appliance_id)
    t0 = pki.ca_cert().not_valid_before_utc.timestamp() + BACKDATE.total_seconds()
    (data_dir.root / "appliance.json").write_text(json.dumps(
        {"appliance_id": appliance_id, "secret_store": "file", "created_at": t0}))
    identity = ApplianceIdentity.load(data_dir)
    assert identity is not None and identity.evaluation is None
    store = identity.secrets(data_dir)
    rig = Rig(data_dir=data_dir, identity=identity, store=store, pki=pki, state=StateDB(data_dir.state_db),
              clock=Clock(t0), t0=t0)
    yield rig
    rig.state.close()


def shown(st: LicenceStatus) -> tuple[object, ...]:
    return st.state, st.days_left, st.alarm, st.threshold, st.clock_rolled_back


# --- the evaluation -----------------------------------------------------------------------------------
def test_first_start_begins_a_180_day_evaluation_and_records_it_in_three_places(rig: Rig) -> None:
    """The first start begins the evaluation now (180 days, no alarm) and writes its signed record to
    appliance.json, the secret store and the state database, without any event."""
    keeper = rig.keeper()
    st = keeper.status()
    assert st == LicenceStatus(state="evaluation", days_left=180, expires_at=rig.t0 + EVALUATION_DAYS * DAY,
                               activated_at=None, licensee=None, max_servers=None, evaluation_started_at=rig.t0,
                               alarm="none", message="", threshold=None, clock_rolled_back=False)
    record = rig.appliance_json()["evaluation"]
    assert isinstance(record, dict) and record["started_at"] == rig.t0
    assert json.loads(rig.secrets_file()[SECRET_EVALUATION]) == record
    assert json.loads(rig.state.get_meta(META_EVALUATION) or "") == record
    assert rig.licence_events() == []
    assert repr(keeper).startswith("<LicenceKeeper evaluation days_left=180 threshold=None alarm=none")
    assert "unsaved=[]" in repr(keeper)
    assert SECRET_NAMES == (SECRET_EVALUATION, SECRET_HIGH_WATER)


def test_days_left_are_whole_days_rounded_up(rig: Rig) -> None:
    """days_left counts a started day as a whole one, and is 0 from the moment the evaluation ends."""
    keeper = rig.keeper()
    for days, left in ((1 / DAY, 180), (1, 179), (1.5, 179), (179, 1), (180 - 1 / DAY, 1), (180, 0), (500, 0)):
        rig.at(days)
        assert keeper.status().days_left == left, days


def test_an_appliance_from_before_licences_counts_from_its_creation(rig: Rig) -> None:
    """An appliance created 40 days before this version first runs has 140 days left, not 180."""
    rig.at(40)
    assert rig.keeper().status().days_left == 140


def test_warnings_at_each_threshold_once_and_never_again_after_restarts(rig: Rig) -> None:
    """Each of 30/14/7/3/1 days left is one event (warning, error from 7), with alarm and banner; expiry is one
    error event; restarting the keeper repeats none of them."""
    keeper = rig.keeper()
    rig.at(150 - 1 / DAY)
    assert keeper.tick()  # 31 days left: a console shows the new count, without alarm
    assert keeper.status().days_left == 31 and keeper.status().threshold is None
    assert rig.licence_events() == []
    expected: list[tuple[str, str]] = []
    for days in WARN_AT_DAYS:
        rig.at(EVALUATION_DAYS - days)
        assert keeper.tick(), days
        st = keeper.status()
        assert (st.state, st.days_left, st.threshold) == ("evaluation", days, days)
        assert st.alarm == ("warning" if days > 7 else "critical")
        assert f"ends in {days} day" in st.message
        assert "Activate a licence, or move to a fresh appliance" in st.message  # the banner's buttons are the how
        expected.append(("licence-expiring", "warning" if days > 7 else "error"))
        assert rig.licence_events() == expected
        assert rig.events()[-1].message == st.message + ADVICE  # the event adds the commands
        assert "`godwit license activate FILE`" in ADVICE and "`godwit appliance backup`" in ADVICE
        assert not keeper.tick()  # the same threshold again: nothing new
        keeper = rig.keeper()  # an engine restart
        assert not keeper.tick()
        assert rig.licence_events() == expected
    rig.at(EVALUATION_DAYS)
    assert keeper.tick()
    st = keeper.status()
    assert (st.state, st.days_left, st.threshold, st.alarm) == ("expired", 0, 0, "critical")
    assert "ended on" in st.message and "activate a licence, or move to a fresh appliance" in st.message
    assert rig.licence_events() == [*expected, ("licence-expired", "error")]
    rig.at(EVALUATION_DAYS + 30)
    keeper = rig.keeper()
    assert not keeper.tick()
    assert rig.licence_events() == [*expected, ("licence-expired", "error")]


def test_a_jump_past_several_thresholds_records_only_the_lowest(rig: Rig) -> None:
    """The clock jumping from 180 to 2 days left records one warning, for 3 days, saying 2 days are left."""
    keeper = rig.keeper()
    keeper.tick()
    rig.at(178)
    assert keeper.tick()
    assert rig.licence_events() == [("licence-expiring", "error")]
    assert keeper.status().threshold == 3
    assert "ends in 2 days" in rig.events()[-1].message
    rig.at(179)
    keeper.tick()
    assert [e.code for e in rig.events("licence-expiring")] == ["licence-expiring"] * 2


def test_tick_reports_a_day_going_by_but_not_seconds(rig: Rig) -> None:
    """tick() is True when days_left changes (a console redraws) and False while nothing visible changed."""
    keeper = rig.keeper()
    rig.at(0.5)
    assert not keeper.tick()
    rig.at(1.2)
    assert keeper.tick()
    assert not keeper.tick()


# --- the clock ------------------------------------------------------------------------------------------
def test_a_clock_set_back_is_reported_once_and_does_not_extend_the_evaluation(rig: Rig) -> None:
    """Setting the clock back 50 days is one clock-rolled-back event (not repeated by ticks or a restart),
    days_left stays where it was, and a later second rollback is a second event."""
    keeper = rig.keeper()
    rig.at(100)
    keeper.tick()
    assert keeper.status().days_left == 80
    rig.at(50)
    assert keeper.tick()
    st = keeper.status()
    assert st.clock_rolled_back and st.days_left == 80 and st.state == "evaluation"
    assert rig.licence_events() == [("clock-rolled-back", "warning")]
    assert "50 days behind" in rig.events()[-1].message
    assert not keeper.tick()
    keeper = rig.keeper()
    keeper.tick()
    assert rig.licence_events() == [("clock-rolled-back", "warning")]
    assert keeper.status().days_left == 80
    rig.at(100.1)  # the admin set it right: the flag goes
    assert keeper.tick() and not keeper.status().clock_rolled_back
    rig.at(100.1 - 301 / DAY)
    keeper.tick()
    assert len(rig.events("clock-rolled-back")) == 2
    assert keeper.status().days_left == 80  # 79.9 days, rounded up


def test_small_steps_back_are_not_a_rollback(rig: Rig) -> None:
    """A step back of a few minutes (an NTP correction) is no rollback and no event."""
    keeper = rig.keeper()
    rig.at(10)
    keeper.tick()
    rig.at(10 - 120 / DAY)
    keeper.tick()
    assert not keeper.status().clock_rolled_back
    assert rig.licence_events() == []


def test_the_high_water_mark_survives_a_new_state_database(rig: Rig) -> None:
    """After a reinstall with a new state database, the secret store's high-water mark still catches a clock
    set back; the secret copy is written at most hourly."""
    keeper = rig.keeper()
    rig.at(100)
    keeper.tick()
    saved = float(rig.secrets_file()[SECRET_HIGH_WATER])
    assert saved == rig.clock()
    rig.at(100 + 1800 / DAY)
    keeper.tick()
    assert float(rig.secrets_file()[SECRET_HIGH_WATER]) == saved  # not yet: at most hourly
    assert float(rig.state.get_meta(META_HIGH_WATER) or 0) == rig.clock()  # the database: every tick
    rig.at(100 + 3601 / DAY)
    keeper.tick()
    assert float(rig.secrets_file()[SECRET_HIGH_WATER]) == rig.clock()
    rig.reinstall()
    rig.at(10)
    keeper = rig.keeper()
    st = keeper.status()
    assert st.clock_rolled_back and st.days_left == 80 and st.evaluation_started_at == rig.t0
    keeper.tick()
    assert [e.code for e in rig.events() if e.code == "clock-rolled-back"] == ["clock-rolled-back"]


def test_file_times_bound_the_high_water_mark_when_both_copies_are_gone(rig: Rig) -> None:
    """With the high-water mark deleted from the state database and the secret store, a log the engine wrote
    100 days in still shows the clock was set back."""
    keeper = rig.keeper()
    rig.at(100)
    keeper.tick()
    rig.data_dir.logs.mkdir(exist_ok=True)
    log = rig.data_dir.logs / "engine.log"
    log.write_text("engine.started\n")
    os.utime(log, (rig.clock(), rig.clock()))  # what the kernel stamped when the engine wrote it then
    rig.reinstall()
    rig.data_dir.secrets_file.write_text(json.dumps({k: v for k, v in rig.secrets_file().items()
                                                     if k != SECRET_HIGH_WATER}))
    rig.at(10)
    st = rig.keeper().status()
    assert st.clock_rolled_back and st.days_left == 80


# --- tamper evidence ----------------------------------------------------------------------------------
def test_a_record_deleted_from_the_state_database_is_restored(rig: Rig) -> None:
    """Deleting the evaluation record from the state database changes nothing; it is written again, and said."""
    rig.keeper()
    rig.at(20)
    rig.sql("DELETE FROM meta WHERE key=?", META_EVALUATION)
    assert rig.state.get_meta(META_EVALUATION) is None
    keeper = rig.keeper()
    assert keeper.status().evaluation_started_at == rig.t0 and keeper.status().days_left == 160
    assert json.loads(rig.state.get_meta(META_EVALUATION) or "")["started_at"] == rig.t0
    assert rig.licence_events() == [("licence-record-restored", "info")]
    assert "the state database" in rig.events()[-1].message
    rig.keeper()
    assert len(rig.licence_events()) == 1  # repaired: nothing to say at the next start


def test_an_edited_record_in_appliance_json_is_reported_and_rewritten(rig: Rig) -> None:
    """A later start written into appliance.json without the CA's signature is ignored, reported as tampering
    and replaced; fields appliance.json holds that this version does not know are kept."""
    rig.keeper()
    rig.at(20)

    def later(raw: dict[str, object]) -> None:
        record = raw["evaluation"]
        assert isinstance(record, dict)
        record["started_at"] = rig.clock()
        raw["installed_by"] = "a newer version"

    rig.edit_appliance_json(later)
    keeper = rig.keeper()
    assert keeper.status().evaluation_started_at == rig.t0 and keeper.status().days_left == 160
    assert rig.licence_events() == [("licence-tampered", "warning")]
    assert "did not verify in appliance.json" in rig.events()[-1].message
    raw = rig.appliance_json()
    assert raw["installed_by"] == "a newer version"
    assert isinstance(raw["evaluation"], dict) and raw["evaluation"]["started_at"] == rig.t0
    assert rig.pki.verify(b"anything", b"") is False
    rig.keeper()
    assert len(rig.licence_events()) == 1


def test_records_signed_by_another_ca_are_tampering_and_lose(rig: Rig, tmp_path: Path) -> None:
    """Records re-signed with another appliance's CA key for a later start, in all three places, do not verify:
    the CA's creation time still gives the start, and all three places are named."""
    rig.keeper()
    (tmp_path / "other-pki").mkdir()
    other = AppliancePKI(tmp_path / "other-pki", b"pw")
    other.create("other")
    later = rig.t0 + 90 * DAY
    message = b"godwit-evaluation-record/1\n" + f"{rig.identity.appliance_id}\n{later!r}".encode()
    signature = other.sign(message)
    record = {"started_at": later, "signature": base64.b64encode(signature).decode()}
    assert other.verify(message, signature)  # a real signature, by the wrong key
    rig.edit_appliance_json(lambda raw: raw.update(evaluation=record, created_at=later))
    rig.store.set(SECRET_EVALUATION, json.dumps(record))
    rig.state.set_meta(META_EVALUATION, json.dumps(record))
    rig.at(100)
    keeper = rig.keeper()
    assert keeper.status().evaluation_started_at == rig.t0 and keeper.status().days_left == 80
    assert rig.licence_events() == [("licence-tampered", "warning")]
    assert all(place in rig.events()[-1].message for place in ("appliance.json", "secret store", "state database"))


def test_a_deleted_secret_copy_is_restored(rig: Rig) -> None:
    """Deleting the secret store's copy of the record changes nothing; it is written again, and said."""
    rig.keeper()
    secrets = rig.secrets_file()
    del secrets[SECRET_EVALUATION]
    rig.data_dir.secrets_file.write_text(json.dumps(secrets))
    rig.at(3)
    keeper = rig.keeper()
    assert keeper.status().evaluation_started_at == rig.t0
    assert json.loads(rig.secrets_file()[SECRET_EVALUATION])["started_at"] == rig.t0
    assert rig.licence_events() == [("licence-record-restored", "info")]
    assert "the secret store" in rig.events()[-1].message


def test_damaged_records_are_tampering(rig: Rig) -> None:
    """Records that are not even JSON objects count as altered, not as missing."""
    rig.keeper()
    rig.edit_appliance_json(lambda raw: raw.update(evaluation="yesterday"))
    rig.store.set(SECRET_EVALUATION, "{not json")
    keeper = rig.keeper()
    assert keeper.status().evaluation_started_at == rig.t0
    assert rig.licence_events() == [("licence-tampered", "warning")]
    assert isinstance(rig.appliance_json()["evaluation"], dict)


def test_deleting_every_record_and_editing_created_at_does_not_reset(rig: Rig) -> None:
    """With every record deleted and created_at moved 100 days later, the CA certificate still dates the
    evaluation."""
    rig.keeper()
    rig.at(100)

    def wipe(raw: dict[str, object]) -> None:
        del raw["evaluation"]
        raw["created_at"] = rig.clock()

    rig.edit_appliance_json(wipe)
    rig.data_dir.secrets_file.write_text("{}")
    rig.reinstall()
    keeper = rig.keeper()
    assert keeper.status().evaluation_started_at == rig.t0 and keeper.status().days_left == 80


def test_a_ca_certificate_of_another_key_is_no_evidence(rig: Rig) -> None:
    """A ca.crt replaced by a certificate of another key (here dated a month earlier) dates nothing, and the
    records it cannot verify are reported as tampering."""
    rig.keeper()
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "not the appliance's CA")])
    before = dt.datetime.fromtimestamp(rig.t0 - 30 * DAY, dt.UTC)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(1).not_valid_before(before).not_valid_after(before + dt.timedelta(days=3650))
            .sign(key, hashes.SHA256()))
    rig.pki.ca_cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    keeper = rig.keeper()
    assert keeper.status().evaluation_started_at == rig.t0
    assert rig.licence_events() == [("licence-tampered", "warning")]


def test_a_locked_keyring_is_neither_evidence_nor_tampering(rig: Rig) -> None:
    """With the OS keyring store: a keyring that cannot be read at a start changes nothing and reports nothing;
    ticks go on; once it opens again its copies are in use as before."""
    before = keyring.get_keyring()
    memory = MemoryKeyring()
    keyring.set_keyring(memory)
    try:
        rig.store = SecretStore("keyring", appliance_id=rig.identity.appliance_id, file_path=rig.data_dir.secrets_file)
        keeper = rig.keeper()
        keeper.tick()
        service = f"godwit/{rig.identity.appliance_id}"
        assert set(memory.values) == {(service, SECRET_EVALUATION), (service, SECRET_HIGH_WATER)}
        keyring.set_keyring(fail.Keyring())
        rig.at(30)
        keeper = rig.keeper()
        assert keeper.status().evaluation_started_at == rig.t0 and keeper.status().days_left == 150
        assert not keeper.tick()  # the high-water mark cannot reach the keyring: logged, tried again later
        keyring.set_keyring(memory)
        keeper.tick()
        assert float(memory.values[(service, SECRET_HIGH_WATER)]) == rig.clock()
        assert rig.licence_events() == []
    finally:
        keyring.set_keyring(before)


def test_a_reinstall_over_the_same_data_directory_does_not_reset(rig: Rig) -> None:
    """A new state database over the same appliance.json, PKI and secrets keeps the evaluation start."""
    keeper = rig.keeper()
    rig.at(160)
    keeper.tick()
    rig.reinstall()
    keeper = rig.keeper()
    st = keeper.status()
    assert st.evaluation_started_at == rig.t0 and st.days_left == 20 and st.threshold == 30


# --- activation ----------------------------------------------------------------------------------------
def test_activating_a_valid_licence(rig: Rig) -> None:
    """A licence file for this appliance, signed by the vendor, makes it active, is kept in licence.json,
    is one event, and survives a restart."""
    keeper = rig.keeper()
    rig.at(175)
    keeper.tick()
    st = keeper.activate(rig.licence(), replicating=2)
    assert st == LicenceStatus(state="active", days_left=365, expires_at=rig.clock() + 365 * DAY,
                               activated_at=rig.clock(), licensee="Example Ltd", max_servers=5,
                               evaluation_started_at=rig.t0)
    assert keeper.status() == st
    assert not keeper.tick()  # activate() already answered with the new status
    assert rig.licence_events()[-1] == ("licence-activated", "info")
    assert "Example Ltd" in rig.events()[-1].message and "up to 5 servers" in rig.events()[-1].message
    assert stat.S_IMODE(os.stat(keeper.licence_path).st_mode) == 0o600
    assert rig.keeper().status() == st
    assert repr(rig.keeper()).startswith("<LicenceKeeper active days_left=365")


REFUSALS: dict[str, tuple[Callable[[Rig], str], int, str]] = {
    "signed by another key": (lambda r: r.licence(key=IMPOSTOR), 0, "not signed by the Godwit licence key"),
    "another appliance": (lambda r: r.licence(appliance_id="0f4c4d3e-1111-4222-8333-444455556666"), 0,
                          "is for appliance 0f4c4d3e-1111-4222-8333-444455556666, but this is appliance "),
    "ended": (lambda r: r.licence(days=-1), 0, "this licence ended on "),
    "fewer servers than replicate": (lambda r: r.licence(max_servers=2), 3,
                                     "this licence allows 2 servers but 3 replicate now: disable one or ask for "
                                     "a larger licence."),
    "garbage": (lambda r: "Dear customer, thank you for your order", 0, "not JSON"),
    "binary": (lambda r: "\x00\x01\xff\ufffd" * 100, 0, "not JSON"),
    "huge": (lambda r: json.dumps({"format": "godwit-licence", "pad": "x" * MAX_LICENCE_FILE}), 0,
             "larger than any licence file (64 KiB at most)"),
    "deeply nested": (lambda r: "[" * 60_000, 0, "not JSON"),
    "not a licence": (lambda r: json.dumps({"format": "godwit-backup", "version": 1}), 0,
                      'not a Godwit licence file (no "format": "godwit-licence")'),
    "a list": (lambda r: "[1, 2, 3]", 0, "not a Godwit licence file"),
    "newer version": (lambda r: r.licence().replace('"version": 1', '"version": 2'), 0, "version 2"),
    "payload of the wrong type": (lambda r: _envelope(r, payload=5), 0, "its payload is not text"),
    "signature of the wrong type": (lambda r: _envelope(r, signature=None), 0, "its signature is not text"),
    "bad base64": (lambda r: _envelope(r, payload="not base64!"), 0, "its payload is not base64"),
    "payload altered": (lambda r: _envelope(r, payload=base64.b64encode(base64.b64decode(
        json.loads(r.licence())["payload"]).replace(b'"max_servers":5', b'"max_servers":50')).decode()), 0,
        "not signed by the Godwit licence key"),
    "signed payload with a wrong type": (lambda r: _signed(r, max_servers="five"), 0,
                                         "field 'max_servers' must be a whole number of at least 1, or null"),
    "signed payload with zero servers": (lambda r: _signed(r, max_servers=0), 0, "field 'max_servers'"),
    "signed payload with a boolean": (lambda r: _signed(r, max_servers=True), 0, "field 'max_servers'"),
    "signed payload without a licensee": (lambda r: _signed(r, licensee=None), 0, "field 'licensee'"),
    "signed payload with a long licensee": (lambda r: _signed(r, licensee="x" * 201), 0, "field 'licensee'"),
    "signed payload with a line break": (lambda r: _signed(r, licensee="A\nB"), 0, "field 'licensee'"),
    "signed payload with NaN": (lambda r: _signed(r, expires_at=float("nan")), 0, "field 'expires_at'"),
    "signed payload not JSON": (lambda r: _signed_bytes(b"\xff\xfe"), 0, "payload is not JSON"),
}


def _envelope(r: Rig, **change: object) -> str:
    envelope = json.loads(r.licence())
    envelope.update(change)
    return json.dumps(envelope)


def _signed_bytes(payload: bytes) -> str:
    return json.dumps({"format": "godwit-licence", "version": 1, "payload": base64.b64encode(payload).decode(),
                       "signature": base64.b64encode(VENDOR.sign(payload)).decode()})


def _signed(r: Rig, **change: object) -> str:
    """A payload the vendor's key really signed, with fields a buggy tool might write."""
    payload = json.loads(base64.b64decode(json.loads(r.licence())["payload"]))
    payload.update(change)
    return _signed_bytes(json.dumps(payload).encode())


@pytest.mark.parametrize("case", REFUSALS)
def test_a_refused_licence_changes_nothing(rig: Rig, case: str) -> None:
    """Each kind of bad licence file is refused with its reason in one line, and nothing changes: not the
    status, not licence.json, no event."""
    make, replicating, reason = REFUSALS[case]
    keeper = rig.keeper()
    rig.at(100)
    keeper.tick()
    before, events = keeper.status(), rig.events()
    with pytest.raises(LicenceInvalid) as info:
        keeper.activate(make(rig), replicating=replicating)
    message = info.value.message
    assert reason in message, message
    assert message.startswith("Licence not activated: ") and "\n" not in message and len(message) < 400
    assert keeper.status() == before and rig.events() == events
    assert not keeper.licence_path.exists()
    assert not keeper.tick()


def test_a_refused_licence_leaves_the_active_one(rig: Rig) -> None:
    """With a licence active, a refused file leaves that licence and its file byte for byte."""
    keeper = rig.keeper()
    active = keeper.activate(rig.licence(), replicating=0)
    saved = keeper.licence_path.read_bytes()
    with pytest.raises(LicenceInvalid, match="not signed by the Godwit licence key"):
        keeper.activate(rig.licence(key=IMPOSTOR, max_servers=None), replicating=0)
    assert keeper.status() == active and keeper.licence_path.read_bytes() == saved


def test_the_other_appliance_refusal_names_both_ids(rig: Rig) -> None:
    """Refusing another appliance's licence names its id and this appliance's id."""
    other = str(uuid.uuid4())
    with pytest.raises(LicenceInvalid) as info:
        rig.keeper().activate(rig.licence(appliance_id=other), replicating=0)
    assert other in info.value.message and rig.identity.appliance_id in info.value.message


def test_an_altered_licence_json_is_ignored_with_an_event(rig: Rig) -> None:
    """A licence.json whose licence no longer verifies (or belongs to another appliance) is ignored at the next
    start, with an event: the appliance is back on its evaluation."""
    keeper = rig.keeper()
    keeper.activate(rig.licence(max_servers=2), replicating=0)
    saved = json.loads(keeper.licence_path.read_text())
    payload = json.loads(base64.b64decode(json.loads(saved["file"])["payload"]))
    payload["max_servers"] = None
    envelope = json.loads(saved["file"])
    envelope["payload"] = base64.b64encode(json.dumps(payload).encode()).decode()
    keeper.licence_path.write_text(json.dumps({**saved, "file": json.dumps(envelope)}))
    st = rig.keeper().status()
    assert (st.state, st.licensee, st.max_servers) == ("evaluation", None, None)
    assert rig.licence_events()[-1] == ("licence-invalid", "warning")
    assert "not signed by the Godwit licence key" in rig.events()[-1].message
    keeper.licence_path.write_text(json.dumps({**saved, "file": rig.licence(appliance_id=str(uuid.uuid4()))}))
    assert rig.keeper().status().state == "evaluation"
    assert "is for appliance" in rig.events()[-1].message
    keeper.licence_path.write_text("garbage")
    assert rig.keeper().status().state == "evaluation"
    assert rig.events()[-1].code == "licence-invalid"


def test_a_licence_has_its_own_warnings_and_end(rig: Rig) -> None:
    """A licence that ends gets the thresholds again (its own, not the evaluation's), then expires like the
    evaluation and refuses new servers in its licensee's name."""
    keeper = rig.keeper()
    rig.at(150)
    keeper.tick()
    assert rig.licence_events() == [("licence-expiring", "warning")]
    keeper.activate(rig.licence(days=40), replicating=1)
    rig.at(160)
    assert keeper.tick()
    assert keeper.status().threshold == 30
    assert rig.licence_events()[-1] == ("licence-expiring", "warning")
    assert rig.events()[-1].message.startswith("The licence of Example Ltd ends in 30 days")
    rig.at(190)
    keeper.tick()
    st = keeper.status()
    assert (st.state, st.days_left, st.licensee, st.max_servers) == ("expired", 0, "Example Ltd", 5)
    assert rig.licence_events()[-1] == ("licence-expired", "error")
    with pytest.raises(LicenceRequired, match=r"^The licence of Example Ltd ended on .* no new server can be enabled"):
        keeper.check_new_server("enable", replicating=0)


def test_a_perpetual_licence_never_warns(rig: Rig) -> None:
    """A licence without an end has no days_left, no end date and no warnings, ten years on."""
    keeper = rig.keeper()
    st = keeper.activate(rig.licence(days=None, max_servers=None), replicating=7)
    assert (st.state, st.days_left, st.expires_at, st.max_servers, st.threshold) == ("active", None, None, None, None)
    rig.at(3650)
    keeper.tick()
    assert keeper.status().state == "active" and keeper.status().alarm == "none"
    assert [c for c, _ in rig.licence_events()] == ["licence-activated"]
    keeper.check_new_server("enable", replicating=1000)


# --- new servers --------------------------------------------------------------------------------------
def test_new_servers_are_refused_only_when_the_licence_says_so(rig: Rig) -> None:
    """During the evaluation any number of servers may be added; once it ended, registering and enabling are
    refused in one line that names the licence and how to activate; an active licence limits enabling only."""
    keeper = rig.keeper()
    rig.at(179.9)
    keeper.check_new_server("register", replicating=100)
    keeper.check_new_server("enable", replicating=100)
    rig.at(180)
    for what, verb in (("register", "registered"), ("enable", "enabled")):
        with pytest.raises(LicenceRequired) as info:
            keeper.check_new_server(what, replicating=0)  # type: ignore[arg-type]
        message = info.value.message
        assert message.startswith("The evaluation licence ended on ") and f"no new server can be {verb}" in message
        assert "`godwit license activate FILE`" in message and "\n" not in message
    keeper.activate(rig.licence(max_servers=2), replicating=2)
    keeper.check_new_server("enable", replicating=1)
    keeper.check_new_server("register", replicating=2)
    with pytest.raises(LicenceRequired, match=r"^The licence of Example Ltd allows 2 replicating servers and 2 "):
        keeper.check_new_server("enable", replicating=2)


# --- robustness ---------------------------------------------------------------------------------------
def test_tick_survives_a_full_disk_and_catches_up(rig: Rig, monkeypatch: pytest.MonkeyPatch) -> None:
    """While the state database is full, tick() raises nothing; the warning it could not record is recorded
    once there is room, and only once."""
    keeper = rig.keeper()
    full = DiskFull("The appliance's state database cannot be written: the disk is full.")

    def refuse(*args: object, **kwargs: object) -> None:
        raise full

    real_add, real_set = rig.state.add_event, rig.state.set_meta
    monkeypatch.setattr(rig.state, "add_event", refuse)
    monkeypatch.setattr(rig.state, "set_meta", refuse)
    rig.at(150)
    assert keeper.tick()
    keeper.tick()
    assert rig.licence_events() == []
    monkeypatch.setattr(rig.state, "add_event", real_add)  # room for the event, not yet for the settings
    keeper.tick()
    keeper.tick()
    assert rig.licence_events() == [("licence-expiring", "warning")]
    monkeypatch.setattr(rig.state, "set_meta", real_set)
    keeper.tick()
    assert rig.state.get_meta("licence.warned") is not None
    rig.keeper().tick()
    assert rig.licence_events() == [("licence-expiring", "warning")]


def test_a_record_that_could_not_be_written_is_written_at_a_later_tick(rig: Rig, monkeypatch: pytest.MonkeyPatch) \
        -> None:
    """A first start on a full disk still begins the evaluation; its record reaches the state database once
    there is room."""
    real_set = rig.state.set_meta

    def refuse(*args: object, **kwargs: object) -> None:
        raise DiskFull("full")

    monkeypatch.setattr(rig.state, "set_meta", refuse)
    keeper = rig.keeper()
    assert keeper.status().days_left == 180 and "unsaved=['meta']" in repr(keeper)
    monkeypatch.setattr(rig.state, "set_meta", real_set)
    keeper.tick()
    assert rig.state.get_meta(META_EVALUATION) is not None and "unsaved=[]" in repr(keeper)


def test_the_public_key_comes_from_the_environment_or_the_shipped_file(rig: Rig, tmp_path: Path,
                                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    """Without a key given, GODWIT_LICENCE_PUBLIC_KEY names it; else the shipped key is used, which refuses a
    licence signed by any other key; a missing key file refuses activation but the evaluation runs."""
    assert load_public_key(DEFAULT_PUBLIC_KEY.read_bytes())  # the shipped key is a usable Ed25519 key
    monkeypatch.delenv("GODWIT_LICENCE_PUBLIC_KEY", raising=False)
    with pytest.raises(LicenceInvalid, match="not signed by the Godwit licence key"):
        rig.keeper(public_key_pem=None).activate(rig.licence(), replicating=0)
    (tmp_path / "test.pub").write_bytes(public_pem(VENDOR))
    monkeypatch.setenv("GODWIT_LICENCE_PUBLIC_KEY", str(tmp_path / "test.pub"))
    assert rig.keeper(public_key_pem=None).activate(rig.licence(), replicating=0).state == "active"
    monkeypatch.setenv("GODWIT_LICENCE_PUBLIC_KEY", str(tmp_path / "missing.pub"))
    keeper = rig.keeper(public_key_pem=None)
    assert keeper.status().state == "evaluation"
    assert rig.events()[-1].code == "licence-invalid"  # the activated licence cannot be checked any more
    with pytest.raises(LicenceInvalid, match=r"missing or damaged\. Reinstall the appliance\."):
        keeper.activate(rig.licence(), replicating=0)


def test_reading_a_licence_file_is_bounded(tmp_path: Path) -> None:
    """The CLI's reader refuses a huge file without reading it all, binary data and a missing file."""
    big = tmp_path / "big"
    with open(big, "wb") as f:
        f.truncate(1 << 30)
    with pytest.raises(LicenceInvalid, match="larger than any licence file"):
        read_licence_file(big)
    (tmp_path / "bin").write_bytes(b"\xff\xfe\x00")
    with pytest.raises(LicenceInvalid, match="not text"):
        read_licence_file(tmp_path / "bin")
    with pytest.raises(LicenceInvalid, match="cannot be read"):
        read_licence_file(tmp_path / "nope")
    (tmp_path / "ok").write_text("{}")
    assert read_licence_file(tmp_path / "ok") == "{}"


def test_the_ca_signs_and_verifies_records(tmp_path: Path) -> None:
    """AppliancePKI.sign/verify: a signature verifies for its data only and with its own CA only."""
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    a, b = AppliancePKI(tmp_path / "a", b"pw"), AppliancePKI(tmp_path / "b", b"pw")
    a.create("a")
    b.create("b")
    sig = a.sign(b"evaluation began")
    assert a.verify(b"evaluation began", sig)
    assert not a.verify(b"evaluation began later", sig)
    assert not b.verify(b"evaluation began", sig)
    assert not a.verify(b"evaluation began", b"\x30\x00") and not a.verify(b"evaluation began", b"")


def test_identity_files_from_before_licences_load_and_unknown_fields_survive(tmp_path: Path) -> None:
    """appliance.json without an evaluation record loads; writing the record keeps fields this version does not
    know and the file stays small and readable."""
    data_dir = DataDir(tmp_path)
    ident = ApplianceIdentity.create(data_dir, created_at=1_700_000_000.0)
    loaded = ApplianceIdentity.load(data_dir)
    assert loaded == ident and loaded is not None and loaded.evaluation is None
    raw = json.loads((tmp_path / "appliance.json").read_text())
    (tmp_path / "appliance.json").write_text(json.dumps({**raw, "future": {"x": 1}}))
    updated = loaded.with_evaluation(data_dir, {"started_at": 1.0, "signature": "AA=="})
    assert updated.evaluation == {"started_at": 1.0, "signature": "AA=="}
    again = ApplianceIdentity.load(data_dir)
    assert again == ident and again is not None and again.evaluation == updated.evaluation
    text = (tmp_path / "appliance.json").read_text()
    assert json.loads(text)["future"] == {"x": 1} and len(text) < 500 and text.count("\n") > 3


def test_the_maintainer_tool_makes_keys_and_licences_the_appliance_accepts(rig: Rig, tmp_path: Path) -> None:
    """tools/issue_licence.py: keygen writes a 0600 private key and refuses to overwrite it; issue writes a licence
    that a keeper with the matching public key activates; it does not import Qt."""
    tool = [sys.executable, str(ROOT / "tools" / "issue_licence.py")]
    keys = tmp_path / "keys"
    made = subprocess.run([*tool, "keygen", "--out", str(keys), "--name", "test"], capture_output=True, text=True)
    assert made.returncode == 0, made.stderr
    assert stat.S_IMODE(os.stat(keys / "test.pem").st_mode) == 0o600
    again = subprocess.run([*tool, "keygen", "--out", str(keys), "--name", "test"], capture_output=True, text=True)
    assert again.returncode == 2 and "exists already" in again.stderr
    out = tmp_path / "example.licence"
    issued = subprocess.run([*tool, "issue", "--key", str(keys / "test.pem"), "--appliance-id",
                             rig.identity.appliance_id, "--licensee", "Example GmbH", "--max-servers", "3",
                             "--days", "30", "--out", str(out)], capture_output=True, text=True)
    assert issued.returncode == 0, issued.stderr
    assert "Example GmbH" in issued.stdout and "up to 3 servers" in issued.stdout
    rig.clock.t = float(json.loads(base64.b64decode(json.loads(out.read_text())["payload"]))["issued_at"])
    keeper = rig.keeper(public_key_pem=(keys / "test.pub").read_bytes())
    st = keeper.activate(read_licence_file(out), replicating=3)
    assert (st.state, st.licensee, st.max_servers, st.days_left) == ("active", "Example GmbH", 3, 30)
    bad = subprocess.run([*tool, "issue", "--key", str(keys / "test.pem"), "--appliance-id", "not-a-uuid",
                          "--licensee", "X", "--perpetual", "--out", str(tmp_path / "x")], capture_output=True,
                         text=True)
    assert bad.returncode == 2 and "not an appliance id" in bad.stderr and "Traceback" not in bad.stderr
    probe = subprocess.run([sys.executable, "-c", "import runpy, sys; sys.argv = ['t', '--help']; "
                            f"runpy.run_path({str(ROOT / 'tools' / 'issue_licence.py')!r}, run_name='m'); "
                            "print(sorted(m for m in sys.modules if m.startswith(('PySide6', 'qasync'))))"],
                           capture_output=True, text=True)
    assert probe.returncode == 0 and probe.stdout.strip() == "[]", probe
