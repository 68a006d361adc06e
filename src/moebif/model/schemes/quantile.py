"""Quantile balancing (Megatron ``qb_dual_update``)."""

from __future__ import annotations

from ...params import ParameterError
from .base import Scheme, Shift

__all__ = ["Quantile"]


class Quantile(Scheme):
    """Quantile balancing with EMA ``e`` (the item's value, default 0). The bias low-passes the
    logits at ``omega = (1 - e) / eta``: ``dlambda_c = -omega`` (threshold-equivalent; the loss
    of stability is a Hopf point)."""

    name = "quantile"
    names = {"quantile": "quantile balancing (Megatron): value = EMA factor (default 0)"}
    kind = "selection"
    fields = ("quantile", "quantile_ema")
    kernel_mode = ("quantile", 2)
    overrides = True
    by_construction = True

    def parse(self, name, value, opts, item):
        return {"quantile": True, "quantile_ema": 0.0 if value is None else value}

    def active(self, spec):
        return bool(spec.quantile)

    def label(self, spec):
        return [f"quantile:{spec.quantile_ema:g}"] if spec.quantile else []

    def terms(self, spec, *, rate, batch):
        return ()

    def shift(self, spec, ctx):
        if ctx.eta is None:
            raise ParameterError("eta", "quantile balancing's effective gamma needs eta")
        omega = (1.0 - spec.quantile_ema) / ctx.eta
        # threshold-equivalent (the 2x2 system has trace A - gamma - omega)
        return Shift(-omega, 0.0, "gamma", oscillatory=True)

    def kernel(self, spec, n_experts, top_k):
        return {"EMA": spec.quantile_ema}
