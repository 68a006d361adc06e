"""Trainable two-expert MoE models of sec. 8.1-8.3, as ensembles with a leading model axis.

Every parameter has shape ``(M, ...)``: member ``m`` of the ensemble is an independent model with
its own seed, and its slice never mixes with the others' (batched matmuls, reductions over the
token axis only). Training the ensemble therefore gives each member bit for bit the parameters it
would get if trained alone (``M = 1``, same seed); :mod:`moebif.nn.train` relies on this.

Shapes: ``M`` models, ``B`` tokens, ``E = 2`` experts; inputs ``x`` are ``(M, B, d_in)``; the skew
``h`` is ``(M,)`` (one value per member, ``b_1 = h/2, b_2 = -h/2``).

- :class:`SoftRouterMoE` (sec. 8.1): ``p_1(x) = sigmoid((alpha x + beta + h) / T)`` and the smooth
  mixture ``y = p_1 f_1 + (1 - p_1) f_2``.
- :class:`HardTop1MoE` (sec. 8.2-8.3): logits ``z = W x (+ c) + (h/2, -h/2)``, the forward pass
  takes the expert ``argmax z``, the backward pass the straight-through estimate
  ``g + p - stopgrad(p)`` with ``p = softmax(z / T)`` (:func:`straight_through`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor, nn

__all__ = [
    "AffineExperts",
    "BottleneckExperts",
    "HardTop1MoE",
    "MoEOutput",
    "SoftRouterMoE",
    "generators",
    "straight_through",
]


def generators(seeds: Sequence[int], stream: int = 0) -> list[torch.Generator]:
    """One ``torch.Generator`` per ensemble member, from ``SeedSequence([seed, stream])``: stream 0
    initialises the parameters, stream 1 draws the minibatches (:mod:`moebif.nn.train`), so the
    two never overlap and depend on the member's own seed only."""
    return [
        torch.Generator().manual_seed(
            int(np.random.SeedSequence([int(s), stream]).generate_state(1, np.uint64)[0])
        )
        for s in seeds
    ]


def _uniform(gens: Sequence[torch.Generator], shape: tuple, fan_in: int) -> Tensor:
    """``(M, *shape)``: member ``m``'s block from its own generator, ``U(-1/sqrt(fan_in),
    1/sqrt(fan_in))`` (the default initialisation of ``torch.nn.Linear``)."""
    bound = fan_in**-0.5
    return torch.stack([(2 * torch.rand(shape, generator=g) - 1) * bound for g in gens])


@dataclass
class MoEOutput:
    """Forward pass of an ensemble.

    ``y``: ``(M, B, d_out)`` model output; ``p``: ``(M, B, 2)`` router probabilities (soft
    importance per token); ``g``: ``(M, B, 2)`` hard one-hot selection (for the soft router the
    side of the boundary, ``p_1 >= 1/2``, used only as a diagnostic)."""

    y: Tensor
    p: Tensor
    g: Tensor


def _affine(bias: Tensor, x: Tensor, W: Tensor) -> Tensor:
    """``bias + x @ W`` batched over members: ``(M, 1, k) + (M, B, d) @ (M, d, k)``.

    For ``d = 1`` as a broadcast product: ``baddbmm`` with a contraction of length one takes a
    different BLAS path for one member than for several on long inputs, which changes the last
    bit; the product and the sum are each correctly rounded on every path."""
    if x.shape[-1] == 1:
        return x * W + bias
    return torch.baddbmm(bias, x, W)


class AffineExperts(nn.Module):
    """``E`` affine experts ``f_e(x) = x A_e + b_e`` per member:
    ``(M, B, d_in) -> (M, E, B, d_out)``.

    Initialised as ``torch.nn.Linear``."""

    def __init__(self, gens, *, d_in=1, d_out=1, n_experts=2):
        super().__init__()
        self.n_experts, self.d_out = n_experts, d_out
        self.A = nn.Parameter(_uniform(gens, (d_in, n_experts * d_out), d_in))
        self.b = nn.Parameter(_uniform(gens, (1, n_experts * d_out), d_in))

    def forward(self, x: Tensor) -> Tensor:
        out = _affine(self.b, x, self.A)  # (M, B, E*d_out)
        return out.unflatten(-1, (self.n_experts, self.d_out)).transpose(1, 2)


class BottleneckExperts(nn.Module):
    """``E`` bottleneck MLPs ``d_in -> d_hidden -> d_out`` (ReLU) per member (sec. 8.3: 64 -> 4 ->
    10): ``(M, B, d_in) -> (M, E, B, d_out)``.

    Both experts are evaluated on every token (two small matmuls for the pair); the router's
    one-hot selection then picks one output, so the result is the hard expert's output exactly.
    Initialisation as ``torch.nn.Linear``: weights and biases ``U(-1/sqrt(fan_in),
    1/sqrt(fan_in))``.
    """

    def __init__(self, gens, *, d_in=64, d_hidden=4, d_out=10, n_experts=2):
        super().__init__()
        self.n_experts, self.d_hidden, self.d_out = n_experts, d_hidden, d_out

        E = n_experts
        self.W1 = nn.Parameter(_uniform(gens, (d_in, E * d_hidden), d_in))
        self.b1 = nn.Parameter(_uniform(gens, (1, E * d_hidden), d_in))
        self.W2 = nn.Parameter(_uniform(gens, (E, d_hidden, d_out), d_hidden))
        self.b2 = nn.Parameter(_uniform(gens, (E, 1, d_out), d_hidden))

    def forward(self, x: Tensor) -> Tensor:
        M, B, _ = x.shape
        E = self.n_experts
        hidden = torch.relu(torch.baddbmm(self.b1, x, self.W1))  # (M, B, E*H)
        hidden = hidden.view(M, B, E, self.d_hidden).transpose(1, 2).reshape(M * E, B, -1)
        out = torch.baddbmm(self.b2.flatten(0, 1), hidden, self.W2.flatten(0, 1))
        return out.view(M, E, B, self.d_out)


def straight_through(z: Tensor, T: float) -> tuple[Tensor, Tensor, Tensor]:
    """Hard top-1 selection between two experts with the straight-through estimate (sec. 8.2).

    ``z``: logits ``(..., 2)``. Returns ``(g_st, g, p)``: ``g = onehot(argmax z)`` (a tie goes to
    expert 1, as ``torch.argmax``), ``p = softmax(z / T)``, ``g_st = g + p - stopgrad(p)``. In the
    forward pass ``g_st == g`` exactly; in the backward pass ``d g_st / d z = d p / d z``.
    For two experts ``softmax(z / T) = (s, 1 - s)`` with ``s = sigmoid((z_1 - z_2) / T)``, which
    is how it is computed (several times faster than ``torch.softmax`` over a last axis of 2)."""
    s = torch.sigmoid((z[..., 0] - z[..., 1]) / T)
    p = torch.stack([s, 1 - s], dim=-1)
    first = (z[..., 0] >= z[..., 1]).to(z.dtype)
    g = torch.stack([first, 1 - first], dim=-1)
    return g + (p - p.detach()), g, p


def _mix(weights: Tensor, f: Tensor) -> Tensor:
    """``weights[..., 0] f_1 + weights[..., 1] f_2`` for weights ``(M, B, 2)`` and expert outputs
    ``f`` ``(M, 2, B, d)``: ``(M, B, d)``."""
    # two products and a sum, each correctly rounded (no fused multiply-add, whose SIMD and scalar
    # paths may round differently; see :mod:`moebif.nn.optim`)
    return weights[..., 0, None] * f[:, 0] + weights[..., 1, None] * f[:, 1]


class SoftRouterMoE(nn.Module):
    """Sec. 8.1: input-dependent soft router over two affine experts, scalar input.

    ``p_1(x) = sigmoid((alpha x + beta + h) / T)``, ``y = p_1 f_1(x) + (1 - p_1) f_2(x)``.
    Router parameters ``alpha, beta`` are ``(M,)``; everything is initialised as
    ``torch.nn.Linear(1, ...)`` (``U(-1, 1)``)."""

    def __init__(self, seeds: Sequence[int], *, T: float = 1.0):
        super().__init__()
        gens = generators(seeds)
        self.T = float(T)
        self.alpha = nn.Parameter(_uniform(gens, (), 1))
        self.beta = nn.Parameter(_uniform(gens, (), 1))
        self.experts = AffineExperts(gens)

    @property
    def n_models(self) -> int:
        return self.alpha.shape[0]

    def router_parameters(self) -> list[nn.Parameter]:
        return [self.alpha, self.beta]

    def forward(self, x: Tensor, h: Tensor) -> MoEOutput:
        s = (self.alpha[:, None] * x[..., 0] + (self.beta + h)[:, None]) / self.T  # (M, B)
        p1 = torch.sigmoid(s)
        f = self.experts(x)  # (M, 2, B, 1)
        p = torch.stack([p1, 1 - p1], -1)
        y = _mix(p, f)
        first = (s >= 0).to(p1.dtype)
        return MoEOutput(y, p, torch.stack([first, 1 - first], -1))

    def boundary(self, h: Tensor) -> Tensor:
        """Learned decision boundary ``x* = -(beta + h) / alpha`` (``p_1 = 1/2``), ``(M,)``."""
        return -(self.beta + h) / self.alpha


class HardTop1MoE(nn.Module):
    """Sec. 8.2-8.3: hard top-1 router ``z = W x (+ c) + (h/2, -h/2)`` with the straight-through
    estimate over a pair of experts (any module ``(M, B, d_in) -> (M, 2, B, d_out)``).

    ``W`` is ``(M, d_in, 2)``; the router bias ``c`` (``(M, 1, 2)``) exists only with
    ``router_bias=True`` (sec. 8.3; the router of sec. 8.2 has none). Both are initialised as
    ``torch.nn.Linear(d_in, 2)``. The expert pair is built by ``make_experts(generators)`` after
    the router, from the same per-member generators."""

    def __init__(
        self,
        seeds: Sequence[int],
        make_experts,
        *,
        d_in: int,
        T: float = 1.0,
        router_bias: bool = False,
    ):
        super().__init__()
        gens = generators(seeds)
        self.T = float(T)
        self.W = nn.Parameter(_uniform(gens, (d_in, 2), d_in))
        self.c = nn.Parameter(_uniform(gens, (1, 2), d_in)) if router_bias else None
        self.experts = make_experts(gens)

    @property
    def n_models(self) -> int:
        return self.W.shape[0]

    def router_parameters(self) -> list[nn.Parameter]:
        return [self.W] + ([self.c] if self.c is not None else [])

    def logits(self, x: Tensor, h: Tensor) -> Tensor:
        """``z = W x (+ c) + (h/2, -h/2)``: ``(M, B, 2)``."""
        skew = torch.stack([h / 2, -h / 2], dim=-1)[:, None, :]
        bias = skew if self.c is None else self.c + skew
        return _affine(bias, x, self.W)

    def forward(self, x: Tensor, h: Tensor) -> MoEOutput:
        g_st, g, p = straight_through(self.logits(x, h), self.T)
        return MoEOutput(_mix(g_st, self.experts(x)), p, g)
