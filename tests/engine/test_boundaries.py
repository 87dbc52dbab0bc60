"""The engine never imports Qt or the console."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path


def test_engine_imports_no_qt() -> None:
    """Importing the engine, its CLI, supervisor and services loads no Qt, qasync or console module."""
    code = (
        "import sys, engine, engine.cli, engine.supervisor, engine.manager.service, engine.mobility.service;"
        "bad = sorted(m for m in sys.modules if m.split('.')[0] in ('PySide6', 'shiboken6', 'qasync', 'app'));"
        "print(','.join(bad))"
    )
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert res.stdout.strip() == ""


def test_console_reaches_engine_only_through_the_bridge() -> None:
    """No console module but app/bridge.py imports the engine."""
    app = Path(__file__).resolve().parents[2] / "app"
    offenders = []
    for path in app.rglob("*.py"):
        if path.name == "bridge.py":
            continue
        for line in path.read_text().splitlines():
            if line.strip().startswith(("import engine", "from engine")):
                offenders.append(f"{path.relative_to(app)}: {line.strip()}")
    assert offenders == []


def _engine_imports(root: Path) -> dict[str, set[str]]:
    """Module -> the engine modules it imports anywhere in its text (lazy and TYPE_CHECKING imports
    count: they are dependencies too). A package importing its own modules, or a module its own
    package, does not count."""
    import ast

    modules = {".".join(p.relative_to(root.parent).with_suffix("").parts).removesuffix(".__init__"): p
               for p in root.rglob("*.py")}
    graph: dict[str, set[str]] = {name: set() for name in modules}
    for name, path in modules.items():
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module and not node.level:
                wanted = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
            elif isinstance(node, ast.Import):
                wanted = [a.name for a in node.names]
            else:
                continue
            for target in wanted:
                while target and target not in modules:
                    target = target.rpartition(".")[0]
                if target and target != name and not name.startswith(target + ".") \
                        and not target.startswith(name + "."):
                    graph[name].add(target)
    return graph


def _a_cycle(graph: dict[str, set[str]]) -> list[str]:
    """One import cycle (``[a, b, …, a]``), or [] when there is none."""
    done: set[str] = set()
    path: list[str] = []

    def visit(node: str) -> list[str]:
        if node in path:
            return [*path[path.index(node):], node]
        if node in done:
            return []
        path.append(node)
        for nxt in sorted(graph[node]):
            if found := visit(nxt):
                return found
        path.pop()
        done.add(node)
        return []

    for start in sorted(graph):
        if found := visit(start):
            return found
    return []


def test_the_cycle_finder_finds_a_cycle(tmp_path: Path) -> None:
    """The check below can fail: a two-module cycle through a lazy import is found."""
    pkg = tmp_path / "engine"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "a.py").write_text("from engine.b import x\n")
    (pkg / "b.py").write_text("def f():\n    from engine import a\n")
    assert _a_cycle(_engine_imports(pkg)) in (["engine.a", "engine.b", "engine.a"],
                                             ["engine.b", "engine.a", "engine.b"])


def test_no_import_cycle_among_engine_modules() -> None:
    """Engine modules depend on each other in one direction only (no cycle, lazy imports included)."""
    engine = Path(__file__).resolve().parents[2] / "engine"
    assert _a_cycle(_engine_imports(engine)) == []


def test_every_test_says_what_it_pins() -> None:
    """Every test function under tests/ (nested ones too) has a docstring saying the behaviour it pins."""
    import ast

    root = Path(__file__).resolve().parents[2]
    missing = []
    for path in sorted((root / "tests").rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and node.name.startswith("test_") \
                    and not ast.get_docstring(node):
                missing.append(f"{path.relative_to(root).as_posix()}::{node.name}")
    assert missing == [], "test functions without a docstring saying what they pin:\n" + "\n".join(missing)
