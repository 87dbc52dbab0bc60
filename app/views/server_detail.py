"""One server in detail, live: its overview (state, health, RPO, policy, bandwidth cap), its disks, its throughput
and RPO over the last hour or day (charts of the samples the engine keeps), its recovery points (and exporting one),
and its recent events.

The dialog is not modal and follows the server by the bridge's signals: updates show at once, the RPO ages every
second, and a server that goes away leaves the dialog disabled with a sentence saying so. A refusal from the engine
shows as one red line under the tabs and changes nothing else.

Exporting a point writes one file per disk, named as ``godwit vm export`` names them (``NAME-diskN.raw`` or
``.vhd``), each first under a hidden temporary name in the chosen folder; the files get their names only once every
disk is complete, so a finished file is never partial, and a cancelled or failed export leaves nothing behind. The
engine's stream is written by a worker thread in blocks of :data:`EXPORT_BLOCK` bytes (:class:`ExportFile`), never on
the event loop that draws the console.

Every way of closing the dialog (Close, Escape, the window's close button) runs the same shutdown (:meth:`done`).
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import logging
import math
import os
import time
from collections import deque
from collections.abc import Callable, Coroutine
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any

from PySide6.QtCharts import QChart, QChartView, QDateTimeAxis, QLineSeries, QValueAxis
from PySide6.QtCore import QDateTime, QEvent, QLocale, QMargins, QPointF, Qt, QTimer
from PySide6.QtGui import QColor, QFont, QPainter, QPalette, QPen
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

from app import theme
from app.bridge import (
    MAX_MBPS,
    MIN_MBPS,
    EngineBridge,
    EngineError,
    Event,
    RecoveryPoint,
    ServerHistory,
    ServerStatus,
)
from app.widgets.dialogs import confirm
from app.widgets.formatting import (
    age_text,
    duration_text,
    health_text,
    health_tone,
    rate_text,
    set_tone,
    severity_colour,
    show_line,
    size_text,
    state_text,
    tr,
)
from app.widgets.tasks import TaskOwner

log = logging.getLogger(__name__)

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
#: The series' colours, as palette tokens (app/theme.py): received, applied, RPO, the policy's threshold.
RECEIVED_COLOUR, APPLIED_COLOUR, RPO_COLOUR, THRESHOLD_COLOUR = "chart_received", "chart_applied", "chart_rpo", "bad"
#: An export is written to its file in blocks of this many bytes, by a worker thread.
EXPORT_BLOCK = 8 << 20
#: Blocks an export may hold in memory while the disk writes (a disk slower than the network waits, bounded).
EXPORT_BLOCKS_QUEUED = 4
#: Seconds between two updates of the export's progress dialog (at most ~10 a second).
PROGRESS_EVERY = 0.1
#: The clock of the progress throttle (a test replaces it).
_clock = time.monotonic


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
        """A line named ``name`` in the palette colour ``colour`` (a token: it follows light and dark)."""
        series = QLineSeries()
        series.setName(name)
        series.setProperty("colour_token", colour)
        series.setProperty("dashed", style == Qt.PenStyle.DashLine)
        pen = QPen(QColor(theme.colour(colour)), 2)
        pen.setStyle(style)
        series.setPen(pen)
        return series

    def _chart_theme(self, chart: QChart) -> None:
        """The chart in the palette in use: the chart's own light or dark theme, our series' colours kept."""
        chart.setTheme(QChart.ChartTheme.ChartThemeDark if theme.current() == "dark"
                       else QChart.ChartTheme.ChartThemeLight)
        chart.setBackgroundBrush(QColor(theme.colour("surface")))
        for series in chart.series():
            assert isinstance(series, QLineSeries)
            pen = QPen(QColor(theme.colour(str(series.property("colour_token")))), 2)  # the theme replaced ours
            pen.setStyle(Qt.PenStyle.DashLine if series.property("dashed") else Qt.PenStyle.SolidLine)
            series.setPen(pen)
        for axis in chart.axes():
            axis.setLabelsFont(self.font())
            bold = QFont(self.font())
            bold.setBold(True)
            axis.setTitleFont(bold)
        chart.legend().setFont(self.font())

    def changeEvent(self, event: QEvent) -> None:
        """The console switched between light and dark: the charts follow."""
        super().changeEvent(event)
        if event.type() == QEvent.Type.PaletteChange and hasattr(self, "rpo_chart"):
            for chart in (self.throughput_chart, self.rpo_chart):
                self._chart_theme(chart)

    def _chart(self, title: str, series: list[QLineSeries]) -> tuple[QChart, QDateTimeAxis, QValueAxis]:
        chart = QChart()
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
            chart.addSeries(s)
            s.attachAxis(time_axis)
            s.attachAxis(value_axis)
        self._chart_theme(chart)
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
        #: Every command under way; once the dialog is closed and the last has ended, the dialog is deleted.
        self.tasks = TaskOwner(on_idle=self.deleteLater)
        self.export_task: asyncio.Task[None] | None = None
        self.progress: QProgressDialog | None = None
        self._export_folder = Path.home()
        self.closing = False
        self.setObjectName("server_detail")
        self.setWindowTitle(tr("Server %s") % name)
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
        buttons.rejected.connect(self.reject)
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
        self.policy_combo.setAccessibleName(tr("Replication policy"))
        self.policy_apply = QPushButton(tr("Apply"), objectName="detail_policy_apply")
        self.policy_apply.setAccessibleName(tr("Apply policy"))
        self.policy_apply.clicked.connect(self.on_policy_apply_clicked)
        policy_row = QHBoxLayout()
        self.policy_combo.setMinimumWidth(220)
        policy_row.addWidget(self.policy_combo)
        policy_row.addWidget(self.policy_apply)
        policy_row.addStretch(1)

        # Wider than the engine takes, so that a value typed out of range is refused in words, not silently clamped.
        self.cap_spin = QSpinBox(objectName="detail_cap", minimum=0, maximum=int(10 * MAX_MBPS), suffix=" Mbit/s")
        self.cap_spin.setValue(100)
        self.cap_spin.setAccessibleName(tr("Bandwidth cap in Mbit/s"))
        self.no_cap_check = QCheckBox(tr("No cap"), objectName="detail_no_cap")
        self.no_cap_check.setAccessibleName(tr("No bandwidth cap"))
        self.no_cap_check.toggled.connect(self.on_no_cap_check_toggled)
        self.cap_apply = QPushButton(tr("Apply"), objectName="detail_cap_apply")
        self.cap_apply.setAccessibleName(tr("Apply bandwidth cap"))
        self.cap_apply.clicked.connect(self.on_cap_apply_clicked)
        cap_row = QHBoxLayout()
        self.cap_spin.setMinimumWidth(220)
        cap_row.addWidget(self.cap_spin)
        cap_row.addWidget(self.no_cap_check)
        cap_row.addWidget(self.cap_apply)
        cap_row.addStretch(1)

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
        self.disks_table.setAccessibleName(tr("Disks of %s") % self.name)
        layout = QVBoxLayout(page)
        layout.addWidget(self.disks_table)
        return page

    def _points_tab(self) -> QWidget:
        page = QWidget()
        self.points_table = _table([tr("Point"), tr("Created"), tr("Age"), tr("Kind")], "detail_points")
        self.points_table.setAccessibleName(tr("Recovery points of %s") % self.name)
        self.points_table.itemSelectionChanged.connect(self._enable_actions)
        self.refresh_button = QPushButton(tr("Refresh"), objectName="detail_points_refresh")
        self.refresh_button.setAccessibleName(tr("Refresh the recovery points"))
        self.refresh_button.clicked.connect(self.on_refresh_button_clicked)
        self.format_combo = QComboBox(objectName="detail_export_format")
        self.format_combo.setAccessibleName(tr("Export format"))
        for fmt, (label, _suffix) in EXPORT_FORMATS.items():
            self.format_combo.addItem(tr(label), fmt)
        self.export_button = QPushButton(tr("Export…"), objectName="detail_export")
        self.export_button.setAccessibleName(tr("Export the selected recovery point"))
        self.export_button.clicked.connect(self.on_export_button_clicked)
        format_label = QLabel(tr("Format:"))
        format_label.setBuddy(self.format_combo)
        row = QHBoxLayout()
        row.addWidget(self.refresh_button)
        row.addStretch(1)
        row.addWidget(format_label)
        row.addWidget(self.format_combo)
        row.addWidget(self.export_button)
        layout = QVBoxLayout(page)
        layout.addWidget(self.points_table, 1)
        layout.addLayout(row)
        return page

    def _events_tab(self) -> QWidget:
        page = QWidget()
        self.events_table = _table([tr("Time"), tr("Severity"), tr("Message")], "detail_events")
        self.events_table.setAccessibleName(tr("Events of %s") % self.name)
        self.events_table.setWordWrap(False)
        layout = QVBoxLayout(page)
        layout.addWidget(self.events_table)
        return page

    # --- tasks ---------------------------------------------------------------------------------------
    def start(self, coro: Coroutine[Any, Any, None]) -> asyncio.Task[None] | None:
        """Run a command of this dialog as a task it keeps until the task ends (nothing once closed)."""
        return self.tasks.start(coro)

    def say(self, level: str, text: str) -> None:
        """One line under the tabs: "error" (red: a refusal), "ok" (green), or "" (hidden when empty)."""
        show_line(self.message, level, text)

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
            set_tone(label, "")
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
        set_tone(self.health_label, health_tone(status.health))
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
            text, tone = tr("no consistent data yet"), ""
        else:
            text, tone = duration_text(rpo), ""
            if s.rpo_threshold is not None:
                over = rpo > s.rpo_threshold
                text += (tr(" — above the policy's %s") if over else tr(" (the policy allows %s)")) \
                    % duration_text(s.rpo_threshold)
                tone = "bad" if over else "ok"
        self.rpo_label.setText(text)
        set_tone(self.rpo_label, tone)
        self.point_label.setText(age_text(s.last_recovery_point, now) if s.last_recovery_point else tr("none yet"))

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
            parts.append(rate_text(d.throughput_bps))
        if d.eta_seconds is not None:
            parts.append(tr("%s left") % duration_text(d.eta_seconds))
        return " · ".join(parts)

    def show_disks(self, s: ServerStatus) -> None:
        table = self.disks_table
        table.setRowCount(len(s.disks))
        for row, d in enumerate(s.disks):
            table.setItem(row, 0, _item(d.path, tooltip=d.note))
            table.setItem(row, 1, _item(size_text(d.size), align_right=True))
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
                out = ExportFile(temp)
                try:
                    await self.bridge.export_point(self.name, point.id, disk, fmt, out,
                                                   throttled_progress(progress.setValue))
                    await out.finish()
                finally:
                    await out.aclose()  # waits (shielded) for the worker: the file is closed only once it is idle
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
    def done(self, result: int) -> None:
        """Every way of closing ends here (Close and Escape call :meth:`reject`, the window's close button
        ``closeEvent`` → ``reject``): :meth:`shut_down`, then hide."""
        self.shut_down()
        super().done(result)

    def reject(self) -> None:
        """Escape, Close: the same shutdown as every other way of closing (through :meth:`done`)."""
        self.done(QDialog.DialogCode.Rejected)

    def shut_down(self) -> None:
        """Stop following the server: the clock and the history stop, an export is cancelled (its files are
        removed), the other commands are cancelled, the bridge's signals are let go; the dialog is deleted once its
        last command has cleaned up. Idempotent."""
        if self.closing:
            return
        self.closing = True
        self.clock.stop()
        self.history_timer.stop()
        for signal, slot in ((self.bridge.server_updated, self.on_bridge_server_updated),
                             (self.bridge.server_removed, self.on_bridge_server_removed),
                             (self.bridge.servers_reset, self.on_bridge_servers_reset),
                             (self.bridge.events_reset, self.on_bridge_events_reset),
                             (self.bridge.event_added, self.on_bridge_event_added),
                             (self.bridge.connection_changed, self.on_bridge_connection_changed)):
            with contextlib.suppress(RuntimeError, TypeError):
                signal.disconnect(slot)
        self.tasks.cancel_all()


def throttled_progress(show: Callable[[int], None], every: float = PROGRESS_EVERY) -> Callable[[int, int], None]:
    """A ``progress(written, total)`` for the engine's export that shows permille through ``show`` at most once per
    ``every`` seconds (the engine calls it for every 64 KiB), and always the end."""
    last = [-math.inf]

    def step(written: int, total: int) -> None:
        now = _clock()
        if now - last[0] >= every or written >= total:
            last[0] = now
            show(int(1000 * written / total) if total else 1000)

    return step


class ExportFile:
    """The file an export streams into, written off the event loop.

    The engine's client writes synchronously (``write``, ``seek(n, 1)`` over a run of zeros to keep the image
    sparse, ``truncate`` at the end). Here those calls only record the data in memory; every :data:`EXPORT_BLOCK`
    bytes a block goes to one worker thread, which writes the blocks in order. Should the disk be slower than the
    network, at most :data:`EXPORT_BLOCKS_QUEUED` blocks wait; the next ``write`` then waits for the oldest (memory
    stays bounded). :meth:`finish` writes the rest and fsyncs; :meth:`aclose` waits for the worker, shielded from
    cancellation, before closing the file (a cancelled fsync must not find its file closed).
    """

    def __init__(self, path: Path, *, block: int = EXPORT_BLOCK) -> None:
        self.path = path
        self.block = block
        self._file = open(path, "xb")  # noqa: SIM115 - closed by aclose, once the worker is idle
        self._worker = ThreadPoolExecutor(max_workers=1, thread_name_prefix="godwit-export")
        self._position = 0
        self._pending: list[tuple[int, bytearray]] = []
        self._pending_bytes = 0
        self._queued: deque[Future[None]] = deque()
        self.closed = False

    def __repr__(self) -> str:
        return (f"<ExportFile {self.path.name} at={self._position} pending={self._pending_bytes} "
                f"queued={len(self._queued)} closed={self.closed}>")

    # --- what the engine's client calls (on the loop: memory only, or handing a block to the worker) ---------
    def write(self, data: bytes) -> int:
        self._raise_failure()
        if self._pending and self._pending[-1][0] + len(self._pending[-1][1]) == self._position:
            self._pending[-1][1].extend(data)
        else:
            self._pending.append((self._position, bytearray(data)))
        self._position += len(data)
        self._pending_bytes += len(data)
        if self._pending_bytes >= self.block:
            self._hand_over(self._write_blocks, self._take_pending())
        return len(data)

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        if whence == io.SEEK_CUR:
            self._position += offset
        elif whence == io.SEEK_SET:
            self._position = offset
        else:
            raise io.UnsupportedOperation("an export file seeks from its start or its position only")
        return self._position

    def tell(self) -> int:
        return self._position

    def truncate(self, size: int | None = None) -> int:
        """Set the file's size (after what was written so far): a trailing run of zeros stays a hole."""
        size = self._position if size is None else size
        self._hand_over(self._write_blocks, self._take_pending())
        self._hand_over(self._file.truncate, size)
        return size

    # --- the end --------------------------------------------------------------------------------------------
    async def drain(self) -> None:
        """Wait (without blocking the loop) until fewer than :data:`EXPORT_BLOCKS_QUEUED` blocks wait for the disk:
        the engine's client awaits it after each piece, so a disk slower than the network slows the download."""
        while len(self._queued) >= EXPORT_BLOCKS_QUEUED:
            await asyncio.wrap_future(self._queued[0])
            self._queued.popleft().result()

    async def finish(self) -> None:
        """Write what is left and fsync, in the worker; raises the first write error (an OSError)."""
        self._hand_over(self._write_blocks, self._take_pending())
        self._hand_over(self._sync)
        while self._queued:
            await asyncio.wrap_future(self._queued[0])
            self._queued.popleft()

    async def aclose(self) -> None:
        """Close the file once the worker has finished what it was given, even when cancelled meanwhile (then the
        cancellation is raised again afterwards). Idempotent."""
        if self.closed:
            return
        cancelled = False
        for future in list(self._queued):
            while not future.done():
                try:
                    await asyncio.shield(asyncio.wrap_future(future))
                except asyncio.CancelledError:
                    cancelled = True
                except OSError:
                    break  # reported by finish; the file is closed and removed anyway
        self._queued.clear()
        self._file.close()
        self._worker.shutdown(wait=False)
        self.closed = True
        if cancelled:
            raise asyncio.CancelledError

    # --- the worker -------------------------------------------------------------------------------------------
    def _take_pending(self) -> list[tuple[int, bytearray]]:
        pending, self._pending, self._pending_bytes = self._pending, [], 0
        return pending

    def _hand_over(self, job: Callable[..., object], *args: Any) -> None:
        if job == self._write_blocks and not args[0]:
            return  # nothing held
        self._raise_failure()
        if len(self._queued) >= EXPORT_BLOCKS_QUEUED:  # the disk is slower than the network: wait for it
            self._queued.popleft().result()
        self._queued.append(self._worker.submit(job, *args))  # type: ignore[arg-type]

    def _raise_failure(self) -> None:
        """A block the worker could not write fails the export at the engine's next call."""
        while self._queued and self._queued[0].done():
            self._queued.popleft().result()

    def _write_blocks(self, blocks: list[tuple[int, bytearray]]) -> None:
        for offset, data in blocks:
            self._file.seek(offset)
            self._file.write(data)

    def _sync(self) -> None:
        """Flush to the disk before the file is renamed."""
        self._file.flush()
        os.fsync(self._file.fileno())
