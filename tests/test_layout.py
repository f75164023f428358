"""The package layout's rules: layers point one way and no module imports itself back.

Read from the source (every ``import``, function-level ones included), so a
lazy import that closes a cycle counts as one.
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("kernel", "estimators", "training")


def _modules() -> dict[str, Path]:
    found = {}
    for package in PACKAGES:
        for path in (ROOT / package).rglob("*.py"):
            parts = path.relative_to(ROOT).with_suffix("").parts
            found[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return found


def _imports(name: str, path: Path, modules: dict[str, Path]) -> set[str]:
    """Project modules that ``name`` imports (a package's own submodules are not edges back to it)."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    targets = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                source = ".".join(base + ([node.module] if node.module else []))
            else:
                source = node.module or ""
            candidates = [source, *(f"{source}.{alias.name}" for alias in node.names)]
        elif isinstance(node, ast.Import):
            candidates = [alias.name for alias in node.names]
        else:
            continue
        targets.update(c for c in candidates if c in modules and c != name)
    return {t for t in targets if not (modules[t].name == "__init__.py" and name.startswith(t + "."))}


def _graph() -> dict[str, set[str]]:
    modules = _modules()
    return {name: _imports(name, path, modules) for name, path in modules.items()}


def test_no_import_cycle():
    graph = _graph()
    state: dict[str, int] = {}
    cycles = []

    def visit(node: str, path: list[str]) -> None:
        state[node] = 1
        for target in sorted(graph[node]):
            if state.get(target) == 1:
                cycles.append(path[path.index(target):] + [target] if target in path else [node, target])
            elif target not in state:
                visit(target, path + [target])
        state[node] = 2

    for name in sorted(graph):
        if name not in state:
            visit(name, [name])
    assert not cycles, f"import cycles: {cycles}"


def test_layers_point_one_way():
    graph = _graph()
    upward = [(name, target) for name, targets in graph.items() for target in targets
              if (name.startswith("kernel") and not target.startswith("kernel"))
              or (name.startswith("estimators") and target.startswith("training"))]
    assert not upward, f"imports against the layers (kernel <- estimators <- training): {upward}"
    assert any(t.startswith("kernel") for t in graph["estimators._forest"]), "the check reads imports"


#: The two serving commands' documented entry points (``python -m training.serve`` / ``training.score``):
#: they are the serving package's command lines, kept at their README names, so they import it.
SERVING_ENTRY_POINTS = {"training.serve", "training.score"}


def test_offline_code_does_not_import_the_serving_package():
    graph = _graph()
    offline = [name for name in graph if name.startswith("training") and not name.startswith("training.serving")]
    reaching = [(name, target) for name in offline for target in graph[name]
                if target.startswith("training.serving") and name not in SERVING_ENTRY_POINTS]
    assert not reaching, f"offline modules importing training.serving: {reaching}"
    assert {t for name in SERVING_ENTRY_POINTS for t in graph[name]} & {n for n in graph if n.startswith(
        "training.serving")}, "the check reads the entry points' imports"
