"""PyTorch hook: count the experts each MoE router selects during training and monitor them.

    from moebif.monitor.hooks import RouterMonitor
    monitor = RouterMonitor(model, log="router_log.jsonl")   # finds the routers
    ...; optimizer.step(); monitor.step()                    # once per training step

:class:`RouterMonitor` finds the routers of Hugging Face transformers MoE models and any module
the user names, counts the experts they select, only while the module is in training mode, sums
the counts over the forward calls of a step (gradient accumulation), and on
:meth:`RouterMonitor.step` feeds the per-layer counts to a :class:`moebif.monitor.LoadMonitor`
and appends them to the log (the JSONL format ``moebif diagnose`` reads).

Layouts found automatically (:func:`find_routers`):

- transformers 5.x (Mixtral, Qwen2-MoE, Qwen3-MoE, OLMoE, DeepSeek-V3, ...): the gate module
  (class name ending in ``Router``, with ``top_k``) whose forward returns the selected expert
  indices, e.g. ``(logits, scores, indices)``. The counts come from the gate's own index output
  (never from re-taking top-k of the logits: DeepSeek-V3's correction bias and group-limited
  routing change the selection): the integer tensor of the output tuple (the last one if
  several). A router returning no integer tensor (``Llama4Router``: ``(scores, logits)``) is
  counted by top-k of its last output, the logits, as that router selects.
- transformers 4.x routers of the same kind, e.g. ``DeepseekV3TopkRouter`` (also Dots1,
  GLM-4-MoE), which return ``(indices, weights)``: the integer tensor is taken as above.
- transformers 4.x sparse MoE blocks (Mixtral, Qwen2-MoE, Qwen3-MoE, OLMoE, Qwen3-Next,
  MiniMax, ...): a module with ``top_k``, ``num_experts`` and a ``gate`` child that is an
  ``nn.Linear`` with ``num_experts`` outputs; the block selects
  ``topk(softmax(gate(x)), top_k)`` and returns only the logits. The ``gate`` Linear is hooked
  and the same top-k is re-taken from its output (labelled with the gate's name, as the 5.x
  router is). Blocks that select otherwise are skipped: PhiMoE (``router_jitter_noise``: sampled
  selection in training) and Ernie-4.5-MoE (``moe_statics``: bias-corrected selection).

Anything else (e.g. 4.x Jamba, whose gate is named ``router``): name the module with
``modules=`` and, if its output is not the index tensor (or a tuple holding it), an
``indices=`` function. Naming a 4.x block or its ``gate`` Linear works without ``indices=``.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from . import Alarm, LoadMonitor

__all__ = ["RouterMonitor", "find_routers"]

# attributes of 4.x sparse MoE blocks that select experts otherwise than top-k of the softmax:
# PhiMoE (sparsemixer, Gumbel sampling in training), Ernie-4.5-MoE (bias-corrected top-k)
_NOT_PLAIN_TOPK = ("router_jitter_noise", "moe_statics", "e_score_correction_bias")


def _is_hf_router(module: torch.nn.Module) -> bool:
    name = type(module).__name__.lower()
    return (
        (name.endswith("topkrouter") or name.endswith("router"))
        and hasattr(module, "top_k")
        and (hasattr(module, "num_experts") or hasattr(module, "weight"))
    )


def _int_attr(module: torch.nn.Module, name: str) -> int | None:
    v = getattr(module, name, None)
    return v if isinstance(v, int) and not isinstance(v, bool) and v > 0 else None


def _v4_gate(module: torch.nn.Module) -> torch.nn.Linear | None:
    """The ``gate`` Linear of a transformers-4 sparse MoE block (``None``: not such a block)."""
    gate = module._modules.get("gate")
    if not isinstance(gate, torch.nn.Linear) or _is_hf_router(gate) or _is_hf_router(module):
        return None
    n, k = _int_attr(module, "num_experts"), _int_attr(module, "top_k")
    if n is None or k is None or k > n or getattr(gate, "out_features", None) != n:
        return None
    if any(hasattr(module, a) for a in _NOT_PLAIN_TOPK):
        return None
    return gate


def _n_experts(module: torch.nn.Module) -> int | None:
    n = getattr(module, "num_experts", None)
    if n is None and isinstance(getattr(module, "weight", None), torch.Tensor):
        n = module.weight.shape[0]
    return None if n is None else int(n)


def _is_index(t) -> bool:
    return isinstance(t, torch.Tensor) and not (
        t.is_floating_point() or t.is_complex() or t.dtype == torch.bool
    )


def _pick_indices(output):
    """The integer tensor of a tuple output (the last one if several); else the last element
    (a bare tensor: itself)."""
    if isinstance(output, tuple | list):
        ints = [t for t in output if _is_index(t)]
        return ints[-1] if ints else output[-1]
    return output


def _router_indices(k: int) -> Callable:
    """Auto-found router: its integer output; failing one (Llama4Router), top-k of the logits."""

    def indices(output):
        idx = _pick_indices(output)
        return idx if _is_index(idx) else torch.topk(idx, k, dim=-1).indices

    return indices


def _gate_topk(k: int) -> Callable:
    """4.x block gate: the block's ``topk(softmax(logits, dtype=float), top_k)``, same ties."""

    def indices(logits):
        probs = torch.nn.functional.softmax(logits, dim=-1, dtype=torch.float)
        return torch.topk(probs, k, dim=-1).indices

    return indices


class _Route:
    __slots__ = ("module", "n", "k", "indices")

    def __init__(self, module, n, k, indices):
        self.module, self.n, self.k, self.indices = module, n, k, indices


def _find(model: torch.nn.Module) -> dict[str, _Route]:
    modules = list(model.named_modules())
    inside = tuple(f"{name}." for name, m in modules if _is_hf_router(m))
    routes: dict[str, _Route] = {}
    for name, m in modules:  # in model order
        if _is_hf_router(m):
            k = int(m.top_k)
            routes[name] = _Route(m, _n_experts(m), k, _router_indices(k))
        elif inside and name.startswith(inside):
            continue  # never inside a 5.x router (counted already by its own indices)
        elif (gate := _v4_gate(m)) is not None:
            k = int(m.top_k)
            label = f"{name}.gate" if name else "gate"
            routes[label] = _Route(gate, int(m.num_experts), k, _gate_topk(k))
    return routes


def _named_route(mod, block, indices, n_experts, top_k) -> _Route:
    if block is not None:  # a 4.x sparse MoE block or its gate Linear
        k = int(block.top_k)
        return _Route(_v4_gate(block), int(block.num_experts), k, _gate_topk(k))
    k = int(getattr(mod, "top_k", None) or top_k or 1)
    if indices is None:
        indices = _router_indices(k) if _is_hf_router(mod) else _pick_indices
    return _Route(mod, _n_experts(mod) or n_experts, k, indices)


def find_routers(model: torch.nn.Module) -> dict[str, torch.nn.Module]:
    """``{qualified name: hooked module}`` of the MoE routers of ``model``: the transformers-5
    routers (and 4.x ones of the same kind), and the ``gate`` Linear of each transformers-4
    sparse MoE block."""
    return {name: r.module for name, r in _find(model).items()}


class RouterMonitor:
    """Count routed experts per layer and step, monitor them, log them.

    **Arguments:**

    - ``model``: the model; its routers are found by :func:`find_routers`.
    - ``modules``: extra or replacement routers: names (of ``model.named_modules()``) or a dict
      ``{label: module}``; their forward output is a tensor of expert indices or a tuple holding
      one (its integer tensor is taken; override with ``indices``). A named transformers-4
      sparse MoE block, or its ``gate`` Linear, is counted as :func:`find_routers` counts it.
    - ``indices``: ``output -> LongTensor`` of selected experts (any shape) for the named modules
      (without ``modules``: for the routers found, except the 4.x ``gate`` Linears).
    - ``n_experts``, ``top_k``: when a named module does not carry ``num_experts``/``top_k``.
    - ``log``: path of the JSONL log to append to (``None``: no log).
    - ``**monitor_options``: passed to :class:`moebif.monitor.LayerMonitor` (``window``,
      ``threshold``, ...).
    """

    def __init__(
        self,
        model: torch.nn.Module,
        *,
        modules=None,
        indices: Callable | None = None,
        n_experts: int | None = None,
        top_k: int | None = None,
        log=None,
        **monitor_options,
    ):
        routes = _find(model) if modules is None or not isinstance(modules, dict) else {}
        if modules is None and indices is not None:
            for r in routes.values():
                if _is_hf_router(r.module):  # not the 4.x gate Linears: their output is logits
                    r.indices = indices
        if modules is not None:
            if isinstance(modules, dict):
                named = {str(k): v for k, v in modules.items()}
            else:
                all_named = dict(model.named_modules())
                named = {}
                for nm in [modules] if isinstance(modules, str) else modules:
                    if nm not in all_named:
                        raise ValueError(f"modules: no module named {nm!r} in the model")
                    named[nm] = all_named[nm]
            gates = None  # {id(gate Linear): 4.x block}, built if a Linear is named
            for label, mod in named.items():
                block = None
                if indices is None:
                    if _v4_gate(mod) is not None:
                        block = mod
                    elif isinstance(mod, torch.nn.Linear):
                        if gates is None:
                            gates = {
                                id(g): m for m in model.modules() if (g := _v4_gate(m)) is not None
                            }
                        block = gates.get(id(mod))
                routes[label] = _named_route(mod, block, indices, n_experts, top_k)
        if not routes:
            raise ValueError("model: no MoE router found; name the router modules with modules=")
        self.routers = {label: r.module for label, r in routes.items()}
        self._routes = routes
        self._counts: dict[str, torch.Tensor] = {}
        self._n: dict[str, int] = {}
        self.monitor_options = monitor_options
        self.monitors: dict[str, LoadMonitor] = {}
        self.history: dict[str, list[np.ndarray]] = {k: [] for k in routes}
        self.steps: list[int] = []
        self.step_index = 0
        self._handles = []
        for label, r in routes.items():
            if r.n is None:
                raise ValueError(f"n_experts: cannot tell the number of experts of {label!r}")
            self._n[label] = r.n
            self.monitors[label] = LoadMonitor(n_experts=r.n, top_k=r.k, **monitor_options)
            self._handles.append(r.module.register_forward_hook(self._hook(label, r.indices)))
        self._log = None
        if log is not None:
            self.log_path = Path(log)
            self._log = self.log_path.open("a", encoding="utf-8")

    def _hook(self, label: str, indices: Callable):
        def hook(module, args, output):
            if not module.training:
                return
            with torch.no_grad():
                idx = indices(output)
                c = torch.bincount(idx.detach().reshape(-1).long(), minlength=self._n[label])
            prev = self._counts.get(label)
            self._counts[label] = c if prev is None else prev + c

        return hook

    def step(self) -> list[Alarm]:
        """Close the current training step: feed the counts of every router that ran in training
        mode since the last call, append them to the log, return the alarms raised."""
        out: list[Alarm] = []
        if not self._counts:
            return out
        s = self.step_index
        for label, c in self._counts.items():
            arr = c.cpu().numpy().astype(np.int64)
            self.history[label].append(arr)
            mon = self.monitors[label]
            alarms = mon.layer(label, arr.size).update(arr)
            out += alarms
            if self._log is not None:
                self._log.write(
                    json.dumps({"step": s, "layer": label, "counts": arr.tolist()}) + "\n"
                )
        self.steps.append(s)
        self._counts = {}
        self.step_index += 1
        return out

    @property
    def alarms(self) -> list[Alarm]:
        return sorted((a for m in self.monitors.values() for a in m.alarms), key=lambda a: a.step)

    def counts(self, label: str) -> np.ndarray:
        """Counts logged for router ``label``, shape ``(steps, N)``."""
        return np.array(self.history[label])

    def summary(self) -> dict:
        return {k: m.layer(k).summary() for k, m in self.monitors.items()}

    def close(self) -> None:
        """Remove the hooks and close the log."""
        for h in self._handles:
            h.remove()
        self._handles = []
        if self._log is not None:
            self._log.close()
            self._log = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
