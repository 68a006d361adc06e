"""Mean-field ODEs of the adaptive router: eq. (3)/(8), r_i' = a p_i(r) - gamma r_i + b_i, and
its two-expert reduction (6), y' = a tanh(y/2T) - gamma y + h.

Time is the ODE time ``t = n eta`` (n counts router steps). The softmax is evaluated with the
log-sum-exp shift, so scores far beyond ``r/T ~ 1e3`` neither overflow nor produce NaN.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from ..params import ParameterError, RouterParams
from .field import VectorField, softmax
from .two_expert import load

__all__ = ["jacobian", "solve_meanfield", "uniform_state", "vector_field"]


def vector_field(r, params: RouterParams, b=None):
    """Right-hand side of eq. (8), ``a p(r) - gamma r + b``; ``r`` has shape ``(..., N)``.

    ``b`` defaults to ``params.b = (h/2, -h/2, 0, ..., 0)`` (see :class:`.field.VectorField`).
    """
    return VectorField.of(params, b=b)(r)


def jacobian(r, params: RouterParams):
    """Analytic Jacobian of eq. (8) at ``r`` (shape ``(N,)``): ``(a/T)(diag p - p p^T) - gamma I``.

    It is symmetric: (8) is the gradient flow of
    ``V(r) = gamma |r|^2 / 2 - a T logsumexp(r/T) - b.r``.
    """
    return VectorField.of(params).jacobian(r)


def uniform_state(params: RouterParams) -> np.ndarray:
    """The uniform equilibrium ``r_i = a / (N gamma)`` of (8) with ``b = 0``, shape ``(N,)``."""
    return np.full(params.n_experts, params.a / (params.n_experts * params.gamma))


def solve_meanfield(
    params: RouterParams,
    t,
    y0=0.0,
    *,
    h: Callable[[float], float] | None = None,
    b=None,
    rho: float = 0.0,
    terms=(),
    rtol: float = 1e-10,
    atol: float = 1e-12,
    method: str = "DOP853",
):
    """Integrate the mean-field ODE and return the load on the caller's time grid.

    **Arguments:**

    - ``params``: router parameters. For ``n_experts == 2`` the reduced equation (6) is solved.
    - ``t``: increasing ODE times (``t = n eta``), shape ``(K,)``; the state at ``t[0]`` is ``y0``.
    - ``y0``: initial score difference ``y = r1 - r2`` (two experts), or the initial score vector
      ``r0`` of shape ``(N,)`` (N experts; a scalar means the uniform state shifted by nothing).
    - ``h``: optional time-varying skew ``h(t)`` replacing ``params.h`` (two experts, or N experts
      with ``b = (h/2, -h/2, 0, ...)``).
    - ``b``: explicit drift vector for N experts (constant in time).
    - ``rho``: negative load feedback of sec. 8.7: ``r_i' = a p_i - rho (p_i - 1/N) - gamma r_i
      + b_i``. The loads then evolve as with ``a_eff = a - rho`` (the extra ``rho / N`` shifts
      every score alike), which is what is integrated; ``a_eff`` may be negative.
    - ``terms``: extra field terms (:class:`~moebif.model.field.VectorField`), e.g. the balancing
      schemes of :func:`moebif.model.balancers.field_terms`; with terms two experts are
      integrated in the full form ``r = (y0/2, -y0/2)`` (the loads are then ``p1 - p2``).

    **Returns:** for two experts ``u(t) = tanh(y(t)/2T)``, shape ``(K,)``; for N experts the loads
    ``p(r(t))``, shape ``(K, N)``.
    """
    p = params
    rho = float(rho)
    if not (np.isfinite(rho) and rho >= 0.0):
        raise ParameterError("rho", f"must be finite and >= 0, got {rho}")
    a = p.a - rho
    t = np.asarray(t, dtype=float)
    if t.ndim != 1 or t.size == 0 or not np.all(np.isfinite(t)):
        raise ParameterError("t", "must be a non-empty 1-d array of finite times")
    if t.size > 1 and np.any(np.diff(t) <= 0):
        raise ParameterError("t", "must be strictly increasing")

    terms = tuple(terms)
    if terms and p.n_experts == 2 and np.ndim(y0) == 0:
        y = float(y0)
        loads = solve_meanfield(
            p,
            t,
            np.array([0.5 * y, -0.5 * y]),
            h=h,
            b=b,
            rho=rho,
            terms=terms,
            rtol=rtol,
            atol=atol,
            method=method,
        )
        return loads[:, 0] - loads[:, 1]
    if p.n_experts == 2 and b is None and not terms:
        y0 = float(np.asarray(y0, dtype=float).reshape(-1)[0] if np.ndim(y0) else y0)
        if h is None:

            def rhs(_t, y):
                return a * np.tanh(y / (2.0 * p.T)) - p.gamma * y + p.h
        else:

            def rhs(_t, y):
                return a * np.tanh(y / (2.0 * p.T)) - p.gamma * y + h(_t)

        def jac(_t, y):
            q = y[0] / (2.0 * p.T)
            return np.array([[a / (2.0 * p.T) / np.cosh(min(abs(q), 350.0)) ** 2 - p.gamma]])

        y = _integrate(rhs, jac, t, np.array([y0]), rtol, atol, method)
        return load(y[:, 0], p.T)

    n = p.n_experts
    r0 = np.asarray(y0, dtype=float)
    r0 = np.full(n, float(r0)) if r0.ndim == 0 else r0
    if r0.shape != (n,):
        raise ParameterError("y0", f"must be a scalar or a vector of shape ({n},), got {r0.shape}")
    field = VectorField.of(p, b=b, rho=rho, terms=terms)
    e12 = np.zeros(n)
    e12[0], e12[1] = 0.5, -0.5

    def rhs_n(_t, r):
        return field(r) if h is None else field.with_drift(e12 * h(_t))(r)

    def jac_n(_t, r):
        return field.jacobian(r)

    r = _integrate(rhs_n, jac_n, t, r0, rtol, atol, method)
    return softmax(r, p.T)


def _integrate(rhs, jac, t, x0, rtol, atol, method):
    from scipy.integrate import solve_ivp  # lazy: keeps `import moebif` fast

    if t.size == 1:
        return x0[None, :].copy()
    kwargs = {"jac": jac} if method in ("Radau", "BDF", "LSODA") else {}
    sol = solve_ivp(rhs, (t[0], t[-1]), x0, method=method, t_eval=t, rtol=rtol, atol=atol, **kwargs)
    if not sol.success:
        raise RuntimeError(f"mean-field integration failed: {sol.message}")
    return sol.y.T
