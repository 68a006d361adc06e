"""Quick variants of the many-experts experiments run, write their outputs, and their claims
hold."""

import json

import pytest

NEXP = ("nexp-branches", "nexp-hysteresis", "nexp-metastable", "nexp-topk")


@pytest.mark.parametrize("exp_id", NEXP)
def test_quick_variant_claims_hold(tmp_path, exp_id):
    from moebif.experiments.runner import run_one

    out = run_one(exp_id, True, str(tmp_path))
    folder = tmp_path / exp_id
    for name in ("figure.png", "figure.svg", "data.json", "claims.json", "config.json"):
        assert (folder / name).stat().st_size > 0
    claims = json.loads((folder / "claims.json").read_text())
    assert claims and claims == out["claims"]
    failed = [(c["id"], c["measured"], c["tolerance"]) for c in claims if not c["holds"]]
    assert not failed, failed
    meta = json.loads((folder / "config.json").read_text())
    assert meta["complete"] and meta["quick"]


def test_quick_variant_is_deterministic():
    """Same seed, same numbers: the quick metastability run twice gives identical data."""
    from moebif.experiments import load_experiment
    from moebif.experiments.base import jsonable

    mod = load_experiment("nexp-metastable")
    cfg = mod.quick()
    cfg = type(cfg)(
        **{
            **cfg.__dict__,
            "batches": (40, 44),
            "escape_runs": 16,
            "pulse_taus": (2.0,),
            "pulse_runs": 8,
        }
    )
    a, b = mod.run(cfg), mod.run(cfg)
    assert json.dumps(jsonable(a)) == json.dumps(jsonable(b))
