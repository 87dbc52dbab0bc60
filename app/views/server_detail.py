"""One server in detail, live: its overview (state, health, RPO, policy, bandwidth cap), its disks, its throughput
and RPO over the last hour or day (charts of the samples the engine keeps), its recovery points (and exporting one),
and its recent events.

The dialog is not modal and follows the server by the bridge's signals: updates show at once, the RPO ages every
second, and a server that goes away leaves the dialog disabled with a sentence saying so. A refusal from the engine
shows as one red line under the tabs and changes nothing else.

Exporting a point writes one file per disk, named as ``godwit vm export`` names them (``NAME-diskN.raw`` or
``.vhd``), each first under a hidden temporary name in the chosen folder; the files get their names only once every
disk is complete, so a finished file is never partial, and a cancelled or failed export leaves nothing behind.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import os
import sys
import time
from collections.abc import Coroutine
from pathlib import Path
from typing import Any, BinaryIO

from PySide6.QtCharts import QChart, QChartView, QDateTimeAxis, QLineSeries, QValueAxis
from PySide6.QtCore import QDateTime, QLocale, QMargins, QPointF, Qt, QTimer
from PySide6.QtGui import QCloseEvent, QColor, QFont, QPainter, QPalette, QPen
from PySide6.QtWidgets import (
    QButtonGroup,
    QCheckBox,
    QComboBox,
    QDialog,
    QDialogButtonBox,
    QFileDialog,
    QFormLayout,
    QFrame,
    QHBoxLayout,
    QHeaderView,
    QLabel,
    QProgressBar,
    QProgressDialog,
    QPushButton,
    QSpinBox,
    QStackedWidget,
    QTableWidget,
    QTableWidgetItem,
    QTabWidget,
    QVBoxLayout,
    QWidget,
)
from qasync import asyncWrap

from app.bridge import EngineBridge, EngineError, Event, RecoveryPoint, ServerHistory, ServerStatus
from app.widgets.dialogs import confirm
from app.widgets.formatting import age_text, duration_text, health_colour, health_text, severity_colour, state_text, tr

log = logging.getLogger(__name__)

#: The bandwidth cap the engine takes, Mbit/s.
MIN_MBPS, MAX_MBPS = 1, 100_000
#: Events kept in the Events tab, newest first.
EVENTS_SHOWN = 500
#: Each export format: how it reads, and the suffix of its files (as the CLI names them).
EXPORT_FORMATS: dict[str, tuple[str, str]] = {"raw": ("Raw image", "raw"), "vhd": ("VHD (Hyper-V, Azure)", "vhd")}
#: What a disk's replication phase reads as; "" is a disk in step.
PHASE_TEXTS = {"initial": "Initial replication", "resync": "Resync"}
#: Milliseconds between two loads of the history while the Charts tab shows (the engine's step for the last hour).
HISTORY_REFRESH_MS = 10_000
#: The spans the engine keeps, as the switch reads them.
HISTORY_SPANS: dict[str, str] = {"hour": "Last hour", "day": "Last day"}
#: Each span's x axis: seconds between ticks, how many ticks, and how a tick's time reads.
TIME_TICKS: dict[str, tuple[float, int, str]] = {"hour": (600.0, 7, "HH:mm"), "day": (3 * 3600.0, 9, "ddd HH:mm")}
EMPTY_HISTORY = "No samples yet: the engine keeps them from when it started."
#: Throughput is charted in MB/s (10^6 bytes a second).
MB = 1_000_000
#: The series' colours: received, applied, RPO, the policy's threshold.
RECEIVED_COLOUR, APPLIED_COLOUR, RPO_COLOUR, THRESHOLD_COLOUR = "#1565c0", "#2e7d32", "#6a1b9a", "#c62828"
STYLE = """
QLabel#detail_message[level="error"] { color: #c62828; }
QLabel#detail_message[level="ok"] { color: #1e7d32; }
QLabel#detail_gone { background: #fdecea; color: #8e1b1b; padding: 6px; }
QLabel#detail_history_empty { color: palette(mid); font-size: 11pt; }
"""


def export_file_names(server: str, disk_count: int, fmt: str) -> list[str]:
    """The file of each disk, as ``godwit vm export`` names it: ``web-01-disk0.raw``."""
    suffix = EXPORT_FORMATS[fmt][1]
    return [f"{server}-disk{disk}.{suffix}" for disk in range(disk_count)]


async def choose_folder(parent: QWidget, title: str, start: Path) -> Path | None:
    """Ask for a folder to export into; None when cancelled (a module function: tests replace it)."""
    dialog = QFileDialog(parent, title, str(start))
    dialog.setFileMode(QFileDialog.FileMode.Directory)
    dialog.setOption(QFileDialog.Option.ShowDirsOnly)
    try:
        accepted = await asyncWrap(dialog.exec) == QFileDialog.DialogCode.Accepted
        files = dialog.selectedFiles()
    finally:
        dialog.deleteLater()
    return Path(files[0]) if accepted and files else None


def _item(text: str, *, tooltip: str = "", align_right: bool = False) -> QTableWidgetItem:
    item = QTableWidgetItem(text)
    item.setFlags(Qt.ItemFlag.ItemIsEnabled | Qt.ItemFlag.ItemIsSelectable)
    if tooltip:
        item.setToolTip(tooltip)
    if align_right:
        item.setTextAlignment(Qt.AlignmentFlag.AlignRight | Qt.AlignmentFlag.AlignVCenter)
    return item


def _table(headers: list[str], name: str) -> QTableWidget:
    table = QTableWidget(0, len(headers), objectName=name)
    table.setHorizontalHeaderLabels(headers)
    table.verticalHeader().hide()
    table.setSelectionBehavior(QTableWidget.SelectionBehavior.SelectRows)
    table.setSelectionMode(QTableWidget.SelectionMode.SingleSelection)
    table.horizontalHeader().setSectionResizeMode(QHeaderView.ResizeMode.ResizeToContents)
    table.horizontalHeader().setStretchLastSection(True)
    return table


def _nice_ceiling(value: float) -> float:
    """The smallest of 1, 2, 4, 6 or 8 times a power of ten that is at least ``value``: an axis' top whose quarters
    are round."""
    if value <= 0:
        return 1.0
    power = 10 ** math.floor(math.log10(value))
    return next(m * power for m in (1, 2, 4, 6, 8, 10) if m * power >= value * (1 - 1e-9))


class HistoryCharts(QWidget):
    """Two charts of a server's history: throughput (received and applied, MB/s) and RPO (with the policy's
    threshold dashed), time on the x axis; an Hour/Day switch; an empty state when there are no samples."""

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.setObjectName("detail_charts")
        self.history: ServerHistory | None = None
        self.threshold: float | None = None
        self.span_buttons: dict[str, QPushButton] = {}
        self.span_group = QButtonGroup(self)
        switch = QHBoxLayout()
        switch.setSpacing(0)
        for span, label in HISTORY_SPANS.items():
            button = QPushButton(tr(label), objectName=f"detail_span_{span}", checkable=True)
            button.setAccessibleName(tr("Show the %s") % tr(label).lower())
            self.span_group.addButton(button)
            self.span_buttons[span] = button
            switch.addWidget(button)
        self.span_buttons["hour"].setChecked(True)
        self.updated_label = QLabel(objectName="detail_history_updated")
        self.updated_label.setForegroundRole(QPalette.ColorRole.PlaceholderText)
        top = QHBoxLayout()
        top.addLayout(switch)
        top.addStretch(1)
        top.addWidget(self.updated_label)

        self.received = self._series(tr("Received"), RECEIVED_COLOUR)
        self.applied = self._series(tr("Applied"), APPLIED_COLOUR)
        self.rpo = self._series(tr("RPO"), RPO_COLOUR)
        self.limit = self._series(tr("Policy threshold"), THRESHOLD_COLOUR, Qt.PenStyle.DashLine)
        self.throughput_chart, self.throughput_time, self.throughput_axis = self._chart(
            tr("Throughput (MB/s)"), [self.received, self.applied])
        self.rpo_chart, self.rpo_time, self.rpo_axis = self._chart(tr("RPO (s)"), [self.rpo, self.limit])
        self.throughput_view = self._view(self.throughput_chart, "detail_throughput_chart")
        self.rpo_view = self._view(self.rpo_chart, "detail_rpo_chart")
        charts = QWidget()
        charts_layout = QVBoxLayout(charts)
        charts_layout.setContentsMargins(0, 0, 0, 0)
        charts_layout.addWidget(self.throughput_view, 1)
        charts_layout.addWidget(self.rpo_view, 1)
        self.empty_label = QLabel(tr(EMPTY_HISTORY), objectName="detail_history_empty", wordWrap=True)
        self.empty_label.setAlignment(Qt.AlignmentFlag.AlignCenter)
        self.stack = QStackedWidget()
        self.stack.addWidget(charts)
        self.stack.addWidget(self.empty_label)
        self.stack.setCurrentWidget(self.empty_label)
        layout = QVBoxLayout(self)
        layout.addLayout(top)
        layout.addWidget(self.stack, 1)

    def __repr__(self) -> str:
        h = self.history
        return f"<HistoryCharts {self.span} samples={len(h.samples) if h else None}>"

    @property
    def span(self) -> str:
        return next(span for span, button in self.span_buttons.items() if button.isChecked())

    @staticmethod
    def _series(name: str, colour: str, style: Qt.PenStyle = Qt.PenStyle.SolidLine) -> QLineSeries:
        series = QLineSeries()
        series.setName(name)
        pen = QPen(QColor(colour), 2)
        pen.setStyle(style)
        series.setPen(pen)
        return series

    def _chart(self, title: str, series: list[QLineSeries]) -> tuple[QChart, QDateTimeAxis, QValueAxis]:
        chart = QChart()
        dark = self.palette().color(QPalette.ColorRole.Window).lightness() < 128
        chart.setTheme(QChart.ChartTheme.ChartThemeDark if dark else QChart.ChartTheme.ChartThemeLight)
        chart.setBackgroundRoundness(0)
        chart.setMargins(QMargins(2, 0, 6, 2))
        chart.layout().setContentsMargins(0, 0, 0, 0)
        chart.legend().setAlignment(Qt.AlignmentFlag.AlignTop)
        chart.legend().setFont(self.font())
        time_axis = QDateTimeAxis()
        value_axis = QValueAxis()
        value_axis.setMin(0)
        value_axis.setTickCount(5)  # a top from _nice_ceiling in quarters: round labels
        value_axis.setLabelFormat("%g")
        value_axis.setTitleText(title)
        bold = QFont(self.font())
        bold.setBold(True)
        for axis in (time_axis, value_axis):
            axis.setLabelsFont(self.font())
            axis.setTitleFont(bold)
        chart.addAxis(time_axis, Qt.AlignmentFlag.AlignBottom)
        chart.addAxis(value_axis, Qt.AlignmentFlag.AlignLeft)
        for s in series:
            pen = s.pen()  # the theme replaces a series' pen when it is added: keep ours
            chart.addSeries(s)
            s.setPen(pen)
            s.attachAxis(time_axis)
            s.attachAxis(value_axis)
        return chart, time_axis, value_axis

    @staticmethod
    def _view(chart: QChart, name: str) -> QChartView:
        view = QChartView(chart)
        view.setObjectName(name)
        view.setRenderHint(QPainter.RenderHint.Antialiasing)
        view.setFrameShape(QFrame.Shape.NoFrame)
        view.setMinimumHeight(150)
        return view

    def show_history(self, history: ServerHistory, threshold: float | None, now: float | None = None) -> None:
        """Chart ``history`` over its whole span up to ``now`` (so that an engine that started recently shows as a
        short line at the right), RPO against ``threshold`` (seconds; None: no line)."""
        self.history, self.threshold = history, threshold
        samples = history.samples
        if not samples:
            self.stack.setCurrentWidget(self.empty_label)
            self.updated_label.setText("")
            return
        self.stack.setCurrentWidget(self.stack.widget(0))
        now = max(time.time() if now is None else now, samples[-1].at)
        # Ticks on round times: the hour's every 10 min, the day's every 3 h (the axis ends at the next one).
        tick, ticks, time_format = TIME_TICKS.get(history.span, TIME_TICKS["hour"])
        offset = QDateTime.fromMSecsSinceEpoch(int(now * 1000)).offsetFromUtc()  # round in local time
        now = math.ceil((now + offset) / tick) * tick - offset
        start = now - tick * (ticks - 1)
        begin, end = QDateTime.fromMSecsSinceEpoch(int(start * 1000)), QDateTime.fromMSecsSinceEpoch(int(now * 1000))
        for axis in (self.throughput_time, self.rpo_time):
            axis.setRange(begin, end)
            axis.setFormat(time_format)
            axis.setTickCount(ticks)

        ms = [x.at * 1000 for x in samples]
        self.received.replace([QPointF(t, x.received_bps / MB) for t, x in zip(ms, samples, strict=True)])
        self.applied.replace([QPointF(t, x.applied_bps / MB) for t, x in zip(ms, samples, strict=True)])
        top = max(max(x.received_bps, x.applied_bps) for x in samples) / MB
        # At least 0.01 MB/s: a server that only heartbeats looks idle, not like a busy one
        self.throughput_axis.setRange(0, _nice_ceiling(max(top * 1.1, 0.01)))

        rpos = [(t, x.rpo_seconds) for t, x in zip(ms, samples, strict=True) if x.rpo_seconds is not None]
        highest = max([r for _, r in rpos] + [threshold or 0.0])
        minutes = highest >= 180
        unit = 60.0 if minutes else 1.0
        self.rpo.replace([QPointF(t, r / unit) for t, r in rpos])
        if threshold is not None:
            self.limit.replace([QPointF(start * 1000, threshold / unit), QPointF(now * 1000, threshold / unit)])
        else:
            self.limit.clear()
        self.limit.setVisible(threshold is not None)
        self.rpo_chart.legend().markers(self.limit)[0].setVisible(threshold is not None)
        self.rpo_axis.setRange(0, _nice_ceiling(max(highest / unit * 1.15, 1.0)))
        self.rpo_axis.setTitleText(tr("RPO (min)") if minutes else tr("RPO (s)"))

        step = f"{history.step_seconds / 60:g} min" if history.step_seconds >= 60 else f"{history.step_seconds:g} s"
        updated = QLocale().toString(QDateTime.fromMSecsSinceEpoch(int(samples[-1].at * 1000)).time(),
                                     QLocale.FormatType.ShortFormat)
        self.updated_label.setText(tr("%d samples, one every %s · newest at %s") % (len(samples), step, updated))


class ServerDetailDialog(QDialog):
    """The details of server ``name``. ``status`` and ``events`` are what the console already holds (the status is
    asked of the engine when not given); everything after arrives by the bridge's signals."""

    def __init__(self, bridge: EngineBridge, name: str, parent: QWidget | None = None, *,
                 status: ServerStatus | None = None, events: list[Event] | None = None) -> None:
        super().__init__(parent)
        self.bridge = bridge
        self.name = name
        self.server: ServerStatus | None = None
        self.gone = False
        self.points: list[RecoveryPoint] = []
        self.events: list[Event] = []
        self.tasks: set[asyncio.Task[Any]] = set()
        self.export_task: asyncio.Task[None] | None = None
        self.progress: QProgressDialog | None = None
        self._export_folder = Path.home()
        self._locale = QLocale()
        self.closing = False
        self.setObjectName("server_detail")
        self.setWindowTitle(tr("Server %s") % name)
        self.setStyleSheet(STYLE)
        self.resize(900, 600)

        self.gone_banner = QLabel(objectName="detail_gone", wordWrap=True)
        self.gone_banner.hide()
        self.tabs = QTabWidget(objectName="detail_tabs")
        self.tabs.addTab(self._overview_tab(), tr("Overview"))
        self.tabs.addTab(self._disks_tab(), tr("Disks"))
        self.charts = HistoryCharts()
        self.charts.span_group.buttonClicked.connect(self.on_span_group_button_clicked)
        self.tabs.addTab(self.charts, tr("Charts"))
        self.tabs.addTab(self._points_tab(), tr("Recovery points"))
        self.tabs.addTab(self._events_tab(), tr("Events"))
        self.message = QLabel(objectName="detail_message", wordWrap=True)
        self.message.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        self.message.hide()
        buttons = QDialogButtonBox(QDialogButtonBox.StandardButton.Close)
        buttons.rejected.connect(self.close)
        layout = QVBoxLayout(self)
        layout.addWidget(self.gone_banner)
        layout.addWidget(self.tabs, 1)
        layout.addWidget(self.message)
        layout.addWidget(buttons)

        self.clock = QTimer(self, interval=1000)
        self.clock.timeout.connect(self.on_clock_timeout)
        self.clock.start()
        #: Reloads the history every 10 s while the Charts tab shows.
        self.history_timer = QTimer(self, interval=HISTORY_REFRESH_MS)
        self.history_timer.timeout.connect(self.on_history_timer_timeout)
        self.history_task: asyncio.Task[None] | None = None
        self.history_task_span = "hour"
        self.tabs.currentChanged.connect(self.on_tabs_current_changed)
        bridge.server_updated.connect(self.on_bridge_server_updated)
        bridge.server_removed.connect(self.on_bridge_server_removed)
        bridge.servers_reset.connect(self.on_bridge_servers_reset)
        bridge.events_reset.connect(self.on_bridge_events_reset)
        bridge.event_added.connect(self.on_bridge_event_added)
        bridge.connection_changed.connect(self.on_bridge_connection_changed)
        self.on_bridge_events_reset(events or [])
        if status is not None:
            self.show_server(status)
        else:
            self.start(self.load_server())
        self.start(self.load_policies())
        self.start(self.refresh_points())

    def __repr__(self) -> str:
        state = "gone" if self.gone else self.server.state if self.server else "loading"
        return f"<ServerDetailDialog {self.name} {state} points={len(self.points)} events={len(self.events)}>"

    # --- the tabs ------------------------------------------------------------------------------------
    def _overview_tab(self) -> QWidget:
        page = QWidget()
        self.state_label = QLabel(objectName="detail_state")
        self.health_label = QLabel(objectName="detail_health", wordWrap=True)
        self.rpo_label = QLabel(objectName="detail_rpo")
        self.point_label = QLabel(objectName="detail_newest_point")
        self.host_label = QLabel(objectName="detail_host")
        self.host_label.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)

        self.policy_combo = QComboBox(objectName="detail_policy")
        self.policy_apply = QPushButton(tr("Apply"), objectName="detail_policy_apply")
        self.policy_apply.clicked.connect(self.on_policy_apply_clicked)
        policy_row = QHBoxLayout()
        policy_row.addWidget(self.policy_combo, 1)
        policy_row.addWidget(self.policy_apply)

        # Wider than the engine takes, so that a value typed out of range is refused in words, not silently clamped.
        self.cap_spin = QSpinBox(objectName="detail_cap", minimum=0, maximum=10 * MAX_MBPS, suffix=" Mbit/s")
        self.cap_spin.setValue(100)
        self.no_cap_check = QCheckBox(tr("No cap"), objectName="detail_no_cap")
        self.no_cap_check.toggled.connect(self.on_no_cap_check_toggled)
        self.cap_apply = QPushButton(tr("Apply"), objectName="detail_cap_apply")
        self.cap_apply.clicked.connect(self.on_cap_apply_clicked)
        cap_row = QHBoxLayout()
        cap_row.addWidget(self.cap_spin, 1)
        cap_row.addWidget(self.no_cap_check)
        cap_row.addWidget(self.cap_apply)

        form = QFormLayout(page)
        form.addRow(tr("State:"), self.state_label)
        form.addRow(tr("Health:"), self.health_label)
        form.addRow(tr("RPO:"), self.rpo_label)
        form.addRow(tr("Newest recovery point:"), self.point_label)
        form.addRow(tr("Host:"), self.host_label)
        form.addRow(tr("Policy:"), policy_row)
        form.addRow(tr("Bandwidth cap:"), cap_row)
        return page

    def _disks_tab(self) -> QWidget:
        page = QWidget()
        self.disks_table = _table([tr("Disk"), tr("Size"), tr("Replication")], "detail_disks")
        layout = QVBoxLayout(page)
        layout.addWidget(self.disks_table)
        return page

    def _points_tab(self) -> QWidget:
        page = QWidget()
        self.points_table = _table([tr("Point"), tr("Created"), tr("Age"), tr("Kind")], "detail_points")
        self.points_table.itemSelectionChanged.connect(self._enable_actions)
        self.refresh_button = QPushButton(tr("Refresh"), objectName="detail_points_refresh")
        self.refresh_button.clicked.connect(self.on_refresh_button_clicked)
        self.format_combo = QComboBox(objectName="detail_export_format")
        for fmt, (label, _suffix) in EXPORT_FORMATS.items():
            self.format_combo.addItem(tr(label), fmt)
        self.export_button = QPushButton(tr("Export…"), objectName="detail_export")
        self.export_button.clicked.connect(self.on_export_button_clicked)
        row = QHBoxLayout()
        row.addWidget(self.refresh_button)
        row.addStretch(1)
        row.addWidget(QLabel(tr("Format:")))
        row.addWidget(self.format_combo)
        row.addWidget(self.export_button)
        layout = QVBoxLayout(page)
        layout.addWidget(self.points_table, 1)
        layout.addLayout(row)
        return page

    def _events_tab(self) -> QWidget:
        page = QWidget()
        self.events_table = _table([tr("Time"), tr("Severity"), tr("Message")], "detail_events")
        self.events_table.setWordWrap(False)
        layout = QVBoxLayout(page)
        layout.addWidget(self.events_table)
        return page

    # --- tasks ---------------------------------------------------------------------------------------
    def start(self, coro: Coroutine[Any, Any, None]) -> asyncio.Task[None]:
        """Run a command of this dialog as a task it keeps until the task ends."""
        task = asyncio.ensure_future(coro)
        self.tasks.add(task)
        task.add_done_callback(self._finished)
        return task

    def _finished(self, task: asyncio.Task[Any]) -> None:
        self.tasks.discard(task)
        if self.closing and not self.tasks:  # closed: gone once its last command has cleaned up
            self.deleteLater()
        if not task.cancelled() and task.exception() is not None:  # a bug: shown like an async slot's
            exc = task.exception()
            assert exc is not None
            sys.excepthook(type(exc), exc, exc.__traceback__)

    def say(self, level: str, text: str) -> None:
        """One line under the tabs: "error" (red: a refusal), "ok" (green), or "" (hidden when empty)."""
        self.message.setText(text)
        self.message.setProperty("level", level)
        self.message.style().unpolish(self.message)
        self.message.style().polish(self.message)
        self.message.setVisible(bool(text))

    async def _ask(self, call: Coroutine[Any, Any, Any]) -> Any:
        """Await an engine command; a refusal is said in one red line and returns None."""
        try:
            return await call
        except EngineError as exc:
            self.say("error", exc.message)
            return None

    # --- following the server -------------------------------------------------------------------------
    async def load_server(self) -> None:
        status = await self._ask(self.bridge.server(self.name))
        if status is not None and self.server is None and not self.gone:  # an update may have come first
            self.show_server(status)

    async def load_policies(self) -> None:
        policies = await self._ask(self.bridge.policies())
        if policies is None:
            return
        current = self.server.policy if self.server else None
        self.policy_combo.clear()
        self.policy_combo.addItems([p.name for p in policies])
        if current:
            self.policy_combo.setCurrentText(current)
        self._enable_actions()

    def on_bridge_server_updated(self, status: ServerStatus) -> None:
        if status.name == self.name and not self.gone:
            self.show_server(status)

    def on_bridge_connection_changed(self, state: str, _detail: str) -> None:
        """Without the engine nothing here can be asked or changed: the tabs wait, greyed, with one line saying
        why; once the console is attached again they come back with the server as it is now."""
        attached = state == "attached"
        if self.gone or attached == self.tabs.isEnabled():
            return
        self.tabs.setEnabled(attached)
        if attached:
            self.say("", "")
            self.start(self.refresh_points())
        else:
            self.say("error", tr("The engine is not running: these details wait for it and come back by "
                                 "themselves once it runs again."))

    def on_bridge_servers_reset(self, servers: list[ServerStatus]) -> None:
        for status in servers:
            if status.name == self.name:
                self.show_server(status)
                return
        self.on_bridge_server_removed(self.name)

    def on_bridge_server_removed(self, name: str) -> None:
        if name != self.name or self.gone:
            return
        self.gone = True
        self.gone_banner.setText(tr("%s is no longer registered on this appliance: nothing here changes any more. "
                                    "Close this window.") % name)
        self.gone_banner.show()
        self.tabs.setEnabled(False)
        for label in (self.rpo_label, self.health_label):  # their colours would look live
            label.setStyleSheet("")
        self.clock.stop()
        self.history_timer.stop()

    def show_server(self, status: ServerStatus) -> None:
        """Show ``status``; a control the admin is editing keeps what they typed (only a new value from the engine
        replaces it)."""
        previous, self.server = self.server, status
        self.state_label.setText(state_text(status.state))
        health = health_text(status.health, status.health_cause)
        if status.health_detail:
            health += " — " + status.health_detail
        self.health_label.setText(health)
        self.health_label.setStyleSheet(f"color: {health_colour(status.health)};")
        self.host_label.setText(" · ".join(x for x in (status.hostname, status.address or "", status.os) if x))
        if (previous is None or previous.policy != status.policy) and status.policy:
            self.policy_combo.setCurrentText(status.policy)
        if previous is None or previous.max_mbps != status.max_mbps:
            self.no_cap_check.setChecked(status.max_mbps is None)
            if status.max_mbps is not None:
                self.cap_spin.setValue(round(status.max_mbps))
        self.show_ages()
        self.show_disks(status)
        self._enable_actions()

    def on_clock_timeout(self) -> None:
        self.show_ages()

    def show_ages(self, now: float | None = None) -> None:
        """The RPO and the newest point's age at ``now``: they grow while nothing new arrives."""
        s = self.server
        if s is None:
            return
        now = time.time() if now is None else now
        rpo = s.rpo_at(now)
        if rpo is None:
            text, colour = tr("no consistent data yet"), ""
        else:
            text, colour = duration_text(rpo), ""
            if s.rpo_threshold is not None:
                over = rpo > s.rpo_threshold
                text += (tr(" — above the policy's %s") if over else tr(" (the policy allows %s)")) \
                    % duration_text(s.rpo_threshold)
                colour = "#c62828" if over else "#1e7d32"
        self.rpo_label.setText(text)
        self.rpo_label.setStyleSheet(f"color: {colour};" if colour else "")
        self.point_label.setText(age_text(s.last_recovery_point, now) if s.last_recovery_point else tr("none yet"))

    def _size(self, n: float, precision: int = 1) -> str:
        return self._locale.formattedDataSize(int(n), precision, QLocale.DataSizeFormat.DataSizeIecFormat)

    def disk_progress_text(self, s: ServerStatus, index: int) -> str:
        """How far a disk's replication is: ``Resync 42% · 80.0 MiB/s · 12 min left``, ``In step``."""
        d = s.disks[index]
        if not s.replicating:
            return tr("Not replicating")
        phase = PHASE_TEXTS.get(d.phase)
        if phase is None and d.phase:
            phase = d.phase  # a phase from a newer engine reads as the engine names it
        if phase is None:
            return tr("In step")
        parts = [tr(phase) + (f" {100 * d.bytes_done / d.bytes_total:.0f}%" if d.bytes_total else "")]
        if d.throughput_bps:
            parts.append(self._size(d.throughput_bps) + "/s")
        if d.eta_seconds is not None:
            parts.append(tr("%s left") % duration_text(d.eta_seconds))
        return " · ".join(parts)

    def show_disks(self, s: ServerStatus) -> None:
        table = self.disks_table
        table.setRowCount(len(s.disks))
        for row, d in enumerate(s.disks):
            table.setItem(row, 0, _item(d.path, tooltip=d.note))
            table.setItem(row, 1, _item(self._size(d.size), align_right=True))
            text = self.disk_progress_text(s, row)
            moving = s.replicating and bool(d.phase)
            widget = table.cellWidget(row, 2)
            if moving:
                bar = widget if isinstance(widget, QProgressBar) else QProgressBar(objectName="detail_disk_progress")
                bar.setRange(0, 1000)
                bar.setValue(int(1000 * d.bytes_done / d.bytes_total) if d.bytes_total else 0)
                bar.setFormat(text)
                if bar is not widget:
                    table.setCellWidget(row, 2, bar)
                table.setItem(row, 2, _item(""))
            else:
                if widget is not None:
                    table.removeCellWidget(row, 2)
                table.setItem(row, 2, _item(text))

    # --- history -----------------------------------------------------------------------------------
    def on_tabs_current_changed(self, index: int) -> None:
        """The Charts tab loads the history when it shows and every 10 s while it shows; other tabs stop that."""
        if self.tabs.widget(index) is self.charts:
            self.history_timer.start()
            self.load_history_now()
        else:
            self.history_timer.stop()

    def on_history_timer_timeout(self) -> None:
        if self.isVisible():
            self.load_history_now()

    def on_span_group_button_clicked(self, _button: QPushButton) -> None:
        self.load_history_now()

    def load_history_now(self) -> None:
        """Ask for the history of the chosen span, unless that is already under way (a slow engine is not asked
        again every 10 s while it still answers the last)."""
        if self.gone or self.closing:
            return
        span = self.charts.span
        if self.history_task is not None and not self.history_task.done():
            if self.history_task_span == span:
                return
            self.history_task.cancel()  # its answer, for the other span, would be thrown away
        self.history_task_span = span
        self.history_task = self.start(self.load_history(span))

    async def load_history(self, span: str) -> None:
        history = await self._ask(self.bridge.server_history(self.name, span))
        if history is None or span != self.charts.span or self.closing or self.gone:
            return
        self.charts.show_history(history, self.server.rpo_threshold if self.server else None)

    # --- events ------------------------------------------------------------------------------------
    def on_bridge_events_reset(self, events: list[Event]) -> None:
        mine = [e for e in events if e.server == self.name]
        self.events = sorted(mine, key=lambda e: (e.ts, e.id), reverse=True)[:EVENTS_SHOWN]
        self.events_table.setRowCount(0)
        self.events_table.setRowCount(len(self.events))
        for row, event in enumerate(self.events):
            self._set_event_row(row, event)

    def on_bridge_event_added(self, event: Event) -> None:
        if event.server != self.name:
            return
        self.events.insert(0, event)
        self.events_table.insertRow(0)
        self._set_event_row(0, event)
        if len(self.events) > EVENTS_SHOWN:
            self.events.pop()
            self.events_table.removeRow(self.events_table.rowCount() - 1)

    def _set_event_row(self, row: int, event: Event) -> None:
        self.events_table.setItem(row, 0, _item(time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(event.ts))))
        severity = _item(tr(event.severity.capitalize()))
        severity.setForeground(QColor(severity_colour(event.severity)))
        self.events_table.setItem(row, 1, severity)
        self.events_table.setItem(row, 2, _item(event.message, tooltip=event.message))

    # --- commands ------------------------------------------------------------------------------------
    def _enable_actions(self) -> None:
        s, busy = self.server, self.export_task is not None
        replicating = s is not None and s.replicating
        self.policy_combo.setEnabled(replicating and self.policy_combo.count() > 0)
        self.policy_apply.setEnabled(replicating and self.policy_combo.count() > 0)
        self.cap_spin.setEnabled(not self.no_cap_check.isChecked())
        self.policy_combo.setToolTip("" if replicating else tr("Enable replication first; then a policy applies."))
        self.export_button.setEnabled(not busy and s is not None and bool(s.disks)
                                      and self.selected_point() is not None)

    def on_no_cap_check_toggled(self, _checked: bool) -> None:
        self._enable_actions()

    def on_policy_apply_clicked(self) -> None:
        self.start(self.apply_policy(self.policy_combo.currentText()))

    async def apply_policy(self, policy: str) -> None:
        self.policy_apply.setEnabled(False)
        self.say("", "")
        try:
            status = await self._ask(self.bridge.set_policy(self.name, policy))
        finally:
            self._enable_actions()
        if status is not None:
            self.show_server(status)
            self.say("ok", tr("%s now replicates under the policy %s.") % (self.name, policy))

    def on_cap_apply_clicked(self) -> None:
        mbps = None if self.no_cap_check.isChecked() else self.cap_spin.value()
        self.start(self.apply_cap(mbps))

    async def apply_cap(self, mbps: float | None) -> None:
        """Cap the server at ``mbps`` (None: no cap); a value out of the engine's range is refused here."""
        if mbps is not None and not MIN_MBPS <= mbps <= MAX_MBPS:
            self.say("error", tr("The bandwidth cap must be from %d to %d Mbit/s: type a value in that range, or "
                                 "tick No cap.") % (MIN_MBPS, MAX_MBPS))
            return
        self.cap_apply.setEnabled(False)
        self.say("", "")
        try:
            status = await self._ask(self.bridge.set_max_mbps(self.name, mbps))
        finally:
            self.cap_apply.setEnabled(True)
        if status is not None:
            self.show_server(status)
            self.say("ok", tr("The bandwidth cap is removed.") if mbps is None
                     else tr("The bandwidth cap is %g Mbit/s.") % mbps)

    # --- recovery points -------------------------------------------------------------------------------
    def on_refresh_button_clicked(self) -> None:
        self.start(self.refresh_points())

    async def refresh_points(self) -> None:
        self.refresh_button.setEnabled(False)
        try:
            points = await self._ask(self.bridge.points(self.name))
        finally:
            self.refresh_button.setEnabled(True)
        if points is not None:
            self.show_points(points)

    def show_points(self, points: list[RecoveryPoint]) -> None:
        """List ``points`` newest first; the selected point stays selected when it is still there."""
        selected = self.selected_point()
        self.points = sorted(points, key=lambda p: (p.created_at, p.id), reverse=True)
        table = self.points_table
        table.setRowCount(len(self.points))
        now = time.time()
        for row, p in enumerate(self.points):
            table.setItem(row, 0, _item(str(p.id), align_right=True))
            table.setItem(row, 1, _item(time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(p.created_at))))
            table.setItem(row, 2, _item(age_text(p.created_at, now)))
            table.setItem(row, 3, _item(p.kind))
        keep = next((row for row, p in enumerate(self.points) if selected and p.id == selected.id), 0 if points else -1)
        if keep >= 0:
            table.selectRow(keep)
        self._enable_actions()

    def selected_point(self) -> RecoveryPoint | None:
        rows = {i.row() for i in self.points_table.selectedIndexes()}
        return self.points[min(rows)] if rows and min(rows) < len(self.points) else None

    def on_export_button_clicked(self) -> None:
        point, fmt = self.selected_point(), self.format_combo.currentData()
        if point is not None and self.export_task is None:
            self.export_task = self.start(self.export(point, fmt))
            self._enable_actions()

    async def export(self, point: RecoveryPoint, fmt: str) -> None:
        """Ask for a folder, then write every disk of ``point`` as ``fmt`` into it; existing files are replaced only
        once the admin confirms. Cancelling removes what was written."""
        try:
            await self._export(point, fmt)
        finally:
            self.export_task = None
            self._enable_actions()

    async def _export(self, point: RecoveryPoint, fmt: str) -> None:
        s = self.server
        if s is None or not s.disks:
            return
        folder = await choose_folder(self, tr("Export point %s of %s to a folder") % (point.id, self.name),
                                     self._export_folder)
        if folder is None:
            return
        if not folder.is_dir():
            self.say("error", tr("%s is not a folder: choose an existing folder.") % folder)
            return
        paths = [folder / n for n in export_file_names(self.name, len(s.disks), fmt)]
        existing = [p for p in paths if p.exists() or p.is_symlink()]
        if existing and not await confirm(
                self, tr("Replace the existing files?"),
                tr("%s already exist(s) in %s. Replace with point %s?")
                % (", ".join(p.name for p in existing), folder, point.id), tr("Replace")):
            self.say("", tr("Nothing exported: the existing files are as they were."))
            return
        self._export_folder = folder
        self.say("", "")
        self.progress = progress = QProgressDialog(tr("Exporting…"), tr("Cancel"), 0, 1000, self)
        progress.setObjectName("detail_export_progress")
        progress.setWindowTitle(tr("Export point %s") % point.id)
        progress.setMinimumDuration(0)
        progress.setAutoClose(False)
        progress.setAutoReset(False)
        task = asyncio.current_task()
        assert task is not None
        progress.canceled.connect(task.cancel)
        progress.show()
        temps: list[Path] = []
        log.info("export.started server=%s point=%s format=%s folder=%s", self.name, point.id, fmt, folder)
        try:
            for disk, path in enumerate(paths):
                temp = path.with_name(f".{path.name}.{os.getpid()}-{time.monotonic_ns()}.partial")
                temps.append(temp)
                progress.setLabelText(tr("Disk %d of %d: %s") % (disk + 1, len(paths), path.name))
                progress.setValue(0)

                def step(written: int, total: int) -> None:
                    progress.setValue(int(1000 * written / total) if total else 1000)

                with open(temp, "xb") as out:
                    await self.bridge.export_point(self.name, point.id, disk, fmt, out, step)
                    await _sync(out)
            for temp, path in zip(temps, paths, strict=True):  # every disk is whole: now they get their names
                os.replace(temp, path)
            temps.clear()
        except asyncio.CancelledError:
            self.say("", tr("Export cancelled: nothing was written."))
            log.info("export.cancelled server=%s point=%s", self.name, point.id)
        except EngineError as exc:
            self.say("error", exc.message)
        except OSError as exc:
            self.say("error", tr("Could not write in %s (%s). Choose another folder and export again.")
                     % (folder, exc.strerror or exc))
        else:
            self.say("ok", tr("Exported point %s to %s.") % (point.id, ", ".join(str(p) for p in paths)))
            log.info("export.complete server=%s point=%s files=%d", self.name, point.id, len(paths))
        finally:
            for temp in temps:
                with contextlib.suppress(OSError):
                    temp.unlink()
            progress.canceled.disconnect(task.cancel)  # closing it would emit canceled
            progress.close()
            progress.deleteLater()
            self.progress = None

    # --- closing -----------------------------------------------------------------------------------------
    def closeEvent(self, event: QCloseEvent) -> None:
        """Closing stops an export (its files are removed) and the dialog's other commands; the dialog is deleted
        once they have ended."""
        self.closing = True
        self.clock.stop()
        self.history_timer.stop()
        for task in list(self.tasks):
            task.cancel()
        if not self.tasks:
            self.deleteLater()
        for signal, slot in ((self.bridge.server_updated, self.on_bridge_server_updated),
                             (self.bridge.server_removed, self.on_bridge_server_removed),
                             (self.bridge.servers_reset, self.on_bridge_servers_reset),
                             (self.bridge.events_reset, self.on_bridge_events_reset),
                             (self.bridge.event_added, self.on_bridge_event_added),
                             (self.bridge.connection_changed, self.on_bridge_connection_changed)):
            with contextlib.suppress(RuntimeError, TypeError):
                signal.disconnect(slot)
        super().closeEvent(event)


async def _sync(out: BinaryIO) -> None:
    """Flush ``out`` to the disk before it is renamed (in a thread: a large image can take a while)."""
    out.flush()
    await asyncio.get_running_loop().run_in_executor(None, os.fsync, out.fileno())
