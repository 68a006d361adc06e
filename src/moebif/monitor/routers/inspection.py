"""What the router adapters read off a module: N and k from its attributes (or its config), its
class name, how it scores (softmax, sigmoid, or its own score function; read off its attributes,
else off the source of its ``forward``), and the ``experts`` module of its block that takes the
selected indices. Shared by the adapters of :mod:`moebif.monitor.routers`."""

from __future__ import annotations

import inspect
import re
from collections.abc import Callable

import torch

__all__ = [
    "config_k",
    "experts_dispatch",
    "int_attr",
    "is_index",
    "is_router_name",
    "linear_child",
    "router_k",
    "router_n",
    "scoring",
    "source_text",
]

N_ATTRS = ("n_routed_experts", "num_experts", "num_local_experts", "moe_num_experts")
K_ATTRS = (
    "top_k",
    "num_experts_per_tok",
    "moe_topk",
    "moe_top_k",
    "top_k_experts",
    "num_experts_per_token",
    "moe_k",
)
CONFIG_K = (
    "num_experts_per_tok",
    "top_k_experts",
    "moe_topk",
    "moe_top_k",
    "num_experts_per_token",
    "moe_k",
    "top_k",
)


def int_attr(module, name: str) -> int | None:
    v = getattr(module, name, None)
    return v if isinstance(v, int) and not isinstance(v, bool) and v > 0 else None


def is_index(t) -> bool:
    return isinstance(t, torch.Tensor) and not (
        t.is_floating_point() or t.is_complex() or t.dtype == torch.bool
    )


def linear_child(module) -> torch.nn.Linear | None:
    lin = [c for c in module.children() if isinstance(c, torch.nn.Linear)]
    return lin[0] if len(lin) == 1 else None


def config_k(config) -> int | None:
    for cfg in (config, getattr(config, "text_config", None), getattr(config, "ffn_config", None)):
        if cfg is None:
            continue
        for a in CONFIG_K:
            v = int_attr(cfg, a)
            if v is not None:
                return v
    return None


def router_n(module) -> int | None:
    for a in N_ATTRS:
        v = int_attr(module, a)
        if v is not None:
            return v
    w = getattr(module, "weight", None)
    if isinstance(w, torch.Tensor) and w.ndim == 2:
        return int(w.shape[0])
    lin = linear_child(module)
    return None if lin is None else int(lin.out_features)


def router_k(module, parent, config) -> int | None:
    for obj in (module, parent):
        if obj is None:
            continue
        for a in K_ATTRS:
            v = int_attr(obj, a)
            if v is not None:
                return v
    m = re.search(r"Top(\d+)", type(module).__name__)
    if m:
        return int(m.group(1))
    return None if config is None else config_k(config)


def is_router_name(module) -> bool:
    name = type(module).__name__
    return bool(re.search(r"(Router|Gate|Gating)$", name)) or name.lower().endswith("router")


def source_text(fn) -> str:
    """Source of ``fn`` without comments and docstrings ('' when unavailable)."""
    try:
        src = inspect.getsource(fn)
    except (OSError, TypeError):
        return ""
    src = re.sub(r'("""|\'\'\')(.|\n)*?\1', "", src)
    return "\n".join(line.split("#", 1)[0] for line in src.splitlines())


SIGMOIDS = ("sigmoid", "sigmoidactivation")


def scoring(router, parent) -> tuple[str | None, Callable | None, bool]:
    """``(name, score function, scores_already_probabilities)`` for the importance: how the
    router turns its logits into per-token selection probabilities (``None``: unknown)."""
    for a in ("score_fn", "scoring_function"):
        f = getattr(router, a, None)
        if callable(f):
            name = type(f).__name__.lower()
            if name in SIGMOIDS or isinstance(f, torch.nn.Sigmoid):
                return "sigmoid", torch.sigmoid, False
            return name.removesuffix("activation"), f, False
    sel = getattr(router, "expert_selection_fn", None) or getattr(router, "scoring_func", None)
    if sel in ("softmax", "sigmoid"):
        return sel, None, False
    src = source_text(type(router).forward)
    ret = [line.strip() for line in src.splitlines() if line.strip().startswith("return")]
    first = ret[-1][len("return") :].strip().split(",")[0].strip("( ") if ret else ""
    if not re.search(r"softmax|sigmoid", src):
        src = source_text(type(router))  # a helper method scores (NLLB's route_tokens)
    if not re.search(r"softmax|sigmoid", src) and parent is not None:
        src = source_text(type(parent))  # the block that scores a logits-only router (DBRX)
    sm, sg = "softmax" in src, "sigmoid" in src
    if sm and not sg:
        return "softmax", None, "prob" in first
    if sg and not sm:
        return "sigmoid", None, False
    return None, None, False


def experts_dispatch(parent) -> torch.nn.Module | None:
    """The ``experts`` child of a MoE block whose forward takes the selected indices
    (``forward(hidden_states, top_k_index, top_k_weights)``), if any."""
    ex = None if parent is None else parent._modules.get("experts")
    if ex is None:
        return None
    try:
        params = list(inspect.signature(ex.forward).parameters)
    except (TypeError, ValueError):
        return None
    return ex if len(params) >= 2 and re.search(r"index|indices|selected", params[1]) else None
