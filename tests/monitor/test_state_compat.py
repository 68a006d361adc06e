"""Checkpoints written by the release before the monitor's split (issue 22) still load, and the
restored monitors continue to the numbers that release gave (alarms, fits, forecasts, summary);
the same inputs replayed from scratch give those numbers too. The fixtures were written by
:mod:`tests.monitor._compat_fixtures` on the code before the split."""

from __future__ import annotations

import json

import numpy as np
import pytest

from moebif.monitor import LayerMonitor

from ._compat_fixtures import (
    LAYER_FIXTURE,
    ROUTER_FIXTURE,
    checksum,
    load,
    outputs,
    synthetic_run,
)


@pytest.fixture(scope="module")
def layer_fixture():
    d = load(LAYER_FIXTURE)
    C, P, S, F = synthetic_run()
    assert checksum(C, P, S, F) == d["inputs"]["checksum"]  # the same inputs as then
    return d, (C, P, S, F)


def _same(got: dict, want: dict) -> None:
    assert got["alarms"] == want["alarms"]
    assert got["fits"] == want["fits"]
    assert got["forecast_history"] == want["forecast_history"]
    assert json.dumps(got["summary"]) == json.dumps(want["summary"])


@pytest.mark.parametrize("case", ["fixed_pending", "auto"])
def test_a_previous_release_checkpoint_continues_to_the_same_numbers(layer_fixture, case):
    d, (C, P, S, F) = layer_fixture
    fx = d[case]
    mon = LayerMonitor(6, **fx["options"])
    mon.load_state_dict(fx["state"])
    cut = fx["cut"]
    mon.update_many(C[cut:], P[cut:], S[cut:], F[cut:])
    _same(json.loads(json.dumps(outputs(mon))), fx["expected"])
    assert any(a["kind"] == "approaching-threshold" for a in fx["expected"]["alarms"])


@pytest.mark.parametrize("case", ["fixed_pending", "auto"])
def test_replay_from_scratch_gives_the_previous_release_numbers(layer_fixture, case):
    d, (C, P, S, F) = layer_fixture
    mon = LayerMonitor(6, **d[case]["options"])
    mon.update_many(C, P, S, F)
    _same(json.loads(json.dumps(outputs(mon))), d[case]["expected"])


def test_a_previous_release_router_checkpoint_continues_to_the_same_numbers():
    pytest.importorskip("torch")
    pytest.importorskip("transformers")
    from moebif.monitor.hooks import RouterMonitor
    from moebif.monitor.tiny import tiny_model

    d = load(ROUTER_FIXTURE)
    mon = RouterMonitor(tiny_model(d["family"], seed=d["seed"]), **d["options"])
    mon.load_state_dict(d["state"])
    for label, rows in d["rows"].items():
        layer = mon.monitors[label]
        for counts, imp, sc, fo in rows:
            layer.update(*(None if v is None else np.asarray(v) for v in (counts, imp, sc, fo)))
    mon.step_index += len(next(iter(d["rows"].values())))
    want = d["expected"]
    assert [a.to_dict() for a in mon.alarms] == want["alarms"]
    assert json.loads(json.dumps(mon.summary())) == want["summary"]
    assert mon.step_index == want["step_index"]
    assert any(a["kind"] == "collapsed" for a in want["alarms"])
    mon.close()


def test_a_checkpoint_of_an_unknown_version_fails_with_one_line():
    mon = LayerMonitor(6, top_k=2)
    state = mon.state_dict()
    bad = {**state, "version": 99} if "version" in state else {**state, "format": "x/99"}
    with pytest.raises(ValueError) as e:
        mon.load_state_dict(bad)
    assert "\n" not in str(e.value) and "state" in str(e.value)
