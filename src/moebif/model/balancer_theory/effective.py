"""Effective parameters of a scheme near balance (part 1 of :mod:`moebif.model.balancer_theory`):
each scheme's shift of the uniform state's eigenvalues (:meth:`moebif.model.schemes.Scheme.shift`)
read as ``a_eff``, ``rho_eff``, ``gamma_eff``, ``T_eff``; the linear threshold with a scheme."""

from __future__ import annotations

import math
from dataclasses import dataclass

from ...params import RouterParams
from ..balancers import BalancerSpec
from ..schemes import ShiftContext
from ..thresholds import thresholds
from ..topk import topk_uniform_slope

__all__ = ["EffectiveParameters", "effective_parameters", "linear_threshold"]


@dataclass(frozen=True)
class EffectiveParameters:
    """The uniform state with a scheme (see the module docstring, part 1).

    ``contrast``, ``common``: eigenvalues of the Jacobian on the contrast and common modes;
    ``shift``: ``dlambda_c``; ``a_eff``, ``rho_eff``, ``gamma_eff``, ``T_eff`` (``inf``: no
    reinforcement left on the contrasts); ``acts_on``: the parameter the scheme naturally moves
    (``rho``, ``gamma``, ``a``, ``T``); ``oscillatory``: the loss of stability is a Hopf point."""

    contrast: float
    common: float
    shift: float
    a_eff: float
    rho_eff: float
    gamma_eff: float
    T_eff: float
    acts_on: str
    oscillatory: bool = False

    def to_dict(self) -> dict:
        return {
            "contrast_eigenvalue": self.contrast,
            "common_eigenvalue": self.common,
            "contrast_shift": self.shift,
            "a_eff": self.a_eff,
            "rho_eff": self.rho_eff,
            "gamma_eff": self.gamma_eff,
            "T_eff": self.T_eff if math.isfinite(self.T_eff) else None,
            "acts_on": self.acts_on,
            "oscillatory": self.oscillatory,
        }


def _shifts(
    spec: BalancerSpec, n: int, k: int, a: float, gamma: float, T: float, rate: float, batch, eta
):
    """``(dlambda_c, dlambda_0, acts_on, oscillatory)`` of the smooth parts of ``spec``: the sum
    of the :meth:`~moebif.model.schemes.Scheme.shift` of its schemes, in registry order."""
    alpha_k = topk_uniform_slope(n, k) if k > 1 else 1.0 / n
    A = a * alpha_k / (k * T)
    ctx = ShiftContext(n, k, a, gamma, T, rate, batch, eta, alpha_k, A)
    dc = d0 = 0.0
    acts, osc = [], False
    for scheme in spec.schemes:
        sh = scheme.shift(spec, ctx)
        dc += sh.contrast
        d0 += sh.common
        if sh.acts_on != "none":
            acts.append(sh.acts_on)
        osc = osc or sh.oscillatory
    return dc, d0, "+".join(dict.fromkeys(acts)) or "none", osc


def effective_parameters(
    spec: BalancerSpec,
    params: RouterParams,
    *,
    top_k: int = 1,
    rate: float = 1.0,
    batch: int | None = None,
    eta: float | None = None,
) -> EffectiveParameters:
    """Effective ``(a_eff, gamma_eff, T_eff, rho_eff)`` of ``spec`` at the uniform state of
    ``params`` (module docstring, part 1). The loss-free bias has none (it is not smooth: see
    :class:`BiasTheory`); ``batch`` matters for capacity only (``None``: ``B -> inf``)."""
    p = params
    n, k = p.n_experts, int(top_k)
    alpha_k = topk_uniform_slope(n, k) if k > 1 else 1.0 / n
    A = p.a * alpha_k / (k * p.T)
    dc, d0, acts, osc = _shifts(spec, n, k, p.a, p.gamma, p.T, rate, batch, eta)
    a_eff = p.a + dc * k * p.T / alpha_k
    gain = A + dc
    return EffectiveParameters(
        contrast=A - p.gamma + dc,
        common=-p.gamma + d0,
        shift=dc,
        a_eff=a_eff,
        rho_eff=p.a - a_eff,
        gamma_eff=p.gamma - dc,
        T_eff=p.a * alpha_k / (k * gain) if gain > 0 else math.inf,
        acts_on=acts,
        oscillatory=osc,
    )


def linear_threshold(
    spec: BalancerSpec,
    n: int,
    k: int,
    gamma: float,
    T: float,
    *,
    rate: float = 1.0,
    batch=None,
    eta=None,
) -> float:
    """The ``a`` where the uniform state with ``spec`` loses stability (``inf``: never)."""
    from scipy.optimize import brentq

    def lam(a):
        alpha_k = topk_uniform_slope(n, k) if k > 1 else 1.0 / n
        dc = _shifts(spec, n, k, a, gamma, T, rate, batch, eta)[0]
        return a * alpha_k / (k * T) - gamma + dc

    hi = thresholds(n, k, gamma, T).linear
    for _ in range(60):
        if lam(hi) > 0:
            return float(brentq(lam, 0.0, hi, xtol=1e-12 * hi))
        hi *= 2.0
    return math.inf
