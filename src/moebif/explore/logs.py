"""Monitor logs for the explorer's training view: the kappa_hat path of each layer, its alarms,
and the regime lines of its (N, k). One adapter, :func:`read_monitor_log`, reads every accepted
input, so a change of the log format (a header line with N and k is coming) is made here only.

Accepted inputs:

- the JSON written by ``moebif diagnose`` (``OUT/diagnose.json``, or what ``--json`` prints): the
  alarms and the last estimate of every layer. The kappa_hat path is re-computed by
  :func:`moebif.monitor.diagnose`, the function ``moebif diagnose`` runs, with the options it
  recorded (window rule, top-k, threshold) on the router log named in the JSON, when that file
  can still be read (relative names are tried against the working folder and the JSON's folder
  and its parent): the same inputs (counts, importance, logits, forces) and the same numbers.
  Otherwise only the last estimate is shown, and the view says why;
- a router log readable by :func:`moebif.monitor.read_log` (``.csv``, ``.jsonl``, ``.npy``,
  ``.npz``): :func:`moebif.monitor.diagnose` is run on every layer with ``top_k`` (where the
  log has no header; default 1) and a window of ``window`` steps (default: an eighth of the
  log, at least 64 steps; ``"online"``: the monitor's own, as diagnose's default).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path

from ..monitor import DiagnoseError, LogError, diagnose, read_log
from ..monitor.estimation import collapse_ratio
from ..monitor.kinds import UNUSED_REGIMES

__all__ = ["MonitorLayer", "MonitorLog", "read_monitor_log"]

# fits whose regime says the alarms do not use them (named once, in moebif.monitor.kinds)
UNUSED = UNUSED_REGIMES


@dataclass
class MonitorLayer:
    """One layer: the fits (``step`` in training steps, ``kappa`` with its 95% interval
    ``kappa_lo``/``kappa_hi`` (None where not finite), ``regime`` and ``used``), the alarms
    (``step`` in training steps), ``kappa_sn`` (1 for N = 2) and a ``note`` for the page."""

    name: str
    n_experts: int
    top_k: int
    kappa_sn: float
    window: int | None
    fits: list[dict] = field(default_factory=list)
    alarms: list[dict] = field(default_factory=list)
    last_estimate: dict | None = None
    regime: str | None = None
    note: str = ""

    def to_dict(self) -> dict:
        return {
            "name": self.name,
            "n_experts": self.n_experts,
            "top_k": self.top_k,
            "kappa_sn": self.kappa_sn,
            "window": self.window,
            "fits": self.fits,
            "alarms": self.alarms,
            "last_estimate": self.last_estimate,
            "regime": self.regime,
            "note": self.note,
        }


@dataclass
class MonitorLog:
    """What the training view shows: ``source`` (the file), ``kind`` (``diagnose`` or
    ``router-log``) and the layers."""

    source: str
    kind: str
    layers: list[MonitorLayer]

    def to_dict(self) -> dict:
        return {
            "source": self.source,
            "kind": self.kind,
            "layers": [x.to_dict() for x in self.layers],
        }


def _finite(x):
    return float(x) if x is not None and math.isfinite(x) else None


def _diagnosed(source, raw, name, *, top_k, window, threshold=None) -> MonitorLayer:
    """Layer ``name`` of the router log ``raw`` through :func:`moebif.monitor.diagnose` (the
    pipeline ``moebif diagnose`` runs: the same inputs, window, top-k and threshold)."""
    lay = raw.layers[name]
    k = lay.top_k
    if k is None:
        k = top_k
        n = lay.n_experts
        if not 1 <= k < n:
            raise LogError(f"{source}: layer {name!r}: top_k must be in 1..{n - 1} for {n} "
                           f"experts, got {k}")  # fmt: skip
    try:
        d = diagnose(raw, window=window, top_k=k, threshold=threshold, layers=[name])
    except DiagnoseError as e:
        raise LogError(f"{source}: {e.message}") from None
    x = d.layers[0]
    mon = x.monitor
    fits = [
        {
            "step": x.log_step(f.step),
            "kappa": _finite(f.kappa),
            "kappa_lo": _finite(f.kappa_lo),
            "kappa_hi": _finite(f.kappa_hi),
            "regime": f.regime,
            "used": f.regime not in UNUSED,
        }
        for f in mon.fits
    ]
    return MonitorLayer(
        name=str(name),
        n_experts=lay.n_experts,
        top_k=mon.top_k,
        kappa_sn=collapse_ratio(lay.n_experts, mon.top_k),
        window=mon.window,
        fits=fits,
        alarms=[{**a.to_dict(), "step": x.log_step(a.step)} for a in mon.alarms],
        last_estimate=mon.fits[-1].to_dict() if mon.fits else None,
        regime=str(mon.fits[-1].regime) if mon.fits else None,
    )


def _find_log(name: str, json_path: Path) -> Path | None:
    p = Path(name)
    tries = [p] if p.is_absolute() else [p, json_path.parent / p, json_path.parent.parent / p]
    return next((t for t in tries if t.is_file()), None)


def _diagnose_layers(obj: dict, path: Path, follow_log: bool = True) -> list[MonitorLayer]:
    layers = obj.get("layers")
    if not isinstance(layers, list) or not layers:
        raise LogError(f"{path}: key layers: need a non-empty list (not a diagnose JSON?)")
    raw = None
    log_name = obj.get("log")
    found = None
    if follow_log and isinstance(log_name, str) and log_name:
        found = _find_log(log_name, path)
    why = ""
    if not follow_log:
        # the same words whether the file exists or not: an upload must not probe the disk
        why = "the router log named in an uploaded file is not opened (use --log to re-compute)"
    elif found is not None:
        try:
            raw = read_log(found)
        except LogError as e:
            why = f"the router log could not be read again ({e})"
    else:
        why = f"the router log {log_name!r} named in it was not found"
    out = []
    for i, s in enumerate(layers):
        where = f"{path}: layers[{i}]"
        if not isinstance(s, dict):
            raise LogError(f"{where}: expected an object")
        try:
            name, n, k = str(s["layer"]), int(s["n_experts"]), int(s.get("top_k", 1))
            alarms = list(s.get("alarms", []))
            ksn = float(s.get("kappa_sn", 1.0) if s.get("kappa_sn") is not None else 1.0)
        except (KeyError, TypeError, ValueError) as e:
            raise LogError(f"{where}: missing or bad key {e}") from None
        if n < 2:
            raise LogError(f"{where}, key n_experts: must be >= 2, got {n}")
        for j, a in enumerate(alarms):
            if not isinstance(a, dict) or not isinstance(a.get("step"), int) or "kind" not in a:
                raise LogError(f"{where}, key alarms[{j}]: need an object with step and kind")
        est = s.get("estimate")
        if raw is not None and name in raw.layers:
            # diagnose's own options: those it recorded (older JSONs: its window of the layer)
            opts = obj.get("options") if isinstance(obj.get("options"), dict) else {}
            rule = s.get("window_rule")
            win = opts.get("window") or (
                rule if rule in ("online", "auto") else s.get("window") or "online"
            )
            layer = _diagnosed(
                found, raw, name, top_k=k, window=win, threshold=opts.get("threshold")
            )
            layer.note = f"kappa_hat path re-computed from {found} with diagnose's options"
        else:
            fits = []
            if isinstance(est, dict) and est.get("kappa") is not None:
                fits.append(
                    {
                        "step": int(s.get("steps", 0)),
                        "kappa": _finite(est.get("kappa")),
                        "kappa_lo": _finite(est.get("kappa_lo")),
                        "kappa_hi": _finite(est.get("kappa_hi")),
                        "regime": s.get("regime"),
                        "used": s.get("regime") not in UNUSED,
                    }
                )
            layer = MonitorLayer(
                name=name,
                n_experts=n,
                top_k=k,
                kappa_sn=ksn,
                window=s.get("window"),
                fits=fits,
                alarms=alarms,
                note="only the last estimate is shown: "
                + (why or f"layer {name!r} is not in the router log"),
            )
        layer.last_estimate = est if isinstance(est, dict) else layer.last_estimate
        layer.regime = s.get("regime", layer.regime)
        out.append(layer)
    return out


def read_monitor_log(
    path,
    *,
    top_k: int = 1,
    window: int | None = None,
    follow_log: bool = True,
    max_rows: int | None = None,
) -> MonitorLog:
    """Read a ``moebif diagnose`` JSON or a router log (see the module docstring).

    ``follow_log=False``: never open the router log a diagnose JSON names (the explorer's
    uploads: a file from a page must not make the server read, or reveal, its own files).
    ``max_rows``: refuse a router log of more logged steps (summed over its layers) before the
    monitor runs on it (its cost grows with them).

    Raises :class:`moebif.monitor.LogError` with a one-line reason naming the file (and the line,
    column or key) when it cannot be used."""
    path = Path(path)
    if not path.is_file():
        raise LogError(f"{path}: " + ("not a file" if path.exists() else "no such file"))
    if path.suffix.lower() == ".json":
        try:
            obj = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError) as e:
            raise LogError(f"{path}: cannot be read: {e}") from None
        except json.JSONDecodeError as e:
            msg = f"{path}: line {e.lineno}, column {e.colno}: invalid JSON: {e.msg}"
            raise LogError(msg) from None
        if not isinstance(obj, dict):
            raise LogError(f"{path}: expected a JSON object written by moebif diagnose")
        return MonitorLog(str(path), "diagnose", _diagnose_layers(obj, path, follow_log))
    try:
        raw = read_log(path)
    except (OSError, UnicodeDecodeError) as e:
        raise LogError(f"{path}: cannot be read: {e}") from None
    rows = sum(len(lay.steps) for lay in raw.layers.values())
    if max_rows is not None and rows > max_rows:
        raise LogError(
            f"{path}: {rows} logged steps over {len(raw.layers)} layer(s); the explorer runs the "
            f"monitor on at most {max_rows} from the page (start it with --log FILE for more)"
        )
    layers = []
    for name, lay in raw.layers.items():
        w = window
        if window != "online":  # a fixed window: the caller's, else an eighth of the log
            w = int(window) if window is not None else max(64, len(lay.steps) // 8)
            w = min(w, max(len(lay.steps), 32))
        layers.append(_diagnosed(path, raw, name, top_k=top_k, window=w))
    for layer in layers:
        layer.note = (
            f"monitor run on the router log with a window of {layer.window} steps "
            "(diagnose the log and load its JSON for diagnose's fitted window)"
        )
    return MonitorLog(str(path), "router-log", layers)
