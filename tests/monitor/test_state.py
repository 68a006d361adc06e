"""LayerMonitor checkpoints: a monitor restored from its state_dict continues exactly as the
uninterrupted one; memory stays bounded by the window and ``history``."""

import json

import numpy as np
import pytest
import torch

from moebif import RouterParams, simulate_topk_router
from moebif.monitor import LayerMonitor


def _counts(seed=3, steps=12000):
    p = RouterParams(a=0.8 * 8, gamma=1.0, T=1.0, n_experts=8)
    run = simulate_topk_router(p, batch=256, eta=0.05, steps=steps, runs=1, seed=seed)
    return np.rint(run.loads[0] * 256)


@pytest.mark.parametrize("cut", [1, 4999, 6000])
def test_resumed_monitor_equals_uninterrupted(cut, tmp_path):
    c = _counts()
    full = LayerMonitor(8, window=2000)
    full.update_many(c)
    first = LayerMonitor(8, window=2000)
    first.update_many(c[:cut])
    state = first.state_dict()
    json.dumps(state)  # plain values
    torch.save(state, tmp_path / "s.pt")
    state = torch.load(tmp_path / "s.pt", weights_only=True)
    resumed = LayerMonitor(8, window=2000)
    resumed.load_state_dict(state)
    resumed.update_many(c[cut:])
    assert [a.to_dict() for a in resumed.alarms] == [a.to_dict() for a in full.alarms]
    assert json.dumps(resumed.summary()) == json.dumps(full.summary())
    assert len(full.fits) > 5


def test_state_of_another_shape_is_refused():
    a = LayerMonitor(8, window=2000)
    with pytest.raises(ValueError, match="n_experts"):
        LayerMonitor(4, window=2000).load_state_dict(a.state_dict())
    with pytest.raises(ValueError, match="state"):
        a.load_state_dict({"weights": 1})


def test_history_is_capped():
    # a short window and a small cap: the capped monitor keeps only the last 3 fits and block
    # records out of more than 3 x 3, identical to the uncapped monitor's, with the same alarms
    c = _counts(steps=1400)
    mon = LayerMonitor(8, window=256, history=3)
    mon.update_many(c)
    full = LayerMonitor(8, window=256, history=None)
    full.update_many(c)
    assert len(mon.fits) == 3 and len(mon.block_record) == 3 and len(full.fits) > 9
    assert len(full.block_record) > 9
    assert [f.to_dict() for f in mon.fits] == [f.to_dict() for f in list(full.fits)[-3:]]
    assert list(mon.block_record) == list(full.block_record)[-3:]
    assert [a.to_dict() for a in mon.alarms] == [a.to_dict() for a in full.alarms]
    # the per-step path caps the same way
    one = LayerMonitor(8, window=256, history=3)
    for row in c:
        one.update(row)
    assert [f.to_dict() for f in one.fits] == [f.to_dict() for f in mon.fits]
