"""Random streams and exact samplers of moebif._sampling against their definitions.

The binomial sampler (inversion for n min(p, 1-p) < 10, BTRD otherwise) is checked against the
binomial pmf of scipy.stats: exact mean and variance within sampling bands, and a chi-square
goodness-of-fit. Seeds are fixed, so the p-value thresholds never flake; they are loose enough
for any seed, and the draws are numerous enough to expose a wrong branch of BTRD (see
``test_btrd_branches``, which has the power to see a 1% error in the pmf).
"""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import stats

from moebif.sim._kernels import sampling as smp

U64 = np.uint64
MASK = (1 << 64) - 1


def chi_square_pvalue(x: np.ndarray, pmf, support_lo: int, support_hi: int, min_expected=5.0):
    """Chi-square goodness-of-fit p-value of integer draws ``x`` against ``pmf`` on
    ``[support_lo, support_hi]`` (both tails folded into the end bins; bins merged until each
    expects ``min_expected`` draws). Returns ``(pvalue, bins)``."""
    ks = np.arange(support_lo, support_hi + 1)
    probs = pmf(ks)
    obs = np.bincount(x - support_lo, minlength=ks.size).astype(float)
    exp = probs * x.size
    merged_obs, merged_exp, co, ce = [], [], 0.0, 0.0
    for o, e in zip(obs, exp, strict=True):
        co += o
        ce += e
        if ce >= min_expected:
            merged_obs.append(co)
            merged_exp.append(ce)
            co = ce = 0.0
    if merged_obs:
        merged_obs[-1] += co
        merged_exp[-1] += ce
    else:
        merged_obs, merged_exp = [co], [ce]
    o, e = np.array(merged_obs), np.array(merged_exp)
    if o.size < 2:
        return 1.0, 1
    chi2 = float(np.sum((o - e) ** 2 / e))
    return float(stats.chi2.sf(chi2, o.size - 1)), o.size


def binomial_gof(x, n, p):
    """Chi-square p-value of draws against Binomial(n, p), on the range holding all but 1e-12."""
    dist = stats.binom(n, p)
    lo, hi = int(dist.ppf(1e-12)), int(dist.isf(1e-12))
    lo, hi = max(0, min(lo, int(x.min()))), min(n, max(hi, int(x.max())))
    return chi_square_pvalue(np.asarray(x, dtype=np.int64), dist.pmf, lo, hi)


# ----------------------------------------------------------------------------------------------
# random streams


def _xoshiro_reference(state, count):
    """xoshiro256++ in pure Python, transcribed from Blackman & Vigna's reference C code."""
    s = [int(v) for v in state]

    def rotl(x, k):
        return ((x << k) | (x >> (64 - k))) & MASK

    out = []
    for _ in range(count):
        out.append((rotl((s[0] + s[3]) & MASK, 23) + s[0]) & MASK)
        t = (s[1] << 17) & MASK
        s[2] ^= s[0]
        s[3] ^= s[1]
        s[1] ^= s[2]
        s[0] ^= s[3]
        s[2] ^= t
        s[3] = rotl(s[3], 45)
    return out


def test_xoshiro256pp_matches_reference():
    st = np.array([[1, 2, 3, 4]], dtype=np.uint64)
    got = [int(smp._next_u64(st, 0)) for _ in range(8)]
    assert got[0] == 41943041  # rotl(1 + 4, 23) + 1
    assert got == _xoshiro_reference([1, 2, 3, 4], 8)
    seeded = smp.seed_streams(U64(12345), 0, 1)
    ref = _xoshiro_reference(seeded[0], 100)
    assert [int(smp._next_u64(seeded, 0)) for _ in range(100)] == ref


def test_splitmix64_known_value():
    # SplitMix64 from state 0: first output 0xE220A8397B1DCDAF (Vigna's reference)
    assert int(smp._mix64(U64(0x9E3779B97F4A7C15))) == 0xE220A8397B1DCDAF


def test_streams_depend_on_seed_and_replica_only():
    a = smp.seed_streams(U64(7), 0, 50)
    np.testing.assert_array_equal(smp.seed_streams(U64(7), 20, 10), a[20:30])
    assert len({tuple(row) for row in a}) == 50  # all replicas distinct
    b = smp.seed_streams(U64(8), 0, 50)
    assert not np.any(np.all(a == b, axis=1))
    big = smp.seed_streams(U64(2**64 - 1), 0, 3)
    assert big.dtype == np.uint64 and np.all(big.any(axis=1))


def test_uniform_open_interval_and_moments():
    u = smp.uniform_sample(200_000, U64(3))
    assert 0.0 < u.min() and u.max() < 1.0
    assert abs(u.mean() - 0.5) < 5 * math.sqrt(1 / 12 / u.size)
    assert abs(u.var() - 1 / 12) < 5 * math.sqrt(1 / 180 / u.size)  # Var of (U - 1/2)^2 = 1/180
    assert stats.kstest(u, "uniform").pvalue > 1e-3


# ----------------------------------------------------------------------------------------------
# binomial


def test_stirling_correction_against_mpmath():
    mp = pytest.importorskip("mpmath")
    mp.mp.dps = 40
    for k in range(60):
        exact = mp.loggamma(k + 1) - (
            (k + mp.mpf(1) / 2) * mp.log(k + 1) - (k + 1) + mp.log(2 * mp.pi) / 2
        )
        # table for k <= 9; the 3-term series beyond is good to ~1/(1680 (k+1)^7)
        tol = 1e-16 if k <= 9 else 1.0 / (1680.0 * (k + 1) ** 7)
        assert abs(smp._fc(k) - float(exact)) <= tol + 1e-17, k


GRID_B = [1, 2, 17, 512, 100_000]
GRID_P = [1e-6, 0.01, 0.3, 0.5, 0.77, 0.999]


@pytest.mark.parametrize("n", GRID_B)
@pytest.mark.parametrize("p", GRID_P)
def test_binomial_moments_and_gof(n, p):
    size = 200_000
    x = smp.binomial_sample(n, p, size, U64(1000 + n))
    assert x.min() >= 0 and x.max() <= n
    mean, var = n * p, n * p * (1 - p)
    # central fourth moment of the binomial gives the standard error of the sample variance
    mu4 = var * (1 + 3 * (n - 2) * p * (1 - p))
    assert abs(x.mean() - mean) <= 5 * math.sqrt(var / size) + 1e-12
    if var * size > 50:  # otherwise (p = 1e-6 with small n) nearly every draw is 0
        # (the second term covers the degenerate Bernoulli(1/2), where mu4 = var^2)
        assert abs(x.var() - var) <= 6 * math.sqrt((mu4 - var**2) / size) + 10 * var / size
    pvalue, bins = binomial_gof(x, n, p)
    assert pvalue > 1e-4, (n, p, pvalue, bins)


@pytest.mark.parametrize(
    ("n", "p"),
    [
        (20, 0.5),  # n p = 10: the first BTRD case
        (1000, 0.0099),  # n p = 9.9: the last inversion case
        (512, 0.05),  # BTRD, recursion 3.1 dominant
        (512, 0.95),  # symmetry
        (100_000, 0.3),  # BTRD, squeeze 3.2 and Stirling 3.3 dominant
    ],
)
def test_btrd_branches(n, p):
    x = smp.binomial_sample(n, p, 2_000_000, U64(7))
    pvalue, bins = binomial_gof(x, n, p)
    assert pvalue > 1e-4, (n, p, pvalue, bins)
    assert abs(x.mean() - n * p) <= 5 * math.sqrt(n * p * (1 - p) / x.size)


def test_binomial_edge_cases():
    assert np.all(smp.binomial_sample(10, 0.0, 100, U64(0)) == 0)
    assert np.all(smp.binomial_sample(10, 1.0, 100, U64(0)) == 10)
    assert np.all(smp.binomial_sample(0, 0.3, 100, U64(0)) == 0)
    big = smp.binomial_sample(10**12, 0.5, 1000, U64(0))
    assert abs(big.mean() - 5e11) < 5 * math.sqrt(2.5e11 / 1000)


def test_binomial_same_seed_same_draws():
    a = smp.binomial_sample(512, 0.3, 1000, U64(5))
    np.testing.assert_array_equal(a, smp.binomial_sample(512, 0.3, 1000, U64(5)))
    assert not np.array_equal(a, smp.binomial_sample(512, 0.3, 1000, U64(6)))


# ----------------------------------------------------------------------------------------------
# multinomial


@pytest.mark.parametrize("n", [1, 17, 512])
@pytest.mark.parametrize(
    "pvals",
    [
        [0.25, 0.25, 0.25, 0.25],
        [0.5, 0.3, 0.15, 0.05, 0.0],
        [1e-6, 0.999, 1e-3 - 1e-6],
        [0.0, 0.0, 1.0],
    ],
)
def test_multinomial_marginals_and_covariance(n, pvals):
    pv = np.array(pvals)
    size = 100_000
    x = smp.multinomial_sample(n, pv, size, U64(11))
    assert x.shape == (size, pv.size)
    assert np.all(x.sum(axis=1) == n) and x.min() >= 0
    for j, pj in enumerate(pv):
        if pj == 0.0:
            assert np.all(x[:, j] == 0)
            continue
        if pj == 1.0:
            assert np.all(x[:, j] == n)
            continue
        pvalue, _ = binomial_gof(x[:, j], n, pj)
        assert pvalue > 1e-4, (n, pvals, j, pvalue)
    # Cov(N_i, N_j) = -n p_i p_j
    i, j = 0, 1
    if pv[i] > 0 and pv[j] > 0 and n > 1:
        cov = np.cov(x[:, i], x[:, j])[0, 1]
        se = (
            n
            * math.sqrt(pv[i] * pv[j] * (1 - pv[i]) * (1 - pv[j]) + (pv[i] * pv[j]) ** 2)
            / math.sqrt(size)
        )
        assert abs(cov + n * pv[i] * pv[j]) <= 6 * se + 1e-12


def test_multinomial_unnormalised_weights_and_joint_law():
    # weights need not sum to 1; the joint law of (N1, N2, N3) for n = 3 against the pmf
    w = np.array([2.0, 1.0, 1.0])
    x = smp.multinomial_sample(3, w, 200_000, U64(2))
    keys = x[:, 0] * 16 + x[:, 1] * 4 + x[:, 2]
    cells = [(a, b, 3 - a - b) for a in range(4) for b in range(4 - a)]
    obs = np.array([np.sum(keys == a * 16 + b * 4 + c) for a, b, c in cells])
    exp = np.array([stats.multinomial.pmf([a, b, c], 3, w / w.sum()) for a, b, c in cells])
    chi2 = np.sum((obs - exp * x.shape[0]) ** 2 / (exp * x.shape[0]))
    assert stats.chi2.sf(chi2, len(cells) - 1) > 1e-4
