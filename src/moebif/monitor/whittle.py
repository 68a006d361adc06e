"""Whittle (spectral) fit of the linearised load dynamics, on block means.

**Model.** Around the uniform state, with latent contrast ``z_n`` (the mean-field load minus 1/N)
and observed load contrast ``c_n = l_n - 1/N = z_n + eps_n`` (``eps_n``: the sampling noise of
the batch, covariance ``sigma^2 N/(N-1) (I - 11^T/N)``), the batch router of eq. (8) gives
``z_{n+1} = phi z_n + (eta a_eff / (N T)) eps_n`` and so, per contrast direction, the ARMA(1,1)

    c_{n+1} - phi c_n = eps_{n+1} - theta eps_n,
    phi = 1 + eta lambda,   lambda = a_eff / (N T) - gamma = gamma (kappa - 1),
    theta = 1 - eta gamma,  kappa = a_eff / (N gamma T) = 1 - (1 - phi) / (1 - theta),

driven by the same noise that is observed (``a_eff = a - rho`` with load feedback ``rho``).
Its spectrum is ``f(w) = sigma^2 |1 - theta e^{iw}|^2 / |1 - phi e^{iw}|^2``: white
(``sigma^2``) above ``eta gamma`` and ``sigma^2 / (1 - kappa)^2`` below ``eta |lambda|``, so
kappa is the square root of a ratio of two noise levels and does not need ``eta gamma`` to
be resolved precisely.

**Block means.** The autocovariance of ``c`` is ``g_0`` at lag 0 and ``A phi^(s-1)`` at lags
``s >= 1`` (``A = sigma^2 (phi - theta)(1 - phi theta) / (1 - phi^2)``). The means of blocks of
``m`` steps then have autocovariance ``G_0`` at lag 0 and ``G_1 Phi^(h-1)`` at ``h >= 1`` with
``Phi = phi^m``, ``G_1 = A (S_m / m)^2``, ``S_m = sum_{j<m} phi^j`` and
``G_0 = (m g_0 + 2 A sum_{j<m} (1 - phi^j) / (1 - phi)) / m^2``: again ARMA(1,1), with spectrum

    F(w) = G_0 + 2 G_1 (cos w - Phi) / ((1 - Phi)^2 + 2 Phi (1 - cos w)),

which :func:`block_spectrum` evaluates exactly (no small-``eta`` approximation).

**Fit.** The periodograms of the N demeaned expert series are averaged (each has the per-expert
spectrum; they span ``N - 1`` independent contrast directions) and the Whittle likelihood
``sum_j log F(w_j) + I(w_j) / F(w_j)`` over the non-zero Fourier frequencies is minimised, with
``sigma^2`` profiled out and ``(log(1 - phi), log(1 - theta))`` found by a zooming grid search
(numpy only; robust to the flat directions of short windows). The interval for kappa is the
Wald interval of ``log(1 - kappa)`` from the Fisher information of the pooled Whittle likelihood
(``N - 1`` complex degrees of freedom per frequency).

**Not identifiable from loads:** ``a`` and ``T`` separately (only ``a_eff / T``), ``gamma`` apart
from ``eta`` (only ``eta gamma``, a rate per step), ``rho`` apart from ``a``. ``B_eff`` is the
batch size that multinomial sampling would need to produce the fitted white-noise level; it
equals the batch size for the model router and is smaller or larger for real routers (token
heterogeneity, correlated tokens, top-k without replacement).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import numpy as np

__all__ = ["WhittleFit", "block_spectrum", "fit_whittle", "periodogram"]

_Z95 = 1.959963984540054


def _block_terms(e1, e2, m: int):
    """``(G_0, G_1, Phi, 1 - Phi)`` for ``sigma^2 = 1``; ``e1 = 1 - phi``, ``e2 = 1 - theta``
    (arrays of one shape)."""
    e1 = np.asarray(e1, dtype=float)
    e2 = np.asarray(e2, dtype=float)
    phi = 1.0 - e1
    with np.errstate(all="ignore"):
        L = np.log1p(-np.minimum(e1, 1.0 - 1e-300))  # log phi where phi > 0; else unused
    g0 = 1.0 + (e2 - e1) ** 2 / (e1 * (2.0 - e1))
    A = (e2 - e1) * (e1 + e2 - e1 * e2) / (e1 * (2.0 - e1))
    if m == 1:
        return g0, A, phi, e1
    j = np.arange(m, dtype=float)
    pos = phi > 0.0
    with np.errstate(all="ignore"):
        pw = np.where(pos[..., None], np.exp(L[..., None] * j), phi[..., None] ** j)
        one_minus = np.where(pos[..., None], -np.expm1(L[..., None] * j), 1.0 - pw)
    s_m = pw.sum(axis=-1)
    tail = one_minus.sum(axis=-1) / e1  # sum_{d=1}^{m-1} (m - d) phi^(d-1)
    G0 = (m * g0 + 2.0 * A * tail) / m**2
    G1 = A * (s_m / m) ** 2
    Phi = np.where(pos, np.exp(m * L), phi**m)
    one_m_Phi = np.where(pos, -np.expm1(m * L), 1.0 - Phi)
    return G0, G1, Phi, one_m_Phi


def block_spectrum(w, phi: float, theta: float, sigma2: float = 1.0, block: int = 1) -> np.ndarray:
    """Spectral density (lag-0 normalisation: ``F(w) = sum_h G(h) e^{-ihw}``) of the means over
    blocks of ``block`` steps of the ARMA(1,1) ``c_{n+1} - phi c_n = eps_{n+1} - theta eps_n``,
    ``Var eps = sigma2``, at block frequencies ``w`` (radians per block)."""
    G0, G1, Phi, omp = _block_terms(1.0 - phi, 1.0 - theta, int(block))
    w = np.asarray(w, dtype=float)
    cw = np.cos(w)
    return sigma2 * (G0 + 2.0 * G1 * (cw - Phi) / (omp**2 + 2.0 * Phi * (1.0 - cw)))


def periodogram(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Pooled periodogram of the block series ``x`` (shape ``(M, N)``): each column demeaned,
    ``|DFT|^2 / M`` averaged over columns, at ``w_j = 2 pi j / M``, ``1 <= j < M/2``."""
    x = np.asarray(x, dtype=float)
    M = x.shape[0]
    xc = x - x.mean(axis=0)
    spec = np.fft.rfft(xc, axis=0)
    J = (M - 1) // 2
    per = (spec[1 : J + 1].real ** 2 + spec[1 : J + 1].imag ** 2).mean(axis=1) / M
    w = 2.0 * np.pi * np.arange(1, J + 1) / M
    return w, per


@dataclass(frozen=True)
class WhittleFit:
    """Result of :func:`fit_whittle`. Rates are per step (one logged step = one router update).

    - ``kappa``: ``a_eff / (N gamma T)``; ``kappa_lo``, ``kappa_hi``: its 95% interval.
    - ``phi``, ``theta``: the ARMA(1,1) coefficients per step.
    - ``relaxation_rate``: ``-log(phi)`` per step, the decay rate of the contrast mode
      (``-eta lambda`` to first order; ``lambda_hat = -relaxation_rate / eta``).
    - ``eta_gamma``: ``1 - theta``.
    - ``sigma2``: per-expert variance of the step sampling noise; ``b_eff``: the multinomial batch
      with that variance, ``(1/N)(1 - 1/N) / sigma2``.
    - ``blocks``, ``block``: the series fitted (``blocks`` means of ``block`` steps).
    - ``at_edge``: the optimum is on the edge of the search box (e.g. ``eta gamma`` not resolved
      by the block length, or ``1 - phi`` below the window's resolution).
    - ``resolved``: the window holds at least 4 relaxation times ``1 / (1 - phi)`` and the fit is
      not at the edge; otherwise kappa is not determined by the data (a drift, a collapse in
      progress or a window too short all look like ``kappa -> 1``) and no alarm uses it.
    """

    kappa: float
    kappa_lo: float
    kappa_hi: float
    phi: float
    theta: float
    relaxation_rate: float
    eta_gamma: float
    sigma2: float
    b_eff: float
    n_experts: int
    blocks: int
    block: int
    at_edge: bool

    @property
    def resolved(self) -> bool:
        return (not self.at_edge) and (1.0 - self.phi) * self.blocks * self.block >= 4.0

    def to_dict(self) -> dict:
        d = {
            k: (v if not isinstance(v, float) or math.isfinite(v) else None)
            for k, v in asdict(self).items()
        }
        d["resolved"] = self.resolved
        return d


def _profile(e1, e2, w, per, m):
    """Concentrated Whittle objective (per frequency) and ``sigma^2`` on arrays ``e1``, ``e2``."""
    G0, G1, Phi, omp = _block_terms(e1, e2, m)
    cw = np.cos(w)
    g = G0[..., None] + 2.0 * G1[..., None] * (cw - Phi[..., None]) / (
        omp[..., None] ** 2 + 2.0 * Phi[..., None] * (1.0 - cw)
    )
    g = np.maximum(g, 1e-300)
    s2 = (per / g).mean(axis=-1)
    obj = np.log(s2) + np.log(g).mean(axis=-1)
    return obj, s2


def fit_whittle(
    block_means, *, block: int = 1, n_experts: int | None = None, grid: int = 24, zooms: int = 5
) -> WhittleFit:
    """Fit ``(phi, theta, sigma^2)`` to block-mean loads by the pooled Whittle likelihood.

    **Arguments:**

    - ``block_means``: shape ``(M, N)``: the mean load of each expert over ``M`` consecutive
      blocks of ``block`` steps (loads, or load fractions ``count / (k B)``; constant offsets per
      expert do not matter).
    - ``block``: steps per block ``m``.
    - ``n_experts``: N (default: the number of columns).
    - ``grid``, ``zooms``: the search in ``(log(1 - phi), log(1 - theta))``: a ``grid x grid``
      scan, then ``zooms`` rounds, each a 9x9 scan around the best point at a quarter the span.
    """
    x = np.asarray(block_means, dtype=float)
    if x.ndim != 2 or x.shape[0] < 16 or x.shape[1] < 2:
        raise ValueError("block_means: need shape (M, N) with M >= 16 blocks and N >= 2 experts")
    m = int(block)
    n = x.shape[1] if n_experts is None else int(n_experts)
    M = x.shape[0]
    w, per = periodogram(x)
    if not np.all(np.isfinite(per)) or per.max() <= 0.0:
        raise ValueError("block_means: constant or non-finite loads")
    # search box: 1 - phi from ~ 1/(20 window) to 1.99 per step, 1 - theta likewise
    lo = math.log(0.05 / (M * m))
    hi = math.log(1.99)
    u = np.linspace(lo, hi, grid)
    U1, U2 = np.meshgrid(u, u, indexing="ij")
    obj, _ = _profile(np.exp(U1), np.exp(U2), w, per, m)
    k = np.unravel_index(np.nanargmin(obj), obj.shape)
    best = np.array([U1[k], U2[k]])
    step = (hi - lo) / (grid - 1)
    for _ in range(zooms):
        g = best[:, None] + step * np.linspace(-2.0, 2.0, 9)[None, :]
        g = np.clip(g, lo, hi)
        V1, V2 = np.meshgrid(g[0], g[1], indexing="ij")
        o, _ = _profile(np.exp(V1), np.exp(V2), w, per, m)
        k = np.unravel_index(np.nanargmin(o), o.shape)
        best = np.array([V1[k], V2[k]])
        step /= 4.0
    e1, e2 = float(np.exp(best[0])), float(np.exp(best[1]))
    _, s2 = _profile(np.array(e1), np.array(e2), w, per, m)
    s2 = float(s2)
    edge = bool(min(best - lo) < 2 * step or max(hi - best) < 2 * step)
    # Fisher information of (u1, u2, log sigma^2) for the pooled likelihood: (N - 1) complex
    # degrees of freedom per frequency, score d log F
    h = 1e-4

    def logF(a1, a2):
        G0, G1, Phi, omp = _block_terms(np.exp(a1), np.exp(a2), m)
        cw = np.cos(w)
        return np.log(
            np.maximum(G0 + 2.0 * G1 * (cw - Phi) / (omp**2 + 2.0 * Phi * (1.0 - cw)), 1e-300)
        )

    d1 = (logF(best[0] + h, best[1]) - logF(best[0] - h, best[1])) / (2 * h)
    d2 = (logF(best[0], best[1] + h) - logF(best[0], best[1] - h)) / (2 * h)
    D = np.stack([d1, d2, np.ones_like(d1)])
    info = (n - 1) * D @ D.T
    try:
        cov = np.linalg.inv(info)
        v = cov[0, 0] + cov[1, 1] - 2.0 * cov[0, 1]  # Var(log(1 - kappa)) = Var(u1 - u2)
        sd = math.sqrt(v) if v > 0 else math.inf
    except np.linalg.LinAlgError:
        sd = math.inf
    one_m_kappa = e1 / e2
    kappa = 1.0 - one_m_kappa
    # beyond ~e^30 the lower end is meaningless (a flat likelihood): report it as undetermined
    spread = math.exp(_Z95 * sd) if _Z95 * sd < 30.0 else math.inf
    phi, theta = 1.0 - e1, 1.0 - e2
    return WhittleFit(
        kappa=kappa,
        kappa_lo=1.0 - one_m_kappa * spread if math.isfinite(spread) else math.nan,
        kappa_hi=1.0 - one_m_kappa / spread,
        phi=phi,
        theta=theta,
        relaxation_rate=-math.log(phi) if phi > 0 else math.inf,
        eta_gamma=e2,
        sigma2=s2,
        b_eff=(1.0 / n) * (1.0 - 1.0 / n) / s2,
        n_experts=n,
        blocks=M,
        block=m,
        at_edge=edge,
    )
