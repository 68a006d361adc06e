"""Expert choice (Zhou et al. 2022): each expert takes its top ``C = ceil(cf k B / N)`` tokens."""

from __future__ import annotations

from .base import Scheme, Shift

__all__ = ["ExpertChoice"]


class ExpertChoice(Scheme):
    """Expert choice with capacity factor ``cf`` (default 1): the loads do not depend on the
    scores (``a_eff = 0``); a fraction ``(1 - C/B)^N`` of tokens gets no expert."""

    name = "expert-choice"
    names = {"expert-choice": "expert choice with capacity factor cf"}
    aliases = {"expert_choice": "expert-choice", "ec": "expert-choice"}
    kind = "selection"
    fields = ("expert_choice",)
    kernel_mode = ("expert_choice", 4)
    overrides = True
    by_construction = True

    def parse(self, name, value, opts, item):
        return {"expert_choice": 1.0 if value is None else value}

    def active(self, spec):
        return spec.expert_choice > 0

    def label(self, spec):
        return [f"expert-choice:{spec.expert_choice:g}"] if spec.expert_choice > 0 else []

    def terms(self, spec, *, rate, batch):
        return ()

    def shift(self, spec, ctx):
        return Shift(-ctx.A, 0.0, "a")

    def kernel(self, spec, n_experts, top_k):
        return {"EC": spec.expert_choice}

    def dropped(self, spec, n, k, batch):
        from ..balancer_theory import expert_choice_unrouted

        return expert_choice_unrouted(spec.expert_choice, n, k, batch or 512)
