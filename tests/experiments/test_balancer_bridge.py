"""The real-model bridge: the loss-free bias inside a tiny HF Mixtral trained on stdlib text."""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("torch")
pytest.importorskip("transformers")


def test_bias_ramps_against_a_skew_and_gates_stay_unbiased():
    from moebif.experiments.bal_bridge import run_bridge

    u, h = 0.05, 1.0
    res = run_bridge(rates=(u,), h=h, warmup=4, steps=16, batch=4, seq=32, corpus_bytes=1 << 18)
    r = res["runs"][0]
    gap = np.asarray(r["gap"])
    assert gap.shape == (20,) and np.all(np.isfinite(r["loss"]))
    # each step moves the gap by at most 2u (the overloaded expert -u, the others +u)
    assert np.max(np.abs(np.diff(gap))) <= 2 * u + 1e-6
    # with the skew on, expert 0 is overloaded, so its bias falls against the others' at once
    d = np.diff(gap[4:12])
    assert np.all(d < 0) and np.all(d >= -2 * u - 1e-6)
    # skew on expert 0's selection: it takes (nearly) every token at first
    assert r["load0"][4] > 1.5 * r["balanced_load"]


@pytest.mark.slow
def test_bridge_predictions():
    from moebif.experiments.bal_bridge import run_bridge

    res = run_bridge(rates=(0.02,), h=1.0)
    r = res["runs"][0]
    lo, hi = r["t_half_predicted"]
    assert lo * 0.9 <= r["t_half"] <= hi * 1.1
    assert abs(r["load0_final"] / r["balanced_load"] - 1) < 0.2
