"""The mobility bundle's install files (installers/mobility/), without root, network or a built bundle.

install.sh and uninstall.sh run with bash against a temporary root (``DESTDIR``) and a stand-in bundle
whose interpreter is a stub; the systemd unit's ExecStart runs through sh with the launcher replaced by
printf, so the arguments the service would get are compared word for word. The real bundle is built and
tested on Debian 11 and 12 roots by installers/mobility/test_bundle.sh (root, minutes).
"""

from __future__ import annotations

import os
import re
import shutil
import stat
import subprocess
from pathlib import Path

import pytest

INSTALLERS = Path(__file__).resolve().parents[2] / "installers" / "mobility"
FP = "3f1a" + "0" * 58 + "ab"
FP_CANONICAL = ":".join(re.findall("..", FP.upper()))


@pytest.fixture
def bundle(tmp_path: Path) -> Path:
    """An unpacked bundle as the tarball holds it, its interpreter a stub that prints its arguments."""
    top = tmp_path / "godwit-mobility-9.9.9"
    (top / "bin").mkdir(parents=True)
    (top / "lib/python3.11").mkdir(parents=True)
    (top / "share/godwit-mobility").mkdir(parents=True)
    python = top / "bin/python3.11"
    python.write_text('#!/bin/sh\nprintf "%s\\n" "PYTHONPATH=${PYTHONPATH-unset}" "$@"\n')
    python.chmod(0o755)
    for name in ("install.sh", "uninstall.sh"):
        shutil.copy(INSTALLERS / name, top / name)
    shutil.copy(INSTALLERS / "godwit", top / "bin/godwit")
    for name in ("godwit-mobility.service", "mobility.conf"):
        shutil.copy(INSTALLERS / name, top / "share/godwit-mobility" / name)
    (top / "VERSION").write_text("9.9.9\n")
    return top


@pytest.fixture
def source(tmp_path: Path) -> dict[str, Path]:
    """What an admin has on the source server: a passphrase file and two disks (image files)."""
    passphrase = tmp_path / "passphrase.txt"
    passphrase.write_text("the passphrase\n")
    passphrase.chmod(0o600)
    disks = [tmp_path / "disk0.img", tmp_path / "disk1.img"]
    for d in disks:
        d.write_bytes(bytes(4096))
    return {"passphrase": passphrase, "disk0": disks[0], "disk1": disks[1]}


def run(script: Path, *args: str, destdir: Path) -> subprocess.CompletedProcess[str]:
    env = {"PATH": os.environ["PATH"], "DESTDIR": str(destdir), "LANG": "C.UTF-8"}
    return subprocess.run(["bash", str(script), *args], capture_output=True, text=True, env=env, timeout=30)


def good_args(source: dict[str, Path], *extra: str) -> list[str]:
    return ["--appliance", "appliance.example:443", "--ca-fingerprint", FP, "--passphrase-file",
            str(source["passphrase"]), "--disk", str(source["disk0"]), "--disk", str(source["disk1"]), *extra]


def everything_under(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*")) if root.exists() else []


def test_install_writes_the_code_the_settings_and_the_unit(bundle: Path, source: dict[str, Path],
                                                         tmp_path: Path) -> None:
    """Good arguments: the bundle is copied to /opt/godwit-mobility, mobility.conf (0600) holds each value as
    systemd's EnvironmentFile reads it (the fingerprint canonical, DISKS space separated), the unit is in
    /etc/systemd/system, and the state folder exists, 0700."""
    dest = tmp_path / "dest"
    res = run(bundle / "install.sh", *good_args(source, "--name", "db-01", "--no-start"), destdir=dest)
    assert res.returncode == 0, res.stderr
    assert res.stderr == ""
    assert "Installed the Godwit mobility service 9.9.9" in res.stdout
    assert (dest / "opt/godwit-mobility/bin/godwit").is_file()
    assert (dest / "opt/godwit-mobility/VERSION").read_text() == "9.9.9\n"
    conf = dest / "etc/godwit/mobility.conf"
    assert stat.S_IMODE(conf.stat().st_mode) == 0o600
    values = dict(re.findall(r'^([A-Z_]+)="(.*)"$', conf.read_text(), re.M))
    assert values == {"APPLIANCE": "appliance.example:443", "CA_FINGERPRINT": FP_CANONICAL,
                      "PASSPHRASE_FILE": str(source["passphrase"]), "DISKS": f"{source['disk0']} {source['disk1']}",
                      "NAME": "db-01"}
    assert (dest / "etc/systemd/system/godwit-mobility.service").read_text() == \
        (INSTALLERS / "godwit-mobility.service").read_text()
    assert stat.S_IMODE((dest / "var/lib/godwit-mobility").stat().st_mode) == 0o700


def test_an_upgrade_in_place_keeps_the_state(bundle: Path, source: dict[str, Path], tmp_path: Path) -> None:
    """Installing again replaces the code (nothing of the old copy is left) and the settings, and keeps what the
    service wrote in /var/lib/godwit-mobility."""
    dest = tmp_path / "dest"
    assert run(bundle / "install.sh", *good_args(source, "--name", "db-01"), destdir=dest).returncode == 0
    (dest / "var/lib/godwit-mobility/client.pem").write_text("the service's certificate")
    (dest / "opt/godwit-mobility/stale.py").write_text("from the old version")
    res = run(bundle / "install.sh", *good_args(source), destdir=dest)
    assert res.returncode == 0, res.stderr
    assert (dest / "var/lib/godwit-mobility/client.pem").read_text() == "the service's certificate"
    assert not (dest / "opt/godwit-mobility/stale.py").exists()
    assert not (dest / "opt/godwit-mobility.old").exists()
    assert 'NAME=""' in (dest / "etc/godwit/mobility.conf").read_text()


#: Good arguments, {P} the passphrase file and {D} a disk: each bad case below changes one thing about them.
GOOD = ["--appliance", "h:443", "--ca-fingerprint", FP, "--passphrase-file", "{P}", "--disk", "{D}"]
BAD = [
    ([], "--appliance is missing"),
    (["--appliance"], "--appliance needs a value"),
    ([*GOOD, "--bogus"], "unknown argument '--bogus'"),
    ([*GOOD, "--disk"], "--disk needs a value"),
    (["--appliance", "--no-start", *GOOD[2:]], "--appliance needs a value, not the option --no-start"),
    (GOOD[:6], "--disk is missing"),
    ([*GOOD[:4], *GOOD[6:]], "--passphrase-file is missing"),
    (["--appliance", "a b:443", *GOOD[2:]], "is not HOST or HOST:PORT"),
    (["--appliance", "host:0", *GOOD[2:]], "port 0 is not between 1 and 65535"),
    (["--appliance", "host:99999", *GOOD[2:]], "port 99999 is not between 1 and 65535"),
    (["--appliance", 'x"; rm -rf /', *GOOD[2:]], "must not contain quotes"),
    (["--appliance", "a" * 100_000, *GOOD[2:]], "100000 characters long"),
    ([*GOOD, "--appliance", "other:443"], "--appliance is given twice"),
    ([*GOOD[:2], "--ca-fingerprint", "nonsense", *GOOD[4:]], "is not a SHA-256 fingerprint"),
    ([*GOOD[:2], "--ca-fingerprint", FP[:-1], *GOOD[4:]], "is not a SHA-256 fingerprint"),
    ([*GOOD[:4], "--passphrase-file", "/nonexistent/p", *GOOD[6:]], "does not exist"),
    ([*GOOD[:4], "--passphrase-file", "/", *GOOD[6:]], "is not a file"),
    ([*GOOD, "--name", "two words"], "is not a server name"),
    ([*GOOD, "--name", "$(reboot)"], "must not contain quotes, backslashes, $"),
    ([*GOOD, "--disk", "/nonexistent/disk"], "does not exist"),
    ([*GOOD, "--disk", "/"], "is neither a block device nor a disk image file"),
    ([*GOOD, "--disk", "{D}"], "is given twice"),
]


@pytest.mark.parametrize(("args", "message"), BAD, ids=[m for _, m in BAD])
def test_bad_arguments_are_one_line_exit_2_and_nothing_written(bundle: Path, source: dict[str, Path],
                                                               tmp_path: Path, args: list[str], message: str) -> None:
    """Each bad argument: exit code 2, one line on stderr saying what is wrong (and, for a wrong value, what to
    give), nothing on stdout, and nothing written under the target root."""
    dest = tmp_path / "dest"
    full = [a.replace("{P}", str(source["passphrase"])).replace("{D}", str(source["disk0"])) for a in args]
    res = run(bundle / "install.sh", *full, destdir=dest)
    assert res.returncode == 2, (res.stdout, res.stderr)
    assert res.stdout == ""
    assert len(res.stderr.splitlines()) == 1, res.stderr
    assert message in res.stderr
    assert len(res.stderr) < 400  # a pasted 100 kB value is not echoed back whole
    assert everything_under(dest) == []


def test_a_folder_that_is_not_a_bundle_is_refused(bundle: Path, source: dict[str, Path], tmp_path: Path) -> None:
    """install.sh copied out of its bundle says where to run it from instead of installing a broken copy."""
    lone = tmp_path / "lone"
    lone.mkdir()
    shutil.copy(bundle / "install.sh", lone / "install.sh")
    dest = tmp_path / "dest"
    res = run(lone / "install.sh", *good_args(source), destdir=dest)
    assert res.returncode == 1
    assert "is not an unpacked mobility bundle" in res.stderr
    assert everything_under(dest) == []


def test_uninstall_keeps_settings_and_state_and_purge_deletes_them(bundle: Path, source: dict[str, Path],
                                                                   tmp_path: Path) -> None:
    """uninstall.sh removes the code and the unit and keeps mobility.conf and /var/lib/godwit-mobility (a
    reinstall carries on as the same server); --purge deletes them too; a wrong option changes nothing."""
    dest = tmp_path / "dest"
    assert run(bundle / "install.sh", *good_args(source), destdir=dest).returncode == 0
    (dest / "var/lib/godwit-mobility/client.pem").write_text("cert")
    installed = dest / "opt/godwit-mobility/uninstall.sh"
    res = run(installed, "--purg", destdir=dest)
    assert (res.returncode, res.stderr.count("\n")) == (2, 1)
    assert (dest / "opt/godwit-mobility").exists()
    res = run(installed, destdir=dest)
    assert res.returncode == 0, res.stderr
    assert not (dest / "opt/godwit-mobility").exists()
    assert not (dest / "etc/systemd/system/godwit-mobility.service").exists()
    assert (dest / "var/lib/godwit-mobility/client.pem").read_text() == "cert"
    assert (dest / "etc/godwit/mobility.conf").exists()
    assert run(bundle / "install.sh", *good_args(source), destdir=dest).returncode == 0
    res = run(dest / "opt/godwit-mobility/uninstall.sh", "--purge", destdir=dest)
    assert res.returncode == 0, res.stderr
    assert not (dest / "var/lib/godwit-mobility").exists()
    assert not (dest / "etc/godwit").exists()


def exec_start_argv(env: dict[str, str]) -> list[str]:
    """The arguments the unit's ExecStart gives the launcher, with ``env`` as the EnvironmentFile's values: the
    line run through sh as systemd would ($$ is a $ to sh), printf standing in for the launcher."""
    unit = (INSTALLERS / "godwit-mobility.service").read_text()
    (line,) = re.findall(r"^ExecStart=(.*)$", unit, re.M)
    command = line.replace("$$", "$").replace("exec /opt/godwit-mobility/bin/godwit", "exec printf %s\\\\0")
    res = subprocess.run(["bash", "-c", 'eval "exec $UNIT_COMMAND"'], capture_output=True, timeout=10,
                         env={"PATH": os.environ["PATH"], "UNIT_COMMAND": command, **env})
    assert res.returncode == 0, res.stderr
    return res.stdout.decode().split("\0")[:-1]


def test_the_unit_runs_the_bundled_service_with_the_settings() -> None:
    """ExecStart runs /opt/godwit-mobility/bin/godwit mobility run with one --disk per word of DISKS, --name only
    when NAME is set (a name is one argument), the state in /var/lib/godwit-mobility; as root (no User=: it reads
    block devices and tracefs), restarted on failure but not after a usage error (exit 2)."""
    settings = {"APPLIANCE": "10.0.0.5:443", "CA_FINGERPRINT": FP_CANONICAL, "PASSPHRASE_FILE": "/etc/godwit/p",
                "DISKS": "/dev/sda /dev/disk/by-id/x*", "NAME": ""}
    common = ["mobility", "run", "--appliance", "10.0.0.5:443", "--ca-fingerprint", FP_CANONICAL,
              "--passphrase-file", "/etc/godwit/p", "--state-dir", "/var/lib/godwit-mobility"]
    assert exec_start_argv(settings) == [*common, "--disk", "/dev/sda", "--disk", "/dev/disk/by-id/x*"]
    assert exec_start_argv({**settings, "NAME": "db 01"}) == \
        [*common, "--name", "db 01", "--disk", "/dev/sda", "--disk", "/dev/disk/by-id/x*"]
    unit = (INSTALLERS / "godwit-mobility.service").read_text()
    for line in ("EnvironmentFile=/etc/godwit/mobility.conf", "Restart=on-failure", "StateDirectory=godwit-mobility",
                 "StateDirectoryMode=0700", "RestartPreventExitStatus=2", "WantedBy=multi-user.target"):
        assert re.search(f"^{re.escape(line)}$", unit, re.M), line
    assert not re.search(r"^User=", unit, re.M)


def test_the_settings_template_has_the_keys_install_writes_and_the_unit_reads() -> None:
    """mobility.conf (the .deb's conffile) lists, empty, exactly the keys install.sh writes and the unit uses, so a
    .deb install filled in by hand and an install.sh install are the same."""
    template = dict(re.findall(r'^([A-Z_]+)="(.*)"$', (INSTALLERS / "mobility.conf").read_text(), re.M))
    written = set(re.findall(r'echo "([A-Z_]+)=', (INSTALLERS / "install.sh").read_text()))
    used = set(re.findall(r"\$\$\{?([A-Z_]+)", (INSTALLERS / "godwit-mobility.service").read_text()))
    assert template == dict.fromkeys(written, "")
    assert used == set(template)


def test_the_launcher_finds_its_bundle_through_a_link_and_ignores_the_admins_python(bundle: Path,
                                                                                    tmp_path: Path) -> None:
    """bin/godwit called through a symbolic link elsewhere runs its own bin/python3.11 with -P -m engine and the
    arguments, with the admin's PYTHONPATH/PYTHONHOME cleared (they would be for another Python)."""
    link = tmp_path / "godwit"
    link.symlink_to(bundle / "bin/godwit")
    env = {"PATH": "/usr/bin:/bin", "PYTHONPATH": "/usr/lib/python3.9", "PYTHONHOME": "/usr"}
    res = subprocess.run([str(link), "mobility", "run", "--help"], capture_output=True, text=True, env=env,
                         timeout=10)
    assert res.returncode == 0, res.stderr
    assert res.stdout.splitlines() == ["PYTHONPATH=unset", "-P", "-m", "engine", "mobility", "run", "--help"]
