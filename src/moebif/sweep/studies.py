"""The study registry: what a sweep can run in one cell, with its parameters and quantities.

A study is a :class:`Study`: a name, typed parameters (:class:`~moebif.sweep.params.Param`),
recorded quantities (:class:`~moebif.sweep.params.Quantity`), cross-parameter checks, a cost
estimate (to size tasks) and the theory boundaries of its phase diagram. The simulators of
:mod:`moebif.sim` are registered here:

- ``batch_router``: :func:`moebif.simulate_batch_router` (two or N experts, top-1; sec. 8);
- ``topk_router``: :func:`moebif.simulate_topk_router` (N experts, top-k);
- ``hysteresis``: :func:`moebif.sweep_hysteresis` (two experts, slow h ramp; sec. 8.5, 8.7);
- ``feedback_hysteresis``: :func:`moebif.sweep_feedback` (N experts, slow ramp of a).

The cell functions of registered experiments are added by :mod:`moebif.sweep.experiments`
(:func:`moebif.sweep.experiments.get_study` finds either kind).

**Adding a simulator** is a subclass of :class:`Study` with ``params``, ``quantities``,
``run`` (and optionally ``check``, ``cost``, ``boundaries``), decorated with :func:`register`.
**Adding an option** to a simulator (a balancer's kind and strength, say) is one line in its
``params``: ``Param(float, 0.0, ge=0, call=True)`` is checked by the spec parser and passed on
to the simulator function as a keyword argument of the same name.

**Final loads.** The load quantities of ``batch_router`` and ``topk_router`` are the *expected*
loads at the final scores ``r``: ``softmax(r / T)`` for top-1 and ``pi(r) / k`` (inclusion
probabilities, :func:`moebif.inclusion_probabilities`) for top-k. They are free of the batch's
sampling noise and are what the mean-field theory predicts; ``final_abs_u_hat`` is the paper's
empirical ``|u_hat|`` of the last batch (Fig. 8).
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from ..params import ParameterError, RouterParams
from .params import REQUIRED, Param, Quantity

__all__ = ["STUDIES", "Study", "register"]


class Study:
    """Base of every registry entry; subclasses fill in the class attributes and ``run``."""

    #: registry key, the spec's ``study.simulator`` (``experiment:ID`` for experiment cells)
    name: str = ""
    #: one line: what a cell computes
    doc: str = ""
    params: Mapping[str, Param] = {}
    quantities: Mapping[str, Quantity] = {}
    #: single-core speed used by the default :meth:`cost`, work units a second
    speed: float = 1e7
    #: the parameters that set a cell's work, named when a cell is too costly (spec limits)
    size_params: tuple[str, ...] = ("steps",)

    def check(self, v: dict) -> None:
        """Cross-parameter checks of one cell's values ``v`` (every parameter present); raise
        :class:`~moebif.params.ParameterError` naming the parameter at fault."""

    def experts(self, v: dict) -> int:
        """Length of the ``expert`` dimension this cell fills (0: none)."""
        return int(v.get("n_experts", 0) or 0)

    def work(self, v: dict, replicas: int) -> float:
        """Work units of one cell (``cost = work / speed``); default: replica-steps."""
        return replicas * v.get("steps", 1)

    def cost(self, v: dict, replicas: int) -> float:
        """Estimated seconds of one cell on one core (used to size tasks to ~1 s)."""
        return self.work(v, replicas) / self.speed

    def run(self, v: dict, *, replicas: int, seed: int, quantities, threads) -> dict:
        """Compute one cell: a dict quantity -> array of shape ``(replicas,)``,
        ``(replicas, n_experts)`` or ``()`` as declared. ``seed`` is the cell's own seed."""
        raise NotImplementedError

    def boundaries(self, v: dict, varying=frozenset()) -> dict[str, float]:
        """Theory boundaries of the phase diagram at ``v``: label -> a residual whose zero set
        is the boundary (positive on the collapsed / bistable side). ``varying``: the parameters
        that vary across the figure (labels must not depend on them)."""
        return {}

    def theory(self, quantity: str, v: dict) -> float | None:
        """The theory's value of a per-cell ``quantity`` at ``v`` (e.g. ``2 H(a)`` for a
        hysteresis width), or ``None``."""
        return None

    def call_options(self, v: dict) -> dict:
        """The parameters marked ``call=True``, to pass on to the simulator function."""
        return {k: v[k] for k, p in self.params.items() if p.call and v.get(k) is not None}


STUDIES: dict[str, Study] = {}


def register(cls: type[Study]) -> type[Study]:
    """Class decorator: instantiate and add the study to :data:`STUDIES` under ``cls.name``."""
    STUDIES[cls.name] = cls()
    return cls


# ----------------------------------------------------------------------------------------------
# shared pieces


ROUTER_PARAMS = {
    "a": Param(float, REQUIRED, "reinforcement (positive feedback) strength", ge=0),
    "gamma": Param(float, 1.0, "forgetting rate (1 / ODE time)", gt=0),
    "T": Param(float, 1.0, "softmax temperature", gt=0),
    "h": Param(float, 0.0, "external skew b1 - b2 (expert 1 against expert 2)"),
    "n_experts": Param(int, 2, "number of experts N", ge=2),
}


def _router_params(v: dict, a: float | None = None) -> RouterParams:
    return RouterParams(
        a=v["a"] if a is None else a,
        gamma=v["gamma"],
        T=v["T"],
        h=v.get("h", 0.0),
        n_experts=v.get("n_experts", 2),
    )


def _check_eta(v: dict) -> None:
    if v["eta"] * v["gamma"] >= 2.0:
        raise ParameterError(
            "eta", f"eta * gamma must be < 2 for a bounded router, got {v['eta'] * v['gamma']:g}"
        )


def _two_experts(v: dict) -> str | None:
    return None if v.get("n_experts", 2) == 2 else "needs n_experts = 2"


LOAD_QUANTITIES = {
    "final_loads": Quantity(
        "expected load of each expert at the final scores (softmax(r/T); top-k: pi(r)/k)",
        ("replica", "expert"),
    ),
    "max_load": Quantity("largest expected final load"),
    "load_excess": Quantity("(max_load - 1/N) / (1/k - 1/N): 0 balanced, 1 fully collapsed"),
    "collapsed": Quantity("load_excess > collapse_excess", dtype="bool"),
    "final_u": Quantity("expected imbalance p1 - p2 at the final scores (tanh(y/2T), N = 2)"),
}

COLLAPSE_EXCESS = Param(
    float, 0.2, "collapse indicator: load_excess above this (N = 2: |u| > 0.2, fig08)", gt=0, lt=1
)


def _load_quantities(loads: np.ndarray, v: dict, k: int, want) -> dict:
    """The load quantities from expected loads of shape ``(replicas, N)``."""
    from ..monitor import max_load_excess

    n = loads.shape[1]
    out = {}
    mx = loads.max(axis=1)
    excess = max_load_excess(mx, n, k)
    if "final_loads" in want:
        out["final_loads"] = loads
    if "max_load" in want:
        out["max_load"] = mx
    if "load_excess" in want:
        out["load_excess"] = excess
    if "collapsed" in want:
        out["collapsed"] = excess > v["collapse_excess"]
    if "final_u" in want:
        out["final_u"] = loads[:, 0] - loads[:, 1]
    return out


def _collapse_ratio(n: int, k: int) -> float:
    """``a_SN / (gamma T)`` of the top-k router (it scales with gamma T)."""
    from ..model.thresholds import thresholds

    return thresholds(n, k).collapse


def _a_label(v: dict, varying) -> str:
    return "a − ρ" if ("rho" in varying or v.get("rho", 0.0) != 0.0) else "a"


def _router_boundaries(v: dict, k: int, varying) -> dict[str, float]:
    """Residuals of the thresholds in ``a_eff = a - rho`` (rho shifts every load equally)."""
    from ..model.topk import topk_linear_threshold
    from ..model.two_expert import hysteresis_halfwidth

    n, g, T = v.get("n_experts", 2), v["gamma"], v["T"]
    a_eff = v["a"] - v.get("rho", 0.0)
    a = _a_label(v, varying)
    if n == 2:
        c = 2.0 * g * T
        if "h" not in varying and v.get("h", 0.0) == 0.0:
            return {f"{a} = 2γT (pitchfork)": a_eff - c}
        # bistable iff |h| < H(a_eff); continued by a_eff - 2 gamma T below the threshold, so
        # that at h = 0 the zero set is the pitchfork line
        H = hysteresis_halfwidth(a_eff, g, T) if a_eff > c else a_eff - c
        return {f"|h| = H({a}) (folds)": H - abs(v.get("h", 0.0))}
    lin = "NγT" if k == 1 else "a_lin"
    return {
        f"{a} = a_SN (collapsed state exists)": a_eff - _collapse_ratio(n, k) * g * T,
        f"{a} = {lin} (uniform state unstable)": a_eff - topk_linear_threshold(n, k, g, T),
    }


# ----------------------------------------------------------------------------------------------
BALANCER_PARAMS = {
    "balancer": Param(
        str,
        "",
        "balancing schemes in the --balancer syntax (docs/balancing.md); in a sweep the gradient "
        "schemes (aux, aux-megatron, aux-olmo, aux-deepspeed, zloss, importance; sgd or adam, "
        "lr), whose final loads are those of the final scores",
    ),
    "strength": Param(
        float,
        1.0,
        "multiplier of every strength of `balancer` (an axis over it is a phase diagram)",
        ge=0,
    ),
}


def _balancer_spec(v: dict):
    """The cell's balancer (``None``: none): ``balancer`` scaled by ``strength``;
    :class:`ParameterError` naming ``balancer`` for what a sweep cannot record honestly."""
    text = v.get("balancer") or ""
    if not text.strip():
        return None
    from ..model.balancers import parse_balancers

    spec = parse_balancers(text)
    if spec.selection != "softmax" or spec.capacity > 0:
        raise ParameterError(
            "balancer",
            f"{text!r}: a sweep records the loads of the final scores, which a selection scheme "
            "(bias, quantile, sinkhorn, expert-choice, capacity, noisy, jitter) does not follow; "
            "use the gradient schemes (aux*, zloss, importance)",
        )
    spec = spec.scaled(v.get("strength", 1.0))
    return None if spec.is_null else spec


# simulators


@register
class BatchRouter(Study):
    name = "batch_router"
    doc = "batch router of sec. 8 (two or N experts, top-1): final loads after `steps` steps"
    params = {
        **ROUTER_PARAMS,
        "batch": Param(int, 512, "tokens a step B", ge=1),
        "eta": Param(float, 0.01, "step size (ODE time t = n eta)", gt=0),
        "steps": Param(int, 10_000, "router steps", ge=1),
        "rho": Param(float, 0.0, "negative load feedback (sec. 8.7)", ge=0),
        "y0": Param(float, 0.0, "initial y = r1 - r2 (N experts: r = (y0/2, -y0/2, 0, ...))"),
        "collapse_excess": COLLAPSE_EXCESS,
        **BALANCER_PARAMS,
    }
    quantities = {
        **LOAD_QUANTITIES,
        "final_abs_u_hat": Quantity("|N1 - N2| / B of the last batch (the paper's Fig. 8 |u_hat|)"),
    }
    # two experts: ~1.2e7 replica-steps/s on one core; N experts: (N - 1) binomials a step
    speed = 1.2e7

    def work(self, v, replicas):
        n = v["n_experts"]
        return replicas * v["steps"] * (1.0 if n == 2 else 2.2 * (n - 1))

    def check(self, v):
        _router_params(v)
        _check_eta(v)
        _balancer_spec(v)

    def run(self, v, *, replicas, seed, quantities, threads):
        from ..model.meanfield import softmax
        from ..sim.router import simulate_batch_router

        p = _router_params(v)
        steps = v["steps"]
        sim = simulate_batch_router(
            p,
            batch=v["batch"],
            eta=v["eta"],
            steps=steps,
            runs=replicas,
            seed=seed,
            rho=v["rho"],
            y0=v["y0"],
            record_every=steps,
            record_scores=True,
            threads=threads,
            balancer=_balancer_spec(v),
            **self.call_options(v),
        )
        last = sim.scores[:, -1]
        if p.n_experts == 2:
            u = np.tanh(last / (2.0 * p.T))
            loads = np.column_stack([0.5 * (1.0 + u), 0.5 * (1.0 - u)])
            u_hat = sim.u_hat[:, -1]
        else:
            loads = softmax(last, p.T)
            u_hat = sim.u_hat[:, -1, 0] - sim.u_hat[:, -1, 1]
        out = _load_quantities(loads, v, 1, quantities)
        if "final_u" in quantities and p.n_experts == 2:
            out["final_u"] = u  # exact, not through (1 + u)/2 - (1 - u)/2
        if "final_abs_u_hat" in quantities:
            out["final_abs_u_hat"] = np.abs(u_hat)
        return out

    def boundaries(self, v, varying=frozenset()):
        return _router_boundaries(v, 1, varying)


@register
class TopKRouter(Study):
    name = "topk_router"
    size_params = ("steps", "n_experts", "top_k")
    doc = "N-expert batch router with top-k routing: final loads, optional first-passage time"
    params = {
        **ROUTER_PARAMS,
        "n_experts": Param(int, REQUIRED, "number of experts N", ge=2),
        "top_k": Param(int, 1, "experts a token picks, 1 <= k < N", ge=1),
        "batch": Param(int, 512, "tokens a step B", ge=1),
        "eta": Param(float, 0.01, "step size (ODE time t = n eta)", gt=0),
        "steps": Param(int, 10_000, "router steps", ge=1),
        "rho": Param(float, 0.0, "negative load feedback", ge=0),
        "stop_gap": Param(
            float,
            None,
            "stop a replica when max r - mean r >= stop_gap (for hit_time)",
            gt=0,
            optional=True,
        ),
        "collapse_excess": COLLAPSE_EXCESS,
        **BALANCER_PARAMS,
    }
    quantities = {
        **LOAD_QUANTITIES,
        "hit_time": Quantity(
            "ODE time of the first passage max r - mean r >= stop_gap (NaN: none)",
            requires=lambda v: None if v.get("stop_gap") else "needs params.stop_gap",
        ),
    }
    speed = 8e6

    def work(self, v, replicas):
        n, k, b = v["n_experts"], v["top_k"], v["batch"]
        sim = replicas * v["steps"] * (n + b * (k - 1) / 4 + 1)
        # the inclusion probabilities of the final state: ~0.1 ms a replica per expert for k > 1
        return sim + (replicas * n * 1e-4 * self.speed if k > 1 else 0.0)

    def check(self, v):
        _router_params(v)
        _check_eta(v)
        if v["top_k"] >= v["n_experts"]:
            raise ParameterError("top_k", f"must be < n_experts = {v['n_experts']}")
        if _balancer_spec(v) is not None and v.get("stop_gap"):
            raise ParameterError("stop_gap", "is not supported with a balancer")

    def run(self, v, *, replicas, seed, quantities, threads):
        from ..model.inclusion import inclusion_probabilities
        from ..sim.topk_router import simulate_topk_router

        p = _router_params(v)
        k = v["top_k"]
        run = simulate_topk_router(
            p,
            batch=v["batch"],
            eta=v["eta"],
            steps=v["steps"],
            runs=replicas,
            top_k=k,
            seed=seed,
            rho=v["rho"],
            record_every=None,
            stop_gap=v["stop_gap"],
            threads=threads,
            balancer=_balancer_spec(v),
            **self.call_options(v),
        )
        out = {}
        if set(quantities) & set(LOAD_QUANTITIES):
            loads = np.array([inclusion_probabilities(r, p.T, k) / k for r in run.scores])
            out = _load_quantities(loads, v, k, quantities)
        if "hit_time" in quantities:
            out["hit_time"] = run.hit_time
        return out

    def boundaries(self, v, varying=frozenset()):
        return _router_boundaries(v, v["top_k"], varying)


@register
class Hysteresis(Study):
    name = "hysteresis"
    size_params = ("rate", "h_max", "eta")
    doc = "two-expert hysteresis loop under a slow h ramp up and down: switching points"
    params = {k: ROUTER_PARAMS[k] for k in ("a", "gamma", "T")} | {
        "rho": Param(float, 0.0, "negative load feedback (a_eff = a - rho)", ge=0),
        "batch": Param(int, 512, "tokens a step B", ge=1),
        "eta": Param(float, 0.002, "step size", gt=0),
        "rate": Param(float, 0.01, "sweep rate |dh/dt| (ODE time)", gt=0),
        "h_max": Param(
            float, None, "sweep amplitude (default: past the fold)", gt=0, optional=True
        ),
    }
    quantities = {
        "h_switch_up": Quantity("h where the replica mean of u_hat turns positive (up-leg)", ()),
        "h_switch_down": Quantity("h where it turns negative (down-leg)", ()),
        "width": Quantity("loop width h_switch_up - h_switch_down", ()),
    }

    def _h_max(self, v):
        from ..model.two_expert import hysteresis_halfwidth

        if v["h_max"] is not None:
            return v["h_max"]
        a_eff = v["a"] - v["rho"]
        H = hysteresis_halfwidth(a_eff, v["gamma"], v["T"]) if a_eff > 0 else 0.0
        return H + 0.75 * v["gamma"] * v["T"] + 4.0 * v["rate"] ** (2.0 / 3.0)

    def work(self, v, replicas):
        return replicas * 4.0 * self._h_max(v) / (v["rate"] * v["eta"])

    def check(self, v):
        RouterParams(a=v["a"], gamma=v["gamma"], T=v["T"])
        _check_eta(v)

    def run(self, v, *, replicas, seed, quantities, threads):
        from ..sim.hysteresis import sweep_hysteresis

        res = sweep_hysteresis(
            RouterParams(a=v["a"], gamma=v["gamma"], T=v["T"]),
            rate=v["rate"],
            batch=v["batch"],
            eta=v["eta"],
            runs=replicas,
            seed=seed,
            rho=v["rho"],
            h_max=v["h_max"],
            threads=threads,
            **self.call_options(v),
        )
        vals = {"h_switch_up": res.h_switch_up, "h_switch_down": res.h_switch_down}
        vals["width"] = res.width
        return {q: np.float64(vals[q]) for q in quantities}

    def boundaries(self, v, varying=frozenset()):
        a = _a_label(v, varying)
        return {f"{a} = 2γT (hysteresis appears)": v["a"] - v["rho"] - 2.0 * v["gamma"] * v["T"]}

    def theory(self, quantity, v):
        from ..model.two_expert import hysteresis_halfwidth

        a_eff = v["a"] - v["rho"]
        H = hysteresis_halfwidth(a_eff, v["gamma"], v["T"]) if a_eff > 0 else 0.0
        return {"h_switch_up": H, "h_switch_down": -H, "width": 2.0 * H}.get(quantity)


@register
class FeedbackHysteresis(Study):
    name = "feedback_hysteresis"
    size_params = ("rate", "a_high", "eta")
    doc = "N-expert top-k router under a slow ramp of a up and down: collapse / recovery points"
    params = {k: ROUTER_PARAMS[k] for k in ("gamma", "T")} | {
        "n_experts": Param(int, REQUIRED, "number of experts N", ge=2),
        "top_k": Param(int, 1, "experts a token picks", ge=1),
        "a_low": Param(float, REQUIRED, "start and end of the ramp of a", ge=0),
        "a_high": Param(float, REQUIRED, "turning point of the ramp", gt=0),
        "rate": Param(float, 0.01, "ramp rate |da/dt| (ODE time)", gt=0),
        "threshold": Param(float, REQUIRED, "max-load level that counts as collapsed", gt=0, lt=1),
        "batch": Param(int, 512, "tokens a step B", ge=1),
        "eta": Param(float, 0.02, "step size", gt=0),
        "window": Param(float, 0.01, "loads are averaged over windows where a moves this", gt=0),
    }
    quantities = {
        "a_switch_up": Quantity("a where the largest load crosses threshold upward (collapse)"),
        "a_switch_down": Quantity("a where it falls back below threshold (recovery)"),
    }
    speed = 8e6

    def work(self, v, replicas):
        n, k, b = v["n_experts"], v["top_k"], v["batch"]
        steps = 2.0 * (v["a_high"] - v["a_low"]) / (v["rate"] * v["eta"])
        return replicas * steps * (n + b * (k - 1) / 4 + 1)

    def check(self, v):
        RouterParams(a=v["a_low"], gamma=v["gamma"], T=v["T"], n_experts=v["n_experts"])
        _check_eta(v)
        if v["top_k"] >= v["n_experts"]:
            raise ParameterError("top_k", f"must be < n_experts = {v['n_experts']}")
        if v["a_high"] <= v["a_low"]:
            raise ParameterError("a_high", f"must be > a_low = {v['a_low']:g}")
        lo, hi = 1.0 / v["n_experts"], 1.0 / v["top_k"]
        if not lo < v["threshold"] < hi:
            raise ParameterError(
                "threshold", f"must lie between 1/N = {lo:g} and 1/k = {hi:g} (a load level)"
            )

    def experts(self, v):
        return 0

    def run(self, v, *, replicas, seed, quantities, threads):
        from ..sim.topk_router import sweep_feedback

        res = sweep_feedback(
            RouterParams(a=v["a_low"], gamma=v["gamma"], T=v["T"], n_experts=v["n_experts"]),
            rate=v["rate"],
            a_low=v["a_low"],
            a_high=v["a_high"],
            threshold=v["threshold"],
            top_k=v["top_k"],
            batch=v["batch"],
            eta=v["eta"],
            runs=replicas,
            seed=seed,
            window=v["window"],
            threads=threads,
            **self.call_options(v),
        )
        vals = {"a_switch_up": res.a_up, "a_switch_down": res.a_down}
        return {q: np.asarray(vals[q], dtype=float) for q in quantities}

    def theory(self, quantity, v):
        from ..model.topk import topk_linear_threshold

        n, k, g, T = v["n_experts"], v["top_k"], v["gamma"], v["T"]
        if quantity == "a_switch_up":
            return topk_linear_threshold(n, k, g, T)
        if quantity == "a_switch_down":
            return _collapse_ratio(n, k) * g * T
        return None


def describe_studies() -> str:
    """Markdown tables of every registered simulator's parameters and quantities."""
    lines = []
    for s in STUDIES.values():
        lines.append(
            f"### `{s.name}`\n\n{s.doc}\n\n| parameter | domain | meaning |\n|---|---|---|"
        )
        for k, p in s.params.items():
            lines.append(f"| `{k}` | {p.describe()} | {p.doc} |")
        lines.append("\n| quantity | dims | meaning |\n|---|---|---|")
        for k, q in s.quantities.items():
            dims = ", ".join(q.dims) or "cell"
            lines.append(f"| `{k}` | {dims} ({q.dtype}) | {q.doc} |")
        lines.append("")
    return "\n".join(lines)
