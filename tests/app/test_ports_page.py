"""The Ports page: the engine's ports in editable fields, Apply with the engine's refusal kept beside what was
typed, the moving management port, the firewall rules to copy and the connectivity test — driven by a fake
bridge with the bridge's signal and commands."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import pytest
from PySide6.QtCore import QObject, Qt, Signal
from PySide6.QtGui import QGuiApplication
from PySide6.QtWidgets import QApplication
from pytestqt.modeltest import ModelTester
from pytestqt.qtbot import QtBot

from app.bridge import (
    ConnectivityCheck,
    ConnectivityReport,
    EngineBridge,
    EngineStatus,
    FirewallRule,
    PortsStatus,
    ServerReach,
    SetupInfo,
)
from app.views.ports_page import ChecksModel, FirewallModel, PortsPage, ReachModel, moving_text
from engine.errors import PortError  # test data only: what the engine raises for a port it cannot take
from engine.links.admin import Hello, PortsChanged
from tests.app.scripted import ScriptedClient
from tests.appliance import until

RULES = (
    FirewallRule("inbound", "tcp", 9443, "source servers", "registration and heartbeats (management)"),
    FirewallRule("inbound", "tcp", 9444, "source servers", "replicated data"),
    FirewallRule("outbound", "tcp", None, "target storage", "writing replicas"),
)
PORTS = PortsStatus(management_port=9443, data_port=9444, listen_address="0.0.0.0", firewall=RULES)

def report() -> ConnectivityReport:
    """A test's report, its ages counted from now (collection may be minutes before the test runs)."""
    return ConnectivityReport(
        checks=(ConnectivityCheck("management port 9443", True, "listening on 0.0.0.0:9443"),
                ConnectivityCheck("data port 9444", False, "another program (pid 812) holds 0.0.0.0:9444",
                                  "Stop that program or choose another data port."),
                ConnectivityCheck("target storage", True, "writable, 120 GiB free")),
        servers=(ServerReach("web-01", time.time() - 630, 9443, time.time() - 210),  # ages that hold for half a minute
                 ServerReach("db-01", None, None, None)),
    )


class FakeBridge(QObject):
    ports_changed = Signal(object)  #: PortsStatus

    def __init__(self) -> None:
        super().__init__()
        self.ports: PortsStatus | None = None
        self.calls: list[tuple[str, Any]] = []
        self.answers: dict[str, Any] = {}

    async def _answer(self, name: str, arg: Any) -> Any:
        self.calls.append((name, arg))
        await asyncio.sleep(0.01)
        answer = self.answers[name]
        if isinstance(answer, BaseException):
            raise answer
        return answer

    async def set_ports(self, **changes: Any) -> PortsStatus:
        ports: PortsStatus = await self._answer("set_ports", changes)
        self.ports = ports
        self.ports_changed.emit(ports)
        return ports

    async def test_ports(self) -> ConnectivityReport:
        """The fake's connectivity test: records the call and returns the report the test scripted (or raises it)."""
        report: ConnectivityReport = await self._answer("test_ports", None)
        return report


def _cells(model: Any) -> list[list[str]]:
    return [[model.data(model.index(r, c)) for c in range(model.columnCount())] for r in range(model.rowCount())]


def test_models_keep_the_model_contract(qtmodeltester: ModelTester) -> None:
    """The firewall, check and reach models keep Qt's model contract, empty and filled."""
    firewall, checks, reach = FirewallModel(), ChecksModel(), ReachModel()
    for model in (firewall, checks, reach):
        qtmodeltester.check(model)
    firewall.set_rows(RULES)
    checks.set_rows(report().checks)
    reach.set_rows(report().servers)
    for model in (firewall, checks, reach):
        qtmodeltester.check(model)
    reach.refresh_ages()
    assert repr(reach) == "<ReachModel rows=['db-01', 'web-01']>"
    assert repr(firewall) == "<FirewallModel rows=[('inbound', 9443), ('inbound', 9444), ('outbound', None)]>"


def test_page_shows_the_ports_and_copies_the_firewall_rules(qtbot: QtBot) -> None:
    """The fields and the current line show the engine's ports; the firewall table lists its rules and Copy puts
    them on the clipboard as tab-separated lines."""
    bridge = FakeBridge()
    page = PortsPage(bridge)  # type: ignore[arg-type]
    qtbot.addWidget(page)
    assert not page.isEnabled()
    bridge.ports_changed.emit(PORTS)
    assert page.isEnabled()
    assert (page.management_edit.value(), page.data_edit.value(), page.listen_edit.text()) == (9443, 9444, "0.0.0.0")
    assert page.current.text() == "Now: management port 9443, data port 9444, listening on 0.0.0.0."
    assert not page.apply_button.isEnabled() and not page.moving.isVisibleTo(page)
    assert _cells(page.firewall_model) == [
        ["Inbound", "TCP", "9443", "source servers", "registration and heartbeats (management)"],
        ["Inbound", "TCP", "9444", "source servers", "replicated data"],
        ["Outbound", "TCP", "-", "target storage", "writing replicas"],
    ]
    assert page.firewall_table.model() is page.firewall_model
    page.copy_button.click()
    assert QGuiApplication.clipboard().text() == (
        "Direction\tProtocol\tPort\tPeer\tPurpose\n"
        "Inbound\tTCP\t9443\tsource servers\tregistration and heartbeats (management)\n"
        "Inbound\tTCP\t9444\tsource servers\treplicated data\n"
        "Outbound\tTCP\t-\ttarget storage\twriting replicas\n")
    assert page.copy_button.text() == "Copied"


def test_stream_updates_leave_typed_values_alone(qtbot: QtBot) -> None:
    """A ports update from the engine refreshes the fields unless the admin is typing in them; Undo changes puts
    the engine's values back."""
    bridge = FakeBridge()
    page = PortsPage(bridge)  # type: ignore[arg-type]
    qtbot.addWidget(page)
    bridge.ports_changed.emit(PORTS)
    page.data_edit.setValue(10444)
    assert page.apply_button.isEnabled() and page.changes() == {"data": 10444}
    elsewhere = PortsStatus(management_port=9443, data_port=9555, listen_address="0.0.0.0", firewall=RULES)
    bridge.ports_changed.emit(elsewhere)  # the CLI moved the data port meanwhile
    assert page.data_edit.value() == 10444
    assert page.current.text() == "Now: management port 9443, data port 9555, listening on 0.0.0.0."
    page.revert_button.click()
    assert page.data_edit.value() == 9555 and not page.apply_button.isEnabled()
    bridge.ports_changed.emit(PORTS)
    assert page.data_edit.value() == 9444  # not editing: the fields follow
    assert repr(page) == "<PortsPage ports=9443/9444@0.0.0.0 editing=False moving=None>"


def test_moving_management_port_is_explained() -> None:
    """While the management port moves: old and new port, when the old one closes (clock time and in how long),
    and the servers that have not moved."""
    now = time.mktime((2031, 5, 6, 12, 0, 0, 0, 0, -1))
    closes = now + 23 * 60 + 10
    moving = PortsStatus(management_port=10443, data_port=9444, listen_address="0.0.0.0", firewall=RULES,
                         old_management_port=9443, old_port_closes_at=closes, servers_not_moved=("db-01", "web-01"))
    assert moving_text(moving, now) == (
        "The management port is moving from 9443 to 10443. Port 9443 closes at 12:23"
        " (in 23 min), or as soon as every registered server has reached the new port. Not moved yet: db-01, web-01.")
    done = PortsStatus(management_port=10443, data_port=9444, listen_address="0.0.0.0", old_management_port=9443,
                       old_port_closes_at=None)
    assert moving_text(done, now) == ("The management port is moving from 9443 to 10443. Port 9443 stays open until "
                                      "every registered server has reached the new port. Every registered server "
                                      "has moved.")
    assert moving_text(PORTS, now) == ""
    tomorrow = PortsStatus(management_port=10443, data_port=9444, listen_address="0.0.0.0", old_management_port=9443,
                           old_port_closes_at=now + 13 * 3600, servers_not_moved=("db-01",))
    assert "closes at 2031-05-07 01:00 (in 13.0 h)" in moving_text(tomorrow, now)
    late = PortsStatus(management_port=10443, data_port=9444, listen_address="0.0.0.0", old_management_port=9443,
                       old_port_closes_at=now - 5, servers_not_moved=("db-01",))
    assert "closes at 11:59 (any moment now)" in moving_text(late, now)


@pytest.mark.asyncio
@pytest.mark.qt_loop
async def test_apply_shows_the_refusal_and_keeps_what_was_typed(qapp: QApplication) -> None:
    """Apply sends only what changed; the engine's refusal appears under the fields, which keep what was typed;
    a later Apply that the engine accepts shows the new ports and the moving management port."""
    bridge = FakeBridge()
    page = PortsPage(bridge)  # type: ignore[arg-type]
    page.show()
    try:
        bridge.ports_changed.emit(PORTS)
        page.management_edit.setValue(80)
        page.listen_edit.setText("10.0.0.5")
        refusal = "Port 80 is below 1024: the engine runs without root. Choose a port from 1024 to 65535."
        bridge.answers["set_ports"] = PortError(refusal)
        page.apply_button.click()
        await until(lambda: page.message.isVisible(), what="the refusal")
        assert page.message.text() == refusal and page.message.property("level") == "error"
        assert bridge.calls == [("set_ports", {"management": 80, "listen": "10.0.0.5"})]
        assert (page.management_edit.value(), page.data_edit.value(), page.listen_edit.text()) == (80, 9444,
                                                                                                    "10.0.0.5")
        assert page.ports == PORTS and page.apply_button.isEnabled()

        page.listen_edit.setText("")
        page.apply_button.click()
        await until(lambda: page.message.text().startswith("Type the address"), what="the empty address hint")
        assert len(bridge.calls) == 1

        page.listen_edit.setText("10.0.0.5")
        page.management_edit.setValue(10443)
        moved = PortsStatus(management_port=10443, data_port=9444, listen_address="10.0.0.5", firewall=RULES,
                            old_management_port=9443, old_port_closes_at=time.time() + 3600,
                            servers_not_moved=("web-01",))
        bridge.answers["set_ports"] = moved
        page.apply_button.click()
        await until(lambda: page.message.property("level") == "ok", what="the change to apply")
        assert bridge.calls[-1] == ("set_ports", {"management": 10443, "listen": "10.0.0.5"})
        assert page.message.text().startswith("Applied at ")
        assert page.current.text() == "Now: management port 10443, data port 9444, listening on 10.0.0.5."
        assert (page.management_edit.value(), page.listen_edit.text()) == (10443, "10.0.0.5")
        assert not page.apply_button.isEnabled()
        assert page.moving.isVisible() and "Not moved yet: web-01." in page.moving.text()
        assert "from 9443 to 10443" in page.moving.text()
    finally:
        page.close()


@pytest.mark.asyncio
@pytest.mark.qt_loop
async def test_connectivity_test_lists_each_result(qapp: QApplication) -> None:
    """Test connectivity shows one row per check (name, OK/failed in colour, what was found, what to do), a
    summary, and when each registered server last reached each port."""
    bridge = FakeBridge()
    page = PortsPage(bridge)  # type: ignore[arg-type]
    page.show()
    try:
        bridge.ports_changed.emit(PORTS)
        bridge.answers["test_ports"] = report()
        page.test_button.click()
        await until(lambda: page.checks_model.rowCount() == 3, what="the results")
        assert _cells(page.checks_model) == [
            ["management port 9443", "OK", "listening on 0.0.0.0:9443", ""],
            ["data port 9444", "Failed", "another program (pid 812) holds 0.0.0.0:9444",
             "Stop that program or choose another data port."],
            ["target storage", "OK", "writable, 120 GiB free", ""],
        ]
        colour = page.checks_model.data(page.checks_model.index(1, ChecksModel.RESULT), Qt.ItemDataRole.ForegroundRole)
        assert colour.name() == "#c62828"
        assert page.summary.text().startswith("1 of 3 checks failed (tested at ")
        assert page.summary.property("level") == "bad" and page.test_button.isEnabled()
        assert not page.checks_table.isColumnHidden(ChecksModel.FIX)
        assert _cells(page.reach_model) == [["db-01", "never", "never"],
                                            ["web-01", "10 min ago (port 9443)", "3 min ago"]]
        assert page.reach_table.model() is page.reach_model and page.checks_table.model() is page.checks_model

        bridge.answers["test_ports"] = ConnectivityReport(checks=report().checks[:1], servers=())
        page.test_button.click()
        await until(lambda: page.checks_model.rowCount() == 1, what="the second results")
        assert page.summary.text().startswith("All 1 checks passed") and page.summary.property("level") == "ok"
        assert page.checks_table.isColumnHidden(ChecksModel.FIX)  # nothing to do
    finally:
        page.close()


@pytest.mark.asyncio
@pytest.mark.qt_loop
async def test_bridge_passes_the_ports_on(tmp_path: Path, qapp: QApplication) -> None:
    """The ports of the Hello and of each PortsChanged reach ports_changed and bridge.ports."""
    engine = EngineStatus(pid=1, version="0.1.0", started_at=0.0, data_dir="/d")
    setup = SetupInfo(appliance_id="a", passphrase="p", ca_fingerprint="f", management_port=9443, data_port=9444,
                      secret_store="file", host="h", mobility_command="m")
    moved = PortsStatus(management_port=9443, data_port=9555, listen_address="0.0.0.0")
    bridge = EngineBridge(tmp_path, start_engine=False)
    seen: list[PortsStatus] = []
    bridge.ports_changed.connect(seen.append)
    bridge.client = ScriptedClient([Hello(engine=engine, setup=setup, servers=(), last_event_id=0, ports=PORTS),  # type: ignore[assignment]
                             PortsChanged(moved)])
    await bridge._follow()
    assert seen == [PORTS, moved] and bridge.ports == moved
    await bridge.aclose()
