"""The one place that stores secrets: the OS keyring, or a 0600 file when there is none.

Which store an appliance uses is chosen once, at its first start, and written to
``appliance.json``: an explicit ``GODWIT_SECRET_STORE=keyring|file``, else the OS keyring if one
is available, else the file store. Falling back to the file is never silent: the engine records a
warning event and the console and ``godwit setup show`` say "protected by file permissions only".
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Literal

from engine.errors import SecretStoreError
from engine.files import write_atomically

log = logging.getLogger(__name__)

StoreKind = Literal["keyring", "file"]
FILE_STORE_NOTE = "file in the data directory, protected by file permissions only"


def keyring_available() -> str | None:
    """Name of the usable OS keyring backend, or ``None`` when there is none."""
    try:
        import keyring
        from keyring.backends import chainer, fail
    except ImportError:  # pragma: no cover - keyring is a pinned dependency
        return None
    backend = keyring.get_keyring()
    if isinstance(backend, fail.Keyring):
        return None
    if isinstance(backend, chainer.ChainerBackend) and not backend.backends:
        return None
    return f"{type(backend).__module__}.{type(backend).__name__}"


def choose_store() -> StoreKind:
    """The store for a new appliance (see module docstring)."""
    explicit = os.environ.get("GODWIT_SECRET_STORE", "").strip().lower()
    if explicit in ("keyring", "file"):
        return explicit  # type: ignore[return-value]
    if explicit:
        raise SecretStoreError(f"GODWIT_SECRET_STORE={explicit!r} is not valid: use 'keyring' or 'file'.")
    return "keyring" if keyring_available() else "file"


class SecretStore:
    """Named secrets of one appliance."""

    def __init__(self, kind: StoreKind, *, appliance_id: str, file_path: Path) -> None:
        self.kind = kind
        self._service = f"godwit/{appliance_id}"
        self._file = file_path

    def __repr__(self) -> str:
        return f"<SecretStore {self.describe()}>"

    def describe(self) -> str:
        if self.kind == "file":
            return FILE_STORE_NOTE
        return f"OS keyring ({keyring_available() or 'unavailable'})"

    def get(self, name: str) -> str | None:
        if self.kind == "file":
            return self._read_file().get(name)
        import keyring
        import keyring.errors

        try:
            value = keyring.get_password(self._service, name)
        except keyring.errors.KeyringError as exc:
            raise SecretStoreError(f"The OS keyring could not be read ({exc}). Unlock it and start again.") from exc
        return value if isinstance(value, str) else None

    def set(self, name: str, value: str) -> None:
        if self.kind == "file":
            data = self._read_file()
            data[name] = value
            self._write_file(data)
            return
        import keyring
        import keyring.errors

        try:
            keyring.set_password(self._service, name, value)
        except keyring.errors.KeyringError as exc:
            raise SecretStoreError(f"The OS keyring refused to store a secret ({exc}). Unlock it and retry.") from exc

    def _read_file(self) -> dict[str, str]:
        try:
            raw = self._file.read_text()
        except FileNotFoundError:
            return {}
        try:
            data = json.loads(raw)
        except ValueError as exc:
            raise SecretStoreError(f"{self._file} is damaged: restore it from a backup.") from exc
        if not isinstance(data, dict):
            raise SecretStoreError(f"{self._file} is damaged: restore it from a backup.")
        return {str(k): str(v) for k, v in data.items()}

    def _write_file(self, data: dict[str, str]) -> None:
        write_atomically(self._file, json.dumps(data, indent=1).encode())
