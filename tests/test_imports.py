"""The igam package's imports point down (docs/layout.md): the method (models, objective,
attacks, training, gradients, ops, optim, data) imports nothing from the run machinery
(igam.run), the evaluation tools (igam.eval) or the TF import (igam.tf); and no module cycle,
lazily imported names included."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "igam"


def _module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: Path, modules: set[str]) -> set[str]:
    """igam modules that ``path`` imports anywhere (module level or inside functions)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            # "from igam.run import schemas" imports the module igam.run.schemas
            names = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
        else:
            continue
        found.update(n for n in names if n in modules)
    return found


def _graph() -> dict[str, set[str]]:
    files = {_module_name(p): p for p in PACKAGE.rglob("*.py")}
    modules = set(files)
    return {name: _imports(path, modules) - {name} for name, path in files.items()}


def _cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                return stack[stack.index(nxt):] + [nxt]
            if nxt not in state and (found := visit(nxt)):
                return found
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (found := visit(node)):
            return found
    return None


def test_cycle_finder_sees_a_cycle():
    assert _cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert _cycle({"a": {"b"}, "b": set()}) is None


def test_igam_has_no_import_cycle():
    graph = _graph()
    assert {"igam.run.config", "igam.run.rundir", "igam.data.cifar",
            "igam.data.loaders"} <= set(graph)
    assert _cycle(graph) is None, " -> ".join(_cycle(graph))


TOOLS = ("igam.run", "igam.eval", "igam.tf")


def _is_tool(module: str) -> bool:
    return any(module == t or module.startswith(t + ".") for t in TOOLS)


def _reachable(graph: dict[str, set[str]], start: str) -> set[str]:
    seen, todo = set(), [start]
    while todo:
        for nxt in graph[todo.pop()] - seen:
            seen.add(nxt)
            todo.append(nxt)
    return seen


def test_method_imports_no_tool():
    """Every method module, lazy imports included, reaches no igam.run / eval / tf module."""
    graph = _graph()
    method = [m for m in graph if m.startswith("igam.") and not _is_tool(m)]
    assert {"igam.models", "igam.objective", "igam.attacks", "igam.training", "igam.optim",
            "igam.gradients", "igam.ops", "igam.data.loaders"} <= set(method)
    for module in method:
        tools = sorted(m for m in _reachable(graph, module) if _is_tool(m))
        assert not tools, f"{module} imports {tools}"


def test_tools_point_down():
    """The run machinery asks the evaluation layer only for AutoAttack's lists (the attack
    config's choices); the TF import uses the method and the run machinery, nothing of eval."""
    graph = _graph()
    for module, imports in graph.items():
        if module.startswith("igam.run"):
            assert {m for m in imports if m.startswith(("igam.eval", "igam.tf"))} <= {
                "igam.eval.autoattack"}, module
        if module.startswith("igam.tf"):
            assert not {m for m in imports if m.startswith("igam.eval")}, module
    assert not {m for m in _reachable(graph, "igam.eval.autoattack") if _is_tool(m)}


def test_importing_the_method_loads_no_tool():
    code = ("import sys, igam.models, igam.objective, igam.attacks, igam.training, igam.data, "
            "igam.gradients, igam.optim, igam.ops; "
            "print(' '.join(m for m in sys.modules if m.startswith('igam.')))")
    out = subprocess.run([sys.executable, "-c", code], cwd=PACKAGE.parent, check=True,
                         capture_output=True, text=True).stdout.split()
    assert "igam.objective" in out
    assert not [m for m in out if _is_tool(m)], out
