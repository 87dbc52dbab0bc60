"""Azurite, the Azure Blob Storage emulator, run for the tests: pinned in ``tools/azurite`` (``make deps`` installs
it with ``npm ci``), started on a free loopback port, stopped with TERM then KILL. Nothing here is a fake: the
``azure`` backend talks to it with the real SDK, over HTTP, as it would to a storage account."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import time
from pathlib import Path

from tests.appliance import free_port

ROOT = Path(__file__).resolve().parent.parent / "tools" / "azurite"
BINARY = ROOT / "node_modules" / ".bin" / "azurite-blob"
#: Azurite's development account and its published key (the same in every Azurite).
ACCOUNT = "devstoreaccount1"
KEY = "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw=="


class Azurite:
    """One emulator; ``directory`` None keeps its data in memory, else there (it survives a restart)."""

    def __init__(self, log_dir: Path, *, directory: Path | None = None) -> None:
        self.log_dir = log_dir
        self.directory = directory
        self.port = free_port()
        self.proc: subprocess.Popen[bytes] | None = None

    def __repr__(self) -> str:
        return f"<Azurite port={self.port} running={self.running}>"

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    @property
    def account_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/{ACCOUNT}"

    @property
    def connection_string(self) -> str:
        return (f"DefaultEndpointsProtocol=http;AccountName={ACCOUNT};AccountKey={KEY};"
                f"BlobEndpoint={self.account_url};")

    def start(self, timeout: float = 30) -> Azurite:
        if not BINARY.exists():
            raise AssertionError(f"Azurite is not installed in {ROOT}: run `make deps` (npm ci there)")
        storage = ["--inMemoryPersistence"] if self.directory is None else ["--location", str(self.directory)]
        self.log_dir.mkdir(parents=True, exist_ok=True)
        with open(self.log_dir / f"azurite-{self.port}.log", "ab") as out:
            # --disableTelemetry: without it some versions never exit on SIGTERM (PLATFORM.md).
            self.proc = subprocess.Popen(
                [str(BINARY), "--blobHost", "127.0.0.1", "--blobPort", str(self.port), *storage,
                 "--disableTelemetry", "--skipApiVersionCheck", "--loose", "--silent"],
                stdout=out, stderr=out, stdin=subprocess.DEVNULL, start_new_session=True)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(f"Azurite exited with {self.proc.returncode}; see {self.log_dir}")
            with socket.socket() as s:
                if s.connect_ex(("127.0.0.1", self.port)) == 0:
                    return self
            time.sleep(0.05)
        raise AssertionError(f"Azurite did not listen on {self.port} within {timeout:.0f} s")

    def stop(self) -> None:
        if self.proc is None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGTERM)
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(10)
        self.proc = None
