"""Step (d) of test_bundle.sh: the bundled mobility service, run in a Debian 11 root, registers with a real
appliance on this host and makes its first recovery point.

Run by test_bundle.sh with this checkout's .venv Python (as root): the appliance is this checkout's engine
(tests/appliance.py starts it as the integration tests do), the source server is the bundle unpacked in
``--root``, installed there with its own install.sh and started by hand (no systemd in a chroot) with the
arguments the unit would give it. The chroot shares the host's network namespace: 127.0.0.1 reaches the
appliance.
"""

from __future__ import annotations

import argparse
import os
import shlex
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

from tests.appliance import Appliance, wait_for  # noqa: E402  (the repository's test helpers)

NAME = "bundle-src"


def in_root(root: Path, script: str) -> subprocess.Popen[str]:
    """Start ``script`` in the root (common.sh's in_root: private mounts, clean environment)."""
    command = f"source {shlex.quote(str(REPO / 'installers/mobility/common.sh'))}; in_root {shlex.quote(str(root))} " \
              f"{shlex.quote(script)}"
    return subprocess.Popen(["bash", "-c", command], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--root", type=Path, required=True, help="a Debian root with the bundle unpacked in /root")
    parser.add_argument("--version", required=True)
    args = parser.parse_args()
    root: Path = args.root
    with tempfile.TemporaryDirectory(prefix="godwit-bundle-appliance-") as tmp:
        app = Appliance(Path(tmp))
        app.start()
        mobility: subprocess.Popen[str] | None = None
        try:
            setup = app.setup()
            (root / "root/passphrase.txt").write_text(setup["passphrase"] + "\n")
            os.chmod(root / "root/passphrase.txt", 0o600)
            disk = root / "srv/disk0.img"
            disk.parent.mkdir(parents=True, exist_ok=True)
            with open(disk, "wb") as f:
                f.truncate(8 * 1024 * 1024)
                f.write(b"a source disk replicated by the bundled mobility service\n" * 2000)
            install = in_root(root, f"cd /root/godwit-mobility-{args.version} && ./install.sh --appliance "
                                    f"{app.address} --ca-fingerprint {setup['ca_fingerprint']} --passphrase-file "
                                    f"/root/passphrase.txt --disk /srv/disk0.img --name {NAME} --no-start")
            out, _ = install.communicate(timeout=120)
            if install.returncode != 0:
                print(out, file=sys.stderr)
                return 1
            # The unit's own ExecStart (systemd's $$ is sh's $), with the conf's variables as its environment:
            # what systemd would run, by hand (a chroot has no systemd).
            mobility = in_root(root, "set -a; . /etc/godwit/mobility.conf; set +a; "
                                     "cmd=$(sed -n 's/^ExecStart=//p' /etc/systemd/system/godwit-mobility.service); "
                                     "echo $$ >/tmp/mobility.pid; eval \"exec ${cmd//\\$\\$/\\$}\"")
            started = time.monotonic()
            wait_for(lambda: NAME in app.servers() or mobility.poll() is not None, timeout=60,
                     what="the bundled mobility service to register")
            if mobility.poll() is not None:
                print(mobility.communicate()[0], file=sys.stderr)
                print("the bundled mobility service exited before it registered", file=sys.stderr)
                return 1
            server = app.servers()[NAME]
            print(f"  registered as {NAME} after {time.monotonic() - started:.1f} s: {server['os']}, "
                  f"mobility {server.get('mobility_version') or server.get('agent_version')}")
            app.enable(NAME)
            wait_for(lambda: app.servers()[NAME]["state"] == "protected" or mobility.poll() is not None,
                     timeout=120, what=f"{NAME} to be protected (its first recovery point)")
            if mobility.poll() is not None:
                print(mobility.communicate()[0], file=sys.stderr)
                return 1
            points = app.points(NAME)
            print(f"  protected after {time.monotonic() - started:.1f} s: {len(points)} recovery point(s)")
            return 0
        finally:
            if mobility is not None:
                pid_file = root / "tmp/mobility.pid"
                if mobility.poll() is None and pid_file.exists():
                    os.kill(int(pid_file.read_text()), signal.SIGTERM)
                try:
                    output, _ = mobility.communicate(timeout=60)
                except subprocess.TimeoutExpired:
                    os.kill(int(pid_file.read_text()), signal.SIGKILL)
                    output, _ = mobility.communicate()
                (REPO / "build/logs/bundle-mobility-service.log").write_text(output)
            app.stop()


if __name__ == "__main__":
    sys.exit(main())
