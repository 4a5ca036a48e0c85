"""The shape of ``sevx86/hv``: no import cycle, no reading another object's private names.

The import graph is built from the source with ``ast``: every ``import`` that
runs (module level or inside a function), leaving out ``if TYPE_CHECKING:``
blocks, which only annotations read. ``from sevx86.hv import smp`` is an edge
to ``sevx86.hv.smp``; the package ``__init__`` (the public facade that
re-exports) is not a node.
"""

from __future__ import annotations

import ast
from pathlib import Path

import sevx86

PACKAGE = Path(sevx86.__file__).parent
HV = PACKAGE / "hv"


def _module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _is_type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _runtime_imports(tree: ast.AST) -> list[ast.Import | ast.ImportFrom]:
    found: list[ast.Import | ast.ImportFrom] = []

    def visit(node: ast.AST) -> None:
        if isinstance(node, ast.If) and _is_type_checking(node):
            for child in node.orelse:
                visit(child)
            return
        if isinstance(node, ast.Import | ast.ImportFrom):
            found.append(node)
        for child in ast.iter_child_nodes(node):
            visit(child)

    visit(tree)
    return found


def import_graph(root: Path = HV, *, runtime_only: bool = True) -> dict[str, set[str]]:
    """module -> the modules of the same package it imports."""
    paths = {_module_name(p): p for p in root.rglob("*.py")}
    prefix = _module_name(root / "__init__.py")
    graph: dict[str, set[str]] = {}
    for name, path in paths.items():
        if name == prefix:
            continue
        tree = ast.parse(path.read_text(), str(path))
        nodes = _runtime_imports(tree) if runtime_only else list(ast.walk(tree))
        deps: set[str] = set()
        for node in nodes:
            if isinstance(node, ast.Import):
                deps.update(a.name for a in node.names)
            elif isinstance(node, ast.ImportFrom) and node.module:
                deps.add(node.module)
                deps.update(f"{node.module}.{a.name}" for a in node.names)
        graph[name] = {d for d in deps if d in paths and d != prefix and d != name}
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}  # 1 = on the stack, 2 = done
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for dep in sorted(graph.get(node, ())):
            if state.get(dep) == 1:
                return stack[stack.index(dep) :] + [dep]
            if dep not in state and (cycle := visit(dep)):
                return cycle
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (cycle := visit(node)):
            return cycle
    return None


def test_the_import_graph_of_hv_has_no_cycle():
    graph = import_graph()
    # The graph sees the imports (it would be trivially acyclic if it saw none).
    assert {"sevx86.hv.handlers", "sevx86.hv.smp", "sevx86.hv.run"} <= graph["sevx86.hv.hypervisor"]
    assert find_cycle(graph) is None, " -> ".join(find_cycle(graph) or [])


def test_the_cycle_finder_finds_one():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None


def test_the_scheduler_knows_only_the_run_contract():
    graph = import_graph(runtime_only=False)
    assert "sevx86.hv.hypervisor" not in graph["sevx86.hv.scheduler"]
    assert "sevx86.hv.smp" not in graph["sevx86.hv.scheduler"]
    assert "sevx86.hv.run" in graph["sevx86.hv.scheduler"]


def test_no_module_reads_another_objects_private_names():
    """``x._name`` only on ``self``/``cls``: contracts are public names (hv, boot, harness)."""
    offenders = []
    paths = [*HV.rglob("*.py"), *(PACKAGE / "boot").rglob("*.py"), PACKAGE / "harness.py"]
    for path in paths:
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if not isinstance(node, ast.Attribute) or not node.attr.startswith("_"):
                continue
            if node.attr.startswith("__") or (
                isinstance(node.value, ast.Name) and node.value.id in ("self", "cls")
            ):
                continue
            offenders.append(f"{path.relative_to(PACKAGE.parent)}:{node.lineno} {node.attr}")
    assert not offenders, offenders
