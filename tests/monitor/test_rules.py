"""The monitor's parts: every registered alarm rule implements the rule interface and checkpoints
its own state; regimes and alarm kinds are string enums that keep the strings of the logs; the
versioned state has named keys only."""

from __future__ import annotations

import json

import numpy as np
import pytest

from moebif.monitor import LayerMonitor
from moebif.monitor.kinds import ACTIVE_KINDS, AlarmKind, Regime, Source
from moebif.monitor.rules import RULES, AlarmRule
from moebif.monitor.state import LAYER_STATE_VERSION, LAYOUT


def test_every_registered_rule_implements_the_interface():
    assert set(RULES) == set(AlarmKind)  # one rule per alarm kind
    mon = LayerMonitor(6, top_k=2)
    for kind, cls in RULES.items():
        assert issubclass(cls, AlarmRule) and cls.kind == kind
        rule = cls(mon)
        assert rule.active is False
        # at least one event is its own
        own = [
            e
            for e in ("on_fit", "on_unused_fit", "on_forecast", "on_block")
            if getattr(cls, e) is not getattr(AlarmRule, e)
        ]
        assert own, kind
        state = rule.state_dict()
        assert set(state) == {"active", *cls.state_keys}
        json.dumps(state)
        other = cls(mon)
        other.load_state_dict(state)
        assert json.dumps(other.state_dict()) == json.dumps(state)
        with pytest.raises(ValueError, match="state"):
            other.load_state_dict({})


def test_enums_keep_the_strings():
    assert [str(k) for k in ACTIVE_KINDS] == ["collapse-in-progress", "collapsed", "dead-experts"]
    assert Regime.SHORT_WINDOW == "short-window" and f"{Regime.WARMING_UP}" == "warming-up"
    assert (
        json.dumps([AlarmKind.APPROACHING, Source.LOGITS]) == '["approaching-threshold", "logits"]'
    )


def test_the_state_has_named_keys_and_a_version():
    rng = np.random.default_rng(0)
    mon = LayerMonitor(4, window=256)
    mon.update_many(rng.multinomial(256, [0.25] * 4, size=600))
    state = mon.state_dict()
    assert state["state_key"] == "moebif.LayerMonitor" and state["version"] == LAYER_STATE_VERSION
    assert set(state) == {"state_key", "version", *LAYOUT, "rules", "alarms"}
    assert set(state["rules"]) == {str(k) for k in AlarmKind}
    for group, keys in LAYOUT.items():
        assert set(state[group]) == set(keys)
        assert not any(k.startswith("_") for k in state[group])
    with pytest.raises(ValueError, match="version 3; this moebif reads versions 1 and 2"):
        mon.load_state_dict({**state, "version": 3})
