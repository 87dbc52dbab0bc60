"""Build the Godwit appliance from this checkout: ``make appliance`` (as root, on Debian 12).

    python3 installers/appliance/build.py [--out build] [--version V] [--disk-gib 16] [--deb-only]

Steps, each printed with its time:

1. **Base** (cached): ``mmdebstrap`` makes a Debian 12 root file system with the kernel, GRUB (BIOS and UEFI),
   systemd and what the console's Qt needs on the frame buffer. It is kept as
   ``build/cache/base-<hash>.tar``, keyed by the package list, so a rebuild downloads nothing from Debian.
2. **godwit-appliance .deb**: in a copy of the base, a venv at ``/opt/godwit`` with Godwit's pinned dependencies
   from PyPI (downloaded once into ``build/cache/appliance-wheels``), Godwit's own tree at ``/opt/godwit/lib/godwit``,
   the systemd units, the appliance's scripts and the mobility bundle it serves to source servers
   (``build/godwit-mobility-<version>-linux-x86_64.tar.gz``, from ``installers/mobility/build_bundle.sh``); packed
   with ``dpkg-deb``.
3. **Disk**: a raw disk with GPT (a BIOS boot partition, an EFI system partition, the root partition), the base
   unpacked into it, the .deb installed with ``dpkg -i``, GRUB installed for both firmwares, the kiosk enabled.
4. ``build/godwit-appliance.qcow2`` and ``build/godwit-appliance.ova`` (:mod:`ova`).

Every output is written under a temporary name and renamed when complete, so an interrupted build never leaves
a half-written image under the final name. Errors end the build with one line (exit 2).
"""

from __future__ import annotations

import argparse
import hashlib
import os
import re
import shutil
import struct
import subprocess
import sys
import time
import tomllib
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
sys.path.insert(0, str(HERE))

import ova  # noqa: E402

SUITE = "bookworm"
#: Debian packages of the appliance's root file system (the .deb's dependencies are among them, so the disk
#: step installs it without downloading anything).
BASE_PACKAGES = [
    # boot: kernel, both GRUB platforms, systemd, growing the root partition
    "linux-image-amd64", "initramfs-tools", "grub-pc-bin", "grub-efi-amd64-bin", "grub2-common",
    "systemd", "systemd-sysv", "systemd-resolved", "systemd-timesyncd", "udev", "dbus", "libpam-systemd",
    "kmod", "e2fsprogs", "dosfstools", "fdisk", "cloud-guest-utils", "iproute2", "procps", "ca-certificates",
    "less", "nano",
    # Godwit: Debian's Python 3.11 (the venv's interpreter) and what the console's Qt loads
    "python3", "python3-venv", "libgl1", "libegl1", "libxkbcommon0", "xkb-data", "libfontconfig1",
    "libglib2.0-0", "libdbus-1-3", "fonts-dejavu-core", "libwayland-client0", "libwayland-cursor0",
    "libwayland-egl1", "socat",
]
#: What the godwit-appliance package depends on (a subset of BASE_PACKAGES).
DEB_DEPENDS = [
    "python3.11", "python3-venv", "systemd", "libgl1", "libegl1", "libxkbcommon0", "xkb-data", "libfontconfig1",
    "libglib2.0-0", "libdbus-1-3", "fonts-dejavu-core", "libwayland-client0", "libwayland-cursor0",
    "libwayland-egl1", "socat", "iproute2", "e2fsprogs", "cloud-guest-utils", "util-linux",
]
#: Units the package installs; it enables only the engine. The image enables the others.
UNITS = ["godwit-engine", "godwit-kiosk", "godwit-banner", "godwit-cache-disk", "godwit-grow-root",
         "godwit-test-channel"]
IMAGE_UNITS = ["godwit-engine", "godwit-kiosk", "godwit-banner", "godwit-cache-disk", "godwit-grow-root",
               "godwit-test-channel", "systemd-networkd", "systemd-resolved", "systemd-timesyncd"]
#: Godwit's own tree in the package (the code finds resources/ beside engine/ and app/).
TREE = ["engine", "app", "resources", "README.md", "pyproject.toml"]
MIN_FREE_GIB = 8
SECTOR = 512


class BuildError(Exception):
    """One line for the admin: what went wrong and what to do."""


def log(step: str, started: float) -> None:
    print(f"[{time.monotonic() - started:7.1f} s] {step}", flush=True)


def run(*cmd: str | Path, quiet: bool = True, **kw: object) -> subprocess.CompletedProcess[str]:
    """Run a command; a failure raises BuildError with the command and the last lines of its output."""
    proc = subprocess.run([str(c) for c in cmd], text=True, capture_output=quiet, **kw)  # type: ignore[call-overload]
    if proc.returncode != 0:
        tail = ""
        if quiet:
            lines = (proc.stdout + proc.stderr).strip().splitlines()
            tail = ": " + " | ".join(lines[-6:]) if lines else ""
        raise BuildError(f"`{' '.join(str(c) for c in cmd)[:200]}` failed (exit {proc.returncode}){tail}")
    return proc


def chroot(root: Path, *cmd: str) -> subprocess.CompletedProcess[str]:
    env = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "LC_ALL": "C.UTF-8", "HOME": "/root",
           "DEBIAN_FRONTEND": "noninteractive"}
    return run("chroot", root, *cmd, env=env)


def project_version() -> str:
    return str(tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["version"])


def pinned_requirements() -> list[str]:
    """The runtime dependencies, pinned exactly as pyproject.toml pins them."""
    deps = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["dependencies"]
    return [str(d) for d in deps]


# --- preflight ----------------------------------------------------------------------------------------------

def preflight(out: Path) -> None:
    """Root, tools, disk space and the package registries, before anything is written."""
    if os.geteuid() != 0:
        raise BuildError("Building the appliance needs root (loop devices, chroot, mounts): run `sudo make appliance`.")
    tools = {"mmdebstrap": "mmdebstrap", "qemu-img": "qemu-utils", "sgdisk": "gdisk", "mkfs.vfat": "dosfstools",
             "mcopy": "mtools",
             "mkfs.ext4": "e2fsprogs", "losetup": "mount", "dpkg-deb": "dpkg", "unshare": "util-linux"}
    missing = sorted({pkg for tool, pkg in tools.items() if shutil.which(tool) is None})
    if missing:
        raise BuildError(f"Missing build tools: install them with `apt-get install {' '.join(missing)}`.")
    out.mkdir(parents=True, exist_ok=True)
    free = shutil.disk_usage(out).free / 2**30
    if free < MIN_FREE_GIB:
        raise BuildError(f"Only {free:.1f} GiB free under {out}: the build needs {MIN_FREE_GIB} GiB. Free some space "
                         "or pass --out on a larger disk.")
    for url in ("http://deb.debian.org/debian/dists/bookworm/Release", "https://pypi.org/simple/pip/"):
        probe = subprocess.run(["python3", "-c", "import sys, urllib.request; urllib.request.urlopen(sys.argv[1], "
                                "timeout=15).read(1)", url], capture_output=True, text=True)
        if probe.returncode != 0:
            host = url.split("/")[2]
            raise BuildError(f"{host} cannot be reached: the build downloads Debian packages and Python wheels from "
                             "it. Check the network (or a proxy in http_proxy/https_proxy) and start again.")


# --- mounts and loop devices ----------------------------------------------------------------------------------

@contextmanager
def mounted(*mounts: tuple[list[str], Path]) -> Iterator[None]:
    """Mount each (arguments, target) in order; unmount all (lazily if busy) when done."""
    done: list[Path] = []
    try:
        for args, target in mounts:
            target.mkdir(parents=True, exist_ok=True)
            run("mount", *args, target)
            done.append(target)
        yield
    finally:
        for target in reversed(done):
            if subprocess.run(["umount", "-R", str(target)], capture_output=True).returncode != 0:
                subprocess.run(["umount", "-R", "-l", str(target)], capture_output=True)


def system_mounts(root: Path) -> list[tuple[list[str], Path]]:
    return [(["-t", "proc", "proc"], root / "proc"), (["--rbind", "/sys"], root / "sys"),
            (["--rbind", "/dev"], root / "dev"),
            (["-t", "tmpfs", "tmpfs"], root / "tmp")]


@contextmanager
def partition_device(image: Path, first: int, last: int) -> Iterator[str]:
    """A loop device over sectors ``first``..``last`` of ``image``: this build machine's kernel may lack partition
    tables (no ``loopNpM`` devices), so each partition gets its own loop device at its offset."""
    dev = run("losetup", "-f", "--show", "-o", str(first * SECTOR), "--sizelimit", str((last - first + 1) * SECTOR),
              image).stdout.strip()
    try:
        yield dev
    finally:
        subprocess.run(["losetup", "-d", dev], capture_output=True)


def partition_sectors(image: Path, number: int) -> tuple[int, int]:
    info = run("sgdisk", "-i", str(number), image).stdout
    first = re.search(r"First sector: (\d+)", info)
    last = re.search(r"Last sector: (\d+)", info)
    if not first or not last:
        raise BuildError(f"sgdisk did not describe partition {number} of {image}")
    return int(first[1]), int(last[1])


def install_bios_boot(image: Path, core: Path, boot: Path, core_sector: int) -> None:
    """What ``grub-bios-setup`` does, for an image file: GRUB's boot.img in the protective MBR (its BIOS parameter
    block and partition table kept) pointing at core.img in the BIOS boot partition, and core.img's first sector
    (diskboot) given the blocklist of the rest. Offsets: GRUB 2.06 ``include/grub/i386/pc/boot.h``."""
    mbr_code = bytearray(boot.read_bytes())
    core_img = bytearray(core.read_bytes())
    if len(mbr_code) != SECTOR:
        raise BuildError(f"{boot} is not a 512-byte GRUB boot image")
    sectors = -(-len(core_img) // SECTOR)
    core_img += bytes(sectors * SECTOR - len(core_img))
    start, _, segment = struct.unpack_from("<QHH", core_img, SECTOR - 12)
    if start != 2 or segment != 0x820:
        raise BuildError(f"{core} does not start with GRUB's diskboot image (blocklist {start}, {segment:#x})")
    with open(image, "r+b") as f:
        mbr = f.read(SECTOR)
        mbr_code[0x03:0x5A] = mbr[0x03:0x5A]  # BIOS parameter block
        mbr_code[0x1B8:0x1FE] = mbr[0x1B8:0x1FE]  # disk signature and the protective partition table
        struct.pack_into("<Q", mbr_code, 0x5C, core_sector)  # where core.img starts
        mbr_code[0x64] = 0xFF  # boot from the drive the BIOS booted
        mbr_code[0x66:0x68] = b"\x90\x90"  # a hard disk: skip the floppy check
        struct.pack_into("<QH", core_img, SECTOR - 12, core_sector + 1, sectors - 1)
        f.seek(0)
        f.write(mbr_code)
        f.seek(core_sector * SECTOR)
        f.write(core_img)


def download_wheels(wheels: Path) -> Path:
    """The pinned wheels in ``wheels``: downloaded once by this machine's pip (with its index and proxy settings),
    then reused. Debian 12's Python is 3.11 on glibc 2.36 like the build machine, so the same wheels fit."""
    wheels.mkdir(parents=True, exist_ok=True)
    requirements = wheels / "requirements.txt"
    requirements.write_text("\n".join(pinned_requirements()) + "\n")
    run(sys.executable, "-m", "pip", "download", "-q", "--disable-pip-version-check", "--only-binary=:all:",
        "-d", wheels, "-r", requirements)
    return wheels


# --- steps ------------------------------------------------------------------------------------------------------

def base_tarball(cache: Path) -> Path:
    """The Debian root file system, made once per package list."""
    key = hashlib.sha256(" ".join([SUITE, *sorted(BASE_PACKAGES)]).encode()).hexdigest()[:12]
    tar = cache / f"base-{SUITE}-{key}.tar"
    if tar.exists():
        return tar
    partial = tar.with_suffix(".tar.partial")
    partial.unlink(missing_ok=True)
    run("mmdebstrap", "--variant=minbase", "--components=main", f"--include={','.join(BASE_PACKAGES)}",
        "--aptopt=Acquire::Retries \"3\"", "--dpkgopt=path-exclude=/usr/share/doc/*",
        "--dpkgopt=path-include=/usr/share/doc/*/copyright", "--dpkgopt=path-exclude=/usr/share/man/*",
        "--dpkgopt=path-exclude=/usr/share/locale/*", "--dpkgopt=path-include=/usr/share/locale/locale.alias",
        "--format=tar", SUITE, partial, "http://deb.debian.org/debian")
    os.rename(partial, tar)
    return tar


def unpack(tar: Path, root: Path) -> None:
    run("tar", "--numeric-owner", "--xattrs", "--xattrs-include=*", "-xpf", tar, "-C", root)


# The Qt modules the console imports (app/) and the plugins a display needs. The rest of what PySide6's wheels
# carry (QtWebEngine alone is 200 MB, QtMultimedia brings FFmpeg) is left out of the package, keeping every
# library those need: the closure ldd reports, checked again once the rest is gone.
QT_MODULES = ("QtCore", "QtGui", "QtWidgets", "QtCharts")
QT_PLUGIN_DIRS = ("platforms", "platformthemes", "platforminputcontexts", "imageformats", "iconengines",
                  "wayland-decoration-client", "wayland-graphics-integration-client", "wayland-shell-integration",
                  "xcbglintegrations", "egldeviceintegrations")
QT_UNUSED = ("Qt/qml", "Qt/libexec", "Qt/metatypes", "Qt/resources", "Qt/translations/qtwebengine_locales",
             "include", "typesystems", "glue")


def tree_size(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file() and not f.is_symlink())


def linked_libraries(root: Path, files: list[Path]) -> str:
    """ldd's report for ``files`` (paths inside ``root``), run in the root so its own libraries resolve."""
    inside = ["/" + str(f.relative_to(root)) for f in files]
    return chroot(root, "sh", "-c", 'for f in "$@"; do echo "== $f"; ldd "$f"; done', "ldd", *inside).stdout


def prune_qt(root: Path, site: Path) -> int:
    """Drop the Qt modules, plugins and data the console never loads; the bytes saved."""
    pyside = site / "PySide6"
    before = tree_size(pyside)
    plugins = [f for d in QT_PLUGIN_DIRS for f in (pyside / "Qt/plugins" / d).glob("*.so")]
    modules = [pyside / f"{name}.abi3.so" for name in QT_MODULES]
    linked = linked_libraries(root, modules + plugins)
    needed = {Path(lib).name for lib in re.findall(r"=> (\S+)", linked)}
    # Plugins for platforms the appliance does not have (GTK themes, X11 extras) miss system libraries already.
    missing_before = set(re.findall(r"^\s*(\S+) => not found", linked, re.M))
    for module in pyside.glob("Qt*.abi3.so"):
        if module not in modules:
            module.unlink()
            module.with_name(module.name.replace(".abi3.so", ".pyi")).unlink(missing_ok=True)
    for plugin_dir in (pyside / "Qt/plugins").iterdir():
        if plugin_dir.name not in QT_PLUGIN_DIRS:
            shutil.rmtree(plugin_dir)
    for lib in (pyside / "Qt/lib").iterdir():
        if lib.is_file() and ".so" in lib.name and lib.name not in needed:
            lib.unlink()
    for unused in QT_UNUSED:
        shutil.rmtree(pyside / unused, ignore_errors=True)
    left = [f for f in pyside.rglob("*.so*") if f.is_file()]
    missing = sorted(set(re.findall(r"^\s*(\S+) => not found", linked_libraries(root, left), re.M)) - missing_before)
    if missing:
        raise BuildError(f"pruning Qt left libraries unresolved: {', '.join(missing)}: "
                         "add what needs them to QT_MODULES or QT_PLUGIN_DIRS in installers/appliance/build.py")
    return before - tree_size(pyside)


def build_deb(base: Path, work: Path, cache: Path, out: Path, version: str) -> Path:
    """godwit-appliance_<version>_amd64.deb: /opt/godwit (venv + tree), units, appliance scripts."""
    root = work / "builder"
    shutil.rmtree(root, ignore_errors=True)
    root.mkdir(parents=True)
    unpack(base, root)
    wheels = download_wheels(cache / "appliance-wheels")
    opt = root / "opt/godwit"
    tree = opt / "lib/godwit"
    tree.mkdir(parents=True)
    for name in TREE:
        src = REPO / name
        if src.is_dir():
            shutil.copytree(src, tree / name, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
        else:
            shutil.copy2(src, tree / name)
    with mounted(*system_mounts(root), (["--bind", "-o", "ro", str(wheels)], root / "var/cache/godwit-wheels")):
        (root / "tmp/requirements.txt").write_text("\n".join(pinned_requirements()) + "\n")
        chroot(root, "python3", "-m", "venv", "/opt/godwit")
        chroot(root, "/opt/godwit/bin/pip", "install", "-q", "--disable-pip-version-check", "--no-compile",
               "--no-index", "--find-links", "/var/cache/godwit-wheels", "-r", "/tmp/requirements.txt")
        site = chroot(root, "/opt/godwit/bin/python", "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])")
        site_dir = root / site.stdout.strip().lstrip("/")
        (site_dir / "godwit.pth").write_text("/opt/godwit/lib/godwit\n")
        shutil.rmtree(site_dir / "PySide6/scripts", ignore_errors=True)
        saved = prune_qt(root, site_dir)
        chroot(root, "env", "QT_QPA_PLATFORM=offscreen", "/opt/godwit/bin/python", "-c",
               "from PySide6.QtWidgets import QApplication; from PySide6.QtCharts import QChartView; "
               "app = QApplication([]); view = QChartView(); view.show(); app.processEvents()")
        print(f"{'':12}Qt modules the console does not use, left out: {saved / 2**20:.0f} MiB", flush=True)
        # Byte-compiled now: under ProtectSystem=strict the services cannot write __pycache__ later.
        chroot(root, "/opt/godwit/bin/python", "-m", "compileall", "-q", "-j", "2", "/opt/godwit")
        # The launcher: the console script pip would write, without installing the tree as a package.
        launcher = opt / "bin/godwit"
        launcher.write_text("#!/opt/godwit/bin/python\nimport sys\n\nfrom engine.cli import main\n\n"
                            "sys.exit(main())\n")
        launcher.chmod(0o755)
        chroot(root, "/opt/godwit/bin/godwit", "--help")
    # Drop what pip left that the appliance never runs.
    for junk in ("bin/pip", "bin/pip3", "bin/pip3.11", "bin/Activate.ps1"):
        (opt / junk).unlink(missing_ok=True)

    pkg = work / "deb"
    shutil.rmtree(pkg, ignore_errors=True)
    (pkg / "opt").mkdir(parents=True)
    os.rename(opt, pkg / "opt/godwit")
    bundle = out / f"godwit-mobility-{project_version()}-linux-x86_64.tar.gz"
    if not bundle.exists():
        raise BuildError(f"{bundle.name} is missing: build the mobility bundle first "
                         "(`bash installers/mobility/build_bundle.sh`, which `make appliance` runs).")
    served = pkg / "opt/godwit/share/godwit/mobility"
    served.mkdir(parents=True)
    shutil.copy2(bundle, served / bundle.name)
    files = HERE / "files"
    scripts = pkg / "opt/godwit/lib/godwit-appliance"
    scripts.mkdir(parents=True)
    for script in (files / "bin").iterdir():
        shutil.copy2(script, scripts / script.name)
    units = pkg / "lib/systemd/system"
    units.mkdir(parents=True)
    for unit in UNITS:
        shutil.copy2(files / "systemd" / f"{unit}.service", units / f"{unit}.service")
    (pkg / "etc/pam.d").mkdir(parents=True)
    shutil.copy2(files / "etc/pam.d-godwit-kiosk", pkg / "etc/pam.d/godwit-kiosk")
    (pkg / "etc/modules-load.d").mkdir(parents=True)
    (pkg / "etc/modules-load.d/godwit.conf").write_text(
        "# QEMU's fw_cfg: the boot test's switch (godwit-test-channel)\nqemu_fw_cfg\n")
    debian = pkg / "DEBIAN"
    debian.mkdir()
    size_kib = sum(f.stat().st_size for f in pkg.rglob("*") if f.is_file() and not f.is_symlink()) // 1024
    (debian / "control").write_text(
        "Package: godwit-appliance\n"
        f"Version: {version}\n"
        "Architecture: amd64\n"
        "Maintainer: Godwit <appliance@godwit.invalid>\n"
        f"Installed-Size: {size_kib}\n"
        f"Depends: {', '.join(DEB_DEPENDS)}\n"
        "Section: admin\n"
        "Priority: optional\n"
        "Description: Godwit replication appliance (engine, appliance agents and console)\n"
        " The engine runs as the systemd service godwit-engine (user godwit, data in /var/lib/godwit).\n"
        " The console can run full screen on the machine's display: systemctl enable --now godwit-kiosk.\n")
    (debian / "conffiles").write_text("/etc/pam.d/godwit-kiosk\n/etc/modules-load.d/godwit.conf\n")
    for script in ("postinst", "prerm", "postrm"):
        shutil.copy2(HERE / "deb" / script, debian / script)
        (debian / script).chmod(0o755)
    deb = out / f"godwit-appliance_{version}_amd64.deb"
    partial = out / f".{deb.name}.partial"
    run("dpkg-deb", "--root-owner-group", "-Zzstd", "-z9", "--build", pkg, partial)
    os.rename(partial, deb)
    shutil.rmtree(root, ignore_errors=True)
    return deb


def build_disk(base: Path, deb: Path, work: Path, raw: Path, size_gib: int) -> None:
    """The bootable raw disk: GPT, BIOS boot + ESP + root, Debian with Godwit, GRUB for BIOS and UEFI."""
    raw.unlink(missing_ok=True)
    with open(raw, "wb") as f:
        f.truncate(size_gib * 2**30)
    run("sgdisk", "-Z", "-n1:2048:+1M", "-t1:EF02", "-c1:bios-boot", "-n2:0:+127M", "-t2:EF00", "-c2:EFI",
        "-n3:0:0", "-t3:8304", "-c3:godwit-root", raw)
    bios_boot, esp, root = (partition_sectors(raw, n) for n in (1, 2, 3))
    mnt = work / "mnt"
    files = HERE / "files/etc"
    with partition_device(raw, *esp) as esp_dev, partition_device(raw, *root) as root_dev:
        run("mkfs.vfat", "-F", "32", "-n", "GODWIT-EFI", esp_dev)
        run("mkfs.ext4", "-q", "-L", "godwit-root", root_dev)
        with mounted((["-o", "noatime", root_dev], mnt)):
            unpack(base, mnt)
            # The ESP is written with mtools, not mounted: the build machine's kernel may lack vfat.
            (mnt / "boot/efi").mkdir(parents=True, exist_ok=True)
            with mounted(*system_mounts(mnt)):
                shutil.copy2(deb, mnt / "tmp" / deb.name)
                chroot(mnt, "dpkg", "-i", f"/tmp/{deb.name}")
                configure_image(mnt)
                # GRUB from the image's own packages: modules beside the menu, a core for each firmware that
                # finds the root file system by its label.
                (mnt / "boot/grub").mkdir(parents=True, exist_ok=True)
                shutil.copy2(files / "grub.cfg", mnt / "boot/grub/grub.cfg")
                shutil.copy2(files / "grub-early.cfg", mnt / "tmp/grub-early.cfg")
                for platform in ("i386-pc", "x86_64-efi"):
                    shutil.copytree(mnt / "usr/lib/grub" / platform, mnt / "boot/grub" / platform, dirs_exist_ok=True)
                chroot(mnt, "grub-mkimage", "-O", "i386-pc", "-o", "/tmp/core.img", "-c", "/tmp/grub-early.cfg",
                       "-p", "/boot/grub", "biosdisk", "part_gpt", "ext2", "search", "search_label")
                chroot(mnt, "grub-mkimage", "-O", "x86_64-efi", "-o", "/tmp/BOOTX64.EFI", "-c",
                       "/tmp/grub-early.cfg", "-p", "/boot/grub", "part_gpt", "ext2", "fat", "search",
                       "search_label", "normal", "configfile", "efi_gop", "all_video")
                shutil.copy2(mnt / "tmp/core.img", work / "core.img")
                shutil.copy2(mnt / "tmp/BOOTX64.EFI", work / "BOOTX64.EFI")
                shutil.copy2(mnt / "usr/lib/grub/i386-pc/boot.img", work / "boot.img")
        run("e2fsck", "-fy", root_dev)
        # The removable-media path: every UEFI firmware boots it without a boot entry in its NVRAM.
        run("mmd", "-i", esp_dev, "::/EFI", "::/EFI/BOOT")
        run("mcopy", "-i", esp_dev, work / "BOOTX64.EFI", "::/EFI/BOOT/BOOTX64.EFI")
    core_size = (work / "core.img").stat().st_size
    if core_size > (bios_boot[1] - bios_boot[0] + 1) * SECTOR:
        raise BuildError(f"GRUB's core image ({core_size} bytes) does not fit the BIOS boot partition")
    install_bios_boot(raw, work / "core.img", work / "boot.img", bios_boot[0])


def configure_image(mnt: Path) -> None:
    """What makes the Debian root an appliance: identity, network, mounts, units, the kiosk."""
    files = HERE / "files"
    (mnt / "etc/hostname").write_text("godwit-appliance\n")
    (mnt / "etc/hosts").write_text("127.0.0.1\tlocalhost\n127.0.1.1\tgodwit-appliance\n::1\tlocalhost ip6-localhost\n")
    (mnt / "etc/fstab").write_text("LABEL=godwit-root\t/\text4\terrors=remount-ro,noatime\t0\t1\n"
                                   "LABEL=GODWIT-EFI\t/boot/efi\tvfat\tumask=0077,nofail\t0\t2\n")
    (mnt / "etc/systemd/network").mkdir(parents=True, exist_ok=True)
    shutil.copy2(files / "etc/50-dhcp.network", mnt / "etc/systemd/network/50-dhcp.network")
    for unit in IMAGE_UNITS:
        chroot(mnt, "systemctl", "enable", "--quiet", unit)
    chroot(mnt, "systemctl", "set-default", "--quiet", "graphical.target")
    # Each VM made from the image gets its own machine id at first boot.
    (mnt / "etc/machine-id").write_text("")
    (mnt / "var/lib/dbus/machine-id").unlink(missing_ok=True)
    resolv = mnt / "etc/resolv.conf"
    resolv.unlink(missing_ok=True)
    resolv.symlink_to("../run/systemd/resolve/stub-resolv.conf")
    for leftover in ("var/cache/apt/archives", "var/lib/apt/lists"):
        for f in (mnt / leftover).glob("*"):
            if f.is_file():
                f.unlink()


def build(args: argparse.Namespace) -> None:
    started = time.monotonic()
    out: Path = args.out.resolve()
    cache = out / "cache"
    work = out / "work"
    preflight(out)
    cache.mkdir(parents=True, exist_ok=True)
    work.mkdir(parents=True, exist_ok=True)
    version = args.version or project_version()
    log(f"building Godwit appliance {version} into {out}", started)
    base = base_tarball(cache)
    log(f"base root file system: {base.name} ({base.stat().st_size / 2**20:.0f} MiB)", started)
    deb = args.deb or build_deb(base, work, cache, out, version)
    log(f"package: {deb.name} ({deb.stat().st_size / 2**20:.0f} MiB)", started)
    if args.deb_only:
        return
    raw = work / "disk.raw"
    build_disk(base, deb, work, raw, args.disk_gib)
    log(f"disk: GPT, BIOS + UEFI GRUB, {args.disk_gib} GiB virtual", started)
    qcow2 = out / "godwit-appliance.qcow2"
    partial = out / ".godwit-appliance.qcow2.partial"
    run("qemu-img", "convert", "-f", "raw", "-O", "qcow2", "-o", "compression_type=zlib", "-c", raw, partial)
    os.rename(partial, qcow2)
    log(f"qcow2: {qcow2.name} ({qcow2.stat().st_size / 2**20:.0f} MiB)", started)
    if args.no_ova:
        return
    ova_path = out / "godwit-appliance.ova"
    ova.build_ova(raw, ova_path, version=version, work=work)
    log(f"ova: {ova_path.name} ({ova_path.stat().st_size / 2**20:.0f} MiB)", started)
    raw.unlink()
    shutil.rmtree(work, ignore_errors=True)
    log("done", started)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Build the Godwit appliance image (qcow2, OVA) and its .deb.")
    parser.add_argument("--out", type=Path, default=REPO / "build", help="output folder (default: build/)")
    parser.add_argument("--version", help="package version (default: pyproject.toml's)")
    parser.add_argument("--disk-gib", type=int, default=16, help="virtual size of the OS disk (default 16)")
    parser.add_argument("--deb-only", action="store_true", help="stop after the godwit-appliance package")
    parser.add_argument("--deb", type=Path, help="use this godwit-appliance package instead of building one")
    parser.add_argument("--no-ova", action="store_true", help="stop after the qcow2 (to try a change with the boot "
                        "test sooner)")
    args = parser.parse_args(argv)
    if os.environ.get("GODWIT_BUILD_NS") != "1" and os.geteuid() == 0:
        # A private mount namespace: whatever happens, no mount of the build outlives it.
        os.environ["GODWIT_BUILD_NS"] = "1"
        os.execvp("unshare", ["unshare", "--mount", "--propagation", "private", sys.executable, __file__,
                              *(argv if argv is not None else sys.argv[1:])])
    try:
        build(args)
    except BuildError as exc:
        print(f"appliance build failed: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("appliance build interrupted: nothing was written under the final names", file=sys.stderr)
        return 130
    except OSError as exc:
        print(f"appliance build failed: {exc.strerror or exc} ({exc.filename or 'no file'}); free disk space or "
              "fix the path and start again", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
