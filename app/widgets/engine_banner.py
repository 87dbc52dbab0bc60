"""The red banner across the top of the console while no engine runs for its data directory.

The console says it once, here (not in a dialog per page), greys out what needs the engine, and offers
**Start engine**: an admin never has to be told to run a command. Styled in ``resources/console.qss``.
"""

from __future__ import annotations

from PySide6.QtWidgets import QFrame, QHBoxLayout, QLabel, QPushButton, QSizePolicy, QWidget

from app.widgets.formatting import tr

#: The bridge's states in which no engine serves the console (see :attr:`EngineBridge.connection_changed`).
ENGINE_DOWN = ("stopped", "failed")


class EngineBanner(QFrame):
    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.setObjectName("engine_banner")
        self.icon = QLabel("■", objectName="engine_banner_icon")
        self.message = QLabel(objectName="engine_banner_message", wordWrap=True)
        self.message.setSizePolicy(QSizePolicy.Policy.Expanding, QSizePolicy.Policy.Preferred)
        self.start_button = QPushButton(tr("Start engine"), objectName="start_engine")
        self.start_button.setToolTip(tr("Start the appliance's engine for this data directory; replication "
                                        "resumes where it stopped."))
        self.start_button.setAccessibleName(tr("Start engine"))
        layout = QHBoxLayout(self)
        layout.setContentsMargins(14, 8, 10, 8)
        layout.setSpacing(10)
        layout.addWidget(self.icon)
        layout.addWidget(self.message, 1)
        layout.addWidget(self.start_button)
        self.hide()

    def __repr__(self) -> str:
        return f"<EngineBanner visible={not self.isHidden()} text={self.message.text()!r}>"

    def show_connection(self, state: str, detail: str) -> None:
        """Shown while no engine runs (with the bridge's reason), hidden otherwise."""
        down = state in ENGINE_DOWN
        if down:
            self.message.setText(detail)
        self.set_busy(state == "starting")
        self.setVisible(down)

    def set_busy(self, busy: bool) -> None:
        """While an engine starts, its button waits."""
        self.start_button.setEnabled(not busy)
        self.start_button.setText(tr("Starting…") if busy else tr("Start engine"))
