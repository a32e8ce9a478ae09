"""The package's shape, checked on its source: imports go one way, through the layers

    cli  ->  publish | perf  ->  scoring  ->  engine  ->  assets  ->  core

(``bench/<layer>/``; publish and perf do not import each other), ``methods`` depends on nothing in
``bench``, no module imports itself back through a cycle, and a function-level import is only one
of a heavy optional library, deferred so that `python -m bench --help` and `bench list` start fast.
This is the import-linter contract, written as a test so that CI needs nothing more."""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
LAYERS = {"bench.core": 0, "bench.assets": 1, "bench.engine": 2, "bench.scoring": 3, "bench.publish": 4,
          "bench.perf": 4, "bench.cli": 5}
#: third-party packages a function may import at first use: heavy to import (seconds) or optional
DEFERRED_OK = {"diffusers", "transformers", "open_clip", "cleanfid", "accelerate", "peft", "matplotlib",
               "huggingface_hub", "torchvision", "lpips", "prdc", "torch_fidelity"}


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {module_name(p): p for package in ("bench", "methods") for p in (ROOT / package).rglob("*.py")}


def imports_of(path: Path) -> list[tuple[str, int, bool]]:
    """(imported module, line, inside a function) for every import statement of ``path``."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    found = []

    def visit(node: ast.AST, in_function: bool) -> None:
        for child in ast.iter_child_nodes(node):
            inside = in_function or isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef))
            if isinstance(child, ast.ImportFrom) and child.module and child.level == 0:
                names = [f"{child.module}.{alias.name}" for alias in child.names]
                target = next((n for n in names if n in MODULES), child.module)
                found.append((target, child.lineno, in_function))
            elif isinstance(child, ast.Import):
                found.extend((alias.name, child.lineno, in_function) for alias in child.names)
            visit(child, inside)

    visit(tree, False)
    return found


def layer_of(module: str) -> str | None:
    return next((layer for layer in LAYERS if module == layer or module.startswith(layer + ".")), None)


def project_edges() -> dict[str, set[str]]:
    edges = {}
    for name, path in MODULES.items():
        targets = {target for target, _, _ in imports_of(path)}
        edges[name] = {t for t in targets if t in MODULES and t != name}
    return edges


def test_every_harness_module_lives_in_a_layer():
    loose = sorted(n for n in MODULES if n.startswith("bench") and layer_of(n) is None)
    assert loose == ["bench", "bench.__main__"], loose


@pytest.mark.parametrize("name", sorted(n for n in MODULES if layer_of(n)))
def test_imports_go_down_the_layers(name):
    own = layer_of(name)
    for target, line, _ in imports_of(MODULES[name]):
        if not target.startswith("bench.") or target == name:
            continue
        other = layer_of(target)
        assert other is not None, f"{name}:{line} imports {target}, which is in no layer"
        assert other == own or LAYERS[other] < LAYERS[own], f"{name}:{line} ({own}) imports {target} ({other}): upward"


def test_methods_import_nothing_from_the_harness():
    offending = [f"{name}:{line} imports {target}" for name, path in MODULES.items() if name.startswith("methods")
                 for target, line, _ in imports_of(path) if target.split(".")[0] == "bench"]
    assert not offending, offending


def test_no_import_cycles():
    edges = project_edges()
    index, low, stack, on_stack, cycles = {}, {}, [], set(), []

    def strong_connect(v: str) -> None:          # Tarjan's strongly connected components
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in edges[v]:
            if w not in index:
                strong_connect(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                cycles.append(sorted(component))

    for v in sorted(edges):
        if v not in index:
            strong_connect(v)
    assert not cycles, cycles


def test_function_level_imports_are_heavy_optional_libraries_only():
    offending = [f"{name}:{line} {target}" for name, path in MODULES.items() for target, line, inside in imports_of(path)
                 if inside and target.split(".")[0] not in DEFERRED_OK]
    assert not offending, f"{len(offending)} function-level imports to move to the top: {offending[:20]}"
