"""The router z-loss (ST-MoE) ``c mean_t lse(z_t)^2``."""

from __future__ import annotations

import math

from ...params import ParameterError
from .base import Scheme, Shift

__all__ = ["ZLoss"]


class ZLoss(Scheme):
    """Router z-loss, coefficient ``c``. A ``gamma`` on both modes: with
    ``y = 2 rate c / (N T^2)`` the common level settles where
    ``lse* = (gamma log N + a / (N T)) / (gamma + y)``; ``dlambda_c = -y lse*``,
    ``dlambda_0 = -y``. Not shift-invariant."""

    name = "zloss"
    names = {"zloss": "router z-loss c mean lse(z)^2: coefficient c"}
    aliases = {"z-loss": "zloss"}
    kind = "gradient"
    fields = ("zloss",)
    strength_names = ("zloss",)

    def parse(self, name, value, opts, item):
        if value is None:
            raise ParameterError("balancer", f"{item!r}: needs a value, e.g. {item}:1e-2")
        return {"zloss": value}

    def active(self, spec):
        return spec.zloss > 0

    def label(self, spec):
        return [f"zloss:{spec.zloss:g}"] if spec.zloss > 0 else []

    def terms(self, spec, *, rate, batch):
        from ..balancers import ZLossTerm

        return (ZLossTerm(spec.zloss, rate),) if spec.zloss > 0 else ()

    def shift(self, spec, ctx):
        y = 2.0 * ctx.rate * spec.zloss / (ctx.n * ctx.T * ctx.T)
        lse = (ctx.gamma * math.log(ctx.n) + ctx.a / (ctx.n * ctx.T)) / (ctx.gamma + y)
        return Shift(-(y * lse), -y, "gamma")

    def kernel(self, spec, n_experts, top_k):
        return {"Z": spec.zloss}
