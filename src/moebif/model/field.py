"""The mean-field vector field of the N-expert router, eq. (8) and its top-k form (8k):

    r' = F(r) = (a / k) pi(r) - gamma r + b,

with ``pi`` the softmax loads ``softmax(r / T)`` (top-1, eq. 1 / 8) or the top-k inclusion
probabilities (:func:`moebif.model.inclusion.inclusion_probabilities`, which sum to ``k``). Its
Jacobian is ``(a / k) d pi / d r - gamma I``; for the softmax ``d pi / d r = (diag p - p p^T) / T``.
Both are symmetric: (8) and (8k) are gradient flows.

:class:`VectorField` is the one implementation used by the mean-field solver
(:func:`moebif.model.meanfield.solve_meanfield`), the continuation (:mod:`.continuation`), the
N-expert and top-k theory. The softmax is evaluated with the log-sum-exp shift, so scores far
beyond ``r / T ~ 1e3`` neither overflow nor produce NaN.

**Extension point: field terms.** ``VectorField(..., terms=(t1, t2, ...))`` adds
``sum_j t_j(r)`` to the right-hand side and ``sum_j d t_j / d r`` to the Jacobian. A term is any
object with ``drift(state) -> (N,)`` and ``jacobian(state) -> (N, N)``, where ``state`` is the
:class:`FieldState` at ``r`` (scores, parameters, and the softmax / inclusion probabilities and
their Jacobians, computed once and shared by all terms). Optional attributes: ``shift_invariant``
(the term does not change when every score is shifted alike; default ``True``) and ``name``.
The balancing schemes of :mod:`moebif.model.balancers` are such terms.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np

from ..params import ParameterError, RouterParams
from .inclusion import inclusion_jacobian, inclusion_probabilities

__all__ = ["FieldState", "VectorField", "drift_vector", "softmax", "topk_vector_field"]


def softmax(r, T: float):
    """``p_i = exp(r_i/T) / sum_j exp(r_j/T)`` along the last axis, eq. (1)/(8), overflow-free."""
    z = np.asarray(r, dtype=float) / T
    z = z - np.max(z, axis=-1, keepdims=True)
    e = np.exp(z)
    return e / np.sum(e, axis=-1, keepdims=True)


def drift_vector(params: RouterParams, b=None) -> np.ndarray:
    """The external drift ``b`` of eq. (8), shape ``(N,)``: ``params.b = (h/2, -h/2, 0, ...)``
    by default, else ``b`` checked for shape and finiteness (:class:`ParameterError` naming
    ``b``)."""
    if b is None:
        return params.b
    b = np.asarray(b, dtype=float)
    if b.shape != (params.n_experts,):
        raise ParameterError(
            "b",
            f"must have shape ({params.n_experts},) for n_experts={params.n_experts}, "
            f"got {b.shape}",
        )
    if not np.all(np.isfinite(b)):
        raise ParameterError("b", "must be finite")
    return b


class FieldState:
    """What the field and its terms need at one score vector ``r`` (shape ``(N,)``), computed
    lazily and shared: ``p`` (softmax of ``r / T``), ``dp`` (its Jacobian
    ``(diag p - p p^T) / T``), ``lse`` (``logsumexp(r / T)``), ``pi`` (top-k inclusion
    probabilities, ``pi = p`` for ``k = 1``) and ``dpi`` (``d pi / d r``).

    ``pi``, ``dpi``, ``p`` and ``dp`` may be passed in when they are known (the two-level states
    of :func:`moebif.model.topk.two_level_inclusion`), so a branch scan never evaluates the
    top-k integrals twice. ``a`` may be overridden (terms linear in ``a`` are split by evaluating
    them at two values of ``a``)."""

    def __init__(
        self, field: VectorField, r, *, pi=None, dpi=None, p=None, dp=None, a: float | None = None
    ):
        self.field = field
        self.r = np.asarray(r, dtype=float)
        self.a = field.a if a is None else float(a)
        self.gamma = field.gamma
        self.T = field.T
        self.k = field.top_k
        self.n = self.r.size
        self._pi = pi
        self._dpi = dpi
        self._p = p
        self._dp = dp

    @property
    def z(self) -> np.ndarray:
        """The logits ``r / T``."""
        return self.r / self.T

    @property
    def p(self) -> np.ndarray:
        if self._p is None:
            self._p = softmax(self.r, self.T)
        return self._p

    @property
    def dp(self) -> np.ndarray:
        if self._dp is None:
            p = self.p
            self._dp = (np.diag(p) - np.outer(p, p)) / self.T
        return self._dp

    @property
    def lse(self) -> float:
        z = self.z
        zmax = float(np.max(z))
        return zmax + float(np.log(np.sum(np.exp(z - zmax))))

    @property
    def pi(self) -> np.ndarray:
        if self._pi is None:
            self._pi = self.p if self.k == 1 else inclusion_probabilities(self.r, self.T, self.k)
        return self._pi

    @property
    def dpi(self) -> np.ndarray:
        if self._dpi is None:
            self._dpi = self.dp if self.k == 1 else inclusion_jacobian(self.r, self.T, self.k)
        return self._dpi

    def with_a(self, a: float) -> FieldState:
        """The same state (sharing the cached probabilities) with another ``a``."""
        return FieldState(
            self.field, self.r, pi=self._pi, dpi=self._dpi, p=self._p, dp=self._dp, a=a
        )


@dataclass(frozen=True, eq=False)
class VectorField:
    """``F(r) = (a / k) pi(r) - gamma r + b``, eq. (8) (``top_k = 1``) or (8k).

    **Fields:** ``a`` (may be negative: an effective feedback ``a - rho``), ``gamma``, ``T``,
    ``b`` (shape ``(N,)``), ``top_k``, ``terms`` (extra field terms, see the module docstring;
    empty by default). Build it from parameters with :meth:`of`.
    """

    a: float
    gamma: float
    T: float
    b: np.ndarray
    top_k: int = 1
    terms: tuple = ()

    @classmethod
    def of(
        cls, params: RouterParams, *, top_k: int = 1, b=None, rho: float = 0.0, terms=()
    ) -> VectorField:
        """The field of ``params`` with drift ``b`` (default ``params.b``) and the negative load
        feedback ``rho`` of sec. 8.7 folded into ``a - rho`` (the extra ``rho / N`` shifts every
        score alike and leaves the loads unchanged), plus the field ``terms``."""
        return cls(
            params.a - rho,
            params.gamma,
            params.T,
            drift_vector(params, b),
            int(top_k),
            tuple(terms),
        )

    def with_terms(self, terms) -> VectorField:
        """The same field with other extra terms."""
        return replace(self, terms=tuple(terms))

    def state(self, r, **known) -> FieldState:
        """The :class:`FieldState` at ``r`` (``known``: ``pi``, ``dpi``, ``a``)."""
        return FieldState(self, r, **known)

    @property
    def n_experts(self) -> int:
        return int(self.b.size)

    def with_drift(self, b) -> VectorField:
        """The same field with another drift vector ``b``."""
        return replace(self, b=np.asarray(b, dtype=float))

    def inclusion(self, r) -> np.ndarray:
        """``pi(r)``: the softmax loads (``top_k = 1``; any leading axes) or the top-k inclusion
        probabilities (shape ``(N,)``)."""
        if self.top_k == 1:
            return softmax(r, self.T)
        return inclusion_probabilities(r, self.T, self.top_k)

    def inclusion_jacobian(self, r) -> np.ndarray:
        """``d pi / d r``, shape ``(N, N)``: ``(diag p - p p^T) / T`` for the softmax."""
        if self.top_k == 1:
            p = softmax(np.asarray(r, dtype=float), self.T)
            return (np.diag(p) - np.outer(p, p)) / self.T
        return inclusion_jacobian(r, self.T, self.top_k)

    def __call__(self, r) -> np.ndarray:
        """``F(r)``; ``r`` has shape ``(N,)`` (softmax: also ``(..., N)``)."""
        r = np.asarray(r, dtype=float)
        if self.terms:
            if r.ndim > 1:
                return np.apply_along_axis(self, -1, r)
            st = self.state(r)
            out = self.a / self.top_k * st.pi - self.gamma * r + self.b
            for term in self.terms:
                out = out + term.drift(st)
            return out
        return self.a / self.top_k * self.inclusion(r) - self.gamma * r + self.b

    def jacobian(self, r) -> np.ndarray:
        """``F_r = (a / k) d pi / d r - gamma I`` at ``r`` (shape ``(N,)``), symmetric; plus the
        terms' Jacobians (which need not be symmetric)."""
        r = np.asarray(r, dtype=float)
        if self.terms:
            return self.jacobian_at(self.state(r))
        return self.a / self.top_k * self.inclusion_jacobian(r) - self.gamma * np.eye(r.size)

    def drift_at(self, st: FieldState) -> np.ndarray:
        """``F`` at a prepared :class:`FieldState` (with its ``a``)."""
        out = st.a / self.top_k * st.pi - self.gamma * st.r + self.b
        for term in self.terms:
            out = out + term.drift(st)
        return out

    def jacobian_at(self, st: FieldState) -> np.ndarray:
        """``F_r`` at a prepared :class:`FieldState` (with its ``a``)."""
        out = st.a / self.top_k * st.dpi - self.gamma * np.eye(st.n)
        for term in self.terms:
            out = out + term.jacobian(st)
        return out

    def jacobian_derivative(self, r, v) -> np.ndarray:
        """``d/dr_j [F_r v]_i`` (softmax router only), shape ``(N, N)``:
        ``(a/T^2) [p_i (d_ij - p_j)(v_i - s) - p_i p_j (v_j - s)]`` with ``s = p . v``."""
        if self.top_k != 1 or self.terms:
            raise NotImplementedError(
                "jacobian_derivative: only for the softmax router (top_k=1) without extra terms"
            )
        p = softmax(np.asarray(r, dtype=float), self.T)
        s = p @ v
        A = np.diag(p) - np.outer(p, p)
        return self.a / self.T**2 * (A * (v - s)[:, None] - np.outer(p, p * (v - s)))


def topk_vector_field(r, params: RouterParams, k: int, b=None) -> np.ndarray:
    """Right-hand side of (8k): ``(a / k) pi(r) - gamma r + b`` (``b`` defaults to ``params.b``)."""
    return VectorField.of(params, top_k=k, b=b)(r)
