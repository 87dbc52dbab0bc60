"""Which target storage this appliance replicates to, and which one each copy of a server is on.

The admin chooses the target per appliance (``godwit target set``): ``local`` (the embedded default) or an Azure
Blob Storage container. The choice is kept in ``target.json`` in the data directory, without its credential: that
goes to the secret store (:data:`credential_name`). A copy of a server (one enabling, see
:func:`~engine.storage.replica`) stays on the target it began on until replication is disabled: its first seed disk
*pins* it (``target/<server id>/<epoch>/azure.json`` names the container; a copy with a local directory and no pin
is local). So changing the target moves no data: servers already replicating keep theirs, and only servers enabled
(again) afterwards go to the new one.

:class:`RoutedStorage` is the :class:`~engine.storage.Storage` every agent opens: one cache (always local), each
copy's seed disks where its pin says.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Literal

from engine.config import DataDir
from engine.errors import BadInput, SecretStoreError, TargetUnwritable
from engine.files import write_atomically
from engine.storage import PointImage, Storage, TargetDisk
from engine.storage.local import LocalCache, LocalStorage

if TYPE_CHECKING:
    from engine.secrets import SecretStore
    from engine.storage.azure import AzureLocation, AzureStorage

TargetKind = Literal["local", "azure"]
SETTING_FILE = "target.json"
PIN_FILE = "azure.json"


@dataclass(frozen=True)
class TargetSetting:
    """The appliance's target as the admin set it (no credential here)."""

    kind: TargetKind = "local"
    account_url: str | None = None
    container: str | None = None

    def describe(self) -> str:
        if self.kind == "local":
            return "this appliance's own disk (local)"
        return f"container {self.container} of {self.account_url}"


def credential_name(account_url: str, container: str) -> str:
    """The secret store's name for the credential of one container (a copy pinned to an older container keeps
    reaching it after the target changes)."""
    return f"azure-credential {account_url.rstrip('/')} {container}"


def read_setting(data_dir: DataDir) -> TargetSetting:
    """The target as last set (``local`` when never set); BadInput if the file is not one."""
    path = data_dir.root / SETTING_FILE
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        return TargetSetting()
    except (OSError, ValueError) as exc:
        raise BadInput(f"{path} cannot be read ({exc}); set the target again with `godwit target set`.") from exc
    kind = data.get("kind") if isinstance(data, dict) else None
    if kind == "local":
        return TargetSetting()
    if kind == "azure" and isinstance(data.get("account_url"), str) and isinstance(data.get("container"), str):
        return TargetSetting("azure", data["account_url"], data["container"])
    raise BadInput(f"{path} does not name a target; set the target again with `godwit target set`.")


def write_setting(data_dir: DataDir, setting: TargetSetting) -> None:
    body = {"kind": setting.kind} if setting.kind == "local" else \
        {"kind": "azure", "account_url": setting.account_url, "container": setting.container}
    write_atomically(data_dir.root / SETTING_FILE, json.dumps(body).encode())


class RoutedStorage:
    """The local cache, and each copy's seed disks on the target it is pinned to. ``secrets`` is needed once any
    copy is on Azure (its credential, and the data keys that encrypt what goes there)."""

    def __init__(self, data_dir: DataDir, secrets: SecretStore | None = None) -> None:
        self.data_dir = data_dir
        self.local = LocalStorage(data_dir.root)
        self._secrets = secrets
        self._azure: dict[tuple[str, str], AzureStorage] = {}

    def __repr__(self) -> str:
        return f"<RoutedStorage {self.data_dir.root} target={self.setting().kind}>"

    @property
    def kind(self) -> str:
        """The target new copies go to."""
        return self.setting().kind

    @property
    def cache(self) -> LocalCache:
        return self.local.cache

    def setting(self) -> TargetSetting:
        return read_setting(self.data_dir)

    # --- which backend -------------------------------------------------------------------------------------
    def azure(self, account_url: str, container: str, credential: str | None = None) -> AzureStorage:
        """The Azure backend for one container (its credential from the secret store unless given)."""
        from engine.keys import DataKeys, master_key
        from engine.storage.azure import AzureLocation, AzureStorage

        if credential is None and (account_url, container) in self._azure:
            return self._azure[(account_url, container)]
        if self._secrets is None:
            raise TargetUnwritable("This process cannot open the Azure target: it has no secret store.")
        secrets = self._secrets
        if credential is None:
            credential = secrets.get(credential_name(account_url, container))
            if credential is None:
                raise SecretStoreError(f"The credential of container {container} of {account_url} is missing from "
                                       f"the secret store ({secrets.describe()}); set the target again with "
                                       "`godwit target set azure ...`.")
        keys: list[DataKeys] = []

        def data_key(server_id: str) -> bytes:
            if not keys:  # unwrapped only when a seed disk is opened
                keys.append(DataKeys(self.data_dir.keys, master_key(secrets)))
            return keys[0].get(server_id)

        storage = AzureStorage(self.local, AzureLocation(account_url, container, credential), data_key)
        if (account_url, container) not in self._azure:
            self._azure[(account_url, container)] = storage
        return storage

    def _pin(self, replica: str) -> Path:
        return self.local.target_root / replica / PIN_FILE

    def backend(self, replica: str) -> Storage:
        """Where a copy's seed disks are: its pin, else local if it has local ones, else the current target (a new
        copy, pinned there now)."""
        pin = self._pin(replica)
        try:
            where = json.loads(pin.read_text())
            return self.azure(where["account_url"], where["container"])
        except FileNotFoundError:
            pass
        if pin.parent.is_dir():
            return self.local
        setting = self.setting()
        if setting.kind == "local" or setting.account_url is None or setting.container is None:
            return self.local
        storage = self.azure(setting.account_url, setting.container)
        pin.parent.mkdir(parents=True, exist_ok=True)
        write_atomically(pin, json.dumps({"account_url": setting.account_url,
                                          "container": setting.container}).encode())
        return storage

    def placed(self, replica: str) -> TargetSetting | None:
        """Where a copy's seed disks are, without pinning it (None: it has none yet)."""
        pin = self._pin(replica)
        try:
            where = json.loads(pin.read_text())
            return TargetSetting("azure", where["account_url"], where["container"])
        except (OSError, ValueError, KeyError):
            pass
        return TargetSetting() if pin.parent.is_dir() else None

    def _pinned(self, server_id: str) -> Iterator[tuple[str, AzureLocation]]:
        """The copies of a server on Azure: ``(epoch, location)``."""
        base = self.local.target_root / server_id
        if not base.is_dir():
            return
        for pin in base.glob(f"*/{PIN_FILE}"):
            with contextlib.suppress(OSError, ValueError, KeyError):
                where = json.loads(pin.read_text())
                yield pin.parent.name, self.azure(where["account_url"], where["container"]).location

    # --- the Storage interface -----------------------------------------------------------------------------
    def target_disk(self, replica: str, disk: int, size: int) -> TargetDisk:
        return self.backend(replica).target_disk(replica, disk, size)

    def open_point(self, replica: str, disk: int, size: int, point_id: int, *, chunk: int,
                   name: str) -> contextlib.AbstractContextManager[PointImage]:
        return self.backend(replica).open_point(replica, disk, size, point_id, chunk=chunk, name=name)

    def delete_server(self, server_id: str) -> None:
        """Every copy, wherever it is: the blobs first (their pins name them), then the local directories."""
        for location in {loc for _, loc in self._pinned(server_id)}:
            self.azure(location.account_url, location.container).delete_server(server_id)
        self.local.delete_server(server_id)

    def delete_older_copies(self, server_id: str, epoch: int) -> None:
        for location in {loc for e, loc in self._pinned(server_id) if e.isdigit() and int(e) < epoch}:
            self.azure(location.account_url, location.container).delete_older_copies(server_id, epoch)
        self.local.delete_older_copies(server_id, epoch)

    def target_location(self) -> str:
        setting = self.setting()
        return self.local.target_location() if setting.kind == "local" else setting.describe()

    def target_room(self) -> str:
        setting = self.setting()
        return self.local.target_room() if setting.kind == "local" else f"the {setting.describe()}"

    def probe_target(self) -> str:
        setting = self.setting()
        if setting.kind == "local" or setting.account_url is None or setting.container is None:
            return self.local.probe_target()
        return self.azure(setting.account_url, setting.container).probe_target()
