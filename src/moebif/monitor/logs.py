"""Router logs: per-step expert counts per layer, written by :class:`moebif.torch.RouterMonitor`
(:class:`LogWriter`) and read by ``moebif diagnose`` (:func:`read_log`).

**JSONL, moebif log format 2** (what RouterMonitor writes). The first line of every run segment is
a header object::

    {"moebif_log": 2, "segment": 0, "start_step": 0, "moebif_version": "0.1.0",
     "created": "2026-05-01T12:00:00+00:00", "model_class": "MixtralForCausalLM",
     "layers": {"model.layers.0.mlp.gate": {"n_experts": 8, "top_k": 2,
                "router_class": "MixtralTopKRouter", "importance": true,
                "probabilities": "softmax", "scores": true}, ...}}

then one data line per step and layer::

    {"step": 12, "layer": "model.layers.0.mlp.gate", "counts": [c0, ..., c{N-1}],
     "importance": [p0, ..., p{N-1}], "tokens": 512, "dropped": 0,
     "scores": [s0, ..., s{N-1}]}

``counts`` are the expert assignments of the step (summed over micro-batches); ``importance``
(when the header says ``"importance": true``) is the router's soft importance of the step, the
token-weighted mean over the step's tokens of the per-token selection probabilities over all N
experts (``"probabilities"`` says how they were formed: ``"softmax"`` of the logits, or the
``"sigmoid"`` (or other) scores normalised to sum 1 per token), so it sums to 1; ``tokens`` is the
number of tokens routed, ``dropped`` the assignments that went to no expert (the skip slot N, the
index -1, or beyond an expert's capacity). ``scores`` (when the header says ``"scores": true``;
optional, absent in older logs) are the mean over the step's tokens of the router's logits
before softmax / sigmoid, per expert (9 significant digits): the feedback estimator's response
variable (:mod:`moebif.monitor.feedback`). Layers may have different N.

*Segments.* A resumed run appends a new header with ``segment`` one higher and ``start_step`` the
first step it logs; its lines replace those of earlier segments from ``start_step`` on (a run
killed after its last checkpoint logged steps that the resumed run logs again). A header with the
segment number of the current segment and a later ``start_step`` continues it (the first line of a
rotated file, see :class:`LogWriter`). A torn last line of a segment (a killed writer) is skipped
with a warning.

*Rotation.* ``LogWriter(max_bytes=..., backups=K)`` keeps ``log.jsonl`` below about ``max_bytes``
by renaming it to ``log.jsonl.1`` (``.1`` to ``.2``, ..., the oldest beyond ``.K`` deleted) and
starting a new file with a continuation header. :func:`read_log` on ``log.jsonl`` reads the whole
set, oldest first; on a directory, the one log set it holds.

**Older formats** (no header: N from the data, ``top_k`` unknown): JSONL lines as above without a
header; **CSV** (``.csv``) with a header ``step,layer,e0,e1,...`` (``layer`` optional; a layer with
fewer experts leaves its trailing cells empty); **NumPy** ``.npy`` of shape ``(S, N)`` or
``(S, L, N)`` (steps 0..S-1) and ``.npz`` with key ``counts`` (same shapes), optional ``steps``
``(S,)`` and ``layers`` ``(L,)``.

Counts must be finite, >= 0 and below ``MAX_COUNT`` (1e15: more is no token count; with 1e308 the
loads overflow); steps are integers in ``[0, 2**53)`` and increase within a layer. Every problem is
a :class:`LogError` whose message is one line naming the file, line and column (or key) at fault.
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
import re
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import numpy as np

__all__ = [
    "LOG_FORMAT",
    "MAX_COUNT",
    "LayerLog",
    "LogError",
    "LogSegment",
    "LogWriter",
    "RouterLog",
    "log_files",
    "read_log",
    "write_log",
]

LOG_FORMAT = 2
MAX_COUNT = 1e15
_MAX_STEP = 2**53
_SUFFIXES = (".jsonl", ".ndjson", ".csv", ".npy", ".npz")
_ROTATED = re.compile(r"^(?P<base>.+\.(?:jsonl|ndjson))\.(?P<n>[1-9][0-9]*)$", re.IGNORECASE)


class LogError(ValueError):
    """A malformed log: ``str(e)`` is one line naming the file, line and column (or key)."""


# --------------------------------------------------------------------------------------------
# result types


@dataclass(frozen=True)
class LayerLog:
    """One router's log.

    **Arguments:**

    - ``name``: the layer label; ``n_experts``: N; ``top_k``: experts per token (``None``: the
      log does not say).
    - ``steps``: ``(S,)`` int64, increasing; ``counts``: ``(S, N)`` float (expert assignments).
    - ``importance``: ``(S, N)`` soft importance (rows sum to 1) or ``None`` (not recorded).
    - ``tokens``, ``dropped``: ``(S,)`` float (NaN where a line did not carry them) or ``None``.
    - ``scores``: ``(S, N)`` mean router logits per step or ``None`` (not recorded).
    - ``forces``: ``(S, 5)`` the force probe's sums per step (:mod:`moebif.monitor.forces`) or
      ``None`` (not recorded).
    - ``meta``: the header entry of the layer (``router_class``, ``probabilities``, ...).
    """

    name: str
    n_experts: int
    top_k: int | None
    steps: np.ndarray
    counts: np.ndarray
    importance: np.ndarray | None = None
    tokens: np.ndarray | None = None
    dropped: np.ndarray | None = None
    meta: dict = field(default_factory=dict)
    scores: np.ndarray | None = None
    forces: np.ndarray | None = None


@dataclass(frozen=True)
class LogSegment:
    """A run segment: its number, first step, header (``None`` for a header-less log) and where
    it starts (file, line)."""

    segment: int | None
    start_step: int
    header: dict | None
    file: str
    line: int


@dataclass(frozen=True)
class RouterLog:
    """What :func:`read_log` returns.

    - ``path``: the path given; ``files``: the files read, in order (a rotated set, oldest
      first); ``format``: ``"jsonl"``, ``"csv"``, ``"npy"`` or ``"npz"``.
    - ``header``: the first header of the log (``None``: a header-less log); ``segments``: one
      :class:`LogSegment` per run segment.
    - ``layers``: ``{label: LayerLog}`` in order of first appearance.
    - ``warnings``: what was repaired while reading (torn lines, superseded steps), one line each.
    """

    path: str
    files: tuple[str, ...]
    format: str
    header: dict | None
    segments: tuple[LogSegment, ...]
    layers: dict[str, LayerLog]
    warnings: tuple[str, ...] = ()


# --------------------------------------------------------------------------------------------
# reading


def log_files(path) -> list[Path]:
    """The files :func:`read_log` reads for ``path``, oldest first: a log with its rotated
    backups (``log.jsonl.K`` ... ``log.jsonl.1``, ``log.jsonl``), or the one log set of a
    directory. Raises :class:`LogError` (no such file, a directory with no or several logs)."""
    path = Path(path)
    if path.is_dir():
        bases = sorted(
            {
                p.name
                for p in path.iterdir()
                if p.is_file() and p.suffix.lower() in _SUFFIXES and not p.name.startswith(".")
            }
            | {m["base"] for p in path.iterdir() if p.is_file() and (m := _ROTATED.match(p.name))}
        )
        if not bases:
            raise LogError(f"{path}: a directory with no router log (.jsonl, .csv, .npy, .npz)")
        if len(bases) > 1:
            shown = ", ".join(bases[:4]) + (", ..." if len(bases) > 4 else "")
            raise LogError(f"{path}: a directory with {len(bases)} logs ({shown}); name one")
        return log_files(path / bases[0])
    rotated = _rotated(path)
    if not path.is_file() and not rotated:
        if path.exists():
            raise LogError(f"{path}: not a regular file")
        raise LogError(f"{path}: no such file")
    return rotated + ([path] if path.is_file() else [])


def _rotated(path: Path) -> list[Path]:
    """Rotated backups of ``path`` (``path.1``, ``path.2``, ...), oldest (highest number) first."""
    if path.suffix.lower() not in (".jsonl", ".ndjson"):
        return []
    parent = path.parent if str(path.parent) else Path(".")
    if not parent.is_dir():
        return []
    found = []
    for p in parent.iterdir():
        m = _ROTATED.match(p.name)
        if m and m["base"] == path.name and p.is_file():
            found.append((int(m["n"]), p))
    return [p for _, p in sorted(found, reverse=True)]


def read_log(path) -> RouterLog:
    """Read a router log (see the module docstring) into a :class:`RouterLog`.

    ``path`` is a log file, the current file of a rotated set (the whole set is read), or a
    directory holding one log set. Raises :class:`LogError` with a one-line message."""
    files = log_files(path)
    suffix = _suffix(files[-1])
    try:
        if suffix in (".jsonl", ".ndjson"):
            return _read_jsonl(str(path), files)
        if len(files) != 1:
            raise LogError(f"{path}: only JSONL logs rotate")
        if suffix == ".csv":
            return _read_csv(str(path), files[0])
        if suffix in (".npy", ".npz"):
            return _read_numpy(str(path), files[0])
    except LogError:
        raise
    except (OSError, MemoryError) as e:
        raise LogError(f"{path}: cannot read: {e}") from None
    raise LogError(f"{path}: unknown format {suffix!r} (use .csv, .jsonl, .npy or .npz)")


def _suffix(p: Path) -> str:
    m = _ROTATED.match(p.name)
    return Path(m["base"]).suffix.lower() if m else p.suffix.lower()


def _text(p: Path) -> str:
    """The file as text: UTF-8 (a BOM is allowed); binary or other encodings are errors."""
    data = p.read_bytes()
    if b"\x00" in data[:65536]:
        hint = " (UTF-16 text? save it as UTF-8)" if data[:2] in (b"\xff\xfe", b"\xfe\xff") else ""
        raise LogError(f"{p}: a binary file, not a text log{hint}")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise LogError(
            f"{p}: not UTF-8 text (byte 0x{data[e.start]:02x} at offset {e.start})"
        ) from None
    return text[1:] if text.startswith("\ufeff") else text


def _count(v, where: str) -> float:
    if isinstance(v, bool) or not isinstance(v, int | float):
        raise LogError(f"{where}: not a number: {v!r}")
    x = float(v)
    if not math.isfinite(x) or x < 0:
        raise LogError(f"{where}: counts must be finite and >= 0, got {v!r}")
    if x >= MAX_COUNT:
        raise LogError(f"{where}: count {v!r} is absurd (>= {MAX_COUNT:.0e}): not a token count")
    return x


def _step(v, where: str) -> int:
    if isinstance(v, bool) or not isinstance(v, int):
        raise LogError(f"{where}: missing or not an integer")
    if not 0 <= v < _MAX_STEP:
        raise LogError(f"{where}: must be in [0, 2**53), got {v}")
    return v


class _Layer:
    """Rows of one layer while reading."""

    __slots__ = (
        "n", "steps", "counts", "imp", "sc", "fo", "tokens", "dropped", "lines", "meta", "k",
    )  # fmt: skip

    def __init__(self, n: int | None, k=None, meta=None):
        self.n, self.k, self.meta = n, k, dict(meta or {})
        self.steps, self.counts, self.imp, self.sc, self.fo = [], [], [], [], []
        self.tokens, self.dropped, self.lines = [], [], []

    def truncate(self, start: int) -> int:
        """Drop rows with step >= start (superseded by a later segment); returns how many."""
        keep = len(self.steps)
        while keep and self.steps[keep - 1] >= start:
            keep -= 1
        dropped = len(self.steps) - keep
        for lst in (
            self.steps,
            self.counts,
            self.imp,
            self.sc,
            self.fo,
            self.tokens,
            self.dropped,
            self.lines,
        ):
            del lst[keep:]
        return dropped


def _check_header(obj: dict, where: str) -> dict:
    v = obj.get("moebif_log")
    if isinstance(v, bool) or not isinstance(v, int) or v < 1:
        raise LogError(f"{where}, key moebif_log: not a log format number: {v!r}")
    if v > LOG_FORMAT:
        raise LogError(
            f"{where}, key moebif_log: format {v} is newer than this moebif reads "
            f"({LOG_FORMAT}); upgrade moebif"
        )
    seg = obj.get("segment", 0)
    if isinstance(seg, bool) or not isinstance(seg, int) or seg < 0:
        raise LogError(f"{where}, key segment: need an integer >= 0, got {seg!r}")
    _step(obj.get("start_step", 0), f"{where}, key start_step")
    layers = obj.get("layers")
    if not isinstance(layers, dict):
        raise LogError(f"{where}, key layers: need an object {{label: {{n_experts, top_k}}}}")
    for label, spec in layers.items():
        at = f"{where}, key layers[{label!r}]"
        _label(label, at)
        if not isinstance(spec, dict):
            raise LogError(f"{at}: need an object with n_experts and top_k")
        n = spec.get("n_experts")
        if isinstance(n, bool) or not isinstance(n, int) or n < 2:
            raise LogError(f"{at}.n_experts: need an integer >= 2, got {n!r}")
        k = spec.get("top_k")
        if k is not None and (isinstance(k, bool) or not isinstance(k, int) or not 1 <= k < n):
            raise LogError(f"{at}.top_k: need an integer in 1..{n - 1} or null, got {k!r}")
        for key in ("importance", "scores"):
            v = spec.get(key, False)
            if not isinstance(v, bool):
                raise LogError(f"{at}.{key}: need true or false, got {v!r}")
    return obj


def _read_jsonl(given: str, files: list[Path]) -> RouterLog:
    layers: dict[str, _Layer] = {}
    segments: list[LogSegment] = []
    warnings: list[str] = []
    header0 = None
    cur_seg = None  # segment number of the current header (None: header-less)
    declared: dict[str, dict] = {}  # label -> header spec of the current segment
    last_step = -1  # last data step of the current segment
    for f in files:
        lines = _text(f).split("\n")
        # a line without its newline at the end of a file that continues is torn (a kill)
        for i, line in enumerate(lines, start=1):
            if not line.strip():
                continue
            where = f"{f}: line {i}"
            try:
                obj = json.loads(line)
            except (json.JSONDecodeError, RecursionError) as e:
                nxt = next((x for x in lines[i:] if x.strip()), None)
                torn = nxt is None or nxt.lstrip().startswith('{"moebif_log"')
                if torn and (nxt is not None or i == len(lines)):
                    warnings.append(f"{where}: torn line skipped (a writer killed mid-line)")
                    continue
                msg = getattr(e, "msg", "too deeply nested")
                col = getattr(e, "colno", 1)
                raise LogError(f"{where}, column {col}: invalid JSON: {msg}") from None
            if not isinstance(obj, dict):
                raise LogError(f"{where}: expected an object")
            if "moebif_log" in obj:
                h = _check_header(obj, where)
                seg, start = h.get("segment", 0), h.get("start_step", 0)
                if header0 is None:
                    header0 = h
                cont = cur_seg is not None and seg == cur_seg and start > last_step
                if not cont:
                    gone = sum(lay.truncate(start) for lay in layers.values())
                    if gone:
                        warnings.append(
                            f"{where}: segment {seg} resumes at step {start}: {gone} lines "
                            "logged after the checkpoint it resumes from were replaced"
                        )
                    segments.append(LogSegment(seg, start, h, str(f), i))
                cur_seg, declared = seg, h["layers"]
                last_step = start - 1
                for label, spec in declared.items():
                    lay = layers.get(label)
                    n, k = spec["n_experts"], spec.get("top_k")
                    if lay is None:
                        meta = {kk: vv for kk, vv in spec.items() if kk not in ("n_experts",)}
                        layers[label] = _Layer(n, k, meta)
                    elif lay.n is not None and lay.n != n:
                        raise LogError(
                            f"{where}, key layers[{label!r}].n_experts: {n}, earlier lines "
                            f"had {lay.n}"
                        )
                    else:
                        lay.n, lay.k = n, k if k is not None else lay.k
                        lay.meta.update({kk: vv for kk, vv in spec.items() if kk != "n_experts"})
                continue
            if not segments:
                segments.append(LogSegment(None, 0, None, str(f), i))
            step = _step(obj.get("step"), f"{where}, key step")
            label = _label(obj.get("layer", "0"), f"{where}, key layer")
            if cur_seg is not None and label not in declared:
                raise LogError(f"{where}, key layer: {label!r} is not in the segment's header")
            c = obj.get("counts")
            if not isinstance(c, list) or len(c) < 2:
                raise LogError(f"{where}, key counts: need a list of >= 2 numbers")
            lay = layers.get(label)
            if lay is None:
                lay = layers[label] = _Layer(None)
            if lay.n is None:
                lay.n = len(c)
            elif len(c) != lay.n:
                raise LogError(
                    f"{where}, key counts: {len(c)} experts, layer {label!r} has {lay.n}"
                )
            vals = [_count(v, f"{where}, key counts[{j}]") for j, v in enumerate(c)]
            if lay.steps and step <= lay.steps[-1]:
                raise LogError(
                    f"{where}, key step: steps of layer {label!r} must increase "
                    f"({step} after {lay.steps[-1]})"
                )
            imp = obj.get("importance")
            if imp is not None:
                imp = _importance(imp, lay.n, f"{where}, key importance")
            sc = obj.get("scores")
            if sc is not None:
                sc = _scores(sc, lay.n, f"{where}, key scores")
            fo = obj.get("forces")
            if fo is not None:
                fo = _forces(fo, f"{where}, key forces")
            lay.steps.append(step)
            lay.counts.append(vals)
            lay.imp.append(imp)
            lay.sc.append(sc)
            lay.fo.append(fo)
            lay.tokens.append(_opt(obj.get("tokens"), f"{where}, key tokens"))
            lay.dropped.append(_opt(obj.get("dropped"), f"{where}, key dropped"))
            lay.lines.append(i)
            last_step = max(last_step, step)
    return _finish(given, files, "jsonl", header0, segments, layers, warnings)


def _label(v, where: str) -> str:
    if isinstance(v, bool) or not isinstance(v, str | int):
        raise LogError(f"{where}: need a string, got {type(v).__name__}")
    v = str(v)
    if not v or len(v) > 500 or not v.isprintable():
        raise LogError(f"{where}: need a printable name of 1-500 characters, got {v[:40]!r}")
    return v


def _importance(v, n: int, where: str) -> list[float]:
    if not isinstance(v, list) or len(v) != n:
        raise LogError(f"{where}: need a list of {n} numbers")
    out = []
    for j, x in enumerate(v):
        if isinstance(x, bool) or not isinstance(x, int | float):
            raise LogError(f"{where}[{j}]: not a number: {x!r}")
        if not (math.isfinite(x) and 0.0 <= x <= 1.0):
            raise LogError(f"{where}[{j}]: must be in [0, 1], got {x!r}")
        out.append(float(x))
    s = math.fsum(out)
    if abs(s - 1.0) > 1e-3:
        raise LogError(f"{where}: must sum to 1, sums to {s:.6g}")
    return [x / s for x in out]


MAX_LOGIT = 1e6


def _scores(v, n: int, where: str) -> list[float]:
    if not isinstance(v, list) or len(v) != n:
        raise LogError(f"{where}: need a list of {n} numbers")
    for j, x in enumerate(v):
        if isinstance(x, bool) or not isinstance(x, int | float):
            raise LogError(f"{where}[{j}]: not a number: {x!r}")
        if not (math.isfinite(x) and abs(x) < MAX_LOGIT):
            raise LogError(f"{where}[{j}]: a mean logit must be finite and below 1e6, got {x!r}")
    return [float(x) for x in v]


def _forces(v, where: str) -> list[float]:
    from .forces import FORCE_FIELDS

    if not isinstance(v, list) or len(v) != FORCE_FIELDS:
        raise LogError(f"{where}: need a list of {FORCE_FIELDS} numbers")
    for j, x in enumerate(v):
        if isinstance(x, bool) or not isinstance(x, int | float) or not math.isfinite(x):
            raise LogError(f"{where}[{j}]: need a finite number, got {x!r}")
        if abs(x) > 1e12:
            raise LogError(f"{where}[{j}]: out of range (|x| <= 1e12), got {x!r}")
    return [float(x) for x in v]


def _opt(v, where: str) -> float:
    if v is None:
        return math.nan
    return _count(v, where)


def _finish(given, files, fmt, header, segments, layers, warnings) -> RouterLog:
    out: dict[str, LayerLog] = {}
    for label, lay in layers.items():
        if not lay.steps:
            continue  # declared in a header, never logged (e.g. a router that never ran)
        imp = None
        if any(x is not None for x in lay.imp):
            if any(x is None for x in lay.imp):
                miss = lay.lines[next(j for j, x in enumerate(lay.imp) if x is None)]
                raise LogError(
                    f"{files[-1]}: line {miss}, key importance: missing while other lines of "
                    f"layer {label!r} have it"
                )
            imp = np.asarray(lay.imp, dtype=float)
        sc = None
        if any(x is not None for x in lay.sc):
            if any(x is None for x in lay.sc):
                miss = lay.lines[next(j for j, x in enumerate(lay.sc) if x is None)]
                raise LogError(
                    f"{files[-1]}: line {miss}, key scores: missing while other lines of "
                    f"layer {label!r} have it"
                )
            sc = np.asarray(lay.sc, dtype=float)
        fo = None
        if any(x is not None for x in lay.fo):
            # steps without a backward pass (or before the probe) carry no forces: zeros,
            # which the estimator skips (their count is 0)
            fo = np.array([x if x is not None else [0.0] * 5 for x in lay.fo], dtype=float)
        tokens = np.asarray(lay.tokens, dtype=float)
        dropped = np.asarray(lay.dropped, dtype=float)
        out[label] = LayerLog(
            name=label,
            n_experts=int(lay.n),
            top_k=lay.k,
            steps=np.asarray(lay.steps, dtype=np.int64),
            counts=np.asarray(lay.counts, dtype=float),
            importance=imp,
            tokens=None if np.isnan(tokens).all() else tokens,
            dropped=None if np.isnan(dropped).all() else dropped,
            meta=lay.meta,
            scores=sc,
            forces=fo,
        )
    if not out:
        raise LogError(f"{files[-1]}: no data rows")
    return RouterLog(
        path=given,
        files=tuple(str(f) for f in files),
        format=fmt,
        header=header,
        segments=tuple(segments),
        layers=out,
        warnings=tuple(warnings),
    )


def _read_csv(given: str, path: Path) -> RouterLog:
    text = _text(path)
    try:
        rows = list(csv.reader(io.StringIO(text)))
    except csv.Error as e:
        raise LogError(f"{path}: not a CSV file: {e}") from None
    if not rows:
        raise LogError(f"{path}: line 1: empty file")
    header = [h.strip() for h in rows[0]]
    if "step" not in header:
        raise LogError(f"{path}: line 1: no 'step' column in the header")
    i_step = header.index("step")
    i_layer = header.index("layer") if "layer" in header else None
    experts = [j for j, h in enumerate(header) if j not in (i_step, i_layer)]
    if len(experts) < 2:
        raise LogError(f"{path}: line 1: need >= 2 expert columns, got {len(experts)}")
    layers: dict[str, _Layer] = {}
    for lineno, rec in enumerate(rows[1:], start=2):
        if not rec or all(not x.strip() for x in rec):
            continue
        if len(rec) != len(header):
            raise LogError(f"{path}: line {lineno}: {len(rec)} fields, header has {len(header)}")
        where = f"{path}: line {lineno}"
        try:
            step = int(rec[i_step])
        except ValueError:
            raise LogError(f"{where}, column step: not an integer: {rec[i_step]!r}") from None
        step = _step(step, f"{where}, column step")
        label = "0" if i_layer is None else _label(rec[i_layer].strip(), f"{where}, column layer")
        cells = [rec[j].strip() for j in experts]
        n = len(cells)
        while n and not cells[n - 1]:
            n -= 1  # a layer with fewer experts leaves its trailing cells empty
        vals = []
        for j in range(n):
            col = header[experts[j]]
            try:
                v = float(cells[j])
            except ValueError:
                raise LogError(f"{where}, column {col}: not a number: {cells[j]!r}") from None
            vals.append(_count(v, f"{where}, column {col}"))
        if n < 2:
            raise LogError(f"{where}: need >= 2 expert counts, got {n}")
        lay = layers.setdefault(label, _Layer(n))
        if n != lay.n:
            raise LogError(f"{where}: {n} experts, layer {label!r} has {lay.n}")
        if lay.steps and step <= lay.steps[-1]:
            raise LogError(f"{where}, column step: steps of layer {label!r} must increase")
        lay.steps.append(step)
        lay.counts.append(vals)
        lay.imp.append(None)
        lay.tokens.append(math.nan)
        lay.dropped.append(math.nan)
        lay.lines.append(lineno)
    segs = (LogSegment(None, 0, None, str(path), 2),)
    return _finish(given, [path], "csv", None, segs, layers, [])


def _check_array(a, path, key):
    if not isinstance(a, np.ndarray) or a.dtype.kind not in "iuf" or a.dtype == np.float16:
        kind = getattr(a, "dtype", type(a))
        raise LogError(f"{path}: key {key}: not a numeric array ({kind})")
    if a.ndim not in (2, 3) or a.shape[-1] < 2:
        raise LogError(
            f"{path}: key {key}: need shape (S, N) or (S, L, N) with N >= 2, got {a.shape}"
        )
    a = a.astype(float)
    bad = np.argwhere(~np.isfinite(a) | (a < 0) | (a >= MAX_COUNT))
    if bad.size:
        idx = tuple(int(i) for i in bad[0])
        raise LogError(
            f"{path}: key {key}, index {idx}: counts must be finite, >= 0 and < "
            f"{MAX_COUNT:.0e}, got {a[idx]!r}"
        )
    return a if a.ndim == 3 else a[:, None, :]


def _read_numpy(given: str, path: Path) -> RouterLog:
    try:
        data = np.load(path, allow_pickle=False)
    except Exception as e:  # numpy raises many kinds on a bad file
        msg = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise LogError(f"{path}: not a readable .npy/.npz file: {msg}") from None
    if isinstance(data, np.ndarray):
        a, steps, names = _check_array(data, path, "(array)"), None, None
    else:
        with data:
            if "counts" not in data.files:
                raise LogError(f"{path}: key counts: missing (keys: {', '.join(data.files)})")
            try:
                a = _check_array(data["counts"], path, "counts")
                steps = data["steps"] if "steps" in data.files else None
                names = data["layers"] if "layers" in data.files else None
            except LogError:
                raise
            except Exception as e:
                raise LogError(f"{path}: not a readable .npz file: {e}") from None
    S, L, N = a.shape
    if steps is None:
        steps = np.arange(S, dtype=np.int64)
    else:
        steps = np.asarray(steps)
        if steps.dtype.kind not in "iu" or steps.shape != (S,):
            raise LogError(f"{path}: key steps: need {S} integers, got {steps.dtype} {steps.shape}")
        if S and (steps.min() < 0 or steps.max() >= _MAX_STEP):
            raise LogError(f"{path}: key steps: must be in [0, 2**53)")
        steps = steps.astype(np.int64)
    labels = [str(i) for i in range(L)] if names is None else [str(x) for x in np.asarray(names)]
    if len(labels) != L:
        raise LogError(f"{path}: key layers: need {L} names, got {len(labels)}")
    bad = np.nonzero(np.diff(steps) <= 0)[0]
    if bad.size:
        raise LogError(f"{path}: key steps, index {int(bad[0]) + 1}: steps must increase")
    if S == 0:
        raise LogError(f"{path}: no data rows")
    layers = {
        nm: LayerLog(name=nm, n_experts=N, top_k=None, steps=steps, counts=a[:, i, :])
        for i, nm in enumerate(labels)
    }
    fmt = path.suffix.lower().lstrip(".")
    segs = (LogSegment(None, 0, None, str(path), 0),)
    return RouterLog(given, (str(path),), fmt, None, segs, layers)


# --------------------------------------------------------------------------------------------
# writing


_FMT6 = "{:.6g}".format


_FMT9 = "{:.9g}".format


def data_line(
    step: int,
    layer: str,
    counts,
    importance=None,
    tokens=None,
    dropped=None,
    *,
    scores=None,
    forces=None,
) -> str:
    """One JSONL data line (with its newline). ``counts``: ints; ``importance``: floats summing
    to 1 (written with 6 significant digits); ``scores``: the mean router logits (9 digits: the
    feedback estimator reads small shocks on top of their mean)."""
    parts = [f'{{"step": {int(step)}, "layer": {json.dumps(layer)}, "counts": [']
    parts.append(", ".join(map(str, map(int, counts))))
    parts.append("]")
    if importance is not None:
        parts.append(', "importance": [' + ", ".join(map(_FMT6, importance)) + "]")
    if tokens is not None:
        parts.append(f', "tokens": {int(tokens)}')
    if dropped is not None:
        parts.append(f', "dropped": {int(dropped)}')
    if scores is not None:
        parts.append(', "scores": [' + ", ".join(map(_FMT9, scores)) + "]")
    if forces is not None:
        parts.append(', "forces": [' + ", ".join(map(_FMT9, forces)) + "]")
    parts.append("}\n")
    return "".join(parts)


def make_header(
    layers: dict, *, segment: int, start_step: int, model_class: str = "", run: dict | None = None
) -> dict:
    """A format-2 header: ``layers`` is ``{label: {"n_experts": N, "top_k": k, ...}}``;
    ``run``: what the monitor knows of the training (``{"optimizer": {"kind", "lr", "betas",
    "eps", "weight_decay"} or None, "aux": {"coefficient", "variant", "pooled_layers"}}``), read
    by ``moebif advise --from-log``; omitted when ``None``."""
    from .._version import __version__

    h = {
        "moebif_log": LOG_FORMAT,
        "segment": int(segment),
        "start_step": int(start_step),
        "moebif_version": __version__,
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
        "model_class": model_class,
        "layers": layers,
    }
    if run is not None:
        h["run"] = run
    return h


class LogWriter:
    """Append a format-2 JSONL log, one header per run segment, with optional rotation.

    **Arguments:**

    - ``path``: the log file (created with its folder if needed; appended to if it exists).
    - ``layers``: ``{label: {"n_experts": N, "top_k": k, "router_class": ..., "importance":
      bool, "probabilities": ..., "scores": bool}}`` (the header's ``layers``).
    - ``segment``, ``start_step``: of the header written first.
    - ``model_class``, ``run``: for the header (:func:`make_header`).
    - ``max_bytes``: rotate before a step's lines would take the file past this size (``None``:
      never); ``backups``: rotated files kept (``log.jsonl.1`` newest ... ``.K`` oldest; 0: the
      file is truncated, keeping only the current steps). Each rotated-to file starts with a
      continuation header (same segment, ``start_step`` = its first step).
    - ``fsync``: ``os.fsync`` on :meth:`flush` (checkpoints call it), so a checkpoint never
      refers to steps missing from the log after a crash.
    """

    def __init__(
        self,
        path,
        layers: dict,
        *,
        segment: int = 0,
        start_step: int = 0,
        model_class: str = "",
        max_bytes: int | None = None,
        backups: int = 3,
        fsync: bool = True,
        run: dict | None = None,
    ):
        if max_bytes is not None and int(max_bytes) < 4096:
            raise ValueError(f"log_max_bytes: need >= 4096 bytes or None, got {max_bytes}")
        if int(backups) < 0:
            raise ValueError(f"log_backups: need >= 0, got {backups}")
        self.path = Path(path)
        if self.path.is_dir():
            raise ValueError(f"log: {str(self.path)!r} is a directory, not a file")
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.layers = layers
        self.segment = int(segment)
        self.model_class = model_class
        self.run = run
        self.max_bytes = None if max_bytes is None else int(max_bytes)
        self.backups = int(backups)
        self.fsync = fsync
        self._fh = self.path.open("a", encoding="utf-8")
        self._size = self._fh.tell()
        if self._size and not self._ends_with_newline():
            self._write("\n")  # a torn last line of a killed run stays on its own line
        self._header(int(start_step))

    def _ends_with_newline(self) -> bool:
        with self.path.open("rb") as fh:
            fh.seek(-1, os.SEEK_END)
            return fh.read(1) == b"\n"

    def _write(self, text: str) -> None:
        self._fh.write(text)
        self._size += len(text.encode("utf-8")) if not text.isascii() else len(text)

    def _header(self, start_step: int) -> None:
        h = make_header(
            self.layers,
            segment=self.segment,
            start_step=start_step,
            model_class=self.model_class,
            run=self.run,
        )
        self._write(json.dumps(h) + "\n")

    def write_step(self, step: int, lines: list[str]) -> None:
        """Append the lines of one step (from :func:`data_line`), rotating first if they would
        take the file past ``max_bytes``."""
        text = "".join(lines)
        if self.max_bytes is not None and self._size + len(text) > self.max_bytes:
            self._rotate(step)
        self._write(text)
        self._fh.flush()  # readable while the run goes on (fsync only in flush())

    def _rotate(self, step: int) -> None:
        self._fh.close()
        if self.backups == 0:
            self.path.unlink(missing_ok=True)
        else:
            oldest = self.path.with_name(f"{self.path.name}.{self.backups}")
            oldest.unlink(missing_ok=True)
            for i in range(self.backups - 1, 0, -1):
                src = self.path.with_name(f"{self.path.name}.{i}")
                if src.exists():
                    os.replace(src, self.path.with_name(f"{self.path.name}.{i + 1}"))
            os.replace(self.path, self.path.with_name(f"{self.path.name}.1"))
        self._fh = self.path.open("a", encoding="utf-8")
        self._size = 0
        self._header(step)

    def flush(self) -> None:
        """Flush to the OS and, with ``fsync``, to disk."""
        self._fh.flush()
        if self.fsync:
            os.fsync(self._fh.fileno())

    def close(self) -> None:
        if not self._fh.closed:
            self._fh.flush()
            self._fh.close()


def write_log(
    path,
    steps,
    counts_by_layer: dict,
    *,
    importance: dict | None = None,
    scores: dict | None = None,
    top_k: int | dict | None = None,
    model_class: str = "",
) -> None:
    """Write ``{layer: counts (S, N)}`` at ``steps`` (S,) as CSV, JSONL or NPZ (by suffix),
    atomically. JSONL gets a format-2 header (``top_k``: one k for all layers or ``{layer: k}``;
    ``None``: unknown) and, with ``importance`` ``{layer: (S, N)}``, the importance per line
    (with ``scores`` ``{layer: (S, N)}``, the mean router logits). Layers may have different N
    (not in NPZ)."""
    from .._io import atomic_write_bytes, atomic_write_text

    path = Path(path)
    steps = np.asarray(steps, dtype=np.int64)
    suf = path.suffix.lower()
    labels = [str(k) for k in counts_by_layer]
    arrays = {str(k): np.asarray(v) for k, v in counts_by_layer.items()}
    if suf == ".npz":
        ns = {a.shape[-1] for a in arrays.values()}
        if len(ns) > 1:
            raise ValueError("counts_by_layer: layers with different N need .jsonl or .csv")
        arr = np.stack([arrays[k] for k in labels], axis=1)
        buf = io.BytesIO()
        np.savez(buf, counts=arr, steps=steps, layers=np.array(labels))
        atomic_write_bytes(path, buf.getvalue())
        return

    def num(v):
        v = float(v)
        return str(int(v)) if v.is_integer() else repr(v)

    lines = []
    if suf == ".csv":
        n = max(a.shape[-1] for a in arrays.values())
        lines.append(",".join(["step", "layer"] + [f"e{i}" for i in range(n)]))
        for i, s in enumerate(steps):
            for k in labels:
                row = [num(v) for v in arrays[k][i]]
                row += [""] * (n - len(row))
                lines.append(",".join([str(int(s)), k] + row))
        atomic_write_text(path, "\n".join(lines) + "\n")
        return
    ks = top_k if isinstance(top_k, dict) else dict.fromkeys(labels, top_k)
    imps = {} if importance is None else {str(k): np.asarray(v) for k, v in importance.items()}
    scs = {} if scores is None else {str(k): np.asarray(v) for k, v in scores.items()}
    spec = {
        k: {
            "n_experts": int(arrays[k].shape[-1]),
            "top_k": None if ks.get(k) is None else int(ks[k]),
            "router_class": "",
            "importance": k in imps,
            "probabilities": "softmax" if k in imps else None,
            "scores": k in scs,
        }
        for k in labels
    }
    text = [json.dumps(make_header(spec, segment=0, start_step=0, model_class=model_class)) + "\n"]
    for i, s in enumerate(steps):
        for k in labels:
            c = arrays[k][i]
            if np.all(np.mod(c, 1) == 0):
                vals = "[" + ", ".join(str(int(v)) for v in c) + "]"
            else:
                vals = json.dumps([float(v) for v in c])
            line = f'{{"step": {int(s)}, "layer": {json.dumps(k)}, "counts": {vals}'
            if k in imps:
                line += ', "importance": [' + ", ".join(map(repr, map(float, imps[k][i]))) + "]"
            if k in scs:
                line += ', "scores": [' + ", ".join(map(repr, map(float, scs[k][i]))) + "]"
            text.append(line + "}\n")
    atomic_write_text(path, "".join(text))
