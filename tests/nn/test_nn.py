"""moebif.nn: straight-through estimator, balancing penalty, data, and the batched ensembles'
bit-for-bit agreement with models trained alone."""

import subprocess
import sys

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from moebif.nn import (  # noqa: E402
    AffineExperts,
    BottleneckExperts,
    HardTop1MoE,
    SoftRouterMoE,
    Trainer,
    TrainSettings,
    balancing_penalty,
    digits_data,
    evaluate,
    quasi_static_scan,
    regression_data,
    straight_through,
    torch_threads,
    two_regime_target,
    updown_path,
)
from moebif.nn.models import _mix  # noqa: E402


@pytest.fixture(autouse=True)
def one_thread():
    with torch_threads(1):
        yield


# --- straight-through estimator -------------------------------------------------------------


def test_straight_through_forward_is_the_hard_expert():
    gen = torch.Generator().manual_seed(0)
    z = torch.randn(3, 50, 2, generator=gen, requires_grad=True)
    f = torch.randn(3, 2, 50, 4, generator=gen)
    g_st, g, p = straight_through(z, T=0.7)
    y = _mix(g_st, f)
    chosen = torch.where((z[..., 0] >= z[..., 1])[..., None], f[:, 0], f[:, 1])
    assert torch.equal(y, chosen)  # exactly the selected expert's output, no soft admixture
    assert torch.equal(g_st, g)
    assert torch.equal(g.sum(-1), torch.ones(3, 50))
    torch.testing.assert_close(p, torch.softmax(z / 0.7, dim=-1), rtol=1e-6, atol=1e-7)


def test_straight_through_backward_is_the_softmax_gradient():
    """d/dz of a loss of the hard output equals d/dz of the same upstream gradient pushed
    through the soft mixture sum_i p_i(z) f_i."""
    gen = torch.Generator().manual_seed(1)
    T = 0.6
    z = torch.randn(2, 40, 2, generator=gen, dtype=torch.float64, requires_grad=True)
    f = torch.randn(2, 2, 40, 3, generator=gen, dtype=torch.float64)
    target = torch.randn(2, 40, 3, generator=gen, dtype=torch.float64)
    g_st, _, _ = straight_through(z, T)
    y_hard = _mix(g_st, f)
    loss = ((y_hard - target) ** 2).sum()
    (grad_st,) = torch.autograd.grad(loss, z)
    upstream = 2 * (y_hard - target).detach()  # dL/dy at the hard output
    y_soft = _mix(torch.softmax(z / T, dim=-1), f)
    (grad_soft,) = torch.autograd.grad((upstream * y_soft).sum(), z)
    torch.testing.assert_close(grad_st, grad_soft, rtol=1e-12, atol=1e-12)


def test_hard_router_model_outputs_the_argmax_expert():
    x = torch.randn(3, 20, 1, generator=torch.Generator().manual_seed(2))
    model = HardTop1MoE([1, 2, 3], lambda g: AffineExperts(g), d_in=1, T=0.5)
    h = torch.tensor([0.0, 1.0, -2.0])
    with torch.no_grad():
        out = model(x, h)
        z = model.logits(x, h)
        f = model.experts(x)
    first = z[..., 0] >= z[..., 1]
    assert torch.equal(out.y, torch.where(first[..., None], f[:, 0], f[:, 1]))
    assert torch.equal(out.g[..., 0], first.float())
    # the skew enters as (h/2, -h/2)
    assert torch.allclose(
        z[..., 0] - z[..., 1], (x @ model.W)[..., 0] - (x @ model.W)[..., 1] + h[:, None]
    )


# --- balancing penalty ----------------------------------------------------------------------


def test_balancing_penalty_value():
    p1 = torch.tensor([[0.9, 0.7, 0.8, 0.6], [0.5, 0.5, 0.5, 0.5]])
    p = torch.stack([p1, 1 - p1], dim=-1)
    lam = torch.tensor([2.0, 3.0])
    expected = lam * ((p1.mean(1) - 0.5) ** 2 + ((1 - p1).mean(1) - 0.5) ** 2)
    torch.testing.assert_close(balancing_penalty(p, lam), expected)


@pytest.mark.parametrize("bias", [-2.0, -0.4, 0.3, 1.5])
def test_balancing_penalty_gradient_pushes_importance_to_one_half(bias):
    """A gradient step on the router logits lowers |mean p_1 - 1/2|, whichever side it is on;
    at balance the gradient vanishes."""
    gen = torch.Generator().manual_seed(3)
    z = torch.randn(1, 256, 2, generator=gen) * 0.5
    z[..., 0] += bias
    z.requires_grad_(True)
    lam = torch.ones(1)

    def importance(zz):
        return torch.softmax(zz, dim=-1)[..., 0].mean()

    before = importance(z).item()
    (grad,) = torch.autograd.grad(balancing_penalty(torch.softmax(z, -1), lam).sum(), z)
    after = importance(z - 0.5 * grad).item()
    assert abs(after - 0.5) < abs(before - 0.5)
    assert np.sign(grad[..., 0].sum().item()) == np.sign(before - 0.5)  # lowers the heavy logit
    zb = torch.zeros(1, 8, 2, requires_grad=True)
    (g0,) = torch.autograd.grad(balancing_penalty(torch.softmax(zb, -1), lam).sum(), zb)
    assert torch.all(g0 == 0)


def test_penalty_alone_balances_a_skewed_router():
    """Training on the penalty only: the router bias c absorbs the skew h."""
    data = digits_data()
    model = HardTop1MoE([0], lambda g: BottleneckExperts(g), d_in=64, router_bias=True)
    opt = torch.optim.SGD(model.router_parameters(), lr=0.5)
    x, h = data.x_train[None, :256], torch.tensor([3.0])
    for _ in range(300):
        opt.zero_grad()
        balancing_penalty(model(x, h).p, torch.ones(1)).sum().backward()
        opt.step()
    with torch.no_grad():
        imp = model(x, h).p[..., 0].mean().item()
    assert abs(imp - 0.5) < 0.02


# --- data and metrics -----------------------------------------------------------------------


def test_regression_target_and_data():
    x = np.array([-1.0, -0.5, -1e-9, 0.0, 0.5, 1.0])
    y = two_regime_target(x)
    expected = np.where(x < 0, -1 - 0.7 * x, 1 + 0.7 * x) + 0.05 * np.sin(8 * np.pi * x)
    np.testing.assert_allclose(y, expected)
    d = regression_data(n_train=100, seed=4)
    assert d.x_train.shape == (100, 1) and d.y_train.shape == (100, 1)
    assert float(d.x_train.abs().max()) <= 1.0
    assert torch.equal(d.x_train, regression_data(n_train=100, seed=4).x_train)


def test_digits_split_is_stratified_and_standardised():
    d = digits_data()
    n_tr, n_te = d.x_train.shape[0], d.x_test.shape[0]
    assert n_tr + n_te == 1797 and d.x_train.shape[1] == 64
    assert abs(n_te / 1797 - 0.3) < 0.01
    tr = np.bincount(d.y_train.numpy(), minlength=10) / n_tr
    te = np.bincount(d.y_test.numpy(), minlength=10) / n_te
    assert np.max(np.abs(tr - te)) < 0.01  # same class proportions
    mean, std = d.x_train.mean(0), d.x_train.std(0, unbiased=False)
    assert float(mean.abs().max()) < 1e-5
    assert torch.all((torch.abs(std - 1) < 1e-4) | (std == 0))  # constant pixels stay 0
    assert torch.equal(d.x_test, digits_data().x_test)  # fixed split


def test_evaluate_hard_load_counts_tokens():
    model = HardTop1MoE([5, 6], lambda g: AffineExperts(g), d_in=1, T=1.0)
    x = torch.linspace(-1, 1, 101)[:, None]
    y = torch.zeros(101, 1)
    h = torch.tensor([0.3, -1.2])
    m = evaluate(model, x, y, h, "regression")
    with torch.no_grad():
        z = model.logits(x.expand(2, -1, -1), h)
    n1 = (z[..., 0] >= z[..., 1]).sum(1).numpy()
    np.testing.assert_allclose(m["load"], (2 * n1 - 101) / 101, atol=1e-6)
    assert set(m) >= {"load", "importance", "mse", "loss"}


def test_scan_path():
    h, leg = updown_path(1.0, 0.25)
    assert h[0] == 0.0 and list(leg[:5]) == ["prep"] * 5 and h[4] == -1.0
    assert h[leg == "up"][-1] == 1.0 and h[-1] == -1.0


# --- batched ensembles ----------------------------------------------------------------------


def _params(model, k):
    return {n: p.detach()[k].clone() for n, p in model.named_parameters()}


@pytest.mark.parametrize("optimizer", ["sgd", "adam"])
def test_batched_digits_ensemble_equals_members_trained_alone(optimizer):
    """Members with different seeds, skews and penalties, trained together, end bit for bit
    where each ends trained alone with the same seed."""
    data = digits_data()
    seeds = [11, 12, 13, 14]
    hs = [0.0, 2.0, 2.0, -1.0]
    lams = [0.0, 0.0, 1.0, 0.3]
    settings = TrainSettings(
        optimizer=optimizer,
        lr=0.05 if optimizer == "sgd" else 0.01,
        router_weight_decay=0.01,
        expert_weight_decay=0.001,
    )

    def build(s):
        return HardTop1MoE(s, lambda g: BottleneckExperts(g), d_in=64, router_bias=True)

    ens = build(seeds)
    tr = Trainer(ens, data, settings, seeds=seeds, lambda_lb=lams)
    tr.train(hs, 25)
    tr.train(hs, 15)  # a second call continues the minibatch stream and optimiser state
    for k in range(len(seeds)):
        solo = build([seeds[k]])
        tr1 = Trainer(solo, data, settings, seeds=[seeds[k]], lambda_lb=lams[k])
        tr1.train(hs[k], 25)
        tr1.train(hs[k], 15)
        a, b = _params(ens, k), _params(solo, 0)
        for name in a:
            assert torch.equal(a[name], b[name]), (k, name)


def test_batched_soft_router_scan_equals_member_alone():
    data = regression_data(n_train=256)
    seeds = [21, 22, 23]
    settings = TrainSettings(lr=0.1, router_weight_decay=0.075, expert_weight_decay=0.01)
    path = [0.0, 0.5, 1.0, 0.5]
    ens = SoftRouterMoE(seeds, T=0.2)
    rec = quasi_static_scan(
        Trainer(ens, data, settings, seeds=seeds), path, steps_per_h=20, warmup_steps=30
    )
    solo = SoftRouterMoE([seeds[1]], T=0.2)
    rec1 = quasi_static_scan(
        Trainer(solo, data, settings, seeds=[seeds[1]]), path, steps_per_h=20, warmup_steps=30
    )
    for name, p in _params(solo, 0).items():
        assert torch.equal(_params(ens, 1)[name], p), name
    np.testing.assert_array_equal(rec["importance"][:, 1], rec1["importance"][:, 0])
    np.testing.assert_array_equal(rec["mse"][:, 1], rec1["mse"][:, 0])


def test_same_seed_same_numbers():
    data = regression_data(n_train=128)

    def once():
        m = HardTop1MoE([7, 8], lambda g: AffineExperts(g), d_in=1, T=0.5)
        tr = Trainer(m, data, TrainSettings(), seeds=[7, 8], lambda_lb=[0.0, 1.0])
        tr.train(1.0, 40)
        return tr.evaluate(1.0)

    a, b = once(), once()
    for k in a:
        np.testing.assert_array_equal(a[k], b[k])


def test_bad_arguments():
    data = regression_data(n_train=16)
    m = SoftRouterMoE([1, 2])
    with pytest.raises(ValueError, match="seeds"):
        Trainer(m, data, TrainSettings(), seeds=[1])
    with pytest.raises(ValueError, match="optimizer"):
        Trainer(m, data, TrainSettings(optimizer="lbfgs"), seeds=[1, 2])


def test_moebif_and_cli_do_not_import_torch():
    code = (
        "import sys, moebif, moebif.cli, moebif.experiments, moebif.experiments.runner; "
        "assert 'torch' not in sys.modules, 'torch imported'"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
