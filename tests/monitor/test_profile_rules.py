"""The profile rules against the frozen long-term reference, on synthetic loads whose truth is
known: each step's counts are a multinomial draw of ``B`` tokens (top-1) from a given profile.

- a slow drift of concentration is alarmed near the step where an independent criterion (the
  20-step mean of the max-load excess 0.3 above its stationary median) is crossed, and the
  short-term reference alone (the monitor before the frozen reference) misses it;
- stationary heterogeneous profiles with rare experts and small batches raise nothing;
- a collapse that returns is cleared by ``recovered`` and nothing stays active; an alarm of the
  initial transient clears when the layer settles;
- experts that die slowly raise ``dead-experts``.
"""

from __future__ import annotations

import json

import numpy as np
import pytest

from moebif.monitor import LayerMonitor
from moebif.monitor.profile import ACTIVE_KINDS, COLLAPSE_IN_PROGRESS, COLLAPSED, RECOVERED

P0 = np.array([0.26, 0.18, 0.14, 0.12, 0.1, 0.09, 0.07, 0.04])  # heterogeneous, N = 8


def _excess(counts):
    f = counts / counts.sum(axis=1, keepdims=True)
    n = f.shape[1]
    return (f.max(axis=1) - 1.0 / n) / (1.0 - 1.0 / n)


def _draw(profiles, B, seed):
    """Counts (S, N): step t is a multinomial draw of B tokens from ``profiles[t]``."""
    rng = np.random.default_rng(seed)
    return np.array([rng.multinomial(B, p / p.sum()) for p in profiles], dtype=float)


def _concentrating(p0, s):
    """``p0`` moved a fraction ``s`` of the way towards all the load on its largest expert."""
    e = np.zeros_like(p0)
    e[np.argmax(p0)] = 1.0
    return (1.0 - s) * p0 + s * e


def _independent_collapse(counts, start):
    """First step (1-based) from ``start`` on at which the trailing 20-step mean of the max-load
    excess is 0.3 above its median over the 500 steps before ``start``."""
    e = _excess(counts)
    c = np.concatenate([[0.0], np.cumsum(e)])
    trailing = np.full(e.size, np.nan)
    trailing[19:] = (c[20:] - c[:-20]) / 20.0
    base = np.median(trailing[start - 500 : start])
    hit = np.nonzero(trailing[start:] >= base + 0.3)[0]
    return start + int(hit[0]) + 1 if hit.size else None


def _kinds(mon, kinds=ACTIVE_KINDS + (RECOVERED,)):
    return [(a.step, a.kind) for a in mon.alarms if a.kind in kinds]


@pytest.mark.parametrize("seed", [1, pytest.param(2, marks=pytest.mark.slow)])
def test_slow_drift_is_alarmed_and_the_following_reference_alone_misses_it(seed):
    """1000 stationary steps, then the profile concentrates linearly over 2000 steps (to 60%
    of the way to one expert), B = 256. The drift alarm (at a rise of 0.25) comes before the
    independent collapse step (a rise of 0.3); the short-term reference, which follows the
    drift, gives no collapse alarm before the independent step is long past (500 steps).

    The window is fixed at 512 steps, the automatic window's start, where it stayed for 1500
    steps in a layer of the real-text study (benchmarks/study_drift.py): the short-term
    reference follows at ``max(window, 4 dwell)`` steps. On these i.i.d. draws the automatic
    window would grow to tens of thousands of steps (no relaxation to fit), and a reference that
    slow would not follow the drift."""
    S0, R, B = 1000, 2000, 256
    s = np.concatenate([np.zeros(S0), np.linspace(0.0, 0.6, R)])
    counts = _draw([_concentrating(P0, x) for x in s], B, seed)
    t_star = _independent_collapse(counts, S0)
    assert t_star is not None and S0 + 500 < t_star < S0 + R
    mon = LayerMonitor(8, window=512)
    mon.update_many(counts)
    first = next(a for a in mon.alarms if a.kind in (COLLAPSE_IN_PROGRESS, COLLAPSED))
    assert S0 < first.step <= t_star, (first, t_star)
    assert "frozen" in first.message
    old = LayerMonitor(8, window=512, frozen_reference=False)
    old.update_many(counts)
    late = [a.step for a in old.alarms if a.kind in (COLLAPSE_IN_PROGRESS, COLLAPSED)]
    assert not late or late[0] > t_star + 500, (late, t_star)


@pytest.mark.parametrize(
    "profile,B",
    [
        (P0, 32),
        # N = 16 with three rare experts (< 0.25 / N) and one at the threshold
        (np.array([12, 10, 9, 8, 8, 7, 7, 6, 6, 5, 5, 4, 1.6, 0.9, 0.4, 0.1]), 64),
        # a near-uniform N = 6 with small batches
        (np.array([1.1, 1.0, 1.0, 0.95, 0.95, 1.0]), 16),
    ],
)
def test_stationary_heterogeneous_profiles_raise_nothing(profile, B):
    """5000 steps of a stationary profile: no alarm of the profile rules (their null). The
    model-based ``metastable`` rule is not part of it: on the N = 16 profile it fires once
    (kappa_hat 0.87 from the loads at step 2536), a false alarm of that rule reported in the
    notes of the prediction work, not hidden here."""
    p = np.asarray(profile, dtype=float)
    counts = _draw([p] * 5000, B, seed=11)
    mon = LayerMonitor(p.size)
    mon.update_many(counts)
    mine = [a for a in mon.alarms if a.kind != "metastable"]
    assert mine == [], [a.to_dict() for a in mine]
    assert mon.summary()["reference"] is not None  # the long-term reference was frozen
    assert mon.state() not in ACTIVE_KINDS


def test_collapse_and_return_recovers_and_nothing_stays_active():
    """1500 stationary steps, concentrate over 300 steps to 80% of the way to one expert, hold
    500, return over 300, hold 1500: one collapse, one recovery after the return, nothing left
    active (the other experts starve during the collapse: dead-experts comes and clears)."""
    parts = [np.zeros(1500), np.linspace(0, 0.8, 300), np.full(500, 0.8)]
    parts += [np.linspace(0.8, 0, 300), np.zeros(1500)]
    s = np.concatenate(parts)
    counts = _draw([_concentrating(P0, x) for x in s], 256, seed=5)
    mon = LayerMonitor(8)
    mon.update_many(counts)
    got = _kinds(mon)
    assert got[0][1] == COLLAPSE_IN_PROGRESS and 1500 < got[0][0] < 1800
    assert got[-1][1] == RECOVERED and 2600 <= got[-1][0] < 2600 + 4 * mon.dwell
    assert [k for _, k in got].count(RECOVERED) == 1
    assert mon.state() not in ACTIVE_KINDS and mon.active_alarms() == []
    assert not any(mon.rules[k].active for k in ACTIVE_KINDS)


def test_alarm_of_the_initial_transient_clears_when_the_layer_settles():
    """A router that starts concentrated (excess ~0.7 for 300 steps: an alarm while warming up)
    and then settles at a heterogeneous profile: the alarm clears with ``recovered`` once the
    long-term reference is frozen, and nothing is active at the end."""
    s = np.concatenate([np.full(300, 0.8), np.linspace(0.8, 0, 200), np.zeros(2500)])
    counts = _draw([_concentrating(P0, x) for x in s], 256, seed=8)
    mon = LayerMonitor(8)
    mon.update_many(counts)
    got = _kinds(mon)
    assert got and got[0][1] in (COLLAPSE_IN_PROGRESS, COLLAPSED) and got[0][0] < 500
    assert got[-1][1] == RECOVERED
    ref = mon.summary()["reference"]
    assert ref is not None and got[-1][0] == ref["step"]  # cleared when the layer settled
    assert mon.active_alarms() == [] and mon.state() not in ACTIVE_KINDS


def test_experts_dying_slowly_raise_dead_experts():
    """Experts 5, 6 (shares 0.09, 0.07) lose their load linearly over 2000 steps after 1000
    stationary ones, the mass spread evenly over the others (the max-load excess hardly moves:
    no collapse alarm). ``dead-experts`` fires within a dwell (plus the filter's lag) of the
    step where the first falls below a tenth of its share; the rare expert 7 (0.04, above
    0.25 / N) keeps its load and is not named."""
    S0, R = 1000, 2000
    fade = np.concatenate([np.ones(S0), np.linspace(1.0, 0.0, R), np.zeros(500)])
    profiles = []
    for x in fade:
        p = P0.copy()
        lost = (1.0 - x) * (p[5] + p[6])
        p[5:7] *= x
        p[[0, 1, 2, 3, 4, 7]] += lost / 6
        profiles.append(p)
    counts = _draw(profiles, 256, seed=3)
    mon = LayerMonitor(8)
    mon.update_many(counts)
    dead = [a for a in mon.alarms if a.kind == "dead-experts"]
    assert len(dead) == 1
    t_tenth = S0 + int(0.9 * R)  # x < 0.1 of the share from here on
    assert t_tenth < dead[0].step <= t_tenth + mon.dwell + 50, dead[0]
    assert "(5, 6)" in dead[0].message or "(5)" in dead[0].message or "(6)" in dead[0].message
    assert not [a for a in mon.alarms if a.kind in (COLLAPSE_IN_PROGRESS, COLLAPSED)]
    assert mon.state() == "dead-experts"
    assert mon.summary()["reference"]["dead_now"] in ([5], [6], [5, 6])


def test_diagnose_says_what_it_sees(tmp_path, capsys):
    """``moebif diagnose`` on a log with a layer that collapses and stays collapsed (its other
    experts starve) and a layer concentrated from the start: the first reads ``collapsed`` with
    no kappa_hat and its dead experts counted against the frozen reference; the second has no
    reference and no message quotes a stable profile it never had."""
    from moebif.cli import main
    from moebif.monitor import write_log

    s = np.concatenate([np.zeros(1500), np.linspace(0, 0.95, 200), np.full(800, 0.95)])
    a = _draw([_concentrating(P0, x) for x in s], 256, seed=4)
    b = _draw([_concentrating(P0, 0.95)] * s.size, 256, seed=6)
    write_log(tmp_path / "log.npz", np.arange(s.size), {"a": a, "b": b})
    assert main(["diagnose", str(tmp_path / "log.npz"), "--out", str(tmp_path / "o")]) == 0
    text = capsys.readouterr().out
    assert "layer a: collapsed since step" in text and "kappa_hat not shown" in text
    assert "layer b: collapsed since step" in text
    assert "reference profile: none yet" in text
    assert "stable profile 0.00" not in text and "while warming up" in text
    d = json.loads((tmp_path / "o" / "diagnose.json").read_text())
    la, lb = d["layers"]
    assert la["state"] == "collapsed" and {x["kind"] for x in la["active"]} >= {COLLAPSED}
    assert la["reference"]["alive"] == 8 and len(la["reference"]["dead_now"]) >= 6
    assert la["regime"] and la["alarms"] and la["metrics"]  # the keys scripts read are kept
    assert lb["state"] == "collapsed" and lb["reference"] is None


def test_dead_experts_that_come_back_are_cleared_by_recovered():
    """Experts 5, 6 fade out over 1000 steps, stay dead for 500, come back over 300: one
    ``dead-experts``, then one ``recovered`` once they carry load again, nothing left active."""
    fade = np.concatenate(
        [np.ones(1000), np.linspace(1, 0, 1000), np.zeros(500), np.linspace(0, 1, 300)]
    )
    fade = np.concatenate([fade, np.ones(1200)])
    profiles = []
    for x in fade:
        p = P0.copy()
        lost = (1.0 - x) * (p[5] + p[6])
        p[5:7] *= x
        p[[0, 1, 2, 3, 4, 7]] += lost / 6
        profiles.append(p)
    mon = LayerMonitor(8)
    mon.update_many(_draw(profiles, 256, seed=9))
    got = _kinds(mon)
    assert [k for _, k in got] == ["dead-experts", RECOVERED], got
    assert 2500 < got[1][0] < 2800 + 4 * mon.dwell
    assert mon.active_alarms() == [] and mon.state() not in ACTIVE_KINDS
