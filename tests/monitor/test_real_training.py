"""The monitor at its defaults on real training: a tiny random-init Mixtral trained on byte-level
tokens of the Python standard library, its aux coefficient flipped to -1 for 100 steps. No alarm
while it trains normally (its healthy profile is far from uniform), a collapse alarm soon after
the flip where the loads really concentrate (measured here independently of the monitor's
rule), and ``diagnose`` on the log gives the online alarms. The full study (four families, 3000
steps, two balancing strengths) is benchmarks/study_real_training.py."""

import json

import numpy as np
import pytest

pytest.importorskip("transformers")

from ._training import train  # noqa: E402

ALARMS = {"collapse-in-progress", "collapsed", "approaching-threshold", "metastable", "recovered"}


def _excess(counts, k):
    f = counts / counts.sum(axis=1, keepdims=True)
    n = f.shape[1]
    e = (f.max(axis=1) - 1.0 / n) / (1.0 / k - 1.0 / n)
    return np.convolve(e, np.ones(20) / 20, mode="same")


@pytest.mark.parametrize("family", ["mixtral"])
def test_defaults_on_real_text_no_false_alarm_and_the_provoked_collapse_seen(family, tmp_path):
    from moebif.cli import main

    steps, flip = 640, (400, 500)
    log = tmp_path / "router.jsonl"
    mon, _ = train(
        family,
        steps=steps,
        phases=(flip[0] / steps, flip[1] / steps),
        coef=0.01,
        seq=64,
        lr=1e-3,
        log=log,
        window=None,  # the defaults
        history=None,
    )
    alarms = mon.alarms
    rose = 0
    for label, m in mon.monitors.items():
        exc = _excess(mon.counts(label), m.top_k)
        base = float(np.median(exc[flip[0] - 200 : flip[0]]))
        mine = [a for a in alarms if a.layer == label]
        # training normally: a heterogeneous profile, no alarm (unless really collapsed)
        for a in mine:
            if a.step < flip[0] and a.kind in ALARMS:
                assert exc[max(0, a.step - 50) : a.step + 50].mean() >= 0.75, a
        if exc[flip[0] : flip[1] + 50].max() - base >= 0.3:
            rose += 1
            hit = [
                a.step
                for a in mine
                if a.kind in ("collapse-in-progress", "collapsed")
                and flip[0] <= a.step <= flip[0] + 50
            ]
            assert hit, f"{label}: no collapse alarm within 50 steps of the flip"
    assert rose >= 1  # the flip really concentrated the loads somewhere
    out = tmp_path / "d"
    assert main(["diagnose", str(log), "--out", str(out), "--json"]) == 0
    d = json.loads((out / "diagnose.json").read_text())
    offline = sorted((a["step"], a["kind"], a["layer"]) for x in d["layers"] for a in x["alarms"])
    online = sorted((a.step, a.kind, a.layer) for a in alarms)
    assert offline == online
