"""Experiment ``fig04`` (sec. 8.3, Fig. 4): a hard top-1 MoE classifier on scikit-learn's digits,
two bottleneck-MLP experts 64 -> 4 -> 10, router ``z(x) = W x + c + (h/2, -h/2)`` with the
straight-through estimator, trained with cross-entropy for a grid of skews ``h``, without and
with the balancing penalty (``lambda_lb`` in {0, 1}).

Every point is trained from its own random initialisations (the paper uses five; we use more,
see the config); all
``(h, lambda_lb, init)`` triples form one batched ensemble. Recorded on the held-out test split:
the absolute hard load ``|u_hat|`` and the accuracy.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .base import Check, Claim, floats

ID = "fig04"
TITLE = "Hard top-1 MoE on digits: test load imbalance and accuracy against the skew h"
PAPER = "Section 8.3, Fig. 4"


@dataclass(frozen=True)
class Config:
    lambdas: tuple = (0.0, 1.0)  # paper
    # The paper averages five initialisations a point. Test accuracies of single initialisations
    # scatter by 1-2 points, so with five the h = 0 reference alone is uncertain by ~0.7 points
    # and "within 1.5 points at every h" flips with the seed; 20 (standard error ~0.35) make the
    # claims stable. Batched, the cost is ~3x that of five.
    inits: int = 20
    # Not given in the paper; ours:
    # from no skew to the full collapse of the unbalanced router (|u_hat| ~ 0.97 at h = 5)
    h_values: tuple = (0.0, 0.5, 1.0, 1.5, 2.0, 2.5, 3.0, 3.5, 4.0, 4.5, 5.0)
    T: float = 1.0  # enters only the straight-through gradient and the penalty
    # Plain SGD with momentum and no weight decay on the router: with Adam (which rescales the
    # router's small straight-through gradients) or without a skew-absorbing bias the picture
    # changes: Adam lets c absorb h (no collapse up to h = 4), an L2 on the router makes
    # balancing fail at large h. With SGD the collapse comes from the dead expert, which gets no
    # tokens and hence no gradient, not from a cost put on the router.
    optimizer: str = "sgd"
    lr: float = 0.05
    momentum: float = 0.9
    batch: int = 64
    router_weight_decay: float = 0.0
    expert_weight_decay: float = 0.0
    steps: int = 1000  # ~50 epochs of the 1257 training images; training accuracy ~99 %
    test_fraction: float = 0.3  # stratified split, fixed (split_seed)
    split_seed: int = 0
    threads: int = 1
    seed: int = 4


def quick() -> Config:
    return Config(h_values=(0.0, 1.0, 2.0, 3.0, 4.0, 5.0), steps=600, inits=12)


def train_grid(c, h: np.ndarray, lam: np.ndarray, seed: int, progress=None) -> dict:
    """Train one digits model per entry of ``h`` and ``lam`` (arrays ``(M,)``) from random
    initialisation; return test metrics per member (arrays ``(M,)``)."""
    from ..nn import (
        BottleneckExperts,
        HardTop1MoE,
        Trainer,
        TrainSettings,
        digits_data,
        member_seeds,
        torch_threads,
    )

    data = digits_data(test_fraction=c.test_fraction, seed=c.split_seed)
    seeds = member_seeds(seed, h.size)
    chunks = 10
    with torch_threads(c.threads):
        model = HardTop1MoE(
            seeds,
            lambda g: BottleneckExperts(g),
            d_in=data.x_train.shape[1],
            T=c.T,
            router_bias=True,
        )
        settings = TrainSettings(
            optimizer=c.optimizer,
            lr=c.lr,
            momentum=c.momentum,
            batch=c.batch,
            router_weight_decay=c.router_weight_decay,
            expert_weight_decay=c.expert_weight_decay,
        )
        trainer = Trainer(model, data, settings, seeds=seeds, lambda_lb=lam)
        for k in range(chunks):
            trainer.train(h, c.steps // chunks + (k < c.steps % chunks))
            if progress:
                progress(k + 1, chunks)
        test = trainer.evaluate(h)
        train = trainer.evaluate(h, split="train")
    return {
        "abs_load": np.abs(test["load"]),
        "accuracy": 100.0 * test["accuracy"],
        "train_accuracy": 100.0 * train["accuracy"],
        "importance": test["importance"],
        "member_seeds": seeds,
    }


def run(config: Config, progress=None) -> dict:
    c = config
    grid = [(h, lb) for lb in c.lambdas for h in c.h_values]
    h = np.repeat([g[0] for g in grid], c.inits).astype(float)
    lam = np.repeat([g[1] for g in grid], c.inits).astype(float)
    res = train_grid(c, h, lam, c.seed, progress)
    shape = (len(c.lambdas), len(c.h_values), c.inits)
    curves = {}
    for j, lb in enumerate(c.lambdas):
        u = res["abs_load"].reshape(shape)[j]
        acc = res["accuracy"].reshape(shape)[j]
        curves[f"{lb:g}"] = {
            "lambda_lb": lb,
            "h": np.asarray(c.h_values),
            "abs_load_mean": u.mean(axis=1),
            "abs_load_sd": u.std(axis=1),
            "accuracy_mean": acc.mean(axis=1),
            "accuracy_sd": acc.std(axis=1),
            "train_accuracy_mean": res["train_accuracy"].reshape(shape)[j].mean(axis=1),
            "abs_load": u,
            "accuracy": acc,
        }
    return {"curves": curves, "member_seeds": res["member_seeds"]}


def _spearman(x, y) -> float:
    from scipy.stats import spearmanr

    return float(spearmanr(x, y).statistic)


def claims(data: dict, config: Config) -> list[Claim]:
    c, curves = config, data["curves"]
    lo, hi = min(c.lambdas), max(c.lambdas)
    r0, r1 = curves[f"{lo:g}"], curves[f"{hi:g}"]
    h = np.asarray(c.h_values)
    i0, imax = int(np.argmin(np.abs(h))), int(np.argmax(h))
    u0, a0 = floats(r0["abs_load_mean"]), floats(r0["accuracy_mean"])
    u1, a1 = floats(r1["abs_load_mean"]), floats(r1["accuracy_mean"])
    rho = _spearman(h, u0)
    drop = float(a0[i0] - a0[imax])
    dev1 = float(np.max(np.abs(a1 - a1[i0])))
    return [
        Claim(
            "fig04-collapse",
            f"Without balancing, test |u_hat| grows with h (> 0.9 at h = {h[imax]:g}) and test "
            "accuracy falls by >= 3 points from h = 0",
            predicted={
                "|u_hat| at h_max": "> 0.9",
                "rank correlation (h, |u_hat|)": ">= 0.9",
                "accuracy drop": ">= 3 points",
            },
            measured={
                "|u_hat| at h_max": float(u0[imax]),
                "rank correlation": rho,
                "accuracy at h = 0": float(a0[i0]),
                "accuracy at h_max": float(a0[imax]),
                "accuracy drop": drop,
            },
            tolerance=f"means over {c.inits} inits a point; Spearman correlation over the h grid",
            holds=bool(u0[imax] > 0.9 and rho >= 0.9 and drop >= 3.0),
            checks=(
                Check("|u_hat| at h_max", u0[imax], lower=0.9),
                Check("rank correlation", rho, lower=0.9),
                Check("accuracy drop", drop, lower=3.0),
            ),
        ),
        Claim(
            "fig04-balanced",
            f"With lambda_lb = {hi:g}, test |u_hat| stays < 0.25 and the accuracy within 1.5 "
            "points of its h = 0 value at every h",
            predicted={"max |u_hat|": "< 0.25", "max |accuracy - accuracy(h=0)|": "<= 1.5"},
            measured={
                "max |u_hat|": float(u1.max()),
                "at h": float(h[int(np.argmax(u1))]),
                "max |accuracy - accuracy(h=0)|": dev1,
            },
            tolerance=f"means over {c.inits} inits a point, worst h of the grid",
            holds=bool(u1.max() < 0.25 and dev1 <= 1.5),
            checks=(
                Check("max |u_hat|", u1.max(), upper=0.25),
                Check("max |accuracy - accuracy(h=0)|", dev1, upper=1.5),
            ),
        ),
    ]


def notes(data: dict, config: Config) -> str:
    c = config
    r0 = data["curves"][f"{min(c.lambdas):g}"]
    return (
        "Settings not in the paper are ours (config, with reasons). Accuracies are on the "
        f"held-out 30 % split (540 images: one image is 0.19 points); {c.inits} initialisations "
        "a point. At full collapse the model is a "
        "single 64 -> 4 -> 10 expert; its training accuracy also drops (to "
        f"{float(r0['train_accuracy_mean'][-1]):.1f} % at h = {c.h_values[-1]:g}), so the loss is "
        "one of capacity: the two experts share the ten classes through a four-unit bottleneck. "
        "The hold of the penalty weakens as h grows: in exploratory runs up to h = 6 the "
        "balanced load reached |u_hat| ~ 0.19-0.25 there (four seeds), so the grid stops at the "
        "collapse of the unbalanced router, h = 5."
    )


def plot(data: dict, config: Config):
    import matplotlib.pyplot as plt

    from ..style import COLORS, figure_style, panel_label

    curves = data["curves"]
    lo = min(config.lambdas)
    with figure_style():
        fig, axs = plt.subplots(2, 1, figsize=(4.4, 4.8), sharex=True, layout="constrained")
        for k, r in enumerate(curves.values()):
            base = r["lambda_lb"] == lo
            kw = {
                "color": COLORS[k],
                "ls": "-" if base else "--",
                "marker": "o" if base else "s",
                "ms": 4,
                "capsize": 2.5,
                "label": f"λ_lb = {r['lambda_lb']:g}",
            }
            axs[0].errorbar(r["h"], r["abs_load_mean"], yerr=r["abs_load_sd"], **kw)
            axs[1].errorbar(r["h"], r["accuracy_mean"], yerr=r["accuracy_sd"], **kw)
        axs[0].set(ylabel="test |û|, hard load", ylim=(0, 1.05))
        axs[1].set(ylabel="test accuracy (%)", xlabel="external skew h")
        axs[0].legend(loc="upper left", title=f"mean ± sd, {config.inits} inits", title_fontsize=7)
        for ax, lab in zip(axs, "ab", strict=True):
            panel_label(ax, lab)
        axs[0].set_title("digits, two hard top-1 experts 64 → 4 → 10")
    return fig
