"""Who this appliance is: its id, where its secrets live, and its PKI.

``appliance.json`` holds what is not secret (id, choice of secret store, creation time) and the
signed record of when the evaluation began (written and checked by :mod:`engine.licence`). The
engine supervisor creates it at the first start; agents only load it. Fields this version does not
know are kept when the file is rewritten.
"""

from __future__ import annotations

import base64
import json
import secrets
import time
import uuid
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from engine.config import DataDir
from engine.errors import ConfigError
from engine.files import write_atomically
from engine.pki import AppliancePKI
from engine.secrets import SecretStore, StoreKind, choose_store

PASSPHRASE_ALPHABET = "ABCDEFGHJKLMNPQRSTUVWXYZ23456789"  # no 0/O, 1/I: read aloud and typed by people
KEY_PASSWORD = "key-password"
PASSPHRASE = "registration-passphrase"


def new_passphrase() -> str:
    """Six groups of four characters (~120 bits), e.g. ``K7QX-M2PA-...``."""
    groups = ("".join(secrets.choice(PASSPHRASE_ALPHABET) for _ in range(4)) for _ in range(6))
    return "-".join(groups)


@dataclass(frozen=True)
class ApplianceIdentity:
    appliance_id: str
    secret_store: StoreKind
    created_at: float
    #: The signed evaluation record exactly as ``appliance.json`` holds it (any JSON value: engine/licence.py
    #: checks it); None in files written before licences existed.
    evaluation: object = field(default=None, compare=False)
    #: For an appliance made by restoring another's backup: ``{"from", "at", "signature"}`` signed with the CA
    #: key (engine/licence.py checks it); None otherwise.
    restored: object = field(default=None, compare=False)

    @staticmethod
    def path(data_dir: DataDir) -> str:
        return str(data_dir.root / "appliance.json")

    @classmethod
    def _read(cls, data_dir: DataDir) -> dict[str, Any]:
        with open(cls.path(data_dir)) as f:
            raw = json.load(f)
        if not isinstance(raw, dict):
            raise TypeError("appliance.json is not an object")
        return raw

    @classmethod
    def load(cls, data_dir: DataDir) -> ApplianceIdentity | None:
        try:
            raw = cls._read(data_dir)
            return cls(appliance_id=str(raw["appliance_id"]), secret_store=raw["secret_store"],
                       created_at=float(raw["created_at"]), evaluation=raw.get("evaluation"),
                       restored=raw.get("restored"))
        except FileNotFoundError:
            return None
        except (ValueError, KeyError, TypeError) as exc:
            raise ConfigError(f"{cls.path(data_dir)} is damaged: restore it from a backup.") from exc

    @classmethod
    def create(cls, data_dir: DataDir, *, created_at: float | None = None) -> ApplianceIdentity:
        ident = cls(appliance_id=str(uuid.uuid4()), secret_store=choose_store(),
                    created_at=time.time() if created_at is None else created_at)
        _write(data_dir, {"appliance_id": ident.appliance_id, "secret_store": ident.secret_store,
                          "created_at": ident.created_at})
        return ident

    def with_evaluation(self, data_dir: DataDir, record: dict[str, Any]) -> ApplianceIdentity:
        """Store ``record`` as the evaluation record in ``appliance.json`` (atomically; every other field on
        disk is kept as it is) and return the identity that holds it."""
        try:
            raw = self._read(data_dir)
        except (OSError, ValueError, TypeError):  # gone or unreadable: write what this identity knows
            raw = {}
        for key, value in (("appliance_id", self.appliance_id), ("secret_store", self.secret_store),
                           ("created_at", self.created_at)):
            raw.setdefault(key, value)
        raw["evaluation"] = record
        _write(data_dir, raw)
        return replace(self, evaluation=record)

    def secrets(self, data_dir: DataDir) -> SecretStore:
        return SecretStore(self.secret_store, appliance_id=self.appliance_id, file_path=data_dir.secrets_file)


def _write(data_dir: DataDir, raw: dict[str, Any]) -> None:
    write_atomically(Path(ApplianceIdentity.path(data_dir)), json.dumps(raw, indent=1).encode() + b"\n")


def open_pki(data_dir: DataDir, store: SecretStore) -> AppliancePKI:
    password = store.get(KEY_PASSWORD)
    if password is None:
        raise ConfigError(
            f"The key password of this appliance is missing from its secret store ({store.describe()}). "
            "Restore the keyring or secrets file from a backup."
        )
    return AppliancePKI(data_dir.pki, password.encode())


def create_secrets_and_pki(data_dir: DataDir, ident: ApplianceIdentity, store: SecretStore) -> AppliancePKI:
    """First start: a random key password and passphrase in the secret store, then the CA."""
    if store.get(KEY_PASSWORD) is None:
        store.set(KEY_PASSWORD, base64.urlsafe_b64encode(secrets.token_bytes(32)).decode())
    if store.get(PASSPHRASE) is None:
        store.set(PASSPHRASE, new_passphrase())
    from engine.keys import master_key

    master_key(store, create=True)
    pki = open_pki(data_dir, store)
    if not pki.exists():
        pki.create(ident.appliance_id)
    return pki
