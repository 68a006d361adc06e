"""Training of MoE ensembles: losses, the balancing penalty, metrics, and the quasi-static scan.

Objective of member ``m`` (sec. 8.1-8.3): the task loss (MSE or cross-entropy) on its minibatch
plus the balancing penalty of sec. 8.2,

    L_lb = lambda_lb sum_i (mean_batch p_i - 1/2)^2,

plus an L2 penalty on the router (optimizer weight decay). The ensemble minimises the *sum* of the
members' objectives, so each member's gradient is its own; every member draws its minibatches
from its own generator (stream 1 of its seed). Hence a member trained in an ensemble ends bit for
bit where it ends when trained alone.

Metrics (per member, on a set of N inputs): hard load ``u_hat = (N_1 - N_2) / N``, soft importance
imbalance ``mean p_1 - mean p_2`` (for the soft router this is ``E u_hat = 2 E_x p_1 - 1``),
MSE or accuracy.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from .data import Dataset
from .models import generators
from .optim import EnsembleAdam, EnsembleSGD

__all__ = [
    "Trainer",
    "TrainSettings",
    "balancing_penalty",
    "evaluate",
    "member_seeds",
    "quasi_static_scan",
    "scan_legs",
    "task_loss",
    "torch_threads",
    "updown_path",
]


@dataclass(frozen=True)
class TrainSettings:
    """Optimiser and minibatches of one ensemble (the same for every member)."""

    optimizer: str = "sgd"  # "sgd" (with momentum) or "adam"
    lr: float = 0.1
    momentum: float = 0.9  # sgd only
    batch: int = 64
    router_weight_decay: float = 0.0  # L2 on the router parameters
    expert_weight_decay: float = 0.0  # L2 on the experts


@contextlib.contextmanager
def torch_threads(n: int):
    """Run torch with ``n`` intra-op threads, then restore the previous number."""
    old = torch.get_num_threads()
    torch.set_num_threads(int(n))
    try:
        yield
    finally:
        torch.set_num_threads(old)


@contextlib.contextmanager
def _no_denormals():
    """Flush denormals to zero while training or evaluating (then back to torch's default, off):
    optimiser states such as Adam's second moment of tiny gradients otherwise fall on the (many
    times) slower denormal path. Every run uses it alike, so results stay reproducible."""
    torch.set_flush_denormal(True)
    try:
        yield
    finally:
        torch.set_flush_denormal(False)


def balancing_penalty(p: Tensor, lambda_lb: Tensor) -> Tensor:
    """``lambda_lb sum_i (mean_batch p_i - 1/2)^2`` for ``p`` ``(M, B, 2)``, ``lambda_lb``
    ``(M,)``: ``(M,)``."""
    importance = p.transpose(1, 2).mean(dim=-1)  # (M, 2), mean over the token axis
    return lambda_lb * ((importance - 0.5) ** 2).sum(dim=-1)


def task_loss(y_hat: Tensor, target: Tensor, task: str) -> Tensor:
    """Per-member loss ``(M,)``: MSE (``target`` ``(M, B, 1)``) or cross-entropy (``target``
    ``(M, B)`` class labels)."""
    if task == "regression":
        return ((y_hat - target) ** 2).flatten(1).mean(dim=1)
    # classes on axis 1: log_softmax then vectorises over the tokens (several times faster than
    # over a short last axis)
    logp = torch.log_softmax(y_hat.transpose(1, 2), dim=1)  # (M, C, B)
    return -logp.gather(1, target.unsqueeze(1)).squeeze(1).mean(dim=1)


@torch.no_grad()
def evaluate(model, x: Tensor, y: Tensor, h: Tensor, task: str) -> dict[str, np.ndarray]:
    """Metrics of every member on the set ``(x, y)`` shared by all (``x`` ``(N, d)``): each an
    array ``(M,)``. ``load``: hard ``u_hat``; ``importance``: ``mean p_1 - mean p_2``; ``mse`` or
    ``accuracy``; ``loss``: the task loss."""
    M = model.n_models
    # materialised, not a stride-0 view: bmm then treats every member exactly as it treats one
    out = model(x.expand(M, -1, -1).contiguous(), h)
    target = y.expand(M, *y.shape)
    res = {
        "load": (out.g[..., 0] - out.g[..., 1]).mean(dim=1),
        "importance": (out.p[..., 0] - out.p[..., 1]).mean(dim=1),
        "loss": task_loss(out.y, target, task),
    }
    if task == "regression":
        res["mse"] = res["loss"]
    else:
        res["accuracy"] = (out.y.argmax(dim=-1) == target).to(torch.float32).mean(dim=1)
    return {k: v.numpy().astype(float) for k, v in res.items()}


def _per_member(value, M: int) -> Tensor:
    """A scalar or one value per member as a float32 tensor ``(M,)``."""
    return torch.tensor(np.broadcast_to(np.asarray(value, dtype=np.float32), (M,)))


class Trainer:
    """Trains an ensemble ``model`` (see :mod:`moebif.nn.models`) on ``data``.

    ``seeds``: the members' seeds (the ones the model was built with; stream 1 draws their
    minibatches); ``lambda_lb``: balancing strength per member, scalar or ``(M,)``. The optimiser
    state persists across :meth:`train` calls, so a scan continues from the previous state."""

    def __init__(
        self,
        model,
        data: Dataset,
        settings: TrainSettings,
        *,
        seeds: Sequence[int],
        lambda_lb: float | Sequence[float] = 0.0,
    ):
        M = model.n_models
        if len(seeds) != M:
            raise ValueError(f"seeds: {len(seeds)} seeds for {M} models")
        self.model, self.data, self.settings = model, data, settings
        self.lambda_lb = _per_member(lambda_lb, M)
        self._gens = generators(seeds, stream=1)
        router = list(model.router_parameters())
        ids = {id(q) for q in router}
        experts = [q for q in model.parameters() if id(q) not in ids]
        s = settings
        groups = [
            {"params": router, "weight_decay": s.router_weight_decay},
            {"params": experts, "weight_decay": s.expert_weight_decay},
        ]
        if s.optimizer == "sgd":
            self.optimizer = EnsembleSGD(groups, lr=s.lr, momentum=s.momentum)
        elif s.optimizer == "adam":
            self.optimizer = EnsembleAdam(groups, lr=s.lr)
        else:
            raise ValueError(f"optimizer: unknown {s.optimizer!r} (sgd or adam)")
        self.steps_done = 0

    def skew(self, h) -> Tensor:
        """``h`` (scalar or one value per member) as the model's input ``(M,)``."""
        return _per_member(h, self.model.n_models)

    def train(self, h: float | Sequence[float], steps: int) -> None:
        """``steps`` optimiser steps at skew ``h`` (scalar or one per member)."""
        d, model = self.data, self.model
        ht = self.skew(h)
        n, B = d.n_train, self.settings.batch
        # each member's minibatch indices for the whole call, from its own generator: (steps, M, B)
        idx = torch.stack([torch.randint(n, (steps, B), generator=g) for g in self._gens], dim=1)
        balancing = bool(torch.any(self.lambda_lb != 0))
        with _no_denormals():
            for t in range(steps):
                rows = idx[t].view(-1)
                xb = d.x_train.index_select(0, rows).view(*idx.shape[1:], -1)
                yb = d.y_train.index_select(0, rows).view(*idx.shape[1:], *d.y_train.shape[1:])
                out = model(xb, ht)
                loss = task_loss(out.y, yb, d.task)
                if balancing:
                    loss = loss + balancing_penalty(out.p, self.lambda_lb)
                self.optimizer.zero_grad()
                loss.sum().backward()
                self.optimizer.step()
        self.steps_done += steps

    def evaluate(self, h, *, split: str = "test") -> dict[str, np.ndarray]:
        """:func:`evaluate` on the test (or ``"train"``) split at skew ``h``."""
        d = self.data
        x, y = (d.x_test, d.y_test) if split == "test" else (d.x_train, d.y_train)
        with _no_denormals():
            return evaluate(self.model, x, y, self.skew(h), d.task)


def quasi_static_scan(
    trainer: Trainer,
    h_path: Sequence[float],
    *,
    steps_per_h: int,
    warmup_steps: int = 0,
    warmup_h: float | None = None,
    measure: Callable[[Trainer, float], dict[str, np.ndarray]] | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> dict[str, np.ndarray]:
    """The quasi-static protocol of sec. 8.1-8.2: train ``warmup_steps`` at ``warmup_h`` (default
    ``h_path[0]``), then for each ``h`` of the path continue training ``steps_per_h`` steps from
    the previous state and record ``measure(trainer, h)`` (default: test metrics). Returns each
    metric as an array ``(len(h_path), M)`` and ``h`` ``(len(h_path),)``."""
    measure = measure or (lambda tr, h: tr.evaluate(h))
    h_path = np.asarray(h_path, dtype=float)
    if warmup_steps:
        trainer.train(h_path[0] if warmup_h is None else warmup_h, warmup_steps)
    records: dict[str, list] = {}
    for i, h in enumerate(h_path):
        trainer.train(h, steps_per_h)
        for k, v in measure(trainer, float(h)).items():
            records.setdefault(k, []).append(v)
        if progress:
            progress(i + 1, len(h_path))
    return {"h": h_path, **{k: np.stack(v) for k, v in records.items()}}


def member_seeds(seed: int, n: int) -> list[int]:
    """``n`` distinct member seeds derived from an experiment's ``seed``."""
    return [int(v) for v in np.random.SeedSequence(seed).generate_state(n, np.uint32)]


def updown_path(h_max: float, h_step: float) -> tuple[np.ndarray, np.ndarray]:
    """The scan of sec. 8.1-8.2 in steps ``h_step``: starting at ``h = 0``, lower ``h`` to
    ``-h_max`` (preparation), raise it to ``+h_max`` (upward leg), lower it back to ``-h_max``
    (downward leg). Returns ``(h_path, leg)`` with ``leg`` one of ``"prep"``, ``"up"``,
    ``"down"`` per record (each turning point belongs to the leg that ends there)."""
    n = int(round(h_max / h_step))
    up = np.linspace(-h_max, h_max, 2 * n + 1)
    prep = up[n::-1]  # 0, -h_step, ..., -h_max
    h = np.concatenate([prep, up[1:], up[::-1][1:]])
    leg = np.array(["prep"] * prep.size + ["up"] * (up.size - 1) + ["down"] * (up.size - 1))
    return h, leg


def scan_legs(leg: np.ndarray) -> dict[str, np.ndarray]:
    """Record indices of the legs of :func:`updown_path`; the upward and downward legs start at
    their turning point (the last record of the leg before)."""
    idx = np.arange(leg.size)
    up, down = idx[leg == "up"], idx[leg == "down"]
    return {
        "prep": idx[leg == "prep"],
        "up": np.r_[up[0] - 1, up],
        "down": np.r_[down[0] - 1, down],
    }
