"""Training loops shared by the monitor's torch tests (tiny models on CPU)."""

from __future__ import annotations

import numpy as np
import torch

from moebif.monitor.hooks import RouterMonitor
from moebif.monitor.tiny import tiny_model


def token_stream(steps: int, batch: int, seq: int, vocab: int = 512, seed: int = 0):
    """Batches from a random Markov chain (each token has 4 likely successors)."""
    rng = np.random.default_rng(seed)
    succ = rng.integers(0, vocab, size=(vocab, 4))
    for _ in range(steps):
        x = np.empty((batch, seq), dtype=np.int64)
        x[:, 0] = rng.integers(0, vocab, size=batch)
        for t in range(1, seq):
            x[:, t] = succ[x[:, t - 1], rng.integers(0, 4, size=batch)]
        yield torch.from_numpy(x)


def train(
    family="mixtral",
    steps=300,
    phases=(0.25, 0.55),
    coef=0.1,
    bad_coef=-1.0,
    batch=8,
    seq=32,
    lr=3e-3,
    seed=0,
    log=None,
    window=64,
):
    """Train with the aux loss, flip it to ``bad_coef`` in ``phases[0] <= step/steps < phases[1]``
    (``bad_coef = None``: never), then restore it. Returns the monitor and the losses."""
    model = tiny_model(family, seed)
    model.train()
    opt = torch.optim.AdamW(model.parameters(), lr=lr)
    mon = RouterMonitor(model, log=log, window=window)
    losses = []
    for i, x in enumerate(token_stream(steps, batch, seq, seed=seed)):
        frac = i / steps
        bad = bad_coef is not None and phases[0] <= frac < phases[1]
        model.router_aux_loss_coef = bad_coef if bad else coef
        out = model(input_ids=x, labels=x)
        opt.zero_grad()
        out.loss.backward()
        opt.step()
        mon.step()
        losses.append(float(out.loss.detach()))
    mon.close()
    return mon, losses
