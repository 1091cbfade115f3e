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
    module, else ``icg.x``). Importing a module imports its packages first, so ``icg.x.y`` also counts as ``icg.x``
    (an ``__init__`` that re-exports runs then); only a module's edges to its own packages are left out: a
    submodule that imports a sibling while its package initialises is no cycle."""
    modules = _modules()

    def owner(name: str) -> str:
        while name not in modules:
            name = name.rpartition(".")[0]
        return name

    graph = {}
    for module, path in modules.items():
        imported = set()
        tree = ast.parse(path.read_text())
        typing_only = {  # imports under `if TYPE_CHECKING:` never run
            id(inner)
            for node in ast.walk(tree)
            if isinstance(node, ast.If) and isinstance(node.test, ast.Name) and node.test.id == "TYPE_CHECKING"
            for inner in ast.walk(node)
        }
        for node in ast.walk(tree):
            if id(node) in typing_only:
                continue
            if isinstance(node, ast.ImportFrom) and node.level == 0 and (node.module or "").startswith("icg"):
                imported |= {owner(f"{node.module}.{alias.name}") for alias in node.names}
            elif isinstance(node, ast.Import):
                imported |= {owner(alias.name) for alias in node.names if alias.name.split(".")[0] == "icg"}
        with_packages = set(imported)
        for other in imported:
            parts = other.split(".")
            with_packages |= {".".join(parts[:end]) for end in range(2, len(parts))}
        graph[module] = {other for other in with_packages if not module.startswith(other + ".") and other != module}
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
