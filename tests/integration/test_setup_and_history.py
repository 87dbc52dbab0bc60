"""The first-run setup's record, the prerequisites and a server's history against a real engine and a real mobility
service: what the wizard, the server detail's charts and the CLI rely on."""

from __future__ import annotations

import asyncio
import json
import os
import time
from collections.abc import Iterator
from typing import Any

import pytest
from PySide6.QtWidgets import QApplication

from app.bridge import EngineBridge
from app.views.server_detail import ServerDetailDialog
from engine.client import AdminClient
from engine.config import DataDir
from engine.errors import EngineError
from engine.links.admin import Hello, SetupChanged
from engine.prerequisites import CHECKS
from tests.appliance import Appliance, Mobility, fill_disk, until, wait_for

#: Seconds between two history samples in these tests (the product takes one every 10 s).
STEP = "0.5"


async def _history(app: Appliance, name: str, span: str) -> object:
    """Ask the engine for a server's history directly (the CLI refuses a bad span before asking)."""
    client = AdminClient(DataDir(app.data_dir))
    try:
        return await client.server_history(name, span)
    finally:
        await client.aclose()


@pytest.fixture
def sampled(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Appliance]:
    """An engine that samples its servers' history twice a second."""
    app = Appliance(tmp_path_factory.mktemp("history"))
    app.start(env={"GODWIT_HISTORY_STEP": STEP})
    yield app
    app.stop()


@pytest.mark.asyncio
async def test_setup_completed_once_and_pushed_to_consoles(appliance: Appliance) -> None:
    """setup_completed_at is None on a new appliance; `godwit setup complete` sets it once (a second run keeps the
    first time), a console's stream receives it, and `setup show` prints it."""
    assert appliance.setup()["setup_completed_at"] is None
    assert "Set-up completed: not yet" in appliance.cli("setup", "show").stdout
    client = AdminClient(DataDir(appliance.data_dir))
    try:
        stream = client.updates()
        hello = await anext(stream)
        assert isinstance(hello, Hello) and hello.setup.setup_completed_at is None
        done = await asyncio.to_thread(appliance.cli, "setup", "complete")
        assert done.returncode == 0, done.stderr
        assert len(done.stdout.strip().splitlines()) == 1 and "setup completed" in done.stdout, done.stdout

        async def pushed() -> SetupChanged:
            async for message in stream:
                if isinstance(message, SetupChanged) and message.setup.setup_completed_at is not None:
                    return message
            raise AssertionError("the stream ended")

        message = await asyncio.wait_for(pushed(), timeout=10)
    finally:
        await client.aclose()
    first = appliance.setup()["setup_completed_at"]
    assert first == message.setup.setup_completed_at
    again = appliance.json("setup", "complete")
    assert again["setup_completed_at"] == first
    assert "Set-up completed: not yet" not in appliance.cli("setup", "show").stdout
    assert [e["code"] for e in appliance.events()].count("setup-completed") == 1


def test_appliance_check_lists_every_prerequisite(appliance: Appliance) -> None:
    """`godwit appliance check --json` answers all six checks, each with what it found (and what to do unless ok);
    the engine's own ports are ok; --only runs one; an unknown check is one line naming the checks."""
    done = appliance.cli("appliance", "check", "--json")
    found: dict[str, Any] = json.loads(done.stdout)
    checks = {c["key"]: c for c in found["checks"]}
    assert list(checks) == list(CHECKS) and found["checked_at"]
    assert all(c["found"] and (c["status"] == "ok") == (c["action"] == "") for c in checks.values()), checks
    assert checks["ports"]["status"] == "ok" and str(appliance.data_port) in checks["ports"]["found"]
    assert checks["target"]["status"] == "ok"
    assert done.returncode == (1 if any(c["status"] == "failed" for c in checks.values()) else 0)
    text = appliance.cli("appliance", "check", "--only", "secret-store")
    assert text.stdout.count("\n") in (1, 2) and "Secret store" in text.stdout, text.stdout
    bad = appliance.cli("appliance", "check", "--only", "nonsense")
    assert bad.returncode == 2 and len(bad.stderr.strip().splitlines()) == 1 and "clock" in bad.stderr


def test_history_of_a_replicating_server(sampled: Appliance) -> None:
    """During initial replication a server's history shows what arrived and was applied, then its RPO; `vm history`
    prints the samples; an unknown server and a bad span are one line each; the day's samples survive a restart of
    the engine; a forgotten server has none."""
    app = sampled
    disk = app.root / "web.img"
    fill_disk(disk, 24 * 1024 * 1024, seed=7)
    mob = Mobility(app, "web", disks=[disk]).start()
    try:
        wait_for(lambda: app.servers().get("web"), what="web to register")
        assert app.cli("vm", "set", "web", "--max-mbps", "48").returncode == 0  # initial replication takes seconds
        app.enable("web")
        wait_for(lambda: app.servers()["web"]["state"] == "protected", timeout=60, what="web to be protected")
        history = wait_for(lambda: (h := app.json("vm", "history", "web"))["samples"]
                           and h["samples"][-1]["rpo_seconds"] is not None and h, what="a sample with an RPO")
    finally:
        mob.stop()
    samples = history["samples"]
    assert history["span"] == "hour" and history["step_seconds"] == float(STEP)
    assert any(s["received_bps"] > 0 for s in samples) and any(s["applied_bps"] > 0 for s in samples), samples
    assert sum(s["received_bps"] for s in samples) * float(STEP) <= 2 * 24 * 1024 * 1024
    assert [s["at"] for s in samples] == sorted(s["at"] for s in samples)

    text = app.cli("vm", "history", "web").stdout.splitlines()
    assert text[1].split() == ["TIME", "IN", "APPLIED", "RPO"] and len(text) >= len(samples) + 2, text[:3]
    assert "one sample every 0.5 s" in text[0] and any("MiB/s" in line or "KiB/s" in line for line in text[2:])
    day = app.json("vm", "history", "web", "--span", "day")
    assert day["span"] == "day" and day["step_seconds"] == 6 * float(STEP)

    bad = app.cli("vm", "history", "nobody")
    assert bad.returncode == 1 and len(bad.stderr.strip().splitlines()) == 1 and "nobody" in bad.stderr, bad.stderr
    bad = app.cli("vm", "history", "web", "--span", "week")  # a usage error: exit 2, the choices named
    assert bad.returncode == 2 and "invalid choice: 'week'" in bad.stderr and "'hour'" in bad.stderr, bad.stderr
    with pytest.raises(EngineError, match="ask for hour or day"):  # the engine refuses it too, in one line
        asyncio.run(_history(app, "web", "week"))

    kept = wait_for(lambda: app.json("vm", "history", "web", "--span", "day")["samples"], what="a day sample")
    app.stop()
    restarted = time.time()
    app.start(env={"GODWIT_HISTORY_STEP": STEP})
    after = app.json("vm", "history", "web", "--span", "day")["samples"]
    assert [s["at"] for s in after[:len(kept)]] == [s["at"] for s in kept]  # the day survives a restart
    assert all(s["at"] > restarted for s in app.json("vm", "history", "web")["samples"])  # the hour starts over

    assert app.cli("vm", "forget", "web").returncode == 0
    assert app.cli("vm", "history", "web").returncode == 1


@pytest.mark.asyncio
@pytest.mark.qt_loop
async def test_server_detail_charts_a_real_history(sampled: Appliance, qapp: QApplication) -> None:
    """The server detail's Charts tab, through the real bridge, charts what a replicating server received and its
    RPO against its policy's threshold, and switches to the day."""
    app = sampled
    disk = app.root / "db.img"
    fill_disk(disk, 16 * 1024 * 1024, seed=11)
    mob = Mobility(app, "db", disks=[disk]).start()
    bridge = EngineBridge(app.data_dir, start_engine=False)
    bridge.start()
    dialog: ServerDetailDialog | None = None
    qapp.setQuitOnLastWindowClosed(False)  # closing the dialog must not end the loop under the test
    try:
        await until(lambda: bridge.state == "attached", what="the console to attach")
        await until(lambda: app.servers().get("db") is not None, what="db to register")
        await asyncio.to_thread(app.enable, "db")
        await until(lambda: app.servers()["db"]["state"] == "protected", timeout=60, what="db to be protected")
        dialog = ServerDetailDialog(bridge, "db")
        dialog.resize(1280, 800)
        dialog.show()
        dialog.tabs.setCurrentWidget(dialog.charts)
        charts = dialog.charts
        while not (charts.rpo.count() and any(p.y() > 0 for p in charts.received.points())):
            await asyncio.sleep(0.2)
            dialog.on_history_timer_timeout()  # the product refreshes every 10 s; the test does not wait for it
        assert charts.stack.currentWidget() is not charts.empty_label and not dialog.message.isVisible()
        assert charts.rpo_axis.titleText() == "RPO (s)"
        assert charts.limit.isVisible() and charts.limit.points()[0].y() == 60.0  # the test policy's 1 min
        if os.environ.get("GODWIT_SHOTS"):  # a look at the real thing: GODWIT_SHOTS=DIR
            dialog.grab().save(os.path.join(os.environ["GODWIT_SHOTS"], "charts-real-1280x800.png"))
        charts.span_buttons["day"].click()
        await until(lambda: charts.history is not None and charts.history.span == "day", what="the day")
    finally:
        if dialog is not None:
            dialog.close()
        mob.stop()
        await bridge.aclose()
        qapp.setQuitOnLastWindowClosed(True)
