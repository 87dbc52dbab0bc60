"""Engine configuration: where the data directory is and what lives in it."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import platformdirs

DEFAULT_MANAGEMENT_PORT = 443
DEFAULT_DATA_PORT = 9443
#: Seconds between two heartbeats of a mobility service; the appliance tells it in every answer.
HEARTBEAT_INTERVAL = 5.0


def default_data_dir() -> Path:
    """``GODWIT_DATA_DIR`` if set, else the platform's user data directory."""
    env = os.environ.get("GODWIT_DATA_DIR")
    if env:
        return Path(env).expanduser()
    return Path(platformdirs.user_data_dir("godwit", appauthor=False))


@dataclass(frozen=True)
class DataDir:
    """The files of one appliance, all under one directory."""

    root: Path

    @property
    def state_db(self) -> Path:
        return self.root / "state.db"

    @property
    def lock_file(self) -> Path:
        return self.root / "engine.lock"

    @property
    def run_dir(self) -> Path:
        return self.root / "run"

    @property
    def admin_socket(self) -> Path:
        return self.root / "admin.sock"

    @property
    def agent_socket(self) -> Path:
        return self.run_dir / "agent.sock"

    def alive_file(self, agent: str) -> Path:
        """Touched every second by an agent whose event loop runs; the supervisor restarts a silent one."""
        return self.run_dir / f"{agent}.alive"

    def ready_file(self, agent: str) -> Path:
        """Written by an agent once it serves its port or does its work: its pid and version (the health check
        of an update waits for it)."""
        return self.run_dir / f"{agent}.ready"

    @property
    def agents(self) -> Path:
        """The installed versions of the appliance agents (:mod:`engine.updater.store`)."""
        return self.root / "agents"

    @property
    def updates(self) -> Path:
        """The update feed's verified metadata and downloaded packages."""
        return self.root / "updates"

    @property
    def logs(self) -> Path:
        return self.root / "logs"

    @property
    def pki(self) -> Path:
        return self.root / "pki"

    @property
    def keys(self) -> Path:
        return self.root / "keys"

    @property
    def secrets_file(self) -> Path:
        """The 0600 fallback secret store, used only when the admin has no OS keyring."""
        return self.root / "secrets.json"

    def create(self) -> None:
        for d in (self.root, self.run_dir, self.logs, self.pki):
            d.mkdir(parents=True, exist_ok=True, mode=0o700)
        os.chmod(self.root, 0o700)
        os.chmod(self.run_dir, 0o700)


@dataclass(frozen=True)
class EngineConfig:
    """What ``godwit serve`` was started with. Ports given here override the stored ones."""

    data_dir: DataDir
    management_port: int | None = None
    data_port: int | None = None
    #: The address both ports listen on; None: the stored one, else every address.
    listen_address: str | None = None
    heartbeat_interval: float = HEARTBEAT_INTERVAL
