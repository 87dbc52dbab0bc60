"""With a real OS keyring (gnome-keyring's Secret Service on a private D-Bus) secrets stay out of files."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.appliance import PYTHON, free_port

pytestmark = pytest.mark.skipif(
    not (shutil.which("dbus-run-session") and shutil.which("gnome-keyring-daemon")),
    reason="needs dbus and gnome-keyring (installed by installers/debian-packages.sh)",
)


def test_engine_keeps_secrets_in_the_os_keyring(tmp_path: Path) -> None:
    """With an OS keyring the passphrase lives there, survives a restart, and is in no file of the data directory."""
    data = tmp_path / "d"
    g = f"{PYTHON} -m engine"
    ports = f"--management-port {free_port()} --data-port {free_port()}"
    script = f"""
set -e
printf %s test-unlock | gnome-keyring-daemon --unlock --components=secrets >/dev/null
{g} serve --background --data-dir {data} {ports} >/dev/null
{g} setup show --json --data-dir {data} > {tmp_path}/first.json
kill $(cat {data}/engine.lock); while [ -e {data}/admin.sock ]; do sleep 0.05; done
{g} serve --background --data-dir {data} >/dev/null
{g} setup show --json --data-dir {data} > {tmp_path}/second.json
kill $(cat {data}/engine.lock); while [ -e {data}/admin.sock ]; do sleep 0.05; done
"""
    env = {k: v for k, v in os.environ.items() if k not in ("GODWIT_SECRET_STORE", "PYTHON_KEYRING_BACKEND")}
    env["HOME"] = str(tmp_path)  # the keyring daemon keeps its files there
    res = subprocess.run(["dbus-run-session", "--", "bash", "-c", script], capture_output=True, text=True,
                         timeout=120, env=env)
    assert res.returncode == 0, res.stderr
    first = json.loads((tmp_path / "first.json").read_text())
    second = json.loads((tmp_path / "second.json").read_text())
    assert first["secret_store"] == "OS keyring (keyring.backends.SecretService.Keyring)"
    assert second["passphrase"] == first["passphrase"]  # read back from the keyring after a restart
    assert not (data / "secrets.json").exists()
    for path in data.rglob("*"):
        if path.is_file():
            assert first["passphrase"].encode() not in path.read_bytes(), path
