"""Draws a progress bar in a table cell whose model gives a per-mille value (and text) for it.

Painted by hand rather than with the style's progress bar: a track, a soft fill and the text colour of
the palette in use (app/theme.py) stay readable in every style, light or dark, and under selection.
"""

from __future__ import annotations

from PySide6.QtCore import QModelIndex, QPersistentModelIndex, QRectF, Qt
from PySide6.QtGui import QColor, QPainter
from PySide6.QtWidgets import QStyledItemDelegate, QStyleOptionViewItem

from app import theme


class ProgressDelegate(QStyledItemDelegate):
    def __init__(self, role: int, parent: object = None) -> None:
        super().__init__(parent)  # type: ignore[arg-type]
        self._role = role

    def paint(self, painter: QPainter, option: QStyleOptionViewItem,
              index: QModelIndex | QPersistentModelIndex) -> None:
        value = index.data(self._role)
        if value is None:
            super().paint(painter, option, index)
            return
        rect = QRectF(option.rect.adjusted(3, 4, -3, -4))  # type: ignore[attr-defined]
        painter.save()
        painter.setRenderHint(QPainter.RenderHint.Antialiasing)
        painter.setPen(Qt.PenStyle.NoPen)
        painter.setBrush(QColor(theme.colour("track")))
        painter.drawRoundedRect(rect, 4, 4)
        filled = QRectF(rect)
        filled.setWidth(rect.width() * max(0, min(1000, int(value))) / 1000)
        painter.setBrush(QColor(theme.colour("fill")))
        painter.drawRoundedRect(filled, 4, 4)
        painter.setPen(QColor(theme.colour("text")))
        text = option.fontMetrics.elidedText(str(index.data()), Qt.TextElideMode.ElideRight, int(rect.width()) - 12)
        painter.drawText(rect.adjusted(6, 0, -6, 0), int(Qt.AlignmentFlag.AlignVCenter | Qt.AlignmentFlag.AlignLeft),
                         text)
        painter.restore()
