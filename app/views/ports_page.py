"""Ports: where the appliance listens, moving its ports, the firewall rules it needs, a connectivity test.

The engine checks a change before anything moves; a refusal is shown under the fields, which keep
what the admin typed so it can be corrected there. While the management port moves, the page
shows the old port, when it closes and which servers have not reached the new one yet.
"""

from __future__ import annotations

import time
from typing import Any

from PySide6.QtCore import Qt, QTimer
from PySide6.QtGui import QColor, QGuiApplication
from PySide6.QtWidgets import (
    QAbstractItemView,
    QFormLayout,
    QGroupBox,
    QHBoxLayout,
    QHeaderView,
    QLabel,
    QLineEdit,
    QPushButton,
    QSpinBox,
    QTableView,
    QVBoxLayout,
    QWidget,
)
from qasync import asyncSlot

from app.bridge import (
    ConnectivityCheck,
    ConnectivityReport,
    EngineBridge,
    EngineError,
    FirewallRule,
    Health,
    PortsStatus,
    ServerReach,
)
from app.errors import show_error
from app.models.table import Index, RecordTableModel
from app.widgets.formatting import age_text, duration_text, health_colour, show_line, tr

#: Seconds between refreshes of the relative times on the page ("in 12 min", "3 min ago").
REFRESH_S = 15


# --- models ----------------------------------------------------------------------------------------
class FirewallModel(RecordTableModel[FirewallRule]):
    """The rules the network around the appliance needs, in the engine's order."""

    DIRECTION, PROTOCOL, PORT, PEER, PURPOSE = range(5)
    HEADERS = ("Direction", "Protocol", "Port", "Peer", "Purpose")

    def __repr__(self) -> str:
        return f"<FirewallModel rows={[(r.direction, r.port) for r in self._rows]}>"

    def set_rows(self, rules: tuple[FirewallRule, ...] | list[FirewallRule]) -> None:
        if list(rules) == self._rows:
            return
        self.beginResetModel()
        self._rows = list(rules)
        self.endResetModel()

    @staticmethod
    def texts(rule: FirewallRule) -> tuple[str, str, str, str, str]:
        port = str(rule.port) if rule.port is not None else "-"  # no port of its own (e.g. storage on this disk)
        return (tr(rule.direction.capitalize()), rule.protocol.upper(), port, rule.peer, rule.purpose)

    def as_text(self) -> str:
        """The rules as tab-separated lines under a header line, to paste into a ticket or a spreadsheet."""
        lines = ["\t".join(self.HEADERS)] + ["\t".join(self.texts(r)) for r in self._rows]
        return "\n".join(lines) + "\n"

    def data(self, index: Index, role: int = Qt.ItemDataRole.DisplayRole) -> Any:
        rule = self._record(index)
        if rule is None:
            return None
        if role in (Qt.ItemDataRole.DisplayRole, Qt.ItemDataRole.ToolTipRole):
            return self.texts(rule)[index.column()]
        return None


class ChecksModel(RecordTableModel[ConnectivityCheck]):
    """One row per result of the engine's connectivity test."""

    NAME, RESULT, FOUND, FIX = range(4)
    HEADERS = ("Check", "Result", "What was found", "What to do")

    def __repr__(self) -> str:
        return f"<ChecksModel rows={[(c.name, c.ok) for c in self._rows]}>"

    def set_rows(self, checks: tuple[ConnectivityCheck, ...] | list[ConnectivityCheck]) -> None:
        self.beginResetModel()
        self._rows = list(checks)
        self.endResetModel()

    def check(self, row: int) -> ConnectivityCheck:
        return self._rows[row]

    def data(self, index: Index, role: int = Qt.ItemDataRole.DisplayRole) -> Any:
        c = self._record(index)
        if c is None:
            return None
        if role in (Qt.ItemDataRole.DisplayRole, Qt.ItemDataRole.ToolTipRole):
            return (c.name, tr("OK") if c.ok else tr("Failed"), c.detail, c.fix)[index.column()]
        if role == Qt.ItemDataRole.ForegroundRole and index.column() == self.RESULT:
            return QColor(health_colour(Health.HEALTHY if c.ok else Health.CRITICAL))
        return None


class ReachModel(RecordTableModel[ServerReach]):
    """When each registered server last reached the appliance's ports, as of the last test."""

    SERVER, MANAGEMENT, DATA = range(3)
    HEADERS = ("Server", "Management port", "Data port")

    def __repr__(self) -> str:
        return f"<ReachModel rows={[r.name for r in self._rows]}>"

    def set_rows(self, servers: tuple[ServerReach, ...] | list[ServerReach]) -> None:
        self.beginResetModel()
        self._rows = sorted(servers, key=lambda r: r.name)
        self.endResetModel()

    def refresh_ages(self) -> None:
        """The ages read relative to now: re-read them (the times themselves do not change)."""
        if self._rows:
            self.dataChanged.emit(self.index(0, self.MANAGEMENT), self.index(len(self._rows) - 1, self.DATA),
                                  [Qt.ItemDataRole.DisplayRole])

    def data(self, index: Index, role: int = Qt.ItemDataRole.DisplayRole) -> Any:
        r = self._record(index)
        if r is None:
            return None
        if role == Qt.ItemDataRole.DisplayRole:
            if index.column() == self.SERVER:
                return r.name
            if index.column() == self.MANAGEMENT:
                text = age_text(r.management_at)
                if r.management_at is not None and r.management_port is not None:
                    text += tr(" (port %d)") % r.management_port
                return text
            return age_text(r.data_at)
        if role == Qt.ItemDataRole.ToolTipRole and index.column() != self.SERVER:
            ts = r.management_at if index.column() == self.MANAGEMENT else r.data_at
            if ts is None:
                return tr("never")
            text = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(ts))
            if index.column() == self.MANAGEMENT and r.management_port is not None:
                text += tr(" (port %d)") % r.management_port
            return text
        return None


def _table(model: RecordTableModel[Any], object_name: str) -> QTableView:
    """A read-only table in the engine's row order, looking like the console's other lists."""
    view = QTableView(objectName=object_name)
    view.setModel(model)
    view.setSelectionBehavior(QAbstractItemView.SelectionBehavior.SelectRows)
    view.setEditTriggers(QAbstractItemView.EditTrigger.NoEditTriggers)
    view.verticalHeader().hide()
    view.setAlternatingRowColors(True)
    view.setShowGrid(False)
    view.horizontalHeader().setStretchLastSection(True)
    return view


def _fit_rows(view: QTableView, *, at_least: int) -> None:
    """Size ``view`` to its rows (at least ``at_least`` rows high): short lists leave room for the rest."""
    view.resizeRowsToContents()
    rows = max(at_least, view.model().rowCount())
    height = sum(view.rowHeight(r) for r in range(view.model().rowCount()))
    height += max(0, rows - view.model().rowCount()) * view.verticalHeader().defaultSectionSize()
    view.setFixedHeight(height + view.horizontalHeader().sizeHint().height() + 2 * view.frameWidth() + 2)


def _clock_text(ts: float, now: float) -> str:
    """An absolute time: the time of day when it is the same day as ``now``, else the date too."""
    same_day = time.localtime(ts)[:3] == time.localtime(now)[:3]
    return time.strftime("%H:%M" if same_day else "%Y-%m-%d %H:%M", time.localtime(ts))


def moving_text(ports: PortsStatus, now: float | None = None) -> str:
    """While the management port moves: the old port, when it closes, who has not moved. Empty otherwise."""
    if ports.old_management_port is None:
        return ""
    now = time.time() if now is None else now
    text = tr("The management port is moving from %d to %d.") % (ports.old_management_port, ports.management_port)
    if ports.old_port_closes_at is not None:
        left = ports.old_port_closes_at - now
        when = tr("in %s") % duration_text(left) if left > 0 else tr("any moment now")
        text += " " + tr("Port %d closes at %s (%s)") % (ports.old_management_port,
                                                         _clock_text(ports.old_port_closes_at, now), when)
        text += tr(", or as soon as every registered server has reached the new port.")
    else:
        text += " " + tr("Port %d stays open until every registered server has reached the new port.") \
            % ports.old_management_port
    if ports.servers_not_moved:
        text += " " + tr("Not moved yet: %s.") % ", ".join(ports.servers_not_moved)
    else:
        text += " " + tr("Every registered server has moved.")
    return text


# --- the page --------------------------------------------------------------------------------------
class PortsPage(QWidget):
    def __init__(self, bridge: EngineBridge, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.bridge = bridge
        #: The ports as the engine last reported them (the fields may hold something else, being typed).
        self.ports: PortsStatus | None = None

        title = QLabel(tr("Ports"), objectName="page_title")
        intro = QLabel(tr("The engine checks a change before anything moves; registered servers learn new ports at "
                          "their next heartbeat."), wordWrap=True)

        # Where the appliance listens, editable.
        listening = QGroupBox(tr("Listening"))
        self.management_edit = QSpinBox(objectName="management_port_edit", minimum=1, maximum=65535)
        self.data_edit = QSpinBox(objectName="data_port_edit", minimum=1, maximum=65535)
        self.listen_edit = QLineEdit(objectName="listen_address_edit")
        self.listen_edit.setMaximumWidth(220)
        self.management_edit.setToolTip(tr("Source servers register and send heartbeats to this port."))
        self.data_edit.setToolTip(tr("Source servers send the replicated data to this port."))
        self.listen_edit.setToolTip(tr("0.0.0.0 listens on every IPv4 address of this machine."))
        for spin in (self.management_edit, self.data_edit):
            spin.setGroupSeparatorShown(False)
            spin.setMinimumWidth(110)
            spin.setMaximumWidth(140)
            spin.valueChanged.connect(self._on_fields_edited)
        self.listen_edit.textChanged.connect(self._on_fields_edited)
        self.apply_button = QPushButton(tr("Apply"), objectName="apply_ports", enabled=False)
        self.apply_button.clicked.connect(self.on_apply_button_clicked)
        self.revert_button = QPushButton(tr("Undo changes"), objectName="revert_ports", enabled=False)
        self.revert_button.clicked.connect(self.on_revert_button_clicked)
        buttons = QHBoxLayout()
        buttons.addWidget(self.apply_button)
        buttons.addWidget(self.revert_button)
        buttons.addStretch(1)
        self.current = QLabel(objectName="ports_current", wordWrap=True)
        self.message = QLabel(objectName="ports_message", wordWrap=True)
        self.message.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        self.message.hide()
        form = QFormLayout(listening)
        form.addRow(tr("Management port"), self.management_edit)
        form.addRow(tr("Data port"), self.data_edit)
        form.addRow(tr("Listen address"), self.listen_edit)
        form.addRow("", buttons)
        form.addRow(self.current)
        form.addRow(self.message)

        self.moving = QLabel(objectName="ports_moving", wordWrap=True)
        self.moving.hide()

        # The firewall rules, to copy.
        firewall = QGroupBox(tr("Firewall rules"))
        self.firewall_model = FirewallModel(self)
        self.firewall_table = _table(self.firewall_model, "firewall_table")
        for col, width in ((FirewallModel.DIRECTION, 80), (FirewallModel.PROTOCOL, 70), (FirewallModel.PORT, 60),
                           (FirewallModel.PEER, 130)):
            self.firewall_table.setColumnWidth(col, width)
        self.firewall_table.setWordWrap(True)
        self.firewall_table.horizontalHeader().setSectionResizeMode(FirewallModel.PURPOSE,
                                                                    QHeaderView.ResizeMode.Stretch)
        self.firewall_table.horizontalHeader().sectionResized.connect(
            lambda *_: _fit_rows(self.firewall_table, at_least=3))
        self.firewall_model.modelReset.connect(lambda: _fit_rows(self.firewall_table, at_least=3))
        self.copy_button = QPushButton(tr("Copy"), objectName="copy_firewall")
        self.copy_button.setToolTip(tr("Copy the rules as tab-separated text."))
        self.copy_button.clicked.connect(self.on_copy_button_clicked)
        fw_bar = QHBoxLayout()
        fw_bar.addWidget(QLabel(tr("What the network around the appliance must let through."), objectName="hint",
                                wordWrap=True), 1)
        fw_bar.addWidget(self.copy_button)
        fw_layout = QVBoxLayout(firewall)
        fw_layout.addLayout(fw_bar)
        fw_layout.addWidget(self.firewall_table, 1)

        # The connectivity test.
        connectivity = QGroupBox(tr("Connectivity"))
        self.test_button = QPushButton(tr("Test connectivity"), objectName="test_connectivity")
        self.test_button.clicked.connect(self.on_test_button_clicked)
        self.summary = QLabel(tr("Checks that the ports are open and reachable, and when each registered server "
                                 "last reached them."), objectName="connectivity_summary", wordWrap=True)
        self.summary.setProperty("level", "none")
        test_bar = QHBoxLayout()
        test_bar.addWidget(self.test_button)
        test_bar.addWidget(self.summary, 1)
        self.checks_model = ChecksModel(self)
        self.checks_table = _table(self.checks_model, "connectivity_table")
        self.checks_table.setWordWrap(True)
        self.checks_table.setHorizontalScrollBarPolicy(Qt.ScrollBarPolicy.ScrollBarAlwaysOff)
        header = self.checks_table.horizontalHeader()
        header.setSectionResizeMode(ChecksModel.NAME, QHeaderView.ResizeMode.ResizeToContents)
        header.setSectionResizeMode(ChecksModel.RESULT, QHeaderView.ResizeMode.ResizeToContents)
        header.setSectionResizeMode(ChecksModel.FOUND, QHeaderView.ResizeMode.Stretch)
        header.setSectionResizeMode(ChecksModel.FIX, QHeaderView.ResizeMode.Stretch)
        # Wrapped rows follow their columns' widths, once the header has laid them out.
        header.sectionResized.connect(lambda *_: QTimer.singleShot(0, self.checks_table,
                                                                   self.checks_table.resizeRowsToContents))
        self.checks_model.modelReset.connect(self.checks_table.resizeRowsToContents)
        self.reach_model = ReachModel(self)
        self.reach_table = _table(self.reach_model, "server_reach_table")
        self.reach_table.setHorizontalScrollBarPolicy(Qt.ScrollBarPolicy.ScrollBarAlwaysOff)
        self.reach_table.setWordWrap(False)
        header = self.reach_table.horizontalHeader()
        header.setSectionResizeMode(ReachModel.SERVER, QHeaderView.ResizeMode.ResizeToContents)
        header.setSectionResizeMode(ReachModel.MANAGEMENT, QHeaderView.ResizeMode.Stretch)
        header.setStretchLastSection(False)
        self.reach_table.setColumnWidth(ReachModel.DATA, 120)
        reach_box = QVBoxLayout()
        reach_box.setSpacing(2)
        reach_box.addWidget(QLabel(tr("When each registered server last reached the ports"), objectName="hint"))
        reach_box.addWidget(self.reach_table, 1)
        checks_box = QVBoxLayout()
        checks_box.setSpacing(2)
        checks_box.addWidget(QLabel(tr("Results"), objectName="hint"))
        checks_box.addWidget(self.checks_table, 1)
        tables = self._tables = QHBoxLayout()
        tables.addLayout(checks_box, 3)
        tables.addLayout(reach_box, 2)
        conn_layout = QVBoxLayout(connectivity)
        conn_layout.addLayout(test_bar)
        conn_layout.addLayout(tables, 1)

        top = QHBoxLayout()
        top.addWidget(listening, 2)
        top.addWidget(firewall, 3)
        layout = QVBoxLayout(self)
        layout.addWidget(title)
        layout.addWidget(intro)
        layout.addWidget(self.moving)
        layout.addLayout(top)
        layout.addWidget(connectivity, 1)

        self._refresh = QTimer(self, interval=REFRESH_S * 1000)
        self._refresh.timeout.connect(self._refresh_times)
        self._refresh.start()
        bridge.ports_changed.connect(self.show_ports)
        self.setEnabled(False)

    def __repr__(self) -> str:
        p = self.ports
        now = f"{p.management_port}/{p.data_port}@{p.listen_address}" if p else None
        return f"<PortsPage ports={now} editing={self.is_editing()} moving={p is not None and p.old_management_port}>"

    # --- showing the engine's ports -------------------------------------------------------------
    def show_ports(self, ports: PortsStatus, *, fill: bool = False) -> None:
        """Show ``ports``. The fields follow unless the admin is editing them (or ``fill``)."""
        editing = self.is_editing()
        self.ports = ports
        self.setEnabled(True)
        self.current.setText(tr("Now: management port %d, data port %d, listening on %s.")
                             % (ports.management_port, ports.data_port, ports.listen_address))
        self.firewall_model.set_rows(ports.firewall)
        self._show_moving()
        if fill or not editing:
            self._fill_fields(ports)
        self._update_buttons()

    def _fill_fields(self, ports: PortsStatus) -> None:
        for widget in (self.management_edit, self.data_edit):
            widget.blockSignals(True)
        self.management_edit.setValue(ports.management_port)
        self.data_edit.setValue(ports.data_port)
        for widget in (self.management_edit, self.data_edit):
            widget.blockSignals(False)
        self.listen_edit.setText(ports.listen_address)

    def _show_moving(self) -> None:
        text = moving_text(self.ports) if self.ports is not None else ""
        self.moving.setText(text)
        self.moving.setVisible(bool(text))

    def _refresh_times(self) -> None:
        self._show_moving()
        self.reach_model.refresh_ages()

    # --- editing --------------------------------------------------------------------------------
    def changes(self) -> dict[str, Any]:
        """What the fields change, as :meth:`EngineBridge.set_ports` takes it (empty: nothing)."""
        if self.ports is None:
            return {}
        changed: dict[str, Any] = {}
        if self.management_edit.value() != self.ports.management_port:
            changed["management"] = self.management_edit.value()
        if self.data_edit.value() != self.ports.data_port:
            changed["data"] = self.data_edit.value()
        if self.listen_edit.text().strip() != self.ports.listen_address:
            changed["listen"] = self.listen_edit.text().strip()
        return changed

    def is_editing(self) -> bool:
        return bool(self.changes())

    def _on_fields_edited(self, *_: object) -> None:
        self._update_buttons()

    def _update_buttons(self) -> None:
        editing = self.is_editing()
        self.apply_button.setEnabled(editing)
        self.revert_button.setEnabled(editing)

    def _say(self, level: str, text: str) -> None:
        show_line(self.message, level, text)

    def on_revert_button_clicked(self) -> None:
        if self.ports is not None:
            self._fill_fields(self.ports)
        self._say("none", "")
        self._update_buttons()

    @asyncSlot()
    async def on_apply_button_clicked(self) -> None:
        changes = self.changes()
        if not changes:
            return
        if changes.get("listen") == "":
            self._say("error", tr("Type the address to listen on (0.0.0.0 for every IPv4 address of this machine)."))
            return
        self.apply_button.setEnabled(False)
        self.revert_button.setEnabled(False)
        self._say("none", "")
        try:
            ports = await self.bridge.set_ports(**changes)
        except EngineError as exc:
            self._say("error", exc.message)  # the fields keep what was typed, to be corrected
        except Exception as exc:
            show_error(self, exc)
        else:
            self.show_ports(ports, fill=True)  # the "Now:" line shows the new values
            self._say("ok", tr("Applied at %s.") % time.strftime("%H:%M:%S"))
        finally:
            self._update_buttons()

    # --- firewall and connectivity ------------------------------------------------------------
    def on_copy_button_clicked(self) -> None:
        QGuiApplication.clipboard().setText(self.firewall_model.as_text())
        self.copy_button.setText(tr("Copied"))

    def show_report(self, report: ConnectivityReport) -> None:
        self.checks_model.set_rows(report.checks)
        self.reach_model.set_rows(report.servers)
        failed = sum(not c.ok for c in report.checks)
        self.checks_table.setColumnHidden(ChecksModel.FIX, not failed)  # nothing to do: room for what was found
        # A failure needs room for what to do: the results take more of the width from the servers' table.
        self._tables.setStretch(0, 5 if failed else 3)
        self._tables.setStretch(1, 3 if failed else 2)
        self.checks_table.resizeRowsToContents()
        at = time.strftime("%H:%M:%S")
        if failed:
            text = tr("%d of %d checks failed (tested at %s). What to do is in the last column.") \
                % (failed, len(report.checks), at)
        else:
            text = tr("All %d checks passed (tested at %s).") % (len(report.checks), at)
        self.summary.setText(text)
        self.summary.setProperty("level", "bad" if failed else "ok")
        self.summary.style().unpolish(self.summary)
        self.summary.style().polish(self.summary)

    @asyncSlot()
    async def on_test_button_clicked(self) -> None:
        self.test_button.setEnabled(False)
        self.summary.setText(tr("Testing…"))
        try:
            self.show_report(await self.bridge.test_ports())
        except Exception as exc:
            self.summary.setText(tr("The test did not run."))
            show_error(self, exc)
        finally:
            self.test_button.setEnabled(True)
