"""Quick variants of the trainable-MoE experiments (fig01-fig05): they run through the
``reproduce`` machinery, write their outputs, and their claims hold."""

import json

import pytest

pytest.importorskip("torch")
pytest.importorskip("sklearn")

import moebif.experiments  # noqa: E402
from moebif.experiments.runner import run_one  # noqa: E402

MODULES = ("fig01", "fig02", "fig03", "fig04", "fig05")


@pytest.mark.parametrize("exp_id", MODULES)
def test_quick_variant_runs_and_claims_hold(exp_id, tmp_path):
    res = run_one(exp_id, True, str(tmp_path))
    claims = res["claims"]
    assert claims
    for c in claims:
        assert c["holds"], (c["id"], c["measured"], c["tolerance"])
    out = tmp_path / exp_id
    for name in ("figure.png", "figure.svg", "data.json", "claims.json", "config.json"):
        assert (out / name).stat().st_size > 0
    meta = json.loads((out / "config.json").read_text())
    assert meta["complete"] and meta["quick"] and meta["notes"]
    assert meta["config"]["seed"] == meta["seed"]


def test_quick_variant_is_reproducible():
    """Same seed, same numbers: two runs of the cheapest experiment agree exactly."""
    mod = moebif.experiments.load_experiment("fig03")
    a = mod.run(mod.quick())
    b = mod.run(mod.quick())
    assert a["abs_load"].tolist() == b["abs_load"].tolist()
    assert a["mse"].tolist() == b["mse"].tolist()
