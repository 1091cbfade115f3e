"""The package's import graph: imports run one way (no cycle), and the model does not depend on retrieval.

Read statically from the source (every ``import icg...`` and ``from icg... import``, also inside functions), so
a cycle that a lazy import hides still counts.
"""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "icg"


def _modules() -> dict[str, Path]:
    modules = {}
    for path in PACKAGE.rglob("*.py"):
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        modules[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return modules


def _import_graph() -> dict[str, set[str]]:
    """Module -> the icg modules it imports (``from icg.x import name`` counts as ``icg.x.name`` when that is a
    module, else ``icg.x``). A package's edges to its own submodules and theirs to it are left out: an
    ``__init__`` that re-exports is not a cycle."""
    modules = _modules()

    def owner(name: str) -> str:
        while name not in modules:
            name = name.rpartition(".")[0]
        return name

    graph = {}
    for module, path in modules.items():
        imported = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.level == 0 and (node.module or "").startswith("icg"):
                imported |= {owner(f"{node.module}.{alias.name}") for alias in node.names}
            elif isinstance(node, ast.Import):
                imported |= {owner(alias.name) for alias in node.names if alias.name.split(".")[0] == "icg"}
        graph[module] = {
            other for other in imported if not (other.startswith(module + ".") or module.startswith(other + "."))
        }
    return graph


def test_the_import_graph_has_no_cycle() -> None:
    graph = _import_graph()
    done: set[str] = set()

    def visit(module: str, path: list[str]) -> None:
        for other in sorted(graph[module]):
            assert other not in path, "import cycle: " + " -> ".join(path[path.index(other) :] + [other])
            if other not in done:
                visit(other, path + [other])
        done.add(module)

    for module in sorted(graph):
        visit(module, [module])


def test_the_model_does_not_import_retrieval() -> None:
    """The network fills the features record (``icg.features``); retrieval reads it and sits above the model."""
    graph = _import_graph()
    for module in graph:
        if module == "icg.model" or module.startswith("icg.model."):
            retrieval = {other for other in graph[module] if other.split(".")[:2] == ["icg", "retrieval"]}
            assert not retrieval, f"{module} imports {sorted(retrieval)}"
