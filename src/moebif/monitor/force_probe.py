"""Device-side measurement of the forces on a router's logits (see :mod:`.forces` for the model).

A forward hook on the router keeps its input ``X`` and logits ``z`` and registers a gradient hook
on the logits. In the backward pass that hook receives ``G = dL/dz``, splits off the balancing
part ``alpha G_aux`` (closed form, :func:`~moebif.monitor.forces.aux_logit_gradient`), turns both
parts into Adam-normalised steps of the mean logits and adds their projections on the step's load
deviation to the router's slice of the monitor's device buffer. Everything stays on the device:
no host read, no synchronisation; the coefficient is a Python number read from the model.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch

from .forces import FORCE_FIELDS, aux_logit_gradient

__all__ = ["ForceProbe", "aux_coefficient", "optimizer_record"]

BETA2 = 0.999  # Adam's default second-moment rate
EPS = 1e-8
SHOCK_RATE = 0.1  # the loads' reference for the shock: an average over ~10 steps
DRIVE_RATE = 0.02  # the language model's steady drive: an average over ~50 steps


def aux_coefficient(root) -> Callable[[], float]:
    """The aux-loss coefficient the model applies now: ``router_aux_loss_coef`` of the model
    (Hugging Face keeps it on the causal-LM module and reads it at every forward), 0 when the
    model does not add the aux loss (``output_router_logits`` off) or has none."""
    config = getattr(root, "config", None)

    def read() -> float:
        c = getattr(root, "router_aux_loss_coef", None)
        if c is None:
            c = getattr(config, "router_aux_loss_coef", None)
        if c is None or not getattr(config, "output_router_logits", True):
            return 0.0
        return float(c)

    return read


def optimizer_record(optimizer) -> dict | None:
    """What the log keeps of the optimiser, for ``moebif advise --from-log``: ``{"kind", "lr",
    "betas", "eps", "weight_decay"}`` of its first parameter group (``None`` entries where the
    optimiser has no such setting), or ``None`` without an optimiser. The per-step rates of the
    advice (a bias rate in logits per step) need ``lr``: the forces are measured in its units."""
    if optimizer is None:
        return None
    groups = getattr(optimizer, "param_groups", None) or [{}]
    g = groups[0]

    def num(v):
        try:
            x = float(v.item() if isinstance(v, torch.Tensor) else v)
        except (TypeError, ValueError, RuntimeError):
            return None
        return x if math.isfinite(x) else None

    betas = g.get("betas")
    return {
        "kind": type(optimizer).__name__,
        "lr": num(g.get("lr")),
        "betas": None if betas is None else [num(b) for b in betas],
        "eps": num(g.get("eps")),
        "weight_decay": num(g.get("weight_decay")),
    }


def _weight(module) -> torch.Tensor | None:
    w = getattr(module, "weight", None)
    if isinstance(w, torch.Tensor) and w.ndim == 2:
        return w
    for child in module.children():
        if isinstance(child, torch.nn.Linear):
            return child.weight
    return None


class ForceProbe:
    """The force measurement of one router.

    **Arguments:**

    - ``route_n``, ``top_k``: N and k; ``seg``: the router's force slots (:data:`FORCE_FIELDS`
      values) in the monitor's device buffer; ``counts``: the router's count slots (this step's
      selections, filled by the forward hook before any backward runs).
    - ``pool``: ``() -> (F, rows)``: the pooled fractions and tokens of the layers the aux loss
      pools (device tensors).
    - ``coefficient``: ``() -> float``, the aux coefficient in force now.
    - ``optimizer``: optional; when it holds Adam state for the router's weight, its second
      moment is used instead of the probe's own.
    - ``shock``: ``"loads"`` (the step's loads against their running mean) or ``"offset"``
      (the hard loads minus the soft importance of the same tokens, against its running mean:
      the part of the step's loads its own scores did not predict, free of any drift).
    - ``mean_input``: ``"batch"`` (the step's mean router input) or ``"ema"`` (its running
      mean: the input of the batches to come, free of the step's own content).
    - ``normalise``: ``"adam"`` or ``"none"`` (the raw gradient step).
    """

    def __init__(
        self,
        module,
        n: int,
        k: int,
        seg,
        counts,
        pool,
        coefficient,
        optimizer=None,
        *,
        shock: str = "loads",
        mean_input: str = "batch",
        normalise: str = "adam",
    ):
        for name, v, ok in (
            ("shock", shock, ("loads", "offset")),
            ("mean_input", mean_input, ("batch", "ema")),
            ("normalise", normalise, ("adam", "none")),
        ):
            if v not in ok:
                raise ValueError(f"{name}: one of {', '.join(ok)}, got {v!r}")
        self.shock, self.mean_input, self.normalise = shock, mean_input, normalise
        self._xbar = None
        self.module = module
        self.n, self.k = int(n), int(k)
        self.seg, self.counts = seg, counts
        self.pool, self.coefficient = pool, coefficient
        self.optimizer = optimizer
        self.weight = _weight(module)
        self.ok = self.weight is not None and self.weight.shape[0] == self.n
        self._v = None
        self._t = 0
        self._ref = None  # EMA of the loads (device)
        self._drive = None  # EMA of the language model's step (device)
        self.error: Exception | None = None

    def forward(self, args, logits) -> None:
        """From the router's forward hook: keep the input, hook the logits' gradient."""
        if not self.ok or not torch.is_grad_enabled() or not isinstance(logits, torch.Tensor):
            return
        if not logits.requires_grad or logits.shape[-1] != self.n:
            return
        x = args[0] if args and isinstance(args[0], torch.Tensor) else None
        if x is None or x.shape[-1] != self.weight.shape[1]:
            return
        x = x.detach().reshape(-1, x.shape[-1])
        z = logits.detach().reshape(-1, self.n)
        if x.shape[0] != z.shape[0]:
            return
        alpha = float(self.coefficient())

        def on_grad(g):
            try:
                with torch.no_grad():
                    self._backward(g.reshape(-1, self.n), z, x, alpha)
            except Exception as e:  # never break the training backward pass
                if self.error is None:
                    self.error = e
            return None

        logits.register_hook(on_grad)

    def _second_moment(self, wg: torch.Tensor) -> torch.Tensor:
        st = None if self.optimizer is None else self.optimizer.state.get(self.weight)
        if st is not None and "exp_avg_sq" in st and st.get("step") is not None:
            step = st["step"]
            step = (
                float(step.item())
                if isinstance(step, torch.Tensor) and step.device.type == "cpu"
                else step
            )
            if isinstance(step, int | float) and step >= 1:
                beta2 = self.optimizer.defaults.get("betas", (0.9, BETA2))[1]
                return st["exp_avg_sq"].float() / (1.0 - beta2**step)
        self._t += 1
        if self._v is None:
            self._v = torch.zeros_like(wg)
        self._v.mul_(BETA2).addcmul_(wg, wg, value=1.0 - BETA2)
        return self._v / (1.0 - BETA2**self._t)

    def _backward(self, g, z, x, alpha) -> None:
        p = torch.softmax(z.float(), dim=-1)
        F, rows = self.pool()
        xf = x.float()
        c = self.counts.float()
        tokens = c.sum() / self.k
        f = c / c.sum().clamp_min(1.0)
        if self.shock == "offset":  # the hard loads' departure from the soft importance
            f = f - p.mean(0)
        if self._ref is None:
            self._ref = f.clone()
        d = f - self._ref
        self._ref.add_(d, alpha=SHOCK_RATE)
        # the aux gradient at the pooled fractions F (to split it off) and its response to the
        # shock, exactly: it is linear in F, and this layer's loads enter F with weight k T /
        # rows; both in one batch with the total gradient, one matrix product for the three
        fr = torch.stack([F, d * (self.k * tokens / rows)])
        g3 = torch.cat([g.float()[None], aux_logit_gradient(p[None], fr[:, None, :], rows)])
        w3 = g3.transpose(1, 2) @ xf  # (3, N, d): weight gradients
        if self.normalise == "adam":
            scale = 1.0 / (self._second_moment(w3[0]).sqrt() + EPS)
        else:
            scale = torch.ones_like(w3[0])
        xbar = xf.mean(0)
        if self.mean_input == "ema":
            if self._xbar is None:
                self._xbar = xbar.clone()
            xbar, self._xbar = self._xbar.clone(), self._xbar.add_(xbar - self._xbar, alpha=0.02)
        # the Adam-normalised steps of the mean logits, centred: the language model's part (total
        # minus the aux part at the coefficient in force) and the aux part's response
        dz = -(torch.stack([w3[0] - alpha * w3[1], w3[2]]) * scale) @ xbar
        dz = dz - dz.mean(1, keepdim=True)
        # the language model's drive (a steady preference of the gate) does not respond to the
        # step's shock and only adds noise to the projection: removed with its running mean
        if self._drive is None:
            self._drive = dz[0].clone()
        lm = dz[0] - self._drive
        self._drive.add_(dz[0] - self._drive, alpha=DRIVE_RATE)
        vals = torch.stack([(lm * d).sum(), (dz[1] * d).sum(), (d * d).sum()])
        self.seg[:3] += vals.to(self.seg.dtype)
        self.seg[3] += 1.0
        self.seg[4] += alpha


assert FORCE_FIELDS == 5
