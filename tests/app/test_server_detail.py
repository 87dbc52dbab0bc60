"""The server detail dialog: it follows the server live, applies a policy and a bandwidth cap, lists recovery points
and exports one to files — driven by a fake bridge with the bridge's signals and commands."""

from __future__ import annotations

import asyncio
import os
import threading
import time
from pathlib import Path
from typing import Any, BinaryIO

import pytest
import shiboken6
from PySide6.QtCore import QObject, Qt, Signal
from PySide6.QtGui import QPalette
from PySide6.QtTest import QTest
from PySide6.QtWidgets import (
    QAbstractButton,
    QApplication,
    QComboBox,
    QProgressBar,
    QPushButton,
    QSpinBox,
    QTableWidget,
)

from app import theme
from app.bridge import (
    EngineError,
    Event,
    Health,
    HealthCause,
    Policy,
    RecoveryPoint,
    ServerHistory,
    ServerSample,
    ServerState,
    ServerStatus,
)
from app.views import server_detail
from app.views.server_detail import ExportFile, ServerDetailDialog, export_file_names, throttled_progress
from engine.records import DiskStatus  # test data only
from tests.appliance import until

NOW = 1_700_000_000.0
GiB = 1 << 30
POLICIES = [Policy("standard", 900, 86400, 300, None), Policy("gold", 300, 7 * 86400, 60, 3600)]


def server(**changes: Any) -> ServerStatus:
    fields: dict[str, Any] = dict(
        server_id="s-1", name="web-01", hostname="web-01.acme.lan", os="Ubuntu 22.04", agent_version="0.1.0",
        state=ServerState.PROTECTED, health=Health.HEALTHY, health_cause=None, health_detail=None,
        registered_at=NOW - 86400, last_heartbeat=NOW - 5, address="10.0.0.7",
        disks=(DiskStatus("/dev/sda", 40 * GiB), DiskStatus("/dev/sdb", 100 * GiB, bytes_done=25 * GiB,
                                                             bytes_total=100 * GiB, throughput_bps=80 << 20,
                                                             eta_seconds=1200, phase="resync")),
        replicating=True, policy="standard", max_mbps=None, newest_data_at=NOW - 60, rpo_threshold=900,
        last_recovery_point=NOW - 120)
    fields.update(changes)
    return ServerStatus(**fields)


def history(span: str = "hour", n: int = 180, *, rpo: float = 40.0) -> ServerHistory:
    """``n`` samples up to now (the charts show the span up to the real clock): a replication burst, then a steady
    trickle; the RPO saw-tooths around ``rpo`` seconds."""
    step = 10.0 if span == "hour" else 60.0
    end = time.time()
    samples = tuple(ServerSample(at=end - step * (n - 1 - i),
                                 received_bps=(90e6 if i < n // 3 else 4e6) + 1e5 * (i % 7),
                                 applied_bps=(70e6 if i < n // 3 else 4e6) + 1e5 * (i % 5),
                                 rpo_seconds=None if i < 5 else rpo + 3 * (i % 10))
                    for i in range(n))
    return ServerHistory(name="web-01", span=span, step_seconds=step, samples=samples)


def points(n: int) -> list[RecoveryPoint]:
    """``n`` points, oldest first as the engine lists them (the dialog must not rely on that)."""
    return [RecoveryPoint(id=i + 1, created_at=NOW - 300 * (n - i), kind="crash" if i % 4 else "app")
            for i in range(n)]


class FakeBridge(QObject):
    """The bridge's signals and the detail dialog's commands; records calls, answers from ``answers``. Export
    streams ``image[disk]`` in ``chunk``-byte pieces; while ``gate`` is unset it stops after the first piece."""

    connection_changed = Signal(str, str)
    servers_reset = Signal(list)
    server_updated = Signal(object)
    server_removed = Signal(str)
    events_reset = Signal(list)
    event_added = Signal(object)

    def __init__(self) -> None:
        super().__init__()
        self.calls: list[tuple[str, Any]] = []
        self.answers: dict[str, Any] = {"server": server(), "policies": POLICIES, "points": points(3),
                                        "history": {"hour": history("hour"), "day": history("day", 600)}}
        self.images: dict[int, bytes] = {0: b"A" * 100_000, 1: b"B" * 50_000}
        self.chunk = 16384
        self.gate: asyncio.Event | None = None

    async def _answer(self, name: str, *args: Any) -> Any:
        self.calls.append((name, args))
        await asyncio.sleep(0.01)
        answer = self.answers[name]
        if isinstance(answer, BaseException):
            raise answer
        return answer

    async def server(self, name: str) -> ServerStatus:
        return await self._answer("server", name)  # type: ignore[no-any-return]

    async def policies(self) -> list[Policy]:
        return await self._answer("policies")  # type: ignore[no-any-return]

    async def set_policy(self, name: str, policy: str) -> ServerStatus:
        return await self._answer("set_policy", name, policy)  # type: ignore[no-any-return]

    async def set_max_mbps(self, name: str, mbps: float | None) -> ServerStatus:
        return await self._answer("set_max_mbps", name, mbps)  # type: ignore[no-any-return]

    async def points(self, name: str) -> list[RecoveryPoint]:
        return await self._answer("points", name)  # type: ignore[no-any-return]

    async def server_history(self, name: str, span: str = "hour") -> ServerHistory:
        self.calls.append(("server_history", (name, span)))
        if self.gate is not None:
            await self.gate.wait()
        await asyncio.sleep(0.01)
        answer = self.answers["history"]
        if isinstance(answer, BaseException):
            raise answer
        return answer[span]  # type: ignore[no-any-return]

    async def export_point(self, name: str, point_id: int | str, disk: int, fmt: str, out_file: BinaryIO,
                           progress: Any = None) -> tuple[str, int]:
        self.calls.append(("export_point", (name, point_id, disk, fmt)))
        data = self.images[disk]
        for start in range(0, len(data), self.chunk):
            out_file.write(data[start:start + self.chunk])
            if progress:
                progress(min(start + self.chunk, len(data)), len(data))
            await asyncio.sleep(0)
            if self.gate is not None:
                await self.gate.wait()
        return str(point_id), len(data)


def _open(bridge: FakeBridge, **kwargs: Any) -> ServerDetailDialog:
    dialog = ServerDetailDialog(bridge, "web-01", None, **kwargs)  # type: ignore[arg-type]
    dialog.show()
    return dialog


async def _loaded(dialog: ServerDetailDialog) -> None:
    await until(lambda: dialog.server is not None and dialog.policy_combo.count() == len(POLICIES)
                and len(dialog.points) > 0 and not dialog.tasks, what="the dialog to load")


@pytest.fixture
def frozen(monkeypatch: pytest.MonkeyPatch) -> list[float]:
    """``time.time`` returns ``clock[0]``: a test moves it on."""
    clock = [NOW]
    monkeypatch.setattr(time, "time", lambda: clock[0])
    return clock


@pytest.mark.asyncio
@pytest.mark.qt_loop
async def test_follows_the_server_and_ages_the_rpo(qapp: QApplication, frozen: list[float]) -> None:
    """The dialog asks the engine for the server, then shows each update for its server (not others'); the RPO
    grows with time against the policy's threshold and turns red above it; disks show a bar while resyncing and
    "In step" otherwise."""
    bridge = FakeBridge()
    dialog = _open(bridge)
    try:
        await _loaded(dialog)
        assert dialog.windowTitle() == "Server web-01" and not dialog.isModal()
        assert dialog.state_label.text() == "Protected"
        assert dialog.rpo_label.text() == "60 s (the policy allows 15 min)"
        assert dialog.point_label.text() == "2 min ago"
        assert dialog.clock.isActive() and dialog.clock.interval() == 1000
        frozen[0] = NOW + 1140  # 20 min after the newest data
        dialog.on_clock_timeout()
        assert dialog.rpo_label.text() == "20 min — above the policy's 15 min"
        assert dialog.rpo_label.property("tone") == "bad"  # console.qss colours it from the palette in use
        assert dialog.rpo_label.palette().color(QPalette.ColorRole.WindowText).name() == theme.colour("bad")

        assert dialog.disks_table.item(0, 0).text() == "/dev/sda"
        assert dialog.disks_table.item(0, 2).text() == "In step"
        bar = dialog.disks_table.cellWidget(1, 2)
        assert isinstance(bar, QProgressBar) and bar.value() == 250
        assert bar.format() == "Resync 25% · 80.0 MiB/s · 20 min left"

        bridge.server_updated.emit(server(name="db-02", state=ServerState.PAUSED))
        assert dialog.state_label.text() == "Protected"
        done = tuple(DiskStatus(d.path, d.size) for d in server().disks)
        bridge.server_updated.emit(server(state=ServerState.PAUSED, health=Health.WARNING,
                                          health_cause=HealthCause.CACHE_FULL, disks=done,
                                          health_detail="The cache on web-01 is full: replication waits."))
        assert dialog.state_label.text() == "Paused"
        assert dialog.health_label.text() == "Warning · cache full — The cache on web-01 is full: replication waits."
        assert dialog.disks_table.cellWidget(1, 2) is None and dialog.disks_table.item(1, 2).text() == "In step"
    finally:
        dialog.close()


@pytest.mark.asyncio
@pytest.mark.qt_loop
async def test_policy_apply_and_the_engines_refusal(qapp: QApplication, frozen: list[float]) -> None:
    """Apply sends the chosen policy; a refusal shows the engine's sentence as one red line and the server stays as
    it was; an accepted one shows the new policy."""
    bridge = FakeBridge()
    dialog = _open(bridge)
    try:
        await _loaded(dialog)
        assert dialog.policy_combo.currentText() == "standard"
        dialog.policy_combo.setCurrentText("gold")
        refusal = "The appliance has no policy named gold any more. Choose another one."
        bridge.answers["set_policy"] = EngineError(refusal)
        dialog.policy_apply.click()
        await until(lambda: dialog.message.isVisible(), what="the refusal")
        assert dialog.message.text() == refusal and dialog.message.property("level") == "error"
        assert dialog.server is not None and dialog.server.policy == "standard"
        assert ("set_policy", ("web-01", "gold")) in bridge.calls

        bridge.answers["set_policy"] = server(policy="gold", rpo_threshold=300)
        dialog.policy_apply.click()
        await until(lambda: dialog.message.property("level") == "ok", what="the confirmation")
        assert dialog.message.text() == "web-01 now replicates under the policy gold."
        assert dialog.rpo_label.text().endswith("(the policy allows 5 min)")
    finally:
        dialog.close()


@pytest.mark.asyncio
@pytest.mark.qt_loop
async def test_bandwidth_cap_is_checked_before_the_engine(qapp: QApplication) -> None:
    """A cap out of 1–100000 Mbit/s is refused in the dialog without asking the engine; a good one is sent, and
    No cap sends None."""
    bridge = FakeBridge()
    dialog = _open(bridge)
    try:
        await _loaded(dialog)
        assert dialog.no_cap_check.isChecked() and not dialog.cap_spin.isEnabled()
        dialog.no_cap_check.setChecked(False)
        for bad in (0, 100_001):
            dialog.cap_spin.setValue(bad)
            dialog.cap_apply.click()
            await until(lambda: dialog.message.property("level") == "error", what="the refusal")
            assert dialog.message.text() == ("The bandwidth cap must be from 1 to 100000 Mbit/s: type a value in that "
                                             "range, or tick No cap.")
            dialog.say("", "")
        assert not [c for c in bridge.calls if c[0] == "set_max_mbps"]

        dialog.cap_spin.setValue(250)
        bridge.answers["set_max_mbps"] = server(max_mbps=250.0)
        dialog.cap_apply.click()
        await until(lambda: dialog.message.property("level") == "ok", what="the cap")
        assert dialog.message.text() == "The bandwidth cap is 250 Mbit/s."
        dialog.no_cap_check.setChecked(True)
        bridge.answers["set_max_mbps"] = server()
        dialog.cap_apply.click()
        await until(lambda: dialog.message.text() == "The bandwidth cap is removed.", what="no cap")
        assert [c for c in bridge.calls if c[0] == "set_max_mbps"] == [("set_max_mbps", ("web-01", 250)),
                                                                       ("set_max_mbps", ("web-01", None))]
    finally:
        dialog.close()


@pytest.mark.asyncio
@pytest.mark.qt_loop
async def test_points_newest_first_and_refresh(qapp: QApplication) -> None:
    """Points are listed newest first whatever order the engine gives, the newest selected; Refresh asks again."""
    bridge = FakeBridge()
    bridge.answers["points"] = points(10)
    dialog = _open(bridge)
    try:
        await _loaded(dialog)
        ids = [dialog.points_table.item(row, 0).text() for row in range(dialog.points_table.rowCount())]
        assert ids == [str(i) for i in range(10, 0, -1)]
        assert dialog.selected_point() == points(10)[-1] and dialog.export_button.isEnabled()
        bridge.answers["points"] = list(reversed(points(11)))
        dialog.refresh_button.click()
        await until(lambda: len(dialog.points) == 11, what="the refresh")
        assert dialog.points_table.item(0, 0).text() == "11"
        assert dialog.selected_point() is not None and dialog.selected_point().id == 10  # the selection stays
    finally:
        dialog.close()


def _hidden(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


@pytest.mark.asyncio
@pytest.mark.qt_loop
async def test_export_writes_each_disk_under_the_clis_names(qapp: QApplication, tmp_path: Path,
                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    """Export writes the bytes the engine streams, one file per disk named as ``godwit vm export`` names them; an
    existing file is kept unless the admin confirms, and replaced when they do."""
    bridge = FakeBridge()
    dialog = _open(bridge)
    asked: list[str] = []

    async def folder(*_: Any) -> Path:
        return tmp_path

    answer = [False]

    async def confirm(_parent: Any, _title: str, text: str, _action: str) -> bool:
        asked.append(text)
        return answer[0]

    monkeypatch.setattr(server_detail, "choose_folder", folder)
    monkeypatch.setattr(server_detail, "confirm", confirm)
    try:
        await _loaded(dialog)
        assert export_file_names("web-01", 2, "vhd") == ["web-01-disk0.vhd", "web-01-disk1.vhd"]
        dialog.format_combo.setCurrentIndex(dialog.format_combo.findData("raw"))
        dialog.export_button.click()
        await until(lambda: dialog.message.property("level") == "ok", what="the export")
        assert _hidden(tmp_path) == ["web-01-disk0.raw", "web-01-disk1.raw"]
        assert (tmp_path / "web-01-disk0.raw").read_bytes() == bridge.images[0]
        assert (tmp_path / "web-01-disk1.raw").read_bytes() == bridge.images[1]
        assert [c for c in bridge.calls if c[0] == "export_point"] == [
            ("export_point", ("web-01", 3, 0, "raw")), ("export_point", ("web-01", 3, 1, "raw"))]

        (tmp_path / "web-01-disk1.raw").write_bytes(b"keep me")
        bridge.images = {0: b"C" * 1000, 1: b"D" * 1000}
        dialog.export_button.click()
        await until(lambda: asked and dialog.export_task is None, what="the question")
        assert "web-01-disk0.raw, web-01-disk1.raw already exist(s)" in asked[0]
        assert (tmp_path / "web-01-disk1.raw").read_bytes() == b"keep me"
        assert (tmp_path / "web-01-disk0.raw").read_bytes() == b"A" * 100_000
        assert dialog.message.text() == "Nothing exported: the existing files are as they were."

        answer[0] = True
        dialog.export_button.click()
        await until(lambda: dialog.message.property("level") == "ok" and dialog.export_task is None,
                    what="the replacing export")
        assert (tmp_path / "web-01-disk1.raw").read_bytes() == b"D" * 1000
        assert _hidden(tmp_path) == ["web-01-disk0.raw", "web-01-disk1.raw"]
    finally:
        dialog.close()


@pytest.mark.asyncio
@pytest.mark.qt_loop
async def test_cancelled_export_leaves_no_file(qapp: QApplication, tmp_path: Path,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    """Cancel in the progress dialog mid-way stops the export and removes what it wrote: no image, no temporary
    file; an engine failure does the same and shows the engine's line."""
    bridge = FakeBridge()
    dialog = _open(bridge)

    async def folder(*_: Any) -> Path:
        return tmp_path

    monkeypatch.setattr(server_detail, "choose_folder", folder)
    try:
        await _loaded(dialog)
        dialog.format_combo.setCurrentIndex(dialog.format_combo.findData("vhd"))
        bridge.gate = asyncio.Event()
        dialog.export_button.click()
        await until(lambda: dialog.progress is not None and any(tmp_path.iterdir()), what="the export to start")
        assert [p.name.startswith(".web-01-disk0.vhd.") for p in tmp_path.iterdir()] == [True]
        assert dialog.progress.labelText() == "Disk 1 of 2: web-01-disk0.vhd"
        assert not dialog.export_button.isEnabled()
        cancel = dialog.progress.findChild(QPushButton)
        assert cancel is not None and cancel.text() == "Cancel"
        cancel.click()
        await until(lambda: dialog.export_task is None, what="the export to stop")
        assert _hidden(tmp_path) == []
        assert dialog.message.text() == "Export cancelled: nothing was written."

        bridge.gate = None

        async def failing(name: str, point_id: Any, disk: int, *_: Any) -> tuple[str, int]:
            if disk == 1:
                raise EngineError("Recovery point 3 has expired. Refresh the list and choose another point.")
            return str(point_id), 0

        monkeypatch.setattr(bridge, "export_point", failing)
        dialog.export_button.click()
        await until(lambda: dialog.message.property("level") == "error", what="the failure")
        assert dialog.message.text() == "Recovery point 3 has expired. Refresh the list and choose another point."
        assert _hidden(tmp_path) == []
    finally:
        dialog.close()


@pytest.mark.asyncio
@pytest.mark.qt_loop
async def test_server_gone_disables_the_dialog(qapp: QApplication) -> None:
    """The server being forgotten (or missing from a new snapshot) disables the dialog with a sentence saying so;
    later updates change nothing."""
    bridge = FakeBridge()
    dialog = _open(bridge, status=server(), events=[])
    try:
        await _loaded(dialog)
        assert ("server", ("web-01",)) not in bridge.calls  # given: not asked again
        bridge.server_removed.emit("db-02")
        assert dialog.tabs.isEnabled()
        bridge.server_removed.emit("web-01")
        assert not dialog.tabs.isEnabled() and dialog.gone_banner.isVisible()
        assert dialog.gone_banner.text() == ("web-01 is no longer registered on this appliance: nothing here changes "
                                             "any more. Close this window.")
        bridge.server_updated.emit(server(state=ServerState.PAUSED))
        assert dialog.state_label.text() == "Protected"
        assert repr(dialog) == "<ServerDetailDialog web-01 gone points=3 events=0>"
    finally:
        dialog.close()
    other = _open(bridge, status=server())
    try:
        bridge.servers_reset.emit([server(name="db-02")])
        assert not other.tabs.isEnabled() and other.gone_banner.isVisible()
    finally:
        other.close()


@pytest.mark.asyncio
@pytest.mark.qt_loop
async def test_events_of_this_server_newest_first(qapp: QApplication) -> None:
    """The Events tab shows this server's events only, newest first, from construction, a reset and each new one."""
    mine = [Event(1, NOW - 60, "info", "replication.started", "Replication started.", "web-01"),
            Event(3, NOW - 30, "warning", "rpo.exceeded", "The RPO is above the policy's.", "web-01")]
    other = Event(2, NOW - 40, "error", "disk.missing", "A disk is missing.", "db-02")
    bridge = FakeBridge()
    dialog = _open(bridge, events=[mine[0], other, mine[1]])
    try:
        await _loaded(dialog)
        texts = [dialog.events_table.item(r, 2).text() for r in range(dialog.events_table.rowCount())]
        assert texts == ["The RPO is above the policy's.", "Replication started."]
        bridge.event_added.emit(other)
        bridge.event_added.emit(Event(4, NOW, "info", "point.created", "Recovery point 4 created.", "web-01"))
        assert dialog.events_table.rowCount() == 3
        assert dialog.events_table.item(0, 2).text() == "Recovery point 4 created."
        assert dialog.events_table.item(0, 1).text() == "Info"
        bridge.events_reset.emit([other])
        assert dialog.events_table.rowCount() == 0
    finally:
        dialog.close()


def _history_calls(bridge: FakeBridge) -> list[str]:
    return [args[1] for name, args in bridge.calls if name == "server_history"]


@pytest.mark.asyncio
@pytest.mark.qt_loop
async def test_charts_load_when_shown_refresh_and_switch_span(qapp: QApplication) -> None:
    """The history is asked for only once the Charts tab shows, then every 10 s while it shows (never twice at once);
    the charts have time on the x axis, MB/s and the RPO with the policy's threshold dashed; Day asks for the day;
    another tab stops the refresh."""
    bridge = FakeBridge()
    dialog = _open(bridge)
    try:
        await _loaded(dialog)
        assert _history_calls(bridge) == [] and not dialog.history_timer.isActive()
        dialog.tabs.setCurrentWidget(dialog.charts)
        charts = dialog.charts
        await until(lambda: charts.history is not None and not dialog.tasks, what="the hour's history")
        assert _history_calls(bridge) == ["hour"]
        assert dialog.history_timer.isActive() and dialog.history_timer.interval() == 10_000
        assert charts.stack.currentWidget() is not charts.empty_label
        assert charts.received.count() == 180 and charts.applied.count() == 180 and charts.rpo.count() == 175
        assert charts.throughput_axis.titleText() == "Throughput (MB/s)" and charts.throughput_axis.max() >= 90
        assert charts.rpo_axis.titleText() == "RPO (min)" and charts.limit.isVisible()  # the threshold is 15 min
        assert [p.y() for p in charts.limit.points()] == [15.0, 15.0]
        assert charts.limit.pen().style() == Qt.PenStyle.DashLine
        assert charts.throughput_time.format() == "HH:mm" and charts.throughput_time.tickCount() == 7
        first, last = charts.throughput_time.min(), charts.throughput_time.max()
        assert first.secsTo(last) == 3600 and last.time().minute() % 10 == 0 and last.time().second() == 0
        assert "180 samples, one every 10 s" in charts.updated_label.text()

        bridge.gate = asyncio.Event()  # the engine is slow: a refresh is under way
        dialog.on_history_timer_timeout()
        dialog.on_history_timer_timeout()
        await asyncio.sleep(0.05)
        assert _history_calls(bridge) == ["hour", "hour"]
        charts.span_buttons["day"].click()  # the slow hour is dropped for the day
        bridge.gate.set()
        bridge.gate = None
        await until(lambda: charts.history is not None and charts.history.span == "day" and not dialog.tasks,
                    what="the day's history")
        assert _history_calls(bridge) == ["hour", "hour", "day"] and charts.received.count() == 600
        assert charts.throughput_time.format() == "ddd HH:mm"

        dialog.tabs.setCurrentIndex(0)
        assert not dialog.history_timer.isActive()
    finally:
        dialog.close()


@pytest.mark.asyncio
@pytest.mark.qt_loop
async def test_charts_empty_state_and_refusal(qapp: QApplication) -> None:
    """No samples shows the sentence that says why instead of empty axes; an engine that refuses says so in the
    dialog's message line and the charts keep what they showed; seconds for a short RPO, no line without a policy."""
    bridge = FakeBridge()
    bridge.answers["history"] = {"hour": ServerHistory("web-01", "hour", 10.0), "day": ServerHistory("web-01", "day",
                                                                                                     60.0)}
    dialog = _open(bridge, status=server(rpo_threshold=None))
    try:
        await _loaded(dialog)
        dialog.tabs.setCurrentWidget(dialog.charts)
        charts = dialog.charts
        await until(lambda: charts.history is not None and not dialog.tasks, what="the empty history")
        assert charts.stack.currentWidget() is charts.empty_label and charts.empty_label.isVisible()
        assert charts.empty_label.text() == "No samples yet: the engine keeps them from when it started."

        bridge.answers["history"] = {"hour": history("hour", 30, rpo=20.0)}
        dialog.on_history_timer_timeout()
        await until(lambda: charts.received.count() == 30 and not dialog.tasks, what="the samples")
        assert charts.rpo_axis.titleText() == "RPO (s)" and not charts.limit.isVisible()

        refusal = "The engine speaks admin API 1.4, which cannot report a server's history (that needs 1.5)."
        bridge.answers["history"] = EngineError(refusal)
        dialog.on_history_timer_timeout()
        await until(lambda: dialog.message.isVisible(), what="the refusal")
        assert dialog.message.text() == refusal and charts.received.count() == 30
        assert dialog.isVisible() and dialog.tabs.isEnabled()
    finally:
        dialog.close()


@pytest.mark.asyncio
@pytest.mark.qt_loop
async def test_the_engine_stopping_and_starting_while_the_dialog_is_open(qapp: QApplication) -> None:
    """The engine lost: the tabs grey out with one line saying they wait; attached again, they come back and the
    points are asked for anew."""
    bridge = FakeBridge()
    dialog = ServerDetailDialog(bridge, "web-01", status=server())  # type: ignore[arg-type]
    dialog.show()
    try:
        await until(lambda: dialog.points, what="the points")
        asked = bridge.calls.count(("points", ("web-01",)))
        bridge.connection_changed.emit("lost", "Lost the engine; re-attaching…")
        assert not dialog.tabs.isEnabled() and "engine is not running" in dialog.message.text()
        bridge.connection_changed.emit("stopped", "No engine runs.")
        assert not dialog.tabs.isEnabled()
        bridge.connection_changed.emit("attached", "Attached.")
        assert dialog.tabs.isEnabled() and not dialog.message.isVisible()
        await until(lambda: bridge.calls.count(("points", ("web-01",))) > asked, what="the points asked again")
    finally:
        dialog.close()


@pytest.mark.asyncio
@pytest.mark.qt_loop
async def test_escape_during_an_export_cancels_it_and_shuts_the_dialog_down(qapp: QApplication, tmp_path: Path,
                                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    """Escape (QDialog.reject, which has no closeEvent) runs the whole shutdown: the export is cancelled and leaves
    no file, the clock stops, the bridge's updates no longer reach the dialog, and the dialog is deleted once the
    export has cleaned up."""
    bridge = FakeBridge()
    dialog = _open(bridge)

    async def folder(*_: Any) -> Path:
        return tmp_path

    monkeypatch.setattr(server_detail, "choose_folder", folder)
    qapp.setQuitOnLastWindowClosed(False)  # as the console runs: the main window stays
    try:
        await _escape_mid_export(qapp, bridge, dialog, tmp_path)
    finally:
        qapp.setQuitOnLastWindowClosed(True)


async def _escape_mid_export(qapp: QApplication, bridge: FakeBridge, dialog: ServerDetailDialog,
                             tmp_path: Path) -> None:
    await _loaded(dialog)
    bridge.gate = asyncio.Event()
    dialog.export_button.click()
    await until(lambda: dialog.progress is not None and any(tmp_path.iterdir()), what="the export to start")
    # The admin is in the detail window (Escape in the progress window is its Cancel, which stops the export only).
    dialog.activateWindow()
    await until(lambda: qapp.activeWindow() is dialog, what="the detail window to be active")
    QTest.keyClick(dialog, Qt.Key.Key_Escape)
    assert dialog.closing and not dialog.isVisible()
    assert not dialog.clock.isActive() and not dialog.history_timer.isActive()
    state = dialog.state_label.text()
    bridge.server_updated.emit(server(state=ServerState.PAUSED))
    assert dialog.state_label.text() == state  # no longer connected
    await until(lambda: not shiboken6.isValid(dialog), what="the dialog to be deleted once the export ended")
    assert list(tmp_path.iterdir()) == []  # nor a hidden temporary file
    assert [c for c in bridge.calls if c[0] == "export_point"] == [("export_point", ("web-01", 3, 0, "raw"))]


@pytest.mark.asyncio
@pytest.mark.qt_loop
async def test_cancel_during_the_final_fsync_waits_for_it(qapp: QApplication, tmp_path: Path,
                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    """Cancel while the worker fsyncs a disk's file: the file stays open until the fsync returns (it is not
    closed under it), then the export ends cancelled and removes what it wrote."""
    bridge = FakeBridge()
    dialog = _open(bridge)
    entered, release = threading.Event(), threading.Event()
    problems: list[BaseException] = []
    real_fsync = os.fsync

    def slow_fsync(fd: int) -> None:
        entered.set()
        release.wait(10)
        try:
            os.fstat(fd)  # still open
            real_fsync(fd)
        except OSError as exc:
            problems.append(exc)
            raise

    async def folder(*_: Any) -> Path:
        return tmp_path

    monkeypatch.setattr(server_detail, "choose_folder", folder)
    monkeypatch.setattr(server_detail.os, "fsync", slow_fsync)
    try:
        await _loaded(dialog)
        dialog.export_button.click()
        await until(entered.is_set, what="the fsync of the first disk")
        cancel = dialog.progress.findChild(QPushButton)
        cancel.click()
        await asyncio.sleep(0.05)
        assert dialog.export_task is not None  # waiting for the fsync, not gone
        release.set()
        await until(lambda: dialog.export_task is None, what="the export to stop")
        assert problems == [] and list(tmp_path.iterdir()) == []
        assert dialog.message.text() == "Export cancelled: nothing was written."
    finally:
        release.set()
        dialog.close()


@pytest.mark.asyncio
async def test_export_file_writes_blocks_in_a_worker_thread(tmp_path: Path) -> None:
    """What the engine's client writes is kept in memory and written by a worker thread, a block at a time, never
    on the loop's thread; a seek over zeros stays a hole and truncate sets the final size."""
    writes: list[tuple[int, int]] = []

    class Spy(ExportFile):
        def _write_blocks(self, blocks: list[tuple[int, bytearray]]) -> None:
            writes.append((threading.get_ident(), sum(len(b) for _, b in blocks)))
            super()._write_blocks(blocks)

    out = Spy(tmp_path / "image.raw", block=1000)
    try:
        out.write(b"a" * 600)
        out.seek(400, 1)  # a run of zeros: a hole
        assert writes == []  # under a block: nothing written yet
        out.write(b"b" * 600)  # a block is full: the worker writes it
        out.write(b"c" * 10)
        out.seek(500, 1)
        out.truncate(out.tell())
        await out.finish()
    finally:
        await out.aclose()
    assert (tmp_path / "image.raw").read_bytes() == b"a" * 600 + bytes(400) + b"b" * 600 + b"c" * 10 + bytes(500)
    assert [n for _, n in writes] == [1200, 10]
    assert all(thread != threading.get_ident() for thread, _ in writes)
    assert out.closed and "closed=True" in repr(out)


@pytest.mark.asyncio
async def test_a_slow_disk_paces_the_export_without_blocking_the_loop(tmp_path: Path) -> None:
    """With the disk slower than the network, drain() waits on the loop (other tasks run meanwhile) until fewer
    blocks than the cap are queued; nothing is lost."""
    gate = threading.Event()

    class SlowDisk(ExportFile):
        def _write_blocks(self, blocks: list[tuple[int, bytearray]]) -> None:
            gate.wait(10)
            super()._write_blocks(blocks)

    out = SlowDisk(tmp_path / "image.raw", block=100)
    ticks = 0

    async def ticker() -> None:
        nonlocal ticks
        while True:
            ticks += 1
            await asyncio.sleep(0.01)

    running = asyncio.ensure_future(ticker())
    try:
        for i in range(server_detail.EXPORT_BLOCKS_QUEUED):
            out.write(bytes([65 + i]) * 100)  # each fills a block: handed to the (stuck) worker
        drained = asyncio.ensure_future(out.drain())
        await asyncio.sleep(0.2)
        assert not drained.done() and ticks > 1  # it waits, and the loop goes on
        gate.set()
        await asyncio.wait_for(drained, 10)
        await out.finish()
    finally:
        gate.set()
        running.cancel()
        await out.aclose()
    assert (tmp_path / "image.raw").read_bytes() == b"".join(bytes([65 + i]) * 100
                                                             for i in range(server_detail.EXPORT_BLOCKS_QUEUED))


def test_export_progress_shows_at_most_ten_times_a_second(monkeypatch: pytest.MonkeyPatch) -> None:
    """The engine reports every 64 KiB; the progress dialog is updated at most every 0.1 s, and always at the end."""
    clock = [100.0]
    monkeypatch.setattr(server_detail, "_clock", lambda: clock[0])
    shown: list[int] = []
    step = throttled_progress(shown.append)
    for at, written in ((0.0, 10), (0.05, 20), (0.09, 30), (0.11, 40), (0.15, 50), (0.16, 100)):
        clock[0] = 100.0 + at
        step(written, 100)
    assert shown == [100, 400, 1000]


@pytest.mark.asyncio
@pytest.mark.qt_loop
async def test_every_control_has_a_name_for_assistive_technology(qapp: QApplication) -> None:
    """Each control of the dialog has an accessible name (or a text that names it), and no two buttons read the
    same: the two Apply buttons say what they apply."""
    bridge = FakeBridge()
    dialog = _open(bridge)
    try:
        await _loaded(dialog)
        assert dialog.policy_apply.accessibleName() == "Apply policy"
        assert dialog.cap_apply.accessibleName() == "Apply bandwidth cap"
        for widget in [w for kind in (QComboBox, QSpinBox, QTableWidget) for w in dialog.findChildren(kind)]:
            assert widget.accessibleName(), widget.objectName()
        names = [b.accessibleName() or b.text() for b in dialog.findChildren(QAbstractButton)
                 if b.isVisibleTo(dialog) and not b.objectName().startswith("qt_")]
        assert all(names) and len(names) == len(set(names)), names
    finally:
        dialog.close()


def test_the_charts_follow_a_switch_to_dark(qapp: QApplication) -> None:
    """The charts' lines and background come from the palette in use and change with it (the threshold stays
    dashed)."""
    charts = server_detail.HistoryCharts()
    charts.show()
    try:
        for name in ("dark", "light"):
            theme.apply_theme(qapp, name)
            qapp.processEvents()
            palette = theme.PALETTES[name]
            assert charts.received.pen().color().name() == palette["chart_received"]
            assert charts.limit.pen().color().name() == palette["bad"]
            assert charts.limit.pen().style() == Qt.PenStyle.DashLine
            assert charts.rpo_chart.backgroundBrush().color().name() == palette["surface"]
    finally:
        theme.apply_theme(qapp, "light")
        charts.close()
