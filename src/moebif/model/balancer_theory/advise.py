"""``advise``: for each scheme, the minimal strength that rules collapse out and its cost."""

from __future__ import annotations

import math

from ...params import ParameterError, RouterParams, check_positive
from ..balancers import BalancerSpec
from ..schemes import SCHEMES
from ..thresholds import regime, thresholds
from ..topk import topk_uniform_slope
from .bias import BiasTheory
from .control import control_advice
from .effective import effective_parameters
from .strength import STRENGTH_SCHEMES, branch_drift_max, minimal_strength, scheme_spec

__all__ = ["advise"]


def _cost_of(spec: BalancerSpec, p: RouterParams, k: int, *, rate, batch, eta) -> dict:
    """``skew_response``: load response to a small genuine skew at balance, relative to the
    bare router at ``a = 0`` (the data alone); ``dropped_fraction`` at balance. Both from the
    schemes' cost methods (:class:`moebif.model.schemes.Scheme`)."""
    n = p.n_experts
    schemes = spec.schemes
    if any(s.overrides for s in schemes):
        sr = 0.0
    else:
        eff = effective_parameters(spec, p, top_k=k, rate=rate, batch=batch, eta=eta)
        alpha_k = topk_uniform_slope(n, k) if k > 1 else 1.0 / n
        slope = alpha_k
        for s in schemes:
            slope = s.selection_slope(spec, n, k, slope)
        for s in schemes:
            slope *= s.served_slope(spec, n, k, batch)
        sr = (slope / alpha_k) * p.gamma / (-eff.contrast) if eff.contrast < 0 else math.inf
    drop = 0.0
    for s in schemes:
        d = s.dropped(spec, n, k, batch)
        if d is not None:
            drop = d
    return {"skew_response": sr if math.isfinite(sr) else None, "dropped_fraction": drop}


def advise(
    params: RouterParams,
    top_k: int = 1,
    *,
    lr: float = 1e-3,
    batch: int = 512,
    schemes=None,
) -> dict:
    """For each scheme, the minimal strength that rules out a stable collapsed state at
    ``params`` (N experts, top-k) and what it costs; JSON-ready (``moebif advise --json``).

    ``lr``: the router's step ``eta`` (ODE time advances ``lr`` a step; the gradient schemes use
    the same step, ``rate = 1``), used to turn the relay rates into per-step values; ``batch``:
    tokens a step, for the costs that depend on it; ``schemes``: the names of ``balancers`` to
    compute (default: all; ``()``: the regime and thresholds only). The ``regime`` is
    :func:`moebif.model.thresholds.regime`'s. Field definitions: ``docs/balancing.md``.
    """
    p = params
    n, k = p.n_experts, int(top_k)
    lr = check_positive("lr", lr)
    thr = thresholds(n, k, p.gamma, p.T)
    reg = regime(p, k)  # the one regime rule (two experts: with the skew h)
    out: dict = {
        "params": p.to_dict(),
        "top_k": k,
        "lr": lr,
        "batch": batch,
        "critical_a": thr.linear,
        "collapse_a": thr.collapse,
        "kappa": p.a / thr.linear,
        "regime": reg,
        "balancers": {},
    }
    bal = out["balancers"]
    want = None if schemes is None else set(schemes)
    if want is not None:
        known = (
            set(STRENGTH_SCHEMES)
            | {"bias", "adam", "control"}
            | {name for name, cls in SCHEMES.items() if cls.by_construction}
        )
        bad = sorted(want - known)
        if bad:
            raise ParameterError("schemes", f"unknown scheme {bad[0]!r}")

    def wanted(name: str) -> bool:
        return want is None or name in want

    need_rho = max(p.a - thr.collapse, 0.0)  # a_eff must fall below a_SN
    need_lin = max(p.a - thr.linear, 0.0)  # the naive rule: a_eff below a_lin
    gradient = [n_ for n_, c in STRENGTH_SCHEMES.items() if c.kind == "gradient"]
    for name in filter(wanted, gradient):
        s = minimal_strength(name, p.a, n, k, p.gamma, p.T, batch=batch)
        unit = scheme_spec(name, 1.0)
        eff1 = effective_parameters(unit, p, top_k=k, batch=batch)
        per_unit = eff1.rho_eff  # rho_eff per unit strength (exact for aux and importance)
        entry = {
            "strength": s if math.isfinite(s) else None,
            "achievable": math.isfinite(s),
            "units": "coefficient of the loss (SGD at the router's step)",
            "linear_rule": need_lin / per_unit if per_unit > 0 and name != "zloss" else None,
            "rho_rule": need_rho / per_unit if per_unit > 0 and name != "zloss" else None,
        }
        if math.isfinite(s):
            spec = scheme_spec(name, s)
            entry["effective"] = effective_parameters(spec, p, top_k=k, batch=batch).to_dict()
            entry["cost"] = _cost_of(spec, p, k, rate=1.0, batch=batch, eta=lr)
        bal[name] = entry
    if wanted("capacity"):
        cf = minimal_strength("capacity", p.a, n, k, p.gamma, p.T)
        entry = {
            "strength": cf if math.isfinite(cf) else None,
            "achievable": not math.isnan(cf),
            "units": "largest capacity factor cf (> 1) that still rules collapse out (B -> inf)",
        }
        if math.isfinite(cf):
            entry["cost"] = _cost_of(
                scheme_spec("capacity", cf), p, k, rate=1.0, batch=batch, eta=lr
            )
        bal["capacity"] = entry
    if wanted("bias") or wanted("adam"):
        phi = branch_drift_max(p.a, n, k, p.gamma, p.T)
        u_min = lr * phi / 2.0
        bt = BiasTheory(p, max(u_min, 1e-12), lr, batch, k)
        ch = bt.chattering()
        bias = {
            "strength": u_min,
            "achievable": True,
            "units": "rate u per step (score units) above which no collapsing excursion exists",
            "relay_rate_needed": phi,
            "cost": {
                "skew_response": 0.0,
                "dropped_fraction": 0.0,
                "chattering_std": ch.s_std,
                "chattering_regime": ch.regime,
            },
        }
        adam = {
            "strength": u_min,
            "achievable": True,
            "units": "Adam step lr (aux loss dominating Adam's second moment): relay 2 lr / eta",
        }
        for key, entry in (("bias", bias), ("adam", adam)):
            if wanted(key):
                bal[key] = entry
    if wanted("control"):
        bal["control"] = control_advice(p, k, eta=lr, batch=batch)
    for name, cls in SCHEMES.items():
        if not cls.by_construction or not wanted(name):
            continue
        spec = BalancerSpec(**cls().parse(name, None, {}, name))
        bal[name] = {
            "strength": 0.0,
            "achievable": True,
            "units": "balanced by construction (on/off)",
            "cost": _cost_of(spec, p, k, rate=1.0, batch=batch, eta=lr),
        }
    if wanted("noisy"):
        sn = minimal_strength("noisy", p.a, n, k, p.gamma, p.T, s_max=1e3)
        bal["noisy"] = {
            "strength": sn if math.isfinite(sn) else None,
            "achievable": math.isfinite(sn),
            "units": "std sigma of Gaussian logit noise",
        }
        if math.isfinite(sn) and sn > 0:
            bal["noisy"]["cost"] = _cost_of(
                BalancerSpec(noise=sn), p, k, rate=1.0, batch=batch, eta=lr
            )
    return out
