"""Router logs read by ``moebif diagnose`` and written by :class:`moebif.torch.RouterMonitor`.

Formats (per-step expert counts, one row per step and layer):

- **CSV** (``.csv``): a header ``step,layer,e0,e1,...,e{N-1}``; ``layer`` is optional (one layer
  named ``0``); every other column is the count (or load) of one expert, in order.
- **JSONL** (``.jsonl``): one object a line, ``{"step": 12, "layer": "model.layers.0", "counts":
  [c0, c1, ...]}`` (``layer`` optional).
- **NumPy** (``.npy``): counts of shape ``(S, N)`` (one layer) or ``(S, L, N)``; steps are 0..S-1.
  (``.npz``): key ``counts`` as for ``.npy``, optional ``steps`` ``(S,)`` and ``layers`` ``(L,)``.

Counts must be finite and >= 0 with N >= 2 experts; steps increase within a layer. Errors are
:class:`LogError` naming the line and column (or key) at fault.
"""

from __future__ import annotations

import csv
import io
import json
import math
from pathlib import Path

import numpy as np

__all__ = ["LogError", "read_log", "write_log"]


class LogError(ValueError):
    """A malformed log: ``str(e)`` names the file, line and column (or array key) at fault."""


def _num(text: str, where: str) -> float:
    try:
        v = float(text)
    except ValueError:
        raise LogError(f"{where}: not a number: {text!r}") from None
    if not math.isfinite(v) or v < 0:
        raise LogError(f"{where}: counts must be finite and >= 0, got {text!r}")
    return v


def _finish(rows: dict, path) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    out = {}
    if not rows:
        raise LogError(f"{path}: no data rows")
    for layer, (steps, counts, lines) in rows.items():
        s = np.asarray(steps, dtype=np.int64)
        bad = np.nonzero(np.diff(s) <= 0)[0]
        if bad.size:
            raise LogError(
                f"{path}: line {lines[bad[0] + 1]}, column step: steps of layer "
                f"{layer!r} must increase"
            )
        out[layer] = (s, np.asarray(counts, dtype=float))
    return out


def _read_csv(path: Path):
    text = path.read_text(encoding="utf-8")
    reader = csv.reader(io.StringIO(text))
    try:
        header = [h.strip() for h in next(reader)]
    except StopIteration:
        raise LogError(f"{path}: line 1: empty file") from None
    if "step" not in header:
        raise LogError(f"{path}: line 1: no 'step' column in the header")
    i_step = header.index("step")
    i_layer = header.index("layer") if "layer" in header else None
    experts = [j for j, h in enumerate(header) if j not in (i_step, i_layer)]
    if len(experts) < 2:
        raise LogError(f"{path}: line 1: need >= 2 expert columns, got {len(experts)}")
    rows: dict = {}
    for lineno, rec in enumerate(reader, start=2):
        if not rec or all(not x.strip() for x in rec):
            continue
        if len(rec) != len(header):
            raise LogError(f"{path}: line {lineno}: {len(rec)} fields, header has {len(header)}")
        try:
            step = int(rec[i_step])
        except ValueError:
            raise LogError(
                f"{path}: line {lineno}, column step: not an integer: {rec[i_step]!r}"
            ) from None
        layer = rec[i_layer].strip() if i_layer is not None else "0"
        counts = [_num(rec[j], f"{path}: line {lineno}, column {header[j]}") for j in experts]
        r = rows.setdefault(layer, ([], [], []))
        r[0].append(step)
        r[1].append(counts)
        r[2].append(lineno)
    return _finish(rows, path)


def _read_jsonl(path: Path):
    rows: dict = {}
    n = None
    with path.open(encoding="utf-8") as fh:
        for lineno, line in enumerate(fh, start=1):
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as e:
                raise LogError(
                    f"{path}: line {lineno}, column {e.colno}: invalid JSON: {e.msg}"
                ) from None
            if not isinstance(obj, dict):
                raise LogError(f"{path}: line {lineno}: expected an object")
            if (
                "step" not in obj
                or isinstance(obj["step"], bool)
                or not isinstance(obj["step"], int)
            ):
                raise LogError(f"{path}: line {lineno}, key step: missing or not an integer")
            c = obj.get("counts")
            if not isinstance(c, list) or len(c) < 2:
                raise LogError(f"{path}: line {lineno}, key counts: need a list of >= 2 numbers")
            if n is not None and len(c) != n:
                raise LogError(
                    f"{path}: line {lineno}, key counts: {len(c)} experts, earlier lines had {n}"
                )
            n = len(c)
            vals = []
            for j, v in enumerate(c):
                if isinstance(v, bool) or not isinstance(v, int | float):
                    raise LogError(f"{path}: line {lineno}, key counts[{j}]: not a number: {v!r}")
                vals.append(_num(repr(v), f"{path}: line {lineno}, key counts[{j}]"))
            layer = str(obj.get("layer", "0"))
            r = rows.setdefault(layer, ([], [], []))
            r[0].append(obj["step"])
            r[1].append(vals)
            r[2].append(lineno)
    return _finish(rows, path)


def _check_array(a, path, key):
    if a.ndim not in (2, 3) or a.shape[-1] < 2:
        raise LogError(
            f"{path}: key {key}: need shape (S, N) or (S, L, N) with N >= 2, got {a.shape}"
        )
    if not np.issubdtype(a.dtype, np.number):
        raise LogError(f"{path}: key {key}: not numeric ({a.dtype})")
    a = a.astype(float)
    bad = np.argwhere(~np.isfinite(a) | (a < 0))
    if bad.size:
        raise LogError(
            f"{path}: key {key}, index {tuple(int(i) for i in bad[0])}: counts must be "
            "finite and >= 0"
        )
    return a if a.ndim == 3 else a[:, None, :]


def _read_numpy(path: Path):
    try:
        data = np.load(path, allow_pickle=False)
    except Exception as e:
        raise LogError(f"{path}: not a readable .npy/.npz file: {e}") from None
    if isinstance(data, np.ndarray):
        a, steps, layers = _check_array(data, path, "(array)"), None, None
    else:
        with data:
            if "counts" not in data.files:
                raise LogError(f"{path}: key counts: missing (keys: {', '.join(data.files)})")
            a = _check_array(data["counts"], path, "counts")
            steps = data["steps"] if "steps" in data.files else None
            layers = data["layers"] if "layers" in data.files else None
    S, L, _ = a.shape
    steps = np.arange(S) if steps is None else np.asarray(steps).astype(np.int64)
    if steps.shape != (S,):
        raise LogError(f"{path}: key steps: need shape ({S},), got {steps.shape}")
    names = [str(i) for i in range(L)] if layers is None else [str(x) for x in np.asarray(layers)]
    if len(names) != L:
        raise LogError(f"{path}: key layers: need {L} names, got {len(names)}")
    bad = np.nonzero(np.diff(steps) <= 0)[0]
    if bad.size:
        raise LogError(f"{path}: key steps, index {int(bad[0]) + 1}: steps must increase")
    return {nm: (steps, a[:, i, :]) for i, nm in enumerate(names)}


def read_log(path) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Read a router log: ``{layer: (steps (S,), counts (S, N))}`` (see the module docstring)."""
    path = Path(path)
    if not path.is_file():
        raise LogError(f"{path}: no such file")
    suf = path.suffix.lower()
    if suf == ".csv":
        return _read_csv(path)
    if suf in (".jsonl", ".ndjson"):
        return _read_jsonl(path)
    if suf in (".npy", ".npz"):
        return _read_numpy(path)
    raise LogError(f"{path}: unknown format {suf!r} (use .csv, .jsonl, .npy or .npz)")


def write_log(path, steps, counts_by_layer: dict) -> None:
    """Write ``{layer: counts (S, N)}`` at ``steps`` (S,) as CSV, JSONL or NPZ (by suffix),
    atomically."""
    from .._io import atomic_write_bytes, atomic_write_text

    path = Path(path)
    steps = np.asarray(steps, dtype=np.int64)
    suf = path.suffix.lower()
    layers = list(counts_by_layer)
    if suf == ".npz":
        arr = np.stack([np.asarray(counts_by_layer[k]) for k in layers], axis=1)
        buf = io.BytesIO()
        np.savez(buf, counts=arr, steps=steps, layers=np.array(layers))
        atomic_write_bytes(path, buf.getvalue())
        return
    lines = []
    if suf == ".csv":
        n = np.asarray(counts_by_layer[layers[0]]).shape[-1]
        lines.append(",".join(["step", "layer"] + [f"e{i}" for i in range(n)]))
    for i, s in enumerate(steps):
        for k in layers:
            c = np.asarray(counts_by_layer[k][i])
            vals = [int(v) if float(v).is_integer() else float(v) for v in c]
            if suf == ".csv":
                lines.append(",".join([str(int(s)), str(k)] + [str(v) for v in vals]))
            else:
                lines.append(json.dumps({"step": int(s), "layer": str(k), "counts": vals}))
    atomic_write_text(path, "\n".join(lines) + "\n")
