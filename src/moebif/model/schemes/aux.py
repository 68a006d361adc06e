"""The Switch / GShard aux loss ``alpha c sum_i f_i P_i`` in the stacks' normalisations."""

from __future__ import annotations

from ...params import ParameterError
from .base import ExplorerView, Scheme, Shift

__all__ = ["AuxLoss"]


class AuxLoss(Scheme):
    """Switch aux loss; the variant (``hf``, ``megatron``, ``olmo``, ``deepspeed``) is the name's
    suffix, option ``layers=L`` (MoE layers sharing the loss). Near balance a load feedback
    (``rho``): ``dlambda_c = -rate alpha c alpha_f / (N T^2)``."""

    name = "aux"
    names = {
        "aux": "Switch aux loss, HF normalisation N sum f P (f sums to k): coefficient alpha",
        "aux-megatron": "Switch aux loss, Megatron normalisation N/k sum f P: coefficient alpha",
        "aux-olmo": "Switch aux loss, OLMo-core N/k sum f P (/ n_layers): coefficient alpha",
        "aux-deepspeed": "Switch aux loss, DeepSpeed top1/top2 (first choice)/topk: coefficient",
    }
    aliases = {"aux-hf": "aux"}
    options = ("layers",)
    kind = "gradient"
    fields = ("aux", "aux_variant", "aux_layers")
    strength_names = ("aux", "aux-megatron", "aux-deepspeed")

    def parse(self, name, value, opts, item):
        if value is None:
            raise ParameterError("balancer", f"{item!r}: needs a value, e.g. {item}:1e-2")
        kw = {"aux": value, "aux_variant": "hf" if name == "aux" else name.split("-", 1)[1]}
        if "layers" in opts:
            try:
                kw["aux_layers"] = int(opts["layers"])
            except ValueError:
                raise ParameterError("balancer", f"{item!r}: layers must be an integer") from None
        return kw

    def active(self, spec):
        return spec.aux > 0

    def label(self, spec):
        if not spec.aux > 0:
            return []
        name = "aux" if spec.aux_variant == "hf" else f"aux-{spec.aux_variant}"
        extra = f":layers={spec.aux_layers}" if spec.aux_layers != 1 else ""
        return [f"{name}:{spec.aux:g}{extra}"]

    def terms(self, spec, *, rate, batch):
        from ..balancers import AuxLossTerm

        if not spec.aux > 0:
            return ()
        return (AuxLossTerm(spec.aux, spec.aux_variant, spec.aux_layers, rate),)

    def shift(self, spec, ctx):
        from ..balancers import aux_normalisation

        c, first = aux_normalisation(spec.aux_variant, ctx.n, ctx.k, spec.aux_layers)
        af = 1.0 / ctx.n if first else ctx.alpha_k
        return Shift(-(ctx.rate * spec.aux * c * af / (ctx.n * ctx.T * ctx.T)), 0.0, "rho")

    def kernel(self, spec, n_experts, top_k):
        from ..balancers import aux_normalisation

        if not spec.aux > 0:
            return {}
        c, first = aux_normalisation(spec.aux_variant, n_experts, top_k, spec.aux_layers)
        return {"AUX": spec.aux * c, "AUX_FIRST": 1.0 if first else 0.0}

    def explorer(self):
        return ExplorerView(
            "aux-megatron",
            "Switch aux loss, Megatron N/k Σ f P (near balance ρ = α/T)",
            "alpha",
            5.0,
            lambda s, p: s / p.T,
            "alpha/T",
        )
