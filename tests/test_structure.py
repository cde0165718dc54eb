"""The package's structure: no import cycle (deferred imports included), frameworks kept home."""

from __future__ import annotations

import ast
from pathlib import Path

from conftest import REPO

PACKAGE = REPO / "featloss"


def module_name(path: Path) -> str:
    parts = list(path.relative_to(REPO).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def modules() -> dict[str, Path]:
    return {module_name(p): p for p in PACKAGE.rglob("*.py")}


def imports_of(path: Path, known: dict[str, Path]) -> dict[str, int]:
    """featloss modules imported anywhere in `path` (functions included) -> first line."""
    name = module_name(path)
    package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
    found: dict[str, int] = {}
    for node in ast.walk(ast.parse(path.read_text())):
        targets = []
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(anchor + ([base] if base else []))
            for alias in node.names:  # `from pkg import submodule` imports the submodule
                sub = f"{base}.{alias.name}"
                targets.append(sub if sub in known else base)
        for target in targets:
            if target in known and target != name:
                found.setdefault(target, node.lineno)
    return found


def test_no_import_cycle_inside_featloss():
    known = modules()
    graph = {name: imports_of(path, known) for name, path in known.items()}
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> None:
        state[node] = 1
        stack.append(node)
        for nxt in graph[node]:
            if state.get(nxt) == 1:
                cycle = stack[stack.index(nxt):] + [nxt]
                raise AssertionError("import cycle: " + " -> ".join(cycle))
            if nxt not in state:
                visit(nxt)
        stack.pop()
        state[node] = 2

    for name in sorted(graph):
        if name not in state:
            visit(name)


def frameworks_of(path: Path) -> set[str]:
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        names = ([a.name for a in node.names] if isinstance(node, ast.Import)
                 else [node.module or ""] if isinstance(node, ast.ImportFrom) and not node.level
                 else [])
        found |= {n.split(".")[0] for n in names} & {"ray", "optuna", "mlflow"}
    return found


def test_ray_and_optuna_live_in_the_engine_and_mlflow_in_tracking():
    homes = {"ray": "featloss/engine", "optuna": "featloss/engine", "mlflow": "featloss/tracking"}
    for path in PACKAGE.rglob("*.py"):
        relative = str(path.relative_to(REPO))
        for framework in frameworks_of(path):
            assert relative.startswith(homes[framework]), f"{relative} imports {framework}"


def test_train_loop_imports_no_framework():
    assert not frameworks_of(PACKAGE / "train.py")


def test_no_orchestration_module_is_over_400_lines():
    for path in (PACKAGE / "engine").rglob("*.py"):
        lines = len(path.read_text().splitlines())
        assert lines <= 400, f"{path.relative_to(REPO)} has {lines} lines"
