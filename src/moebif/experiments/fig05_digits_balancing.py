"""Experiment ``fig05`` (sec. 8.3, Fig. 5): the digits MoE of ``fig04`` at fixed skew ``h = 2``
under a scan of the balancing strength ``lambda_lb``.

Independent initialisations at every point (the paper uses five; we use more, see the config),
all trained as one batched ensemble together
with a reference without skew (``h = 0``, ``lambda_lb = 0``), against which the recovery of the
accuracy is measured. Recorded on the test split: ``|u_hat|`` and the accuracy.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .base import Check, Claim, floats
from .fig04_digits import train_grid

ID = "fig05"
TITLE = "Digits MoE at h = 2: load imbalance and accuracy against the balancing strength"
PAPER = "Section 8.3, Fig. 5"


@dataclass(frozen=True)
class Config:
    h: float = 2.0  # paper
    # The paper uses 5 initialisations a point. At h = 2 the unbalanced router is collapsed in
    # some initialisations and not in others (sd of |u_hat| ~ 0.2), so 5 inits leave the mean
    # at lambda_lb = 0 uncertain by ~ +-0.09, across the 0.6 of the claim; 20 inits (+-0.045)
    # make the claims stable under a change of seed. The cost is nearly flat in the ensemble size.
    inits: int = 20
    # not given: a log grid from no penalty to a dominant one
    lambdas: tuple = (0.0, 0.01, 0.03, 0.1, 0.3, 1.0, 3.0, 10.0)
    # model, optimiser, data: as fig04 (see there for the reasons)
    T: float = 1.0
    optimizer: str = "sgd"
    lr: float = 0.05
    momentum: float = 0.9
    batch: int = 64
    router_weight_decay: float = 0.0
    expert_weight_decay: float = 0.0
    steps: int = 1000
    test_fraction: float = 0.3
    split_seed: int = 0
    # claims: "large" penalty lambda_lb >= large
    large: float = 1.0
    # fig05-load-unbalanced: "noticeable imbalance" (the paper) read as the mean |u_hat| at
    # lambda_lb = 0 at least this many times the mean at lambda_lb >= large, with a bootstrap
    # interval (over inits) that excludes 1
    imbalance_ratio: float = 3.0
    bootstrap: int = 2000
    bootstrap_level: float = 0.95
    threads: int = 1
    seed: int = 5


def quick() -> Config:
    return Config(lambdas=(0.0, 0.1, 1.0, 3.0, 10.0), steps=600, inits=12)


def run(config: Config, progress=None) -> dict:
    c = config
    n = len(c.lambdas)
    # members: every lambda_lb at h, then the unskewed reference (h = 0, lambda_lb = 0)
    h = np.r_[np.full(n * c.inits, c.h), np.zeros(c.inits)]
    lam = np.r_[np.repeat(np.asarray(c.lambdas, dtype=float), c.inits), np.zeros(c.inits)]
    res = train_grid(c, h, lam, c.seed, progress)
    u = res["abs_load"][: n * c.inits].reshape(n, c.inits)
    acc = res["accuracy"][: n * c.inits].reshape(n, c.inits)
    ref = res["accuracy"][n * c.inits :]
    return {
        "lambda_lb": np.asarray(c.lambdas),
        "abs_load_mean": u.mean(axis=1),
        "abs_load_sd": u.std(axis=1),
        "accuracy_mean": acc.mean(axis=1),
        "accuracy_sd": acc.std(axis=1),
        "abs_load": u,
        "accuracy": acc,
        "reference_accuracy_mean": float(ref.mean()),
        "reference_accuracy_sd": float(ref.std()),
        "reference_abs_load_mean": float(res["abs_load"][n * c.inits :].mean()),
        "member_seeds": res["member_seeds"],
    }


def claims(data: dict, config: Config) -> list[Claim]:
    c, d = config, data
    lam = floats(d["lambda_lb"])
    u, acc = floats(d["abs_load_mean"]), floats(d["accuracy_mean"])
    i0 = int(np.argmin(lam))
    large = lam >= c.large
    ref = d["reference_accuracy_mean"]
    acc_large = float(acc[large].mean())
    u_all = floats(d["abs_load"])  # (lambda_lb, init)
    ratio, interval = _imbalance_ratio(u_all, i0, large, c)
    return [
        Claim(
            "fig05-load-unbalanced",
            f"At h = {c.h:g} the load is clearly more imbalanced without balancing than with a "
            f"large penalty: the mean |u_hat| at lambda_lb = 0 is at least {c.imbalance_ratio:g}x "
            f"the mean at lambda_lb >= {c.large:g} (the paper: a noticeable imbalance at "
            "lambda_lb = 0 turning into nearly balanced usage as lambda_lb grows)",
            predicted=f">= {c.imbalance_ratio:g}, bootstrap interval above 1",
            measured={
                "ratio": ratio,
                f"{c.bootstrap_level:.0%} bootstrap interval": interval,
                "|u_hat| at lambda_lb = 0": float(u[i0]),
                f"|u_hat| at lambda_lb >= {c.large:g}": float(u_all[large].mean()),
            },
            tolerance=f"means over {c.inits} inits a point; {c.bootstrap} bootstrap resamples "
            "of the inits at every lambda_lb. Earlier versions required |u_hat| > 0.6 at "
            "lambda_lb = 0: that threshold was ours, not the paper's "
            f"(measured {float(u[i0]):.3f})",
            holds=bool(ratio >= c.imbalance_ratio and interval[0] > 1.0),
            checks=(
                Check("ratio", ratio, lower=c.imbalance_ratio),
                Check("bootstrap interval, lower end", interval[0], lower=1.0),
            ),
        ),
        Claim(
            "fig05-load-balanced",
            f"At h = {c.h:g}, |u_hat| falls to < 0.15 at lambda_lb >= {c.large:g}",
            predicted="< 0.15",
            measured={f"lambda={v:g}": float(x) for v, x in zip(lam, u, strict=True)},
            tolerance=f"means over {c.inits} inits, every lambda_lb >= {c.large:g}",
            holds=bool(np.all(u[large] < 0.15)),
            checks=tuple(
                Check(f"|u_hat| lambda={v:g}", x, upper=0.15)
                for v, x in zip(lam[large], u[large], strict=True)
            ),
        ),
        Claim(
            "fig05-accuracy",
            "As lambda_lb increases, the test accuracy recovers: at lambda_lb >= "
            f"{c.large:g} it is above its lambda_lb = 0 value and within 1.5 points of the "
            "unskewed model (h = 0, lambda_lb = 0)",
            predicted={
                "accuracy(lambda >= large) - accuracy(lambda = 0)": "> 0",
                "reference - accuracy(lambda >= large)": "<= 1.5",
            },
            measured={
                "accuracy at lambda_lb = 0": float(acc[i0]),
                f"mean accuracy at lambda_lb >= {c.large:g}": acc_large,
                "reference (h = 0)": ref,
            },
            tolerance=f"means over {c.inits} inits a point (large-lambda points pooled)",
            holds=bool(acc_large > acc[i0] and ref - acc_large <= 1.5),
            checks=(
                Check("accuracy gain", acc_large - acc[i0], lower=0.0),
                Check("reference - accuracy(lambda >= large)", ref - acc_large, upper=1.5),
            ),
        ),
    ]


def _imbalance_ratio(u: np.ndarray, i0: int, large: np.ndarray, c: Config):
    """Mean |u_hat| at lambda_lb = 0 over the mean at lambda_lb >= large (pooled inits), and its
    percentile bootstrap interval: the inits of every lambda_lb resampled independently."""
    ratio = float(u[i0].mean() / u[large].mean())
    rng = np.random.default_rng(np.random.SeedSequence([c.seed, 5]))
    n = u.shape[1]
    idx0 = rng.integers(0, n, size=(c.bootstrap, n))
    idx = rng.integers(0, n, size=(c.bootstrap, int(large.sum()), n))
    top = u[i0][idx0].mean(axis=1)
    bottom = np.take_along_axis(u[large][None, :, :], idx, axis=2).mean(axis=(1, 2))
    q = (1.0 - c.bootstrap_level) / 2.0
    lo, hi = np.quantile(top / bottom, [q, 1.0 - q])
    return ratio, [float(lo), float(hi)]


def notes(data: dict, config: Config) -> str:
    c, d = config, data
    i0 = int(np.argmin(d["lambda_lb"]))
    u0 = floats(d["abs_load"])[i0]
    return (
        "Settings not in the paper are ours (config, with reasons; model and optimiser as fig04). "
        f"At h = {c.h:g} and lambda_lb = 0 the mean |u_hat| is {float(u0.mean()):.2f}, and it "
        f"varies widely between initialisations ({float(u0.min()):.2f} to "
        f"{float(u0.max()):.2f}): the unbalanced router is only partly collapsed at this skew. "
        "The paper calls this a noticeable imbalance that turns into nearly balanced usage as "
        "lambda_lb grows; the claim fig05-load-unbalanced states exactly that, as a ratio of the "
        f"mean |u_hat| at lambda_lb = 0 to the mean at lambda_lb >= {c.large:g}, with a bootstrap "
        "interval over the inits. Earlier versions of this reproduction required instead "
        "|u_hat| > 0.6 at lambda_lb = 0. That threshold was our own number, not the paper's. Here "
        f"the mean is {float(u0.mean()):.3f} ({'above' if u0.mean() > 0.6 else 'below'} 0.6), "
        "and it is below 0.6 at most seeds: over five base seeds (5, 6, "
        "7, 11, 12) the 20-init mean was 0.517, 0.599, 0.586, 0.598 and 0.524. No reasonable "
        "setting moved it clearly above 0.6 (tried: T = 0.5, 1, 2; "
        "lr 0.02-0.1 with and without momentum; batch 64 and 128; 500-2000 steps; router "
        "initialised as nn.Linear, scaled by 0.3, or at zero: 0.50-0.64 with 10 inits each; "
        "Adam with an L2 penalty on the router strong enough to reach 0.7 makes balancing fail "
        "at large h instead); the collapse of fig04 becomes nearly complete (> 0.9) only from "
        "h ~ 4. "
        f"The unskewed reference reaches {d['reference_accuracy_mean']:.1f} % "
        f"(sd {d['reference_accuracy_sd']:.1f} over initialisations). As in the paper, the "
        "accuracy need not be monotone in lambda_lb point by point; its trend is."
    )


def plot(data: dict, config: Config):
    import matplotlib.pyplot as plt

    from ..style import COLORS, THEORY, figure_style, panel_label

    d = data
    lam = np.asarray(d["lambda_lb"], dtype=float)
    pos = lam[lam > 0]
    zero_at = pos.min() / 4  # lambda_lb = 0 drawn left of the log axis, labelled "0"
    x = np.where(lam > 0, lam, zero_at)
    with figure_style():
        fig, axs = plt.subplots(2, 1, figsize=(4.4, 4.8), sharex=True, layout="constrained")
        kw = {"marker": "o", "ms": 4, "capsize": 2.5}
        axs[0].errorbar(
            x,
            d["abs_load_mean"],
            yerr=d["abs_load_sd"],
            color=COLORS[0],
            **kw,
            label=f"h = {config.h:g}",
        )
        axs[1].errorbar(
            x,
            d["accuracy_mean"],
            yerr=d["accuracy_sd"],
            color=COLORS[0],
            **kw,
            label=f"h = {config.h:g}",
        )
        ref = d["reference_accuracy_mean"]
        axs[1].axhline(ref, **THEORY, label="unskewed model (h = 0, λ_lb = 0)")
        axs[1].axhspan(ref - 1.5, ref + 1.5, color="0.92", lw=0, zorder=0, label="± 1.5 points")
        axs[0].axhline(d["reference_abs_load_mean"], **THEORY, label="unskewed model")
        axs[0].set(ylabel="test |û|, hard load", ylim=(0, 1.05))
        axs[1].set(ylabel="test accuracy (%)", xlabel="balancing strength λ_lb")
        axs[1].set_xscale("log")
        axs[1].set_xticks([zero_at, *pos], ["0", *[f"{v:g}" for v in pos]])
        axs[1].minorticks_off()
        axs[0].legend(loc="upper right", title=f"mean ± sd, {config.inits} inits", title_fontsize=7)
        low = float(np.min(np.asarray(d["accuracy_mean"]) - np.asarray(d["accuracy_sd"])))
        axs[1].set_ylim(bottom=low - 1.8)  # room for the legend below the error bars
        axs[1].legend(loc="lower right")
        for ax, lab in zip(axs, "ab", strict=True):
            panel_label(ax, lab)
        axs[0].set_title("digits MoE, hard top-1, two experts 64 → 4 → 10")
    return fig
