"""The licence banner across the top of every console page.

It shows the engine's sentence (:attr:`LicenceStatus.message`: what is about to happen and what to
do) with a button for each way out. Its ``level`` property is the licence's alarm, ``warning``
(amber) or ``critical`` (red), styled in ``resources/console.qss``; with no alarm it is hidden.
"""

from __future__ import annotations

from PySide6.QtWidgets import QFrame, QHBoxLayout, QLabel, QPushButton, QSizePolicy, QWidget

from app.bridge import LicenceStatus
from app.widgets.formatting import tr


class LicenceBanner(QFrame):
    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.setObjectName("licence_banner")
        self.setProperty("level", "none")
        self.licence: LicenceStatus | None = None
        self.icon = QLabel("⚠", objectName="licence_icon")
        self.message = QLabel(objectName="licence_message", wordWrap=True)
        self.message.setSizePolicy(QSizePolicy.Policy.Expanding, QSizePolicy.Policy.Preferred)
        self.activate_button = QPushButton(tr("Activate licence…"), objectName="activate_licence")
        self.activate_button.setToolTip(tr("Activate the licence file you received for this appliance."))
        self.move_button = QPushButton(tr("Move to a fresh appliance…"), objectName="move_appliance")
        self.move_button.setToolTip(tr("Write an encrypted backup of this appliance and restore it on a new one."))
        layout = QHBoxLayout(self)
        layout.setContentsMargins(14, 8, 10, 8)
        layout.setSpacing(10)
        layout.addWidget(self.icon)
        layout.addWidget(self.message, 1)
        layout.addWidget(self.activate_button)
        layout.addWidget(self.move_button)
        self.hide()

    def __repr__(self) -> str:
        days = self.licence.days_left if self.licence else None
        return f"<LicenceBanner level={self.level} visible={not self.isHidden()} days_left={days}>"

    @property
    def level(self) -> str:
        """``none``, ``warning`` (amber) or ``critical`` (red)."""
        return str(self.property("level"))

    def show_licence(self, licence: LicenceStatus) -> None:
        """Show ``licence``'s alarm; hidden when it has none (active, or far from its end)."""
        self.licence = licence
        # An alarm a newer engine may add reads as a warning, so its sentence is not lost.
        level = "none" if licence.alarm == "none" or not licence.message else \
            "critical" if licence.alarm == "critical" else "warning"
        self.message.setText(licence.message)
        self.setProperty("level", level)
        self.style().unpolish(self)
        self.style().polish(self)
        for child in (self.icon, self.message):
            self.style().unpolish(child)  # children pick up the level through the parent's selector
            self.style().polish(child)
        self.setVisible(level != "none")
