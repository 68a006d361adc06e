"""The closed-loop balancer: the gain-scheduled PI selection bias of
:mod:`moebif.model.control_law`.

In the score model (one router step = one optimizer step on a batch of ``B`` tokens) the law is
the real-model controller's, number for number: the tokens select the top-``k`` of
``r / T + b`` (``b`` in **logits**, the law's bias), the reinforcement follows the selected loads,
and after each step, with ``f = n / (k B)`` the selected loads,

    e = N f - 1,  e_ema <- (1 - beta) e_ema + beta e,
    I <- clip(I - g k_i e - mean, +-bias_max),  b = I - g k_p e_ema - mean.

**The margin the model's controller reads.** The law schedules its gain on the open-loop margin
``m`` (logit step per step per unit load, positive when the router's own restoring force wins).
In the model it is known from the theory: near balance a load deviation ``df`` of one expert
moves its logit by ``eta a df / T`` a step (reinforcement, with ``rho``: ``a - rho``) and the
decay ``eta gamma x`` restores ``eta gamma k / alpha_k`` per unit load (``df = alpha_k x / k``
at the uniform state), so

    m = eta (gamma k / alpha_k - (a - rho) / T) = -(eta k / alpha_k) lambda_c,

``lambda_c = A - gamma`` the bare contrast eigenvalue (:func:`model_margin`): ``m`` is positive
below the linear threshold ``a_lin(N, k)`` and negative above it. With ``margin=none`` the gains
are fixed (``g = 1``): the variant for a router whose margin is not available.

The vector field has no state for a balancer: like the loss-free bias, the scheme has no static
mean-field term (``terms`` is empty, the selection is overridden); its closed-loop dynamics (the
integral per expert) are in :class:`moebif.model.balancer_theory.ControlTheory`: the per-step
linear map at balance, its chattering, the two-level closed-loop map and the collapsed states.

Spec: ``control[:K_I][:k_p=..][:beta=..][:safety=..][:bias_max=..][:gain_max=..]
[:margin=theory|none]`` (``K_I`` default 1e-2; options as :class:`~moebif.model.control_law.
ControlGains`); ``k_i=`` is accepted as an option too.
"""

from __future__ import annotations

from ...params import ParameterError
from .base import Scheme, Shift

__all__ = ["Control", "model_margin", "uniform_slope"]

_OPTS = {
    "k_i": "control",
    "k_p": "control_kp",
    "beta": "control_beta",
    "safety": "control_safety",
    "bias_max": "control_bias_max",
    "gain_max": "control_gain_max",
}
_DEFAULT_KI = 1e-2


def uniform_slope(n: int, k: int) -> float:
    """``alpha_k``: uniform-state slope of the inclusion probabilities (``1/N`` for top-1)."""
    from ..topk import topk_uniform_slope

    return 1.0 / n if k == 1 else topk_uniform_slope(n, k)


def model_margin(
    a: float, gamma: float, T: float, n: int, k: int, eta: float, rho: float = 0.0
) -> float:
    """The open-loop margin the model's controller reads (module docstring):
    ``m = eta (gamma k / alpha_k - (a - rho) / T)``, logits per step per unit load."""
    return eta * (gamma * k / uniform_slope(n, k) - (a - rho) / T)


def gains_of(spec):
    """The :class:`~moebif.model.control_law.ControlGains` of a spec."""
    from ..control_law import ControlGains

    return ControlGains(
        k_i=spec.control,
        k_p=spec.control_kp,
        beta=spec.control_beta,
        safety=spec.control_safety,
        bias_max=spec.control_bias_max,
        gain_max=spec.control_gain_max,
    )


class Control(Scheme):
    """The gain-scheduled PI selection bias (module docstring). Not a static term: its shift is
    the threshold-equivalent of the closed loop's 2x2 contrast system (trace
    ``A c - gamma - omega c`` with ``omega = g k_i mu / eta``, ``mu = N alpha_k / k``,
    ``c = 1 / (1 + g k_p mu)``); losing stability would be a Hopf point."""

    name = "control"
    names = {
        "control": "closed-loop PI selection bias (moebif.control's law): integral gain k_i "
        "(logits/step per unit load error), options k_p, beta, safety, bias_max, gain_max, "
        "margin=theory|none"
    }
    options = ("k_i", "k_p", "beta", "safety", "bias_max", "gain_max", "margin")
    kind = "selection"
    fields = (
        "control",
        "control_kp",
        "control_beta",
        "control_safety",
        "control_bias_max",
        "control_gain_max",
        "control_margin",
    )
    kernel_mode = ("control", 6)
    overrides = True

    def parse(self, name, value, opts, item):
        kw = {"control": _DEFAULT_KI if value is None else value}
        for key, field in _OPTS.items():
            if key in opts:
                if key == "k_i" and value is not None:
                    raise ParameterError("balancer", f"{item!r}: k_i given twice")
                try:
                    kw[field] = float(opts[key])
                except ValueError:
                    raise ParameterError("balancer", f"{item!r}: {key} must be a number") from None
        if "margin" in opts:
            if opts["margin"] not in ("theory", "none"):
                raise ParameterError("balancer", f"{item!r}: margin must be theory or none")
            kw["control_margin"] = opts["margin"]
        if not kw["control"] > 0:
            raise ParameterError("balancer", f"{item!r}: k_i must be > 0")
        return kw

    def active(self, spec):
        return spec.control > 0

    def label(self, spec):
        if not spec.control > 0:
            return []
        out = f"control:{spec.control:g}"
        from ..balancers import BalancerSpec

        d = BalancerSpec()
        for key, field in _OPTS.items():
            if key != "k_i" and getattr(spec, field) != getattr(d, field):
                out += f":{key}={getattr(spec, field):g}"
        if spec.control_margin != d.control_margin:
            out += f":margin={spec.control_margin}"
        return [out]

    def terms(self, spec, *, rate, batch):
        return ()

    def shift(self, spec, ctx):
        if ctx.eta is None:
            raise ParameterError("eta", "the controller's effective gamma needs eta")
        from ..control_law import gain_factor

        mu = ctx.n * ctx.alpha_k / ctx.k
        margin = None
        if spec.control_margin == "theory":
            margin = ctx.eta * (ctx.gamma * ctx.k / ctx.alpha_k - ctx.a / ctx.T)
        g = gain_factor(gains_of(spec), ctx.n, margin)
        c = 1.0 / (1.0 + g * spec.control_kp * mu)
        omega = g * spec.control * mu / ctx.eta
        open_trace = ctx.A - ctx.gamma
        closed_trace = ctx.A * c - ctx.gamma - omega * c
        return Shift(closed_trace - open_trace, 0.0, "gamma", oscillatory=True)

    def kernel(self, spec, n_experts, top_k):
        if not spec.control > 0:
            return {}
        return {
            "KI": spec.control,
            "KP": spec.control_kp,
            "CBETA": spec.control_beta,
            "SAFETY": spec.control_safety,
            "BMAX": spec.control_bias_max,
            "GMAX": spec.control_gain_max,
            "SCHED": 1.0 if spec.control_margin == "theory" else 0.0,
            "KALPHA": top_k / uniform_slope(n_experts, top_k),
        }
