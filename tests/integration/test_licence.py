"""The licence on a real engine whose clock is moved by libfaketime (the engine's processes only; the
machine's clock and the mobility services keep the real time): warnings, expiry, activation, rollback."""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from engine.licence import DAY, WARN_AT_DAYS, Licence, encode_licence
from tests.appliance import Appliance, Mobility, change_disk, fake_clock, make_disk, replicating, wait_for

MiB = 1024 * 1024
VENDOR = Ed25519PrivateKey.generate()  # the test's vendor key; the engine trusts it through GODWIT_LICENCE_PUBLIC_KEY


class Licensed:
    """An engine on libfaketime with the test's vendor key; ``shift("+150d")`` moves its clock."""

    def __init__(self, app: Appliance) -> None:
        self.app = app
        self.offset = app.root / "clock_offset"
        public = app.root / "vendor-test.pub"
        public.write_bytes(VENDOR.public_key().public_bytes(serialization.Encoding.PEM,
                                                            serialization.PublicFormat.SubjectPublicKeyInfo))
        self.env = {**fake_clock(self.offset), "GODWIT_LICENCE_PUBLIC_KEY": str(public),
                    "GODWIT_LICENCE_CHECK_EVERY": "1"}

    def shift(self, offset: str) -> None:
        self.offset.write_text(f"{offset}\n")

    def show(self) -> dict[str, Any]:
        return self.app.json("license", "show")  # type: ignore[no-any-return]

    def codes(self, code: str) -> list[dict[str, Any]]:
        return [e for e in self.app.events() if e["code"] == code]

    def wait_event(self, code: str, count: int) -> dict[str, Any]:
        """The ``count``-th event ``code`` (the engine checks the licence every second here)."""
        return wait_for(lambda: len(found := self.codes(code)) >= count and found[count - 1], timeout=20,
                        what=f"event {code} #{count}")

    def licence_file(self, path: Path, *, days: float, max_servers: int | None, key: Ed25519PrivateKey = VENDOR) \
            -> Path:
        now = time.time()
        text = encode_licence(Licence(licence_id=str(uuid.uuid4()), appliance_id=self.app.setup()["appliance_id"],
                                      licensee="Example Ltd", max_servers=max_servers, issued_at=now,
                                      expires_at=now + days * DAY), key)
        path.write_text(text)
        return path


@pytest.fixture
def licensed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Licensed]:
    lic = Licensed(Appliance(tmp_path_factory.mktemp("licence")))
    lic.app.start(env=lic.env)
    yield lic
    lic.app.stop()


def one_line(text: str) -> str:
    lines = text.strip().splitlines()
    assert len(lines) == 1, text
    assert "Traceback" not in text
    return lines[0]


def test_warnings_expiry_and_activation(licensed: Licensed, tmp_path: Path) -> None:
    """The clock moved to each threshold gives its event and alarm; once the evaluation ended, registering and
    enabling are refused in one line while a protected server keeps making byte-exact points; a licence file
    lifts it; refused files change nothing; the clock set back is one event and gives no days back."""
    app = licensed.app
    shown = licensed.show()
    assert (shown["state"], shown["days_left"], shown["alarm"], shown["threshold"]) == ("evaluation", 180, "none",
                                                                                          None)
    mob, disk = replicating(app, "lic-01", 4 * MiB, seed=11)
    waiting = Mobility(app, "lic-02", disks=[make_disk(app.root / "lic-02.img", 2 * MiB)]).start()
    try:
        wait_for(lambda: app.servers().get("lic-02"), what="lic-02 to register")

        for n, days in enumerate(WARN_AT_DAYS, start=1):
            licensed.shift(f"+{180 - days}d")
            event = licensed.wait_event("licence-expiring", n)
            assert event["severity"] == ("warning" if days > 7 else "error")
            assert f"ends in {days} day" in event["message"] and "godwit license activate FILE" in event["message"]
            shown = wait_for(lambda d=days: (s := licensed.show())["threshold"] == d and s,  # type: ignore[misc]
                             what=f"license show at {days} days")
            assert shown["days_left"] == days and shown["state"] == "evaluation"
            assert shown["alarm"] == ("warning" if days > 7 else "critical") and "move to a fresh appliance" in \
                shown["message"]
        assert len(licensed.codes("licence-expiring")) == len(WARN_AT_DAYS)  # each once

        licensed.shift("+180d")
        assert licensed.wait_event("licence-expired", 1)["severity"] == "error"
        shown = licensed.show()
        assert (shown["state"], shown["days_left"], shown["threshold"], shown["alarm"]) == ("expired", 0, 0,
                                                                                            "critical")

        # No new server: neither registered ...
        refused = Mobility(app, "lic-03", disks=[make_disk(app.root / "lic-03.img", 2 * MiB)]).run()
        assert refused.returncode == 1
        line = one_line(refused.stderr)
        assert "evaluation licence ended on" in line and "godwit license activate FILE" in line, line
        assert "lic-03" not in app.servers()
        # ... nor enabled.
        res = app.cli("vm", "enable", "lic-02", "--policy", "fast")
        assert res.returncode == 1
        line = one_line(res.stderr)
        assert "evaluation licence ended on" in line and "no new server can be enabled" in line, line
        assert not app.servers()["lic-02"]["replicating"]

        # What replicates goes on: a new point after a change, exported byte for byte.
        change_disk(disk, seed=12, writes=6)
        t = time.time()
        point = app.point_after("lic-01", t)
        assert app.export("lic-01", point["id"], tmp_path / "point").read_bytes() == disk.read_bytes()

        # A file signed by another key is refused and changes nothing.
        forged = licensed.licence_file(tmp_path / "forged.licence", days=400, max_servers=None,
                                       key=Ed25519PrivateKey.generate())
        res = app.cli("license", "activate", str(forged))
        assert res.returncode == 1 and "not signed by the Godwit licence key" in one_line(res.stderr)
        assert licensed.show()["state"] == "expired"

        # A licence for two servers lifts it.
        good = licensed.licence_file(tmp_path / "good.licence", days=400.5, max_servers=2)
        res = app.cli("license", "activate", str(good))
        assert res.returncode == 0, res.stderr
        shown = licensed.show()
        assert (shown["state"], shown["licensee"], shown["max_servers"], shown["alarm"]) == ("active", "Example Ltd",
                                                                                            2, "none")
        assert shown["days_left"] == 221  # 400.5 days from now, on a clock 180 days ahead: away from a day's edge
        assert licensed.wait_event("licence-activated", 1)["severity"] == "info"
        res = app.cli("vm", "enable", "lic-02", "--policy", "fast")
        assert res.returncode == 0, res.stderr

        # The clock set back 180 days: one event, and the licence is reckoned from the latest time seen.
        licensed.shift("+0")
        event = licensed.wait_event("clock-rolled-back", 1)
        assert "180 days behind" in event["message"], event
        shown = licensed.show()
        assert shown["clock_rolled_back"] and shown["days_left"] == 221 and shown["state"] == "active"
    finally:
        mob.stop()
        waiting.stop()
    # An engine restart while the clock is still behind: no second event, no days back.
    app.stop()
    app.start(env=licensed.env)
    time.sleep(6)  # more than one licence check of the engine
    shown = licensed.show()
    assert shown["clock_rolled_back"] and shown["days_left"] == 221
    assert len(licensed.codes("clock-rolled-back")) == 1
    for log in (app.data_dir / "logs").glob("*.log"):
        assert "Traceback" not in log.read_text(errors="replace"), log.name
    assert json.loads((app.data_dir / "licence.json").read_text())["file"] == good.read_text()


def test_an_evaluation_clock_set_back_gives_no_days_back(licensed: Licensed) -> None:
    """During the evaluation, a clock set back from day 100 to day 0 is reported once and leaves 80 days, not 180."""
    licensed.shift("+100d")
    wait_for(lambda: licensed.show()["days_left"] == 80, what="80 days left")
    time.sleep(6)  # the engine's next check records the new high-water mark
    licensed.shift("+0")
    licensed.wait_event("clock-rolled-back", 1)
    shown = licensed.show()
    assert (shown["state"], shown["days_left"], shown["clock_rolled_back"]) == ("evaluation", 80, True)
    assert licensed.codes("licence-expiring") == []
