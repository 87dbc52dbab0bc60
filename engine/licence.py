"""The appliance's licence: the evaluation period, activation with a signed licence file, warnings.

Every appliance starts on a 180-day evaluation. An admin activates a licence file that the vendor
signed with its Ed25519 key for this appliance's id. Once the evaluation (or an activated licence)
ends, what replicates goes on, but no new server is registered or enabled. ``docs/licence.md``
describes the licence file byte by byte, the evaluation record and the clock rules.

Time, and how it is kept honest:

- **The evaluation start** is the earliest valid piece of evidence: the signed evaluation record
  (kept in ``appliance.json``, in the secret store and in the state database, each signed with the
  appliance's CA key), the CA certificate's creation time (its ``not_valid_before`` plus the
  backdating of :mod:`engine.pki`, taken only while the certificate matches the CA key) and the
  identity's ``created_at``. A copy that is missing is written again; one that does not verify is
  written again and reported (event ``licence-tampered``). Editing or deleting one of them therefore
  cannot move the start later; only all of them together, the CA included, would.
- **The high-water mark** is the latest time the appliance has seen: kept in the state database
  (at every tick that moves it) and in the secret store (at most hourly); at a start never below the
  evaluation start or the newest modification time in the data directory and its logs.
  The licence is reckoned from ``max(now, high-water)``: setting the clock back never extends it.
  A clock more than :data:`ROLLBACK_TOLERANCE` behind the mark is reported once per rollback
  (event ``clock-rolled-back``).

:class:`LicenceKeeper` is used from one thread, the engine's event loop.
"""

from __future__ import annotations

import base64
import binascii
import errno
import json
import logging
import math
import os
import sqlite3
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, TypeGuard

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from engine.config import DataDir
from engine.errors import DiskFull, EngineError, LicenceInvalid, LicenceRequired
from engine.events import EventHub
from engine.files import write_atomically
from engine.identity import ApplianceIdentity
from engine.pki import BACKDATE, AppliancePKI
from engine.records import LicenceAlarm, LicenceStatus, Severity
from engine.secrets import SecretStore
from engine.state import StateDB

log = logging.getLogger(__name__)

EVALUATION_DAYS = 180
WARN_AT_DAYS = (30, 14, 7, 3, 1)
#: The largest licence file the appliance reads (a real one is well under 1 KiB).
MAX_LICENCE_FILE = 64 * 1024
DAY = 86400.0
#: A clock this far behind the high-water mark is a rollback (smaller steps are NTP's corrections).
ROLLBACK_TOLERANCE = 300.0
#: How far the high-water mark moves before it is written to the secret store again (the state database: every
#: tick that moves it).
HIGH_WATER_SECRET_EVERY = 3600.0

LICENCE_FORMAT = "godwit-licence"
LICENCE_VERSION = 1
#: Where the vendor's public key ships, relative to the repository (see :class:`LicenceKeeper`).
DEFAULT_PUBLIC_KEY = Path(__file__).resolve().parents[1] / "resources" / "licence" / "vendor-ed25519.pub"
PUBLIC_KEY_ENV = "GODWIT_LICENCE_PUBLIC_KEY"

SECRET_EVALUATION = "evaluation-record"
SECRET_HIGH_WATER = "clock-high-water"
#: The secret-store entries this module keeps (an appliance backup carries them).
SECRET_NAMES: tuple[str, ...] = (SECRET_EVALUATION, SECRET_HIGH_WATER)
META_EVALUATION = "licence.evaluation"
META_HIGH_WATER = "licence.high_water"
#: The high-water mark of the last rollback reported: a rollback is reported once.
META_ROLLBACK = "licence.rollback_reported"
#: ``{"period": ..., "threshold": N}``: the lowest warning threshold recorded for the current period.
META_WARNED = "licence.warned"

HOW_TO_ACTIVATE = "`godwit license activate FILE` or Activate licence… in the console"
#: What a licence event adds to the banner's sentence: the commands.
ADVICE = (f" To activate a licence: {HOW_TO_ACTIVATE}. To move: `godwit appliance backup` on this appliance, then "
          "`godwit appliance restore` on the new one (docs/moving-an-appliance.md).")
_RECORD_CONTEXT = b"godwit-evaluation-record/1\n"
_PAYLOAD_FIELDS = ("licence_id", "appliance_id", "licensee", "max_servers", "issued_at", "expires_at")


# --- licence files ----------------------------------------------------------------------------------
@dataclass(frozen=True)
class Licence:
    """What a licence file grants, as the vendor signed it."""

    licence_id: str
    appliance_id: str
    licensee: str
    #: Servers that may replicate at once; None: any number.
    max_servers: int | None
    issued_at: float
    #: None: the licence does not end.
    expires_at: float | None


def _refused(reason: str) -> LicenceInvalid:
    return LicenceInvalid(f"Licence not activated: {reason}")


def _date(ts: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime(ts))


def _days(n: int) -> str:
    return "1 day" if n == 1 else f"{n} days"


def encode_licence(licence: Licence, private_key: Ed25519PrivateKey) -> str:
    """The licence file for ``licence``, signed with the vendor's key (the maintainer tool and tests use it)."""
    payload = json.dumps({name: getattr(licence, name) for name in _PAYLOAD_FIELDS}, sort_keys=True,
                         separators=(",", ":")).encode()
    servers = "any number of servers" if licence.max_servers is None else f"up to {licence.max_servers} servers"
    until = "without end" if licence.expires_at is None else f"until {_date(licence.expires_at)}"
    envelope = {
        "format": LICENCE_FORMAT,
        "version": LICENCE_VERSION,
        "about": f"Godwit licence for {licence.licensee} on appliance {licence.appliance_id}: {servers}, {until} "
                 "(for people; the signed payload is what counts)",
        "payload": base64.b64encode(payload).decode(),
        "signature": base64.b64encode(private_key.sign(payload)).decode(),
    }
    return json.dumps(envelope, indent=2) + "\n"


def load_public_key(pem: bytes) -> Ed25519PublicKey:
    """The vendor's public key from its PEM; ValueError if it is not an Ed25519 public key."""
    key = serialization.load_pem_public_key(pem)
    if not isinstance(key, Ed25519PublicKey):
        raise ValueError("not an Ed25519 public key")
    return key


def read_licence_file(path: Path) -> str:
    """The text of a licence file an admin named, read safely (at most :data:`MAX_LICENCE_FILE` + 1 bytes):
    :class:`LicenceInvalid` if it cannot be read, is too large or is not text."""
    try:
        with open(path, "rb") as f:
            data = f.read(MAX_LICENCE_FILE + 1)
    except OSError as exc:
        raise _refused(f"{path} cannot be read ({exc.strerror or exc}): check the file's name.") from exc
    if len(data) > MAX_LICENCE_FILE:
        raise _refused(f"{path} is larger than any licence file ({MAX_LICENCE_FILE // 1024} KiB at most): "
                       "pick the licence file your vendor sent.")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise _refused(f"{path} is not a Godwit licence file (not text): pick the licence file your vendor "
                       "sent.") from exc


def _b64(value: object, what: str) -> bytes:
    if not isinstance(value, str):
        raise _refused(f"the file is not a Godwit licence file (its {what} is not text): pick the licence file "
                       "your vendor sent.")
    try:
        return base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise _refused(f"the licence file is damaged (its {what} is not base64): ask your vendor for a new "
                       "copy.") from exc


def _number(value: object) -> TypeGuard[int | float]:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def _text(value: object, longest: int) -> bool:
    return isinstance(value, str) and 0 < len(value.strip()) <= longest and value.isprintable()


def decode_licence(text: str, public_key: Ed25519PublicKey) -> Licence:
    """The licence in a licence file whose signature verifies with ``public_key``.

    Raises :class:`LicenceInvalid` with a one-line reason for anything else. Whether the licence is
    for this appliance, current and large enough is the caller's question."""
    size = len(text.encode("utf-8", errors="surrogatepass"))
    if size > MAX_LICENCE_FILE:
        raise _refused(f"the file is {size} bytes, larger than any licence file ({MAX_LICENCE_FILE // 1024} KiB "
                       "at most): pick the licence file your vendor sent.")
    try:
        envelope = json.loads(text)
    except (ValueError, RecursionError) as exc:
        raise _refused("the file is not a Godwit licence file (not JSON): pick the licence file your vendor "
                       "sent.") from exc
    if not isinstance(envelope, dict) or envelope.get("format") != LICENCE_FORMAT:
        raise _refused(f'the file is not a Godwit licence file (no "format": "{LICENCE_FORMAT}"): pick the '
                       "licence file your vendor sent.")
    version = envelope.get("version")
    if version != LICENCE_VERSION or isinstance(version, bool):
        raise _refused(f"the licence file is of version {json.dumps(version)[:20]}; this appliance reads version "
                       f"{LICENCE_VERSION}: update the appliance, or ask your vendor for a version-"
                       f"{LICENCE_VERSION} file.")
    payload = _b64(envelope.get("payload"), "payload")
    signature = _b64(envelope.get("signature"), "signature")
    try:
        public_key.verify(signature, payload)
    except InvalidSignature as exc:
        raise _refused("the file is not signed by the Godwit licence key (it was altered, or does not come from "
                       "the vendor): ask your vendor for a new licence file.") from exc
    try:
        fields = json.loads(payload)
    except (ValueError, RecursionError) as exc:
        raise _refused("the licence's payload is not JSON: ask your vendor for a new licence file.") from exc
    if not isinstance(fields, dict):
        raise _refused("the licence's payload is not a JSON object: ask your vendor for a new licence file.")
    return Licence(**{name: _payload_field(fields, name) for name in _PAYLOAD_FIELDS})


def _payload_field(fields: dict[str, Any], name: str) -> Any:
    """One field of a signed payload, checked (the vendor's tool writes them right; a bug there is still
    refused, not half-read)."""
    value: Any = fields.get(name)
    expected = {
        "licence_id": (_text(value, 100), "text of 1 to 100 characters"),
        "appliance_id": (_text(value, 100), "text of 1 to 100 characters"),
        "licensee": (_text(value, 200), "text of 1 to 200 printable characters"),
        "max_servers": (value is None or (isinstance(value, int) and not isinstance(value, bool) and value >= 1),
                        "a whole number of at least 1, or null"),
        "issued_at": (_number(value), "a time in seconds since 1970"),
        "expires_at": (value is None or _number(value), "a time in seconds since 1970, or null"),
    }
    ok, what = expected[name]
    if name not in fields or not ok:
        raise _refused(f"the licence's field {name!r} must be {what}: ask your vendor for a new licence file.")
    if name in ("issued_at", "expires_at") and value is not None:
        return float(value)
    return value.strip() if name == "licensee" else value


# --- the evaluation record ---------------------------------------------------------------------------
def _record_message(appliance_id: str, started_at: float) -> bytes:
    return _RECORD_CONTEXT + f"{appliance_id}\n{started_at!r}".encode()


_RESTORE_CONTEXT = b"godwit-restored-appliance/1\n"
#: The secret-store entries and state-database keys of one appliance's evaluation: an appliance restored from
#: another's backup is a fresh appliance with an evaluation of its own, so they do not move with a backup.
NOT_MOVED_SECRETS: tuple[str, ...] = (SECRET_EVALUATION,)
NOT_MOVED_META: tuple[str, ...] = (META_EVALUATION, META_WARNED, META_ROLLBACK)
#: The activated licence file (bound to the old appliance's id): it does not move either.
LICENCE_FILE = "licence.json"


def _restore_message(appliance_id: str, restored_from: str, at: float) -> bytes:
    return _RESTORE_CONTEXT + f"{appliance_id}\n{restored_from}\n{at!r}".encode()


def restore_record(pki: AppliancePKI, *, appliance_id: str, restored_from: str, at: float) -> dict[str, Any]:
    """The record that makes a restored appliance (new id, the old CA) a fresh one: its evaluation begins at
    ``at``, not when its CA was made. Signed with the CA key; without a valid one the CA's date counts."""
    signature = pki.sign(_restore_message(appliance_id, restored_from, at))
    return {"from": restored_from, "at": at, "signature": base64.b64encode(signature).decode()}


def _parse(text: str | None) -> object:
    """A record kept as JSON text: None when absent, a marker that fails verification when not JSON."""
    try:
        return None if text is None else json.loads(text)
    except (ValueError, RecursionError):
        return {"damaged": True}


def _finite(text: str | None) -> float | None:
    try:
        value = float(text) if text is not None else None
    except ValueError:
        return None
    return value if value is not None and math.isfinite(value) else None


Place = Literal["identity", "secret", "meta"]
#: Where the evaluation record is kept, as an admin reads it.
_PLACES: dict[Place, str] = {"identity": "appliance.json", "secret": "the secret store", "meta": "the state database"}


class LicenceKeeper:
    """The licence of one appliance: its evaluation start, an activated licence, warnings and the clock."""

    def __init__(self, *, data_dir: DataDir, identity: ApplianceIdentity, store: SecretStore, state: StateDB,
                 hub: EventHub, pki: AppliancePKI, public_key_pem: bytes | None = None,
                 clock: Callable[[], float] = time.time) -> None:
        """Establish the evaluation start (first start: now), write missing or invalid copies of its record
        again, and load the activated licence (``licence.json``; one that does not verify is ignored, with
        an event). Raises only if the state database cannot be read."""
        self._data_dir = data_dir
        self._identity = identity
        self._store = store
        self._state = state
        self._hub = hub
        self._pki = pki
        self._clock = clock
        self.licence_path = data_dir.root / "licence.json"
        self._public_key, self._key_problem = self._public_key_from(public_key_pem)
        now = clock()
        self.evaluation_started_at, self._record, self._unsaved = self._establish_start()
        #: The latest time seen, and its value where it was last written.
        self._high_water_saved = {"meta": _finite(state.get_meta(META_HIGH_WATER)),
                                  "secret": self._secret_float(SECRET_HIGH_WATER)}
        self._high_water = max([self.evaluation_started_at, self._newest_file_time(),
                                *(v for v in self._high_water_saved.values() if v is not None)])
        self._rollback_reported = _finite(state.get_meta(META_ROLLBACK))
        self._warned, self._warned_saved = self._load_warned(), True
        self._licence: Licence | None = None
        self._activated_at: float | None = None
        self._load_activated()
        self._save_records()
        self._shown = self._shown_key(self._status_at(now))

    def __repr__(self) -> str:
        st = self.status()
        return (f"<LicenceKeeper {st.state} days_left={st.days_left} threshold={st.threshold} alarm={st.alarm} "
                f"started={_date(self.evaluation_started_at)} high_water={_date(self._high_water)} "
                f"rolled_back={st.clock_rolled_back} warned={self._warned} unsaved={sorted(self._unsaved)}>")

    # --- set-up ------------------------------------------------------------------------------------
    def _public_key_from(self, pem: bytes | None) -> tuple[Ed25519PublicKey | None, str]:
        path = Path(os.environ.get(PUBLIC_KEY_ENV) or DEFAULT_PUBLIC_KEY)
        try:
            return load_public_key(pem if pem is not None else path.read_bytes()), ""
        except (OSError, ValueError, TypeError) as exc:
            where = "the licence key given" if pem is not None else str(path)
            log.error("licence.public-key-unusable path=%s: %s", where, exc)
            return None, (f"this appliance cannot check licence files: its copy of the vendor's licence key "
                          f"({where}) is missing or damaged. Reinstall the appliance.")

    def _secret(self, name: str) -> str | None:
        """A secret, or None when it is missing or the store cannot be read now (logged)."""
        try:
            return self._store.get(name)
        except EngineError as exc:
            log.warning("licence.secret-unreadable name=%s: %s", name, exc)
            return None

    def _secret_float(self, name: str) -> float | None:
        return _finite(self._secret(name))

    def _verify(self, raw: object) -> float | None:
        """The start a stored evaluation record vouches for; None unless its CA signature verifies."""
        if not isinstance(raw, dict):
            return None
        started, signature = raw.get("started_at"), raw.get("signature")
        if not _number(started) or not isinstance(signature, str):
            return None
        try:
            sig = base64.b64decode(signature, validate=True)
            ok = self._pki.verify(_record_message(self._identity.appliance_id, float(started)), sig)
        except (binascii.Error, OSError, ValueError):
            return None
        return float(started) if ok else None

    def _restored_at(self) -> float | None:
        """When this appliance was made from another's backup, if its signed restore record verifies."""
        raw = self._identity.restored
        if not isinstance(raw, dict) or not _number(raw.get("at")) or not isinstance(raw.get("from"), str) \
                or not isinstance(raw.get("signature"), str):
            return None
        try:
            sig = base64.b64decode(raw["signature"], validate=True)
            ok = self._pki.verify(_restore_message(self._identity.appliance_id, raw["from"], float(raw["at"])), sig)
        except (binascii.Error, OSError, ValueError):
            return None
        return float(raw["at"]) if ok else None

    def _ca_created_at(self) -> float | None:
        """When the CA was made, if its certificate is the one of the CA key (a replaced certificate is no
        evidence), and unless this appliance was restored from another's backup: it kept that one's CA but is
        a fresh appliance (a record that does not verify leaves the CA's date as evidence)."""
        if self._restored_at() is not None:
            return None
        try:
            cert, key = self._pki.ca_cert(), self._pki.ca_key()
        except (OSError, ValueError, TypeError) as exc:
            log.warning("licence.ca-unreadable: %s", exc)
            return None
        if cert.public_key() != key.public_key():
            log.warning("licence.ca-mismatch: the CA certificate is not the CA key's; it is no evidence")
            return None
        return cert.not_valid_before_utc.timestamp() + BACKDATE.total_seconds()

    def _establish_start(self) -> tuple[float, dict[str, Any] | None, set[Place]]:
        """The evaluation start, its signed record and the places that need it written again."""
        found: dict[Place, object] = {"identity": self._identity.evaluation,
                                      "meta": _parse(self._state.get_meta(META_EVALUATION))}
        try:
            found["secret"] = _parse(self._store.get(SECRET_EVALUATION))
        except EngineError as exc:  # a locked keyring: that copy is neither evidence nor written again now
            log.warning("licence.secret-unreadable name=%s: %s", SECRET_EVALUATION, exc)
        valid = {place: self._verify(raw) for place, raw in found.items()}
        evidence = [v for v in valid.values() if v is not None]
        evidence += [v for v in (self._ca_created_at(), self._identity.created_at) if v is not None and _number(v)]
        started = min(evidence) if evidence else self._clock()
        missing = [p for p, raw in found.items() if raw is None]
        invalid = [p for p, raw in found.items() if raw is not None and valid[p] is None]
        later = [p for p, v in valid.items() if v is not None and v != started]
        if later:
            log.info("licence.record-later places=%s: rewritten with the earlier start %s", later, started)
        unsaved: set[Place] = set(missing) | set(invalid) | set(later)
        record = self._sign(started) if unsaved else None
        if invalid:
            also = f" and was missing from {' and '.join(_PLACES[p] for p in missing)}" if missing else ""
            self._record_quietly("warning", "licence-tampered", (
                f"The record of when this appliance's evaluation began did not verify in "
                f"{' and '.join(_PLACES[p] for p in invalid)} (it was altered){also}; it was written again from the "
                f"earliest valid evidence: the evaluation began on {_date(started)}."))
        elif missing and len(missing) < len(found):
            self._record_quietly("info", "licence-record-restored", (
                f"The record of when this appliance's evaluation began was missing from "
                f"{' and '.join(_PLACES[p] for p in missing)} and was written again: the evaluation began on "
                f"{_date(started)}."))
        elif missing:
            log.info("licence.evaluation-recorded started=%s", started)
        return started, record, unsaved if record is not None else set()

    def _sign(self, started: float) -> dict[str, Any] | None:
        try:
            signature = self._pki.sign(_record_message(self._identity.appliance_id, started))
        except (OSError, ValueError, TypeError) as exc:
            log.error("licence.record-unsigned: the CA key cannot sign the evaluation record: %s", exc)
            return None
        return {"started_at": started, "signature": base64.b64encode(signature).decode()}

    def _save_records(self) -> None:
        """Write the evaluation record where it is missing or wrong; what fails is tried again next tick."""
        if self._record is None:
            return
        text = json.dumps(self._record)
        for place in sorted(self._unsaved):
            try:
                if place == "identity":
                    self._identity = self._identity.with_evaluation(self._data_dir, self._record)
                elif place == "secret":
                    self._store.set(SECRET_EVALUATION, text)
                else:
                    self._state.set_meta(META_EVALUATION, text)
            except (EngineError, OSError, sqlite3.Error) as exc:
                log.warning("licence.record-not-saved place=%s: %s", place, exc)
                continue
            self._unsaved.discard(place)

    def _newest_file_time(self) -> float:
        """The newest modification time of the data directory's files and logs: the kernel stamped them with
        the clock of the time, so the high-water mark is never below them, even with both copies deleted."""
        newest = 0.0
        for folder in (self._data_dir.root, self._data_dir.logs):
            try:
                entries = list(folder.iterdir())[:1000]
            except OSError:
                continue
            for entry in entries:
                try:
                    newest = max(newest, entry.stat().st_mtime)
                except OSError:
                    continue
        return newest

    def _load_warned(self) -> tuple[str, int] | None:
        try:
            raw = json.loads(self._state.get_meta(META_WARNED) or "null")
            return (str(raw["period"]), int(raw["threshold"])) if raw else None
        except (ValueError, KeyError, TypeError):
            return None

    def _load_activated(self) -> None:
        try:
            with open(self.licence_path, "rb") as f:
                data = f.read(2 * MAX_LICENCE_FILE)
        except FileNotFoundError:
            return
        except OSError as exc:
            self._record_quietly("warning", "licence-invalid", (
                f"The activated licence in {self.licence_path} cannot be read ({exc.strerror or exc}); the "
                f"appliance runs on its evaluation licence. Activate the licence again with {HOW_TO_ACTIVATE}."))
            return
        try:
            try:
                saved = json.loads(data)
                activated_at, text = float(saved["activated_at"]), saved["file"]
                if not isinstance(text, str):
                    raise TypeError("no licence file in it")
            except (ValueError, KeyError, TypeError, RecursionError) as exc:
                raise _refused(f"the file is damaged ({exc})") from exc
            licence = self._check(text)
        except LicenceInvalid as exc:
            reason = exc.message.removeprefix("Licence not activated: ").rstrip(".")
            self._record_quietly("warning", "licence-invalid", (
                f"The activated licence in {self.licence_path} is ignored ({reason}); the appliance runs on its "
                f"evaluation licence. Activate the licence again with {HOW_TO_ACTIVATE}."))
            return
        self._licence, self._activated_at = licence, activated_at

    def _check(self, text: str) -> Licence:
        """A licence file that verifies and is for this appliance (current or not)."""
        if self._public_key is None:
            raise _refused(self._key_problem)
        licence = decode_licence(text, self._public_key)
        own = self._identity.appliance_id
        if licence.appliance_id != own:
            raise _refused(f"this licence is for appliance {licence.appliance_id}, but this is appliance {own}: "
                           f"ask your vendor for a licence for {own} (`godwit setup show` shows it).")
        return licence

    # --- what the admin sees ---------------------------------------------------------------------------
    def _reckoned(self, now: float) -> float:
        """The time the licence is reckoned from: never earlier than the latest time seen."""
        return max(now, self._high_water)

    def _period(self) -> str:
        """What the warnings are about: the evaluation, or one activated licence (each gets its own)."""
        return "evaluation" if self._licence is None else f"licence:{self._licence.licence_id}"

    def _whose(self) -> str:
        return "The evaluation licence" if self._licence is None else f"The licence of {self._licence.licensee}"

    def status(self) -> LicenceStatus:
        """The licence now (cheap; writes nothing: the time it saw raises the high-water mark in memory, so a
        day once shown is never given back)."""
        now = self._clock()
        self._high_water = max(self._high_water, now)
        return self._status_at(now)

    def _status_at(self, now: float) -> LicenceStatus:
        t = self._reckoned(now)
        lic = self._licence
        end = self.evaluation_started_at + EVALUATION_DAYS * DAY if lic is None else lic.expires_at
        days = None if end is None else (0 if t >= end else math.ceil((end - t) / DAY))
        threshold = None if days is None else (0 if days == 0 else min(
            (w for w in WARN_AT_DAYS if days <= w), default=None))
        alarm: LicenceAlarm = "none" if threshold is None else "critical" if threshold <= 7 else "warning"
        message = ""
        # What the banner says (its buttons are the how); events add the commands (ADVICE).
        if end is not None and days == 0:
            message = (f"{self._whose()} ended on {_date(end)}. Servers that replicate go on, but no new server can "
                       "be registered or enabled: activate a licence, or move to a fresh appliance.")
        elif end is not None and days is not None and threshold is not None:
            message = (f"{self._whose()} ends in {_days(days)}, on {_date(end)}. Activate a licence, or move to a "
                       "fresh appliance: once it ends, servers that replicate go on, but no new server can be "
                       "registered or enabled.")
        return LicenceStatus(
            state="expired" if days == 0 else "evaluation" if lic is None else "active",
            days_left=days, expires_at=end, activated_at=self._activated_at,
            licensee=None if lic is None else lic.licensee, max_servers=None if lic is None else lic.max_servers,
            evaluation_started_at=self.evaluation_started_at, alarm=alarm, message=message, threshold=threshold,
            clock_rolled_back=now < self._high_water - ROLLBACK_TOLERANCE)

    @staticmethod
    def _shown_key(st: LicenceStatus) -> tuple[object, ...]:
        return st.state, st.days_left, st.alarm, st.threshold, st.clock_rolled_back, st.licensee, st.max_servers

    def check_new_server(self, what: Literal["register", "enable"], *, replicating: int) -> None:
        """Raise :class:`LicenceRequired` if the licence does not allow a new server now: none once it has
        ended; for ``enable`` also none beyond an active licence's number of servers. ``replicating``: the
        servers that replicate now, not counting the one asked about."""
        st = self.status()
        if st.state == "expired":
            assert st.expires_at is not None
            doing = "registered" if what == "register" else "enabled"
            raise LicenceRequired(f"{self._whose()} ended on {_date(st.expires_at)}, so no new "
                                  f"server can be {doing}: activate a licence with {HOW_TO_ACTIVATE}.")
        if what == "enable" and st.max_servers is not None and replicating >= st.max_servers:
            raise LicenceRequired(f"{self._whose()} allows {st.max_servers} replicating servers and {replicating} "
                                  "replicate now: disable one, or activate a licence for more servers with "
                                  f"{HOW_TO_ACTIVATE}.")

    def activate(self, text: str, *, replicating: int) -> LicenceStatus:
        """Check a licence file and make it the appliance's licence; ``replicating``: servers replicating now.

        Raises :class:`LicenceInvalid` with the reason, and nothing changed. On success ``licence.json`` is
        written (atomically, durable when this returns) and event ``licence-activated`` recorded."""
        licence = self._check(text)
        now = self._clock()
        if licence.expires_at is not None and licence.expires_at <= self._reckoned(now):
            raise _refused(f"this licence ended on {_date(licence.expires_at)}: ask your vendor for a current one.")
        if licence.max_servers is not None and licence.max_servers < replicating:
            raise _refused(f"this licence allows {licence.max_servers} servers but {replicating} replicate now: "
                           "disable one or ask for a larger licence.")
        activated_at = self._reckoned(now)
        try:
            write_atomically(self.licence_path, json.dumps({"activated_at": activated_at, "file": text}).encode())
        except OSError as exc:
            cls = DiskFull if exc.errno == errno.ENOSPC else EngineError
            raise cls(f"The licence could not be saved in {self.licence_path} ({exc.strerror or exc}); nothing was "
                      "changed. Free space there and activate it again.") from exc
        self._licence, self._activated_at = licence, activated_at
        servers = "any number of servers" if licence.max_servers is None else f"up to {licence.max_servers} servers"
        until = "without end" if licence.expires_at is None else f"until {_date(licence.expires_at)}"
        self._record_quietly("info", "licence-activated", f"Licence {licence.licence_id} of {licence.licensee} "
                             f"activated: {servers}, {until}.")
        st = self.status()
        self._shown = self._shown_key(st)
        return st

    # --- the engine's periodic check -------------------------------------------------------------------
    def tick(self) -> bool:
        """One check (the engine calls it every few seconds): advance the high-water mark, report a rollback
        and each warning threshold once, retry what could not be written. True when the status changed in
        a way a console must show. Never raises for a full disk: what failed is tried again next tick."""
        now = self._clock()
        self._observe(now)
        self._save_records()
        st = self._status_at(now)
        self._warn(st)
        shown = self._shown_key(st)
        changed, self._shown = shown != self._shown, shown
        return changed

    def _observe(self, now: float) -> None:
        if now < self._high_water - ROLLBACK_TOLERANCE:
            if self._rollback_reported != self._high_water and self._record_quietly("warning", "clock-rolled-back", (
                    f"The appliance's clock says {_date(now)}, {_span(self._high_water - now)} behind the latest time "
                    f"it has seen ({_date(self._high_water)}). The licence is reckoned from that latest time, so "
                    "setting the clock back does not extend it: set the clock right (NTP).")):
                self._rollback_reported = self._high_water
                self._set_meta(META_ROLLBACK, repr(self._high_water))
        elif now > self._high_water:
            self._high_water = now
        hw = self._high_water
        saved = self._high_water_saved
        if (saved["meta"] is None or hw > saved["meta"]) and self._set_meta(META_HIGH_WATER, repr(hw)):
            saved["meta"] = hw
        if saved["secret"] is None or hw >= saved["secret"] + HIGH_WATER_SECRET_EVERY:
            try:
                self._store.set(SECRET_HIGH_WATER, repr(hw))
                saved["secret"] = hw
            except (EngineError, OSError) as exc:
                log.warning("licence.high-water-not-saved place=secret: %s", exc)

    def _warn(self, st: LicenceStatus) -> None:
        period = self._period()
        if st.threshold is not None and not (self._warned and self._warned[0] == period
                                             and self._warned[1] <= st.threshold):
            if st.threshold == 0:
                recorded = self._record_quietly("error", "licence-expired", st.message + ADVICE)
            else:
                recorded = self._record_quietly("error" if st.threshold <= 7 else "warning", "licence-expiring",
                                                st.message + ADVICE)
            if recorded:
                self._warned, self._warned_saved = (period, st.threshold), False
        if not self._warned_saved and self._warned is not None:
            self._warned_saved = self._set_meta(META_WARNED, json.dumps(
                {"period": self._warned[0], "threshold": self._warned[1]}))

    def _set_meta(self, key: str, value: str) -> bool:
        try:
            self._state.set_meta(key, value)
        except (EngineError, sqlite3.Error) as exc:
            log.warning("licence.meta-not-saved key=%s: %s", key, exc)
            return False
        return True

    def _record_quietly(self, severity: Severity, code: str, message: str) -> bool:
        """Record an event; on a full disk log it instead (tried again by the caller). True if recorded."""
        try:
            self._hub.record(severity, code, message)
        except (EngineError, sqlite3.Error) as exc:
            log.warning("licence.event-not-recorded code=%s: %s", code, exc)
            return False
        return True


def _span(seconds: float) -> str:
    if seconds >= 2 * DAY:
        return f"{seconds / DAY:.0f} days"
    if seconds >= 5400:
        return f"{seconds / 3600:.1f} h"
    return f"{seconds / 60:.0f} min"
