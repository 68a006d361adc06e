"""Checkpoints of the monitor: an explicit, versioned state, as Lightning callbacks keep theirs
(``state_dict()`` / ``load_state_dict()`` with a ``state_key``).

:meth:`LayerMonitor.state_dict <moebif.monitor.LayerMonitor.state_dict>` returns
``{"state_key": "moebif.LayerMonitor", "version": 2, "config": ..., "window": ..., "estimation":
..., "profile": ..., "forces": ..., "rules": {kind: rule state}, "alarms": [...]}``: named keys
in named groups (:data:`LAYOUT`), each rule's own state under its kind, and nothing else. Renaming
a private attribute does not change the keys; a change of the keys is a new version, with a
converter from the previous ones here.

Version 1 (``{"format": "moebif.LayerMonitor/1", "state": vars(monitor)}``, the release before
the split of the alarm rules) still loads: :func:`from_v1` maps its attributes to version 2. A
state of another version or kind fails with one line saying which versions this moebif reads.

Values are plain (:func:`encode` / :func:`decode`): dicts, lists, numbers, strings, with tagged
dicts for arrays, deques, tuples and the monitor's records; ``json``- and
``torch.load(weights_only=True)``-safe.
"""

from __future__ import annotations

from collections import deque
from dataclasses import asdict
from enum import Enum

import numpy as np

from .estimation import Refit
from .kinds import Alarm, AlarmKind
from .profile import PROFILE_RULES
from .whittle import WhittleFit

__all__ = ["LAYER_STATE_KEY", "LAYER_STATE_VERSION", "LAYOUT", "decode", "encode", "from_v1"]

LAYER_STATE_KEY = "moebif.LayerMonitor"
LAYER_STATE_VERSION = 2
V1_FORMAT = "moebif.LayerMonitor/1"

# group -> {state key: attribute of LayerMonitor}
LAYOUT: dict[str, dict[str, str]] = {
    "config": {
        k: k
        for k in (
            "n_experts",
            "top_k",
            "window",
            "block",
            "refit",
            "threshold",
            "lower",
            "approach_refits",
            "consecutive",
            "min_units",
            "excursion",
            "collapsed",
            "commit",
            "dwell",
            "warmup",
            "dead_share",
            "frozen_reference",
            "capacity",
            "eta_gamma",
            "max_lag",
            "max_window",
            "force_segment",
            "force_segments",
            "horizon",
            "forecast_points",
            "refit_lag",
            "background",
            "name",
            "history",
            "kappa_sn",
        )
    },  # fmt: skip
    "window": {
        "auto": "_auto",
        "cap_blocks": "_cap_blocks",
        "cap": "_cap",
        "user_refit": "_user_refit",
        "user_dwell": "_user_dwell",
        "dwell_blocks": "_nd",
        "refit_lag_steps": "_lag",
        "block_means": "_buf",
        "blocks": "_nblocks",
        "current_block": "_blk",
        "in_block": "_in_block",
        "step": "step",
        "since_refit": "_since_refit",
    },
    "estimation": {
        "eta_gamma_hat": "_eg",
        "eta_gamma_known": "_eg_known",
        "had_resolved": "_had_resolved",
        "feedback": "_feedback",
        "modes": "_modes",
        "pending": "_pending",
        "modes_request": "_modes_request",
        "collapse_cache": "_collapse_cache",
        "fits": "fits",
    },
    "profile": {
        "filtered": "_ema",
        "reference": "_ref",
        "reference_excess": "_ref_ex",
        "frozen": "_frozen",
        "drift": "_drift",
        "noise2": "_noise2",
        "noise_n": "_noise_n",
        "recent": "_recent",
        "excursion_step": "_excursion_step",
        "block_record": "block_record",
    },
    "forces": {"stats": "_fstats", "forecaster": "_forecaster", "forecasts": "forecasts"},
}

# version 1 kept the rules' state in the monitor: attribute -> (rule kind, rule state key)
_V1_RULES = {
    "_above": (AlarmKind.APPROACHING, "above"),
    "_f_above": (AlarmKind.APPROACHING, "forecast_above"),
    "_meta": (AlarmKind.METASTABLE, "count"),
    "_d_s": (AlarmKind.METASTABLE, "d_s"),
    "_d_c": (AlarmKind.METASTABLE, "d_c"),
    "_d_commit": (AlarmKind.METASTABLE, "d_commit"),
    "_dead_rule": (AlarmKind.DEAD_EXPERTS, "judge"),
    "_dead_now": (AlarmKind.DEAD_EXPERTS, "now"),
    "_calm": (AlarmKind.RECOVERED, "calm"),
    "_since_alarm": (AlarmKind.RECOVERED, "since_alarm"),
    "_ref_pre": (AlarmKind.RECOVERED, "ref_pre"),
}


def from_v1(state: dict) -> dict:
    """A version-1 LayerMonitor state (``vars(monitor)`` of the release before the split) as a
    version-2 one."""
    values = state["state"]
    if not isinstance(values, dict) or "__dict__" not in values:
        raise ValueError("state: a LayerMonitor/1 state_dict without its values")
    v1 = {decode(k): v for k, v in values["__dict__"]}
    out: dict = {"state_key": LAYER_STATE_KEY, "version": LAYER_STATE_VERSION}
    for group, keys in LAYOUT.items():
        missing = [a for a in keys.values() if a not in v1]
        if missing:
            raise ValueError(f"state: a LayerMonitor/1 state_dict without {missing[0]!r}")
        out[group] = {key: v1[attr] for key, attr in keys.items()}
    flags = decode(v1["_flags"])
    rules: dict = {str(kind): {"active": bool(flags.get(str(kind), False))} for kind in AlarmKind}
    for attr, (kind, key) in _V1_RULES.items():
        rules[str(kind)][key] = v1[attr]
    out["rules"] = rules
    out["alarms"] = v1["alarms"]
    return out


def encode(x):
    """``x`` as plain values (tagged dicts for arrays, deques, tuples and the monitor's records):
    safe for ``json`` and ``torch.load(weights_only=True)``. Enum members become their strings."""
    if isinstance(x, Enum):
        return x.value
    if isinstance(x, np.ndarray):
        return {"__ndarray__": x.tolist(), "dtype": str(x.dtype), "shape": list(x.shape)}
    if isinstance(x, np.generic):
        return x.item()
    if isinstance(x, deque):
        return {"__deque__": [encode(v) for v in x], "maxlen": x.maxlen}
    if isinstance(x, tuple):
        return {"__tuple__": [encode(v) for v in x]}
    if isinstance(x, list):
        return [encode(v) for v in x]
    if isinstance(x, dict):
        return {"__dict__": [[encode(k), encode(v)] for k, v in x.items()]}
    if isinstance(x, Alarm):
        return {"__alarm__": {k: encode(v) for k, v in x.to_dict().items()}}
    if isinstance(x, WhittleFit):
        return {"__whittle__": {k: encode(v) for k, v in asdict(x).items()}}
    if isinstance(x, Refit):
        return {"__refit__": {k: encode(getattr(x, k)) for k in Refit.__slots__}}
    if type(x).__name__ in PROFILE_RULES and isinstance(x, PROFILE_RULES[type(x).__name__]):
        return {"__rule__": type(x).__name__, "state": {k: encode(v) for k, v in vars(x).items()}}
    from .feedback import FeedbackFit, FeedbackStats
    from .forces import ForceEstimate, ForceStats, Forecast, ForecastState

    if isinstance(x, ForceStats):
        return {"__forcestats__": x.state_dict()}
    if isinstance(x, Forecast):
        return {"__forecast__": x.state_dict()}
    if isinstance(x, ForceEstimate):
        return {"__forceestimate__": {k: encode(v) for k, v in asdict(x).items()}}
    if isinstance(x, ForecastState):
        return {"__forecaststate__": {k: encode(v) for k, v in asdict(x).items()}}

    if isinstance(x, FeedbackFit):
        return {"__feedbackfit__": {k: encode(v) for k, v in asdict(x).items()}}
    if isinstance(x, FeedbackStats):
        return {"__feedbackstats__": {k: encode(v) for k, v in vars(x).items()}}
    return x


def decode(x):
    """The inverse of :func:`encode`."""
    if isinstance(x, list):
        return [decode(v) for v in x]
    if not isinstance(x, dict):
        return x
    if "__ndarray__" in x:
        return np.array(x["__ndarray__"], dtype=x["dtype"]).reshape(x["shape"])
    if "__deque__" in x:
        return deque((decode(v) for v in x["__deque__"]), maxlen=x["maxlen"])
    if "__tuple__" in x:
        return tuple(decode(v) for v in x["__tuple__"])
    if "__dict__" in x:
        return {decode(k): decode(v) for k, v in x["__dict__"]}
    if "__alarm__" in x:
        return Alarm(**x["__alarm__"])
    if "__whittle__" in x:
        return WhittleFit(**{k: decode(v) for k, v in x["__whittle__"].items()})
    if "__rule__" in x:
        rule = PROFILE_RULES[x["__rule__"]].__new__(PROFILE_RULES[x["__rule__"]])
        vars(rule).update({k: decode(v) for k, v in x["state"].items()})
        return rule
    if "__refit__" in x:
        r = Refit.__new__(Refit)
        for k, v in x["__refit__"].items():
            setattr(r, k, decode(v))
        return r
    from .feedback import FeedbackFit, FeedbackStats
    from .forces import ForceEstimate, ForceStats, Forecast, ForecastState

    if "__forcestats__" in x:
        return ForceStats.from_state(x["__forcestats__"])
    if "__forecast__" in x:
        return Forecast.from_state(x["__forecast__"])
    if "__forceestimate__" in x:
        return ForceEstimate(**{k: decode(v) for k, v in x["__forceestimate__"].items()})
    if "__forecaststate__" in x:
        return ForecastState(**{k: decode(v) for k, v in x["__forecaststate__"].items()})
    if "__feedbackfit__" in x:
        return FeedbackFit(**{k: decode(v) for k, v in x["__feedbackfit__"].items()})
    if "__feedbackstats__" in x:
        st = FeedbackStats.__new__(FeedbackStats)
        st._unfolded = 0  # states saved before the batched averages
        vars(st).update({k: decode(v) for k, v in x["__feedbackstats__"].items()})
        return st
    return x
