"""Per-server data keys, wrapped by the appliance master key that lives in the secret store.

A data key encrypts a server's cache segments (AES-256-GCM). It is stored only wrapped, in
``keys/<server id>.key``; the master key never leaves the secret store and the engine's memory.
"""

from __future__ import annotations

import base64
import contextlib
import os
import secrets
from pathlib import Path

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from engine.errors import SecretStoreError
from engine.files import fsync_dir
from engine.secrets import SecretStore

MASTER_KEY = "master-key"


def master_key(store: SecretStore, *, create: bool = False) -> bytes:
    value = store.get(MASTER_KEY)
    if value is None:
        if not create:
            raise SecretStoreError(f"The appliance master key is missing from its secret store ({store.describe()}).")
        value = base64.b64encode(secrets.token_bytes(32)).decode()
        store.set(MASTER_KEY, value)
    return base64.b64decode(value)


class DataKeys:
    def __init__(self, directory: Path, master: bytes) -> None:
        self._dir = directory
        self._aead = AESGCM(master)
        self._cache: dict[str, bytes] = {}
        directory.mkdir(parents=True, exist_ok=True, mode=0o700)

    def __repr__(self) -> str:
        return f"<DataKeys {self._dir} loaded={len(self._cache)}>"

    def get(self, server_id: str, *, create: bool = False) -> bytes:
        if server_id in self._cache:
            return self._cache[server_id]
        path = self._dir / f"{server_id}.key"
        if create and not path.exists():
            key = secrets.token_bytes(32)
            nonce = secrets.token_bytes(12)
            wrapped = nonce + self._aead.encrypt(nonce, key, server_id.encode())
            tmp = path.with_name(path.name + f".{os.getpid()}.tmp")
            with open(tmp, "wb") as f:
                f.write(wrapped)
                f.flush()
                os.fsync(f.fileno())
            with contextlib.suppress(FileExistsError):
                os.link(tmp, path)  # the first writer wins; a racing one reads the winner's key
            tmp.unlink()
            fsync_dir(self._dir)  # the key must outlive a power cut, or acknowledged segments could not be read
        raw = path.read_bytes()
        try:
            key = self._aead.decrypt(raw[:12], raw[12:], server_id.encode())
        except InvalidTag as exc:
            raise SecretStoreError(f"The data key of server {server_id} does not unwrap with this appliance's "
                                   "master key.") from exc
        self._cache[server_id] = key
        return key
