"""The engine never imports Qt or the console."""

from __future__ import annotations

import subprocess
import sys


def test_engine_imports_no_qt() -> None:
    code = (
        "import sys, engine, engine.cli, engine.supervisor, engine.manager.service, engine.mobility.service;"
        "bad = sorted(m for m in sys.modules if m.split('.')[0] in ('PySide6', 'shiboken6', 'qasync', 'app'));"
        "print(','.join(bad))"
    )
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert res.stdout.strip() == ""


def test_console_reaches_engine_only_through_the_bridge() -> None:
    from pathlib import Path

    app = Path(__file__).resolve().parents[2] / "app"
    offenders = []
    for path in app.rglob("*.py"):
        if path.name == "bridge.py":
            continue
        for line in path.read_text().splitlines():
            if line.strip().startswith(("import engine", "from engine")):
                offenders.append(f"{path.relative_to(app)}: {line.strip()}")
    assert offenders == []
