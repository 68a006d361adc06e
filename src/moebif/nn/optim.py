"""SGD with momentum and Adam for ensembles, with the update rules of ``torch.optim.SGD`` and
``torch.optim.Adam`` (L2 weight decay added to the gradient), written with single-rounding
elementwise operations only (multiply, add, divide, square root).

Why not ``torch.optim``: its kernels fuse ``a + alpha * b`` (``add`` with ``alpha``, ``lerp``,
``addcmul``), and the SIMD body of such a kernel may round differently (FMA) from its scalar tail.
Which elements of a parameter tensor fall in the tail depends on the tensor's size, that is on
the number of ensemble members, so an ensemble member would drift by an ulp from the same model
trained alone. With separate correctly rounded operations every element gets the same result
whatever path computes it.
"""

from __future__ import annotations

import math

import torch

__all__ = ["EnsembleAdam", "EnsembleSGD"]


class _Base:
    def __init__(self, groups: list[dict], lr: float):
        self.groups = [
            {"params": list(g["params"]), "weight_decay": g.get("weight_decay", 0.0)}
            for g in groups
        ]
        self.lr = float(lr)
        self.state: dict[int, dict] = {}

    def zero_grad(self) -> None:
        for g in self.groups:
            for p in g["params"]:
                p.grad = None

    @staticmethod
    def _grads(group) -> list[tuple]:
        """``(parameter, gradient + weight_decay * parameter)`` pairs of a group."""
        wd = group["weight_decay"]
        return [
            (p, p.grad + p * wd if wd else p.grad) for p in group["params"] if p.grad is not None
        ]


class EnsembleSGD(_Base):
    """``b <- momentum b + g`` (``b = g`` on the first step), ``p <- p - lr b``, with
    ``g = grad + weight_decay p``."""

    def __init__(self, groups, lr: float, momentum: float = 0.0):
        super().__init__(groups, lr)
        self.momentum = float(momentum)

    @torch.no_grad()
    def step(self) -> None:
        for group in self.groups:
            for p, g in self._grads(group):
                if self.momentum:
                    st = self.state.setdefault(id(p), {})
                    if "buf" not in st:
                        st["buf"] = g.clone()
                    else:
                        st["buf"].mul_(self.momentum).add_(g)
                    g = st["buf"]
                p.sub_(g * self.lr)


class EnsembleAdam(_Base):
    """Adam (``betas``, ``eps`` as ``torch.optim.Adam``) with L2 weight decay on the gradient."""

    def __init__(self, groups, lr: float, betas=(0.9, 0.999), eps: float = 1e-8):
        super().__init__(groups, lr)
        self.b1, self.b2 = betas
        self.eps = float(eps)
        self.t = 0

    @torch.no_grad()
    def step(self) -> None:
        self.t += 1
        c1 = 1 - self.b1**self.t
        c2 = math.sqrt(1 - self.b2**self.t)
        for group in self.groups:
            for p, g in self._grads(group):
                st = self.state.setdefault(id(p), {})
                if "m" not in st:
                    st["m"], st["v"] = torch.zeros_like(p), torch.zeros_like(p)
                m, v = st["m"], st["v"]
                m.mul_(self.b1).add_(g * (1 - self.b1))
                v.mul_(self.b2).add_((g * g).mul_(1 - self.b2))
                denom = (v.sqrt() / c2).add_(self.eps)
                p.sub_((m / denom).mul_(self.lr / c1))
