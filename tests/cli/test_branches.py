"""`moebif theory --top-k` and `moebif branches`."""

import pytest

from moebif.model.topk import (
    topk_collapse_threshold,
)


def _rand_scores(rng, n, spread=2.0):
    return rng.normal(size=n) * spread


def _cli(cli, *args):
    r = cli(*args)
    return r.code, r.json if "--json" in args else r.out


def test_cli_theory_top_k(cli):
    code, rep = _cli(
        cli,
        "theory",
        "--a",
        "7",
        "--gamma",
        "1",
        "--T",
        "1",
        "--experts",
        "8",
        "--top-k",
        "2",
        "--json",
    )
    assert code == 0
    assert rep["critical_a"] == pytest.approx(8.711111111111112)
    assert rep["collapse_a"] == pytest.approx(topk_collapse_threshold(8, 2, 1.0, 1.0)[0])
    assert rep["regime"] == "metastable" and rep["kappa"] == pytest.approx(7 / 8.711111111111112)
    code, rep = _cli(
        cli,
        "theory",
        "--a",
        "7",
        "--gamma",
        "1",
        "--T",
        "1",
        "--experts",
        "8",
        "--json",
    )
    assert rep["critical_a"] == 8.0 and rep["regime"] == "metastable"
    assert rep["collapse_a"] == pytest.approx(4.249799008647895)
    code, rep = _cli(cli, "theory", "--a", "3", "--gamma", "1", "--T", "1", "--json")
    assert rep["regime"] == "bistable" and "hysteresis_halfwidth" in rep  # N = 2 as before


def test_cli_theory_top_k_bad(cli):
    r = cli("theory", "--a", "7", "--gamma", "1", "--T", "1", "--experts", "4", "--top-k", "4")
    assert r.code == 2 and "--top-k" in r.err and r.err.count("\n") == 1


def test_cli_branches(cli, tmp_path):
    code, rep = _cli(
        cli,
        "branches",
        "--experts",
        "4",
        "--out",
        str(tmp_path / "o"),
        "--points",
        "60",
        "--json",
    )
    assert code == 0
    assert rep["collapse_a"] == pytest.approx(3.2187410883369556)
    for f in rep["files"]:
        assert (tmp_path / "o" / f.split("/")[-1]).stat().st_size > 0
