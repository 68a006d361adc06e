"""The capacity factor: at most ``C = ceil(cf k B / N)`` tokens served per expert."""

from __future__ import annotations

from ...params import ParameterError
from .base import Scheme, Shift

__all__ = ["Capacity", "capacity_slope"]


def capacity_slope(cf: float, n: int, k: int, batch: int | None) -> float:
    """``phi = P(Binomial(B - 1, k/N) <= C - 1)``: the slope of the served load
    ``E min(n_i, C)`` at the uniform state (``B -> inf``: 1 for ``cf > 1``)."""
    if batch is None:
        return 1.0 if cf > 1.0 else (0.5 if cf == 1.0 else 0.0)
    from scipy.stats import binom

    from ..balancers import expert_capacity

    C = expert_capacity(batch, n, k, cf)
    return float(binom.cdf(C - 1, batch - 1, k / n))


class Capacity(Scheme):
    """Capacity factor ``cf`` (option ``policy=probs|position|random``): the reinforcement
    follows the served load; ``a_eff = a phi`` (:func:`capacity_slope`), Remark 7.1's "lower
    ``a``"."""

    name = "capacity"
    names = {"capacity": "capacity factor cf (drop beyond ceil(cf k B / N))"}
    options = ("policy",)
    kind = "capacity"
    fields = ("capacity", "capacity_policy")
    strength_names = ("capacity",)

    def parse(self, name, value, opts, item):
        if value is None:
            raise ParameterError("balancer", f"{item!r}: needs a value, e.g. {item}:1e-2")
        kw = {"capacity": value}
        if "policy" in opts:
            kw["capacity_policy"] = opts["policy"]
        return kw

    def active(self, spec):
        return spec.capacity > 0

    def label(self, spec):
        if not spec.capacity > 0:
            return []
        pol = f":policy={spec.capacity_policy}" if spec.capacity_policy != "probs" else ""
        return [f"capacity:{spec.capacity:g}{pol}"]

    def terms(self, spec, *, rate, batch):
        from ..balancers import CapacityTerm

        return (CapacityTerm(spec.capacity, batch),) if spec.capacity > 0 else ()

    def shift(self, spec, ctx):
        phi = capacity_slope(spec.capacity, ctx.n, ctx.k, ctx.batch)
        return Shift(-((1.0 - phi) * ctx.A), 0.0, "a")

    def kernel(self, spec, n_experts, top_k):
        return {"CAP": spec.capacity}

    def served_slope(self, spec, n, k, batch):
        return capacity_slope(spec.capacity, n, k, batch)

    def dropped(self, spec, n, k, batch):
        from ..balancer_theory import dropped_fraction

        return dropped_fraction(spec.capacity, n, k, batch)
