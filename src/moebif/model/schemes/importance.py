"""The importance loss ``w CV(P)^2 = w N sum_i (P_i - 1/N)^2`` (Shazeer et al. 2017)."""

from __future__ import annotations

from ...params import ParameterError
from .base import ExplorerView, Scheme, Shift

__all__ = ["Importance"]


class Importance(Scheme):
    """Importance loss, weight ``w``: near balance a load feedback,
    ``dlambda_c = -2 rate w / (N T^2)`` (top-1: ``rho_eff = 2 w / T``)."""

    name = "importance"
    names = {"importance": "importance loss w N sum (P - 1/N)^2: weight w"}
    kind = "gradient"
    fields = ("importance",)
    strength_names = ("importance",)

    def parse(self, name, value, opts, item):
        if value is None:
            raise ParameterError("balancer", f"{item!r}: needs a value, e.g. {item}:1e-2")
        return {"importance": value}

    def active(self, spec):
        return spec.importance > 0

    def label(self, spec):
        return [f"importance:{spec.importance:g}"] if spec.importance > 0 else []

    def terms(self, spec, *, rate, batch):
        from ..balancers import ImportanceTerm

        return (ImportanceTerm(spec.importance, rate),) if spec.importance > 0 else ()

    def shift(self, spec, ctx):
        return Shift(-(2.0 * ctx.rate * spec.importance / (ctx.n * ctx.T * ctx.T)), 0.0, "rho")

    def kernel(self, spec, n_experts, top_k):
        return {"IMP": spec.importance}

    def explorer(self):
        return ExplorerView(
            "importance",
            "importance loss w N Σ (P − 1/N)² (top-1, near balance ρ = 2w/T)",
            "w",
            2.5,
            lambda s, p: 2.0 * s / p.T,
            "2 w/T",
        )
