"""A sortable, row-selecting table view over a record model, as every console list uses.

A page may also give it a row filter (:meth:`RecordProxy.set_row_filter`) and have it remember what the admin made
of its columns (:meth:`RecordTable.remember_columns`: widths, hidden columns and the sort order, in QSettings, with
a menu on the header to show and hide columns). Without either, it behaves as it always did.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

from PySide6.QtCore import (
    QAbstractItemModel,
    QModelIndex,
    QObject,
    QPersistentModelIndex,
    QPoint,
    QSettings,
    QSortFilterProxyModel,
    Qt,
)
from PySide6.QtWidgets import QAbstractItemView, QHeaderView, QMenu, QTableView, QWidget

from app.widgets.formatting import tr


class RecordProxy(QSortFilterProxyModel):
    """Sorts by the sort role's values (Python values: byte counts overflow Qt's ints) and, once a page sets a row
    filter, shows only the rows it accepts. Rows leave and come back without a reset, so the selection of the rows
    that stay is kept."""

    def __init__(self, parent: QObject | None = None) -> None:
        super().__init__(parent)
        self._accepts: Callable[[int], bool] | None = None

    def __repr__(self) -> str:
        source = self.sourceModel()
        total = source.rowCount() if source is not None else 0
        return f"<RecordProxy shown={self.rowCount()}/{total} filtered={self._accepts is not None}>"

    def set_row_filter(self, accepts: Callable[[int], bool] | None) -> None:
        """Show only the source rows for which ``accepts(source_row)`` is true; None shows every row. Set it again
        whenever what it accepts changes."""
        self.beginFilterChange()
        self._accepts = accepts
        self.endFilterChange(QSortFilterProxyModel.Direction.Rows)

    def filterAcceptsRow(self, source_row: int, source_parent: QModelIndex | QPersistentModelIndex) -> bool:
        if self._accepts is not None and not source_parent.isValid() and not self._accepts(source_row):
            return False
        return super().filterAcceptsRow(source_row, source_parent)


@dataclass(frozen=True)
class Columns:
    """How a table's columns start out and what the admin may change of them.

    ``keys`` name the columns in the saved settings (stable across versions and languages); ``widths`` are the
    starting widths (columns not named keep Qt's); ``hidden`` start hidden; ``always_shown`` cannot be hidden;
    ``stretch`` takes the room the others leave (its width is not saved).
    """

    keys: tuple[str, ...]
    widths: Mapping[int, int] = field(default_factory=dict)
    hidden: frozenset[int] = frozenset()
    always_shown: frozenset[int] = frozenset()
    stretch: int | None = None


class RecordTable(QTableView):
    def __init__(self, model: QAbstractItemModel, *, sort_role: int, sort_column: int, order: Qt.SortOrder,
                 object_name: str, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.setObjectName(object_name)
        self.proxy = RecordProxy(self)
        self.proxy.setSourceModel(model)
        self.proxy.setSortRole(sort_role)  # Python values: byte counts overflow Qt's ints
        self.setModel(self.proxy)
        self.setSortingEnabled(True)
        self.sortByColumn(sort_column, order)
        self.setSelectionBehavior(QAbstractItemView.SelectionBehavior.SelectRows)
        self.setSelectionMode(QAbstractItemView.SelectionMode.SingleSelection)
        self.verticalHeader().hide()
        self.setAlternatingRowColors(True)
        self.setShowGrid(False)
        self.setWordWrap(False)
        self.horizontalHeader().setStretchLastSection(True)
        self._default_sort = (sort_column, order)
        # Set by remember_columns():
        self.columns: Columns | None = None
        self._settings: QSettings | None = None
        self._prefix = ""
        self._user_widths: dict[int, int] = {}  #: the widths the admin set, by column
        self._applying = False  #: the table itself changes the columns: nothing to remember
        self._column_menu: QMenu | None = None

    def source_row(self, proxy_row: int) -> int:
        return self.proxy.mapToSource(self.proxy.index(proxy_row, 0)).row()

    # --- the admin's columns --------------------------------------------------------------------
    def remember_columns(self, columns: Columns, settings: QSettings, prefix: str) -> None:
        """Lay the columns out as ``columns`` says, then as the admin left them (``settings``, keys under
        ``prefix/``), and remember every change the admin makes from now on; the header's context menu shows and
        hides columns and resets them."""
        self.columns, self._settings, self._prefix = columns, settings, prefix
        header = self.horizontalHeader()
        header.setStretchLastSection(False)
        self._apply_defaults()
        self._restore()
        header.sectionResized.connect(self._on_section_resized)
        header.sortIndicatorChanged.connect(lambda *_: self.save_columns())
        header.setContextMenuPolicy(Qt.ContextMenuPolicy.CustomContextMenu)
        header.customContextMenuRequested.connect(self._on_header_context_menu_requested)

    def _apply_defaults(self) -> None:
        assert self.columns is not None
        header = self.horizontalHeader()
        self._applying = True
        try:
            for column in range(len(self.columns.keys)):
                mode = QHeaderView.ResizeMode.Stretch if column == self.columns.stretch \
                    else QHeaderView.ResizeMode.Interactive
                header.setSectionResizeMode(column, mode)
                if column in self.columns.widths:
                    self.setColumnWidth(column, self.columns.widths[column])
                self.setColumnHidden(column, column in self.columns.hidden)
        finally:
            self._applying = False
        self._user_widths = {}
        self.sortByColumn(*self._default_sort)

    def _key(self, name: str) -> str:
        return f"{self._prefix}/{name}"

    def _restore(self) -> None:
        assert self.columns is not None and self._settings is not None
        keys = self.columns.keys
        widths = self._settings.value(self._key("column_widths"))
        hidden = self._settings.value(self._key("hidden_columns"))
        sort = self._settings.value(self._key("sort"))
        self._applying = True
        try:
            for item in str(widths or "").split(","):
                name, _, width = item.partition("=")
                if name in keys and width.strip().isdigit() and keys.index(name) != self.columns.stretch:
                    column = keys.index(name)
                    self._user_widths[column] = max(int(width), self.horizontalHeader().minimumSectionSize())
                    self.setColumnWidth(column, self._user_widths[column])
            if hidden is not None:  # an empty text: the admin shows every column
                names = {n for n in str(hidden).split(",") if n}
                for column, name in enumerate(keys):
                    self.setColumnHidden(column, name in names and column not in self.columns.always_shown)
        finally:
            self._applying = False
        name, _, order = str(sort or "").partition(",")
        if name in keys:
            self.sortByColumn(keys.index(name), Qt.SortOrder.DescendingOrder if order == "descending"
                              else Qt.SortOrder.AscendingOrder)

    def save_columns(self) -> None:
        """Write the admin's widths, hidden columns and sort order to the settings (at once: cheap, in memory)."""
        if self.columns is None or self._settings is None or self._applying:
            return
        keys = self.columns.keys
        header = self.horizontalHeader()
        self._settings.setValue(self._key("column_widths"),
                                ",".join(f"{keys[c]}={w}" for c, w in sorted(self._user_widths.items())))
        self._settings.setValue(self._key("hidden_columns"),
                                ",".join(k for c, k in enumerate(keys) if self.isColumnHidden(c)))
        column = header.sortIndicatorSection()
        if 0 <= column < len(keys):
            order = "descending" if header.sortIndicatorOrder() == Qt.SortOrder.DescendingOrder else "ascending"
            self._settings.setValue(self._key("sort"), f"{keys[column]},{order}")
        else:
            self._settings.remove(self._key("sort"))

    def reset_columns(self) -> None:
        """Back to the page's own columns: starting widths, hidden columns and sort order; forgets the admin's."""
        self._apply_defaults()
        if self._settings is not None:
            for name in ("column_widths", "hidden_columns", "sort"):
                self._settings.remove(self._key(name))

    def set_column_shown(self, column: int, shown: bool) -> None:
        """Show or hide ``column`` (one that may be hidden) and remember it."""
        if self.columns is None or (not shown and column in self.columns.always_shown):
            return
        self._applying = True
        try:
            self.setColumnHidden(column, not shown)
            if shown and self.columnWidth(column) == 0:
                self.setColumnWidth(column, self._user_widths.get(column, self.columns.widths.get(column, 100)))
        finally:
            self._applying = False
        self.save_columns()

    def _on_section_resized(self, column: int, _old: int, new: int) -> None:
        if self._applying or self.columns is None or column == self.columns.stretch or new <= 0:
            return
        self._user_widths[column] = new
        self.save_columns()

    def column_menu(self) -> QMenu:
        """The header's context menu: a check for each column (those that must stay, greyed), and Reset columns."""
        assert self.columns is not None
        if self._column_menu is not None:
            self._column_menu.deleteLater()
        self._column_menu = menu = QMenu(self)
        menu.setObjectName("columns_menu")
        model = self.model()
        for column in range(len(self.columns.keys)):
            title = str(model.headerData(column, Qt.Orientation.Horizontal) or self.columns.keys[column])
            action = menu.addAction(tr(title))
            action.setCheckable(True)
            action.setChecked(not self.isColumnHidden(column))
            action.setEnabled(column not in self.columns.always_shown)
            action.setData(self.columns.keys[column])
            action.toggled.connect(lambda shown, c=column: self.set_column_shown(c, shown))
        menu.addSeparator()
        reset = menu.addAction(tr("Reset columns"))
        reset.setObjectName("reset_columns")
        reset.triggered.connect(self.reset_columns)
        return menu

    def _on_header_context_menu_requested(self, pos: QPoint) -> None:
        self.column_menu().popup(self.horizontalHeader().mapToGlobal(pos))
