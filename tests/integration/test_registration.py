"""Source servers register over the management port and heartbeat over mutual TLS."""

from __future__ import annotations

import os
import stat

from tests.appliance import Appliance, Mobility, make_disk, wait_for


def test_register_heartbeat_and_inventory(appliance: Appliance) -> None:
    """A registered server appears with its disks, OS and version, heartbeats, and reports a grown disk's size."""
    disks = [make_disk(appliance.root / "a.img", 16 << 20), make_disk(appliance.root / "b.img", 4 << 20)]
    mob = Mobility(appliance, "web-01", disks=disks).start()
    try:
        server = wait_for(lambda: appliance.servers().get("web-01"), what="web-01 to register")
        assert server["state"] == "registered"
        assert server["health"] == "healthy"
        assert [(d["path"], d["size"]) for d in server["disks"]] == [(str(disks[0]), 16 << 20),
                                                                     (str(disks[1]), 4 << 20)]
        assert server["total_size"] == 20 << 20
        assert server["os"] and server["hostname"] and server["agent_version"]
        first = server["last_heartbeat"]
        wait_for(lambda: appliance.servers()["web-01"]["last_heartbeat"] > first, what="a later heartbeat")
        shown = appliance.json("vm", "show", "web-01")
        assert shown["server_id"] == server["server_id"]
        # The client key stays private to the state directory.
        assert stat.S_IMODE(os.stat(mob.state_dir / "client.key").st_mode) == 0o600
        # A disk that grows is reported with its new size at the next heartbeat.
        with open(disks[1], "r+b") as f:
            f.truncate(8 << 20)
        wait_for(lambda: appliance.servers()["web-01"]["disks"][1]["size"] == 8 << 20, what="the new disk size")
    finally:
        code, err = mob.stop()
    assert code == 0, err
    assert "Traceback" not in err
    codes = [e["code"] for e in appliance.events()]
    assert codes.count("server-registered") == 1


def test_restarted_mobility_reuses_registration(appliance: Appliance) -> None:
    """A restarted mobility service keeps its registration and needs no passphrase to go on heartbeating."""
    mob = Mobility(appliance, "db-01").start()
    first = wait_for(lambda: appliance.servers().get("db-01"), what="db-01 to register")
    mob.stop()
    # Restart with a passphrase file that no longer exists: a registered service does not need it.
    mob.args[mob.args.index("--passphrase-file") + 1] = str(appliance.root / "gone.txt")
    mob.start()
    try:
        wait_for(lambda: appliance.servers()["db-01"]["last_heartbeat"] > first["last_heartbeat"] + 0.5,
                 what="heartbeats from the restarted service")
        assert appliance.servers()["db-01"]["server_id"] == first["server_id"]
    finally:
        mob.stop()
    assert [e["code"] for e in appliance.events()].count("server-registered") == 1


def test_wrong_passphrase_is_refused(appliance: Appliance) -> None:
    """A wrong passphrase stops the mobility service with one line, registers nothing, and is an event."""
    wrong = appliance.root / "wrong.txt"
    wrong.write_text("AAAA-BBBB-CCCC-DDDD-EEEE-FFFF\n")
    res = Mobility(appliance, "bad-01", passphrase_file=wrong).run()
    assert res.returncode == 1
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and "refused the registration passphrase" in lines[0], res.stderr
    assert appliance.servers() == {}
    assert "registration-refused" in [e["code"] for e in appliance.events()]


def test_wrong_fingerprint_is_refused_before_the_passphrase_is_sent(appliance: Appliance) -> None:
    """A CA fingerprint that does not match stops the mobility service before it sends the passphrase."""
    real = appliance.setup()["ca_fingerprint"]
    fake = ("00" if not real.startswith("00") else "11") + real[2:]
    res = Mobility(appliance, "bad-02", fingerprint=fake).run()
    assert res.returncode == 1
    assert len(res.stderr.strip().splitlines()) == 1
    assert "CA fingerprint is" in res.stderr and "not the" in res.stderr
    assert appliance.servers() == {}
    assert "registration-refused" not in [e["code"] for e in appliance.events()]


def test_malformed_inputs_of_the_mobility_service(appliance: Appliance) -> None:
    """Bad passphrase files, fingerprints, disks or addresses stop the mobility service with one line, no traceback."""
    cases = {
        "binary passphrase file": ("passphrase", b"\xff\xfe\x00garbage"),
        "empty passphrase file": ("passphrase", b""),
        "huge passphrase file": ("passphrase", b"A" * 5000),
        "bad fingerprint": ("fingerprint", "not-a-fingerprint"),
        "missing disk": ("disk", appliance.root / "nope.img"),
        "bad appliance address": ("address", "127.0.0.1:99999"),
    }
    for label, (kind, value) in cases.items():
        kwargs: dict[str, object] = {}
        if kind == "passphrase":
            f = appliance.root / "pp.bin"
            f.write_bytes(value)  # type: ignore[arg-type]
            kwargs["passphrase_file"] = f
        elif kind == "fingerprint":
            kwargs["fingerprint"] = value
        elif kind == "disk":
            kwargs["disks"] = [value]
        else:
            kwargs["address"] = value
        res = Mobility(appliance, "x", **kwargs).run()  # type: ignore[arg-type]
        assert res.returncode != 0, label
        assert len(res.stderr.strip().splitlines()) == 1, (label, res.stderr)
        assert "Traceback" not in res.stderr, label
    assert appliance.servers() == {}


def test_name_taken_is_refused(appliance: Appliance) -> None:
    """A server that registers under a name already taken is refused."""
    first = Mobility(appliance, "dup").start()
    try:
        wait_for(lambda: appliance.servers().get("dup"), what="dup to register")
        res = Mobility(appliance, "dup", state_dir=appliance.root / "other-state").run()
        assert res.returncode == 1
        assert "already registered" in res.stderr
    finally:
        first.stop()


def test_unreachable_appliance_is_retried_and_said(tmp_path_factory: object) -> None:
    """A mobility service that cannot reach the appliance keeps retrying, says so, and registers once it is up."""
    import pytest

    root = tmp_path_factory.mktemp("late")  # type: ignore[attr-defined]
    app = Appliance(root)
    app.start()
    passphrase = app.write_passphrase()
    fingerprint = app.setup()["ca_fingerprint"]
    app.stop()
    mob = Mobility(app, "late-01", passphrase_file=passphrase, fingerprint=fingerprint).start()
    try:
        # While the appliance is down the service keeps trying and says so.
        import time

        time.sleep(2.0)
        assert mob.proc is not None and mob.proc.poll() is None
        app.start()
        wait_for(lambda: app.servers().get("late-01"), timeout=30, what="registration after the appliance came up")
    finally:
        _, err = mob.stop()
        app.stop()
    assert "unreachable" in err and "Retrying in" in err
    assert "reachable again" in err
    if "Traceback" in err:
        pytest.fail(err)


def test_forget_revokes_the_certificate(appliance: Appliance) -> None:
    """Forgetting a server revokes its certificate: its mobility service stops with one line and cannot come back."""
    mob = Mobility(appliance, "gone-01").start()
    wait_for(lambda: appliance.servers().get("gone-01"), what="gone-01 to register")
    res = appliance.cli("vm", "forget", "gone-01")
    assert res.returncode == 0, res.stderr
    code, err = mob.wait_exit()
    assert code == 1
    assert err.strip().splitlines()[-1].startswith("godwit: This server's registration was revoked")
    assert "gone-01" not in appliance.servers()
    # Restarting it with the revoked certificate is refused again, without re-registering.
    res = Mobility(appliance, "gone-01").run()
    assert res.returncode == 1 and "revoked" in res.stderr
    assert "gone-01" not in appliance.servers()
    assert "heartbeat.refused" in appliance.log("engine")


def test_rotate_passphrase(appliance: Appliance) -> None:
    """After a passphrase rotation only the new passphrase registers, and registered servers keep heartbeating."""
    old = appliance.write_passphrase()
    mob = Mobility(appliance, "keep-01", passphrase_file=old).start()
    try:
        before = wait_for(lambda: appliance.servers().get("keep-01"), what="keep-01 to register")
        res = appliance.cli("setup", "rotate-passphrase", "--json")
        assert res.returncode == 0, res.stderr
        new = appliance.setup()["passphrase"]
        assert new != old.read_text().strip()
        # The old passphrase no longer registers anyone ...
        refused = Mobility(appliance, "new-01", passphrase_file=old).run()
        assert refused.returncode == 1 and "passphrase" in refused.stderr
        # ... the new one does, and servers registered before keep heartbeating.
        fresh = appliance.root / "new.txt"
        fresh.write_text(new)
        mob2 = Mobility(appliance, "new-02", passphrase_file=fresh).start()
        wait_for(lambda: appliance.servers().get("new-02"), what="new-02 to register")
        mob2.stop()
        wait_for(lambda: appliance.servers()["keep-01"]["last_heartbeat"] > before["last_heartbeat"] + 0.5,
                 what="keep-01 to keep heartbeating")
    finally:
        mob.stop()
    assert "passphrase-rotated" in [e["code"] for e in appliance.events()]


def test_passphrase_guessing_is_slowed_down(appliance: Appliance) -> None:
    """After five wrong passphrases an address must wait a minute, even with the right passphrase."""
    wrong = appliance.root / "guess.txt"
    wrong.write_text("GUESS-GUESS-GUESS\n")
    messages = [Mobility(appliance, f"guess-{i}", passphrase_file=wrong).run().stderr.strip() for i in range(6)]
    assert all("refused the registration passphrase" in m for m in messages[:5])
    assert messages[5].startswith("godwit: Too many wrong passphrases from 127.0.0.1: wait a minute")
    # Even the right passphrase waits out the window: the limit is per address, not per guess.
    res = Mobility(appliance, "honest-01").run()
    assert "Too many wrong passphrases" in res.stderr
    assert [e["code"] for e in appliance.events()].count("registration-refused") == 5
