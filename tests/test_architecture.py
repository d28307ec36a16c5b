"""The house rules of shared/docs/architecture.md, checked on the source (ast, no imports executed):
the library never imports upward, and no two modules import each other (directly or in a longer cycle),
lazy imports inside functions included."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# Lower layers never import higher ones. benchmarks and tests may import anything. Every layer installs
# under the one `dtwinseg` namespace: the folder `training/` is the package `dtwinseg.training`.
LAYERS = ["dtwinseg", "data_builders", "training", "eval", "workflows", "cli"]


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    if parts[0] != "dtwinseg":
        parts = ["dtwinseg", *parts]
    return ".".join(parts)


def _layer(module: str) -> str:
    """The folder (layer) a dotted module name lives in."""
    second = module.split(".")[1] if module.count(".") else ""
    return second if second in LAYERS[1:] else "dtwinseg"


def _imports(path: Path) -> set[str]:
    """Every absolute module a file imports, at any depth (function-level imports too)."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    found: set[str] = set()
    here = _module_name(path)
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = here.split(".")
                pkg = base if path.name == "__init__.py" else base[:-1]
                pkg = pkg[: len(pkg) - (node.level - 1)]
                mod = ".".join(pkg + ([node.module] if node.module else []))
            else:
                mod = node.module or ""
            found.add(mod)
            # `from pkg import submodule` imports the submodule
            found.update(f"{mod}.{a.name}" for a in node.names)
    return found


def _project_modules() -> dict[str, Path]:
    mods = {}
    for layer in LAYERS:
        for p in (ROOT / layer).rglob("*.py"):
            mods[_module_name(p)] = p
    return mods


def _graph() -> dict[str, set[str]]:
    mods = _project_modules()
    return {m: {i for i in _imports(p) if i in mods and i != m} for m, p in mods.items()}


def test_no_upward_imports():
    bad = []
    for mod, deps in _graph().items():
        rank = LAYERS.index(_layer(mod))
        for dep in deps:
            if LAYERS.index(_layer(dep)) > rank:
                bad.append(f"{mod} imports {dep}")
    assert not bad, "upward imports:\n" + "\n".join(sorted(bad))


def test_evaluation_imports_nothing_from_training():
    """Only workflows (the demo, Table 4, publish) join training and evaluation; eval/ stands on the library
    and data_builders alone."""
    bad = [f"{mod} imports {dep}" for mod, deps in _graph().items() if _layer(mod) == "eval"
           for dep in deps if _layer(dep) == "training"]
    assert not bad, "\n".join(sorted(bad))


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan, iterative enough for this size)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    out: list[list[str]] = []
    counter = [0]

    def visit(v: str) -> None:
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in graph.get(v, ()):
            # a package's __init__ re-exporting its submodules is not a cycle of behaviour
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def test_no_import_cycles_between_modules():
    graph = _graph()
    # Edges from a package to its own submodules (its __init__ re-exports) are not cycles of design.
    pruned = {m: {d for d in deps if not d.startswith(m + ".")} for m, deps in graph.items()}
    # ... nor are edges from a submodule to its own package's __init__ when that only re-exports.
    pruned = {m: {d for d in deps if not m.startswith(d + ".")} for m, deps in pruned.items()}
    assert not _cycles(pruned), f"import cycles: {_cycles(pruned)}"


def test_graph_sees_real_imports():
    """The walker itself: it must see a known lazy import and a known top-level one, or the tests above
    could pass on an empty graph."""
    graph = _graph()
    assert "dtwinseg.twin" in graph["dtwinseg.data_builders.dt_cache"]
    assert any(d.startswith("dtwinseg.eval.") for d in graph["dtwinseg.cli.evaluation"])
    assert any(d.startswith("dtwinseg.training.") for d in graph["dtwinseg.workflows.demo"])


def test_no_generic_top_level_imports():
    """Nothing in the project imports the folders by their bare names (`training`, `eval`, ...): installed,
    they exist only as dtwinseg.<folder>, and a user's own `training` package must not be picked up."""
    bare = []
    for folder in ["dtwinseg", *LAYERS[1:], "tests", "benchmarks"]:
        for p in (ROOT / folder).rglob("*.py"):
            for mod in _imports(p):
                if mod.split(".")[0] in LAYERS[1:]:
                    bare.append(f"{p.relative_to(ROOT)} imports {mod}")
    assert not bare, "\n".join(sorted(bare))
