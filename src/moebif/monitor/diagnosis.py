"""One diagnose pipeline: a router log in, a :class:`Diagnosis` out. ``moebif diagnose`` prints
and saves it, the explorer draws it; both call :func:`diagnose`, so they show the same numbers
(the same window, top-k, threshold, and the same inputs: counts, soft importance, mean logits
and force sums, whichever the log recorded).

    from moebif.monitor import diagnose
    d = diagnose("router_log.jsonl")            # the monitor's own (online) window
    for layer in d.layers:
        print(layer.name, layer.summary["regime"], layer.monitor.fits[-1].kappa)
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace

import numpy as np

from .logs import LayerLog, LogError, RouterLog, read_log
from .metrics import load_fractions
from .monitor import LayerMonitor
from .window import auto_window

__all__ = ["MIN_STEPS", "DiagnoseError", "Diagnosis", "LayerDiagnosis", "diagnose"]

MIN_STEPS = 64  # a layer needs this many logged steps (with routed tokens) to be diagnosed
WINDOW_RULES = ("online", "auto")


class DiagnoseError(ValueError):
    """A log or an option :func:`diagnose` cannot use: ``argument`` names it (``"LOG"``,
    ``"--window"``, ``"--top-k"``, ``"--threshold"``: the CLI's names), the message says why
    in one line."""

    def __init__(self, argument: str, message: str):
        super().__init__(message)
        self.argument = argument
        self.message = message


@dataclass
class LayerDiagnosis:
    """One layer: ``name``, ``steps`` (the log's step numbers of the rows fed, in order: the
    monitor's step ``s`` is ``steps[s - 1]``), ``loads`` (per step), where ``top_k`` came from
    (``header``, ``--top-k`` or ``default``), the :class:`LayerMonitor` that ran on it, and its
    ``summary`` (:meth:`LayerMonitor.summary` plus the diagnose keys: window rule, what the log
    recorded, the forecast history, the dropped fraction)."""

    name: str
    steps: np.ndarray
    loads: np.ndarray
    top_k_from: str
    monitor: LayerMonitor
    summary: dict

    def log_step(self, step: int) -> int:
        """The log's step number of the monitor's step ``step`` (1-based rows fed)."""
        return int(self.steps[min(max(int(step), 1), len(self.steps)) - 1])


@dataclass
class Diagnosis:
    """What :func:`diagnose` found: the ``layers`` diagnosed, the ``warnings`` (layers or steps
    left out, assumptions), the ``log`` read (its files and segments) and the ``options`` it
    ran with. :meth:`to_dict` is the JSON ``moebif diagnose`` writes."""

    log: str
    log_files: list[str]
    segments: list[dict]
    warnings: list[str]
    options: dict
    layers: list[LayerDiagnosis] = field(default_factory=list)

    def to_dict(self) -> dict:
        return {
            "log": self.log,
            "log_files": list(self.log_files),
            "segments": list(self.segments),
            "warnings": list(self.warnings),
            "options": dict(self.options),
            "layers": [x.summary for x in self.layers],
        }


def check_window(window) -> str:
    """``window`` as diagnose takes it: ``"online"``, ``"auto"`` or a number of steps >= 32
    (as a string); :class:`DiagnoseError` naming ``--window`` otherwise."""
    if isinstance(window, str) and window in WINDOW_RULES:
        return window
    try:
        w = int(window)
        if isinstance(window, float) and w != window:
            raise ValueError
    except (TypeError, ValueError):
        raise DiagnoseError(
            "--window", f"must be an integer, 'online' or 'auto', got {window!r}"
        ) from None
    if w < 32:
        raise DiagnoseError("--window", f"must be >= 32 steps, got {w}")
    return str(w)


def diagnose(
    log,
    *,
    window="online",
    top_k: int | None = None,
    threshold: float | None = None,
    layers=None,
) -> Diagnosis:
    """Run the collapse monitor on every layer of a router log.

    **Arguments:**

    - ``log``: a path :func:`~moebif.monitor.read_log` reads, or a :class:`RouterLog`.
    - ``window``: ``"online"`` (the monitor's own automatic window, as
      :class:`~moebif.monitor.hooks.RouterMonitor` uses during training: the same alarms),
      ``"auto"`` (chosen from the whole log, :func:`~moebif.monitor.window.auto_window`), or a
      number of steps (>= 32; at most the layer's length).
    - ``top_k``: experts per token; must agree with the log's header where it has one; default
      the header's, else 1 (with a warning).
    - ``threshold``: the ``approaching-threshold`` level of kappa_hat (default: the
      monitor's, 0.82).
    - ``layers``: names of the layers to diagnose (default: all).

    Every layer is fed everything its log recorded: counts, soft importance, mean logits (the
    feedback estimator) and force sums. Steps that routed nothing are left out (a warning);
    layers shorter than :data:`MIN_STEPS` are left out while another is usable.

    Raises :class:`DiagnoseError` (one line, naming the argument) where the log or an option
    cannot be used."""
    window = check_window(window)
    if top_k is not None and top_k < 1:
        raise DiagnoseError("--top-k", f"must be >= 1, got {top_k}")
    if threshold is not None and (not math.isfinite(threshold) or not 0.0 < threshold < 1.0):
        raise DiagnoseError("--threshold", f"must be in (0, 1), got {threshold}")
    if isinstance(log, RouterLog):
        rlog, source = log, str(log.path)
    else:
        source = str(log)
        try:
            rlog = read_log(log)
        except LogError as e:
            raise DiagnoseError("LOG", str(e)) from None
    warnings = list(rlog.warnings)
    picked = rlog.layers.values()
    if layers is not None:
        missing = [x for x in layers if x not in rlog.layers]
        if missing:
            raise DiagnoseError("LOG", f"layer {missing[0]!r} is not in the log")
        picked = [rlog.layers[x] for x in layers]
    out = Diagnosis(
        log=source,
        log_files=list(rlog.files),
        segments=[{"segment": g.segment, "start_step": g.start_step} for g in rlog.segments],
        warnings=warnings,
        options={"window": window, "top_k": top_k, "threshold": threshold},
    )
    for lay, k, k_from in _usable_layers(picked, top_k, warnings):
        out.layers.append(_diagnose_layer(lay, k, k_from, window, threshold))
    return out


def _diagnose_layer(lay: LayerLog, k: int, k_from: str, window: str, threshold) -> LayerDiagnosis:
    name, counts, n = lay.name, lay.counts, lay.n_experts
    rec = None
    if window == "online":
        w, eg = None, None
    elif window == "auto":
        w, eg, rec = auto_window(counts, n, k)
    else:
        w, eg = min(int(window), counts.shape[0]), None
    # the library's tested rule unless the user overrides its level
    rule = {} if threshold is None else {"threshold": threshold}
    mon = LayerMonitor(n, top_k=k, window=w, name=name, eta_gamma=eg, history=None, **rule)
    # the mean router logits (log v2 "scores"; absent in older logs) feed the feedback
    # estimator with the soft importance
    mon.update_many(counts, lay.importance, lay.scores, lay.forces)
    summ = mon.summary()
    summ["window_auto"] = window == "auto"
    summ["window_rule"] = window if window in WINDOW_RULES else "fixed"
    summ["window_recommended"] = rec
    summ["top_k_from"] = k_from
    summ["importance_recorded"] = lay.importance is not None
    summ["scores_recorded"] = lay.scores is not None
    summ["forces_recorded"] = lay.forces is not None
    summ["forecast_history"] = mon.forecast_history()
    if lay.dropped is not None and lay.tokens is not None:
        routed = float(np.nansum(counts.sum(axis=1) + lay.dropped))
        summ["dropped_fraction"] = float(np.nansum(lay.dropped)) / routed if routed else 0.0
    return LayerDiagnosis(
        name=name,
        steps=np.asarray(lay.steps),
        loads=load_fractions(counts),
        top_k_from=k_from,
        monitor=mon,
        summary=summ,
    )


def _usable_layers(layers, top_k: int | None, warnings: list[str]) -> list:
    """``[(LayerLog, k, where k came from)]`` of the layers to diagnose: N and k from the
    header, ``top_k`` checked against it; steps that routed nothing left out (with a
    warning); layers too short to fit left out while another is usable."""
    out, short, empty = [], [], []
    assumed = []
    for lay in layers:
        n = lay.n_experts
        if lay.top_k is not None:
            if top_k is not None and top_k != lay.top_k:
                raise DiagnoseError(
                    "--top-k",
                    f"{top_k} conflicts with the log header: layer {lay.name!r} was "
                    f"recorded with top_k = {lay.top_k}",
                )
            k, k_from = lay.top_k, "header"
        elif top_k is not None:
            k, k_from = top_k, "--top-k"
        else:
            k, k_from = 1, "default"
            assumed.append(lay.name)
        if k >= n:
            raise DiagnoseError("--top-k", f"must be < {n} experts (layer {lay.name!r}), got {k}")
        total = lay.counts.sum(axis=1)
        if not (total > 0).any():
            empty.append(lay.name)
            continue
        if not (total > 0).all():
            keep = total > 0
            warnings.append(
                f"layer {lay.name!r}: {int((~keep).sum())} steps with no routed tokens left out"
            )
            lay = replace(
                lay,
                steps=lay.steps[keep],
                counts=lay.counts[keep],
                importance=None if lay.importance is None else lay.importance[keep],
                scores=None if lay.scores is None else lay.scores[keep],
                forces=None if lay.forces is None else lay.forces[keep],
                tokens=None if lay.tokens is None else lay.tokens[keep],
                dropped=None if lay.dropped is None else lay.dropped[keep],
            )
        if lay.counts.shape[0] < MIN_STEPS:
            short.append((lay.name, lay.counts.shape[0]))
            continue
        out.append((lay, k, k_from))
    if not out:
        if short:
            name, s = short[0]
            raise DiagnoseError("LOG", f"layer {name!r}: need >= {MIN_STEPS} steps, got {s}")
        raise DiagnoseError("LOG", f"layer {empty[0]!r}: all counts are zero (nothing was routed)")
    for name in empty:
        warnings.append(f"layer {name!r}: all counts are zero (nothing was routed): left out")
    for name, s in short:
        warnings.append(f"layer {name!r}: {s} steps (< {MIN_STEPS}): left out")
    if assumed:
        warnings.append(
            f"the log has no header: top_k unknown for {len(assumed)} layer(s), assuming "
            "--top-k 1 (pass --top-k K if the router selects K experts per token)"
        )
    return out
