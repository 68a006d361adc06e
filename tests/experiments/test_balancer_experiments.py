"""The balancer experiments: the protocol (run -> JSON data -> claims from the data alone ->
plot) on tiny configurations; the quick configurations' claims in the slow suite."""

from __future__ import annotations

import dataclasses
import json

import matplotlib
import pytest

from moebif.experiments import REGISTRY, load_experiment
from moebif.experiments.base import json_roundtrip

matplotlib.use("Agg")

TINY = {
    "bal-phase": dict(
        cases=((2, 1, 256), (8, 2, 128)),
        aux_strengths=(1.0,),
        zloss_strengths=(0.3,),
        factors=(0.9, 1.0, 1.1),
        refine_points=1,
        reps=3,
        relax_time=10.0,
        curve_points=2,
    ),
    "bal-bias": dict(
        rates=(1e-3,),
        factors=(0.9, 1.1),
        reps=3,
        run_time=8.0,
        noise_rates=(3e-3, 1e-2),
        relay_rates=(3e-2,),
        chatter_steps=800,
        chatter_burn=200,
        chatter_runs=2,
        hold_steps=1500,
        hold_runs=3,
    ),
    "bal-bias-cycle": dict(
        points=((9.0, 1.5, 2.0, 2e-3),),
        reps=2,
        periods=1.0,
        unheld_factors=(2.0,),
        unheld_runs=2,
        unheld_periods=0.5,
    ),
    "bal-capacity": dict(
        drop_cases=((8, 1),),
        cfs=(1.0, 1.25),
        drop_runs=2,
        drop_steps=100,
        boundary_cfs=(2.0,),
        factors=(0.9, 1.1),
        reps=3,
        relax_time=10.0,
        policy_batches=3,
    ),
    "bal-compare": dict(
        reps=3, relax_time=10.0, schemes=("aux", "bias", "sinkhorn"), check_schemes=("aux",)
    ),
    "ctl-suppression": dict(
        cases=((8, 1, 256),),
        factors=(2.0,),
        reps=3,
        relax_time=4.0,
        two_level_steps=500,
        osc_points=((9.0, 1.5, 2.0, 2e-3),),
        osc_factors=(0.5, 1.0),
        osc_reps=2,
        osc_periods=0.5,
        osc_batch=4096,
        chatter_steps=400,
        chatter_burn=100,
        chatter_runs=2,
        skew_steps=400,
        skew_runs=2,
        speed_cases=((8, 1, 256, 16, 50),),
        speed_repeats=1,
    ),
}


def test_registered():
    for exp_id in TINY:
        assert exp_id in REGISTRY


@pytest.mark.parametrize("exp_id", list(TINY))
def test_protocol_on_tiny_configs(exp_id):
    mod = load_experiment(exp_id)
    cfg = dataclasses.replace(mod.quick(), **TINY[exp_id])
    assert dataclasses.replace(cfg, seed=cfg.seed + 1).seed == cfg.seed + 1
    data = mod.run(cfg)
    # what the runner hands claims and plot: the data as it reads back from data.json
    loaded = json_roundtrip(data)
    claims = mod.claims(loaded, cfg)
    assert claims and all(c.id.startswith(exp_id) for c in claims)
    for c in claims:
        json.dumps(c.to_dict(), allow_nan=False)
    assert [c.id for c in claims] == [c.id for c in mod.claims(data, cfg)]
    fig = mod.plot(loaded, cfg)
    assert fig.axes
    if hasattr(mod, "notes"):
        assert isinstance(mod.notes(loaded, cfg), str)


@pytest.mark.slow
@pytest.mark.parametrize("exp_id", list(TINY))
def test_quick_claims_hold(exp_id):
    mod = load_experiment(exp_id)
    cfg = mod.quick()
    claims = mod.claims(mod.run(cfg), cfg)
    failed = [c.id for c in claims if not c.holds]
    assert not failed, failed
