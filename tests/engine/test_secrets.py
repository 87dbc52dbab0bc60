from __future__ import annotations

import os
import stat
from pathlib import Path

import keyring
import pytest
from keyring.backends import fail

from engine import secrets
from engine.errors import SecretStoreError
from tests.engine.memory_keyring import MemoryKeyring


@pytest.fixture
def memory_keyring() -> MemoryKeyring:
    before = keyring.get_keyring()
    backend = MemoryKeyring()
    keyring.set_keyring(backend)
    yield backend
    keyring.set_keyring(before)


def test_keyring_store_keeps_secrets_out_of_files(memory_keyring: MemoryKeyring, tmp_path: Path) -> None:
    """With an OS keyring, secrets live in the keyring under the appliance's name and no file is written."""
    store = secrets.SecretStore("keyring", appliance_id="a1", file_path=tmp_path / "secrets.json")
    store.set("passphrase", "ABCD-EFGH")
    assert store.get("passphrase") == "ABCD-EFGH"
    assert memory_keyring.values == {("godwit/a1", "passphrase"): "ABCD-EFGH"}
    assert not (tmp_path / "secrets.json").exists()
    assert "OS keyring" in store.describe()


def test_appliances_do_not_share_secrets(memory_keyring: MemoryKeyring, tmp_path: Path) -> None:
    """Two appliances on one machine do not see each other's secrets in the keyring."""
    a = secrets.SecretStore("keyring", appliance_id="a", file_path=tmp_path / "a.json")
    b = secrets.SecretStore("keyring", appliance_id="b", file_path=tmp_path / "b.json")
    a.set("k", "1")
    assert b.get("k") is None


def test_file_store_is_private_and_says_so(tmp_path: Path) -> None:
    """Without a keyring, secrets go to a 0600 file that says so, and a damaged file is a clear error."""
    store = secrets.SecretStore("file", appliance_id="a1", file_path=tmp_path / "secrets.json")
    assert store.get("x") is None
    store.set("x", "1")
    store.set("y", "2")
    assert (store.get("x"), store.get("y")) == ("1", "2")
    assert stat.S_IMODE(os.stat(tmp_path / "secrets.json").st_mode) == 0o600
    assert store.describe() == "file in the data directory, protected by file permissions only"
    (tmp_path / "secrets.json").write_text("{broken")
    with pytest.raises(SecretStoreError):
        store.get("x")


def test_choice_is_explicit(monkeypatch: pytest.MonkeyPatch, memory_keyring: MemoryKeyring) -> None:
    """The store is the keyring when one works, else the file; GODWIT_SECRET_STORE overrides, unknown is an error."""
    monkeypatch.delenv("GODWIT_SECRET_STORE", raising=False)
    assert secrets.choose_store() == "keyring"
    keyring.set_keyring(fail.Keyring())
    assert secrets.keyring_available() is None
    assert secrets.choose_store() == "file"  # recorded and shown as such by the engine, never silent
    monkeypatch.setenv("GODWIT_SECRET_STORE", "keyring")
    assert secrets.choose_store() == "keyring"
    monkeypatch.setenv("GODWIT_SECRET_STORE", "vault")
    with pytest.raises(SecretStoreError):
        secrets.choose_store()
