"""The package's import graph: no cycles, and imports run one way through the layers."""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
# Lower number = lower layer; a module may import only its own layer or lower ones.
LAYERS = {"errors": 0, "schema": 0, "_version": 0, "files": 0, "synthetic": 0, "preflight": 0,
          "image": 1, "engine": 2, "tiling": 3,
          "segment": 4, "probe": 4, "live": 5, "cluster": 5, "export": 6, "napari_plugin": 6, "cli": 7}


def _module_name(path: Path) -> str:
    if path.is_relative_to(ROOT / "export"):
        parts = ("dinosaw_deploy", "export", *path.relative_to(ROOT / "export").with_suffix("").parts)
    else:
        parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(p for p in parts if p != "__init__")


def _graph() -> dict[str, set[str]]:
    """Module-level and function-level imports of our modules (static, from the source)."""
    files = [*(ROOT / "dinosaw_deploy").rglob("*.py"), *(ROOT / "export").rglob("*.py")]
    modules = {_module_name(f): f for f in files}
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        deps = set()
        for node in ast.walk(ast.parse(path.read_text())):
            targets = []
            if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                targets = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
            elif isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            deps.update(t for t in targets if t in modules and t != name)
        graph[name] = deps
    return graph


def _layer(module: str) -> tuple[str, int]:
    part = module.split(".")[1] if "." in module else "__init__"
    return part, LAYERS.get(part, -1)


def test_no_import_cycles():
    graph = _graph()
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> None:
        state[node] = 1
        stack.append(node)
        for dep in sorted(graph[node]):
            if state.get(dep) == 1:
                pytest.fail("import cycle: " + " -> ".join(stack[stack.index(dep):] + [dep]))
            if dep not in state:
                visit(dep)
        stack.pop()
        state[node] = 2

    for module in sorted(graph):
        if module not in state:
            visit(module)


def test_imports_run_down_the_layers():
    bad = []
    for module, deps in _graph().items():
        if module == "dinosaw_deploy":  # the top-level API re-exports from every layer
            continue
        part, level = _layer(module)
        assert level >= 0, f"{module}: folder {part!r} has no layer in LAYERS"
        for dep in deps:
            dep_part, dep_level = _layer(dep)
            if dep != "dinosaw_deploy" and dep_level > level:
                bad.append(f"{module} ({part}) imports {dep} ({dep_part})")
            if dep == "dinosaw_deploy" and part != "cli":
                bad.append(f"{module} imports the package root (import its module instead)")
    assert not bad, "\n".join(bad)
