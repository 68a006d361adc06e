"""moebif.torch.RouterMonitor on tiny random-init transformers MoE models (no download)."""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")

from moebif.monitor import read_log  # noqa: E402
from moebif.monitor.hooks import RouterMonitor, find_routers  # noqa: E402
from moebif.monitor.tiny import tiny_model  # noqa: E402

from ._training import token_stream, train  # noqa: E402


@pytest.mark.parametrize("family", ["mixtral", "qwen2_moe", "olmoe"])
def test_counts_come_from_the_gate_indices_in_training_only(family, tmp_path):
    model = tiny_model(family)
    routers = find_routers(model)
    assert len(routers) == 2
    seen = {}

    def spy(name):
        def hook(mod, args, out):
            seen.setdefault(name, []).append(out[-1].detach().clone())

        return hook

    for name, mod in routers.items():
        mod.register_forward_hook(spy(name))
    mon = RouterMonitor(model, log=tmp_path / "log.jsonl", window=32)
    x = next(token_stream(1, 4, 16))
    model.train()
    model(input_ids=x)
    model(input_ids=x)  # two micro-batches in one step are summed
    mon.step()
    for name in routers:
        idx = torch.cat(seen[name]).reshape(-1)
        np.testing.assert_array_equal(mon.counts(name)[0], torch.bincount(idx, minlength=8).numpy())
        assert mon.counts(name)[0].sum() == 2 * 4 * 16 * 2  # micro-batches x tokens x top-2
    model.eval()
    with torch.no_grad():
        model(input_ids=x)
    mon.step()
    assert len(mon.steps) == 1  # eval forward passes are not counted
    mon.close()
    log = read_log(tmp_path / "log.jsonl")
    assert set(log) == set(routers)


def test_deepseek_v3_counts_follow_the_corrected_selection():
    model = tiny_model("deepseek_v3").train()
    routers = find_routers(model)
    assert len(routers) == 1
    gate = next(iter(routers.values()))
    with torch.no_grad():
        gate.weight.normal_(0, 1.0)
        gate.e_score_correction_bias[:] = 0.0
        gate.e_score_correction_bias[5] = 10.0  # the bias alone forces expert 5 (group 1)
    mon = RouterMonitor(model, window=32)
    x = next(token_stream(1, 2, 16))
    model(input_ids=x)
    mon.step()
    c = mon.counts(next(iter(routers)))[0]
    assert c[5] == 32  # every token picks expert 5: the selection, not top-k of the logits
    assert c[:4].sum() == 0  # group-limited routing: only the group of expert 5
    mon.close()


@pytest.mark.slow
@pytest.mark.parametrize(
    ("family", "steps"), [("mixtral", 300), ("qwen2_moe", 300), ("olmoe", 400)]
)
def test_tiny_model_balanced_then_provoked_collapse_and_recovery(family, steps):
    # balanced training: no alarm at all. The model-based alarms stay silent because a window
    # of 64 steps spans only ~10-40 units of 1 / (eta gamma_hat) (regime short-window), not
    # because kappa_hat is low: see test_tiny_mixtral_balanced_at_a_resolved_window
    mon, _ = train(family, steps=steps, bad_coef=None)
    assert mon.alarms == [], [a.message for a in mon.alarms]
    regimes = {f.regime for lab in mon.routers for f in mon.monitors[lab].layer(lab).fits}
    assert "short-window" in regimes
    # provoked collapse (aux-loss coefficient -1 from 25% to 55% of the run), then recovery
    mon, _ = train(family, steps=steps, phases=(0.25, 0.55), bad_coef=-1.0, coef=0.1)
    for lab in mon.routers:
        kinds = [(a.step, a.kind) for a in mon.alarms if a.layer == lab]
        flagged = [s for s, k in kinds if k in ("collapse-in-progress", "collapsed")]
        assert flagged and min(flagged) >= 0.25 * steps
        assert [k for _, k in kinds if k == "recovered"] == ["recovered"]
        assert all(s > 0.55 * steps for s, k in kinds if k == "recovered")
        # no model-based alarm on windows that hold the collapse
        assert not [k for _, k in kinds if k in ("approaching-threshold", "metastable")]


@pytest.mark.slow
def test_tiny_mixtral_balanced_at_a_resolved_window():
    """1200 balanced steps, window 600 steps (~50-170 units of 1 / (eta gamma_hat)): the fits
    resolve kappa_hat, all below kappa_SN(8, top-2) = 0.75, and nothing alarms. (Qwen2-MoE and
    OLMoE do not pass this: kappa_hat 0.65-0.84 and 0.80-0.94 there, and the model-based alarms
    fire although a provoked collapse recovers; see docs/monitoring.md.)"""
    mon, _ = train("mixtral", steps=1200, bad_coef=None, window=600)
    assert mon.alarms == [], [a.message for a in mon.alarms]
    for lab in mon.routers:
        fits = [f for f in mon.monitors[lab].layer(lab).fits if f.regime != "short-window"]
        assert len(fits) >= 10
        assert all(f.regime == "balanced" and f.fit.kappa < 0.75 for f in fits)
