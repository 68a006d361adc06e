"""The loss-free bias (DeepSeek-V3): ``beta_i += u sign(mean(n) - n_i)`` once a global batch."""

from __future__ import annotations

from ...params import ParameterError
from .base import Scheme, Shift

__all__ = ["LossFreeBias"]


class LossFreeBias(Scheme):
    """Loss-free bias of rate ``u`` per step (score units), uncentred (Megatron) or centred
    (torchtitan). Not smooth: no mean-field term and no shift; its theory is the relay of
    :class:`moebif.model.balancer_theory.BiasTheory`."""

    name = "bias"
    names = {
        "bias": "loss-free bias, uncentred (Megatron): rate u per step (score units)",
        "bias-centred": "loss-free bias, centred (torchtitan): rate u per step (score units)",
    }
    aliases = {"bias-centered": "bias-centred"}
    kind = "selection"
    fields = ("bias", "bias_centred")
    kernel_mode = ("bias", 1)
    overrides = True

    def parse(self, name, value, opts, item):
        if value is None:
            raise ParameterError("balancer", f"{item!r}: needs a value, e.g. {item}:1e-2")
        return {"bias": value, "bias_centred": name != "bias"}

    def active(self, spec):
        return spec.bias > 0

    def label(self, spec):
        if not spec.bias > 0:
            return []
        return [f"{'bias-centred' if spec.bias_centred else 'bias'}:{spec.bias:g}"]

    def terms(self, spec, *, rate, batch):
        return ()

    def shift(self, spec, ctx):
        return Shift(0.0)

    def kernel(self, spec, n_experts, top_k):
        return {"U": spec.bias, "CENTRED": 1.0 if spec.bias_centred else 0.0}
