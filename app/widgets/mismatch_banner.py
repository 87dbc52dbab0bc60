"""The amber banner across the top of the console while the appliance's agents run different versions.

One agent updated and another not (an update of one agent, or an Update all that stopped half way) may
not work together; the banner names the odd ones out and offers Update all, and the Agents page.
Amber like the licence banner's warning, styled in ``resources/console.qss`` beside it.
"""

from __future__ import annotations

from collections import Counter

from PySide6.QtWidgets import QFrame, QHBoxLayout, QLabel, QPushButton, QSizePolicy, QWidget

from app.bridge import UpdatesStatus
from app.models.agents import version_key
from app.widgets.formatting import tr


def mismatch_text(updates: UpdatesStatus) -> str:
    """``Appliance agents run different versions (Process server 0.2.0, others 0.1.0). …``: the version most
    agents run is "others" (the older one when as many run each), the rest are named."""
    counts = Counter(a.installed_version for a in updates.agents)
    if not counts:
        return tr("Appliance agents run different versions. Update all agents together to keep them compatible.")
    common = min(counts, key=lambda v: (-counts[v], version_key(v)))
    odd = [f"{a.title} {a.installed_version}" for a in updates.agents if a.installed_version != common]
    which = ", ".join([*odd, tr("others %s") % common]) if odd else common
    return tr("Appliance agents run different versions (%s). Update all agents together to keep them "
              "compatible.") % which


class MismatchBanner(QFrame):
    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.setObjectName("mismatch_banner")
        self.updates: UpdatesStatus | None = None
        #: An Update all started from here is under way: its button waits.
        self.busy = False
        self.icon = QLabel("⚠", objectName="mismatch_icon")
        self.message = QLabel(objectName="mismatch_message", wordWrap=True)
        self.message.setSizePolicy(QSizePolicy.Policy.Expanding, QSizePolicy.Policy.Preferred)
        self.update_all_button = QPushButton(tr("Update all"), objectName="mismatch_update_all")
        self.update_all_button.setToolTip(tr("Install the available version of every outdated agent, together."))
        self.show_agents_button = QPushButton(tr("Show agents"), objectName="mismatch_show_agents")
        layout = QHBoxLayout(self)
        layout.setContentsMargins(14, 8, 10, 8)
        layout.setSpacing(10)
        layout.addWidget(self.icon)
        layout.addWidget(self.message, 1)
        layout.addWidget(self.update_all_button)
        layout.addWidget(self.show_agents_button)
        self.hide()

    def __repr__(self) -> str:
        return f"<MismatchBanner visible={not self.isHidden()} busy={self.busy}>"

    def show_updates(self, updates: UpdatesStatus) -> None:
        """Shown while ``updates.mismatched``; hidden otherwise."""
        self.updates = updates
        if updates.mismatched:
            self.message.setText(mismatch_text(updates))
        self.set_busy(self.busy)
        self.setVisible(updates.mismatched)

    def set_busy(self, busy: bool) -> None:
        """Update all waits while one started here runs, and while the engine installs anything."""
        self.busy = busy
        installing = self.updates is not None and any(a.status == "updating" for a in self.updates.agents)
        self.update_all_button.setEnabled(not busy and not installing)
