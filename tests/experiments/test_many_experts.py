"""Quick variants of the many-experts experiments run, write their outputs, and their claims
hold."""

import json

import pytest

NEXP = ("nexp-branches", "nexp-hysteresis", "nexp-metastable", "nexp-topk")


@pytest.mark.parametrize("exp_id", NEXP)
def test_quick_variant_claims_hold(tmp_path, exp_id):
    from moebif.experiments.runner import run_one

    out = run_one(exp_id, True, str(tmp_path))
    folder = tmp_path / exp_id
    for name in ("figure.png", "figure.svg", "data.json", "claims.json", "config.json"):
        assert (folder / name).stat().st_size > 0
    claims = json.loads((folder / "claims.json").read_text())
    assert claims and claims == out["claims"]
    failed = [(c["id"], c["measured"], c["tolerance"]) for c in claims if not c["holds"]]
    assert not failed, failed
    meta = json.loads((folder / "config.json").read_text())
    assert meta["complete"] and meta["quick"]


def test_quick_variant_is_deterministic():
    """Same seed, same numbers: the quick metastability run twice gives identical data."""
    from moebif.experiments import load_experiment
    from moebif.experiments.base import jsonable

    mod = load_experiment("nexp-metastable")
    cfg = mod.quick()
    cfg = type(cfg)(
        **{
            **cfg.__dict__,
            "batches": (40, 44),
            "escape_runs": 16,
            "pulse_taus": (2.0,),
            "pulse_runs": 8,
        }
    )
    a, b = mod.run(cfg), mod.run(cfg)
    assert json.dumps(jsonable(a)) == json.dumps(jsonable(b))


def _fd_transverse_correction(n, a):
    """The transverse WKB correction with every coefficient by finite differences of the
    N-dimensional drift and noise covariance (independent of the closed forms)."""
    import math

    import numpy as np
    from scipy.integrate import quad, solve_ivp

    from moebif import RouterParams
    from moebif.model.metastability import escape_theory

    th = escape_theory(RouterParams(a=a, gamma=1.0, T=1.0, n_experts=n))
    u = np.full(n, -1.0)
    u[0] = n - 1
    u /= math.sqrt(n * (n - 1))
    v = np.zeros(n)
    v[1], v[2] = 2**-0.5, -(2**-0.5)

    def fields(x, y):
        r = x * u + y * v
        p = np.exp(r - r.max())
        p /= p.sum()
        b, C = a * p - r, np.diag(p) - np.outer(p, p)
        return u @ b, v @ b, u @ C @ u, u @ C @ v, v @ C @ v

    def line(x, e=1e-4):
        (b0, _, a0, _, ayy), (bp, yp, ap, cp, _), (bm, ym, am, cm, _) = (
            fields(x, 0.0),
            fields(x, e),
            fields(x, -e),
        )
        phi = -2 * b0 / a0
        return dict(
            xdot=-b0, phi=phi, ayy=ayy, lam=-(yp - ym) / (2 * e), c1=(cp - cm) / (2 * e),
            b2=(bp - 2 * b0 + bm) / e**2, a2=(ap - 2 * a0 + am) / e**2,
        )  # fmt: skip

    def dh(x, h):
        L = line(x)
        val = (
            L["lam"] * h - 0.5 * L["ayy"] * h * h - L["c1"] * L["phi"] * h
            - 0.5 * L["b2"] * L["phi"] - 0.25 * L["a2"] * L["phi"] ** 2
        )  # fmt: skip
        return 2 * val / L["xdot"]

    x0, x1 = 1e-6 * th.x_s, (1 - 1e-6) * th.x_s
    L0 = line(x0)
    sol = solve_ivp(dh, (x0, x1), [2 * L0["lam"] / L0["ayy"]], rtol=1e-10, dense_output=True)

    def f(x):
        L = line(x)
        return (-L["lam"] + 0.5 * L["ayy"] * sol.sol(x)[0] + L["c1"] * L["phi"]) / L["xdot"]

    return math.exp((n - 2) * quad(f, x0, x1, limit=200)[0])


def test_transverse_correction_against_finite_differences():
    """The closed-form coefficients of the WKB transport equal finite differences of the
    N-expert field; the factor depends on a / (gamma T) and N only."""
    from moebif import RouterParams
    from moebif.experiments.many_metastable import transverse_correction

    for n, a in ((8, 6.5), (4, 3.7), (16, 10.0)):
        c = transverse_correction(RouterParams(a=a, gamma=1.0, T=1.0, n_experts=n))
        assert c == pytest.approx(_fd_transverse_correction(n, a), rel=2e-4)
        assert 0.0 < c < 1.0  # the state-dependent noise shortens the escape
    base = transverse_correction(RouterParams(a=6.5, gamma=1.0, T=1.0, n_experts=8))
    scaled = transverse_correction(RouterParams(a=13.0, gamma=2.0, T=1.0, n_experts=8))
    assert scaled == pytest.approx(base, rel=1e-8)


def test_topk_recovery_brackets_the_saddle_node():
    """At a fixed a the collapsed router recovers below a_SN and stays collapsed above it; the
    bisection's bracket holds a_SN at a coarse setting."""
    import dataclasses

    from moebif import RouterParams
    from moebif.experiments import many_topk as m

    c = dataclasses.replace(m.quick(), hold_time=60.0, bisections=3, bracket_runs=6)
    p = RouterParams(a=1.0, gamma=1.0, T=1.0, n_experts=8)
    out = m._measure_saddle_node(p, 2, 256, c, seed=3)
    low, high = out["bracket"]
    assert out["bracketed"] and high - low == pytest.approx(2 * c.bracket * out["a_sn"] / 2**3)
    assert low - 0.01 * out["a_sn"] <= out["a_sn"] <= high + 0.01 * out["a_sn"]
    ev = {round(e["a"] / out["a_sn"], 4): e for e in out["evaluations"]}
    assert ev[1.0]["recovered"] < 0.5  # the midpoint a = a_SN: the collapsed state survives
    assert all(e["recovered"] == 1.0 for k, e in ev.items() if k <= 0.95)
    assert all(e["recovered"] == 0.0 for k, e in ev.items() if k >= 1.05)
