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
output size is data-dependent), laid out by name (:class:`moebif.monitor.buffer.SegmentLayout`:
invalid, -1, the N experts, skip, invalid, importance, logit sums, tokens with logits, forces).
Routers are found by one adapter per family (:mod:`moebif.monitor.routers`); each route reports
its adapter and layout (:attr:`RouterMonitor.layouts`).
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

import math
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from .buffer import add_importance, add_indices, add_logits, add_mask, segment_layout
from .force_probe import ForceProbe, aux_coefficient, optimizer_record
from .monitor import Alarm, LayerMonitor
from .routers import Route, clean_label, find_routes, route_for, unwrap, v4_gate
from .routers.inspection import is_index, router_k, router_n, scoring

__all__ = ["RouterIndexError", "RouterMonitor", "clean_label", "find_routers"]

# checkpoints (moebif.monitor.state): version 2 differs from 1 only in its layer monitors' states
ROUTER_STATE_KEY = "moebif.torch.RouterMonitor"
ROUTER_STATE_VERSION = 2
SELECTIONS = ("auto", "indices", "mask", "gates", "dispatch", "topk")


class RouterIndexError(ValueError):
    """A router selected an expert index outside ``[0, N)``, other than the skip slot N or -1."""


def _finite_or_none(x) -> float | None:
    try:
        x = float(x)
    except (TypeError, ValueError):
        return None
    return x if math.isfinite(x) else None


def find_routers(model: torch.nn.Module) -> dict[str, torch.nn.Module]:
    """``{label: hooked module}`` of the MoE routers of ``model`` (see the module docstring):
    labels are module names without wrapper components, the same with and without DDP/FSDP.
    Each router is found by the adapter of its family (:mod:`moebif.monitor.routers`)."""
    return {label: r.module for label, r in find_routes(model).items()}


# --------------------------------------------------------------------------------------------
# the hooks' device work (no host reads: fixed-size slices, no data-dependent shapes)


def _in_backward() -> bool:
    """True while the autograd engine runs a backward pass: a forward called then is the
    recomputation of gradient checkpointing."""
    f = getattr(torch._C, "_current_graph_task_id", None)
    return f is not None and f() != -1


def _logits(route: Route, scores: torch.Tensor) -> torch.Tensor | None:
    """The router's pre-softmax (pre-sigmoid) logits ``(T, N)`` from its score output, or
    ``None`` when that output is probabilities already."""
    if route.probabilities:
        return None
    s = scores.detach()
    return s.reshape(-1, s.shape[-1])[:, : route.n]


def _probabilities(route: Route, scores: torch.Tensor) -> torch.Tensor:
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


def _select(route: Route, output):
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
    ints = [t for t in outs if is_index(t) or t.dtype == torch.bool]
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
    - ``sinks``: more receivers of each step's records besides the log
      (:class:`moebif.monitor.sinks.Sink`: ``write(records)``, optionally ``close()``).
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
        sinks=(),
        **monitor_options,
    ):
        if selection not in SELECTIONS:
            raise ValueError(f"selection: one of {', '.join(SELECTIONS)}, got {selection!r}")
        if int(sync_every) < 1:
            raise ValueError(f"sync_every: need >= 1, got {sync_every}")
        if history is not None and int(history) < 0:
            raise ValueError(f"history: need >= 0 or None, got {history}")
        root = unwrap(model)
        self.model_class = type(root).__name__
        routes = find_routes(root) if modules is None or not isinstance(modules, dict) else {}
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
        self._layout: dict[torch.device, list[Route]] = {}
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
                r.layout = segment_layout(r.n)
                r.offset = off
                off += r.layout.size
            self._bufs[dev] = torch.zeros(off, dtype=torch.float64, device=dev)
            for r in rs:
                r.buf = self._bufs[dev][r.offset : r.offset + r.layout.size]
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
                        mod, r.n, r.k, r.buf[r.layout.forces], r.buf[r.layout.counts],
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
        self.sinks = list(sinks)
        for sink in self.sinks:
            if not callable(getattr(sink, "write", None)):
                raise ValueError(f"sinks: {sink!r} has no write(records) method")

    # ----------------------------------------------------------------------------------------
    # construction helpers

    @staticmethod
    def _named(root, modules, indices, selection, n_experts, top_k, found) -> dict[str, Route]:
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
        gates = {id(g): m for m in root.modules() if (g := v4_gate(m)) is not None}
        out = {}
        for label, mod in named.items():
            if not isinstance(mod, torch.nn.Module):
                raise ValueError(f"modules: {label!r} is not a torch module")
            if indices is None and selection == "auto":
                r = route_for(label, mod, parents.get(id(mod)), config)
                block = mod if v4_gate(mod) is not None else gates.get(id(mod))
                if r is None and block is not None:  # a 4.x block or its gate Linear
                    r = Route(label, v4_gate(block), int(block.num_experts), int(block.top_k))
                    r.selection, r.scores = "v4gate", "softmax"
                if r is not None:
                    out[label] = r
                    continue
            n = router_n(mod) or n_experts
            k = router_k(mod, parents.get(id(mod)), None) or top_k
            r = Route(label, mod, n, k, selection=selection, indices=indices)
            r.scores, r.score_fn, r.probabilities = scoring(mod, parents.get(id(mod)))
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

    def _hook(self, route: Route):
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

    def _pool_for(self, route: Route):
        """``() -> (F, rows)``: the fractions and tokens pooled over the routers of the same N
        on the same device, as the Hugging Face aux loss pools its layers (computed once per
        step and device, on the device)."""
        dev = _device_of(route.module)
        n, k = route.n, route.k
        same = [r for r in self._routes.values() if r.n == n and _device_of(r.module) == dev]

        def pool():
            key = (dev, n)  # the cache is cleared by step()
            if key not in self._pool_cache:
                c = torch.stack([r.buf[r.layout.counts] for r in same]).sum(0).float()
                rows = (c.sum() / k).clamp_min(1.0)
                self._pool_cache[key] = (c / rows, rows)
            return self._pool_cache[key]

        return pool

    def _dispatch_hook(self, route: Route):
        def hook(module, args, kwargs=None):
            if not route.via_dispatch or not module.training or _in_backward():
                return
            try:
                idx = args[1] if len(args) > 1 else args[0] if route.selection == "doge" else None
                if idx is None and kwargs:
                    idx = next((v for k, v in kwargs.items() if "index" in k), None)
                if idx is None:
                    raise TypeError("the experts module got no index argument")
                add_indices(route.buf, idx, route.layout)
            except Exception as e:
                if route.error is None:
                    route.error = e

        return hook

    def _accumulate(self, route: Route, output) -> None:
        seg, n, k, lay = route.buf, route.n, route.k, route.layout
        with torch.no_grad():
            if route.selection == "v4gate":  # 4.x block: topk(softmax(gate(x), float), k)
                p = torch.nn.functional.softmax(output, dim=-1, dtype=torch.float)
                add_indices(seg, torch.topk(p, k, dim=-1).indices, lay)
                if self.importance:
                    add_importance(seg, p.reshape(-1, n), lay)
                    add_logits(seg, output.detach().reshape(-1, n), lay)
                return
            if route.selection == "doge":  # (hidden, router_logits (2, T, keys))
                route.via_dispatch = True
                if self.importance:
                    logits = _tensors(output)[-1].detach().float()
                    px, py = torch.softmax(logits[0], -1), torch.softmax(logits[1], -1)
                    add_importance(seg, (px[:, :, None] * py[:, None, :]).reshape(-1, n), lay)
                    # expert i * keys + j has the logit x_i + y_j (its probability px_i py_j)
                    lx, ly = logits[0].double(), logits[1].double()
                    add_logits(seg, (lx[:, :, None] + ly[:, None, :]).reshape(-1, n), lay)
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
                add_indices(seg, sel, lay)
            elif kind == "topk":
                add_indices(seg, torch.topk(sel.detach(), k, dim=-1).indices, lay)
            else:
                add_mask(seg, sel, lay, k, dispatch=kind == "dispatch")
            if self.importance and route.scores is not None:
                if kind == "topk":
                    scores = sel
                elif kind == "gates":  # NLLB: (top-1 mask, combine weights, logits)
                    scores = _tensors(output)[-1]
                else:
                    scores = _first_scores(_tensors(output), n)
                if scores is not None:
                    add_importance(seg, _probabilities(route, scores), lay)
                    if (lg := _logits(route, scores)) is not None:
                        add_logits(seg, lg, lay)

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
                lay = r.layout
                seg = row[r.offset : r.offset + lay.size]
                assigned = seg[lay.selection].sum()
                if assigned <= 0:
                    continue  # this router did not run in training mode this step
                invalid = seg[lay.invalid_low] + seg[lay.invalid_high]
                if invalid > 0:
                    raise RouterIndexError(
                        f"router {r.label!r}: {int(invalid)} selected expert indices outside "
                        f"[0, {r.n}) (the skip slot {r.n} and -1 count as dropped; anything else "
                        "is not an expert)"
                    )
                counts = np.rint(seg[lay.counts]).astype(np.int64)
                imp = sc = None
                if self.importance and r.scores is not None:
                    scored = seg[lay.importance].sum()
                    imp = seg[lay.importance] / scored if scored > 0 else None
                    with_logits = seg[lay.logit_tokens]
                    if with_logits > 0 and imp is not None:
                        sc = seg[lay.logit_sums] / with_logits
                tokens = int(round(assigned / r.k))
                dropped = int(round(seg[lay.unassigned] + seg[lay.skip]))
                fo = seg[lay.forces]
                fo = fo.copy() if fo[3] > 0 else None
                layers.append((r, counts, imp, sc, tokens, dropped, fo))
        if not layers:
            return []
        s = self.step_index
        out: list[Alarm] = []
        raised = {}
        for r, counts, imp, sc, _, _, fo in layers:
            raised[r.label] = self.monitors[r.label].update(counts, imp, sc, forces=fo)
            out += raised[r.label]
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
        if self.sinks and self.is_writer:
            from .sinks import RouterRecord

            records = [
                RouterRecord(
                    s,
                    r.label,
                    counts,
                    imp,
                    sc,
                    tokens,
                    dropped,
                    fo,
                    [a.to_dict() for a in raised[r.label]],
                )  # fmt: skip
                for r, counts, imp, sc, tokens, dropped, fo in layers
            ]
            for sink in self.sinks:
                sink.write(records)
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
    def layouts(self) -> dict[str, dict]:
        """``{label: what its route reports}``: the adapter that found the router
        (:mod:`moebif.monitor.routers`), how its output is read, N, k, the scoring, and its
        slice of the device buffer (:mod:`moebif.monitor.buffer`)."""
        return {label: r.describe() for label, r in self._routes.items()}

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
            "state_key": ROUTER_STATE_KEY,
            "version": ROUTER_STATE_VERSION,
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
        if isinstance(state, dict) and state.get("format") == "moebif.RouterMonitor/1":
            state = {**state, "state_key": ROUTER_STATE_KEY, "version": 1}  # the same keys
        if not isinstance(state, dict) or state.get("state_key") != ROUTER_STATE_KEY:
            raise ValueError("state: not a RouterMonitor state_dict")
        if state.get("version") not in (1, ROUTER_STATE_VERSION):
            raise ValueError(
                f"state: a RouterMonitor state of version {state.get('version')!r}; this moebif "
                f"reads versions 1 and {ROUTER_STATE_VERSION}"
            )
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
        for sink in self.sinks:
            if callable(getattr(sink, "close", None)):
                sink.close()

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
