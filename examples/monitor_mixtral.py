"""Monitor a tiny Mixtral (random init from a config, no download) trained on CPU.

A synthetic token stream (a random sparse Markov chain over 512 tokens) is learned for
``--steps`` steps. Phase 1 trains with the usual aux loss; phase 2 flips its sign (a provoked
collapse: the loss now rewards imbalance); phase 3 restores it (recovery). The monitor counts
the experts each gate selects (from the gate's own indices) and raises its alarms.

    python examples/monitor_mixtral.py [--family mixtral|qwen2_moe|qwen3_moe|olmoe] [--out DIR]
        [--steps 300] [--window 64] [--collapse 0.25 0.55]

The figure of docs/monitoring.md: ``--steps 1200 --window 600 --collapse 0.5 0.58``, then
``moebif diagnose OUT/mixtral_router_log.jsonl --top-k 2 --window 600``.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

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


if __name__ == "__main__":
    ap = argparse.ArgumentParser()
    ap.add_argument("--family", default="mixtral")
    ap.add_argument("--steps", type=int, default=300)
    ap.add_argument("--window", type=int, default=64)
    ap.add_argument("--collapse", type=float, nargs=2, default=(0.25, 0.55), metavar=("FROM", "TO"))
    ap.add_argument("--out", type=Path, default=Path("monitor_example"))
    args = ap.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    log = args.out / f"{args.family}_router_log.jsonl"
    log.unlink(missing_ok=True)
    mon, losses = train(
        args.family, steps=args.steps, log=log, window=args.window, phases=tuple(args.collapse)
    )
    for a in mon.alarms:
        print(f"step {a.step:4d} {a.layer}: {a.kind}: {a.message}")
    print(json.dumps({k: v["metrics"] for k, v in mon.summary().items()}, indent=1))
    print(
        f"log written to {log}; run: moebif diagnose {log} --top-k 2 --window {args.window} "
        f"--out {args.out}"
    )
