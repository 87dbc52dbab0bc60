"""Boot test of the appliance image: ``make appliance-test`` (after ``make appliance``; root not needed).

    python3 installers/appliance/boot_test.py [--image build/godwit-appliance.qcow2] [--firmware bios|uefi|both]

1. Checks the OVA's structure (descriptor, manifest checksums, VMDK readable by ``qemu-img``).
2. Boots a copy-on-write overlay of the qcow2 under QEMU (KVM when ``/dev/kvm`` works, else TCG) with an empty
   second disk (the cache), user-mode networking forwarding three loopback ports of this machine to the guest's
   management port, data port and the boot test's admin channel (``godwit-test-channel``, switched on by a QEMU
   fw_cfg entry that only this test sets).
3. Reads the appliance's address, ports and CA fingerprint from the serial console.
4. Moves the guest's data port to the forwarded port (``godwit ports set`` through the admin channel), runs a real
   mobility service on this machine with a small sample disk, enables it, and waits until the appliance reports
   it protected (initial replication complete and a recovery point).
5. Saves a screendump of the guest's display (``build/appliance-screen-<firmware>.png``): the console's setup
   wizard must be on it.
6. Shuts the guest down through ACPI and waits for a clean power-off.

With ``--firmware both`` (the default) the full test runs under BIOS (SeaBIOS), then the image boots under UEFI
(OVMF) to its banner and a clean power-off. Every step is printed with its time. When the guest does not come up
the test fails with the last 50 lines of its serial console.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import time
import zlib
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
sys.path.insert(0, str(HERE))

import ova  # noqa: E402

GODWIT = REPO / ".venv" / "bin" / "godwit"
OVMF_CODE = Path("/usr/share/OVMF/OVMF_CODE_4M.fd")
OVMF_VARS = Path("/usr/share/OVMF/OVMF_VARS_4M.fd")
GUEST_ADMIN_PORT = 7000
SOURCE = "boot-test-source"
T = TypeVar("T")


class BootTestFailed(Exception):
    pass


class Clock:
    def __init__(self) -> None:
        self.started = time.monotonic()

    def step(self, text: str) -> None:
        print(f"[{time.monotonic() - self.started:7.1f} s] {text}", flush=True)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_for(probe: Callable[[], T | None], *, timeout: float, what: str, every: float = 1.0) -> T:
    deadline = time.monotonic() + timeout
    while True:
        value = probe()
        if value:
            return value
        if time.monotonic() > deadline:
            raise BootTestFailed(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(every)


def ppm_to_png(ppm: bytes) -> tuple[bytes, int]:
    """A binary PPM (what QEMU's screendump writes) as PNG bytes, and how many distinct colours it has."""
    parts = ppm.split(maxsplit=4)
    if parts[0] != b"P6" or parts[3] != b"255":
        raise BootTestFailed("the screendump is not a binary PPM")
    width, height, pixels = int(parts[1]), int(parts[2]), parts[4]
    rows = b"".join(b"\x00" + pixels[y * width * 3:(y + 1) * width * 3] for y in range(height))

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    png = (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0))
           + chunk(b"IDAT", zlib.compress(rows, 6)) + chunk(b"IEND", b""))
    colours = len({pixels[i:i + 3] for i in range(0, len(pixels), 3 * 97)})
    return png, colours


#: The display adapter of each boot (the console is on its frame buffer): QEMU's standard VGA (bochs-drm, Proxmox's
#: default) under BIOS, virtio-gpu under UEFI.
DISPLAYS = {"bios": "std", "uefi": "virtio"}


class Guest:
    """One QEMU process running an overlay of the image."""

    def __init__(self, image: Path, work: Path, firmware: str, clock: Clock, *, kvm: bool = True) -> None:
        self.work = work
        self.clock = clock
        self.firmware = firmware
        self.serial = work / "serial.log"
        self.monitor = work / "monitor.sock"
        self.management = free_port()
        self.data = free_port()
        self.admin = free_port()
        overlay = work / "os.qcow2"
        subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", "-F", "qcow2", "-b", str(image), str(overlay)],
                       check=True)
        cache = work / "cache.qcow2"
        subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", str(cache), "4G"], check=True)
        kvm = kvm and os.access("/dev/kvm", os.R_OK | os.W_OK)
        self.accel = "KVM" if kvm else "TCG, slow"
        forwards = (f"hostfwd=tcp:127.0.0.1:{self.management}-:443,hostfwd=tcp:127.0.0.1:{self.data}-:{self.data},"
                    f"hostfwd=tcp:127.0.0.1:{self.admin}-:{GUEST_ADMIN_PORT}")
        cmd = ["qemu-system-x86_64", "-name", "godwit-boot-test", "-m", "4096", "-smp", "2",
               *(["-enable-kvm", "-cpu", "host,-arch-capabilities"] if kvm else ["-accel", "tcg", "-cpu", "max"]),
               "-drive", f"file={overlay},if=virtio,format=qcow2", "-drive", f"file={cache},if=virtio,format=qcow2",
               "-netdev", f"user,id=net0,{forwards}", "-device", "virtio-net-pci,netdev=net0",
               "-vga", DISPLAYS[firmware], "-display", "none", "-serial", f"file:{self.serial}",
               "-monitor", f"unix:{self.monitor},server=on,wait=off",
               "-fw_cfg", "name=opt/godwit/test-channel,string=1", "-no-reboot"]
        if firmware == "uefi":
            if not OVMF_CODE.exists():
                raise BootTestFailed(f"{OVMF_CODE} is missing: apt-get install ovmf")
            vars_copy = work / "ovmf-vars.fd"
            shutil.copy(OVMF_VARS, vars_copy)
            cmd += ["-drive", f"if=pflash,format=raw,unit=0,readonly=on,file={OVMF_CODE}",
                    "-drive", f"if=pflash,format=raw,unit=1,file={vars_copy}"]
        with open(work / "qemu.err", "w") as err:
            self.proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=err)

    def serial_text(self) -> str:
        return self.serial.read_text(errors="replace") if self.serial.exists() else ""

    def serial_tail(self, n: int = 50) -> str:
        return "\n".join(self.serial_text().splitlines()[-n:])

    def alive(self) -> bool:
        return self.proc.poll() is None

    def kvm_unusable(self, within: float = 90) -> str | None:
        """Why KVM cannot boot this guest here, or None once the kernel has started. Under nested KVM (a VM in a
        VM) OVMF can stop with an emulation failure, and the BIOS's real-mode disk reads can crawl (minutes for
        the kernel): TCG then boots faster."""
        deadline = time.monotonic() + within
        while time.monotonic() < deadline:
            if "KVM internal error" in (self.work / "qemu.err").read_text(errors="replace"):
                return "KVM stopped the firmware with an emulation failure"
            if "Linux version" in self.serial_text():
                return None
            time.sleep(1)
        return f"the kernel had not started {within:.0f} s after power-on"

    def banner(self, timeout: float) -> dict[str, str]:
        def probe() -> dict[str, str] | None:
            if not self.alive():
                raise BootTestFailed(f"QEMU exited ({self.proc.returncode}): "
                                     f"{(self.work / 'qemu.err').read_text().strip()[-300:]}")
            for line in self.serial_text().splitlines():
                if line.startswith("GODWIT-APPLIANCE "):
                    return dict(kv.split("=", 1) for kv in line.split()[1:] if "=" in kv)
            return None
        return wait_for(probe, timeout=timeout, what="the appliance's banner on the serial console")

    def command(self, line: str) -> str:
        with socket.socket(socket.AF_UNIX) as s:
            s.settimeout(20)
            s.connect(str(self.monitor))
            s.recv(4096)  # greeting and prompt
            s.sendall(line.encode() + b"\n")
            time.sleep(0.5)
            out = b""
            while not out.rstrip().endswith(b"(qemu)"):
                chunk = s.recv(65536)
                if not chunk:
                    break
                out += chunk
            return out.decode(errors="replace")

    def screendump(self, png: Path) -> int:
        ppm = self.work / "screen.ppm"
        ppm.unlink(missing_ok=True)
        self.command(f"screendump {ppm}")
        wait_for(lambda: ppm.exists() and ppm.stat().st_size > 100, timeout=20, what="the screendump", every=0.2)
        time.sleep(0.5)
        data, colours = ppm_to_png(ppm.read_bytes())
        png.write_bytes(data)
        return colours

    def power_off(self, timeout: float = 120) -> None:
        self.command("system_powerdown")
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            raise BootTestFailed(f"the guest did not power off within {timeout:.0f} s of the ACPI power button") \
                from None
        if "reboot: Power down" not in self.serial_text():
            raise BootTestFailed("QEMU exited but the guest's kernel never said it powered down")

    def kill(self) -> None:
        if self.alive():
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait()


class AdminChannel:
    """The guest's admin socket, reached through the forwarded port, as a data directory the CLI can use."""

    def __init__(self, port: int, work: Path) -> None:
        self.data_dir = work / "admin"
        self.data_dir.mkdir(mode=0o700)
        self.proc = subprocess.Popen(["socat", f"UNIX-LISTEN:{self.data_dir / 'admin.sock'},fork,mode=600",
                                      f"TCP:127.0.0.1:{port}"], stderr=subprocess.DEVNULL)

    def cli(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        res = subprocess.run([str(GODWIT), *args, "--data-dir", str(self.data_dir)], capture_output=True, text=True,
                             timeout=60)
        if check and res.returncode != 0:
            raise BootTestFailed(f"`godwit {' '.join(args)}` through the admin channel failed: {res.stderr.strip()}")
        return res

    def json(self, *args: str) -> Any:
        return json.loads(self.cli(*args, "--json").stdout)

    def close(self) -> None:
        self.proc.terminate()
        self.proc.wait()


def sample_disk(path: Path, size: int = 64 << 20) -> None:
    """Text-like, binary-like and incompressible regions, and a hole."""
    rng = random.Random(13)
    with open(path, "wb") as f:
        f.truncate(size)
        f.write(b"".join(f"line {i}: the quick brown godwit flies south\n".encode() for i in range(200_000)))
        f.seek(size // 2)
        f.write(rng.randbytes(8 << 20))


def boot(image: Path, work: Path, firmware: str, clock: Clock) -> Guest:
    """The guest booting: under KVM when it works for this firmware here, else under TCG."""
    guest = Guest(image, work, firmware, clock)
    if guest.accel == "KVM":
        why = guest.kvm_unusable()
        if why is None:
            return guest
        guest.kill()
        clock.step(f"{why} under KVM (nested virtualisation?): booting under TCG instead")
        for leftover in work.iterdir():
            if leftover.is_file() or leftover.is_socket():
                leftover.unlink()
        guest = Guest(image, work, firmware, clock, kvm=False)
    return guest


def full_test(image: Path, work: Path, clock: Clock, shots: Path) -> None:
    guest = boot(image, work, "bios", clock)
    channel: AdminChannel | None = None
    mobility: subprocess.Popen[bytes] | None = None
    try:
        clock.step(f"QEMU running under SeaBIOS ({guest.accel}); management port forwarded to 127.0.0.1:"
                   f"{guest.management}, data port to {guest.data}")
        banner = guest.banner(timeout=600)
        clock.step(f"banner on the serial console: address {banner.get('address')}, management port "
                   f"{banner.get('management-port')}, data port {banner.get('data-port')}, CA fingerprint "
                   f"{banner.get('ca-fingerprint', '')[:23]}…, cache on {banner.get('cache-disk')}")
        if banner.get("cache-disk") != "/dev/vdb":
            raise BootTestFailed(f"the empty second disk (/dev/vdb) is not the cache: the banner says "
                                 f"cache-disk={banner.get('cache-disk')}")
        channel = AdminChannel(guest.admin, work)
        setup = wait_for(lambda: channel.cli("setup", "show", "--json", check=False).returncode == 0
                         and channel.json("setup", "show"), timeout=120, what="the admin channel")
        if setup["ca_fingerprint"].replace(" ", "_") != banner.get("ca-fingerprint"):
            raise BootTestFailed(f"the banner's CA fingerprint {banner.get('ca-fingerprint')} is not the engine's "
                                 f"{setup['ca_fingerprint']}")
        if setup.get("setup_completed_at") is not None:
            raise BootTestFailed("a new appliance already says its first-run setup is done")
        clock.step("admin channel up; the engine's CA fingerprint matches the banner; first-run setup not done")
        channel.cli("ports", "set", "--data", str(guest.data))
        wait_for(lambda: channel.json("ports", "show").get("data_port") == guest.data, timeout=60,
                 what="the data port to move")
        clock.step(f"data port moved to {guest.data} (live rebind in the guest)")

        disk = work / "source-disk.img"
        sample_disk(disk)
        passphrase = work / "passphrase"
        passphrase.write_text(setup["passphrase"] + "\n")
        passphrase.chmod(0o600)
        with open(work / "mobility.log", "wb") as mobility_log:
            mobility = subprocess.Popen(
                [str(GODWIT), "mobility", "run", "--appliance", f"127.0.0.1:{guest.management}", "--passphrase-file",
                 str(passphrase), "--ca-fingerprint", setup["ca_fingerprint"], "--state-dir", str(work / "mobility"),
                 "--disk", str(disk), "--name", SOURCE],
                stdout=mobility_log, stderr=subprocess.STDOUT)
        wait_for(lambda: any(s["name"] == SOURCE for s in channel.json("vm", "list")), timeout=90,
                 what="the host's mobility service to register")
        clock.step(f"mobility service on this machine registered as {SOURCE} (64 MiB sample disk)")
        if channel.cli("policy", "show", "boot-test", check=False).returncode != 0:
            channel.cli("policy", "create", "boot-test", "--crash-consistent-every", "5s", "--retention", "1h",
                        "--app-consistent-every", "off")
        channel.cli("vm", "enable", SOURCE, "--policy", "boot-test")
        clock.step("replication enabled")

        def protected() -> dict[str, Any] | None:
            if mobility is not None and mobility.poll() is not None:
                raise BootTestFailed(f"the mobility service exited: {(work / 'mobility.log').read_text()[-500:]}")
            server = next(s for s in channel.json("vm", "list") if s["name"] == SOURCE)
            return server if server["state"] == "protected" else None
        protected_server = wait_for(protected, timeout=300, what=f"{SOURCE} to be protected")
        points = channel.json("vm", "points", SOURCE)
        clock.step(f"initial replication complete; {len(points)} recovery point(s), state "
                   f"{protected_server['state']}")

        screen(guest, shots / "appliance-screen-bios.png", clock)
        channel.close()
        channel = None
        guest.power_off()
        clock.step("guest powered off cleanly (ACPI power button)")
    except BootTestFailed as exc:
        raise BootTestFailed(f"{exc}\n--- last 50 lines of the serial console ---\n{guest.serial_tail()}") from None
    finally:
        if mobility is not None:
            mobility.terminate()
            mobility.wait()
        if channel is not None:
            channel.close()
        guest.kill()


def screen(guest: Guest, png: Path, clock: Clock) -> None:
    """Waits until the guest's display shows more than a text console, and saves it as ``png``."""
    colours = wait_for(lambda: (c := guest.screendump(png)) > 8 and c, timeout=300,
                       what="the console on the guest's screen (the screendump stayed blank)", every=5)
    clock.step(f"screendump saved: {png} ({colours} colours sampled)")


def uefi_test(image: Path, work: Path, clock: Clock, shots: Path) -> None:
    guest = boot(image, work, "uefi", clock)
    try:
        clock.step(f"QEMU running under UEFI (OVMF, {guest.accel}), virtio-gpu display")
        guest.banner(timeout=600)
        clock.step("UEFI boot reached the banner")
        screen(guest, shots / "appliance-screen-uefi.png", clock)
        guest.power_off()
        clock.step("guest powered off cleanly")
    except BootTestFailed as exc:
        raise BootTestFailed(f"{exc}\n--- last 50 lines of the serial console ---\n{guest.serial_tail()}") from None
    finally:
        guest.kill()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Boot the appliance image under QEMU and replicate into it.")
    parser.add_argument("--image", type=Path, default=REPO / "build" / "godwit-appliance.qcow2")
    parser.add_argument("--ova", type=Path, default=REPO / "build" / "godwit-appliance.ova")
    parser.add_argument("--firmware", choices=("bios", "uefi", "both"), default="both")
    args = parser.parse_args(argv)
    clock = Clock()
    for tool in ("qemu-system-x86_64", "qemu-img", "socat"):
        if shutil.which(tool) is None:
            print(f"boot test: {tool} is missing: apt-get install qemu-system-x86 qemu-utils socat", file=sys.stderr)
            return 2
    for path in (args.image, args.ova):
        if not path.exists():
            print(f"boot test: {path} is missing: build it first with `make appliance`", file=sys.stderr)
            return 2
    try:
        problems = ova.check_ova(args.ova)
        if problems:
            raise BootTestFailed("the OVA is not valid:\n  " + "\n  ".join(problems))
        clock.step(f"OVA checked: descriptor, manifest checksums, stream-optimised VMDK ({args.ova.name})")
        shots = args.image.parent
        if args.firmware in ("bios", "both"):
            with tempfile.TemporaryDirectory(prefix="godwit-boot-") as tmp:
                full_test(args.image.resolve(), Path(tmp), clock, shots)
        if args.firmware in ("uefi", "both"):
            with tempfile.TemporaryDirectory(prefix="godwit-boot-uefi-") as tmp:
                uefi_test(args.image.resolve(), Path(tmp), clock, shots)
    except BootTestFailed as exc:
        print(f"boot test FAILED: {exc}", file=sys.stderr)
        return 1
    clock.step("boot test passed")
    return 0


if __name__ == "__main__":
    sys.exit(main())
