"""Sinkhorn selection (Megatron ``sinkhorn_load_balancing``)."""

from __future__ import annotations

from .base import Scheme, Shift

__all__ = ["Sinkhorn"]


class Sinkhorn(Scheme):
    """Sinkhorn selection (no value): the selection ignores the scores, ``a_eff = 0``."""

    name = "sinkhorn"
    names = {"sinkhorn": "Sinkhorn selection (Megatron), no value"}
    kind = "selection"
    fields = ("sinkhorn",)
    kernel_mode = ("sinkhorn", 3)
    overrides = True
    by_construction = True

    def parse(self, name, value, opts, item):
        return {"sinkhorn": True}

    def active(self, spec):
        return bool(spec.sinkhorn)

    def label(self, spec):
        return ["sinkhorn"] if spec.sinkhorn else []

    def terms(self, spec, *, rate, batch):
        return ()

    def shift(self, spec, ctx):
        return Shift(-ctx.A, 0.0, "a")

    def kernel(self, spec, n_experts, top_k):
        return {}  # the mode alone
