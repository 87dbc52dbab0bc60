"""Exporting records (events, …) to a file the admin chooses: JSON or CSV, written whole or not at all.

JSON is a list of objects with the records' fields under their own names, as the CLI's ``--json`` prints
them; CSV is a header row of those names and one row per record (RFC 4180 quoting, UTF-8, no byte-order mark;
None is an empty cell).
"""

from __future__ import annotations

import contextlib
import csv
import dataclasses
import io
import json
import logging
import os
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from PySide6.QtWidgets import QFileDialog, QWidget
from qasync import asyncWrap

from app.widgets.formatting import tr

log = logging.getLogger(__name__)

#: Each format the console exports to: the name of its files in the file dialog, and their suffix.
FORMATS: dict[str, tuple[str, str]] = {"json": ("JSON files", "json"), "csv": ("CSV files", "csv")}


def record_fields(record: Any) -> dict[str, Any]:
    """A flat record's fields as JSON values, by name: what the engine's one serialiser writes for it (a test
    holds the two together)."""
    return {f.name: getattr(record, f.name) for f in dataclasses.fields(record)}


def to_json_bytes(records: Sequence[Any]) -> bytes:
    return (json.dumps([record_fields(r) for r in records], indent=2, ensure_ascii=False) + "\n").encode()


#: What a spreadsheet takes a cell starting with for a formula.
FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")


def csv_cell(value: Any) -> Any:
    """A value for a CSV cell: text that a spreadsheet would run as a formula (an event message is partly a
    source's words) gets a leading apostrophe, so it shows as the text it is."""
    if value is None:
        return ""
    if isinstance(value, str) and value.startswith(FORMULA_STARTS):
        return "'" + value
    return value


def to_csv_bytes(records: Sequence[Any], fields: Sequence[str]) -> bytes:
    """A header row of ``fields``, then one row per record; ``fields`` names the columns even with no record."""
    out = io.StringIO(newline="")
    writer = csv.writer(out)  # the "excel" dialect: RFC 4180 quoting and CRLF line ends
    writer.writerow(fields)
    for record in records:
        values = record_fields(record)
        writer.writerow(csv_cell(values[name]) for name in fields)
    return out.getvalue().encode()


def encode(records: Sequence[Any], fields: Sequence[str], fmt: str) -> bytes:
    """``records`` in the format ``fmt`` (a key of :data:`FORMATS`)."""
    if fmt == "json":
        return to_json_bytes(records)
    if fmt == "csv":
        return to_csv_bytes(records, fields)
    raise ValueError(f"unknown export format {fmt!r}")


def write_file_atomically(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` whole or not at all: into a new file beside it, flushed to the disk, then renamed
    over it. On any failure the new file is removed and ``path`` is as it was; the OSError is raised.

    The file gets the permissions a new file of the admin's gets (0666 less the umask); the temporary one, made
    private, is never readable by others while it is written.
    """
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".part")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fchmod(f.fileno(), 0o666 & ~_umask())
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    with contextlib.suppress(OSError):  # the rename is done; making it durable is the file system's best effort
        dir_fd = os.open(path.parent, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)


def _umask() -> int:
    """The process's umask, read without changing it (Linux); 022 where it cannot be read."""
    with contextlib.suppress(OSError, ValueError), open("/proc/self/status") as status:
        for line in status:
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    return 0o022


def export_records(path: Path, records: Sequence[Any], fields: Sequence[str], fmt: str) -> None:
    """Encode ``records`` as ``fmt`` and write them to ``path`` atomically (blocking: run it in an executor)."""
    data = encode(records, fields, fmt)
    write_file_atomically(path, data)
    log.info("export.complete path=%s format=%s records=%d bytes=%d", path, fmt, len(records), len(data))


async def ask_export_path(parent: QWidget, title: str, suggested: Path, fmt: str) -> Path | None:
    """Ask where to export (a file dialog; the suffix of ``fmt`` is added when the admin types none); None when
    cancelled. The dialog does not ask about replacing a file: the caller does, once, after it."""
    label, suffix = FORMATS[fmt]
    dialog = QFileDialog(parent, title)
    dialog.setAcceptMode(QFileDialog.AcceptMode.AcceptSave)
    dialog.setFileMode(QFileDialog.FileMode.AnyFile)
    dialog.setOption(QFileDialog.Option.DontConfirmOverwrite)
    dialog.setNameFilters([f"{tr(label)} (*.{suffix})", f"{tr('All files')} (*)"])
    dialog.setDefaultSuffix(suffix)
    dialog.setDirectory(str(suggested.parent))
    dialog.selectFile(suggested.name)
    try:
        accepted = await asyncWrap(dialog.exec) == QFileDialog.DialogCode.Accepted
        files = dialog.selectedFiles()
    finally:
        dialog.deleteLater()
    return Path(files[0]) if accepted and files else None
