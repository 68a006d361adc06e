"""Noisy gating and jitter: Gaussian logit noise (Shazeer) and multiplicative jitter (Switch)."""

from __future__ import annotations

from ...params import ParameterError
from .base import Scheme, Shift

__all__ = ["NoisyGating"]


class NoisyGating(Scheme):
    """Noisy gating ``noisy:sigma`` and jitter ``jitter:eps`` (default ``1e-2``), one selection
    law together: the reinforcement follows the noisy inclusion probabilities; near balance
    ``T_eff = T alpha_k / alpha_noise`` (Remark 7.1's "raise ``T``")."""

    name = "noisy"
    names = {
        "noisy": "noisy gating: Gaussian logit noise of std sigma",
        "jitter": "multiplicative logit jitter U(1 - eps, 1 + eps)",
    }
    aliases = {"noise": "noisy"}
    kind = "selection"
    fields = ("noise", "jitter")
    kernel_mode = ("noisy", 5)
    strength_names = ("noisy",)

    def parse(self, name, value, opts, item):
        if name == "jitter":
            return {"jitter": 1e-2 if value is None else value}
        if value is None:
            raise ParameterError("balancer", f"{item!r}: needs a value, e.g. {item}:1e-2")
        return {"noise": value}

    def active(self, spec):
        return spec.noise > 0 or spec.jitter > 0

    def label(self, spec):
        out = []
        if spec.noise > 0:
            out.append(f"noisy:{spec.noise:g}")
        if spec.jitter > 0:
            out.append(f"jitter:{spec.jitter:g}")
        return out

    def terms(self, spec, *, rate, batch):
        from ..balancers import NoisyGatingTerm

        if not (spec.noise > 0 or spec.jitter > 0):
            return ()
        return (NoisyGatingTerm(spec.noise, spec.jitter),)

    def shift(self, spec, ctx):
        from ..balancers import noisy_uniform_slope

        an = noisy_uniform_slope(ctx.n, ctx.k, sigma=spec.noise, jitter=spec.jitter)
        return Shift(ctx.a / (ctx.k * ctx.T) * (an - ctx.alpha_k), 0.0, "T")

    def kernel(self, spec, n_experts, top_k):
        return {"SIGMA": spec.noise, "JITTER": spec.jitter}

    def selection_slope(self, spec, n, k, slope):
        from ..balancers import noisy_uniform_slope

        return noisy_uniform_slope(n, k, sigma=spec.noise, jitter=spec.jitter)
