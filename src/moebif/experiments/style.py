"""One look for every figure: sizes for a paper column, theory dashed, measurements solid."""

from __future__ import annotations

import contextlib

import matplotlib

matplotlib.use("Agg")  # files only; no display needed
import matplotlib.pyplot as plt  # noqa: E402

THEORY = {"color": "0.15", "linestyle": "--", "linewidth": 1.3}
COLORS = ["#1f5fa8", "#c0392b", "#2a9d4b", "#8e44ad", "#d68910", "#17a5a5"]

RC = {
    "figure.dpi": 110,
    "savefig.dpi": 200,
    "font.size": 9,
    "axes.titlesize": 9.5,
    "axes.labelsize": 9,
    "legend.fontsize": 7.5,
    "legend.frameon": False,
    "xtick.labelsize": 8,
    "ytick.labelsize": 8,
    "axes.spines.top": False,
    "axes.spines.right": False,
    "lines.linewidth": 1.5,
    "svg.fonttype": "none",
    "svg.hashsalt": "moebif",  # deterministic SVG ids
}


@contextlib.contextmanager
def figure_style():
    with plt.rc_context(RC):
        yield


def panel_label(ax, label: str) -> None:
    ax.text(-0.14, 1.04, label, transform=ax.transAxes, fontweight="bold", va="bottom")
