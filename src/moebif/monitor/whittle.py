"""Whittle (spectral) fit of the linearised load dynamics around the router's own state.

**Model.** A router trained on real data sits at a stable, non-uniform load profile ``f*``
(:mod:`moebif.model.heterogeneous`: the drifts ``b != 0`` of eq. 8). Near it the loads respond
to the scores through the load Jacobian ``K`` (``diag f* - f* f*^T`` for top-1, the inclusion
Jacobian over ``k`` for top-k), and for top-1 the multinomial noise of a batch has covariance
``K / B``: the same matrix. Projected on an eigenvector ``v_j`` of ``K`` (eigenvalue ``mu_j``),
the latent load ``z_n`` and the observed ``c_n = v_j . (l_n - f*) = z_n + eps_n`` follow the batch
router of eq. (8) as the ARMA(1,1)

    c_{n+1} - phi_j c_n = eps_{n+1} - theta eps_n,
    1 - phi_j = eta gamma (1 - kappa_j),   kappa_j = A mu_j,   theta = 1 - eta gamma,

with ``A = a_eff / (gamma T)``: every mode has its own rate, all share ``A`` and ``eta gamma``.
The stability ratio of the state is that of its slowest mode, ``kappa = A mu_max`` (1 where it
stops relaxing); at the uniform state ``mu = 1/N`` and ``kappa = a_eff / (N gamma T)``. The
spectrum of a mode is ``f(w) = sigma_j^2 |1 - theta e^{iw}|^2 / |1 - phi_j e^{iw}|^2``: white
above ``eta gamma`` and ``sigma_j^2 / (1 - kappa_j)^2`` below ``eta gamma (1 - kappa_j)``.

**Block means.** The autocovariance of ``c`` is ``g_0`` at lag 0 and ``A phi^(s-1)`` at lags
``s >= 1`` (``A = sigma^2 (phi - theta)(1 - phi theta) / (1 - phi^2)``). The means of blocks of
``m`` steps then have autocovariance ``G_0`` at lag 0 and ``G_1 Phi^(h-1)`` at ``h >= 1`` with
``Phi = phi^m``, ``G_1 = A (S_m / m)^2``, ``S_m = sum_{j<m} phi^j`` and
``G_0 = (m g_0 + 2 A sum_{j<m} (1 - phi^j) / (1 - phi)) / m^2``: again ARMA(1,1), with spectrum

    F(w) = G_0 + 2 G_1 (cos w - Phi) / ((1 - Phi)^2 + 2 Phi (1 - cos w)),

which :func:`block_spectrum` evaluates exactly (no small-``eta`` approximation).

**Fit.** The block means are projected on the modes of the window's mean profile and the
Whittle likelihood ``sum_j log F_j(w) + I_j(w) / F_j(w)`` over the modes and the non-zero
Fourier frequencies is minimised in ``(log(1 - phi_max), log(1 - theta))`` by a zooming grid
search (numpy only; robust to the flat directions of short windows), with the noise level of
each group of exchangeable modes (equal ``mu``) profiled out. At the uniform state all modes
form one group and the fit is the pooled fit of the symmetric theory. The interval for kappa is
the Wald interval of ``log(1 - kappa)`` from the Fisher information of the pooled likelihood.

**Not identifiable from loads:** ``a`` and ``T`` separately (only ``a_eff / T``), ``gamma`` apart
from ``eta`` (only ``eta gamma``, a rate per step), ``rho`` apart from ``a``; and any slow drive
of the scores from outside the router (the language-model gradient of a real model) adds
low-frequency load variance that loads alone cannot tell from positive feedback: on real
training, kappa from loads is an upper estimate (:mod:`.feedback` measures the feedback from
the router's logits instead). ``B_eff`` is the batch size that multinomial sampling would need
to produce the fitted noise level; it equals the batch size for the model router and is smaller
or larger for real routers (token heterogeneity, correlated tokens, top-k without replacement).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import numpy as np

__all__ = [
    "WhittleFit",
    "block_spectrum",
    "fit_whittle",
    "load_modes",
    "mode_periodogram",
    "periodogram",
    "profile_error",
    "stationary_profile",
]

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

    - ``kappa``: the stability ratio ``A mu_max`` of the slowest mode (``a_eff / (N gamma T)`` at
      the uniform state); ``kappa_lo``, ``kappa_hi``: its 95% interval.
    - ``phi``, ``theta``: the ARMA(1,1) coefficients per step of the slowest mode.
    - ``relaxation_rate``: ``-log(phi)`` per step, the decay rate of the slowest mode
      (``-eta lambda`` to first order; ``lambda_hat = -relaxation_rate / eta``).
    - ``eta_gamma``: ``1 - theta``.
    - ``sigma2``: per-expert variance of the step sampling noise (summed over the modes, over
      N); ``b_eff``: the multinomial batch with that noise, ``sum mu_j / sum sigma_j^2``.
    - ``mu_max``: the largest eigenvalue of the load Jacobian at the profile (1/N uniform).
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
    mu_max: float = math.nan

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


def _mode_spectra(e1, e2, r, w, m):
    """Block spectra (``sigma^2 = 1``) of every mode: ``1 - phi_j = e2 - (e2 - e1) r_j`` (the
    slowest mode, ``r = 1``, has ``1 - phi = e1``), shared ``1 - theta = e2``; arrays ``e1``,
    ``e2`` of one shape ``S`` give shape ``S + (modes, frequencies)``."""
    e1 = np.asarray(e1, dtype=float)[..., None]
    e2 = np.asarray(e2, dtype=float)[..., None]
    ej = e2 - (e2 - e1) * r
    G0, G1, Phi, omp = _block_terms(ej, np.broadcast_to(e2, ej.shape), m)
    cw = np.cos(w)
    g = G0[..., None] + 2.0 * G1[..., None] * (cw - Phi[..., None]) / (
        omp[..., None] ** 2 + 2.0 * Phi[..., None] * (1.0 - cw)
    )
    return np.maximum(g, 1e-300)


def _profile(e1, e2, w, per, m, r, sizes, counts):
    """Concentrated Whittle objective (per frequency and mode) and the noise level of each
    group of exchangeable modes. ``per``: the groups' mean periodograms on frequency bins
    (groups, bins) with ``counts`` frequencies a bin; ``r``: the groups' rate ratios;
    ``sizes``: modes per group."""
    g = _mode_spectra(e1, e2, r, w, m)  # (..., groups, bins)
    nf = counts.sum()
    s2 = (counts * per / g).sum(axis=-1) / nf  # (..., groups)
    obj = (sizes * (np.log(s2) + (counts * np.log(g)).sum(axis=-1) / nf)).sum(axis=-1)
    return obj / sizes.sum(), s2


def _bins(J: int, exact: int = 24, total: int = 64) -> list[slice]:
    """Frequency bins: the lowest ``exact`` Fourier frequencies one by one (the spectrum's
    shape there carries kappa), the rest in log-spaced bins, ``total`` in all."""
    if J <= total:
        return [slice(j, j + 1) for j in range(J)]
    edges = np.unique(np.round(np.geomspace(exact, J, total - exact + 1)).astype(int))
    return [slice(j, j + 1) for j in range(exact)] + [
        slice(a, b) for a, b in zip(edges[:-1], edges[1:], strict=True) if b > a
    ]


def load_modes(profile, top_k: int = 1, *, tol: float = 0.02):
    """The modes of the linearised loads at a load profile (N,): ``(mu, V, groups)`` with the
    load Jacobian's eigenvalues ``mu`` on the contrast subspace (ascending), their eigenvectors
    ``V`` (N, N - 1), and groups of modes whose eigenvalues agree within ``tol`` (relative):
    such modes are exchangeable and share a noise level. A profile within ``tol`` of uniform is
    taken as uniform (one group, the symmetric theory's modes)."""
    from ..model.heterogeneous import state_of_profile
    from ..model.topk import topk_uniform_slope

    p = np.asarray(profile, dtype=float)
    n = p.size
    p = np.clip(p, 1e-12, None)
    p = p / p.sum()
    if np.abs(p * n - 1.0).max() <= tol:
        # the uniform state in closed form: K = (alpha_k / k) (I - 11^T / N), every contrast a
        # mode (no N^2 integrals of the top-k Jacobian)
        alpha = topk_uniform_slope(n, top_k) if top_k > 1 else 1.0 / n
        _, V = np.linalg.eigh(np.eye(n) - 1.0 / n)
        common = int(np.argmax(np.abs(V.sum(axis=0))))
        V = V[:, [j for j in range(n) if j != common]]
        return np.full(n - 1, alpha / top_k), V, [np.arange(n - 1)]
    st = state_of_profile(p, top_k)
    mu, V = st.mu, st.modes
    groups, start = [], 0
    for j in range(1, mu.size + 1):
        if j == mu.size or mu[j] - mu[start] > tol * mu[-1]:
            groups.append(np.arange(start, j))
            start = j
    return mu, V, groups


def profile_error(block_means) -> np.ndarray:
    """Standard error of each expert's mean load over a window of block means (N,), from the
    scatter of 8 sub-window means (the slow fluctuations near ``kappa = 1`` included); NaN for
    fewer than 16 blocks."""
    x = np.asarray(block_means, dtype=float)
    m = x.shape[0] // 8
    if m < 2:
        return np.full(x.shape[1], np.nan)
    sub = x[: 8 * m].reshape(8, m, x.shape[1]).mean(axis=1)
    return sub.std(axis=0, ddof=1) / math.sqrt(8.0)


def stationary_profile(block_means) -> np.ndarray:
    """The load profile a window of block means sits at: their mean, or the uniform state when
    the window cannot tell them from it (every expert within four standard errors of ``1/N``,
    by the scatter of 8 sub-window means: the slow fluctuations near ``kappa = 1`` are no
    heterogeneity)."""
    x = np.asarray(block_means, dtype=float)
    n = x.shape[1]
    p = x.mean(axis=0)
    if x.shape[0] // 8 >= 2 and np.all(np.abs(p - 1.0 / n) <= 4.0 * profile_error(x) + 1e-3 / n):
        return np.full(n, 1.0 / n)
    return p


def mode_periodogram(x: np.ndarray, V: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Periodograms of the block series ``x`` (M, N) projected on the modes ``V`` (N, J):
    shape ``(J modes, frequencies)``, at ``w_j = 2 pi j / M``, ``1 <= j < M/2``."""
    x = np.asarray(x, dtype=float)
    M = x.shape[0]
    y = (x - x.mean(axis=0)) @ V
    spec = np.fft.rfft(y, axis=0)
    J = (M - 1) // 2
    per = (spec[1 : J + 1].real ** 2 + spec[1 : J + 1].imag ** 2).T / M
    return 2.0 * np.pi * np.arange(1, J + 1) / M, per


def fit_whittle(
    block_means,
    *,
    block: int = 1,
    n_experts: int | None = None,
    top_k: int = 1,
    profile=None,
    modes=None,
    grid: int = 24,
    zooms: int = 5,
) -> WhittleFit:
    """Fit the shared ``(kappa, eta gamma)`` of the load modes to block-mean loads by the pooled
    Whittle likelihood (see the module docstring).

    **Arguments:**

    - ``block_means``: shape ``(M, N)``: the mean load of each expert over ``M`` consecutive
      blocks of ``block`` steps (load fractions ``count / (k B)``).
    - ``block``: steps per block ``m``.
    - ``n_experts``: N (default: the number of columns).
    - ``top_k``: experts per token (the modes of top-k loads are those of the inclusion
      Jacobian).
    - ``profile``: the stationary load profile the router sits at (default: the mean of the
      blocks); its modes are the eigenvectors of the load Jacobian there.
    - ``modes``: ``(mu, V, groups)`` of :func:`load_modes` at ``profile``, when the caller has
      them (the top-k load Jacobian costs N^2 integrals; a monitor keeps them while the profile
      stays put); by default computed here.
    - ``grid``, ``zooms``: the search in ``(log(1 - phi), log(1 - theta))`` of the slowest mode:
      a ``grid x grid`` scan, then ``zooms`` rounds, each a 9x9 scan around the best point at a
      quarter the span.
    """
    x = np.asarray(block_means, dtype=float)
    if x.ndim != 2 or x.shape[0] < 16 or x.shape[1] < 2:
        raise ValueError("block_means: need shape (M, N) with M >= 16 blocks and N >= 2 experts")
    m = int(block)
    n = x.shape[1] if n_experts is None else int(n_experts)
    M = x.shape[0]
    if not np.all(np.isfinite(x)) or np.ptp(x, axis=0).max() <= 0.0:
        raise ValueError("block_means: constant or non-finite loads")
    if modes is None:
        modes = load_modes(x.mean(axis=0) if profile is None else profile, top_k)
    mu, V, groups = modes
    w_all, per_all = mode_periodogram(x, V)
    if not np.all(np.isfinite(per_all)) or per_all.max() <= 0.0:
        raise ValueError("block_means: constant or non-finite loads")
    # exchangeable modes share their spectrum: pool their periodograms; bin the frequencies
    bins = _bins(w_all.size)
    counts = np.array([b.stop - b.start for b in bins], dtype=float)
    w = np.array([w_all[b].mean() for b in bins])
    grouped = np.stack([per_all[idx].mean(axis=0) for idx in groups])  # (groups, J)
    per = np.stack([grouped[:, b].mean(axis=1) for b in bins], axis=1)  # (groups, bins)
    sizes = np.array([idx.size for idx in groups], dtype=float)
    r = np.array([mu[idx].mean() for idx in groups]) / mu[-1]
    r[-1] = 1.0  # the slowest group is the reference rate
    # search box: 1 - phi from ~ 1/(20 window) to 1.99 per step, 1 - theta likewise
    lo = math.log(0.05 / (M * m))
    hi = math.log(1.99)
    u = np.linspace(lo, hi, grid)
    U1, U2 = np.meshgrid(u, u, indexing="ij")
    obj, _ = _profile(np.exp(U1), np.exp(U2), w, per, m, r, sizes, counts)
    k = np.unravel_index(np.nanargmin(obj), obj.shape)
    best = np.array([U1[k], U2[k]])
    step = (hi - lo) / (grid - 1)
    for _ in range(zooms):
        g = best[:, None] + step * np.linspace(-2.0, 2.0, 9)[None, :]
        g = np.clip(g, lo, hi)
        V1, V2 = np.meshgrid(g[0], g[1], indexing="ij")
        o, _ = _profile(np.exp(V1), np.exp(V2), w, per, m, r, sizes, counts)
        k = np.unravel_index(np.nanargmin(o), o.shape)
        best = np.array([V1[k], V2[k]])
        step /= 4.0
    e1, e2 = float(np.exp(best[0])), float(np.exp(best[1]))
    _, s2 = _profile(np.array(e1), np.array(e2), w, per, m, r, sizes, counts)
    noise = float((s2 * sizes).sum())  # summed over the modes
    edge = bool(min(best - lo) < 2 * step or max(hi - best) < 2 * step)
    # Fisher information of (u1, u2) for the pooled likelihood, each group's noise level
    # profiled out: per mode and frequency, the score d log F centred over the frequencies
    h = 1e-4

    def logF(a1, a2):
        return np.log(_mode_spectra(np.exp(a1), np.exp(a2), r, w, m))  # (groups, bins)

    d1 = (logF(best[0] + h, best[1]) - logF(best[0] - h, best[1])) / (2 * h)
    d2 = (logF(best[0], best[1] + h) - logF(best[0], best[1] - h)) / (2 * h)
    nf = counts.sum()
    c1 = d1 - (counts * d1).sum(axis=1, keepdims=True) / nf
    c2 = d2 - (counts * d2).sum(axis=1, keepdims=True) / nf
    wt = sizes[:, None] * counts[None, :]
    info = np.array(
        [[(wt * c1 * c1).sum(), (wt * c1 * c2).sum()], [(wt * c1 * c2).sum(), (wt * c2 * c2).sum()]]
    )
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
        sigma2=noise / n,
        b_eff=float(mu.sum()) / noise,
        n_experts=n,
        blocks=M,
        block=m,
        at_edge=edge,
        mu_max=float(mu[-1]),
    )
