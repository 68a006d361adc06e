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


@pytest.mark.parametrize(
    "cut",
    [pytest.param(1, marks=pytest.mark.slow), pytest.param(4999, marks=pytest.mark.slow), 6000],
)
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


def _topk_run(n=12, k=2, steps=3000, batch=128, seed=5):
    """A top-k router with feedback and its soft importance and mean logits, per step."""
    rng = np.random.default_rng(seed)
    r = rng.normal(size=n) * 0.2
    C, P, S = (np.empty((steps, n)) for _ in range(3))
    for t in range(steps):
        z = r + rng.normal(size=(batch, n))
        p = np.exp(z - z.max(axis=1, keepdims=True))
        p /= p.sum(axis=1, keepdims=True)
        C[t] = np.bincount(np.argpartition(-z, k - 1, axis=1)[:, :k].ravel(), minlength=n)
        P[t], S[t] = p.mean(axis=0), z.mean(axis=0)
        r = 0.97 * r + 0.03 * 0.4 * n * (C[t] / (k * batch) - 1.0 / n)
    return C, P, S


def _same(a, b):
    assert [x.to_dict() for x in a.alarms] == [x.to_dict() for x in b.alarms]
    assert [f.to_dict() for f in a.fits] == [f.to_dict() for f in b.fits]
    assert json.dumps(a.summary()) == json.dumps(b.summary())


@pytest.mark.parametrize("n", [12, 24])  # 24: the load modes kept and renewed in their lane
def test_a_pending_fit_survives_a_checkpoint(tmp_path, n):
    """Cut between a refit's snapshot and its conclusion (the fit still pending on the worker):
    the checkpoint carries the snapshot, the restored monitor fits it again and continues
    exactly as the uninterrupted one (fits, alarms, summary)."""
    C, P, S = _topk_run(n=n)
    opts = {"top_k": 2, "refit_lag": 40}
    full = LayerMonitor(n, **opts)
    full.update_many(C, P, S)
    assert len(full.fits) > 5 and any(f.source == "logits" for f in full.fits)
    first = LayerMonitor(n, **opts)
    cut = None
    for i in range(C.shape[0]):
        first.update(C[i], P[i], S[i])
        if first._pending is not None and len(first.fits) >= 3:
            cut = i + 1
            break
    assert cut is not None and first._pending["apply"] > first.step
    state = first.state_dict()
    json.dumps(state)
    torch.save(state, tmp_path / "s.pt")
    resumed = LayerMonitor(n, **opts)
    resumed.load_state_dict(torch.load(tmp_path / "s.pt", weights_only=True))
    assert resumed._pending is not None
    resumed.update_many(C[cut:], P[cut:], S[cut:])
    _same(resumed, full)


@pytest.mark.parametrize("n", [12, 24])
def test_fits_on_the_worker_equal_fits_on_the_caller_and_in_bulk(n):
    """The refits run on the worker thread and are concluded refit_lag steps after their
    snapshot: the same fits and alarms as running them on the calling thread, fed step by step
    or in bulk (with the feedback statistics of importance and logits)."""
    C, P, S = _topk_run(n=n, steps=2500, seed=6)
    online = LayerMonitor(n, top_k=2)
    for i in range(C.shape[0]):
        online.update(C[i], P[i], S[i])
    inline = LayerMonitor(n, top_k=2, background=False)
    inline.update_many(C[:901], P[:901], S[:901])
    inline.update_many(C[901:], P[901:], S[901:])
    assert len(online.fits) > 5
    _same(online, inline)
