"""The force estimator (moebif.monitor.forces): the aux gradient's closed form against autograd of
Hugging Face's own loss, the critical coefficient against synthetic forces with a known answer
(through a normalisation whose scale grows by orders of magnitude, as Adam's does), the forecast
against a margin that closes at a known step, and the probe in a real training loop (a loss
made of the aux term alone has no language-model part)."""

import math

import numpy as np
import pytest

from moebif.monitor import LayerMonitor
from moebif.monitor.forces import ForceStats, Forecast, aux_logit_gradient


def _synthetic(alpha_star, steps, rng, *, scale0=1e3, scale1=1.0, noise=0.5):
    """Per-step probe sums with R_n = -alpha* A_n, the scale of A_n falling from scale0 to
    scale1 (Adam's normalisation), and a noisy language-model projection."""
    rows = []
    for n in range(steps):
        dd = rng.uniform(0.5, 1.5) * 1e-3
        scale = scale0 * (scale1 / scale0) ** (n / steps)
        a_n = -scale
        s_aux = a_n * dd
        s_lm = -alpha_star * a_n * dd + noise * abs(a_n) * math.sqrt(dd) * rng.normal() * 1e-2
        rows.append([s_lm, s_aux, dd, 1.0, 0.01])
    return np.array(rows)


def test_aux_gradient_is_autograd_of_the_hugging_face_loss():
    torch = pytest.importorskip("torch")
    pytest.importorskip("transformers")
    from transformers.models.qwen3_moe.modeling_qwen3_moe import load_balancing_loss_func

    g = torch.Generator().manual_seed(0)
    n, k, layers, t = 8, 2, 3, 50
    logits = [(torch.randn(t, n, generator=g) * 1.5).requires_grad_() for _ in range(layers)]
    loss = load_balancing_loss_func(tuple(logits), n, k)
    loss.backward()
    with torch.no_grad():
        counts = sum(
            torch.nn.functional.one_hot(torch.topk(z, k).indices, n).sum((0, 1)).float()
            for z in logits
        )
        rows = layers * t
        F = counts / rows
        for z in logits:
            mine = aux_logit_gradient(torch.softmax(z, -1), F, rows)
            assert torch.allclose(mine, z.grad, atol=1e-7, rtol=1e-5)
            # the numpy form gives the same numbers
            npg = aux_logit_gradient(torch.softmax(z, -1).numpy(), F.numpy(), rows)
            assert np.allclose(npg, z.grad.numpy(), atol=1e-7)


@pytest.mark.parametrize("alpha_star", [-0.05, 0.004, 0.03])
def test_critical_coefficient_recovered_through_a_changing_normalisation(alpha_star):
    rng = np.random.default_rng(1)
    st = ForceStats(segment=50, segments=20)
    for row in _synthetic(alpha_star, 1000, rng):
        st.push(row)
    est = st.estimate()
    assert est.resolved
    assert est.critical_lo <= alpha_star <= est.critical_hi
    assert abs(est.critical_coefficient - alpha_star) < 0.01
    # the plain ratio of sums is dominated by the first segments' scale; ours is not: R = -a* A
    assert est.reinforcement == pytest.approx(-est.critical_coefficient * est.restoring)
    assert (est.margin > 0) == (0.01 > est.critical_coefficient)


def test_critical_coefficient_interval_covers_the_truth():
    hits = 0
    for seed in range(40):
        rng = np.random.default_rng(100 + seed)
        st = ForceStats(segment=25, segments=20)
        for row in _synthetic(0.02, 500, rng, noise=2.0):
            st.push(row)
        e = st.estimate()
        hits += e.critical_lo <= 0.02 <= e.critical_hi
    assert hits >= 33  # nominal 95% of 40 = 38; a jackknife over 20 segments is a little narrow


def test_no_restoring_force_is_unresolved():
    st = ForceStats(segment=10, segments=10)
    for _ in range(200):
        st.push([1e-4, 0.0, 1e-3, 1.0, 0.0])
    e = st.estimate()
    assert not e.resolved and "restoring" in e.reason


def _score_router(
    c, *, n=8, a=1.0, T=1.0, eta=0.05, lr=0.05, batch=4096, steps=1500, seed=0, record=None
):
    """The paper's batch router (sec. 8) with the HF aux loss of coefficient ``c`` under SGD on
    the scores, gamma = 0: ``r += eta a l - lr c dL/dr``, ``dL/dr_j = (1/T) p_j (l_j - l.p)``;
    the probe's sums computed as the device probe computes them (shock ``l - EMA(l)``, the
    reinforcement's running drive removed, the aux step's exact response to the shock).
    Returns the estimate and the max-load excess per step; ``record``: a list that receives the
    per-step sums and counts."""
    rng = np.random.default_rng(seed)
    r = rng.normal(0.0, 0.01, n)
    ref = drive = None
    st = ForceStats(segment=50, segments=20)
    excess = []
    for _ in range(steps):
        p = np.exp((r - r.max()) / T)
        p /= p.sum()
        load = rng.multinomial(batch, p) / batch
        ref = load.copy() if ref is None else ref
        d = load - ref
        ref += 0.1 * d
        dz = eta * a * (load - load.mean())
        drive = dz.copy() if drive is None else drive
        lm = dz - drive
        drive += 0.02 * (dz - drive)
        aux = -lr * p * (d - d @ p) / T
        sums = [lm @ d, (aux - aux.mean()) @ d, d @ d, 1.0, c]
        st.push(sums)
        if record is not None:
            record.append((sums, load * batch))
        r = r + eta * a * load - lr * c * p * (load - load @ p) / T
        excess.append((load.max() - 1 / n) / (1 - 1 / n))
    return st.estimate(), np.array(excess)


@pytest.mark.parametrize("n", [4, 8])
def test_critical_coefficient_in_the_score_model_is_the_linear_threshold(n):
    """In the score model the balanced router's contrast modes grow at (eta a - lr c / (N T)) /
    (N T): the critical aux coefficient is c* = eta a N T / lr. The forces measured on a stable
    router (c = 1.5 c*) give it within 10%; below it (c = 0.5 c*) the router really leaves
    balance, above it (1.5 c*) it stays. (The estimate is a few percent low: the shock's
    reference and the drive are running means of a router that moves.)"""
    eta, a, T, lr = 0.05, 1.0, 1.0, 0.05
    c_star = eta * a * n * T / lr
    est, ex_hi = _score_router(1.5 * c_star, n=n, eta=eta, a=a, T=T, lr=lr)
    assert est.resolved
    assert est.critical_coefficient == pytest.approx(c_star, rel=0.1)
    assert est.margin > 0
    _, ex_lo = _score_router(0.5 * c_star, n=n, eta=eta, a=a, T=T, lr=lr)
    # below c* the balanced state is left for a concentrated one (the sampling noise of the
    # balanced loads is ~0.01 in excess)
    assert ex_lo[-100:].mean() > 0.08 > 5 * ex_hi[-100:].mean()


def _est(step, crit, half):
    from moebif.monitor.forces import ForceEstimate

    nan = math.nan
    return ForceEstimate(
        step, nan, nan, nan, nan, -1.0, -1.0, -1.0, nan, nan, nan,
        crit, crit - half, crit + half, 1000, True, "",
    )  # fmt: skip


def test_forecast_of_a_ramp_reaches_zero_at_the_crossing():
    # the coefficient ramps down 1e-4 a step from 0.1 toward alpha* = 0.02: zero at step 800
    fc = Forecast(points=8)
    out = None
    for step in range(50, 450, 50):
        alpha = 0.1 - 1e-4 * step
        out = fc.add(_est(step, 0.02, 0.004), alpha)
    assert out.reason == ""
    assert out.steps_lo <= 800 - 400 <= out.steps_hi
    assert out.steps_to_collapse == pytest.approx(400, rel=0.05)
    assert out.knob_at_collapse == pytest.approx(0.02, abs=2e-3)


def test_forecast_of_a_steady_margin_is_no_collapse():
    fc = Forecast(points=8)
    rng = np.random.default_rng(3)
    for step in range(50, 800, 50):
        out = fc.add(_est(step, 0.0 + 0.002 * rng.normal(), 0.004), 0.02)
    assert not math.isfinite(out.steps_hi) or out.steps_hi > 1e4
    below = fc.add(_est(850, 0.05, 0.004), 0.02)
    assert below.steps_to_collapse == 0.0


def test_monitor_warns_before_the_margin_closes_and_replays_identically():
    """Forces whose alpha* stays at 0 while the coefficient ramps from 0.01 down at 1e-5 a step
    from step 500
    (the margin closes at step 1500): approaching-threshold before it, the summary's forecast,
    and update_many gives the same alarms."""
    rng = np.random.default_rng(5)
    steps = 1600
    counts = rng.multinomial(1024, np.full(8, 1 / 8), size=steps)
    forces = _synthetic(0.0, steps, rng, scale0=10.0, scale1=1.0, noise=0.1)
    alpha = np.where(np.arange(steps) < 500, 0.01, 0.01 - 1e-5 * (np.arange(steps) - 500))
    forces[:, 4] = alpha
    mon = LayerMonitor(8, top_k=2, horizon=600)
    for c, f in zip(counts, forces, strict=True):
        mon.update(c, forces=f)
    warn = [a for a in mon.alarms if a.kind == "approaching-threshold"]
    assert warn and 600 < warn[0].step < 1500
    fc = mon.summary()["forecast"]
    crit = fc["critical_coefficient"]
    assert crit["lo"] <= 0.0 <= crit["hi"]
    again = LayerMonitor(8, top_k=2, horizon=600)
    again.update_many(counts, forces=forces)
    assert [(a.step, a.kind) for a in again.alarms] == [(a.step, a.kind) for a in mon.alarms]
    state = mon.state_dict()
    back = LayerMonitor(8, top_k=2, horizon=600)
    back.load_state_dict(state)
    assert back.forecast() == mon.forecast()


def test_probe_on_an_aux_only_loss_sees_no_language_model_force(tmp_path):
    """Trained on the aux term alone, the gradient at the last MoE layer's logits is exactly the
    closed form at the coefficient the probe reads (the layer's own aux term and nothing
    downstream), so its language-model projection is zero to rounding while its restoring force
    is not. An earlier layer also gets the later layers' aux terms through the hidden states:
    that indirect part is counted with the language model's (a few percent here). Read from the
    log, which carries the probe's per-step sums."""
    torch = pytest.importorskip("torch")
    pytest.importorskip("transformers")
    from moebif.monitor import read_log
    from moebif.monitor.hooks import RouterMonitor
    from moebif.monitor.tiny import corpus, text_batches, tiny_model

    torch.manual_seed(0)
    model = tiny_model("qwen3_moe", 0)
    model.train()
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    log = tmp_path / "router.jsonl"
    mon = RouterMonitor(model, aux_coef=0.3, log=log)
    for x in text_batches(12, 4, 32, seed=1, corpus=corpus("pydoc")):
        out = model(input_ids=x, labels=x)
        (0.3 * out.aux_loss).backward()
        opt.step()
        opt.zero_grad()
        mon.step()
    mon.close()
    layers = read_log(log).layers
    assert len(layers) == 2

    def lm_over_restoring(f):
        f = f[1:]  # the first step is the shock's reference (zero shock)
        assert np.all(f[:, 3] == 1.0) and np.all(f[:, 4] == pytest.approx(0.3))
        assert np.all(f[:, 1] < 0)  # a restoring force at every step
        return float(np.sum(f[:, 0] / (-f[:, 1] / f[:, 2])) / f[:, 2].sum())

    first, last = (lm_over_restoring(lay.forces) for lay in layers.values())
    assert abs(last) <= 1e-5
    assert abs(first) <= 0.05
