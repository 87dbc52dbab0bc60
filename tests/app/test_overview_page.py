"""The Overview page: servers by health (each a click into the Servers page's filter), the appliance's health against
its thresholds, the throughput now and the top problems with their actions — driven by a fake bridge with the
bridge's signals and commands."""

from __future__ import annotations

import asyncio
from dataclasses import replace
from typing import Any

import pytest
import shiboken6
from PySide6.QtCore import QLocale, QObject, Signal
from PySide6.QtWidgets import QApplication, QPushButton

from app.bridge import (
    AgentUpdate,
    ApplianceHealth,
    EngineError,
    Health,
    HealthCause,
    LicenceStatus,
    ServerState,
    ServerStatus,
    UpdatesStatus,
)
from app.models.servers import HEALTH_FILTERS, STATE_FILTERS, ServerFilter
from app.views import overview_page
from app.views.overview_page import PROBLEMS_SHOWN, OverviewPage
from engine.records import AgentLife, DiskStatus, HealthAlert  # test data only
from tests.appliance import until

NOW = 1_700_000_000.0
MiB = 1 << 20
GiB = 1 << 30
CPU_ALERT = HealthAlert(metric="cpu", level="warning", value=86.0, threshold=80.0,
                        message="The appliance's CPU has been above 80 % busy for 15 min (now 86 %), so replication "
                                "slows down: find what else runs on this machine or give it more CPUs.")


def server(name: str, **changes: Any) -> ServerStatus:
    fields: dict[str, Any] = dict(
        server_id=f"id-{name}", name=name, hostname=f"{name}.acme.lan", os="Ubuntu 22.04", agent_version="0.1.0",
        state=ServerState.PROTECTED, health=Health.HEALTHY, health_cause=None, health_detail=None,
        registered_at=NOW - 86400, last_heartbeat=NOW - 5, address="10.0.0.7",
        disks=(DiskStatus("/dev/sda", 40 * GiB, throughput_bps=2 * MiB),), replicating=True, policy="default",
        newest_data_at=NOW - 60, rpo_threshold=900, last_recovery_point=NOW - 120)
    fields.update(changes)
    return ServerStatus(**fields)


def health(**changes: Any) -> ApplianceHealth:
    fields: dict[str, Any] = dict(
        level="healthy", sampled_at=NOW - 10, cpu_percent=12.0, memory_percent=41.0, cache_free_percent=62.0,
        cache_mount="/var/lib/godwit", backlog_bytes=300 * MiB, apply_rate_bps=50 * MiB,
        backlog_drain_seconds=6.0,
        agents=(AgentLife("manager", NOW - 3, 3.0), AgentLife("process-server", NOW - 2, 2.0)))
    fields.update(changes)
    return ApplianceHealth(**fields)


def licence(alarm: str = "none", **changes: Any) -> LicenceStatus:
    fields: dict[str, Any] = dict(state="evaluation", days_left=5 if alarm != "none" else 60,
                                  expires_at=NOW + 5 * 86400, activated_at=None, licensee=None, max_servers=None,
                                  evaluation_started_at=NOW,
                                  alarm=alarm, message="The evaluation ends in 5 days: activate a licence to keep "
                                  "replicating." if alarm != "none" else "")
    fields.update(changes)
    return LicenceStatus(**fields)


def updates(*agents: AgentUpdate) -> UpdatesStatus:
    return UpdatesStatus(mode="manual", window="03:00", feed_url=None, agents=agents)


class FakeBridge(QObject):
    """The bridge's signals, last-known values and the overview's commands; records calls, answers from
    ``answers`` (an exception is raised); while ``gate`` is unset a command waits for it."""

    connection_changed = Signal(str, str)
    servers_reset = Signal(list)
    server_updated = Signal(object)
    server_removed = Signal(str)
    health_changed = Signal(object)
    updates_changed = Signal(object)
    licence_changed = Signal(object)

    def __init__(self) -> None:
        super().__init__()
        self.state = "attached"
        self.health: ApplianceHealth | None = health()
        self.updates: UpdatesStatus | None = None
        self.licence: LicenceStatus | None = None
        self.calls: list[tuple[str, Any]] = []
        self.answers: dict[str, Any] = {}
        self.gate: asyncio.Event | None = None

    async def _answer(self, name: str, *args: Any) -> Any:
        self.calls.append((name, args))
        await asyncio.sleep(0.01)
        if self.gate is not None:
            await self.gate.wait()
        answer = self.answers.get(name)
        if isinstance(answer, BaseException):
            raise answer
        return answer

    async def resync(self, name: str) -> ServerStatus:
        return await self._answer("resync", name)  # type: ignore[no-any-return]

    async def update_mobility(self, names: list[str]) -> None:
        await self._answer("update_mobility", names)

    def set_health(self, h: ApplianceHealth | None) -> None:
        self.health = h
        self.health_changed.emit(h)


def _page(bridge: FakeBridge) -> OverviewPage:
    page = OverviewPage(bridge)  # type: ignore[arg-type]
    page.resize(1130, 760)
    page.show()
    return page


def _buttons(page: OverviewPage) -> list[list[str]]:
    return [[b.text() for b in row.buttons.values()] for row in page.problem_rows]


def mix() -> list[ServerStatus]:
    """40 healthy servers (2 of them not replicating), 3 with a warning, 1 critical."""
    servers = [server(f"web-{i:02d}") for i in range(38)]
    servers += [server(f"idle-{i}", replicating=False, policy=None, state=ServerState.REGISTERED, disks=())
                for i in range(2)]
    servers += [server(f"db-{i}", health=Health.WARNING, health_cause=HealthCause.RPO_EXCEEDED,
                       health_detail=f"The RPO of db-{i} is 21 min, above its policy's 15 min.") for i in range(3)]
    servers.append(server("erp-01", health=Health.CRITICAL, health_cause=HealthCause.SEGMENT_CORRUPT,
                          state=ServerState.ERROR, health_detail="Segment 812 of disk 0 was refused by the target. "
                          "It was not applied; resync this server."))
    return servers


@pytest.mark.asyncio
@pytest.mark.qt_loop
async def test_counts_per_health_and_the_tiles_filters(qapp: QApplication, qtbot: Any) -> None:
    """Each tile counts the servers of its health (and those not replicating); a click emits the filter the Servers
    page's ``show_filter(health, state=...)`` accepts, and the counts follow updates and removals."""
    bridge = FakeBridge()
    page = _page(bridge)
    bridge.servers_reset.emit(mix())
    page.refresh()
    counts = {key: tile.count.text() for key, tile in page.tiles.items()}
    assert counts == {("healthy", "all"): "40", ("warning", "all"): "3", ("critical", "all"): "1",
                      ("all", "not-replicating"): "2"}
    for key, tile in page.tiles.items():
        with qtbot.waitSignal(page.filter_requested) as emitted:
            tile.click()
        assert tuple(emitted.args) == key
        health, state = emitted.args
        assert health in HEALTH_FILTERS and state in STATE_FILTERS
        ServerFilter("", health, state)  # the Servers page's own check: raises on a filter it does not know
    with qtbot.waitSignal(page.filter_requested) as emitted:
        page.more_button.click()
    assert emitted.args == ["all", "attention"]

    bridge.server_updated.emit(server("db-0"))
    bridge.server_removed.emit("erp-01")
    await until(lambda: page.tiles[("critical", "all")].count.text() == "0", what="the counts to follow")
    assert page.tiles[("warning", "all")].count.text() == "2"
    assert page.tiles[("healthy", "all")].count.text() == "41"
    page.close()


@pytest.mark.asyncio
@pytest.mark.qt_loop
async def test_appliance_health_against_its_thresholds(qapp: QApplication) -> None:
    """Each metric shows its value against its warning and critical thresholds and its level from the engine's
    alerts; the worst level is the headline; a value not measured yet says so."""
    bridge = FakeBridge()
    page = _page(bridge)
    values = {m: labels[2].text() for m, labels in page.metric_labels.items()}
    assert values == {"cpu": "12 % busy", "memory": "41 % used", "cache-free": "62 % free on /var/lib/godwit",
                      "backlog": "300.0 MiB waiting, applied in 6 s", "agent": "all 2 running"}
    limits = {m: labels[3].text() for m, labels in page.metric_labels.items()}
    assert limits["cpu"] == "warning above 80 %, critical above 95 %, for 15 min"
    assert limits["memory"] == "warning above 80 %, critical above 95 %, for 15 min"
    assert limits["cache-free"] == "warning below 30 %, critical below 25 %"
    assert limits["backlog"] == "warning when it needs more than 30 min to apply, critical beyond 45 min"
    assert limits["agent"] == "critical when one shows no sign of life for 15 min"
    assert page.headline.text() == "Healthy: every measure is within its thresholds"
    assert {labels[4].text() for labels in page.metric_labels.values()} == {"● OK"}

    silent = HealthAlert(metric="agent", level="critical", value=1000.0, threshold=900.0, agent="process-server",
                         message="Appliance agent process-server has not shown it runs for 16 min: read its log.")
    bridge.set_health(health(level="critical", cpu_percent=86.0, memory_percent=None, alerts=(silent, CPU_ALERT),
                             agents=(AgentLife("manager", NOW, 1.0), AgentLife("process-server", NOW - 1000, 1000.0))))
    await until(lambda: page.headline.text() == "Critical: 2 alerts", what="the new health")
    assert page.headline.property("tone") == "bad"  # console.qss colours it from the palette in use
    marks = {m: labels[4].text() for m, labels in page.metric_labels.items()}
    assert marks == {"cpu": "▲ Warning", "memory": "", "cache-free": "● OK", "backlog": "● OK",
                     "agent": "■ Critical"}
    assert page.metric_labels["memory"][2].text() == "not measured yet"
    assert page.metric_labels["agent"][2].text() == "process-server silent for 16 min"
    assert page.metric_labels["cpu"][1].value == 86.0 and page.metric_labels["cpu"][1].ticks == (80.0, 95.0)
    assert [p.title for p in page.problems] == ["Appliance: Appliance agent process-server", "Appliance: CPU"]
    assert page.problems[1].cause == CPU_ALERT.message
    page.close()


@pytest.mark.asyncio
@pytest.mark.qt_loop
async def test_an_engine_without_appliance_health(qapp: QApplication) -> None:
    """An engine before admin 1.4 sends no health: the section says so, without metrics, and Out is not invented;
    before the engine is attached it says it waits."""
    bridge = FakeBridge()
    bridge.health = None
    bridge.state = "connecting"
    page = _page(bridge)
    assert page.no_health.text() == "Waiting for the engine…"
    bridge.state = "attached"
    bridge.connection_changed.emit("attached", "Attached to the engine (pid 1).")
    await until(lambda: page.no_health.text().startswith("This engine does not report appliance health"),
                what="the old engine's sentence")
    assert page.no_health.isVisible() and not page.metrics.isVisible() and not page.headline.isVisible()
    assert page.out_value.text() == "—"
    assert page.out_caption.text() == "applied to the target: this engine does not report it"
    assert page.no_problems.isVisible()
    page.close()


@pytest.mark.asyncio
@pytest.mark.qt_loop
async def test_throughput_in_sums_the_disks_and_out_is_the_apply_rate(qapp: QApplication) -> None:
    """In is the sum over servers of their disks' throughput; Out is the appliance's apply rate."""
    bridge = FakeBridge()
    page = _page(bridge)
    two_disks = (DiskStatus("/dev/sda", GiB, throughput_bps=3 * MiB), DiskStatus("/dev/sdb", GiB,
                                                                                 throughput_bps=5 * MiB))
    bridge.servers_reset.emit([server("a", disks=two_disks), server("b"), server("c", disks=())])
    page.refresh()
    assert page.in_value.text() == "10.0 MiB/s"  # 3 + 5 + 2
    assert page.in_caption.text() == "received from 3 replicating servers"
    assert page.out_value.text() == "50.0 MiB/s"
    bridge.set_health(health(apply_rate_bps=None))
    page.refresh()
    assert page.out_value.text() == "—" and page.out_caption.text().endswith("not measured yet")
    page.close()


@pytest.mark.asyncio
@pytest.mark.qt_loop
async def test_top_problems_worst_first_and_capped(qapp: QApplication) -> None:
    """Problems come worst first (critical appliance alerts, critical servers, a critical licence, then warnings,
    then updates), at most five, the rest counted; with none the page says so."""
    bridge = FakeBridge()
    page = _page(bridge)
    assert page.no_problems.isVisible() and not page.problem_rows
    assert page.no_problems.text() == ("No problems: every server is healthy and the appliance is within its "
                                       "thresholds.")
    bridge.health = health(level="warning", alerts=(CPU_ALERT,))
    bridge.licence = licence("critical")
    bridge.updates = updates(AgentUpdate("manager", "Replication manager", "1.2.0", "1.3.0", None,
                                         "update-available"))
    bridge.servers_reset.emit([*mix(), server("app-07", mobility_update="update-available")])
    page.refresh()
    titles = [p.title for p in page.problems]
    assert titles == ["erp-01: Critical · segment corrupt", "Licence: 5 days left", "Appliance: CPU",
                      "db-0: Warning · rpo exceeded", "db-1: Warning · rpo exceeded", "db-2: Warning · rpo exceeded",
                      "Appliance agent update available", "Mobility update available"]
    assert [r.problem.title for r in page.problem_rows] == titles[:PROBLEMS_SHOWN]
    assert page.more.isVisible() and page.more.text() == "…and 3 more problems."
    assert _buttons(page) == [["Resync…", "Show server"], ["Activate licence…"], ["Open Events"], ["Show server"],
                              ["Show server"]]
    assert page.problem_rows[0].problem.cause == ("Segment 812 of disk 0 was refused by the target. It was not "
                                                  "applied; resync this server.")
    assert not page.no_problems.isVisible()
    page.close()


@pytest.mark.asyncio
@pytest.mark.qt_loop
async def test_each_problem_button_does_its_action(qapp: QApplication, qtbot: Any,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    """Show server, Open Events, Open Agents page and Activate licence emit their signals; Update mobility asks the
    engine for every server it names; Resync asks first and does nothing when the admin says no; a refusal is one
    red line; a button waits while its command runs (a double-click sends one command)."""
    asked: list[str] = []
    answer = [False]

    async def confirm(_parent: Any, title: str, _text: str, _action: str) -> bool:
        asked.append(title)
        return answer[0]

    monkeypatch.setattr(overview_page, "confirm", confirm)
    bridge = FakeBridge()
    bridge.health = health(level="warning", alerts=(CPU_ALERT,))
    bridge.licence = licence("warning")
    bridge.updates = updates(AgentUpdate("manager", "Replication manager", "1.2.0", None, None, "update-failed",
                                         reason="The new version failed its health check; 1.2.0 runs again."))
    page = _page(bridge)
    bridge.servers_reset.emit([server("erp-01", health=Health.CRITICAL, health_cause=HealthCause.SEGMENT_CORRUPT,
                                      state=ServerState.ERROR),
                               server("app-07", mobility_update="update-available"),
                               server("app-08", mobility_update="update-available")])
    page.refresh()

    def button(text: str) -> QPushButton:
        found = [b for row in page.problem_rows for b in row.buttons.values() if b.text() == text]
        assert len(found) == 1, (text, _buttons(page))
        return found[0]

    with qtbot.waitSignal(page.detail_requested) as shown:
        button("Show server").click()
    assert shown.args == ["erp-01"]
    with qtbot.waitSignal(page.page_requested) as opened:
        button("Open Events").click()
    assert opened.args == ["events"]
    with qtbot.waitSignal(page.page_requested) as opened:
        button("Open Agents page").click()
    assert opened.args == ["agents"]
    with qtbot.waitSignal(page.activate_licence_requested):
        button("Activate licence…").click()
    assert bridge.calls == []

    button("Resync…").click()
    await until(lambda: asked and not page.tasks, what="the question")
    assert asked == ["Resync erp-01?"] and bridge.calls == []  # the admin said no: nothing asked of the engine

    answer[0] = True
    bridge.answers["resync"] = EngineError("erp-01 is resyncing already; wait until it is done.")
    button("Resync…").click()
    await until(lambda: page.message.isVisible(), what="the refusal")
    assert page.message.text() == "erp-01 is resyncing already; wait until it is done."
    assert page.message.property("level") == "error" and "\n" not in page.message.text()
    assert bridge.calls == [("resync", ("erp-01",))]

    bridge.gate = asyncio.Event()
    update = button("Update mobility")
    update.click()
    update.click()  # a double-click: the button waits after the first
    await until(lambda: bridge.calls[-1][0] == "update_mobility", what="the update")
    assert not button("Update mobility").isEnabled()
    assert "update-mobility" in repr(page)
    bridge.gate.set()
    await until(lambda: not page.tasks, what="the update to end")
    assert button("Update mobility").isEnabled()
    assert [c for c in bridge.calls if c[0] == "update_mobility"] == [("update_mobility", (["app-07", "app-08"],))]
    assert page.message.text() == "2 servers install the new mobility version at their next heartbeat."
    page.close()


@pytest.mark.asyncio
@pytest.mark.qt_loop
async def test_a_thousand_servers_updating_coalesce(qapp: QApplication) -> None:
    """1,000 servers each updated 10 times (10,000 signals) make the page work its figures out a few times, not
    10,000; the figures are those of the last updates."""
    bridge = FakeBridge()
    page = _page(bridge)
    bridge.servers_reset.emit([server(f"s-{i:04d}") for i in range(1000)])
    thousand = QLocale().toString(1000)
    await until(lambda: page.tiles[("healthy", "all")].count.text() == thousand, what="the first snapshot")
    before = page.refresh_count
    for round_ in range(10):
        for i in range(1000):
            bad = round_ == 9 and i % 100 == 0
            bridge.server_updated.emit(server(f"s-{i:04d}", health=Health.WARNING if bad else Health.HEALTHY,
                                              health_cause=HealthCause.RPO_EXCEEDED if bad else None))
        await asyncio.sleep(0)
    await until(lambda: page.tiles[("warning", "all")].count.text() == "10", what="the last updates")
    assert page.refresh_count - before <= 3, repr(page)
    assert page.tiles[("healthy", "all")].count.text() == "990"
    assert len(page.problem_rows) == PROBLEMS_SHOWN and page.more.text() == "…and 5 more problems."
    page.close()


@pytest.mark.asyncio
@pytest.mark.qt_loop
async def test_new_measures_update_the_problem_rows_in_place(qapp: QApplication) -> None:
    """The engine pushes the appliance health with every sample (15 s): a problem that is still the same (the same
    metric, level and agent; the same server and cause) keeps its row, its buttons and the admin's focus, and only
    its texts change; a new problem builds the rows again. The sample's tooltip says measures come every 15 s."""
    bridge = FakeBridge()
    bridge.health = health(level="warning", cpu_percent=86.0, alerts=(CPU_ALERT,))
    page = _page(bridge)
    bridge.servers_reset.emit([server("db-1", health=Health.WARNING, health_cause=HealthCause.RPO_EXCEEDED,
                                      health_detail="The RPO of db-1 is 21 min, above its policy's 15 min.")])
    await until(lambda: len(page.problem_rows) == 2, what="the problems")
    rows = list(page.problem_rows)
    button = rows[0].buttons[("events", ())]
    button.setFocus()
    later = replace(CPU_ALERT, value=91.0, message=CPU_ALERT.message.replace("now 86 %", "now 91 %"))
    bridge.set_health(health(level="warning", cpu_percent=91.0, sampled_at=NOW + 5, alerts=(later,)))
    bridge.server_updated.emit(server("db-1", health=Health.WARNING, health_cause=HealthCause.RPO_EXCEEDED,
                                      health_detail="The RPO of db-1 is 22 min, above its policy's 15 min."))
    await until(lambda: "now 91 %" in page.problem_rows[0].cause.text(), what="the new measure")
    assert page.problem_rows == rows and all(shiboken6.isValid(r) for r in rows)
    assert rows[1].cause.text() == "The RPO of db-1 is 22 min, above its policy's 15 min."
    assert rows[0].buttons[("events", ())] is button and button.hasFocus()
    assert "every 15 s" in page.sampled.toolTip() and "alert starts" not in page.sampled.toolTip()

    critical = replace(CPU_ALERT, level="critical", value=97.0)
    bridge.set_health(health(level="critical", cpu_percent=97.0, alerts=(critical,)))
    await until(lambda: page.problem_rows[0].problem.level == "critical", what="the critical alert")
    assert page.problem_rows[0] is not rows[0]  # another problem: a new row
    assert page.problem_rows[0].mark.property("tone") == "bad"
    page.close()


def test_a_tile_of_one_server_reads_in_the_singular(qapp: QApplication) -> None:
    """The tiles' accessible names say "1 server", "2 servers"."""
    page = _page(FakeBridge())
    tile = page.tiles[("critical", "all")]
    tile.set_count(1)
    assert tile.accessibleName() == "Critical: 1 server. Show it on the Servers page."
    tile.set_count(2)
    assert tile.accessibleName() == "Critical: 2 servers. Show them on the Servers page."
    page.close()
