"""Balancers of the explorer: a small registry of schemes, each mapping its strength to the
mean-field router the balanced router behaves as.

Registered: the paper's negative load feedback (sec. 8.7, SPEC section 1):
``r_i <- r_i + eta (a l_i - rho (l_i - 1/N) - gamma r_i + b_i)``, whose loads evolve as the
unbalanced router's with ``a_eff = a - rho``; the hysteresis disappears when
``a - rho <= 2 gamma T``. And the smooth schemes of the stacks whose effect near balance is a
load feedback (:func:`moebif.model.balancer_theory.effective_parameters`): the Switch aux loss
in Megatron's / OLMo-core's normalisation (``rho_eff = alpha / T`` for every N and k) and the
importance loss (top-1: ``rho_eff = 2 w / T``). Their views are those of the near-balance
equivalent router; far from balance the schemes differ from a linear feedback (their gradient
vanishes on a saturated collapsed branch), which ``moebif advise`` and docs/balancing.md
quantify. Their trajectories are the stochastic router with the scheme itself
(``simulate_batch_router(..., balancer=...)``), so the page shows both.

The stacks' schemes are not listed here: every scheme of the one registry
:data:`moebif.model.schemes.SCHEMES` whose :meth:`~moebif.model.schemes.Scheme.explorer` gives a
view is registered from it. Adding another view is a few lines: build a :class:`Balancer` and
:func:`register` it. Every view of
the explorer (equilibria, fold curve, bifurcation and branch diagrams, mean-field curve) is
computed from ``effective(params, strength)``; thresholds are drawn in the user's ``a`` through
``user_a``; trajectories run :func:`moebif.simulate_batch_router` with ``simulate(strength)``
as extra keyword arguments (``None``: the stochastic router has no such scheme yet, and the page
says so). For example, a scheme that raised the forgetting rate by its strength would be::

    register(Balancer(
        name="forgetting",
        label="extra forgetting",
        strength_label="delta gamma",
        strength_max=2.0,
        effective=lambda p, s: p.replace(gamma=p.gamma + s),
        user_a=lambda a_eff, p, s: a_eff,
        simulate=None,
    ))
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from ..params import ParameterError, RouterParams, check_finite

__all__ = ["BALANCERS", "Balancer", "get_balancer", "register"]


@dataclass(frozen=True)
class Balancer:
    """One balancing scheme as the explorer sees it.

    **Arguments:**

    - ``name``: registry key (the ``balancer=`` value of the API and the page's selector).
    - ``label``: what the selector shows; ``strength_label``: the strength slider's name.
    - ``strength_max``: upper end of the strength slider (its lower end is 0, "off").
    - ``effective``: ``(params, strength) -> RouterParams``: the mean-field router the balanced
      router behaves as (its ``a_eff``, ``gamma_eff``, ``T_eff``; ``h`` and N unchanged).
    - ``user_a``: ``(a_eff, params, strength) -> a``: the inverse on ``a`` (vectorised over
      ``a_eff``): the feedback of the user's router whose effective feedback is ``a_eff``. Used
      to draw thresholds, folds and branches against the user's ``a``.
    - ``simulate``: ``strength -> dict`` of keyword arguments for
      :func:`moebif.simulate_batch_router`, or ``None`` when the stochastic router does not
      implement the scheme.
    - ``command``: ``strength -> str``, a note appended to "copy as command" (``moebif theory``
      has no balancer options: the command is written at the effective parameters).
    """

    name: str
    label: str
    strength_label: str
    strength_max: float
    effective: Callable[[RouterParams, float], RouterParams]
    user_a: Callable[[np.ndarray, RouterParams, float], np.ndarray]
    simulate: Callable[[float], dict] | None = None
    command: Callable[[float], str] | None = None

    def check_strength(self, strength) -> float:
        s = check_finite("strength", strength)
        if s < 0.0:
            raise ParameterError("strength", f"must be >= 0, got {s:g}")
        return s

    def to_dict(self) -> dict:
        return {
            "name": self.name,
            "label": self.label,
            "strength_label": self.strength_label,
            "strength_max": self.strength_max,
            "simulated": self.simulate is not None,
        }


BALANCERS: dict[str, Balancer] = {}


def register(balancer: Balancer) -> Balancer:
    """Add ``balancer`` to the registry (replacing one of the same name) and return it."""
    BALANCERS[balancer.name] = balancer
    return balancer


def get_balancer(name: str) -> Balancer:
    """The registered scheme ``name``; :class:`ParameterError` naming ``balancer`` otherwise."""
    try:
        return BALANCERS[name]
    except KeyError:
        known = ", ".join(sorted(BALANCERS))
        raise ParameterError("balancer", f"unknown scheme {name!r} (known: {known})") from None


def _feedback_effective(p: RouterParams, rho: float) -> RouterParams:
    # a_eff may be negative in the simulator and in solve_meanfield; RouterParams needs a >= 0,
    # and for a_eff <= 0 the router is balanced (a single stable state) exactly as at a = 0
    # only when h = 0. So a_eff < 0 is reported as an error, not clipped.
    a_eff = p.a - rho
    if a_eff < 0.0 and not math.isclose(a_eff, 0.0, abs_tol=1e-12):
        raise ParameterError("rho", f"must be <= a = {p.a:g} (a - rho >= 0), got {rho:g}")
    return p.replace(a=max(a_eff, 0.0))


def _rho_scheme(rho_of) -> tuple:
    """``effective`` and ``user_a`` of a scheme acting near balance as ``rho = rho_of(s, p)``."""

    def effective(p: RouterParams, s: float) -> RouterParams:
        rho = rho_of(s, p)
        if rho > p.a and not math.isclose(rho, p.a, abs_tol=1e-12):
            raise ParameterError(
                "strength",
                f"its near-balance feedback rho = {rho:g} must be <= a = {p.a:g} (a_eff >= 0)",
            )
        return p.replace(a=max(p.a - rho, 0.0))

    def user_a(a_eff, p: RouterParams, s: float):
        return np.asarray(a_eff, dtype=float) + rho_of(s, p)

    return effective, user_a


register(
    Balancer(
        name="feedback",
        label="negative load feedback ρ (sec. 8.7)",
        strength_label="rho",
        strength_max=5.0,
        effective=_feedback_effective,
        user_a=lambda a_eff, p, rho: np.asarray(a_eff, dtype=float) + rho,
        simulate=lambda rho: {"rho": rho},
        command=lambda rho: f"a_eff = a - rho, rho = {rho:g}" if rho else "",
    )
)


def _register_schemes() -> None:
    """Register every scheme of :data:`moebif.model.schemes.SCHEMES` whose
    :meth:`~moebif.model.schemes.Scheme.explorer` view is a near-balance load feedback."""
    from ..model.schemes import scheme_instances

    for scheme in scheme_instances():
        view = scheme.explorer()
        if view is None:
            continue
        name, label, strength_label, strength_max, rho_of, rho_text = view
        effective, user_a = _rho_scheme(rho_of)
        register(
            Balancer(
                name=name,
                label=label,
                strength_label=strength_label,
                strength_max=strength_max,
                effective=effective,
                user_a=user_a,
                simulate=lambda s, name=name: {"balancer": f"{name}:{s:.17g}"} if s > 0 else {},
                command=lambda s, sl=strength_label, rt=rho_text: (
                    f"near balance a_eff = a - {rt}, {sl} = {s:g}" if s else ""
                ),
            )
        )


_register_schemes()
