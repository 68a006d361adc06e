"""Every ``moebif.x.y`` named in the source (docstrings, ``:mod:``/``:func:`` roles, comments,
messages) is a module or a name that exists: a rename leaves no stale pointer behind.

Resolved from the files, without importing them (fast, and no optional dependency needed): the
longest prefix that is a module file or package, then each further part a name defined at the top
level of that module (or re-exported, or in ``__all__``), or in a class of it."""

from __future__ import annotations

import ast
import re
from functools import cache
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src"
# a dotted path that starts with moebif; ``moebif.RouterMonitor/1`` is a format tag, not a path
REF = re.compile(r"(?<![\w.])(moebif(?:\.[A-Za-z_]\w*)+)(?![\w/])")


def _module_file(parts: list[str]) -> Path | None:
    base = SRC.joinpath(*parts)
    for f in (base.with_suffix(".py"), base / "__init__.py"):
        if f.is_file():
            return f
    return None


@cache
def _names(path: Path) -> dict[str, ast.AST | None]:
    """Top-level names of a module: defs, classes, assignments, imports, ``__all__`` entries."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    out: dict[str, ast.AST | None] = {}
    for node in tree.body:
        _collect(node, out)
    return out


def _collect(node, out) -> None:
    if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
        out[node.name] = node
    elif isinstance(node, ast.Assign | ast.AnnAssign):
        targets = node.targets if isinstance(node, ast.Assign) else [node.target]
        for t in targets:
            for n in ast.walk(t):
                if isinstance(n, ast.Name):
                    out.setdefault(n.id, None)
                    if n.id == "__all__" and isinstance(node.value, ast.List | ast.Tuple):
                        for e in node.value.elts:
                            if isinstance(e, ast.Constant) and isinstance(e.value, str):
                                out.setdefault(e.value, None)
    elif isinstance(node, ast.Import | ast.ImportFrom):
        for a in node.names:
            out.setdefault((a.asname or a.name).split(".")[0], None)
    elif isinstance(node, ast.If | ast.Try):  # names defined under a guard
        for child in ast.iter_child_nodes(node):
            _collect(child, out)


def _resolves(ref: str) -> bool:
    parts = ref.split(".")
    for n in range(len(parts), 0, -1):
        f = _module_file(parts[:n])
        if f is None:
            continue
        rest = parts[n:]
        if not rest:
            return True
        names = _names(f)
        if rest[0] not in names:
            return False
        node = names[rest[0]]
        for attr in rest[1:]:  # Class.method
            if not isinstance(node, ast.ClassDef):
                return True  # an attribute of a value: not checked statically
            inner: dict = {}
            for child in node.body:
                _collect(child, inner)
            if attr not in inner:
                return False
            node = inner[attr]
        return True
    return False


def test_every_moebif_path_in_the_source_exists():
    bad = []
    for path in sorted((SRC / "moebif").rglob("*.py")):
        for i, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
            for m in REF.finditer(line):
                ref = m.group(1)
                if not _resolves(ref):
                    bad.append(f"{path.relative_to(SRC)}:{i}: {ref}")
    assert not bad, "stale module paths:\n" + "\n".join(bad)


def test_the_checker_catches_a_stale_path():
    assert _resolves("moebif.sim.router.simulate_batch_router")
    assert _resolves("moebif.model.metastability")
    assert _resolves("moebif.simulate_batch_router")  # re-exported
    assert not _resolves("moebif._sampling")
    assert not _resolves("moebif.router.simulate_batch_router")
    assert not _resolves("moebif.nexperts.barrier")
    assert not _resolves("moebif.sim.router.no_such_function")
