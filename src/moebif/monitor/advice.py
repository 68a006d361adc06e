"""Balancing advice read from a training log, in the units of the user's stack.

:func:`moebif.model.balancer_theory.advise` answers in the model's units: loss coefficients for
SGD on the scores ``r = T z`` at the router's step ``eta``, bias rates in score units per step.
No stack's coefficient maps onto those. This module answers from what a
:class:`~moebif.monitor.hooks.RouterMonitor` log measured on the real router instead:

- **The aux coefficient.** The force probe measures the critical coefficient ``alpha*`` of the
  Hugging Face loss (``router_aux_loss_coef``; :mod:`moebif.monitor.forces`): the coefficient at
  which the aux loss's restoring force on the router's logits, after the optimiser's
  normalisation, equals the language model's reinforcement. It is converted to the other
  stacks by matching the aux gradient on one layer's logits, with the stacks' normalisations of
  :func:`moebif.model.balancers.aux_normalisation` (``N / L^2`` for Hugging Face, which pools the
  ``L`` layers' tokens; ``N / k`` for Megatron's ``moe_aux_loss_coeff``, one loss a layer;
  ``N / (k L)`` for OLMo-core's ``lb_loss_weight``, divided by the layers): ``alpha_stack =
  alpha_hf * c_hf / c_stack``. The optimiser's normalisation is the same in every stack (it
  divides both forces alike), so the match is exact as long as the aux term is small in the
  second moment, as it is at any usable coefficient.
- **A safety margin.** In the model the probability of collapse jumps from 1 to 0 within +-5% of
  the minimal strength (``docs/balancing.md``), so the advice is never the knife edge:
  ``recommended = alpha*_hi + 0.05 |alpha*_hi|``, the upper end of the 95% interval plus the
  width of the jump.
- **The selection bias** (DeepSeek-V3's sign update ``b <- b - u sign(e)``): the bias must
  outrun the net drift of the logits toward collapse. With the aux loss replaced by the bias,
  that drift is the language model's: ``lr R d`` logits a step at a load deviation ``d`` (``R``
  the measured reinforcement, per unit of load deviation, in learning-rate units). Its largest
  value on the way to a collapse onto ``k`` experts (deviation ``1/k - 1/N``, the linear force
  extrapolated: an upper bound where the force saturates) gives ``u_min = lr max(R, 0) (1/k -
  1/N)`` logits a step. Where ``R <= 0`` the language model restores balance on its own and the
  bias is not needed for stability: its rate then only sets how fast a skew is absorbed and how
  much it chatters. Converted to the units the bias is added in: softmax probabilities, ``dp =
  p (1 - p) dz`` at balance (``p = 1/N``); sigmoid affinities at ``sigma(z)`` balanced at
  ``s``, ``s (1 - s)`` per logit (DeepSeek-V3's ``u = 1e-3`` is in these).

What it cannot say is listed in the result's ``limits``.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field

__all__ = ["LayerAdvice", "LogAdvice", "advise_from_log", "stack_coefficients"]

JUMP = 0.05  # relative width of the collapse-probability jump around the minimal strength
STACKS = ("hf", "megatron", "olmo")
STACK_NAMES = {
    "hf": "Hugging Face router_aux_loss_coef",
    "megatron": "Megatron-LM moe_aux_loss_coeff",
    "olmo": "OLMo-core lb_loss_weight",
}


def stack_coefficients(alpha_hf: float, n_experts: int, top_k: int, layers: int) -> dict:
    """The Hugging Face coefficient ``alpha_hf`` (pooled over ``layers`` MoE layers) as each stack
    writes the coefficient that puts the same aux gradient on one layer's logits:
    ``{"hf", "megatron", "olmo"}``."""
    from ..model.balancers import aux_normalisation

    c_hf = aux_normalisation("hf", n_experts, top_k, layers)[0]
    return {s: alpha_hf * c_hf / aux_normalisation(s, n_experts, top_k, layers)[0] for s in STACKS}


@dataclass(frozen=True)
class LayerAdvice:
    """The advice for one router (``None`` where not resolved; ``reason`` says why).

    - ``critical``: ``alpha*`` in the Hugging Face convention with its 95% interval
      (``critical_lo``, ``critical_hi``); ``coefficient``: the coefficient in force when read.
    - ``recommended``: the smallest coefficient advised (the interval's upper end plus the
      jump's width); ``stacks``: ``recommended`` and ``critical`` as each stack writes them.
    - ``margin``: ``coefficient - alpha*`` in units of the knob, and ``safe``: whether the
      coefficient in force is at or above ``recommended``.
    - ``reinforcement``: ``R`` (learning-rate units of logit step per unit load deviation);
      ``bias_rate_logits``: ``u_min`` in logits a step (``None`` without the learning rate);
      ``bias_rate_probability``, ``bias_rate_affinity``: the same rate in softmax-probability
      and sigmoid-affinity units; ``bias_needed``: whether the router needs the bias to stay
      balanced without the aux loss (``R > 0``).
    """

    layer: str
    n_experts: int
    top_k: int
    step: int
    coefficient: float | None
    critical: float | None
    critical_lo: float | None
    critical_hi: float | None
    recommended: float | None
    margin: float | None
    safe: bool | None
    stacks: dict = field(default_factory=dict)
    reinforcement: float | None = None
    bias_needed: bool | None = None
    bias_rate_logits: float | None = None
    bias_rate_probability: float | None = None
    bias_rate_affinity: float | None = None
    reason: str = ""


@dataclass(frozen=True)
class LogAdvice:
    """:func:`advise_from_log`'s result: one :class:`LayerAdvice` per router, what was read from
    the log (``optimizer``, ``aux``, ``pooled_layers``), the units of every number, and the
    limits of the advice."""

    path: str
    until: int | None
    optimizer: dict | None
    lr: float | None
    pooled_layers: int
    layers: dict
    units: dict
    limits: list

    def to_dict(self) -> dict:
        d = asdict(self)
        d["layers"] = {k: asdict(v) for k, v in self.layers.items()}
        return _clean(d)


def _clean(obj):
    if isinstance(obj, dict):
        return {k: _clean(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [_clean(v) for v in obj]
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    return obj


UNITS = {
    "critical": "Hugging Face router_aux_loss_coef (the loss pools the MoE layers' tokens)",
    "recommended": "Hugging Face router_aux_loss_coef; stacks: each stack's own coefficient",
    "margin": "coefficient in force minus alpha*, in Hugging Face coefficient units",
    "reinforcement": "logit step per unit load deviation, in units of the learning rate",
    "bias_rate_logits": "logits per optimiser step (bias added to the router's logits)",
    "bias_rate_probability": "softmax probability per step (bias added to the probabilities)",
    "bias_rate_affinity": "sigmoid affinity per step at the balanced affinity (DeepSeek-V3)",
}

LIMITS = [
    "alpha* is the linear threshold of the balanced state measured over the steps read; the "
    "coefficient at which a layer visibly collapses under a schedule comes a growth time "
    "later, which depends on the schedule's speed (docs/real-training.md)",
    "alpha* moves as training changes the language model's reinforcement (on tiny real models "
    "it drifted by 2-4x between steps 1000 and 1600 at a constant coefficient): re-read it from "
    "a recent window before lowering the coefficient (docs/real-training.md)",
    "the other stacks' coefficients assume their aux loss matches their published formula "
    "and the other layers are balanced (the pooled loss couples layers only through their "
    "means)",
    "the bias rate extrapolates the linear force to a full collapse (an upper bound where the "
    "force saturates) and needs the optimiser's learning rate in the log (RouterMonitor("
    "optimizer=...)) or --lr",
    "drives that act outside the optimiser (a bias written by hand, a hook on the logits) are "
    "not in the forces",
]


def advise_from_log(
    path,
    *,
    until: int | None = None,
    lr: float | None = None,
    affinity: float = 0.5,
    **monitor_options,
) -> LogAdvice:
    """The balancing advice of every router in a :class:`~moebif.monitor.hooks.RouterMonitor`
    log, in the stack's units.

    **Arguments:**

    - ``path``: the log (JSONL with its header; the forces must be logged, as RouterMonitor does
      by default on softmax routers trained with a backward pass).
    - ``until``: read the steps before this one only (e.g. the first 1000 healthy steps);
      ``None``: the whole log.
    - ``lr``: the optimiser's learning rate, when the log does not carry it (logs written before
      the header recorded the optimiser); it overrides the log's.
    - ``affinity``: the balanced sigmoid affinity for the bias rate in affinity units.
    - ``**monitor_options``: for the :class:`~moebif.monitor.LayerMonitor` that replays the
      forces (the same defaults as online, so the numbers are the monitor's).
    """
    import numpy as np

    from .logs import read_log
    from .monitor import LayerMonitor

    if until is not None and int(until) < 1:
        raise ValueError(f"until: need a step >= 1, got {until}")
    if lr is not None and not (math.isfinite(lr) and lr > 0):
        raise ValueError(f"lr: need a finite number > 0, got {lr}")
    if not 0.0 < affinity < 1.0:
        raise ValueError(f"affinity: need 0 < affinity < 1, got {affinity}")
    log = read_log(path)
    run = (log.header or {}).get("run") or {}
    opt = run.get("optimizer")
    lr_used = lr if lr is not None else (opt or {}).get("lr")
    pooled = int((run.get("aux") or {}).get("pooled_layers") or 0)
    probed = [lab for lab, lay in log.layers.items() if lay.forces is not None]
    if not pooled:
        pooled = max(len(probed), 1)
    out = {}
    for lab, lay in log.layers.items():
        n, k = int(lay.n_experts), int(lay.top_k or 1)
        steps = np.asarray(lay.steps)
        keep = slice(None) if until is None else steps < int(until)
        if lay.forces is None:
            out[lab] = LayerAdvice(
                lab, n, k, 0, *(None,) * 7,
                reason="no forces in the log for this router (not a softmax router trained "
                "with a backward pass, or a log written with forces=False)",
            )  # fmt: skip
            continue
        m = LayerMonitor(n, top_k=k, name=lab, **monitor_options)
        sc = None if lay.scores is None else lay.scores[keep]
        imp = None if lay.importance is None else lay.importance[keep]
        m.update_many(lay.counts[keep], imp, sc, lay.forces[keep])
        out[lab] = _layer_advice(lab, n, k, m.forecast(), lr_used, pooled, affinity)
    return LogAdvice(
        path=str(path),
        until=None if until is None else int(until),
        optimizer=opt,
        lr=lr_used,
        pooled_layers=pooled,
        layers=out,
        units=dict(UNITS),
        limits=list(LIMITS),
    )


def _layer_advice(lab, n, k, fc, lr, pooled, affinity) -> LayerAdvice:
    step = int(fc.get("step") or 0)
    coef = fc.get("coefficient")
    crit = fc.get("critical_coefficient")
    if crit is None or crit.get("value") is None:
        return LayerAdvice(
            lab, n, k, step, coef, *(None,) * 6, reason=fc.get("reason") or "alpha* not resolved"
        )
    c, lo, hi = crit["value"], crit["lo"], crit["hi"]
    rec = hi + JUMP * abs(hi)
    stacks = {
        name: {"recommended": v_rec, "critical": v_crit}
        for (name, v_rec), v_crit in zip(
            stack_coefficients(rec, n, k, pooled).items(),
            stack_coefficients(c, n, k, pooled).values(),
            strict=True,
        )
    }
    R = (fc.get("reinforcement") or {}).get("value")
    rate = prob = aff = None
    need = None if R is None else bool(R > 0)
    if R is not None and lr is not None:
        rate = lr * max(R, 0.0) * (1.0 / k - 1.0 / n)
        prob = rate * (1.0 / n) * (1.0 - 1.0 / n)
        aff = rate * affinity * (1.0 - affinity)
    margin = None if coef is None else coef - c
    return LayerAdvice(
        layer=lab,
        n_experts=n,
        top_k=k,
        step=step,
        coefficient=coef,
        critical=c,
        critical_lo=lo,
        critical_hi=hi,
        recommended=rec,
        margin=margin,
        safe=None if coef is None else bool(coef >= rec),
        stacks=stacks,
        reinforcement=R,
        bias_needed=need,
        bias_rate_logits=rate,
        bias_rate_probability=prob,
        bias_rate_affinity=aff,
        reason="" if rate is not None or R is None else "no learning rate: pass --lr",
    )
