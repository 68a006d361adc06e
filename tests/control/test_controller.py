"""RouterController on tiny real Hugging Face MoE models on real text: the bias moves the loads to
balance, absorbs a constant logit skew (the bias it settles at is shifted by exactly -h), a
checkpoint continues bit for bit, the monitor's counts are shared, the hook reads nothing on the
host, and step() makes one transfer."""

from __future__ import annotations

import copy
import json

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")

from moebif.control import ControlGains, RouterController  # noqa: E402
from moebif.model.control_law import initial_state, update  # noqa: E402
from moebif.monitor.tiny import corpus, text_batches, tiny_model  # noqa: E402

FAST = ControlGains(k_i=0.05, k_p=0.1)


def _batch(seed=0, batch=4, seq=32):
    return next(text_batches(1, batch, seq, seed=seed, corpus=corpus("pydoc", 1 << 18)))


def _loads_of(model, x):
    """The loads the routers select on ``x`` (counted by an independent hook, registered after
    the controller's: it sees the final selection)."""
    got = {}
    hooks = []
    for name, mod in model.named_modules():
        if type(mod).__name__.endswith("TopKRouter"):
            hooks.append(
                mod.register_forward_hook(
                    lambda m, a, o, name=name: got.__setitem__(
                        name, torch.bincount(o[-1].reshape(-1), minlength=8).double().numpy()
                    )
                )
            )
    with torch.no_grad():
        model(input_ids=x)
    for h in hooks:
        h.remove()
    return {k: v / v.sum() for k, v in got.items()}


def _maxvio(loads):
    return max(f.max() * f.size - 1 for f in loads.values())


def _skew(h):
    def hook(module, args, output):
        logits, weights, idx = output
        lg = logits.clone()
        lg[..., 0] += h
        p = torch.softmax(lg.float(), -1)
        top, new = torch.topk(p, idx.shape[-1], dim=-1)
        return lg, (top / top.sum(-1, keepdim=True)).to(weights.dtype), new

    return hook


@pytest.mark.parametrize("family", ["mixtral", "olmoe"])
def test_bias_moves_the_loads_toward_balance(family):
    # a frozen router on a fixed batch is a static plant: the integral drives its loads to balance
    model = tiny_model(family, seed=0).train()
    x = _batch()
    before = _maxvio(_loads_of(model, x))
    ctl = RouterController(model, gains=FAST)
    with torch.no_grad():
        for _ in range(60):
            model(input_ids=x)
            ctl.step()
    after = _maxvio(_loads_of(model, x))
    assert before > 0.3 and after < 0.5 * before
    assert all(abs(ctl.bias(lab).sum()) < 1e-9 for lab in ctl.layers)


def test_constant_skew_is_absorbed_by_a_bias_shifted_by_minus_h():
    # the selection sees logits + h e_0 + b: the controller with the skew settles where the one
    # without it settles, with b_0 lowered by h (centred: -h (e_0 - 1/N))
    x, h, n = _batch(), 1.0, 8
    ends = {}
    for skew in (0.0, h):
        model = tiny_model("mixtral", seed=0).train()
        ctl = RouterController(model, gains=FAST)
        if skew:
            for mod in ctl.layers.values():
                mod.module.register_forward_hook(_skew(skew), prepend=True)
        with torch.no_grad():
            for _ in range(120):
                model(input_ids=x)
                ctl.step()
        ends[skew] = {lab: ctl.bias(lab) for lab in ctl.layers}
        ends[f"loads{skew}"] = _loads_of(model, x)
    shift = -h * (np.eye(n)[0] - 1 / n)
    for lab in ends[0.0]:
        d = ends[h][lab] - ends[0.0][lab]
        assert np.max(np.abs(d - shift)) < 0.15, (lab, d)
    # absorbed: expert 0's load with the skew is as balanced as without it
    for name, f in ends[f"loads{h}"].items():
        assert abs(8 * f[0] - 1) < 0.25, (name, f)


def _train(model, ctl, steps, seed, opt, mon=None):
    biases = []
    for x in text_batches(steps, 2, 32, seed=seed, corpus=corpus("licenses", 1 << 18)):
        loss = model(input_ids=x, labels=x).loss
        opt.zero_grad()
        loss.backward()
        opt.step()
        if mon is not None:
            mon.step()
        biases.append(np.concatenate(list(ctl.step().values())))
    return np.array(biases)


def test_state_dict_round_trip_continues_identically():
    torch.manual_seed(0)
    model = tiny_model("mixtral", seed=0).train()
    model.router_aux_loss_coef = 0.0
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    ctl = RouterController(model, gains=FAST)
    _train(model, ctl, 8, 1, opt)
    state = json.loads(json.dumps(ctl.state_dict()))  # plain JSON
    assert state["version"] == 1 and set(state["layers"]) == set(ctl.layers)
    model2 = tiny_model("mixtral", seed=1).train()  # a fresh model (a deep copy would carry
    model2.load_state_dict(model.state_dict())  # the first controller's hooks along)
    model2.router_aux_loss_coef = 0.0
    opt2 = torch.optim.AdamW(model2.parameters(), lr=1e-3)
    opt2.load_state_dict(copy.deepcopy(opt.state_dict()))  # torch shares the tensors
    ctl2 = RouterController(model2)
    ctl2.load_state_dict(state)
    assert ctl2.gains == FAST
    a = _train(model, ctl, 6, 2, opt)
    b = _train(model2, ctl2, 6, 2, opt2)
    np.testing.assert_array_equal(a, b)
    with pytest.raises(ValueError, match="version"):
        ctl2.load_state_dict({**state, "version": 99})


def test_shares_the_monitor_counts_and_counts_nothing_itself():
    from moebif.monitor.hooks import RouterMonitor

    model = tiny_model("mixtral", seed=0).train()
    model.router_aux_loss_coef = 0.0
    mon = RouterMonitor(model, forces=False)
    ctl = RouterController(model, gains=FAST, monitor=mon)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    states = {lab: initial_state(8) for lab in ctl.layers}
    for x in text_batches(5, 2, 32, seed=3, corpus=corpus("pydoc", 1 << 18)):
        loss = model(input_ids=x, labels=x).loss
        opt.zero_grad()
        loss.backward()
        opt.step()
        mon.step()
        ctl.step()
        for lab in ctl.layers:  # the law on the monitor's counts of this step
            states[lab] = update(FAST, states[lab], mon.counts(lab)[-1])
            np.testing.assert_array_equal(ctl.bias(lab), states[lab].bias)
            assert not torch.any(ctl.layers[lab].buf[:8])  # nothing counted by the controller
    assert all(np.any(s.bias != 0) for s in states.values())
    # the monitor counted the biased selection: the controller's hook runs first
    assert all(0 <= ctl.rerouted_fraction(lab) <= 1 for lab in ctl.layers)


def test_hooks_read_nothing_on_the_host_and_step_transfers_once(monkeypatch):
    from tests.monitor.test_no_host_sync import NoHostRead

    model = tiny_model("olmoe", seed=0).train()
    ctl = RouterController(model, gains=FAST)
    x = _batch()
    with torch.no_grad():
        model(input_ids=x)  # first forward: reads the router's renormalisation once
    ctl.step()
    router_out = {}
    for lab, lay in ctl.layers.items():  # run only the controller's hook under the mode
        lay.module._forward_hooks.clear()
        with torch.no_grad():
            router_out[lab] = (lay.module, lay.module(torch.randn(16, 64)))
    with torch.no_grad(), NoHostRead():
        for lab, (mod, out) in router_out.items():
            res = ctl._hook(ctl.layers[lab])(mod, (None,), out)
            assert res is not None and res[2].shape == out[2].shape
    calls = []
    orig = torch.Tensor.to

    def spy(self, *a, **k):
        if (a and str(a[0]) == "cpu") or str(k.get("device")) == "cpu":
            calls.append(1)
        return orig(self, *a, **k)

    monkeypatch.setattr(torch.Tensor, "to", spy)
    ctl.step()
    assert len(calls) == 1  # one device, one transfer for both layers


def test_deepseek_drives_the_correction_bias():
    model = tiny_model("deepseek_v3", seed=0).train()
    ctl = RouterController(model, gains=FAST)
    assert {lay.mode for lay in ctl.layers.values()} == {"correction"}
    x = _batch()
    with torch.no_grad():
        for _ in range(3):
            model(input_ids=x)
            ctl.step()
    for lay in ctl.layers.values():
        b = lay.module.e_score_correction_bias.double().numpy()
        np.testing.assert_allclose(b, ctl.score_scale * lay.state.bias, rtol=1e-6, atol=1e-7)
        assert np.any(b != 0)


def test_gain_scheduled_on_the_monitors_margin(monkeypatch):
    # the force probe's margin (learning-rate units) times lr is the law's margin
    from moebif.model.control_law import gain_factor
    from moebif.monitor.hooks import RouterMonitor

    model = tiny_model("mixtral", seed=0).train()
    mon = RouterMonitor(model, forces=False)
    lr = 1e-3
    ctl = RouterController(model, monitor=mon, lr=lambda: lr)
    margins = {lab: -40.0 * (i + 1) for i, lab in enumerate(ctl.layers)}
    for lab, m in margins.items():
        fc = {"margin": {"value": m, "lo": None, "hi": None}}
        monkeypatch.setattr(mon.monitors[lab], "forecast", lambda fc=fc: fc)
    with torch.no_grad():
        model(input_ids=_batch())
    mon.step()
    ctl.step()
    for lab, m in margins.items():
        g = gain_factor(ctl.gains, 8, lr * m)
        assert g > 1 and ctl.gain(lab) == pytest.approx(g)
    ctl_fixed = RouterController(tiny_model("mixtral").train(), monitor=None)
    assert ctl_fixed._margin(next(iter(ctl_fixed.layers))) is None


def test_sign_law_is_deepseeks_update_on_the_same_actuator():
    from moebif.model.control_law import sign_update

    model = tiny_model("olmoe", seed=0).train()
    ctl = RouterController(model, law="sign", u=1e-3)
    x = _batch()
    want = {lab: np.zeros(8) for lab in ctl.layers}
    with torch.no_grad():
        for _ in range(4):
            seen = _loads_of(model, x)  # the biased selection, counted independently
            for lab, name in zip(ctl.layers, sorted(seen), strict=True):
                want[lab] = sign_update(want[lab], seen[name])
            ctl.step()
    for lab in ctl.layers:
        np.testing.assert_allclose(ctl.bias(lab), want[lab], rtol=0, atol=1e-12)
