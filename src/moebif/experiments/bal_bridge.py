"""Bridge to a real model: the loss-free bias (DeepSeek-V3) in a tiny Hugging Face Mixtral trained
on real text, against the relay-controller prediction of :class:`~moebif.model.balancer_theory.
BiasTheory`.

A tiny random-init Mixtral (:func:`moebif.monitor.tiny.tiny_model`: 2 layers, 8 experts, top-2)
is trained on byte-level text of the Python standard library (AdamW, no aux loss). Each layer's
router selects the top-k of ``logits + beta + h e_0`` while the gate weights use the unbiased
softmax (DeepSeek's rule, bias in logit units); after every optimizer step ``beta += u sign(mean n
- n)`` (Megatron's uncentred update). After a warm-up with ``h = 0`` a constant gate skew ``h``
is put on expert 0's selection logit.

**Prediction** (the closed loop ``b' = -U sign(s)`` with ``U = 2u`` a step: the overloaded
expert's bias falls by ``u`` while the underloaded ones' rise by ``u``): the gap
``g = beta_0 - mean_{j != 0} beta_j`` ramps at ``-2u`` a step (``-u`` to ``-2u``: experts that
are overloaded by their own preference do not rise) until it cancels the skew, ``g -> -h`` (any
``u > 0`` absorbs a constant logit offset: integral action), then chatters. In the score model a
skew is a drift on the scores (it accumulates through the forgetting) and the absorbed-skew
bound ``h < U A / lambda`` applies; a constant logit offset is the static case, absorbed for
every ``u``. The router weights also learn; whether they take part of the offset is measured.

Not in the ``reproduce`` registry (it trains a network: about 15 s a rate on one core); run
``python examples/bias_bridge_mixtral.py``. Needs the ``torch`` and ``hf`` extras.
"""

from __future__ import annotations

import math

import numpy as np

__all__ = ["run_bridge"]


def _patch_routers(model, state: dict) -> list:
    """Replace each Mixtral router's forward by the biased selection; returns the routers."""
    import torch
    import torch.nn.functional as F

    routers = []
    for li, layer in enumerate(model.model.layers):
        gate = layer.mlp.gate

        def forward(hidden_states, gate=gate, li=li):
            hs = hidden_states.reshape(-1, gate.hidden_dim)
            logits = F.linear(hs, gate.weight)
            probs = torch.softmax(logits.float(), dim=-1)
            with torch.no_grad():
                sel = logits.float() + state["beta"][li] + state["skew"]
                idx = torch.topk(sel, gate.top_k, dim=-1).indices
                state["counts"][li] = torch.bincount(
                    idx.reshape(-1), minlength=gate.num_experts
                ).numpy()
            top = probs.gather(1, idx)
            top = top / top.sum(dim=-1, keepdim=True)
            return logits, top.to(hs.dtype), idx

        gate.forward = forward
        routers.append(gate)
    return routers


def run_bridge(
    *,
    rates=(0.01, 0.02),
    h: float = 1.0,
    warmup: int = 50,
    steps: int = 150,
    batch: int = 8,
    seq: int = 64,
    lr: float = 1e-3,
    seed: int = 0,
    corpus_bytes: int = 1 << 20,
    progress=None,
) -> dict:
    """Train the tiny Mixtral with the loss-free bias at each rate ``u`` of ``rates``; returns
    the per-step gap ``g`` (mean over layers), expert 0's load and the predictions (module
    docstring). ``h``: the skew on expert 0's selection logit from step ``warmup`` on."""
    import torch

    from ..monitor.tiny import stdlib_corpus, text_batches, tiny_model

    corpus = stdlib_corpus(corpus_bytes)
    torch.set_num_threads(1)
    out = {"h": h, "warmup": warmup, "steps": steps, "batch": batch, "seq": seq, "runs": []}
    for ui, u in enumerate(rates):
        model = tiny_model("mixtral", seed=seed)
        model.config.output_router_logits = False  # no aux loss: the bias balances alone
        n_layers = len(model.model.layers)
        n = model.config.num_local_experts
        k = model.config.num_experts_per_tok
        state = {
            "beta": torch.zeros(n_layers, n),
            "skew": torch.zeros(n),
            "counts": [None] * n_layers,
        }
        _patch_routers(model, state)
        opt = torch.optim.AdamW(model.parameters(), lr=lr)
        gaps, load0, losses = [], [], []
        for t, x in enumerate(text_batches(warmup + steps, batch, seq, seed=seed, corpus=corpus)):
            if t == warmup:
                state["skew"][0] = h
            loss = model(input_ids=x, labels=x).loss
            loss.backward()
            opt.step()
            opt.zero_grad()
            counts = np.array(state["counts"], dtype=float)  # (layers, N) of this step
            mean = counts.mean(axis=1, keepdims=True)
            state["beta"] += torch.from_numpy(u * np.sign(mean - counts)).float()
            b = state["beta"].numpy()
            gaps.append(float(np.mean(b[:, 0] - b[:, 1:].mean(axis=1))))
            load0.append(float(counts[:, 0].mean() / (k * batch * seq)))
            losses.append(float(loss.item()))
            if progress:
                progress(ui * (warmup + steps) + t + 1, len(rates) * (warmup + steps))
        g = np.asarray(gaps)
        g0 = g[warmup - 1] if warmup > 0 else 0.0
        rel = g[warmup:] - g0
        # the ramp: steps until the gap has moved by h/2, against h / (2 * 2u) .. h / (2 u)
        half = np.flatnonzero(rel <= -0.5 * h)
        t_half = int(half[0]) + 1 if half.size else math.nan
        tail = rel[-max(steps // 4, 1) :]
        out["runs"].append(
            {
                "u": u,
                "gap": gaps,
                "load0": load0,
                "loss": losses,
                "t_half": t_half,
                "t_half_predicted": [h / (4 * u), h / (2 * u)],
                "final_gap": float(tail.mean()),
                "final_gap_sd": float(tail.std()),
                "final_gap_predicted": -h,
                "load0_before": float(np.mean(load0[max(warmup - 10, 0) : warmup]))
                if warmup
                else math.nan,
                "load0_final": float(np.mean(load0[-max(steps // 4, 1) :])),
                "balanced_load": 1.0 / n,
            }
        )
    return out


def plot_bridge(res: dict):
    """The gap ``g`` after the skew against the predicted ramp band and ``-h``, and expert 0's
    load, per rate: a matplotlib Figure."""
    import matplotlib.pyplot as plt

    from ..style import COLORS, THEORY, figure_style, panel_label

    h, w = res["h"], res["warmup"]
    with figure_style():
        fig, axs = plt.subplots(1, 2, figsize=(7.0, 2.8), layout="constrained")
        for i, r in enumerate(res["runs"]):
            g = np.asarray(r["gap"])
            t = np.arange(g.size) - w + 1
            c = COLORS[i % len(COLORS)]
            rel = g - (g[w - 1] if w > 0 else 0.0)
            axs[0].plot(t[w:], rel[w:], color=c, lw=1.2, label=f"u = {r['u']:g}")
            tt = np.arange(0, g.size - w + 1)
            axs[0].fill_between(
                tt,
                np.maximum(-2 * r["u"] * tt, -h),
                np.maximum(-r["u"] * tt, -h),
                color=c,
                alpha=0.15,
                lw=0,
            )
            load = np.convolve(r["load0"], np.ones(5) / 5, mode="same")
            axs[1].plot(t, load, color=c, lw=1.0, label=f"u = {r['u']:g}")
        axs[0].axhline(-h, **THEORY, label="−h (absorbed)")
        axs[0].set(xlabel="steps after the skew", ylabel="β₀ − mean β_j (logits)")
        axs[0].legend(fontsize=6)
        axs[0].set_title("bias gap: ramp −u..−2u a step (bands)", fontsize=8)
        panel_label(axs[0], "a")
        axs[1].axhline(res["runs"][0]["balanced_load"], **THEORY, label="1/N")
        axs[1].axvline(0, color="0.5", lw=0.8, ls=":")
        axs[1].set(xlabel="steps after the skew", ylabel="load of expert 0 (5-step mean)")
        axs[1].legend(fontsize=6)
        axs[1].set_title(f"tiny Mixtral, stdlib text, h = {h:g}", fontsize=8)
        panel_label(axs[1], "b")
    return fig
