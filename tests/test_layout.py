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


#: Where a product module's tests live when no ``tests/test_<name>*.py`` or ``tests/test_<package>_<name>*.py``
#: carries its name (the kernel's private modules are tested through ``kernel``'s public functions against the
#: brute-force reference; two-line modules that keep old pickles loading are tested by loading those pickles).
TESTED_IN = {
    "kernel._drivers": ["test_kernel_reference.py", "test_kernel_edges.py"],
    "kernel._search": ["test_kernel_reference.py", "test_kernel_edges.py"],
    "kernel._validate": ["test_kernel_edges.py"],
    "kernel.api": ["test_kernel_reference.py", "test_kernel_single.py"],
    "kernel.config": ["test_kernel_cache.py"],
    "kernel.samples": ["test_kernel_reference.py"],
    "estimators._textkernels": ["test_frozen.py"],
    "estimators.accuracy": ["test_estimators_real.py"],
    "estimators.answers": ["test_response_checks.py", "test_estimators_features.py"],
    "estimators.clusters": ["test_unlabelled.py"],
    "estimators.cost": ["test_estimators_router.py", "test_estimator_reference.py"],
    "estimators.evaluators": ["test_artifact.py"],
    "estimators.featurize": ["test_estimators_features.py", "test_long_prompts.py"],
    "estimators.inputs": ["test_router_inputs.py"],
    "estimators.kinds": ["test_cli_vocabulary.py"],
    "estimators.posthoc": ["test_response_checks.py", "test_estimators_features.py"],
    "estimators.prompts": ["test_long_prompts.py"],
    "estimators.quality": ["test_estimators_router.py", "test_estimator_reference.py", "test_unlabelled.py"],
    "estimators.runsets": ["test_estimators_features.py"],
    "estimators.sigma": ["test_estimator_reference.py", "test_estimators_sklearn.py"],
    "training.decision": ["test_policy.py", "test_episodes.py", "test_router_single.py"],
    "training.defaults": ["test_cli_vocabulary.py"],
    "training.explore": ["test_offpolicy.py", "test_traffic_log.py"],
    "training.keygen": ["test_artifact_signing.py"],
    "training.splits": ["test_fit_checks.py", "test_partial_logs.py"],
    "training.synthetic_models": ["test_synthetic.py"],
    "training.serving.backends": ["test_serve.py", "test_serve_faults.py"],
    "training.serving.batch": ["test_score.py", "test_score_faults.py", "test_score_partial.py"],
    "training.serving.edge": ["test_serve_edge.py"],
    "training.serving.logged": ["test_score_reading.py", "test_fuzz.py"],
    "training.serving.openai_api": ["test_serve_edge.py", "test_serve_fuzz.py"],
    "training.serving.outputs": ["test_score_faults.py", "test_score.py"],
    "training.serving.replay": ["test_score.py", "test_score_partial.py"],
    "training.serving.service": ["test_serve.py", "test_serve_edge.py", "test_serve_faults.py"],
    "training.serving.upstream": ["test_serve_faults.py"],
}


def _named_tests(module: str) -> list[str]:
    parts = module.split(".")
    name = parts[-1].lstrip("_")
    prefixes = {f"test_{name}", f"test_{parts[0]}_{name}"}
    return sorted(p.name for p in (ROOT / "tests").glob("test_*.py") if any(p.stem.startswith(x) for x in prefixes))


def test_every_product_module_has_its_tests_named_or_indexed():
    modules = [name for name, path in _modules().items() if path.name != "__init__.py"]
    unindexed = [name for name in modules if not _named_tests(name) and name not in TESTED_IN]
    assert not unindexed, f"modules with no tests/test_<name>*.py and no TESTED_IN entry: {unindexed}"
    stale = [name for name in TESTED_IN if name not in modules or _named_tests(name)]
    assert not stale, f"TESTED_IN entries for modules that are gone or now have a named test module: {stale}"
    missing = [(name, test) for name, tests in TESTED_IN.items() for test in tests
               if not (ROOT / "tests" / test).is_file()]
    assert not missing, f"TESTED_IN names test modules that do not exist: {missing}"
