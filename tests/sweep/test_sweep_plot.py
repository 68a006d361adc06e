"""`moebif sweep-plot`: the phase-diagram figure and its theory boundaries."""

from __future__ import annotations

import json
import struct

import numpy as np
import pytest

import moebif
from moebif.cli import main
from moebif.sweep import get_study, parse_spec, run_sweep
from moebif.sweep.plot import _theory_grid


def _png_dpi(path) -> float:
    data = path.read_bytes()
    i = data.index(b"pHYs")
    ppm_x, _, unit = struct.unpack(">IIB", data[i + 4 : i + 13])
    assert unit == 1  # metres
    return ppm_x * 0.0254


def test_boundaries_are_the_thresholds():
    """The zero lines of the residuals sit at a = 2 gamma T, a_SN and a_lin (closed forms and
    the model's own threshold functions)."""
    br = get_study("batch_router")
    v = {"a": 3.0, "gamma": 1.2, "T": 1.25, "rho": 0.0, "h": 0.0, "n_experts": 2}
    ((label, r),) = br.boundaries(v).items()
    assert "2γT" in label and r == pytest.approx(3.0 - 2 * 1.2 * 1.25)
    v = dict(v, n_experts=8, a=5.0)
    res = br.boundaries(v)
    sn = moebif.collapse_threshold(8, 1.2, 1.25)
    assert sorted(res.values()) == pytest.approx(sorted([5.0 - sn, 5.0 - 8 * 1.2 * 1.25]))
    tk = get_study("topk_router")
    v = dict(v, top_k=2, rho=1.0)
    res = tk.boundaries(v)
    a_sn = moebif.topk_collapse_threshold(8, 2, 1.2, 1.25)[0]
    a_lin = moebif.topk_linear_threshold(8, 2, 1.2, 1.25)
    assert sorted(res.values()) == pytest.approx(sorted([4.0 - a_sn, 4.0 - a_lin]), rel=1e-9)
    assert all(k.startswith("a − ρ") for k in res)
    hy = get_study("hysteresis")
    assert hy.theory("width", {"a": 4.0, "rho": 1.0, "gamma": 1.0, "T": 1.0}) == pytest.approx(
        2 * moebif.hysteresis_halfwidth(3.0, 1.0, 1.0)
    )
    # with h varying, the two-expert boundary is the fold |h| = H(a), the pitchfork at h = 0
    grid = _theory_grid(
        br,
        {"a": 3.0, "gamma": 1.0, "T": 1.0, "rho": 0.0, "n_experts": 2},
        ["h"],
        [np.array([0.0, 0.1, 0.2])],
    )
    ((label, r),) = grid.items()
    H = moebif.hysteresis_halfwidth(3.0, 1.0, 1.0)
    assert "H(a)" in label
    np.testing.assert_allclose(r, H - np.array([0.0, 0.1, 0.2]))


def test_sweep_plot_writes_png_and_svg(tmp_path, capsys, small_doc):
    store = tmp_path / "map.zarr"
    run_sweep(parse_spec(small_doc), store)
    main(["sweep-plot", str(store), "--json"])
    rep = json.loads(capsys.readouterr().out)
    png, svg = (tmp_path / "map.png"), (tmp_path / "map.svg")
    assert rep["files"] == [str(png), str(svg)] and rep["done"] == rep["cells"] == 12
    assert _png_dpi(png) == pytest.approx(200, abs=0.5)
    text = svg.read_text()
    assert "2γT" in text and "collapse probability" in text
    # another quantity, to a chosen file stem
    main(["sweep-plot", str(store), "--quantity", "max_load", "--out", str(tmp_path / "fig")])
    assert (tmp_path / "fig.png").exists() and (tmp_path / "fig.svg").exists()


def test_sweep_plot_partial_store_and_one_axis(tmp_path, capsys, small_doc):
    from moebif.sweep import SweepStore

    store = tmp_path / "p.zarr"
    spec = parse_spec(small_doc)
    SweepStore.create(store, spec, spec.chunks())  # nothing computed yet
    main(["sweep-plot", str(store), "--json"])
    rep = json.loads(capsys.readouterr().out)
    assert rep["done"] == 0
    assert "12 of 12 cells not computed" in (tmp_path / "p.svg").read_text()
    # one axis: the select picks the nearest coordinate of the other
    main(
        [
            "sweep-plot",
            str(store),
            "--x",
            "T",
            "--select",
            "gamma=0.9",
            "--out",
            str(tmp_path / "line"),
        ]
    )
    assert (tmp_path / "line.png").exists()


@pytest.mark.parametrize(
    "args,option",
    [
        (["--quantity", "nope"], "--quantity"),
        (["--quantity", "final_loads"], "--quantity"),
        (["--x", "nope"], "--x"),
        (["--select", "T"], "--select"),
        (["--select", "nope=1"], "--select"),
        (["--x", "T", "--y", "T"], "--y"),
    ],
)
def test_sweep_plot_bad_choices_exit_2(tmp_path, capsys, small_doc, args, option):
    store = tmp_path / "s.zarr"
    run_sweep(parse_spec(small_doc), store)
    with pytest.raises(SystemExit) as e:
        main(["sweep-plot", str(store), *args])
    assert e.value.code == 2
    assert capsys.readouterr().err.startswith(f"moebif: error: {option}:")


def test_sweep_plot_not_a_store(tmp_path, capsys):
    with pytest.raises(SystemExit) as e:
        main(["sweep-plot", str(tmp_path / "none.zarr")])
    assert e.value.code == 2
    assert capsys.readouterr().err.startswith("moebif: error: STORE:")


def test_wilson_interval_matches_scipy():
    from scipy.stats import binomtest

    from moebif.sweep.plot import wilson_interval

    for k, n in ((0, 16), (3, 16), (8, 16), (16, 16), (1, 5)):
        ci = binomtest(k, n).proportion_ci(confidence_level=0.95, method="wilson")
        lo, hi = wilson_interval(k, n)
        assert (float(lo), float(hi)) == pytest.approx((ci.low, ci.high), abs=1e-12)
    lo, hi = wilson_interval(np.array([2, 0]), np.array([4, 0]))
    assert np.isnan(lo[1]) and np.isnan(hi[1]) and lo[0] < 0.5 < hi[0]


def _texts(fig) -> list[str]:
    from matplotlib.text import Text

    return [t.get_text() for t in fig.findobj(Text)]


def test_phase_diagram_title_labels_half_line_and_formats(tmp_path, capsys, small_doc):
    """The title in the paper's symbols, wrapped between items; a proper colour-bar label; the
    measured p = 0.5 line with its Wilson interval; PDF output."""
    import matplotlib.pyplot as plt

    from moebif.sweep.plot import plot_store

    small_doc["params"]["eta"] = 0.05
    store = tmp_path / "map.zarr"
    run_sweep(parse_spec(small_doc), store)
    fig = plot_store(str(store))
    title = fig._suptitle.get_text()
    assert "η = 0.05" in title and "B = 256" in title and "6 replicas a cell" in title
    assert "eta" not in title and "batch" not in title
    items = [s.strip(",") for line in title.splitlines()[1:] for s in line.split(", ")]
    assert all(" = " in s or s.endswith(("steps", "cell")) for s in items), items
    texts = _texts(fig)
    assert "measured p = 0.5 (replica mean)" in texts
    assert "95% interval of the p = 0.5 line (Wilson)" in texts
    assert "collapse probability\n(6 replicas a cell)" in {a.get_ylabel() for a in fig.axes}
    plt.close(fig)
    fig = plot_store(str(store), quantity="max_load")
    assert "largest expert load maxᵢ ℓᵢ\n(mean of 6 replicas)" in {a.get_ylabel() for a in fig.axes}
    plt.close(fig)
    # the cut names its slice, and its legend lies below the axes, off the theory lines
    fig = plot_store(str(store), x="gamma", select={"T": 1.0})
    ax = fig.axes[0]
    assert ax.get_title().startswith("cut at T = ")
    fig.canvas.draw()
    r = fig.canvas.get_renderer()
    assert fig.legends[0].get_window_extent(r).y1 <= ax.get_tightbbox(r).y0 + 1
    plt.close(fig)
    main(["sweep-plot", str(store), "--format", "pdf", "--json"])
    rep = json.loads(capsys.readouterr().out)
    assert rep["files"] == [str(tmp_path / "map.pdf")]
    assert (tmp_path / "map.pdf").read_bytes().startswith(b"%PDF")
    main(["sweep-plot", str(store), "--out", str(tmp_path / "one.pdf")])
    assert (tmp_path / "one.pdf").exists() and not (tmp_path / "one.png").exists()
    with pytest.raises(SystemExit) as e:
        main(["sweep-plot", str(store), "--format", "gif"])
    assert e.value.code == 2 and capsys.readouterr().err.startswith("moebif: error: --format:")
