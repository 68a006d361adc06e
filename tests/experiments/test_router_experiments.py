"""Batch-router experiments fig06, fig08, fig09: quick variants run, plot, write outputs, and their
claims hold; helpers against closed forms; same seed, same result."""

import dataclasses
import importlib
import json
import math

import numpy as np
import pytest

from moebif.experiments import REGISTRY
from moebif.experiments.runner import evaluate, run_one

MODULES = {"fig06": "fig06_meanfield", "fig08": "fig08_collapse_region", "fig09": "fig09_onset"}
CLAIMS = {
    "fig06": {"fig06-meanfield", "fig06-spread", "prop3.1"},
    "fig08": {"fig08-threshold"},
    "fig09": {"fig09-onset", "fig09-scale"},
}


def _module(exp_id):
    return importlib.import_module(f"moebif.experiments.{MODULES[exp_id]}")


@pytest.fixture(scope="module")
def quick_results():
    out = {}
    for exp_id in MODULES:
        mod = _module(exp_id)
        cfg = mod.quick()
        calls = []
        res = evaluate(mod, cfg, progress=lambda d, n, calls=calls: calls.append((d, n)))
        out[exp_id] = (mod, cfg, res, calls)
    return out


@pytest.mark.parametrize("exp_id", list(MODULES))
def test_quick_run_claims_hold_and_plot(exp_id, quick_results):
    import matplotlib.pyplot as plt

    mod, cfg, res, calls = quick_results[exp_id]
    assert mod.ID == exp_id and mod.TITLE and mod.PAPER
    assert type(cfg) is mod.Config and dataclasses.is_dataclass(cfg)
    assert {c.id for c in res.claims} == CLAIMS[exp_id]
    for c in res.claims:
        assert c.holds, c
    assert calls and calls[-1][0] == calls[-1][1]  # progress reached its total
    fig = mod.plot(res.data, cfg)
    assert len(fig.axes) >= 2
    plt.close(fig)


@pytest.mark.parametrize("exp_id", list(MODULES))
def test_run_one_writes_outputs(exp_id, tmp_path, monkeypatch):
    monkeypatch.setitem(REGISTRY, exp_id, MODULES[exp_id])
    res = run_one(exp_id, True, str(tmp_path))
    d = tmp_path / exp_id
    for f in ("figure.png", "figure.svg", "data.json", "claims.json", "config.json"):
        assert (d / f).stat().st_size > 0
    meta = json.loads((d / "config.json").read_text())
    assert meta["complete"] and meta["quick"] and meta["seed"] == 0
    assert {c["id"] for c in res["claims"]} == CLAIMS[exp_id]
    assert all(c["holds"] and c["experiment"] == exp_id for c in res["claims"])
    json.loads((d / "data.json").read_text())


def test_fig06_quick_matches_linear_noise_and_mean_field(quick_results):
    _, cfg, res, _ = quick_results["fig06"]
    st = res.data["stationary"]
    # the stationary mean sits at the mean-field state u*, within a few standard errors
    se = st["measured_u_hat_std"] / math.sqrt(st["samples"])
    assert abs(st["measured_u_hat_mean"] - st["u_star"]) < 5 * se + 1e-3
    cv = res.data["convergence"]
    assert cv["eta"] == sorted(cfg.conv_etas, reverse=True)
    # the weak error is first order in eta, the single-path error of order sqrt(eta)
    assert 0.7 < cv["weak_slope"] < 1.6 and 0.35 < cv["strong_slope"] < 0.8


def test_fig08_meanfield_collapse_and_grid():
    mod = _module("fig08")
    k = np.array([0.5, 1.0, 1.5, 3.0])
    u = mod.meanfield_collapse(k)
    assert u[0] == u[1] == 0.0
    for kap, uk in zip(k[2:], u[2:], strict=True):
        q = math.atanh(uk)
        assert q == pytest.approx(kap * math.tanh(q), rel=1e-12)
    cfg = mod.Config()
    # the line gamma T = a/2 runs through the centre of the (log) grid
    assert math.isclose(
        math.sqrt(cfg.T_range[0] * cfg.T_range[1] * cfg.gamma_range[0] * cfg.gamma_range[1]),
        cfg.a / 2,
    )


def test_fig09_onset_interpolates_scanning_down():
    onset = _module("fig09").onset
    T = np.array([0.8, 0.9, 1.0, 1.1])
    assert onset(T, np.array([0.5, 0.2, 0.05, 0.04]), 0.1) == pytest.approx(0.9 + 0.1 * 2 / 3)
    assert onset(T[::-1], np.array([0.04, 0.05, 0.2, 0.5]), 0.1) == pytest.approx(0.9 + 0.1 * 2 / 3)
    assert math.isnan(onset(T, np.full(4, 0.5), 0.1))  # collapsed everywhere: not bracketed
    assert math.isnan(onset(T, np.full(4, 0.01), 0.1))  # never collapses


def test_same_seed_same_result():
    mod = _module("fig08")
    cfg = dataclasses.replace(mod.quick(), T_points=3, gamma_points=3, runs=4)
    a, b = mod.run(cfg), mod.run(cfg)
    assert np.array_equal(a["final_abs_u_mean"], b["final_abs_u_mean"])
    c = mod.run(dataclasses.replace(cfg, seed=1))
    assert not np.array_equal(a["final_abs_u_mean"], c["final_abs_u_mean"])
