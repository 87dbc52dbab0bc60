"""Install, upgrade, remove and purge godwit-appliance on a clean Debian 12 root (a chroot of the build's cached
base), as root. ``make appliance-test`` runs it before booting the image.

    python3 installers/appliance/package_test.py [--deb build/godwit-appliance_<v>_amd64.deb]

Checked: the godwit user and its private data directory, the engine's unit enabled; the engine starting from
the package as that user and answering ``setup show``; an upgrade to a newer version keeping the data; remove
keeping the data and masking the unit; purge forgetting the units and still keeping ``/var/lib/godwit`` (its
replicas are the admin's to delete). Each step is printed with its time.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
sys.path.insert(0, str(HERE))

from build import BuildError, chroot, mounted, system_mounts, unpack  # noqa: E402


class PackageTestFailed(Exception):
    pass


def check(ok: bool, what: str) -> None:
    if not ok:
        raise PackageTestFailed(what)


def bumped(deb: Path, work: Path) -> Path:
    """The same package with a higher version: an upgrade for dpkg."""
    tree = work / "bumped"
    subprocess.run(["dpkg-deb", "-R", str(deb), str(tree)], check=True)
    control = tree / "DEBIAN/control"
    lines = [f"{line}+upgrade1" if line.startswith("Version: ") else line for line in control.read_text().splitlines()]
    control.write_text("\n".join(lines) + "\n")
    out = work / "godwit-appliance-upgrade.deb"
    subprocess.run(["dpkg-deb", "--root-owner-group", "-Zzstd", "-z1", "--build", str(tree), str(out)], check=True,
                   capture_output=True)
    shutil.rmtree(tree)
    return out


def engine_answers(root: Path) -> dict[str, object]:
    """Start the packaged engine as the godwit user on free high ports, ask it for its setup, stop it."""
    ports = []
    for _ in range(2):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            ports.append(s.getsockname()[1])
    env = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "LC_ALL": "C.UTF-8", "GODWIT_SECRET_STORE": "file"}
    serve = subprocess.Popen(["chroot", str(root), "runuser", "-u", "godwit", "--", "/opt/godwit/bin/godwit", "serve",
                              "--data-dir", "/var/lib/godwit", "--management-port", str(ports[0]), "--data-port",
                              str(ports[1]), "--listen", "127.0.0.1"], env=env, stdout=subprocess.PIPE,
                             stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline:
            res = subprocess.run(["chroot", str(root), "runuser", "-u", "godwit", "--", "/opt/godwit/bin/godwit",
                                  "setup", "show", "--json", "--data-dir", "/var/lib/godwit"], env=env,
                                 capture_output=True, text=True)
            if res.returncode == 0:
                return json.loads(res.stdout)  # type: ignore[no-any-return]
            if serve.poll() is not None:
                out = serve.stdout.read().decode(errors="replace") if serve.stdout else ""
                raise PackageTestFailed(f"the packaged engine exited ({serve.returncode}): {out[-500:]}")
            time.sleep(1)
        raise PackageTestFailed("the packaged engine did not answer within 90 s")
    finally:
        serve.terminate()
        try:
            serve.wait(30)
        except subprocess.TimeoutExpired:
            serve.kill()


def run(deb: Path, base: Path) -> None:
    started = time.monotonic()

    def step(text: str) -> None:
        print(f"[{time.monotonic() - started:7.1f} s] {text}", flush=True)

    with tempfile.TemporaryDirectory(prefix="godwit-package-", dir=REPO / "build") as tmp:
        work = Path(tmp)
        root = work / "root"
        root.mkdir()
        unpack(base, root)
        step(f"clean Debian 12 root unpacked from {base.name}")
        upgrade = bumped(deb, work)
        with mounted(*system_mounts(root)):
            shutil.copy(deb, root / "tmp/first.deb")
            shutil.copy(upgrade, root / "tmp/upgrade.deb")
            chroot(root, "dpkg", "-i", "/tmp/first.deb")
            passwd = (root / "etc/passwd").read_text()
            check("\ngodwit:" in "\n" + passwd, "no godwit user after installing")
            data = root / "var/lib/godwit"
            check(data.is_dir() and (data.stat().st_mode & 0o777) == 0o700, "/var/lib/godwit is not a 0700 directory")
            wants = root / "etc/systemd/system/multi-user.target.wants/godwit-engine.service"
            check(wants.is_symlink(), "godwit-engine.service is not enabled")
            step("installed: godwit user, /var/lib/godwit 0700, godwit-engine.service enabled")
            setup = engine_answers(root)
            check(bool(setup.get("ca_fingerprint")), "the engine's setup has no CA fingerprint")
            step(f"the packaged engine ran as godwit and answered (CA {str(setup['ca_fingerprint'])[:23]}…)")
            chroot(root, "dpkg", "-i", "/tmp/upgrade.deb")
            version = chroot(root, "dpkg-query", "-W", "-f=${Version}", "godwit-appliance").stdout
            check(version.endswith("+upgrade1"), f"the upgrade left version {version}")
            check(engine_answers(root).get("ca_fingerprint") == setup["ca_fingerprint"],
                  "the upgrade lost the appliance's identity")
            step(f"upgraded to {version}; same appliance identity")
            chroot(root, "dpkg", "-r", "godwit-appliance")
            check(not (root / "opt/godwit/bin/godwit").exists(), "remove left the program")
            check((data / "state.db").exists(), "remove deleted the data directory")
            step("removed: program gone, data directory kept")
            chroot(root, "dpkg", "-P", "godwit-appliance")
            check(not wants.exists() and not wants.is_symlink(), "purge left the unit enabled")
            check((data / "state.db").exists(), "purge deleted the data directory")
            status = subprocess.run(["chroot", str(root), "dpkg-query", "-W", "godwit-appliance"], capture_output=True)
            check(status.returncode != 0, "dpkg still knows the package after purge")
            step("purged: units forgotten, /var/lib/godwit kept (documented)")
        shutil.rmtree(root, ignore_errors=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Install, upgrade, remove and purge godwit-appliance in a chroot.")
    parser.add_argument("--deb", type=Path)
    args = parser.parse_args(argv)
    if os.geteuid() != 0:
        print("package test: needs root (chroot): run it with sudo", file=sys.stderr)
        return 2
    if os.environ.get("GODWIT_BUILD_NS") != "1":
        os.environ["GODWIT_BUILD_NS"] = "1"
        os.execvp("unshare", ["unshare", "--mount", "--propagation", "private", sys.executable, __file__,
                              *(argv if argv is not None else sys.argv[1:])])
    debs = [args.deb] if args.deb else sorted((REPO / "build").glob("godwit-appliance_*_amd64.deb"))
    bases = sorted((REPO / "build/cache").glob("base-bookworm-*.tar"), key=lambda p: p.stat().st_mtime)
    if not debs or not debs[-1].exists() or not bases:
        print("package test: no godwit-appliance .deb or base root in build/: run `make appliance` first",
              file=sys.stderr)
        return 2
    try:
        run(debs[-1], bases[-1])
    except (PackageTestFailed, BuildError) as exc:
        print(f"package test FAILED: {exc}", file=sys.stderr)
        return 1
    print("package test passed")
    return 0


if __name__ == "__main__":
    sys.exit(main())
