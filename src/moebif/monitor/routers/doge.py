"""Doge's product-key experts: the block's ``router_gate`` scores ``num_keys`` keys on each of two
axes; the selected experts are the indices the block looks up in its ``down_embed`` embedding
(hooked there), the importance is the product of the two softmaxes."""

from __future__ import annotations

import torch

from .base import Route, RouterAdapter
from .inspection import int_attr

__all__ = ["DogeAdapter", "is_doge"]


def is_doge(module) -> bool:
    return (
        isinstance(module._modules.get("down_embed"), torch.nn.Embedding)
        and isinstance(module._modules.get("router_gate"), torch.nn.Linear)
        and int_attr(module, "num_keys") is not None
        and int_attr(module, "top_k") is not None
    )


class DogeAdapter(RouterAdapter):
    name = "doge"
    layout = (
        "product-key MoE block: indices counted at its down_embed lookup; importance from the "
        "two key softmaxes"
    )

    def match(self, label, module, parent, config) -> Route | None:
        if not is_doge(module):
            return None
        n, k = int_attr(module, "num_experts"), int(module.top_k)
        if n is None or module.num_keys**2 != n:
            return None
        r = Route(label, module, n, k, selection="doge")
        r.scores, r.dispatch = "softmax", module.down_embed
        r.via_dispatch = True  # the lookup runs inside the block, before its output hook
        r.adapter = self.name
        return r
