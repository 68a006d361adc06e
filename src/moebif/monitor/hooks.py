"""PyTorch hooks: count the experts each MoE router selects during training and monitor them.

    from moebif.torch import RouterMonitor
    monitor = RouterMonitor(model, log="router_log.jsonl")   # finds the routers
    ...; optimizer.step(); monitor.step()                    # once per training step

:class:`RouterMonitor` finds the routers of Hugging Face transformers MoE models (every MoE family
of transformers 5.x, the 4.x layouts) and any module the user names, counts the experts they
select while the module is in training mode, sums the counts (and the router's soft importance)
over the forward calls of a step (micro-batches), and on :meth:`RouterMonitor.step` feeds them to
one :class:`moebif.monitor.LayerMonitor` per router and appends them to the log
(:class:`moebif.monitor.logs.LogWriter`, the format ``moebif diagnose`` reads).

**What is counted.** The experts the router *selected*, read from its own output, never re-derived
from scores where the router returns its choice (DeepSeek-V3's correction bias, group-limited
routing, PhiMoE's sampled routing and hash routing change the selection):

- an integer tensor of shape ``(..., k)`` in the router's output: the indices (transformers 5.x
  ``...Router`` / ``...Gate`` modules returning ``(logits, weights, indices)``; 4.x routers
  returning ``(indices, weights)``);
- a one-hot or dispatch mask (integer or bool, ``(..., N)``: Switch Transformers' capacity mask)
  or, by name, a dense gate matrix whose nonzeros are the dispatch (NLLB-MoE's combine weights);
- for a router that returns only scores: the indices its MoE block passes to its ``experts``
  module (DBRX), else top-k of the scores as the router takes them (Llama-4, JetMoE);
- Doge's product-key experts: the indices its block looks up in its expert embeddings;
- transformers-4 sparse MoE blocks (``gate`` Linear + ``top_k`` + ``num_experts``): top-k of
  ``softmax(gate(x))``, as the block selects.

**Router logits.** With ``importance`` on, the hooks also sum the router's logits (its scores
before softmax or sigmoid, first N columns) over the step's tokens, with the token count: their
mean per expert is passed to :meth:`LayerMonitor.update` as ``scores`` (the feedback estimator's
response variable, :mod:`moebif.monitor.feedback`) and logged as ``"scores"``. A router whose
output holds probabilities only gives no logits (the header says ``"scores": false``).

Index N (the "skip slot" that transformers' experts accept) and -1 count as ``dropped``; any
other index outside ``[0, N)`` is an error naming the layer (raised by :meth:`~RouterMonitor.step`:
the hook itself never reads the device). With the Switch/NLLB capacity masks, assignments beyond
an expert's capacity count as dropped too.

**On the device, without host syncs.** Each router adds into a fixed slice of one float64 buffer
per device (``index_add_`` on a fixed-size slice, one-hot and mask sums; never ``bincount``, whose
output size is data-dependent): per layer ``[invalid | -1 | e_0..e_{N-1} | skip | invalid |
importance_0..importance_{N-1} | logit sums | tokens with logits]``.
:meth:`~RouterMonitor.step` makes one transfer per device (``non_blocking``; on CUDA read at the
next :meth:`~RouterMonitor.step`, so the host never waits for the GPU) for all layers, optionally
every ``sync_every`` steps. On the host a step costs O(N) per layer; the monitors' refits run on
a worker thread and are concluded ``refit_lag`` steps later (a ``monitor_options`` entry,
default 8: see :mod:`moebif.monitor.monitor`), so :meth:`~RouterMonitor.step` waits for a fit
only where that many training steps take less time than the fit (tens of ms at N = 256).

**Distributed.** With ``torch.distributed`` initialised, the buffer is summed over ``group``
(default: the world) with one ``all_reduce`` per transfer before any monitor sees it: every rank
feeds the same counts to the same monitors and raises the same alarms; only rank 0 of ``group``
writes the log. Labels drop the ``module.`` of DDP / DataParallel and the wrapper names of FSDP,
activation checkpointing and ``torch.compile``.

**Gradient checkpointing.** A forward re-run inside the backward pass (reentrant or not) is not
counted (the hooks skip calls made while the autograd engine runs a backward pass).
"""

from __future__ import annotations

import inspect
import math
import re
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from .force_probe import ForceProbe, aux_coefficient, optimizer_record
from .forces import FORCE_FIELDS
from .monitor import Alarm, LayerMonitor

__all__ = ["RouterIndexError", "RouterMonitor", "clean_label", "find_routers"]

# attributes of 4.x sparse MoE blocks that select experts otherwise than top-k of the softmax:
# PhiMoE (sparsemixer, Gumbel sampling in training), Ernie-4.5-MoE (bias-corrected top-k)
_NOT_PLAIN_TOPK = ("router_jitter_noise", "moe_statics", "e_score_correction_bias")
# wrapper components dropped from labels (FSDP 1, activation checkpointing, torch.compile)
_WRAPPERS = frozenset({"_fsdp_wrapped_module", "_checkpoint_wrapped_module", "_orig_mod"})
_N_ATTRS = ("n_routed_experts", "num_experts", "num_local_experts", "moe_num_experts")
_K_ATTRS = (
    "top_k",
    "num_experts_per_tok",
    "moe_topk",
    "moe_top_k",
    "top_k_experts",
    "num_experts_per_token",
    "moe_k",
)
_CONFIG_K = (
    "num_experts_per_tok",
    "top_k_experts",
    "moe_topk",
    "moe_top_k",
    "num_experts_per_token",
    "moe_k",
    "top_k",
)
SELECTIONS = ("auto", "indices", "mask", "gates", "dispatch", "topk")


class RouterIndexError(ValueError):
    """A router selected an expert index outside ``[0, N)``, other than the skip slot N or -1."""


# --------------------------------------------------------------------------------------------
# labels


def _finite_or_none(x) -> float | None:
    try:
        x = float(x)
    except (TypeError, ValueError):
        return None
    return x if math.isfinite(x) else None


def clean_label(name: str) -> str:
    """A module name without the components added by wrappers (FSDP's
    ``_fsdp_wrapped_module``, ``_checkpoint_wrapped_module``, ``torch.compile``'s ``_orig_mod``)."""
    return ".".join(p for p in name.split(".") if p not in _WRAPPERS)


def _unwrap(model: torch.nn.Module) -> torch.nn.Module:
    """The model inside DistributedDataParallel / DataParallel wrappers."""
    from torch.nn.parallel import DataParallel, DistributedDataParallel

    while isinstance(model, DistributedDataParallel | DataParallel):
        model = model.module
    return model


# --------------------------------------------------------------------------------------------
# detection


def _int_attr(module, name: str) -> int | None:
    v = getattr(module, name, None)
    return v if isinstance(v, int) and not isinstance(v, bool) and v > 0 else None


def _is_index(t) -> bool:
    return isinstance(t, torch.Tensor) and not (
        t.is_floating_point() or t.is_complex() or t.dtype == torch.bool
    )


def _linear_child(module) -> torch.nn.Linear | None:
    lin = [c for c in module.children() if isinstance(c, torch.nn.Linear)]
    return lin[0] if len(lin) == 1 else None


def _config_k(config) -> int | None:
    for cfg in (config, getattr(config, "text_config", None), getattr(config, "ffn_config", None)):
        if cfg is None:
            continue
        for a in _CONFIG_K:
            v = _int_attr(cfg, a)
            if v is not None:
                return v
    return None


def _router_n(module) -> int | None:
    for a in _N_ATTRS:
        v = _int_attr(module, a)
        if v is not None:
            return v
    w = getattr(module, "weight", None)
    if isinstance(w, torch.Tensor) and w.ndim == 2:
        return int(w.shape[0])
    lin = _linear_child(module)
    return None if lin is None else int(lin.out_features)


def _router_k(module, parent, config) -> int | None:
    for obj in (module, parent):
        if obj is None:
            continue
        for a in _K_ATTRS:
            v = _int_attr(obj, a)
            if v is not None:
                return v
    m = re.search(r"Top(\d+)", type(module).__name__)
    if m:
        return int(m.group(1))
    return None if config is None else _config_k(config)


def _is_router_name(module) -> bool:
    name = type(module).__name__
    return bool(re.search(r"(Router|Gate|Gating)$", name)) or name.lower().endswith("router")


def _source(fn) -> str:
    """Source of ``fn`` without comments and docstrings ('' when unavailable)."""
    try:
        src = inspect.getsource(fn)
    except (OSError, TypeError):
        return ""
    src = re.sub(r'("""|\'\'\')(.|\n)*?\1', "", src)
    return "\n".join(line.split("#", 1)[0] for line in src.splitlines())


_SIGMOIDS = ("sigmoid", "sigmoidactivation")


def _scoring(router, parent) -> tuple[str | None, Callable | None, bool]:
    """``(name, score function, scores_already_probabilities)`` for the importance: how the
    router turns its logits into per-token selection probabilities (``None``: unknown)."""
    for a in ("score_fn", "scoring_function"):
        f = getattr(router, a, None)
        if callable(f):
            name = type(f).__name__.lower()
            if name in _SIGMOIDS or isinstance(f, torch.nn.Sigmoid):
                return "sigmoid", torch.sigmoid, False
            return name.removesuffix("activation"), f, False
    sel = getattr(router, "expert_selection_fn", None) or getattr(router, "scoring_func", None)
    if sel in ("softmax", "sigmoid"):
        return sel, None, False
    src = _source(type(router).forward)
    ret = [line.strip() for line in src.splitlines() if line.strip().startswith("return")]
    first = ret[-1][len("return") :].strip().split(",")[0].strip("( ") if ret else ""
    if not re.search(r"softmax|sigmoid", src):
        src = _source(type(router))  # a helper method scores (NLLB's route_tokens)
    if not re.search(r"softmax|sigmoid", src) and parent is not None:
        src = _source(type(parent))  # the block that scores a logits-only router (DBRX)
    sm, sg = "softmax" in src, "sigmoid" in src
    if sm and not sg:
        return "softmax", None, "prob" in first
    if sg and not sm:
        return "sigmoid", None, False
    return None, None, False


def _experts_dispatch(parent) -> torch.nn.Module | None:
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


def _v4_gate(module) -> torch.nn.Linear | None:
    """The ``gate`` Linear of a transformers-4 sparse MoE block (``None``: not such a block)."""
    gate = module._modules.get("gate")
    if not isinstance(gate, torch.nn.Linear) or _is_router_name(gate) or _is_router_name(module):
        return None
    n, k = _int_attr(module, "num_experts"), _int_attr(module, "top_k")
    if n is None or k is None or k > n or getattr(gate, "out_features", None) != n:
        return None
    if any(hasattr(module, a) for a in _NOT_PLAIN_TOPK):
        return None
    return gate


def _is_doge(module) -> bool:
    return (
        isinstance(module._modules.get("down_embed"), torch.nn.Embedding)
        and isinstance(module._modules.get("router_gate"), torch.nn.Linear)
        and _int_attr(module, "num_keys") is not None
        and _int_attr(module, "top_k") is not None
    )


class _Route:
    """How one router is counted: where the hooks go and how its output is read."""

    __slots__ = (
        "label",
        "module",
        "n",
        "k",
        "selection",
        "indices",
        "scores",
        "score_fn",
        "probabilities",
        "router_class",
        "dispatch",
        "via_dispatch",
        "error",
        "offset",
        "buf",
        "probe",
    )

    def __init__(self, label, module, n, k, *, selection="auto", indices=None, router_class=""):
        self.label, self.module, self.n, self.k = label, module, n, k
        self.selection = selection  # one of SELECTIONS, or "v4gate", "doge"
        self.indices = indices  # user function: output -> selection tensor
        self.scores = None  # "softmax", "sigmoid", ... or None: no importance
        self.score_fn = None  # callable for other score functions
        self.probabilities = False  # the router's score output is probabilities already
        self.router_class = router_class or type(module).__name__
        self.dispatch = None  # experts module whose input holds the selection (DBRX)
        self.via_dispatch = False  # the router output had no selection: count at `dispatch`
        self.error = None  # first error seen in a hook, raised by step()
        self.offset = 0
        self.buf = None
        self.probe = None  # ForceProbe when the forces are measured

    def spec(self, importance: bool) -> dict:
        imp = bool(importance and self.scores is not None)
        return {
            "n_experts": self.n,
            "top_k": self.k,
            "router_class": self.router_class,
            "importance": imp,
            "probabilities": self.scores,
            "scores": imp and not self.probabilities,
        }


def _route_for(label, module, parent, config) -> _Route | None:
    """The route of ``module`` if it is a router moebif recognises (``None`` otherwise)."""
    if _is_doge(module):
        n, k = _int_attr(module, "num_experts"), int(module.top_k)
        if n is None or module.num_keys**2 != n:
            return None
        r = _Route(label, module, n, k, selection="doge")
        r.scores, r.dispatch = "softmax", module.down_embed
        r.via_dispatch = True  # the lookup runs inside the block, before its output hook
        return r
    if _is_router_name(module):
        name = type(module).__name__
        gate_like = not name.lower().endswith("router")
        if gate_like and _int_attr(module, "top_k") is None:
            return None  # ForgetGate, MessageGate, ...: not routers
        n, k = _router_n(module), _router_k(module, parent, config)
        if n is None or k is None or not 1 <= k < n:
            return None
        sel = "gates" if re.search(r"Nllb\w*Top2Router$", name) else "auto"
        r = _Route(label, module, n, k, selection=sel)
        r.scores, r.score_fn, r.probabilities = _scoring(module, parent)
        r.dispatch = _experts_dispatch(parent)
        return r
    return None


def _find(model: torch.nn.Module) -> dict[str, _Route]:
    root = _unwrap(model)
    config = getattr(root, "config", None)
    modules = list(root.named_modules())
    parents = {}
    for _, m in modules:
        for child in m.children():
            parents.setdefault(id(child), m)
    routes: dict[str, _Route] = {}
    inside: tuple[str, ...] = ()
    for name, m in modules:  # in model order
        if inside and name.startswith(inside):
            continue  # never inside a router (counted already by its own output)
        label = clean_label(name)
        r = _route_for(label, m, parents.get(id(m)), config)
        if r is not None:
            routes[label] = r
            inside = (*inside, f"{name}.")
        elif (gate := _v4_gate(m)) is not None:
            glabel = f"{label}.gate" if label else "gate"
            routes[glabel] = _Route(glabel, gate, int(m.num_experts), int(m.top_k))
            routes[glabel].selection, routes[glabel].scores = "v4gate", "softmax"
            inside = (*inside, f"{name}.gate.")
    return routes


def find_routers(model: torch.nn.Module) -> dict[str, torch.nn.Module]:
    """``{label: hooked module}`` of the MoE routers of ``model`` (see the module docstring):
    labels are module names without wrapper components, the same with and without DDP/FSDP."""
    return {label: r.module for label, r in _find(model).items()}


# --------------------------------------------------------------------------------------------
# the hooks' device work (no host reads: fixed-size slices, no data-dependent shapes)


def _in_backward() -> bool:
    """True while the autograd engine runs a backward pass: a forward called then is the
    recomputation of gradient checkpointing."""
    f = getattr(torch._C, "_current_graph_task_id", None)
    return f is not None and f() != -1


# a router's slice of the device buffer: [invalid < -1 | -1 | e_0 .. e_{N-1} | skip slot N |
# invalid > N | importance_0 .. importance_{N-1} | logit sum_0 .. logit sum_{N-1} | tokens with
# logits]: 3N + 5 values. Every selected index (or mask entry, or unassigned slot of a mask)
# lands in one of the first N + 4, so their sum is k x the tokens routed; the importance rows sum
# to 1, so their sum is the tokens scored; the logits are summed with their token count, so
# ranks add up (all-reduce) before the mean is taken. Then the FORCE_FIELDS sums of the force
# probe (moebif.monitor.forces): 3N + 5 + FORCE_FIELDS values.
_WIDTH = 4


def _seg_size(n: int) -> int:
    return 3 * n + _WIDTH + 1 + FORCE_FIELDS


def _force_slots(n: int) -> slice:
    return slice(3 * n + _WIDTH + 1, 3 * n + _WIDTH + 1 + FORCE_FIELDS)


def _ones(seg: torch.Tensor, numel: int) -> torch.Tensor:
    return torch.ones(1, dtype=seg.dtype, device=seg.device).expand(numel)


def _add_indices(seg: torch.Tensor, idx: torch.Tensor, n: int) -> None:
    """Add selected indices: one fixed-size ``index_add_``, no data-dependent shape."""
    b = idx.detach().reshape(-1).long()
    b = (b + 2).clamp_(0, n + 3)  # < -1 -> 0, -1 -> 1, e -> e + 2, N -> N + 2, > N -> N + 3
    seg[: n + 4].index_add_(0, b, _ones(seg, b.numel()))


def _add_mask(seg: torch.Tensor, mask: torch.Tensor, n: int, k: int, *, dispatch=False) -> None:
    """A one-hot / dispatch mask ``(..., N)`` (``dispatch``: ``(T, N, capacity)``) or a dense
    gate matrix (nonzero = dispatched): counts per expert; the unassigned of ``k`` per token go
    to the skip slot (dropped); entries other than 0/1 are invalid."""
    m = mask.detach()
    tokens = m.shape[0] if dispatch else m.numel() // n
    if dispatch:
        m = m.reshape(m.shape[0], n, -1).transpose(1, 2)
    m = m.reshape(-1, n)
    if m.is_floating_point():
        m = m != 0
    m = m.to(seg.dtype)
    c = m.sum(0)
    seg[2 : n + 2] += c
    seg[n + 2] += k * tokens - c.sum()  # dropped (beyond capacity)
    seg[n + 3] += ((m != 0) & (m != 1)).sum()


def _add_importance(seg: torch.Tensor, p: torch.Tensor, n: int) -> None:
    """Add per-token probabilities ``(T, N)`` (rows sum to 1) into the importance slots."""
    seg[n + _WIDTH : 2 * n + _WIDTH] += p.sum(0)


def _add_logits(seg: torch.Tensor, logits: torch.Tensor, n: int) -> None:
    """Add per-token router logits ``(T, N)`` (summed in float64) and their token count."""
    seg[2 * n + _WIDTH : 3 * n + _WIDTH] += logits.sum(0, dtype=seg.dtype)
    seg[3 * n + _WIDTH] += logits.shape[0]


def _logits(route: _Route, scores: torch.Tensor) -> torch.Tensor | None:
    """The router's pre-softmax (pre-sigmoid) logits ``(T, N)`` from its score output, or
    ``None`` when that output is probabilities already."""
    if route.probabilities:
        return None
    s = scores.detach()
    return s.reshape(-1, s.shape[-1])[:, : route.n]


def _probabilities(route: _Route, scores: torch.Tensor) -> torch.Tensor:
    n = route.n
    s = scores.detach().float()
    s = s.reshape(-1, s.shape[-1])
    if route.probabilities:
        p = s
    elif route.scores == "softmax":
        p = torch.softmax(s, dim=-1)
    elif route.scores == "sigmoid":
        p = torch.sigmoid(s)
    else:
        p = route.score_fn(s)
    p = p[:, :n]
    if route.scores != "softmax" or s.shape[-1] != n or route.probabilities:
        p = p / p.sum(-1, keepdim=True).clamp_min(1e-30)  # per-token normalisation to sum 1
    return p


def _tensors(output):
    return list(output) if isinstance(output, tuple | list) else [output]


def _select(route: _Route, output):
    """``(kind, tensor)``: ``kind`` in ``"indices"``, ``"mask"``, ``"gates"``, ``"dispatch"``,
    ``"topk"``, or ``(None, None)`` when the output holds no selection."""
    n, k = route.n, route.k
    if route.indices is not None:
        t = route.indices(output)
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"indices: returned {type(t).__name__}, need a tensor")
        outs = [t]
    else:
        outs = [t for t in _tensors(output) if isinstance(t, torch.Tensor)]
    sel = route.selection
    if sel == "gates":
        floats = [t for t in outs if t.is_floating_point() and t.shape[-1] == n]
        return ("gates", floats[0]) if floats else (None, None)
    if sel in ("indices", "mask", "dispatch", "topk"):
        return sel, outs[-1] if sel != "topk" else _last_scores(outs, n)
    ints = [t for t in outs if _is_index(t) or t.dtype == torch.bool]
    idx = [
        t
        for t in ints
        if t.dtype != torch.bool
        and ((t.ndim >= 2 and t.shape[-1] == k) or (t.ndim == 1 and k == 1))
    ]
    if idx:
        return "indices", idx[-1]
    masks = [t for t in ints if t.ndim >= 2 and t.shape[-1] == n]
    if masks:
        return "mask", masks[-1]
    if route.indices is not None and ints:
        return "indices", ints[-1]
    scores = _last_scores(outs, n)
    return ("topk", scores) if scores is not None else (None, None)


def _last_scores(outs, n):
    floats = [t for t in outs if t.is_floating_point() and t.ndim >= 1 and t.shape[-1] == n]
    return floats[-1] if floats else None


def _first_scores(outs, n):
    """The router's scores: the first float output with at least N columns (logits or
    probabilities, possibly with a skip column)."""
    for t in outs:
        if isinstance(t, torch.Tensor) and t.is_floating_point() and t.ndim >= 1:
            if n <= t.shape[-1] <= n + 1:
                return t
    return None


# --------------------------------------------------------------------------------------------
# the monitor


class RouterMonitor:
    """Count routed experts per layer and step, monitor them, log them.

    **Arguments:**

    - ``model``: the model (DDP/DataParallel wrappers are looked through); its routers are found
      by :func:`find_routers`.
    - ``modules``: extra or replacement routers: names (of ``model.named_modules()``) or a dict
      ``{label: module}``. A named module moebif recognises is counted as :func:`find_routers`
      counts it; otherwise its output is read by ``selection`` (or ``indices``).
    - ``indices``: ``output -> tensor`` of the selection (indices of any shape, or a mask) for
      the named modules (without ``modules``: for the routers found).
    - ``selection``: how the named modules' output (or ``indices``' result) is read:
      ``"auto"`` (an integer tensor ``(..., k)``: indices; integer/bool ``(..., N)``: a one-hot
      mask; else top-k of float scores ``(..., N)``), ``"indices"``, ``"mask"``,
      ``"dispatch"`` (``(T, N, capacity)``), ``"gates"`` (dense gate matrix, nonzero =
      dispatched), ``"topk"``.
    - ``n_experts``, ``top_k``: when a named module does not carry them.
    - ``log``: path of the JSONL log to append to (``None``: no log); only rank 0 of ``group``
      writes it. ``log_max_bytes``: rotate the log before it passes this size (``None``:
      never); ``log_backups``: rotated files kept (``log.1`` .. ``log.K``; 0: keep only the
      current file). ``moebif diagnose`` reads the rotated set.
    - ``history``: recent steps of counts kept per layer for :meth:`counts` (``None``: all;
      0: none); also passed to each :class:`~moebif.monitor.LayerMonitor` (its fits and block
      records) unless given in ``monitor_options``. Memory is then bounded whatever the run
      length.
    - ``importance``: record the router's soft importance and its mean logits when its output
      has the scores.
    - ``sync_every``: steps between transfers of the counts to the host (and between the
      monitors' updates: alarms arrive up to ``sync_every - 1`` steps late).
    - ``group``: the ``torch.distributed`` process group the counts are summed over (default:
      the world when ``torch.distributed`` is initialised); ``distributed=False`` turns the
      reduction off.
    - ``forces``: measure the forces on the routers' logits in the backward pass (the
      language model's reinforcement against the aux loss's restoring force,
      :mod:`moebif.monitor.forces`), which give the stability margin, the critical coefficient
      and the forecast. On by default; the routers whose logits carry no gradient (or whose
      scores are not softmax logits of a weight matrix) go without.
    - ``aux_coef``: the balancing coefficient in force, a number or ``() -> float`` read at every
      forward (default: the model's ``router_aux_loss_coef``, 0 when the model does not add its
      aux loss).
    - ``optimizer``: optional; its Adam second moment of each router's weight normalises the
      forces (otherwise the probe keeps its own, with Adam's ``beta2``).
    - ``**monitor_options``: passed to every :class:`~moebif.monitor.LayerMonitor`
      (``window``, ``threshold``, ...).
    """

    def __init__(
        self,
        model: torch.nn.Module,
        *,
        modules=None,
        indices: Callable | None = None,
        selection: str = "auto",
        n_experts: int | None = None,
        top_k: int | None = None,
        log=None,
        log_max_bytes: int | None = None,
        log_backups: int = 3,
        history: int | None = 256,
        importance: bool = True,
        sync_every: int = 1,
        group=None,
        distributed: bool | None = None,
        forces: bool = True,
        aux_coef=None,
        optimizer=None,
        **monitor_options,
    ):
        if selection not in SELECTIONS:
            raise ValueError(f"selection: one of {', '.join(SELECTIONS)}, got {selection!r}")
        if int(sync_every) < 1:
            raise ValueError(f"sync_every: need >= 1, got {sync_every}")
        if history is not None and int(history) < 0:
            raise ValueError(f"history: need >= 0 or None, got {history}")
        root = _unwrap(model)
        self.model_class = type(root).__name__
        routes = _find(root) if modules is None or not isinstance(modules, dict) else {}
        if modules is None and indices is not None:
            for r in routes.values():
                if r.selection == "auto":
                    r.indices = indices
        if modules is not None:
            routes.update(self._named(root, modules, indices, selection, n_experts, top_k, routes))
        if not routes:
            raise ValueError("model: no MoE router found; name the router modules with modules=")
        for r in routes.values():
            if r.n is None:
                raise ValueError(f"n_experts: cannot tell the number of experts of {r.label!r}")
            if r.k is None or not 1 <= r.k < r.n:
                raise ValueError(f"top_k: need 1 <= k < N = {r.n} for {r.label!r}, got {r.k}")
        self._routes = routes
        self.routers = {label: r.module for label, r in routes.items()}
        self.importance = bool(importance)
        self.sync_every = int(sync_every)
        self.history = None if history is None else int(history)
        opts = dict(monitor_options)
        if self.history is not None and "history" not in opts:
            opts["history"] = max(1, self.history)
        self.monitor_options = opts
        self.monitors: dict[str, LayerMonitor] = {
            label: LayerMonitor(r.n, top_k=r.k, name=label, **opts) for label, r in routes.items()
        }
        self.step_index = 0  # steps fed to the monitors (with a training forward pass)
        self.segment = 0  # run segment of the log (increased by load_state_dict)
        self._reset_history()
        # distributed
        self.group = group
        self._dist = self._dist_on(distributed)
        self._rank = self._group_rank()
        # device buffers: one flat float64 buffer per device, a fixed slice per router
        self._layout: dict[torch.device, list[_Route]] = {}
        self._bufs: dict[torch.device, torch.Tensor] = {}
        self._ring: dict[torch.device, torch.Tensor] = {}
        self._slot = 0  # steps held in the rings since the last transfer
        self._pending = None  # (host tensors per device, event or None, slots)
        for r in routes.values():
            dev = _device_of(r.module)
            self._layout.setdefault(dev, []).append(r)
        for dev, rs in self._layout.items():
            off = 0
            for r in rs:
                r.offset = off
                off += _seg_size(r.n)
            self._bufs[dev] = torch.zeros(off, dtype=torch.float64, device=dev)
            for r in rs:
                r.buf = self._bufs[dev][r.offset : r.offset + _seg_size(r.n)]
            if self.sync_every > 1:
                self._ring[dev] = torch.zeros(
                    (self.sync_every, off), dtype=torch.float64, device=dev
                )
        self._defer = any(d.type == "cuda" for d in self._bufs)
        self.forces = bool(forces)
        if aux_coef is None:
            coef = aux_coefficient(root)
        elif callable(aux_coef):
            coef = aux_coef
        else:
            c0 = float(aux_coef)
            if not math.isfinite(c0):
                raise ValueError(f"aux_coef: need a finite number or a callable, got {aux_coef!r}")

            def coef():
                return c0

        self._run_info = {
            "optimizer": optimizer_record(optimizer),
            "aux": {
                "coefficient": _finite_or_none(coef()),
                "variant": "hf",
                "pooled_layers": len(routes),
            },
        }
        self._pool_cache: dict = {}
        if self.forces:
            for r in routes.values():
                if r.scores == "softmax" and not r.probabilities and r.selection != "doge":
                    mod = r.module
                    r.probe = ForceProbe(
                        mod, r.n, r.k, r.buf[_force_slots(r.n)], r.buf[2 : r.n + 2],
                        self._pool_for(r), coef, optimizer,
                    )  # fmt: skip
                    if not r.probe.ok:
                        r.probe = None
        self._handles = []
        self.attach()
        # the log (opened on the first step, after a possible load_state_dict)
        self.log_path = None if log is None else Path(log)
        if self.log_path is not None and self.log_path.is_dir():
            raise ValueError(f"log: {str(self.log_path)!r} is a directory, not a file")
        self.log_max_bytes = log_max_bytes
        self.log_backups = int(log_backups)
        if log_max_bytes is not None and int(log_max_bytes) < 4096:
            raise ValueError(f"log_max_bytes: need >= 4096 bytes or None, got {log_max_bytes}")
        if self.log_backups < 0:
            raise ValueError(f"log_backups: need >= 0, got {log_backups}")
        self._writer = None

    # ----------------------------------------------------------------------------------------
    # construction helpers

    @staticmethod
    def _named(root, modules, indices, selection, n_experts, top_k, found) -> dict[str, _Route]:
        if isinstance(modules, dict):
            named = {str(k): v for k, v in modules.items()}
        else:
            all_named = dict(root.named_modules())
            named = {}
            for nm in [modules] if isinstance(modules, str) else modules:
                if nm not in all_named:
                    raise ValueError(f"modules: no module named {nm!r} in the model")
                named[clean_label(nm)] = all_named[nm]
        config = getattr(root, "config", None)
        parents = {id(c): m for m in root.modules() for c in m.children()}
        gates = {id(g): m for m in root.modules() if (g := _v4_gate(m)) is not None}
        out = {}
        for label, mod in named.items():
            if not isinstance(mod, torch.nn.Module):
                raise ValueError(f"modules: {label!r} is not a torch module")
            if indices is None and selection == "auto":
                r = _route_for(label, mod, parents.get(id(mod)), config)
                block = mod if _v4_gate(mod) is not None else gates.get(id(mod))
                if r is None and block is not None:  # a 4.x block or its gate Linear
                    r = _Route(label, _v4_gate(block), int(block.num_experts), int(block.top_k))
                    r.selection, r.scores = "v4gate", "softmax"
                if r is not None:
                    out[label] = r
                    continue
            n = _router_n(mod) or n_experts
            k = _router_k(mod, parents.get(id(mod)), None) or top_k
            r = _Route(label, mod, n, k, selection=selection, indices=indices)
            r.scores, r.score_fn, r.probabilities = _scoring(mod, parents.get(id(mod)))
            out[label] = r
        return out

    def _reset_history(self) -> None:
        """Recent counts per layer: preallocated rings of ``history`` rows (memory fixed at
        construction), or growing lists with ``history=None``."""
        self._hist = {label: _Ring(self.history, r.n) for label, r in self._routes.items()}
        self._hist_steps = _Ring(self.history, None)

    def _dist_on(self, distributed) -> bool:
        avail = torch.distributed.is_available() and torch.distributed.is_initialized()
        if distributed and not avail:
            raise ValueError("distributed: torch.distributed is not initialised")
        return avail if distributed is None else bool(distributed)

    def _group_rank(self) -> int:
        if not self._dist:
            return 0
        return torch.distributed.get_rank(self.group)

    @property
    def is_writer(self) -> bool:
        """Whether this process writes the log (rank 0 of ``group``)."""
        return self._rank == 0

    # ----------------------------------------------------------------------------------------
    # hooks

    def attach(self) -> None:
        """Register the hooks (done by the constructor; after :meth:`detach`, monitoring goes on
        with the same state)."""
        if self._handles:
            return
        for r in self._routes.values():
            self._handles.append(r.module.register_forward_hook(self._hook(r)))
            if r.dispatch is not None:
                self._handles.append(r.dispatch.register_forward_pre_hook(self._dispatch_hook(r)))

    def detach(self) -> None:
        """Remove the hooks, keeping the state (forward passes until :meth:`attach` are not
        counted)."""
        for h in self._handles:
            h.remove()
        self._handles = []

    def _hook(self, route: _Route):
        def hook(module, args, output):
            if not module.training or _in_backward():
                return
            try:
                self._accumulate(route, output)
                if route.probe is not None:
                    lg = (
                        output
                        if route.selection == "v4gate"
                        else _first_scores(_tensors(output), route.n)
                    )
                    route.probe.forward(args, lg)
            except Exception as e:  # never break the training forward pass
                if route.error is None:
                    route.error = e

        return hook

    def _pool_for(self, route: _Route):
        """``() -> (F, rows)``: the fractions and tokens pooled over the routers of the same N
        on the same device, as the Hugging Face aux loss pools its layers (computed once per
        step and device, on the device)."""
        dev = _device_of(route.module)
        n, k = route.n, route.k
        same = [r for r in self._routes.values() if r.n == n and _device_of(r.module) == dev]

        def pool():
            key = (dev, n)  # the cache is cleared by step()
            if key not in self._pool_cache:
                c = torch.stack([r.buf[2 : n + 2] for r in same]).sum(0).float()
                rows = (c.sum() / k).clamp_min(1.0)
                self._pool_cache[key] = (c / rows, rows)
            return self._pool_cache[key]

        return pool

    def _dispatch_hook(self, route: _Route):
        def hook(module, args, kwargs=None):
            if not route.via_dispatch or not module.training or _in_backward():
                return
            try:
                idx = args[1] if len(args) > 1 else args[0] if route.selection == "doge" else None
                if idx is None and kwargs:
                    idx = next((v for k, v in kwargs.items() if "index" in k), None)
                if idx is None:
                    raise TypeError("the experts module got no index argument")
                _add_indices(route.buf, idx, route.n)
            except Exception as e:
                if route.error is None:
                    route.error = e

        return hook

    def _accumulate(self, route: _Route, output) -> None:
        seg, n, k = route.buf, route.n, route.k
        with torch.no_grad():
            if route.selection == "v4gate":  # 4.x block: topk(softmax(gate(x), float), k)
                p = torch.nn.functional.softmax(output, dim=-1, dtype=torch.float)
                _add_indices(seg, torch.topk(p, k, dim=-1).indices, n)
                if self.importance:
                    _add_importance(seg, p.reshape(-1, n), n)
                    _add_logits(seg, output.detach().reshape(-1, n), n)
                return
            if route.selection == "doge":  # (hidden, router_logits (2, T, keys))
                route.via_dispatch = True
                if self.importance:
                    logits = _tensors(output)[-1].detach().float()
                    px, py = torch.softmax(logits[0], -1), torch.softmax(logits[1], -1)
                    _add_importance(seg, (px[:, :, None] * py[:, None, :]).reshape(-1, n), n)
                    # expert i * keys + j has the logit x_i + y_j (its probability px_i py_j)
                    lx, ly = logits[0].double(), logits[1].double()
                    _add_logits(seg, (lx[:, :, None] + ly[:, None, :]).reshape(-1, n), n)
                return
            kind, sel = _select(route, output)
            if kind in (None, "topk") and route.dispatch is not None and route.indices is None:
                # scores only: count what the block hands its experts (DBRX)
                route.via_dispatch, kind = True, "dispatched"
            if kind is None:
                raise TypeError(
                    "its output holds no expert selection (pass indices= or selection=)"
                )
            if kind == "dispatched":
                pass
            elif kind == "indices":
                _add_indices(seg, sel, n)
            elif kind == "topk":
                _add_indices(seg, torch.topk(sel.detach(), k, dim=-1).indices, n)
            else:
                _add_mask(seg, sel, n, k, dispatch=kind == "dispatch")
            if self.importance and route.scores is not None:
                if kind == "topk":
                    scores = sel
                elif kind == "gates":  # NLLB: (top-1 mask, combine weights, logits)
                    scores = _tensors(output)[-1]
                else:
                    scores = _first_scores(_tensors(output), n)
                if scores is not None:
                    _add_importance(seg, _probabilities(route, scores), n)
                    if (lg := _logits(route, scores)) is not None:
                        _add_logits(seg, lg, n)

    # ----------------------------------------------------------------------------------------
    # stepping

    def step(self) -> list[Alarm]:
        """Close the current training step: hand the counts of every router that ran in training
        mode since the last call to the monitors (every ``sync_every`` steps), append them to
        the log, return the alarms raised. Steps without any training forward pass are not
        counted. Raises :class:`RouterIndexError` if a router selected an invalid index."""
        for r in self._routes.values():
            if r.error is not None:
                e, r.error = r.error, None
                raise RuntimeError(f"router {r.label!r}: {e}") from e
            if r.probe is not None and r.probe.error is not None:
                e, r.probe.error = r.probe.error, None
                raise RuntimeError(f"router {r.label!r}, force probe: {e}") from e
        self._pool_cache.clear()
        if self.sync_every == 1:
            self._slot = 1
        else:
            for dev, buf in self._bufs.items():
                self._ring[dev][self._slot].copy_(buf)
                buf.zero_()
            self._slot += 1
        out = []
        if self._slot >= self.sync_every:
            out += self._transfer()
        return out

    def _transfer(self, *, wait: bool = False) -> list[Alarm]:
        """Reduce and copy the held steps to the host (one transfer per device); process them
        now (CPU) or at the next call (CUDA: the copy runs while the GPU works)."""
        out = self._drain()
        slots = self._slot
        self._slot = 0
        src = {}
        for dev, buf in self._bufs.items():
            t = buf[None] if self.sync_every == 1 else self._ring[dev][:slots]
            if self._dist:
                torch.distributed.all_reduce(t, group=self.group)
            # one copy per device; on CPU a copy, as the buffer is reused
            src[dev] = t.clone() if dev.type == "cpu" else t.to("cpu", non_blocking=True)
            if self.sync_every == 1:
                buf.zero_()
        event = None
        if self._defer:
            event = torch.cuda.Event()
            event.record()
        self._pending = (src, event, slots)
        if not self._defer or wait:
            out += self._drain()
        return out

    def _drain(self) -> list[Alarm]:
        """Process a pending transfer (waiting for it if needed)."""
        if self._pending is None:
            return []
        src, event, slots = self._pending
        self._pending = None
        if event is not None:
            event.synchronize()
        rows = {dev: t.numpy() for dev, t in src.items()}
        out = []
        for s in range(slots):
            out += self._process({dev: r[s] for dev, r in rows.items()})
        return out

    def _process(self, rows: dict) -> list[Alarm]:
        """Feed one step (a row of every device buffer) to the monitors and the log."""
        layers = []
        for dev, rs in self._layout.items():
            row = rows[dev]
            for r in rs:
                seg = row[r.offset : r.offset + _seg_size(r.n)]
                n = r.n
                assigned = seg[: n + 4].sum()
                if assigned <= 0:
                    continue  # this router did not run in training mode this step
                invalid = seg[0] + seg[n + 3]
                if invalid > 0:
                    raise RouterIndexError(
                        f"router {r.label!r}: {int(invalid)} selected expert indices outside "
                        f"[0, {n}) (the skip slot {n} and -1 count as dropped; anything else is "
                        "not an expert)"
                    )
                counts = np.rint(seg[2 : n + 2]).astype(np.int64)
                imp = sc = None
                if self.importance and r.scores is not None:
                    scored = seg[n + _WIDTH : 2 * n + _WIDTH].sum()
                    imp = seg[n + _WIDTH : 2 * n + _WIDTH] / scored if scored > 0 else None
                    with_logits = seg[3 * n + _WIDTH]
                    if with_logits > 0 and imp is not None:
                        sc = seg[2 * n + _WIDTH : 3 * n + _WIDTH] / with_logits
                tokens = int(round(assigned / r.k))
                dropped = int(round(seg[1] + seg[n + 2]))
                fo = seg[_force_slots(n)]
                fo = fo.copy() if fo[3] > 0 else None
                layers.append((r, counts, imp, sc, tokens, dropped, fo))
        if not layers:
            return []
        s = self.step_index
        out: list[Alarm] = []
        for r, counts, imp, sc, _, _, fo in layers:
            out += self.monitors[r.label].update(counts, imp, sc, forces=fo)
        if self.history != 0:
            self._hist_steps.append(s)
            for r, counts, *_ in layers:
                self._hist[r.label].append(counts)
        if self.log_path is not None and self.is_writer:
            from .logs import data_line

            if self._writer is None:
                self._open_log()
            lines = [
                data_line(
                    s,
                    r.label,
                    counts.tolist(),
                    None if imp is None else imp.tolist(),
                    tokens,
                    dropped,
                    scores=None if sc is None else sc.tolist(),
                    forces=None if fo is None else fo.tolist(),
                )
                for r, counts, imp, sc, tokens, dropped, fo in layers
            ]
            self._writer.write_step(s, lines)
        self.step_index += 1
        return out

    def _open_log(self) -> None:
        from .logs import LogWriter

        spec = {label: r.spec(self.importance) for label, r in self._routes.items()}
        self._writer = LogWriter(
            self.log_path,
            spec,
            segment=self.segment,
            start_step=self.step_index,
            model_class=self.model_class,
            max_bytes=self.log_max_bytes,
            backups=self.log_backups,
            run=self._run_info,
        )

    def flush(self) -> list[Alarm]:
        """Process every step held on the device now (the partial ``sync_every`` ring, a pending
        CUDA copy) and flush the log to disk. Collective when distributed with ``sync_every >
        1``: call it on every rank."""
        out = self._drain()
        if self._slot:
            out += self._transfer(wait=True)
        if self._writer is not None:
            self._writer.flush()
        return out

    # ----------------------------------------------------------------------------------------
    # read-out

    @property
    def alarms(self) -> list[Alarm]:
        self._drain()
        return sorted((a for m in self.monitors.values() for a in m.alarms), key=lambda a: a.step)

    @property
    def steps(self) -> np.ndarray:
        """Step numbers of the counts kept in memory (the last ``history``)."""
        return self._hist_steps.rows()

    def counts(self, label: str) -> np.ndarray:
        """Counts of router ``label`` over the steps kept in memory, shape ``(steps, N)``."""
        self._drain()
        return self._hist[label].rows()

    def summary(self) -> dict:
        """``{label: LayerMonitor.summary()}``."""
        self._drain()
        return {label: m.summary() for label, m in self.monitors.items()}

    def metrics(self) -> dict[str, dict]:
        """``{label: metrics}`` of the last step: the monitors' metrics and, when a fit exists,
        ``kappa_hat`` with ``kappa_lo``/``kappa_hi``; with the forces, ``aux_coef``,
        ``alpha_star`` (with ``_lo``/``_hi``) and ``steps_to_collapse`` (flat, for loggers)."""
        self._drain()
        out = {}
        for label, m in self.monitors.items():
            if m.step == 0:
                continue
            d = {k: float(v) for k, v in m.metrics().items() if _finite(v)}
            est = m.summary().get("estimate")
            if est is not None:
                for key, name in (
                    ("kappa", "kappa_hat"),
                    ("kappa_lo", "kappa_lo"),
                    ("kappa_hi", "kappa_hi"),
                ):
                    v = est.get(key)
                    if v is not None and _finite(v):
                        d[name] = float(v)
            fc = m.forecast()
            crit, soon = fc.get("critical_coefficient"), fc.get("steps_to_collapse")
            for name, v in (
                ("aux_coef", fc.get("coefficient")),
                ("alpha_star", None if crit is None else crit["value"]),
                ("alpha_star_lo", None if crit is None else crit["lo"]),
                ("alpha_star_hi", None if crit is None else crit["hi"]),
                ("steps_to_collapse", None if soon is None else soon["value"]),
            ):
                if v is not None and _finite(v):
                    d[name] = float(v)
            out[label] = d
        return out

    # ----------------------------------------------------------------------------------------
    # checkpoint

    def state_dict(self) -> dict:
        """The monitor's state as plain values (``json``- and ``torch.load(weights_only=True)``-
        safe): step number, log segment, each layer's :meth:`LayerMonitor.state_dict`. Processes
        the steps held on the device and flushes the log (fsync), so the log holds every step the
        checkpoint counts. Not collective: call it on the rank that saves, between ``step()``
        calls; with ``sync_every > 1`` and distributed, only right after a transfer."""
        if self._slot:
            if self._dist:
                raise RuntimeError(
                    f"state_dict: {self._slot} steps not yet reduced (sync_every = "
                    f"{self.sync_every}); call flush() on every rank first"
                )
            self._transfer(wait=True)
        self._drain()
        if self._writer is not None:
            self._writer.flush()
        return {
            "format": "moebif.RouterMonitor/1",
            "step_index": self.step_index,
            "segment": self.segment,
            "layers": {
                label: {
                    "n_experts": r.n,
                    "top_k": r.k,
                    "monitor": self.monitors[label].state_dict(),
                }
                for label, r in self._routes.items()
            },
        }

    def load_state_dict(self, state: dict) -> None:
        """Restore a :meth:`state_dict` of a monitor of the same routers (labels, N, top-k). The
        run continues at the saved step; the log gets a new segment header (``segment`` + 1,
        ``start_step`` = the saved step), whose lines replace any the killed run logged after
        its checkpoint."""
        if not isinstance(state, dict) or state.get("format") != "moebif.RouterMonitor/1":
            raise ValueError("state: not a RouterMonitor state_dict")
        layers = state["layers"]
        if set(layers) != set(self._routes):
            missing = sorted(set(self._routes) ^ set(layers))
            raise ValueError(f"state: routers differ from this monitor's: {missing[:4]}")
        for label, r in self._routes.items():
            saved = layers[label]
            if (saved["n_experts"], saved["top_k"]) != (r.n, r.k):
                raise ValueError(
                    f"state: router {label!r} has N = {saved['n_experts']}, top_k = "
                    f"{saved['top_k']}; this monitor has {r.n}, {r.k}"
                )
        for label in self._routes:
            self.monitors[label].load_state_dict(layers[label]["monitor"])
        self.step_index = int(state["step_index"])
        self.segment = int(state["segment"]) + 1
        for buf in self._bufs.values():
            buf.zero_()
        self._slot, self._pending = 0, None
        self._reset_history()
        if self._writer is not None:  # a new segment from here on
            self._writer.close()
            self._writer = None

    # ----------------------------------------------------------------------------------------

    def close(self) -> None:
        """Process what the device still holds (not collective: with ``sync_every > 1`` and
        distributed, call :meth:`flush` on every rank first), remove the hooks, close the log."""
        if self._slot and not self._dist:
            self._transfer(wait=True)
        self._drain()
        self.detach()
        if self._writer is not None:
            self._writer.close()
            self._writer = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


class _Ring:
    """The last ``size`` rows (``None``: all) of int64 values of width ``n`` (``None``:
    scalars)."""

    __slots__ = ("buf", "n_written", "rows_list", "size", "shape")

    def __init__(self, size: int | None, n: int | None):
        self.size, self.shape = size, (() if n is None else (n,))
        self.n_written = 0
        self.rows_list = [] if size is None else None
        self.buf = None if size is None else np.zeros((size, *self.shape), dtype=np.int64)

    def append(self, row) -> None:
        if self.size is None:
            self.rows_list.append(row)
        elif self.size:
            self.buf[self.n_written % self.size] = row
        self.n_written += 1

    def rows(self) -> np.ndarray:
        if self.size is None:
            return np.array(self.rows_list, dtype=np.int64).reshape(-1, *self.shape)
        k = min(self.n_written, self.size)
        if self.n_written <= self.size:
            return self.buf[:k].copy()
        i = self.n_written % self.size
        return np.concatenate([self.buf[i:], self.buf[:i]])


def _finite(v) -> bool:
    try:
        return math.isfinite(float(v))
    except (TypeError, ValueError):
        return False


def _device_of(module: torch.nn.Module) -> torch.device:
    for p in module.parameters():
        return p.device
    for b in module.buffers():
        return b.device
    return torch.device("cpu")
