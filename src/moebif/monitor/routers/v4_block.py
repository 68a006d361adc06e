"""transformers-4 sparse MoE blocks (a ``gate`` Linear with ``num_experts`` outputs, ``top_k`` and
``num_experts`` on the block): the gate Linear is hooked and the block's choice is re-derived as
it makes it, top-k of ``softmax(gate(x))`` in float. Blocks that select otherwise (PhiMoE's
sparsemixer, Ernie-4.5's corrected top-k: :data:`NOT_PLAIN_TOPK`) are not matched."""

from __future__ import annotations

import torch

from .base import Route, RouterAdapter
from .inspection import int_attr, is_router_name

__all__ = ["NOT_PLAIN_TOPK", "V4BlockAdapter", "v4_gate"]

# attributes of 4.x sparse MoE blocks that select experts otherwise than top-k of the softmax:
# PhiMoE (sparsemixer, Gumbel sampling in training), Ernie-4.5-MoE (bias-corrected top-k)
NOT_PLAIN_TOPK = ("router_jitter_noise", "moe_statics", "e_score_correction_bias")


def v4_gate(module) -> torch.nn.Linear | None:
    """The ``gate`` Linear of a transformers-4 sparse MoE block (``None``: not such a block)."""
    gate = module._modules.get("gate")
    if not isinstance(gate, torch.nn.Linear) or is_router_name(gate) or is_router_name(module):
        return None
    n, k = int_attr(module, "num_experts"), int_attr(module, "top_k")
    if n is None or k is None or k > n or getattr(gate, "out_features", None) != n:
        return None
    if any(hasattr(module, a) for a in NOT_PLAIN_TOPK):
        return None
    return gate


class V4BlockAdapter(RouterAdapter):
    name = "transformers4-block"
    layout = "sparse MoE block: its gate Linear hooked, top-k of softmax(gate(x)) as it selects"
    hooks_itself = False

    def match(self, label, module, parent, config) -> Route | None:
        gate = v4_gate(module)
        if gate is None:
            return None
        glabel = f"{label}.gate" if label else "gate"
        r = Route(glabel, gate, int(module.num_experts), int(module.top_k))
        r.selection, r.scores = "v4gate", "softmax"
        r.adapter = self.name
        return r

    def inside(self, name: str) -> str:
        return f"{name}.gate."
