"""Training loops shared by the monitor's torch tests (tiny models on CPU, real text: byte-level
tokens of the Python standard library, :func:`moebif.monitor.tiny.text_batches`)."""

from __future__ import annotations

import torch

from moebif.monitor.hooks import RouterMonitor
from moebif.monitor.tiny import text_batches, tiny_model


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
    **monitor_options,
):
    """Train with the aux loss, flip it to ``bad_coef`` in ``phases[0] <= step/steps < phases[1]``
    (``bad_coef = None``: never), then restore it. Returns the monitor and the losses."""
    model = tiny_model(family, seed)
    model.train()
    opt = torch.optim.AdamW(model.parameters(), lr=lr)
    mon = RouterMonitor(model, log=log, window=window, **monitor_options)
    losses = []
    for i, x in enumerate(text_batches(steps, batch, seq, seed=seed)):
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
