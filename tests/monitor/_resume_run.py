"""A training run that checkpoints its model, optimizer and RouterMonitor, for the kill-and-resume
test: ``python -m tests.monitor._resume_run OUT STEPS EVERY [--kill-at K] [--resume]``. With
``--kill-at`` the process SIGKILLs itself after logging step K (mid-way between checkpoints)."""

from __future__ import annotations

import os
import signal
import sys
from pathlib import Path

import torch

from moebif.monitor.hooks import RouterMonitor
from moebif.monitor.tiny import text_batches, tiny_model


def run(out, steps: int, every: int, *, kill_at: int | None = None, resume: bool = False):
    """Train tiny Mixtral on real text with the aux loss flipped to -1 for steps 40-59 (a
    collapse to alarm about); checkpoint every ``every`` steps. Returns the monitor."""
    torch.set_num_threads(1)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    batches = list(text_batches(steps, 4, 32, seed=7))
    model = tiny_model("mixtral", seed=3).train()
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    mon = RouterMonitor(model, log=out / "router_log.jsonl", window=32)
    start = 0
    ckpt = out / "ckpt.pt"
    if resume:
        state = torch.load(ckpt, weights_only=True)
        model.load_state_dict(state["model"])
        opt.load_state_dict(state["opt"])
        mon.load_state_dict(state["monitor"])
        start = state["step"]
    for i in range(start, steps):
        model.router_aux_loss_coef = -1.0 if 40 <= i < 60 else 0.1
        x = batches[i]
        loss = model(input_ids=x, labels=x).loss
        opt.zero_grad()
        loss.backward()
        opt.step()
        mon.step()
        if (i + 1) % every == 0:
            torch.save(
                {
                    "model": model.state_dict(),
                    "opt": opt.state_dict(),
                    "monitor": mon.state_dict(),
                    "step": i + 1,
                },
                ckpt,
            )
        if kill_at is not None and i == kill_at:
            os.kill(os.getpid(), signal.SIGKILL)
    mon.close()
    return mon


if __name__ == "__main__":
    a = sys.argv[1:]
    kill = int(a[a.index("--kill-at") + 1]) if "--kill-at" in a else None
    run(a[0], int(a[1]), int(a[2]), kill_at=kill, resume="--resume" in a)
