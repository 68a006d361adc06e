"""Batched ensemble against a loop of independent models, on the fig04 workload (digits, two hard
top-1 experts 64 -> 4 -> 10, straight-through router, 11 skews x 2 penalties x 5 inits = 110
models).

Both train the same models with the same seeds, minibatches and optimiser for ``STEPS`` steps:

- batched: one :class:`~moebif.nn.HardTop1MoE` with all 110 members on a leading model axis;
- loop: each model alone (``M = 1``), one after the other. The loop is timed on ``LOOP_MODELS``
  of the 110 and scaled to all of them (every model costs the same).

The loop's models end with exactly the parameters of their batched counterparts (checked here
too). Each method is timed ``REPEATS`` times, the fastest kept; torch runs on one thread, as in
``reproduce``. Run: ``python benchmarks/bench_ensemble.py [--json PATH]``; exits 1 below
target (table and checks also in ``bench-results/ensemble.json``).
"""

from __future__ import annotations

import math
import sys
import time

import numpy as np
import torch
from _report import Report, arguments

from moebif.experiments.fig04_digits import Config
from moebif.nn import (
    BottleneckExperts,
    HardTop1MoE,
    Trainer,
    TrainSettings,
    digits_data,
    member_seeds,
    torch_threads,
)

STEPS = 200  # per model; a fig04 run does 1000
LOOP_MODELS = 10
REPEATS = 3
TARGET = 3.0  # "a loop over models is several times slower"


def _workload():
    c = Config()
    grid = [(h, lb) for lb in c.lambdas for h in c.h_values]
    h = np.repeat([g[0] for g in grid], c.inits).astype(float)
    lam = np.repeat([g[1] for g in grid], c.inits).astype(float)
    settings = TrainSettings(optimizer=c.optimizer, lr=c.lr, momentum=c.momentum, batch=c.batch)
    return c, h, lam, member_seeds(c.seed, h.size), settings


def _train(data, settings, seeds, h, lam, T):
    model = HardTop1MoE(
        seeds, lambda g: BottleneckExperts(g), d_in=data.x_train.shape[1], T=T, router_bias=True
    )
    Trainer(model, data, settings, seeds=seeds, lambda_lb=lam).train(h, STEPS)
    return model


def main(argv=None) -> int:
    args = arguments(__doc__, argv)
    c, h, lam, seeds, settings = _workload()
    data = digits_data(test_fraction=c.test_fraction, seed=c.split_seed)
    M = h.size
    pick = np.linspace(0, M - 1, LOOP_MODELS).round().astype(int)
    with torch_threads(1):
        _train(data, settings, seeds[:2], h[:2], lam[:2], c.T)  # warm-up
        best_batched = best_loop = math.inf
        for _ in range(REPEATS):
            t0 = time.perf_counter()
            batched = _train(data, settings, seeds, h, lam, c.T)
            best_batched = min(best_batched, time.perf_counter() - t0)
            t0 = time.perf_counter()
            alone = [
                _train(data, settings, [seeds[k]], h[k : k + 1], lam[k : k + 1], c.T) for k in pick
            ]
            best_loop = min(best_loop, (time.perf_counter() - t0) * M / LOOP_MODELS)
    same = all(
        torch.equal(p.detach()[k], q.detach()[0])
        for k, solo in zip(pick, alone, strict=True)
        for p, q in zip(batched.parameters(), solo.parameters(), strict=True)
    )
    report = Report(
        "ensemble",
        f"fig04 workload: {M} models (digits, hard top-1, experts 64-4-10), {STEPS} steps of "
        f"batch {c.batch}; torch {torch.__version__}, 1 thread; best of {REPEATS}",
        json_path=args.json,
    )
    report.table(
        "",
        [("method", "<44"), ("seconds", ">9.2f"), ("model-steps/s", ">14.0f")],
        [
            ["batched ensemble (one model axis)", best_batched, M * STEPS / best_batched],
            [
                f"loop of {M} models (timed on {LOOP_MODELS}, scaled)",
                best_loop,
                M * STEPS / best_loop,
            ],
        ],
    )
    report.check("batched / loop speed-up", best_loop / best_batched, TARGET)
    report.require("members bit-identical to the models trained alone", same)
    return report.finish()


if __name__ == "__main__":
    sys.exit(main())
