"""One look for every figure: sizes for a paper column, theory dashed, measurements solid; and
the one way figures are saved (PNG + SVG at 200 dpi, atomically)."""

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


def save_figure(fig, stem, *, formats=("png", "svg"), dpi: int = 200) -> list[str]:
    """Write ``fig`` as ``stem.png`` and ``stem.svg`` (``formats``), each atomically, at ``dpi``
    (SVG and PDF without a date, so the same figure gives the same bytes). Returns the paths."""
    import io
    from pathlib import Path

    from ._io import atomic_write_bytes

    stem = Path(stem)
    files = []
    for ext in formats:
        buf = io.BytesIO()
        meta = {"svg": {"Date": None}, "pdf": {"CreationDate": None}}.get(ext)
        fig.savefig(buf, format=ext, dpi=dpi, metadata=meta)
        path = stem.with_name(f"{stem.name}.{ext}")
        atomic_write_bytes(path, buf.getvalue())
        files.append(str(path))
    return files
