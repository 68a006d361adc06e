"""Claims with margins: the checks of a claim, its margin over seeds, fragile by margin."""

import math

import numpy as np
import pytest

from moebif.experiments import load_experiment
from moebif.experiments.base import Check, Claim, json_roundtrip
from moebif.experiments.report import claims_table, format_margin
from moebif.experiments.runner import FRAGILE_MARGIN, aggregate_claims


def test_check_slack_is_the_distance_to_the_nearer_bound():
    assert Check("x", 0.3, 0.0, 1.0).slack == pytest.approx(0.3)
    assert Check("x", 0.9, 0.0, 1.0).slack == pytest.approx(0.1)
    assert Check("x", 1.2, upper=1.0).slack == pytest.approx(-0.2)
    assert Check("x", math.nan, 0.0, 1.0).slack is None
    # |value / predicted - 1| <= rtol, for a negative prediction too
    c = Check.relative("w", -1.03, -1.0, 0.05)
    assert (c.lower, c.upper) == pytest.approx((-1.05, -0.95))
    assert c.slack == pytest.approx(0.02)
    assert Check.absolute("u", 0.5, 0.4, 0.05).slack == pytest.approx(-0.05)
    d = Claim("c", "s", 1.0, 1.03, "t", True, checks=(c,)).to_dict()
    assert d["checks"] == [
        {"name": "w", "value": -1.03, "lower": -1.05, "upper": -0.95, "slack": pytest.approx(0.02)}
    ]


def _claim(cid, values, lower, upper, extra=()):
    """Per-seed claim dicts of one check on ``values`` (one per seed), holding where inside."""
    out = []
    for v in values:
        checks = (Check("v", v, lower, upper), *extra)
        ok = all(ch.slack is not None and ch.slack >= 0 for ch in checks)
        out.append(Claim(cid, "s", 0.0, v, "t", ok, "x", checks).to_dict())
    return out


def test_margin_is_mean_slack_over_its_seed_spread_and_marks_thin_claims_fragile():
    thin = [0.90, 0.95, 0.80, 0.99, 0.85]  # holds at every seed, upper bound 1
    wide = [0.10, 0.12, 0.08, 0.11, 0.09]
    fails = [0.9, 1.1, 0.95, 0.97, 0.92]
    per_claim = [
        _claim("thin", thin, None, 1.0),
        _claim("wide", wide, None, 1.0),
        _claim("fails", fails, None, 1.0),
        _claim("exact", [0.5] * 5, 0.0, 1.0),
    ]
    per_seed = [[claims[j] for claims in per_claim] for j in range(5)]
    agg = {c["id"]: c for c in aggregate_claims(per_seed, [{"x": j} for j in range(5)])}
    slack = 1.0 - np.array(thin)
    expect = slack.mean() / slack.std(ddof=1)  # independent of the code's route
    assert expect < FRAGILE_MARGIN
    t = agg["thin"]
    assert t["margin"] == pytest.approx(expect) and t["margin_check"] == "v"
    assert all(t["holds_at"]) and t["holds"] and t["fragile"] and t["status"] == "fragile"
    w = agg["wide"]
    assert w["margin"] == pytest.approx(0.9 / np.std(wide, ddof=1)) and w["status"] == "holds"
    f = agg["fails"]
    assert f["status"] == "fragile" and f["margin"] < 1
    e = agg["exact"]  # no seed spread: no margin, and it holds
    assert e["margin"] is None and e["status"] == "holds" and e["checks"][0]["spread"] == 0
    assert format_margin(t) == f"{expect:.2g} (v)" and format_margin(e) == "— (no seed spread)"
    # a two-sided check: values symmetric about the centre have equal slacks, not no spread
    sym = _claim("sym", [0.45, 0.55, 0.45, 0.55], 0.0, 1.0)
    agg3 = aggregate_claims([[c] for c in sym], [{"x": j} for j in range(4)])[0]
    assert agg3["margin"] == pytest.approx(0.45 / np.std([0.45, 0.55, 0.45, 0.55], ddof=1))
    # the smallest margin over a claim's checks is the claim's
    zs = [0.01, 0.02, 0.015, 0.03, 0.02]
    two = [
        _claim("two", [v], None, 1.0, extra=(Check("z", z, lower=0.0),))[0]
        for v, z in zip(wide, zs, strict=True)
    ]
    agg2 = aggregate_claims([[c] for c in two], [{"x": j} for j in range(5)])[0]
    z_margin = np.mean(zs) / np.std(zs, ddof=1)  # 2.3, below the 22 of "v"
    assert agg2["margin_check"] == "z" and agg2["margin"] == pytest.approx(z_margin)
    assert [c["name"] for c in agg2["checks"]] == ["v", "z"]
    from rich.console import Console

    con = Console(width=200, record=True)
    con.print(claims_table(list(agg.values())))
    text = con.export_text()
    assert "1 fragile" not in text and "2 fragile" in text


def test_a_single_seed_has_no_margin():
    agg = aggregate_claims([_claim("c", [0.5], 0.0, 1.0)], [{"x": 0}])[0]
    assert agg["margin"] is None and agg["status"] == "holds"


def _fig10_data(widths, predicted=(0.6, 2.0, 5.0)):
    return json_roundtrip(
        {
            "points": [
                {"a": a, "width_extrapolated": w, "predicted_width": p}
                for a, w, p in zip((3.0, 4.0, 6.0), widths, predicted, strict=True)
            ]
        }
    )


@pytest.mark.parametrize(
    "widths", [(0.6, 2.0, 5.0), (0.59, 2.03, 4.95), (0.55, 2.0, 5.0), (0.6, 2.0, None)]
)
def test_fig10_checks_agree_with_the_verdict(widths):
    """The checks are the claim's conditions: it holds iff every check's slack is >= 0."""
    mod = load_experiment("fig10")
    cfg = mod.Config(claim_a_min=3.0)
    for c in mod.claims(_fig10_data(widths), cfg):
        slacks = [ch.slack for ch in c.checks]
        assert c.checks, c.id
        assert c.holds == all(s is not None and s >= 0 for s in slacks), (c.id, slacks)
    width = mod.claims(_fig10_data(widths), cfg)[0]
    assert [ch.name for ch in width.checks] == ["width a=3", "width a=4", "width a=6"]
