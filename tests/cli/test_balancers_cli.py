"""``moebif simulate --balancer`` and ``moebif advise``."""

from __future__ import annotations

import pytest

from moebif.model.balancer_theory import branch_drift_max, minimal_strength
from moebif.model.thresholds import thresholds

SIM = [
    "simulate",
    "--a",
    3,
    "--gamma",
    1,
    "--T",
    1,
    "--batch",
    256,
    "--eta",
    0.01,
    "--steps",
    400,
    "--runs",
    4,
    "--h",
    0.1,
]


@pytest.mark.slow  # 26 s; plain `simulate` and the balanced router stay in the default suite
def test_simulate_with_balancers_json(cli):
    args = list(SIM)
    args[2] = 1.5  # a balanced router follows its mean field closely
    args[8], args[14] = 2048, 16  # batch, runs: the records' own noise sd ~ 0.006
    r = cli(*args, "--balancer", "aux:1e-1,zloss:1e-2,capacity:1.25", "--json")
    assert r.code == 0, r.err
    out = r.json
    assert out["balancer"]["spec"] == "aux:0.1,zloss:0.01,capacity:1.25"
    assert out["balancer"]["aux"] == 0.1 and out["balancer"]["capacity"] == 1.25
    for key in (
        "t",
        "u_mean",
        "u_std",
        "u_meanfield",
        "final_u_mean",
        "sup_error",
        "selected_mean",
        "dropped_mean",
        "final_beta_mean",
        "seconds",
    ):
        assert key in out
    assert len(out["u_meanfield"]) == len(out["t"])
    assert out["sup_error"] < 0.04


def test_simulate_with_a_selection_scheme_has_no_mean_field(cli):
    r = cli(*SIM, "--experts", 4, "--balancer", "bias:1e-3", "--json")
    assert r.code == 0, r.err
    assert r.json["u_meanfield"] is None and r.json["sup_error"] is None
    assert len(r.json["final_beta_mean"]) == 4
    text = cli(*SIM, "--balancer", "sinkhorn")
    assert text.code == 0 and "mean-field: none" in text.out


def test_simulate_without_balancer_unchanged(cli):
    a = cli(*SIM, "--json").json
    b = cli(*SIM, "--balancer", "none", "--json").json
    assert a["u_mean"] == b["u_mean"] and "balancer" not in b


@pytest.mark.parametrize("spec", ["foo:1", "aux", "aux:-1", "bias:1,quantile"])
def test_simulate_bad_balancer(cli, spec):
    r = cli(*SIM, "--balancer", spec)
    assert r.code == 2
    assert r.err.count("\n") == 1 and r.err.startswith("moebif: error: --balancer")


def test_advise_json_against_independent_computations(cli):
    r = cli("advise", "--experts", 8, "--a", 6, "--gamma", 1, "--T", 1, "--lr", 1e-2, "--json")
    assert r.code == 0, r.err
    out = r.json
    thr = thresholds(8, 1)
    assert out["regime"] == "metastable"
    assert out["critical_a"] == pytest.approx(thr.linear)
    assert out["collapse_a"] == pytest.approx(thr.collapse)
    bal = out["balancers"]
    assert bal["aux"]["strength"] == pytest.approx(minimal_strength("aux", 6.0, 8, 1), rel=1e-9)
    assert bal["zloss"]["strength"] == pytest.approx(minimal_strength("zloss", 6.0, 8, 1))
    assert bal["bias"]["strength"] == pytest.approx(1e-2 * branch_drift_max(6.0, 8) / 2)
    assert bal["capacity"]["strength"] == pytest.approx(minimal_strength("capacity", 6, 8, 1))
    for e in bal.values():
        assert {"strength", "achievable", "units"} <= set(e)
    assert bal["expert-choice"]["cost"]["dropped_fraction"] > 0.3


def test_advise_regimes_and_text(cli):
    low = cli("advise", "--experts", 8, "--a", 3, "--gamma", 1, "--T", 1, "--json").json
    assert low["regime"] == "balanced" and low["balancers"]["aux"]["strength"] == 0.0
    two = cli("advise", "--experts", 2, "--a", 3, "--gamma", 1, "--T", 1, "--json").json
    # the one regime rule: two experts at a > 2 gamma T and h = 0 are bistable (not "collapsing")
    assert two["regime"] == "bistable"
    assert two["regime"] == cli("theory", "--a", 3, "--gamma", 1, "--T", 1, "--json").json["regime"]
    r = cli("advise", "--experts", 2, "--a", 3, "--gamma", 1, "--T", 1)
    assert r.code == 0 and "regime" in r.out and "aux" in r.out


@pytest.mark.parametrize(
    "args,opt",
    [
        (["--experts", 8, "--a", 6, "--gamma", 1, "--T", 1, "--top-k", 8], "--top-k"),
        (["--experts", 8, "--a", 6, "--gamma", 0, "--T", 1], "--gamma"),
        (["--experts", 8, "--a", 6, "--gamma", 1, "--T", 1, "--lr", -1], "--lr"),
        (["--experts", 1, "--a", 6, "--gamma", 1, "--T", 1], "--experts"),
        (["--experts", 8, "--a", "nan", "--gamma", 1, "--T", 1], "--a"),
    ],
)
def test_advise_bad_input(cli, args, opt):
    r = cli("advise", *args)
    assert r.code == 2 and opt in r.err and r.err.count("\n") == 1
