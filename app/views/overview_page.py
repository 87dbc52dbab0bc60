"""Overview: the console's first page — how the servers stand, how the appliance itself stands, what flows through it
now, and the few problems to act on first.

Everything comes from the bridge's signals (servers, appliance health, agent updates, licence); nothing is polled.
Those signals can arrive thousands of times a second with a thousand servers, so the page only records what arrived
and works the figures out again at most every :data:`REFRESH_MS` milliseconds (:meth:`OverviewPage.refresh`).

The problems' buttons do what the console can do about them: open the server, resync it (after a confirmation),
update mobility services, open the Agents or Events page, activate a licence. A refusal from the engine shows as one
red line under the title and changes nothing else.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Coroutine
from dataclasses import dataclass, field
from typing import Any

from PySide6.QtCore import QEvent, QLocale, QRectF, QSize, Qt, QTimer, Signal
from PySide6.QtGui import QColor, QPainter, QPaintEvent, QShowEvent
from PySide6.QtWidgets import (
    QFrame,
    QGridLayout,
    QGroupBox,
    QHBoxLayout,
    QLabel,
    QPushButton,
    QScrollArea,
    QSizePolicy,
    QVBoxLayout,
    QWidget,
)

from app import theme
from app.bridge import (
    AgentUpdate,
    ApplianceHealth,
    EngineBridge,
    EngineError,
    Health,
    HealthCause,
    LicenceStatus,
    ServerState,
    ServerStatus,
    UpdatesStatus,
)
from app.widgets.dialogs import confirm
from app.widgets.formatting import (
    age_text,
    duration_text,
    health_text,
    health_tone,
    rate_text,
    set_tone,
    show_line,
    size_text,
    tr,
)
from app.widgets.tasks import TaskOwner

#: At most one refresh of the page's figures per this many milliseconds, however many updates arrive.
REFRESH_MS = 250
#: Seconds between refreshes of "measured 12 s ago".
AGES_S = 5
#: The top problems shown; the rest are counted.
PROBLEMS_SHOWN = 5
#: A problem lists at most this many server names, then says how many more.
NAMES_LISTED = 3
#: How each level's mark reads beside a metric or a problem; translated when shown.
LEVEL_MARKS = {"healthy": "● OK", "warning": "▲ Warning", "critical": "■ Critical", "info": "● Info"}
#: Where a metric's alert is worse than another's.
_RANK = {"critical": 2, "warning": 1, "healthy": 0}
#: How each appliance metric reads; translated when shown.
METRIC_NAMES = {"cpu": "CPU", "memory": "Memory", "cache-free": "Cache free space", "backlog": "Backlog",
                "agent": "Agents"}
#: Mobility updates that Update mobility installs (again), as on the Servers page.
MOBILITY_OUTDATED = ("update-available", "update-failed")
#: Agent updates the Agents page installs (again).
AGENTS_OUTDATED = ("update-available", "update-failed")
#: How often the engine measures the appliance (and pushes the measures), seconds.
SAMPLE_EVERY_S = 15


def tone_of(level: str) -> str:
    """The palette colour (a tone, :func:`set_tone`) of a health level ("healthy", "warning", "critical") or of
    "info" (the accent)."""
    return "accent" if level == "info" else health_tone(Health(level) if level in _RANK else Health.HEALTHY)


def names_text(names: list[str], limit: int = NAMES_LISTED) -> str:
    """``web-01, web-02 and 3 more``."""
    if len(names) <= limit:
        return ", ".join(names)
    return tr("%s and %d more") % (", ".join(names[:limit]), len(names) - limit)


def needs_resync(s: ServerStatus) -> bool:
    """Whether a resync is what brings ``s`` back: a refused segment stops its replication until one runs."""
    return s.replicating and s.state != ServerState.RESYNCING and \
        (s.health_cause == HealthCause.SEGMENT_CORRUPT or s.state == ServerState.ERROR)


# --- the top problems --------------------------------------------------------------------------------
@dataclass(frozen=True)
class Action:
    """A button of a problem: what it does (``kind``), how it reads, and on which servers."""

    kind: str  #: "show-server" | "resync" | "update-mobility" | "agents" | "licence" | "events"
    label: str
    names: tuple[str, ...] = ()

    @property
    def key(self) -> tuple[str, tuple[str, ...]]:
        """What identifies the action while it runs (its button stays disabled until it ends)."""
        return self.kind, self.names


@dataclass(frozen=True)
class Problem:
    """One thing the admin should look at: how bad (``level``, ``rank``: lower comes first), a title, the cause in a
    sentence, and the actions that fix it."""

    rank: int
    level: str  #: "critical" | "warning" | "info"
    title: str
    cause: str
    actions: tuple[Action, ...] = ()
    #: What the problem is, whatever its live wording: ("appliance", metric, level, agent), ("server", name, cause),
    #: ("licence",), ("agents", "failed")… A row showing the same problem is updated in place, not rebuilt.
    key: tuple[str, ...] = field(default=(), compare=False)

    @property
    def identity(self) -> tuple[Any, ...]:
        """The problem's key and its buttons: a row with the same identity only needs its texts updated."""
        return self.key or (self.title,), tuple(a.key for a in self.actions)


def server_problem(s: ServerStatus) -> Problem:
    """An unhealthy server (or one stopped with an error): its health as the Servers page words it, the engine's
    sentence about it, and Resync when a resync is what fixes it."""
    critical = s.health == Health.CRITICAL or s.state == ServerState.ERROR
    cause = s.health_detail or ""
    if isinstance(s.health_cause, HealthCause) and s.health_cause.pauses_applying and not cause:
        cause = tr("Applying to the target waits until the target storage can be written; it resumes by itself.")
    if not cause:
        cause = tr("Open the server to see its disks and events.")
    actions = [Action("show-server", tr("Show server"), (s.name,))]
    if needs_resync(s):
        actions.insert(0, Action("resync", tr("Resync…"), (s.name,)))
    level = "critical" if critical else "warning"
    return Problem(1 if critical else 4, level, f"{s.name}: {health_text(s.health, s.health_cause)}", cause,
                   tuple(actions), key=("server", s.name, str(s.health_cause or s.state)))


def appliance_problems(health: ApplianceHealth | None) -> list[Problem]:
    problems = []
    for alert in health.alerts if health is not None else ():
        metric = tr(METRIC_NAMES.get(alert.metric, alert.metric))
        if alert.metric == "agent" and alert.agent:
            metric = tr("Appliance agent %s") % alert.agent
        title = tr("Appliance: %s") % metric
        problems.append(Problem(0 if alert.level == "critical" else 3, alert.level, title, alert.message,
                                (Action("events", tr("Open Events")),),
                                key=("appliance", alert.metric, alert.level, alert.agent or "")))
    return problems


def licence_problem(licence: LicenceStatus | None) -> list[Problem]:
    if licence is None or licence.alarm == "none":
        return []
    if licence.state == "expired":
        title = tr("The licence has expired")
    elif licence.days_left is not None:
        title = tr("Licence: 1 day left") if licence.days_left == 1 else tr("Licence: %d days left") % licence.days_left
    else:
        title = tr("Licence")
    critical = licence.alarm == "critical"
    return [Problem(2 if critical else 5, "critical" if critical else "warning", title,
                    licence.message or tr("Activate a licence to keep replicating."),
                    (Action("licence", tr("Activate licence…")),), key=("licence", licence.alarm))]


def agent_problems(updates: UpdatesStatus | None) -> list[Problem]:
    if updates is None:
        return []
    failed = [a for a in updates.agents if a.status == "update-failed"]
    available = [a for a in updates.agents if a.status == "update-available"]
    problems = []
    if failed:
        reason = failed[0].reason or tr("Open the Agents page to try again or roll back.")
        problems.append(Problem(5, "warning", tr("Appliance agent update failed: %s") % ", ".join(
            a.title or a.name for a in failed), reason, (Action("agents", tr("Open Agents page")),),
            key=("agents", "failed")))
    if available:
        def version(a: AgentUpdate) -> str:
            return f"{a.title or a.name} {a.installed_version} → {a.available_version}"
        problems.append(Problem(6, "info", tr("Appliance agent update available"),
                                tr("A newer version is offered: %s.") % "; ".join(version(a) for a in available),
                                (Action("agents", tr("Open Agents page")),), key=("agents", "available")))
    return problems


def mobility_problems(servers: list[ServerStatus]) -> list[Problem]:
    problems = []
    failed = sorted(s.name for s in servers if s.mobility_update == "update-failed")
    available = sorted(s.name for s in servers if s.mobility_update == "update-available")
    if failed:
        problems.append(Problem(6, "warning", tr("Mobility update failed"),
                                tr("The mobility update of %s failed; Update mobility tries again.")
                                % names_text(failed),
                                (Action("update-mobility", tr("Update mobility"), tuple(failed)),),
                                key=("mobility", "failed")))
    if available:
        problems.append(Problem(7, "info", tr("Mobility update available"),
                                tr("%s can install the mobility version the appliance offers.") % names_text(available),
                                (Action("update-mobility", tr("Update mobility"), tuple(available)),),
                                key=("mobility", "available")))
    return problems


def top_problems(servers: list[ServerStatus], health: ApplianceHealth | None, updates: UpdatesStatus | None,
                 licence: LicenceStatus | None) -> list[Problem]:
    """Every problem, worst first: critical appliance alerts, critical servers, a critical licence, then the warnings
    in the same order, then updates; within one rank by title."""
    problems = appliance_problems(health) + licence_problem(licence) + agent_problems(updates)
    problems += [server_problem(s) for s in servers if s.health != Health.HEALTHY or s.state == ServerState.ERROR]
    problems += mobility_problems(servers)
    return sorted(problems, key=lambda p: (p.rank, p.title))


# --- small widgets ------------------------------------------------------------------------------------
class HealthTile(QPushButton):
    """A count of servers, big, with what they are; a click lists them on the Servers page."""

    def __init__(self, key: str, caption: str, level: str, tip: str) -> None:
        super().__init__(objectName="health_tile")
        self.key = key
        self.level = level
        self.caption_text = caption
        self.setCursor(Qt.CursorShape.PointingHandCursor)
        self.setToolTip(tip)
        self.setMinimumHeight(88)
        self.setSizePolicy(QSizePolicy.Policy.Expanding, QSizePolicy.Policy.Fixed)
        self.count = QLabel("", objectName="tile_count")
        self.caption = QLabel(caption, objectName="tile_caption")
        for label in (self.count, self.caption):
            label.setAttribute(Qt.WidgetAttribute.WA_TransparentForMouseEvents)
        layout = QVBoxLayout(self)
        layout.setContentsMargins(16, 8, 16, 10)
        layout.setSpacing(0)
        layout.addWidget(self.count)
        layout.addWidget(self.caption)
        self.set_count(0)

    def apply_colour(self) -> None:
        """The count in its level's colour; a count without a level, or no server with a warning or critical, in
        the quiet "busy" colour (console.qss gives each the palette in use)."""
        quiet = not self.level or (self.level != "healthy" and self.count.text() == "0")  # no alarm for none
        set_tone(self.count, "busy" if quiet else tone_of(self.level))

    def set_count(self, n: int) -> None:
        text = QLocale().toString(n)
        if text != self.count.text():
            self.count.setText(text)
            self.apply_colour()
        self.setAccessibleName(tr("%s: 1 server. Show it on the Servers page.") % self.caption_text if n == 1 else
                               tr("%s: %d servers. Show them on the Servers page.") % (self.caption_text, n))


class Meter(QWidget):
    """A thin bar: ``value`` of ``maximum`` in the level's colour, with a tick at each threshold."""

    def __init__(self) -> None:
        super().__init__(objectName="meter")
        self.value: float | None = None
        self.maximum = 100.0
        self.ticks: tuple[float, ...] = ()
        #: The palette colour of the bar: painted from the palette in use, so a switch to dark follows.
        self.tone = "ok"
        self.setFixedHeight(10)
        self.setMinimumWidth(140)
        self.setSizePolicy(QSizePolicy.Policy.Expanding, QSizePolicy.Policy.Fixed)

    def set_value(self, value: float | None, maximum: float, ticks: tuple[float, ...], tone: str) -> None:
        self.value, self.maximum, self.ticks, self.tone = value, maximum, ticks, tone
        self.update()

    def sizeHint(self) -> QSize:
        return QSize(180, 10)

    def paintEvent(self, _event: QPaintEvent) -> None:
        painter = QPainter(self)
        painter.setRenderHint(QPainter.RenderHint.Antialiasing)
        track = QRectF(self.rect()).adjusted(0.5, 1.5, -0.5, -1.5)
        painter.setPen(Qt.PenStyle.NoPen)
        painter.setBrush(QColor(theme.colour("track")))
        painter.drawRoundedRect(track, 3, 3)
        if self.value is not None and self.maximum > 0:
            fill = QRectF(track)
            fill.setWidth(track.width() * max(0.0, min(1.0, self.value / self.maximum)))
            painter.setBrush(QColor(theme.colour(self.tone)))
            painter.drawRoundedRect(fill, 3, 3)
        painter.setBrush(QColor(theme.colour("muted")))
        for tick in self.ticks:
            x = track.left() + track.width() * max(0.0, min(1.0, tick / self.maximum))
            painter.drawRect(QRectF(x - 0.75, 0, 1.5, self.height()))
        painter.end()


@dataclass(frozen=True)
class Reading:
    """One metric's line: the value as text, the bar (value of maximum, threshold ticks), the thresholds in words."""

    value: str
    limits: str
    bar: float | None = None
    maximum: float = 100.0
    ticks: tuple[float, ...] = ()
    show_bar: bool = True


def metric_readings(h: ApplianceHealth) -> dict[str, Reading]:
    """What each metric shows, from ``h``: its value (or "not measured yet") against its warning and critical
    thresholds, as the engine judges them."""
    t = h.thresholds
    not_measured = tr("not measured yet")
    held = duration_text(t.sustain)

    def percent(v: float | None, suffix: str = "") -> str:
        return not_measured if v is None else tr("%.0f %%") % v + suffix

    readings = {
        "cpu": Reading(percent(h.cpu_percent, " " + tr("busy")),
                       tr("warning above %.0f %%, critical above %.0f %%, for %s") % (t.cpu_warning, t.cpu_critical,
                                                                                      held),
                       h.cpu_percent, 100.0, (t.cpu_warning, t.cpu_critical)),
        "memory": Reading(percent(h.memory_percent, " " + tr("used")),
                          tr("warning above %.0f %%, critical above %.0f %%, for %s")
                          % (t.memory_warning, t.memory_critical, held),
                          h.memory_percent, 100.0, (t.memory_warning, t.memory_critical)),
        "cache-free": Reading(percent(h.cache_free_percent, " " + tr("free")) + (
                              tr(" on %s") % h.cache_mount if h.cache_mount and h.cache_free_percent is not None
                              else ""),
                              tr("warning below %.0f %%, critical below %.0f %%")
                              % (t.cache_free_warning, t.cache_free_critical),
                              h.cache_free_percent, 100.0, (t.cache_free_critical, t.cache_free_warning)),
    }
    limits = tr("warning when it needs more than %s to apply, critical beyond %s") % (
        duration_text(t.backlog_warning), duration_text(t.backlog_critical))
    scale = t.backlog_critical * 4 / 3
    if h.backlog_bytes is None:
        readings["backlog"] = Reading(not_measured, limits, None, scale, (t.backlog_warning, t.backlog_critical))
    elif h.backlog_bytes == 0:
        readings["backlog"] = Reading(tr("nothing waiting"), limits, 0.0, scale, (t.backlog_warning,
                                                                                   t.backlog_critical))
    elif h.backlog_drain_seconds is None:
        readings["backlog"] = Reading(
            tr("%s waiting, not draining") % size_text(h.backlog_bytes) if h.apply_rate_bps is not None
            else tr("%s waiting") % size_text(h.backlog_bytes), limits,
            scale if h.apply_rate_bps is not None else None, scale, (t.backlog_warning, t.backlog_critical))
    else:
        readings["backlog"] = Reading(tr("%s waiting, applied in %s") % (size_text(h.backlog_bytes),
                                                                         duration_text(h.backlog_drain_seconds)),
                                      limits, h.backlog_drain_seconds, scale,
                                      (t.backlog_warning, t.backlog_critical))
    agent_limits = tr("critical when one shows no sign of life for %s") % duration_text(t.agent_silent)
    if not h.agents:
        readings["agent"] = Reading(not_measured, agent_limits, show_bar=False)
    else:
        silent = [a for a in h.agents if a.silent_seconds >= t.agent_silent]
        if silent:
            value = "; ".join(tr("%s silent for %s") % (a.name, duration_text(a.silent_seconds)) for a in silent)
        else:
            value = tr("all %d running") % len(h.agents)
        readings["agent"] = Reading(value, agent_limits, show_bar=False)
    return readings


def metric_levels(h: ApplianceHealth) -> dict[str, str]:
    """Each metric's level: its worst alert's, else healthy."""
    levels = dict.fromkeys(METRIC_NAMES, "healthy")
    for alert in h.alerts:
        if _RANK.get(alert.level, 0) > _RANK[levels.get(alert.metric, "healthy")]:
            levels[alert.metric] = alert.level
    return levels


class ProblemRow(QFrame):
    """One problem: a coloured mark, its title and cause, and its buttons."""

    def __init__(self, problem: Problem) -> None:
        super().__init__(objectName="problem")
        self.problem = problem
        self.mark = QLabel(objectName="problem_mark")
        self.mark.setAlignment(Qt.AlignmentFlag.AlignTop | Qt.AlignmentFlag.AlignHCenter)
        self.mark.setFixedWidth(18)
        self.title = QLabel(objectName="problem_title", wordWrap=True)
        self.cause = QLabel(objectName="problem_cause", wordWrap=True)
        self.cause.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        text = QVBoxLayout()
        text.setSpacing(2)
        text.addWidget(self.title)
        text.addWidget(self.cause)
        self.buttons: dict[tuple[str, tuple[str, ...]], QPushButton] = {}
        layout = QHBoxLayout(self)
        layout.setContentsMargins(8, 8, 8, 8)
        layout.addWidget(self.mark)
        layout.addLayout(text, 1)
        for action in problem.actions:
            button = QPushButton(action.label, objectName=f"problem_{action.kind}")
            button.setSizePolicy(QSizePolicy.Policy.Fixed, QSizePolicy.Policy.Fixed)
            self.buttons[action.key] = button
            layout.addWidget(button, 0, Qt.AlignmentFlag.AlignVCenter)
        self.show_problem(problem)

    def show_problem(self, problem: Problem) -> None:
        """Show ``problem``'s level and texts, which may change while it stays the same problem (an alert's
        measured value, a server's detail); the row and its buttons stay, with the admin's focus."""
        self.problem = problem
        mark = tr(LEVEL_MARKS[problem.level])
        if self.mark.text() != mark.split(" ")[0]:
            self.mark.setText(mark.split(" ")[0])
        self.mark.setAccessibleName(mark.split(" ", 1)[1])
        set_tone(self.mark, tone_of(problem.level))
        for label, text in ((self.title, problem.title), (self.cause, problem.cause)):
            if label.text() != text:  # an unchanged text keeps its selection
                label.setText(text)
        for action in problem.actions:
            self.buttons[action.key].setAccessibleName(f"{action.label.rstrip('…')} — {problem.title}")


# --- the page -------------------------------------------------------------------------------------------
class OverviewPage(QWidget):
    #: The admin clicked a servers tile: the Servers page's filter to show, as ``ServersPage.show_filter(health,
    #: state=state)`` takes it (health: "all" | "healthy" | "warning" | "critical"; state: "all" | "not-replicating" |
    #: "attention").
    filter_requested = Signal(str, str)
    #: The admin asked for a server's details: its name.
    detail_requested = Signal(str)
    #: The admin asked for another page of the console: its name ("agents", "events").
    page_requested = Signal(str)
    #: The admin asked to activate a licence.
    activate_licence_requested = Signal()

    #: The servers tiles: filter (health, state), caption, colour, tooltip.
    TILES = (
        (("healthy", "all"), "Healthy", "healthy", "Show the healthy servers."),
        (("warning", "all"), "Warning", "warning", "Show the servers with a warning."),
        (("critical", "all"), "Critical", "critical", "Show the critical servers."),
        (("all", "not-replicating"), "Not replicating", None, "Show the registered servers that do not replicate."),
    )

    def __init__(self, bridge: EngineBridge, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.bridge = bridge
        self.setObjectName("overview_page")
        #: The servers as last reported, by name.
        self.servers: dict[str, ServerStatus] = {}
        #: Every command under way, referenced until it ends.
        self.tasks = TaskOwner()
        #: The actions whose command runs now (their buttons wait).
        self.running: set[tuple[str, tuple[str, ...]]] = set()
        #: How many times the figures were worked out (a test counts them: updates are coalesced).
        self.refresh_count = 0
        self.problems: list[Problem] = []
        self.problem_rows: list[ProblemRow] = []

        title = QLabel(tr("Overview"), objectName="page_title")
        self.message = QLabel(objectName="overview_message", wordWrap=True)
        self.message.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        self.message.hide()

        # Servers by health.
        self.tiles: dict[tuple[str, str], HealthTile] = {}
        tiles = QHBoxLayout()
        tiles.setSpacing(12)
        for key, caption, health, tip in self.TILES:
            tile = HealthTile(key[0] if key[0] != "all" else key[1], tr(caption), health or "", tr(tip))
            tile.clicked.connect(lambda _=False, key=key: self.filter_requested.emit(*key))
            self.tiles[key] = tile
            tiles.addWidget(tile)

        # The appliance's health.
        self.health_box = QGroupBox(tr("Appliance health"), objectName="appliance_health")
        self.headline = QLabel(objectName="health_headline", wordWrap=True)
        self.sampled = QLabel(objectName="hint")
        self.no_health = QLabel(objectName="hint", wordWrap=True)
        self.metrics = QWidget(objectName="metrics")
        grid = QGridLayout(self.metrics)
        grid.setContentsMargins(0, 4, 0, 0)
        grid.setHorizontalSpacing(14)
        grid.setVerticalSpacing(8)
        grid.setColumnStretch(1, 2)
        grid.setColumnStretch(2, 3)
        self.metric_labels: dict[str, tuple[QLabel, Meter, QLabel, QLabel, QLabel]] = {}
        for row, (metric, name) in enumerate(METRIC_NAMES.items()):
            name_label = QLabel(tr(name), objectName=f"metric_{metric}_name")
            meter = Meter()
            value = QLabel(objectName=f"metric_{metric}_value", wordWrap=True)
            limits = QLabel(objectName="metric_limits", wordWrap=True)
            mark = QLabel(objectName=f"metric_{metric}_mark")
            mark.setMinimumWidth(mark.fontMetrics().horizontalAdvance(tr(LEVEL_MARKS["critical"])) + 6)
            grid.addWidget(name_label, row * 2, 0)
            grid.addWidget(meter, row * 2, 1)
            grid.addWidget(value, row * 2, 2)
            grid.addWidget(mark, row * 2, 3)
            grid.addWidget(limits, row * 2 + 1, 1, 1, 3)
            self.metric_labels[metric] = (name_label, meter, value, limits, mark)
        head = QHBoxLayout()
        head.addWidget(self.headline, 1)
        head.addWidget(self.sampled)
        box = QVBoxLayout(self.health_box)
        box.setContentsMargins(14, 16, 14, 12)
        box.addLayout(head)
        box.addWidget(self.no_health)
        box.addWidget(self.metrics)
        box.addStretch(1)

        # Throughput now.
        self.throughput_box = QGroupBox(tr("Throughput now"), objectName="throughput")
        self.in_value = QLabel(objectName="throughput_value")
        self.in_caption = QLabel(objectName="hint", wordWrap=True)
        self.out_value = QLabel(objectName="throughput_value")
        self.out_caption = QLabel(objectName="hint", wordWrap=True)
        flow = QVBoxLayout(self.throughput_box)
        flow.setContentsMargins(14, 16, 14, 12)
        for heading, value, caption in ((tr("In"), self.in_value, self.in_caption),
                                        (tr("Out"), self.out_value, self.out_caption)):
            flow.addWidget(QLabel(heading, objectName="throughput_heading"))
            flow.addWidget(value)
            flow.addWidget(caption)
            flow.addSpacing(10)
        flow.addStretch(1)

        # The top problems.
        self.problems_box = QGroupBox(tr("Top problems"), objectName="top_problems")
        self.no_problems = QLabel(tr("No problems: every server is healthy and the appliance is within its "
                                     "thresholds."), objectName="no_problems", wordWrap=True)
        self.problem_list = QVBoxLayout()
        self.problem_list.setSpacing(0)
        self.more = QLabel(objectName="hint")
        self.more_button = QPushButton(tr("Show servers that need attention"), objectName="show_attention")
        self.more_button.clicked.connect(lambda: self.filter_requested.emit("all", "attention"))
        more_row = QHBoxLayout()
        more_row.addWidget(self.more, 1)
        more_row.addWidget(self.more_button)
        problems = QVBoxLayout(self.problems_box)
        problems.setContentsMargins(10, 16, 10, 10)
        problems.addWidget(self.no_problems)
        problems.addLayout(self.problem_list)
        problems.addLayout(more_row)

        middle = QHBoxLayout()
        middle.setSpacing(12)
        middle.addWidget(self.health_box, 3)
        middle.addWidget(self.throughput_box, 1)
        body = QWidget(objectName="overview_body")
        column = QVBoxLayout(body)
        column.setContentsMargins(0, 0, 4, 0)
        column.setSpacing(12)
        column.addLayout(tiles)
        column.addLayout(middle)
        column.addWidget(self.problems_box)
        column.addStretch(1)
        scroll = QScrollArea(objectName="overview_scroll", widgetResizable=True)
        scroll.setFrameShape(QFrame.Shape.NoFrame)
        scroll.setHorizontalScrollBarPolicy(Qt.ScrollBarPolicy.ScrollBarAlwaysOff)
        scroll.setWidget(body)
        layout = QVBoxLayout(self)
        layout.addWidget(title)
        layout.addWidget(self.message)
        layout.addWidget(scroll, 1)

        # Live, coalesced: the slots record what arrived; the timer works the figures out.
        self._later = QTimer(self, singleShot=True, interval=REFRESH_MS)
        self._later.timeout.connect(self.refresh)
        self._ages = QTimer(self, interval=AGES_S * 1000)
        self._ages.timeout.connect(self._show_sampled)
        self._ages.start()
        bridge.servers_reset.connect(self.on_bridge_servers_reset)
        bridge.server_updated.connect(self.on_bridge_server_updated)
        bridge.server_removed.connect(self.on_bridge_server_removed)
        for signal in (bridge.health_changed, bridge.updates_changed, bridge.licence_changed,
                       bridge.connection_changed):
            signal.connect(self.schedule)
        self.refresh()

    def __repr__(self) -> str:
        counts = {key[0] if key[0] != "all" else key[1]: tile.count.text() for key, tile in self.tiles.items()}
        return (f"<OverviewPage servers={len(self.servers)} {counts} problems={len(self.problems)} "
                f"refreshed={self.refresh_count}x running={sorted(k for k, _ in self.running)}>")

    # --- following the bridge ---------------------------------------------------------------------------
    def on_bridge_servers_reset(self, servers: list[ServerStatus]) -> None:
        self.servers = {s.name: s for s in servers}
        self.schedule()

    def on_bridge_server_updated(self, status: ServerStatus) -> None:
        self.servers[status.name] = status
        self.schedule()

    def on_bridge_server_removed(self, name: str) -> None:
        self.servers.pop(name, None)
        self.schedule()

    def changeEvent(self, event: QEvent) -> None:
        """The console switched between light and dark: console.qss recolours the labels by itself; the meters,
        painted here, again."""
        super().changeEvent(event)
        if event.type() == QEvent.Type.PaletteChange and hasattr(self, "metric_labels"):
            for _name, meter, *_ in self.metric_labels.values():
                meter.update()

    def schedule(self, *_: object) -> None:
        """Work the figures out again soon: at most once per :data:`REFRESH_MS`, however many updates arrive."""
        if not self._later.isActive():
            self._later.start()

    def showEvent(self, event: QShowEvent) -> None:
        super().showEvent(event)
        self._show_sampled()

    def refresh(self) -> None:
        """Show the servers' counts, the appliance's health, the throughput and the top problems as they are now."""
        self._later.stop()
        self.refresh_count += 1
        servers = list(self.servers.values())
        counts = {("healthy", "all"): 0, ("warning", "all"): 0, ("critical", "all"): 0, ("all", "not-replicating"): 0}
        received = 0.0
        for s in servers:
            if s.health in (Health.HEALTHY, Health.WARNING, Health.CRITICAL):
                counts[(str(s.health), "all")] += 1
            if not s.replicating:
                counts[("all", "not-replicating")] += 1
            received += sum(d.throughput_bps for d in s.disks)
        for key, tile in self.tiles.items():
            tile.set_count(counts[key])
        self._show_health(self.bridge.health)
        self._show_throughput(received, len([s for s in servers if s.replicating]), self.bridge.health)
        self.problems = top_problems(servers, self.bridge.health, self.bridge.updates, self.bridge.licence)
        self._show_problems()

    # --- appliance health ---------------------------------------------------------------------------
    def _show_health(self, health: ApplianceHealth | None) -> None:
        if health is None:
            self.headline.setText(tr("Appliance health"))
            set_tone(self.headline, "")
            self.headline.hide()
            self.metrics.hide()
            self.no_health.setText(tr("This engine does not report appliance health: update the appliance to see "
                                      "CPU, memory, cache and backlog against their thresholds.")
                                   if self.bridge.state == "attached" else tr("Waiting for the engine…"))
            self.no_health.show()
            self.sampled.clear()
            return
        self.no_health.hide()
        self.headline.show()
        self.metrics.show()
        n = len(health.alerts)
        if health.level == "healthy":
            text = tr("Healthy: every measure is within its thresholds")
        else:
            level = tr("Critical") if health.level == "critical" else tr("Warning")
            text = (tr("%s: 1 alert") % level) if n == 1 else tr("%s: %d alerts") % (level, n)
        self.headline.setText(text)
        set_tone(self.headline, tone_of(health.level))
        readings, levels = metric_readings(health), metric_levels(health)
        for metric, (_name, meter, value, limits, mark) in self.metric_labels.items():
            reading, level = readings[metric], levels[metric]
            value.setText(reading.value)
            limits.setText(reading.limits)
            measured = reading.value != tr("not measured yet")
            mark.setText(tr(LEVEL_MARKS[level]) if measured or level != "healthy" else "")
            set_tone(mark, tone_of(level))
            meter.setVisible(reading.show_bar)
            meter.set_value(reading.bar, reading.maximum, reading.ticks, tone_of(level))
            meter.setToolTip(reading.limits)
        self._show_sampled()

    def _show_sampled(self) -> None:
        health = self.bridge.health
        if health is None:
            self.sampled.clear()
        elif health.sampled_at is None:
            self.sampled.setText(tr("not measured yet"))
        else:
            self.sampled.setText(tr("measured %s") % age_text(health.sampled_at))
            self.sampled.setToolTip(tr("The engine measures the appliance every %d s; these measures are as of %s.")
                                    % (SAMPLE_EVERY_S, time.strftime("%H:%M:%S", time.localtime(health.sampled_at))))

    def _show_throughput(self, received: float, replicating: int, health: ApplianceHealth | None) -> None:
        self.in_value.setText(rate_text(received))
        self.in_caption.setText(tr("received from 1 replicating server") if replicating == 1 else
                                tr("received from %d replicating servers") % replicating)
        if health is None:
            self.out_value.setText("—")
            self.out_caption.setText(tr("applied to the target: this engine does not report it")
                                     if self.bridge.state == "attached" else tr("applied to the target"))
        elif health.apply_rate_bps is None:
            self.out_value.setText("—")
            self.out_caption.setText(tr("applied to the target: not measured yet"))
        else:
            self.out_value.setText(rate_text(health.apply_rate_bps))
            self.out_caption.setText(tr("applied to the target (recent rate)"))

    # --- the top problems -------------------------------------------------------------------------------
    def _show_problems(self) -> None:
        shown = tuple(self.problems[:PROBLEMS_SHOWN])
        more = len(self.problems) - len(shown)
        self.more.setText(tr("…and 1 more problem.") if more == 1 else tr("…and %d more problems.") % more)
        self.more.setVisible(more > 0)
        attention = sum(1 for s in self.servers.values() if s.health != Health.HEALTHY
                        or s.state == ServerState.ERROR)
        self.more_button.setVisible(more > 0 and attention > 0)
        self.no_problems.setVisible(not shown)
        if [p.identity for p in shown] == [row.problem.identity for row in self.problem_rows]:
            for row, problem in zip(self.problem_rows, shown, strict=True):  # the same problems: the rows (and
                row.show_problem(problem)                                    # the admin's focus) stay
            return
        for row in self.problem_rows:
            self.problem_list.removeWidget(row)
            row.deleteLater()
        self.problem_rows = []
        for problem in shown:
            row = ProblemRow(problem)
            for action in problem.actions:
                button = row.buttons[action.key]
                button.clicked.connect(lambda _=False, action=action: self.on_problem_action(action))
                button.setEnabled(action.key not in self.running)
            self.problem_list.addWidget(row)
            self.problem_rows.append(row)

    def _set_running(self, action: Action, running: bool) -> None:
        (self.running.add if running else self.running.discard)(action.key)
        for row in self.problem_rows:
            button = row.buttons.get(action.key)
            if button is not None:
                button.setEnabled(not running)

    def on_problem_action(self, action: Action) -> None:
        """A problem's button: the signals at once; the engine's commands as a task, their buttons waiting."""
        if action.kind == "show-server":
            self.detail_requested.emit(action.names[0])
        elif action.kind == "agents":
            self.page_requested.emit("agents")
        elif action.kind == "events":
            self.page_requested.emit("events")
        elif action.kind == "licence":
            self.activate_licence_requested.emit()
        elif action.key not in self.running:
            self._set_running(action, True)  # before the task starts: a second click finds it running
            self.start(self.run_action(action))

    async def run_action(self, action: Action) -> None:
        try:
            if action.kind == "resync":
                await self.resync(action.names[0])
            elif action.kind == "update-mobility":
                await self.update_mobility(list(action.names))
        finally:
            self._set_running(action, False)

    async def resync(self, name: str) -> None:
        """Resync server ``name`` once the admin confirms."""
        if not await confirm(self, tr("Resync %s?") % name,
                             tr("%s sends every block again and the appliance compares it with its copy; this takes "
                                "as long as an initial replication. Recovery points are kept.") % name, tr("Resync")):
            return
        self.say("", "")
        if await self._ask(self.bridge.resync(name)) is not None:
            self.say("ok", tr("Resync of %s started.") % name)

    async def update_mobility(self, names: list[str]) -> None:
        self.say("", "")
        if await self._ask(self.bridge.update_mobility(names), done=True):
            self.say("ok", tr("%s installs the new mobility version at its next heartbeat.") % names[0]
                     if len(names) == 1 else
                     tr("%d servers install the new mobility version at their next heartbeat.") % len(names))

    # --- tasks and messages -------------------------------------------------------------------------------
    def start(self, coro: Coroutine[Any, Any, None]) -> asyncio.Task[None] | None:
        """Run a command of this page as a task it keeps until the task ends."""
        return self.tasks.start(coro)

    def say(self, level: str, text: str) -> None:
        """One line under the title: "error" (red: a refusal), "ok" (green), or "" (hidden when empty)."""
        show_line(self.message, level, text)

    async def _ask(self, call: Coroutine[Any, Any, Any], *, done: Any = None) -> Any:
        """Await an engine command; a refusal is said in one red line and returns None (else its answer, or
        ``done`` for a command that answers nothing)."""
        try:
            answer = await call
        except EngineError as exc:
            self.say("error", exc.message)
            return None
        return answer if done is None else done
