"""PyTorch hook: count the experts each MoE router selects during training and monitor them.

    from moebif.torch import RouterMonitor
    monitor = RouterMonitor(model, log="router_log.jsonl")   # finds the routers
    ...; optimizer.step(); monitor.step()                    # once per training step

:class:`RouterMonitor` finds the routers of Hugging Face transformers 5.x MoE models (Mixtral,
Qwen2-MoE, Qwen3-MoE, OLMoE, DeepSeek-V3, ...: the gate module whose forward returns
``(logits, scores, indices)``) and any module the user names. It counts the selected experts
from the gate's own index output (never by re-taking top-k of the logits: DeepSeek-V3's
correction bias and group-limited routing change the selection), only while the module is in
training mode, sums them over the forward calls of a step (gradient accumulation), and on
:meth:`RouterMonitor.step` feeds the per-layer counts to a :class:`moebif.monitor.LoadMonitor`
and appends them to the log (the JSONL format ``moebif diagnose`` reads).

transformers 4.x MoE blocks return only the router logits, not the indices; they are not found
automatically. Name such a module with ``modules=`` and an ``indices=`` function if needed.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from .monitor import Alarm, LoadMonitor

__all__ = ["RouterMonitor", "find_routers"]


def _is_hf_router(module: torch.nn.Module) -> bool:
    name = type(module).__name__.lower()
    return (
        (name.endswith("topkrouter") or name.endswith("router"))
        and hasattr(module, "top_k")
        and (hasattr(module, "num_experts") or hasattr(module, "weight"))
    )


def _n_experts(module: torch.nn.Module) -> int | None:
    n = getattr(module, "num_experts", None)
    if n is None and isinstance(getattr(module, "weight", None), torch.Tensor):
        n = module.weight.shape[0]
    return None if n is None else int(n)


def find_routers(model: torch.nn.Module) -> dict[str, torch.nn.Module]:
    """``{qualified name: gate module}`` of the transformers-5 MoE routers in ``model``."""
    return {name: m for name, m in model.named_modules() if _is_hf_router(m)}


def _last_indices(output):
    if isinstance(output, tuple | list):
        return output[-1]
    return output


class RouterMonitor:
    """Count routed experts per layer and step, monitor them, log them.

    **Arguments:**

    - ``model``: the model; its routers are found by :func:`find_routers`.
    - ``modules``: extra or replacement routers: names (of ``model.named_modules()``) or a dict
      ``{label: module}``; their forward output is a tensor of expert indices or a tuple whose
      last element is one (override with ``indices``).
    - ``indices``: ``output -> LongTensor`` of selected experts (any shape) for the named modules.
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
        routers = find_routers(model) if modules is None or not isinstance(modules, dict) else {}
        if modules is not None:
            if isinstance(modules, dict):
                routers.update({str(k): v for k, v in modules.items()})
            else:
                named = dict(model.named_modules())
                for nm in [modules] if isinstance(modules, str) else modules:
                    if nm not in named:
                        raise ValueError(f"modules: no module named {nm!r} in the model")
                    routers[nm] = named[nm]
        if not routers:
            raise ValueError("model: no MoE router found; name the router modules with modules=")
        self.routers = routers
        self._indices = indices
        self._counts: dict[str, torch.Tensor] = {}
        self._n: dict[str, int] = {}
        self.monitor_options = monitor_options
        self.monitors: dict[str, LoadMonitor] = {}
        self.history: dict[str, list[np.ndarray]] = {k: [] for k in routers}
        self.steps: list[int] = []
        self.step_index = 0
        self._handles = []
        for label, mod in routers.items():
            n = _n_experts(mod) or n_experts
            k = getattr(mod, "top_k", None) or top_k or 1
            if n is None:
                raise ValueError(f"n_experts: cannot tell the number of experts of {label!r}")
            self._n[label] = n
            self.monitors[label] = LoadMonitor(n_experts=n, top_k=int(k), **monitor_options)
            self._handles.append(mod.register_forward_hook(self._hook(label)))
        self._log = None
        if log is not None:
            self.log_path = Path(log)
            self._log = self.log_path.open("a", encoding="utf-8")

    def _hook(self, label: str):
        def hook(module, args, output):
            if not module.training:
                return
            idx = self._indices(output) if self._indices is not None else _last_indices(output)
            with torch.no_grad():
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
