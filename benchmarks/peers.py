"""Godwit side by side with borg, restic and rsync over ssh, on the same disk image, in the same run (issue 14).

Run as root on Debian 12. Installs what is missing from Debian's packages (``installers/debian-packages.sh
benchmarks``: borgbackup, restic, rsync, openssh-server, openssh-client), then per run generates one image the
way ``benchmarks/replication.py`` does (about half sparse; text-like, binary-like and incompressible parts) and
measures on that same file, one tool after another (their order rotates from run to run):

- borg 1.2: ``borg create --compression lz4`` into a fresh ``repokey-blake2`` repository on the local disk;
- restic: ``restic backup`` (default compression) into a fresh repository on the local disk;
- rsync over ssh: ``rsync --inplace`` to a file through a private ``sshd`` on a loopback port (its own host key,
  configuration and authorized key in a temporary directory); the change with ``--no-whole-file --ignore-times``
  as well (rsync would skip a file whose size and mtime match to the second);
- Godwit: a real engine and mobility service, as ``benchmarks/replication.py`` runs them: ``vm enable`` → first
  recovery point; after the change, change → recovery point (a policy with a point every few seconds) and
  change → acknowledged (the cycle's last batch durable in the appliance's cache).

Each tool copies the image, then the same 1 % change (random 4 KiB-1 MiB writes at the same places for every
tool: ``replication.churn`` with the same seed), then copies it again; the changed places are put back before
the next tool. For a peer, "complete, recoverable copy" is its command returning successfully. Repository and
destination set-up (``borg init``, ``restic init``, key generation, Godwit's registration) are not timed.

    sudo .venv/bin/python benchmarks/peers.py --size-gib 2 --runs 3 [--json peers.json]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import hashlib
import json
import os
import platform
import pwd
import secrets
import shlex
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from replication import (  # noqa: E402
    MiB,
    churn,
    churn_ranges,
    godwit,
    make_disk,
    replicate_change,
    replicate_initial,
)

from engine import __version__ as godwit_version  # noqa: E402
from engine.config import HEARTBEAT_INTERVAL  # noqa: E402
from engine.durations import parse_duration  # noqa: E402
from engine.errors import BadInput  # noqa: E402
from tests.appliance import free_port  # noqa: E402

CHANGE = 0.01  #: the fraction of the disk each tool's second copy carries
SSHD = "/usr/sbin/sshd"


class Failed(Exception):
    """A tool's command failed: one line says which and why."""


def run_checked(argv: list[str], *, env: dict[str, str] | None = None, what: str) -> None:
    """Run a command; :class:`Failed` with the last line of its output if it fails."""
    proc = subprocess.run(argv, env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        tail = (proc.stderr.strip() or proc.stdout.strip() or "no output").splitlines()[-1]
        raise Failed(f"{what} failed with exit status {proc.returncode}: {tail}")


def timed(argv: list[str], *, env: dict[str, str] | None = None, what: str) -> float:
    """Seconds from starting the command until it returned successfully."""
    t0 = time.monotonic()
    run_checked(argv, env=env, what=what)
    return time.monotonic() - t0


def stream(argv: list[str], *, env: dict[str, str] | None = None, what: str) -> Iterator[bytes]:
    """A command's standard output in pieces; :class:`Failed` if it fails."""
    with subprocess.Popen(argv, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE) as proc:
        assert proc.stdout is not None and proc.stderr is not None
        while chunk := proc.stdout.read(8 * MiB):
            yield chunk
        err = proc.stderr.read().decode(errors="replace").strip()
        if proc.wait() != 0:
            raise Failed(f"{what} failed with exit status {proc.returncode}: {(err or 'no output').splitlines()[-1]}")


def sha256(chunks: Iterator[bytes]) -> str:
    h = hashlib.sha256()
    for chunk in chunks:
        h.update(chunk)
    return h.hexdigest()


def file_chunks(path: Path) -> Iterator[bytes]:
    with open(path, "rb") as f:
        while chunk := f.read(8 * MiB):
            yield chunk


# --- the peers ----------------------------------------------------------------------------------------------------
@dataclass
class Peer:
    """A tool that copies the image: ``setup`` (not timed), then ``initial`` and ``change`` (timed, seconds)."""

    name: str
    work: Path
    #: Commands as they were run, for the report (paths of the temporary directory shortened to $TMP).
    commands: list[str] = field(default_factory=list)

    def setup(self) -> None:
        raise NotImplementedError

    def initial(self, disk: Path) -> float:
        raise NotImplementedError

    def change(self, disk: Path) -> float:
        raise NotImplementedError

    def copy(self) -> Iterator[bytes]:
        """The last copy's bytes, read back from the tool's repository or destination (``--verify``)."""
        raise NotImplementedError

    def close(self) -> None:
        """Stop whatever ``setup`` started (also after a failure or an interruption)."""

    def _timed(self, argv: list[str], env: dict[str, str] | None = None) -> float:
        self.commands.append(shlex.join(argv))
        return timed(argv, env=env, what=f"{self.name}: {argv[0]} {argv[1]}")


class Borg(Peer):
    def setup(self) -> None:
        self.repo = self.work / "repo"
        # Its own configuration, cache and security directories: nothing under the user's home.
        self.env = {**os.environ, "BORG_PASSPHRASE": secrets.token_hex(16), "BORG_BASE_DIR": str(self.work / "home")}
        run_checked(["borg", "init", "--encryption=repokey-blake2", str(self.repo)], env=self.env, what="borg init")

    def initial(self, disk: Path) -> float:
        return self._timed(["borg", "create", "--compression", "lz4", f"{self.repo}::initial", str(disk)], self.env)

    def change(self, disk: Path) -> float:
        return self._timed(["borg", "create", "--compression", "lz4", f"{self.repo}::change", str(disk)], self.env)

    def copy(self) -> Iterator[bytes]:
        return stream(["borg", "extract", "--stdout", f"{self.repo}::change"], env=self.env, what="borg extract")


class Restic(Peer):
    def setup(self) -> None:
        self.password = self.work / "password"
        self.password.write_text(secrets.token_hex(16))
        self.common = ["-r", str(self.work / "repo"), "--password-file", str(self.password),
                       "--cache-dir", str(self.work / "cache"), "--quiet"]
        run_checked(["restic", "init", *self.common], what="restic init")

    def initial(self, disk: Path) -> float:
        return self._timed(["restic", "backup", *self.common, str(disk)])

    def change(self, disk: Path) -> float:
        self.disk = disk
        return self._timed(["restic", "backup", *self.common, str(disk)])

    def copy(self) -> Iterator[bytes]:
        return stream(["restic", "dump", *self.common, "latest", str(self.disk)], what="restic dump")


class RsyncSsh(Peer):
    """rsync to a file through a private sshd on a loopback port, started here with its own host key, configuration
    and authorized key; the system's sshd and the user's ~/.ssh are never read or written."""

    sshd: subprocess.Popen[bytes] | None = None
    made_privsep_dir = False

    def setup(self) -> None:
        w = self.work
        for key in ("host_key", "client_key"):
            run_checked(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", f"godwit-peers-{key}",
                         "-f", str(w / key)], what="ssh-keygen")
        (w / "authorized_keys").write_text((w / "client_key.pub").read_text())
        self.port = free_port()
        (w / "sshd_config").write_text(
            f"Port {self.port}\nListenAddress 127.0.0.1\nHostKey {w / 'host_key'}\n"
            f"AuthorizedKeysFile {w / 'authorized_keys'}\nPidFile {w / 'sshd.pid'}\n"
            # the temporary directory sits in /tmp, which strict modes refuse as a home for keys
            "StrictModes no\nPermitRootLogin prohibit-password\nPubkeyAuthentication yes\n"
            "PasswordAuthentication no\nKbdInteractiveAuthentication no\nUsePAM no\nLogLevel ERROR\n")
        privsep = Path("/run/sshd")  # Debian's sshd needs its privilege-separation directory (its unit makes it)
        if not privsep.exists():
            privsep.mkdir(mode=0o755)
            self.made_privsep_dir = True
        log = open(w / "sshd.log", "wb")  # noqa: SIM115 (the process keeps it)
        self.sshd = subprocess.Popen([SSHD, "-D", "-e", "-f", str(w / "sshd_config")], stdout=log, stderr=log,
                                     start_new_session=True)
        log.close()
        deadline = time.monotonic() + 15
        while True:
            if self.sshd.poll() is not None:
                tail = (w / "sshd.log").read_text(errors="replace").strip().splitlines()
                raise Failed(f"rsync: the private sshd exited with {self.sshd.returncode}: "
                             f"{tail[-1] if tail else 'no output'}")
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise Failed("rsync: the private sshd did not listen within 15 s") from None
                time.sleep(0.05)
        ssh = ["ssh", "-F", "none", "-p", str(self.port), "-i", str(w / "client_key"), "-o", "IdentitiesOnly=yes",
               "-o", f"UserKnownHostsFile={w / 'known_hosts'}", "-o", "StrictHostKeyChecking=accept-new",
               "-o", "BatchMode=yes"]
        self.ssh = shlex.join(ssh)
        (w / "dest").mkdir()
        user = pwd.getpwuid(os.getuid()).pw_name
        self.dest = f"{user}@127.0.0.1:{w / 'dest' / 'disk.img'}"
        run_checked([*ssh, f"{user}@127.0.0.1", "true"], what="rsync: ssh to the private sshd")

    def initial(self, disk: Path) -> float:
        return self._timed(["rsync", "--inplace", "-e", self.ssh, str(disk), self.dest])

    def change(self, disk: Path) -> float:
        # --ignore-times: rsync skips a file whose size and mtime (to the second) match, and the change may come
        # within the second the first copy ended in
        return self._timed(["rsync", "--inplace", "--no-whole-file", "--ignore-times", "-e", self.ssh, str(disk),
                            self.dest])

    def copy(self) -> Iterator[bytes]:
        return file_chunks(self.work / "dest" / "disk.img")

    def close(self) -> None:
        if self.sshd is not None:
            self.sshd.terminate()
            try:
                self.sshd.wait(10)
            except subprocess.TimeoutExpired:
                self.sshd.kill()
                self.sshd.wait()
            self.sshd = None
        if self.made_privsep_dir:
            with contextlib.suppress(OSError):  # something else uses it now: leave it
                Path("/run/sshd").rmdir()
            self.made_privsep_dir = False


#: name → (class, Debian packages, commands it needs, how the table names it)
PEERS: dict[str, tuple[type[Peer], tuple[str, ...], tuple[str, ...], str]] = {
    "borg": (Borg, ("borgbackup",), ("borg",), "borg (lz4, repokey-blake2 repository)"),
    "restic": (Restic, ("restic",), ("restic",), "restic (default compression)"),
    "rsync": (RsyncSsh, ("rsync", "openssh-server", "openssh-client"), ("rsync", SSHD, "ssh", "ssh-keygen"),
              "rsync over ssh (--inplace; change: --no-whole-file --ignore-times)"),
}


def missing_commands(commands: tuple[str, ...]) -> list[str]:
    return [c for c in commands if shutil.which(c) is None]


def install_peers() -> dict[str, str]:
    """Install the peers' Debian packages that are missing; returns why each peer that cannot run is skipped."""
    if any(missing_commands(cmds) for _, _, cmds, _ in PEERS.values()):
        proc = subprocess.run(["bash", str(ROOT / "installers" / "debian-packages.sh"), "benchmarks"],
                              capture_output=True, text=True)
        if proc.returncode != 0:  # e.g. one package is not available: try the others one by one
            for _, packages, cmds, _ in PEERS.values():
                if missing_commands(cmds):
                    subprocess.run(["apt-get", "install", "-y", "-qq", "--no-install-recommends", *packages],
                                   capture_output=True, env={**os.environ, "DEBIAN_FRONTEND": "noninteractive"})
    skipped = {}
    for name, (_, packages, cmds, _) in PEERS.items():
        if missing := missing_commands(cmds):
            skipped[name] = (f"{name}: skipped, {' '.join(missing)} missing and apt could not install "
                             f"{' '.join(packages)}")
    return skipped


def versions() -> dict[str, str]:
    def first_line(argv: list[str]) -> str:
        try:
            proc = subprocess.run(argv, capture_output=True, text=True)
        except OSError:
            return "missing"
        return ((proc.stdout or proc.stderr).strip().splitlines() or ["?"])[0]

    commit = first_line(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"])
    dirty = subprocess.run(["git", "-C", str(ROOT), "status", "--porcelain", "--untracked-files=no"],
                           capture_output=True, text=True).stdout.strip()
    return {"godwit": f"engine {godwit_version}, checkout {commit}{' with uncommitted changes' if dirty else ''}",
            "python": platform.python_version(),
            "borg": first_line(["borg", "--version"]), "restic": first_line(["restic", "version"]),
            "rsync": first_line(["rsync", "--version"]), "ssh": first_line(["ssh", "-V"]),
            "sshd": first_line(["dpkg-query", "-W", "-f", "openssh-server ${Version}", "openssh-server"])}


def machine(work: Path) -> dict[str, Any]:
    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), platform.processor() or "?")
    mem = next((int(line.split()[1]) * 1024 for line in Path("/proc/meminfo").read_text().splitlines()
                if line.startswith("MemTotal:")), 0)
    df = subprocess.run(["df", "--output=source,fstype", str(work)], capture_output=True, text=True).stdout.split()
    return {"nproc": os.cpu_count(), "cpu": cpu, "memory_gib": round(mem / 2**30, 1), "kernel": platform.release(),
            "work_fs": " ".join(df[-2:]) if len(df) >= 2 else "?", "loadavg_at_start": os.getloadavg()}


# --- one run ------------------------------------------------------------------------------------------------------
@contextmanager
def restored(disk: Path, ranges: list[tuple[int, int]]) -> Iterator[None]:
    """Put the bytes at ``ranges`` back as they were on the way out (the next tool starts from the same image)."""
    saved = []
    with open(disk, "rb") as f:
        for offset, n in ranges:
            f.seek(offset)
            saved.append(f.read(n))
    try:
        yield
    finally:
        with open(disk, "r+b") as f:
            for (offset, _), data in zip(ranges, saved, strict=True):
                f.seek(offset)
                f.write(data)


def run_peer(peer: Peer, disk: Path, seed: int, *, verify: bool) -> dict[str, float]:
    """Set up (not timed), copy, change, copy again; with ``verify``, read the last copy back (not timed) and
    check that it is the changed image."""
    try:
        peer.setup()
        initial = peer.initial(disk)
        changed = churn(disk, CHANGE, seed)
        change = peer.change(disk)
        if verify and sha256(peer.copy()) != sha256(file_chunks(disk)):
            raise Failed(f"{peer.name}: its copy after the change differs from the image")
        return {"initial_s": initial, "change_s": change, "changed_mb": changed / 1e6}
    finally:
        peer.close()


async def run_godwit(work: Path, disk: Path, seed: int, *, cadence: str,
                     heartbeat_interval: float | None) -> dict[str, float]:
    async with godwit(work, disk, heartbeat_interval=heartbeat_interval) as g:
        initial = await replicate_initial(g, cadence=cadence)
        await asyncio.sleep(2.5)  # let an idle cycle or two pass, as benchmarks/replication.py does
        # The change starts half a cadence after a cycle began: the wait for the next cycle is then what a change
        # made at a random moment waits on average, rather than whatever phase the sleep above lands on.
        change = await replicate_change(g, disk, fraction=CHANGE, seed=seed,
                                        align=parse_duration(cadence, "--cadence") / 2)
    return {"initial_s": initial.applied_s, "initial_cached_s": initial.cached_s,
            "change_to_point_s": change.change_to_point_s, "change_to_ack_s": change.change_to_ack_s,
            "delta_cycle_s": change.delta_cycle_s, "wait_for_cycle_s": change.change_to_point_s - change.delta_cycle_s,
            # 1 when the change was durable before the point's own cycle began: an earlier cycle carried it and
            # took no point
            "acked_in_earlier_cycle": float(change.change_to_ack_s < change.change_to_point_s - change.delta_cycle_s),
            "changed_mb": change.changed / 1e6, "sent_mb": change.sent / 1e6,
            **{f"initial_cpu_{k}_s": v for k, v in initial.cpu_s.items()}}


def one_run(index: int, tools: list[str], size: int, work: Path, args: argparse.Namespace,
            commands: dict[str, list[str]], failed: dict[str, str]) -> dict[str, dict[str, float]]:
    seed = 100 + index
    results: dict[str, dict[str, float]] = {}
    with tempfile.TemporaryDirectory(prefix="godwit-peers-", dir=work) as tmp_name:
        tmp = Path(tmp_name)
        disk = tmp / "disk.img"
        make_disk(disk, size, seed)
        os.sync()
        ranges = churn_ranges(size, CHANGE, seed + 1)
        order = tools[index % len(tools):] + tools[:index % len(tools)]
        for name in order:
            if name in failed:
                continue
            tool_dir = tmp / name
            tool_dir.mkdir()
            try:
                with restored(disk, ranges):
                    if name == "godwit":
                        results[name] = asyncio.run(run_godwit(tool_dir, disk, seed + 1, cadence=args.cadence,
                                                               heartbeat_interval=args.heartbeat_interval))
                    else:
                        peer = PEERS[name][0](name, tool_dir)
                        results[name] = run_peer(peer, disk, seed + 1, verify=args.verify)
                        commands.setdefault(name, [c.replace(str(tool_dir), "$TMP").replace(str(disk), "$IMAGE")
                                                   for c in peer.commands])
            except Failed as exc:
                failed[name] = str(exc)
                print(f"{exc} (left out from now on)", flush=True)
            except Exception as exc:  # one line, and the other tools go on
                failed[name] = f"{name} failed: {type(exc).__name__}: {exc}"
                print(f"{failed[name]} (left out from now on)", flush=True)
            finally:
                shutil.rmtree(tool_dir, ignore_errors=True)
                os.sync()  # one tool's writes are not flushed during the next one's measurement
            if name in results:
                r = results[name]
                print(f"run {index + 1} {name}: " + "  ".join(f"{k}={v:.2f}" for k, v in r.items()), flush=True)
    return results


# --- the report ---------------------------------------------------------------------------------------------------
def median(runs: list[dict[str, dict[str, float]]], tool: str, key: str) -> float | None:
    values = [r[tool][key] for r in runs if tool in r and key in r[tool]]
    return statistics.median(values) if values else None


def table(runs: list[dict[str, dict[str, float]]], tools: list[str], cadence: str) -> tuple[str, dict[str, Any]]:
    def s(v: float | None) -> str:
        return "—" if v is None else f"{v:.2f} s"

    def ratio(a: float | None, b: float | None) -> str:
        return "—" if a is None or not b else f"{a / b:.2f}"

    g_init, g_cached = median(runs, "godwit", "initial_s"), median(runs, "godwit", "initial_cached_s")
    g_point, g_ack = median(runs, "godwit", "change_to_point_s"), median(runs, "godwit", "change_to_ack_s")
    medians: dict[str, Any] = {}
    lines = ["| tool | initial | 1 % change | Godwit/peer, initial (→ first point) | Godwit/peer, change → point "
             "| Godwit/peer, change → acknowledged |", "|---|---|---|---|---|---|"]
    for name in tools:
        if name == "godwit":
            continue
        init, change = median(runs, name, "initial_s"), median(runs, name, "change_s")
        medians[name] = {"initial_s": init, "change_s": change}
        lines.append(f"| {PEERS[name][3]} | {s(init)} | {s(change)} | {ratio(g_init, init)} | "
                     f"{ratio(g_point, change)} | {ratio(g_ack, change)} |")
    if "godwit" in tools:
        keys = next((r["godwit"] for r in runs if "godwit" in r), {})
        medians["godwit"] = {k: median(runs, "godwit", k) for k in keys if k != "acked_in_earlier_cycle"}
        lines.append(f"| Godwit: `vm enable` → first recovery point; change → recovery point (points every {cadence}) "
                     f"| {s(g_init)} | {s(g_point)} | | | |")
        lines.append(f"| Godwit: `vm enable` → all durable in the cache; change → acknowledged (durable in the cache) "
                     f"| {s(g_cached)} | {s(g_ack)} | | | |")
    return "\n".join(lines), medians


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size-gib", type=float, default=2.0, help="the image's size (default 2)")
    parser.add_argument("--runs", type=int, default=3, help="runs; the table shows medians (default 3)")
    parser.add_argument("--json", type=Path, default=None, help="write every raw figure to this file")
    parser.add_argument("--work", type=Path, default=None, help="scratch directory (default: a temporary one)")
    parser.add_argument("--cadence", default="3s",
                        help="Godwit's policy: how often a crash-consistent point is due (default 3s)")
    parser.add_argument("--heartbeat-interval", type=float, default=None,
                        help=f"the engine's heartbeat interval in seconds (default: the engine's own, "
                             f"{HEARTBEAT_INTERVAL:g} s)")
    parser.add_argument("--verify", action="store_true",
                        help="read each peer's last copy back (not timed) and check it is the changed image")
    parser.add_argument("--only", default="borg,restic,rsync,godwit", help="tools to run, comma-separated")
    args = parser.parse_args()
    size = int(args.size_gib * 1024 * MiB) // MiB * MiB
    tools = [t.strip() for t in args.only.split(",") if t.strip()]
    if unknown := [t for t in tools if t not in (*PEERS, "godwit")]:
        parser.error(f"unknown tool {unknown[0]!r}: choose from {', '.join([*PEERS, 'godwit'])}")
    try:
        parse_duration(args.cadence, "--cadence")
    except BadInput as exc:
        parser.error(str(exc))
    if size < 64 * MiB or args.runs < 1:
        parser.error("give --size-gib of at least 0.0625 and --runs of at least 1")
    if os.geteuid() != 0:
        print("Run this as root (it installs Debian packages and starts a private sshd): "
              "sudo .venv/bin/python benchmarks/peers.py", file=sys.stderr)
        sys.exit(2)
    if args.work is not None and not args.work.is_dir():
        parser.error(f"--work {args.work} is not a directory")

    def on_term(signum: int, frame: FrameType | None) -> None:
        raise KeyboardInterrupt  # clean up as on Ctrl-C

    signal.signal(signal.SIGTERM, on_term)
    command = shlex.join([os.path.relpath(sys.executable, Path.cwd()) if sys.executable.startswith(str(Path.cwd()))
                          else sys.executable, os.path.relpath(__file__, Path.cwd()), *sys.argv[1:]])
    skipped = install_peers()
    for name, line in skipped.items():
        if name in tools:
            print(line, flush=True)
            tools.remove(name)
    work = args.work or Path(tempfile.gettempdir())
    info: dict[str, Any] = {"command": command, "machine": machine(work), "versions": versions(),
            "image": {"size_bytes": size, "description": (
                f"{size / 2**30:g} GiB image file generated by benchmarks/replication.py make_disk: the first half of "
                "every 8 MiB written (1 MiB pieces: a third each text-like, binary-like, incompressible), the rest "
                "sparse; one image per run, generated once and then in the page cache for every tool; each tool "
                f"copies it, then after {CHANGE:.0%} of it is overwritten (random 4 KiB-1 MiB writes, same places "
                "for every tool) again; the changed places are restored between tools. Godwit's change starts half a "
                f"cadence ({args.cadence}) after one of its delta cycles began, so its change → recovery point "
                "includes the wait for the next cycle (and for the one after when that cycle takes no point)")},
            "peers_verified": args.verify,
            "godwit_settings": {"cadence": args.cadence, "heartbeat_interval_s": args.heartbeat_interval},
            "peer_commands": {}, "failed": {}, "skipped": skipped, "runs": []}
    print(f"{info['machine']['nproc']} CPUs ({info['machine']['cpu']}), {info['machine']['memory_gib']} GiB, "
          f"kernel {info['machine']['kernel']}, work directory on {info['machine']['work_fs']}, load average at "
          f"start {' '.join(f'{x:.2f}' for x in info['machine']['loadavg_at_start'])}", flush=True)
    runs: list[dict[str, dict[str, float]]] = info["runs"]
    commands: dict[str, list[str]] = info["peer_commands"]
    failed: dict[str, str] = info["failed"]
    try:
        for i in range(args.runs):
            runs.append(one_run(i, tools, size, work, args, commands, failed))
    except KeyboardInterrupt:
        print("interrupted: everything started here is stopped and its files removed", file=sys.stderr)
        sys.exit(130)
    report(info, runs, tools, args)


def report(info: dict[str, Any], runs: list[dict[str, dict[str, float]]], tools: list[str],
           args: argparse.Namespace) -> None:
    text, medians = table(runs, [t for t in tools if t not in info["failed"]], args.cadence)
    info["medians"] = medians
    m, v = info["machine"], info["versions"]
    print(f"\n{info['command']}\n")
    print(f"Median of {len(runs)} run{'s' * (len(runs) != 1)}, {args.size_gib:g} GiB image, "
        f"{m['nproc']} CPUs ({m['cpu']}), all tools in the same run, one after another on the same image file (in "
        "the page cache for every tool). Peers: a copy is complete when the command returned successfully"
          + ("; each peer's last copy was read back afterwards (not timed) and equals the changed image.\n"
             if args.verify else ".\n"))
    print(text)
    g = medians.get("godwit")
    hb = info["godwit_settings"]["heartbeat_interval_s"]
    heartbeat = f"the engine's default, every {HEARTBEAT_INTERVAL:g} s" if hb is None else f"every {hb:g} s"
    if g and g.get("delta_cycle_s") is not None:
        godwit_runs = [r["godwit"] for r in runs if "godwit" in r]
        earlier = sum(1 for r in godwit_runs if r["acked_in_earlier_cycle"])
        print(f"\nGodwit: the recovery point's own cycle, start → point {g['delta_cycle_s']:.2f} s; the wait for that "
              f"cycle {g['wait_for_cycle_s']:.2f} s; in {earlier} of {len(godwit_runs)} runs an earlier cycle had "
              f"already made the change durable without taking a point; {g['sent_mb']:.1f} MB "
              f"sent for {g['changed_mb']:.1f} MB changed; heartbeats: {heartbeat}, points every {args.cadence}. "
              "Ratios below 1 mean Godwit is faster.")
    print("\nImage: " + info["image"]["description"] + ".")
    print("Versions: " + "; ".join(f"{k}: {val}" for k, val in v.items()))
    for name, cmds in info["peer_commands"].items():
        print(f"{name}: " + "  then  ".join(cmds))
    for why in {**info["skipped"], **info["failed"]}.values():
        print(f"left out: {why}")
    if args.json is not None:
        args.json.write_text(json.dumps(info, indent=2) + "\n")
        print(f"raw figures: {args.json}")


if __name__ == "__main__":
    main()
