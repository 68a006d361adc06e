"""The closed-loop balancer on a real PyTorch MoE model: one selection bias per router, driven by
the proportional-integral law of :mod:`moebif.model.control_law` from the step's loads.

    from moebif.control import RouterController
    ctl = RouterController(model)                       # finds the routers
    ...; loss.backward(); optimizer.step(); ctl.step()  # once per optimizer step

**The actuator: the selection only.** The bias ``b`` enters the choice of the experts and
nothing else, as DeepSeek-V3's correction bias does: the gate weights and their gradient stay
those of the router's own scores, so the language model's gradient on the router is unchanged and
no balancing term enters the loss.

- Routers with an ``e_score_correction_bias`` buffer (DeepSeek-V3, GLM-4-MoE, ...): the buffer is
  the bias, written after each step (the router's own selection reads it). Its units are the
  router's scores (sigmoid outputs), not logits: the law's bias is multiplied by ``score_scale``
  (default 0.25, the sigmoid's slope at 0).
- Softmax-then-top-k routers returning ``(logits, weights, indices)`` (Mixtral, Qwen2/3-MoE,
  OLMoE, GraniteMoE in transformers 5.x): a forward hook on the router replaces its indices by
  ``topk(logits + b)`` and its weights by the router's own probabilities ``softmax(logits)`` at
  those indices, renormalised over the ``k`` chosen when the router renormalises (Mixtral,
  GraniteMoE, ``norm_topk_prob``). Whether it does is read from the router's own output at the
  first training forward (the hook recomputes the router's weights at its own indices both ways
  and keeps the one that matches; neither matching is an error naming the router), so no
  per-family table is kept. The hook runs before any other forward hook of the router (a
  :class:`~moebif.monitor.hooks.RouterMonitor` then counts the biased selection). Hugging Face's
  aux loss recomputes its own top-k from the logits: with a controller it is normally off.

**Counting.** Without a monitor, the hooks add the selected indices into one float64 device
buffer (a fixed slice per router, ``index_add_``: no data-dependent shapes); :meth:`step` makes
one transfer of it per device (after the ``all_reduce`` over ``group`` when ``torch.distributed``
is initialised), updates the law on the host and writes the biases back (a host-to-device copy).
With ``monitor=`` (a :class:`~moebif.monitor.hooks.RouterMonitor` on the same model), the
controller counts nothing: :meth:`step`, called after the monitor's, takes the step's counts the
monitor has already moved to the host (and reduced over its group), and, when ``lr`` is given,
the margin of its force probe for the gain schedule. On CUDA the monitor hands a step's counts
over one step later; the controller then acts on them one step late.

Every rank feeds the same summed loads to the same deterministic law, so the biases are identical
on all ranks without any broadcast.
"""

from __future__ import annotations

import math
from dataclasses import asdict

import numpy as np
import torch

from ..model.control_law import ControlGains, ControlState, initial_state, sign_update, update
from ..monitor.hooks import find_routers

__all__ = ["RouterController"]

STATE_VERSION = 1


def _unwrap(model):
    from torch.nn.parallel import DataParallel, DistributedDataParallel

    while isinstance(model, DistributedDataParallel | DataParallel):
        model = model.module
    return model


def _device_of(module) -> torch.device:
    for p in module.parameters(recurse=True):
        return p.device
    for b in module.buffers(recurse=True):
        return b.device
    return torch.device("cpu")


def _in_backward() -> bool:
    f = getattr(torch._C, "_current_graph_task_id", None)
    return f is not None and f() != -1


def _n_k(module):
    n = next(
        (
            getattr(module, a)
            for a in ("n_routed_experts", "num_experts", "num_local_experts")
            if isinstance(getattr(module, a, None), int)
        ),
        None,
    )
    if n is None and isinstance(getattr(module, "weight", None), torch.Tensor):
        n = int(module.weight.shape[0])
    k = next(
        (
            getattr(module, a)
            for a in ("top_k", "num_experts_per_tok")
            if isinstance(getattr(module, a, None), int)
        ),
        None,
    )
    return n, k


class _Layer:
    """One controlled router: its mode, bias tensor, counting slice and law state."""

    def __init__(self, label, module, n, k, mode):
        self.label, self.module, self.n, self.k, self.mode = label, module, n, k, mode
        self.state: ControlState = initial_state(n)
        self.bias = torch.zeros(n, dtype=torch.float32, device=_device_of(module))
        self.renorm: bool | None = None  # read from the router's output at the first forward
        self.buf = None  # counting slice: [e_0 .. e_{N-1} | rerouted slots | slots]
        self.off = 0  # of the slice in its device buffer
        self.error: Exception | None = None


# the real-model default: an Adam-trained router moves its logits ~0.4 a step under a strong
# anti-balancing drive, so the integral must be ten times faster than the model's default
REAL_MODEL_GAINS = ControlGains(k_i=0.1)


class RouterController:
    """Balance every MoE router of ``model`` in closed loop (module docstring).

    **Arguments:**

    - ``model``: the model (DDP / DataParallel wrappers are looked through); its routers are
      those :func:`moebif.monitor.hooks.find_routers` finds, or ``modules``.
    - ``modules``: a list of labels of those routers to control (default: all found).
    - ``gains``: a :class:`~moebif.model.control_law.ControlGains` (default
      :data:`REAL_MODEL_GAINS`: ``k_i = 0.1``, ten times the law's model default, set by the aux
      -1 pulse on tiny Mixtral and checked on OLMoE, docs/control.md), or a dict of
      its fields.
    - ``monitor``: a :class:`~moebif.monitor.hooks.RouterMonitor` on the same model: its counts
      are used (nothing counted twice); call ``monitor.step()`` before :meth:`step`.
    - ``lr``: the routers' learning rate (a number or ``() -> float``); with ``monitor`` it turns
      the force probe's margin (learning-rate units) into the law's logit units for the gain
      schedule (``None``: fixed gains).
    - ``score_scale``: bias units per logit for routers driven through
      ``e_score_correction_bias`` (sigmoid scores).
    - ``group``, ``distributed``: the ``torch.distributed`` group the loads are summed over
      (default: the world when initialised); ``distributed=False`` turns the reduction off.
    - ``law``: ``"pi"`` (the gain-scheduled proportional-integral law) or ``"sign"``
      (DeepSeek-V3's relay update ``b_i += u sign(mean c - c_i)``, the baseline, with ``u``).
    - ``enabled``: start with the bias applied (``False``: the loop is open, the bias held at
      zero, the loads still counted; see :attr:`enabled`).
    """

    def __init__(
        self,
        model: torch.nn.Module,
        *,
        modules=None,
        gains: ControlGains | dict | None = None,
        monitor=None,
        lr=None,
        score_scale: float = 0.25,
        group=None,
        distributed: bool | None = None,
        law: str = "pi",
        u: float = 1e-3,
        enabled: bool = True,
    ):
        if law not in ("pi", "sign"):
            raise ValueError(f"law: one of pi, sign, got {law!r}")
        self.law, self.u = law, float(u)
        if gains is None:
            gains = REAL_MODEL_GAINS
        elif isinstance(gains, dict):
            gains = ControlGains(**gains)
        elif not isinstance(gains, ControlGains):
            raise TypeError(f"gains: need ControlGains or a dict, got {type(gains).__name__}")
        self.gains = gains
        self.score_scale = float(score_scale)
        if not math.isfinite(self.score_scale) or self.score_scale <= 0:
            raise ValueError(f"score_scale: need a finite number > 0, got {score_scale}")
        self.lr = lr
        self.monitor = monitor
        self.enabled = bool(enabled)
        root = _unwrap(model)
        found = find_routers(root)
        if modules is not None:
            missing = [m for m in modules if m not in found]
            if missing:
                raise ValueError(f"modules: not routers of the model: {', '.join(missing)}")
            found = {m: found[m] for m in modules}
        self.layers: dict[str, _Layer] = {}
        for label, mod in found.items():
            n, k = _n_k(mod)
            if n is None or k is None or not 1 <= k < n:
                raise ValueError(f"router {label!r}: cannot tell N and k (got {n}, {k})")
            bias = getattr(mod, "e_score_correction_bias", None)
            mode = "correction" if isinstance(bias, torch.Tensor) else "selection"
            self.layers[label] = _Layer(label, mod, n, k, mode)
        if not self.layers:
            raise ValueError("model: no MoE router found")
        if monitor is not None:
            missing = [lab for lab in self.layers if lab not in monitor.routers]
            if missing:
                raise ValueError(f"monitor: does not count {', '.join(missing)}")
            if monitor.history == 0:
                raise ValueError("monitor: keeps no counts (history=0); need history >= 1")
        avail = torch.distributed.is_available() and torch.distributed.is_initialized()
        if distributed and not avail:
            raise ValueError("distributed: torch.distributed is not initialised")
        self.group = group
        self._dist = (avail if distributed is None else bool(distributed)) and monitor is None
        self.step_index = 0
        self._monitor_step = -1  # last monitor step acted on
        # counting buffers: one per device, a fixed slice of N + 2 per router
        self._bufs: dict[torch.device, torch.Tensor] = {}
        by_dev: dict[torch.device, list[_Layer]] = {}
        for lay in self.layers.values():
            by_dev.setdefault(lay.bias.device, []).append(lay)
        for dev, lays in by_dev.items():
            size = sum(lay.n + 2 for lay in lays)
            self._bufs[dev] = torch.zeros(size, dtype=torch.float64, device=dev)
            off = 0
            for lay in lays:
                lay.off = off
                lay.buf = self._bufs[dev][off : off + lay.n + 2]
                off += lay.n + 2
        self._layout = by_dev
        self._rerouted = {lab: [0.0, 0.0] for lab in self.layers}  # host totals: rerouted, slots
        self._handles = []
        self.attach()

    # ----------------------------------------------------------------------------------------
    # hooks

    def attach(self) -> None:
        """Register the hooks (done by the constructor)."""
        if self._handles:
            return
        for lay in self.layers.values():
            h = lay.module.register_forward_hook(self._hook(lay), prepend=True)
            self._handles.append(h)

    def detach(self) -> None:
        """Remove the hooks (and zero the correction buffers this controller drives): the model
        routes as without the controller; the state is kept."""
        for h in self._handles:
            h.remove()
        self._handles = []
        for lay in self.layers.values():
            if lay.mode == "correction":
                with torch.no_grad():
                    lay.module.e_score_correction_bias.zero_()

    def _hook(self, lay: _Layer):
        def hook(module, args, output):
            if lay.mode == "correction":
                if module.training and not _in_backward() and self.monitor is None:
                    try:
                        self._count(lay, output[-1], None)
                    except Exception as e:  # never break the training forward pass
                        lay.error = lay.error or e
                return None
            try:
                return self._reselect(lay, module, output)
            except Exception as e:
                lay.error = lay.error or e
                return None

        return hook

    def _reselect(self, lay: _Layer, module, output):
        if not (isinstance(output, tuple) and len(output) == 3):
            raise TypeError("its output is not (logits, weights, indices)")
        logits, weights, idx = output
        if lay.renorm is None:
            lay.renorm = self._read_renorm(lay, logits, weights, idx)
        if not self.enabled:
            if module.training and not _in_backward() and self.monitor is None:
                self._count(lay, idx, None)
            return None
        with torch.no_grad():
            new = torch.topk(logits.detach().float() + lay.bias, lay.k, dim=-1).indices
        p = torch.softmax(logits.float(), dim=-1).gather(-1, new)
        if lay.renorm:
            p = p / p.sum(-1, keepdim=True)
        new = new.to(idx.dtype)
        if module.training and not _in_backward():
            with torch.no_grad():
                if self.monitor is None:
                    self._count(lay, new, idx)
                else:
                    self._count_rerouted(lay, new, idx)
        return logits, p.to(weights.dtype), new

    @staticmethod
    def _read_renorm(lay: _Layer, logits, weights, idx) -> bool:
        """Whether the router renormalises its top-k probabilities: its own weights at its own
        indices against both recomputations (one host read, at the first forward)."""
        with torch.no_grad():
            p = torch.softmax(logits.detach().float(), dim=-1).gather(-1, idx.long())
            w = weights.detach().float()
            tol = dict(rtol=1e-3, atol=1e-5)
            if torch.allclose(p / p.sum(-1, keepdim=True), w, **tol):
                return True
            if torch.allclose(p, w, **tol):
                return False
        raise TypeError(
            "its weights are neither softmax(logits) at its indices nor their renormalisation: "
            "not a softmax-then-top-k router the controller can bias"
        )

    def _count(self, lay: _Layer, idx, orig) -> None:
        b = idx.detach().reshape(-1).long()
        seg = lay.buf
        seg[: lay.n].index_add_(0, b.clamp(0, lay.n - 1), torch.ones_like(b, dtype=seg.dtype))
        if orig is not None:
            self._count_rerouted(lay, idx, orig)

    @staticmethod
    def _count_rerouted(lay: _Layer, new, orig) -> None:
        """Token-slots whose expert the bias changed (selected now, not in the unbiased top-k)."""
        kept = (new.unsqueeze(-1) == orig.unsqueeze(-2)).sum()  # indices distinct per token
        lay.buf[lay.n] += new.numel() - kept
        lay.buf[lay.n + 1] += new.numel()

    # ----------------------------------------------------------------------------------------
    # stepping

    def _margin(self, label: str) -> float | None:
        if self.monitor is None or self.lr is None:
            return None
        fc = self.monitor.monitors[label].forecast()
        m = (fc.get("margin") or {}).get("value")
        if m is None:
            return None
        lr = self.lr() if callable(self.lr) else float(self.lr)
        return lr * float(m)

    def step(self) -> dict[str, np.ndarray]:
        """Close the optimizer step: read its loads (one transfer per device, or the monitor's),
        update every router's law, write the biases. Returns ``{label: bias}`` (numpy, logits).
        Raises if a hook failed."""
        for lay in self.layers.values():
            if lay.error is not None:
                e, lay.error = lay.error, None
                raise RuntimeError(f"router {lay.label!r}: {e}") from e
        loads = self._loads()
        self.step_index += 1
        for label, f in loads.items():
            lay = self.layers[label]
            if self.enabled and self.law == "sign":
                st = lay.state
                b = sign_update(st.bias, f, self.u)
                lay.state = ControlState(st.integral, st.e_ema, b, 1.0, st.steps + 1)
            elif self.enabled:
                lay.state = update(self.gains, lay.state, f, self._margin(label))
            self._write(lay)
        return {lab: lay.state.bias.copy() for lab, lay in self.layers.items()}

    def _loads(self) -> dict[str, np.ndarray]:
        out = {}
        if self.monitor is not None:  # its counts: nothing transferred here
            counts = {label: self.monitor.counts(label) for label in self.layers}  # drains
            steps = self.monitor.steps
            if len(steps) and int(steps[-1]) > self._monitor_step:
                self._monitor_step = int(steps[-1])
                for label, c in counts.items():
                    if len(c):
                        out[label] = np.asarray(c[-1], dtype=np.float64)
            return out
        for dev, lays in self._layout.items():
            buf = self._bufs[dev]
            if self._dist:
                torch.distributed.all_reduce(buf, group=self.group)
            host = buf.to("cpu").numpy().copy()  # the one transfer per device
            buf.zero_()
            for lay in lays:
                seg = host[lay.off : lay.off + lay.n + 2]
                self._rerouted[lay.label][0] += seg[lay.n]
                self._rerouted[lay.label][1] += seg[lay.n + 1]
                if seg[: lay.n].sum() > 0:
                    out[lay.label] = seg[: lay.n]
        return out

    def _write(self, lay: _Layer) -> None:
        b = lay.state.bias if self.enabled else np.zeros(lay.n)
        with torch.no_grad():
            if lay.mode == "correction":
                lay.module.e_score_correction_bias.copy_(
                    torch.as_tensor(self.score_scale * b, dtype=torch.float32)
                )
            else:
                lay.bias.copy_(torch.as_tensor(b, dtype=torch.float32))

    # ----------------------------------------------------------------------------------------
    # reading

    def bias(self, label: str) -> np.ndarray:
        """The bias of router ``label`` in logits, ``(N,)``."""
        return self.layers[label].state.bias.copy()

    def gain(self, label: str) -> float:
        """The scheduled gain factor ``g`` of the last update of router ``label``."""
        return self.layers[label].state.gain

    def rerouted_fraction(self, label: str) -> float:
        """The fraction of token-slots, over the steps so far, whose expert the bias changed
        (softmax routers; NaN for correction-bias routers and before any step)."""
        r, s = self._rerouted[label]
        if self.monitor is not None:  # kept on the device (never zeroed): read on demand
            seg = self.layers[label].buf
            r, s = float(seg[-2]), float(seg[-1])
        return r / s if s > 0 else float("nan")

    # ----------------------------------------------------------------------------------------
    # checkpoints

    def state_dict(self) -> dict:
        """The controller's state: explicit, versioned keys, plain JSON values."""
        return {
            "version": STATE_VERSION,
            "step_index": self.step_index,
            "monitor_step": self._monitor_step,
            "enabled": self.enabled,
            "law": self.law,
            "u": self.u,
            "gains": asdict(self.gains),
            "layers": {
                lab: {
                    "n_experts": lay.n,
                    "integral": lay.state.integral.tolist(),
                    "e_ema": lay.state.e_ema.tolist(),
                    "bias": lay.state.bias.tolist(),
                    "gain": lay.state.gain,
                    "steps": lay.state.steps,
                    "rerouted": list(self._rerouted[lab]),
                }
                for lab, lay in self.layers.items()
            },
        }

    def load_state_dict(self, state: dict) -> None:
        """Continue from :meth:`state_dict` (same routers; the gains are those saved)."""
        if state.get("version") != STATE_VERSION:
            raise ValueError(f"state: version {state.get('version')!r}, need {STATE_VERSION}")
        if set(state["layers"]) != set(self.layers):
            raise ValueError("state: saved for other routers: " + ", ".join(state["layers"]))
        self.gains = ControlGains(**state["gains"])
        self.step_index = int(state["step_index"])
        self._monitor_step = int(state["monitor_step"])
        self.enabled = bool(state["enabled"])
        self.law, self.u = str(state["law"]), float(state["u"])
        for lab, d in state["layers"].items():
            lay = self.layers[lab]
            if int(d["n_experts"]) != lay.n:
                raise ValueError(f"state: {lab!r} has {d['n_experts']} experts, not {lay.n}")
            lay.state = ControlState(
                np.asarray(d["integral"], dtype=np.float64),
                np.asarray(d["e_ema"], dtype=np.float64),
                np.asarray(d["bias"], dtype=np.float64),
                float(d["gain"]),
                int(d["steps"]),
            )
            self._rerouted[lab] = [float(x) for x in d["rerouted"]]
            self._write(lay)
