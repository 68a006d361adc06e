"""The folders are the architecture: each layer imports only from the layers below it, and the
import graph of moebif has no cycle (read from the source, with the standard library's ast)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

SRC = Path(__file__).parents[1] / "src" / "moebif"

# bottom to top; a module may import its own layer and any layer listed before it
LAYERS = [
    "base",
    "model",
    "sim",
    "monitor",
    "control",
    "nn",
    "experiments",
    "sweep",
    "explore",
    "cli",
]
BASE = {"params", "_io", "_version", "style"}  # the shared bottom: no moebif imports but these


def _module(path: Path) -> str:
    rel = path.relative_to(SRC.parent).with_suffix("")
    parts = list(rel.parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _layer(mod: str) -> str:
    parts = mod.split(".")
    if len(parts) == 1:
        return "top"  # moebif/__init__.py: the public API re-exports everything
    head = parts[1]
    if head in BASE or head in ("__main__", "torch"):
        return "base" if head in BASE else "top"
    return head


def _imports(path: Path) -> set[str]:
    mod = _module(path)
    pkg = mod if path.name == "__init__.py" else mod.rsplit(".", 1)[0]
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            out |= {a.name for a in node.names if a.name.startswith("moebif")}
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = pkg.split(".")
                base = base[: len(base) - (node.level - 1)]
                target = ".".join(base + ([node.module] if node.module else []))
            elif node.module and node.module.startswith("moebif"):
                target = node.module
            else:
                continue
            out.add(target)
            for a in node.names:  # `from . import x` imports the module x
                if (
                    (SRC.parent / (target + "." + a.name).replace(".", "/"))
                    .with_suffix(".py")
                    .exists()
                ):
                    out.add(target + "." + a.name)
    return out


GRAPH = {_module(p): _imports(p) for p in SRC.rglob("*.py")}


@pytest.mark.parametrize("mod", sorted(GRAPH))
def test_layer_imports_only_from_below(mod):
    own = _layer(mod)
    if own == "top":
        return
    allowed = set(LAYERS[: LAYERS.index(own) + 1]) if own in LAYERS else None
    assert allowed is not None, f"{mod}: folder {own!r} is not a known layer"
    for target in GRAPH[mod]:
        t = _layer(target)
        assert t in allowed, f"{mod} (layer {own}) imports {target} (layer {t})"


def test_model_is_numpy_scipy_only():
    for mod, targets in GRAPH.items():
        if _layer(mod) == "model":
            assert all(_layer(t) in ("base", "model") for t in targets), (mod, targets)
            text = (SRC.parent / mod.replace(".", "/")).with_suffix(".py")
            if not text.exists():
                text = SRC.parent / mod.replace(".", "/") / "__init__.py"
            for name in ("torch", "numba", "matplotlib", "typer", "rich"):
                assert f"import {name}" not in text.read_text(), (mod, name)


def test_no_import_cycle():
    graph = {m: {t for t in ts if t in GRAPH and t != m} for m, ts in GRAPH.items()}
    # a package's __init__ re-exporting its own modules is not a cycle of the architecture
    for m in graph:
        graph[m] = {t for t in graph[m] if not (t.startswith(m + ".") or m.startswith(t + "."))}
    state: dict[str, int] = {}

    def visit(m, path):
        state[m] = 1
        for t in graph[m]:
            if state.get(t) == 1:
                cycle = path[path.index(t) :] + [t]
                raise AssertionError("import cycle: " + " -> ".join(cycle))
            if t not in state:
                visit(t, path + [t])
        state[m] = 2

    for m in sorted(graph):
        if m not in state:
            visit(m, [m])
