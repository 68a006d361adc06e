"""The load-profile rules of the collapse monitor, against a long-term reference profile.

A router on real data does not balance its experts: it settles at its own heterogeneous profile
``p`` (loads summing to one, shape ``(N,)``), and a collapse is a move away from it. The monitor
keeps two references:

- a short-term one that follows slow moves of the profile (in :class:`LayerMonitor`), against
  which a fast excursion (a rise of ``excursion`` within a few hundred steps) is judged;
- the long-term reference of this module, :class:`FrozenReference`: the first profile that is
  stationary over two consecutive spans of ``span`` steps, then frozen. A drive that concentrates
  the loads however slowly is judged against it (the short-term reference would follow such a
  drive and never see it rise), and so are dead experts and recoveries.

:class:`DeadExperts`: an expert that carried at least ``alive_share / N`` of the load in the
frozen reference (rare experts of a heterogeneous profile are not judged) and whose filtered load
stays below ``fraction`` (a tenth) of its reference share for a dwell. Experts whose reference
share would bring fewer than ``MIN_EXPECTED`` tokens over a dwell are not judged either: with so
few tokens an empty dwell is sampling noise, not a dead expert.

The alarm kinds are named once, in :class:`moebif.monitor.kinds.AlarmKind`; this module keeps
their old names (:data:`COLLAPSE_IN_PROGRESS`, ...).
"""

from __future__ import annotations

import math

import numpy as np

from .kinds import ACTIVE_KINDS, AlarmKind
from .metrics import max_load_excess

__all__ = [
    "ACTIVE_KINDS",
    "APPROACHING",
    "COLLAPSED",
    "COLLAPSE_IN_PROGRESS",
    "DEAD_EXPERTS",
    "METASTABLE",
    "RECOVERED",
    "DeadExperts",
    "FrozenReference",
    "PROFILE_RULES",
    "total_variation",
]

# the alarm kinds, named once in .kinds (AlarmKind), under their old names here
APPROACHING = AlarmKind.APPROACHING
METASTABLE = AlarmKind.METASTABLE
COLLAPSE_IN_PROGRESS = AlarmKind.COLLAPSE_IN_PROGRESS
COLLAPSED = AlarmKind.COLLAPSED
DEAD_EXPERTS = AlarmKind.DEAD_EXPERTS
RECOVERED = AlarmKind.RECOVERED

WARM_LEVEL = 0.6  # a profile this concentrated (max-load excess) is never taken as a reference
MIN_EXPECTED = 20.0  # tokens a judged expert gets over a dwell at its reference share


def total_variation(p, q) -> float:
    """Total variation distance between two load profiles."""
    return 0.5 * float(np.abs(np.asarray(p) - np.asarray(q)).sum())


class FrozenReference:
    """The long-term reference profile: block means of the loads are averaged over spans of
    ``span`` steps; the first span whose mean agrees with the previous span's (max-load excess
    within ``tol_excess``, total variation within ``tol_tv``) and whose excess is below
    :data:`WARM_LEVEL` is frozen for good.

    Two spans of 256 steps or more (4 dwells) are needed because a random-init router on real
    text moves for hundreds of steps; a profile stationary over one dwell (the short-term
    reference's test) can still be on its way. The tolerances are a fifth of the ``excursion``
    level the drift is alarmed at: a profile frozen while still creeping towards concentration
    would eat into the margin of healthy specialisation that the drift rule leaves.

    **Arguments:** ``n_experts``, ``top_k``; ``tol_excess`` (default 0.05), ``tol_tv`` (0.1).
    """

    def __init__(self, n_experts: int, top_k: int, *, tol_excess=0.05, tol_tv=0.1):
        self.n_experts, self.top_k = int(n_experts), int(top_k)
        self.tol_excess, self.tol_tv = float(tol_excess), float(tol_tv)
        self.loads = None  # (N,) frozen profile, None until settled
        self.step = -1  # step at which it was frozen
        self.excess = math.nan
        self._sum = np.zeros(self.n_experts)
        self._steps = 0
        self._prev = None  # mean of the previous span

    @property
    def frozen(self) -> bool:
        return self.loads is not None

    def push(self, bm, block: int, step: int, span: int) -> bool:
        """Add one block mean of ``block`` steps ending at ``step``; True when this block froze
        the reference."""
        if self.frozen:
            return False
        self._sum += np.asarray(bm, dtype=float) * block
        self._steps += block
        if self._steps < span:
            return False
        mean = self._sum / self._steps
        self._sum = np.zeros(self.n_experts)
        self._steps = 0
        prev, self._prev = self._prev, mean
        if prev is None:
            return False
        ex, ex_prev = self.excess_of(mean), self.excess_of(prev)
        if abs(ex - ex_prev) <= self.tol_excess and total_variation(mean, prev) <= self.tol_tv:
            if ex < WARM_LEVEL:
                self.loads, self.step, self.excess = mean.copy(), int(step), ex
                return True
        return False

    def excess_of(self, loads) -> float:
        return float(max_load_excess(float(np.max(loads)), self.n_experts, self.top_k))

    def rise(self, loads) -> float:
        """Max-load excess of ``loads`` minus the reference's (NaN before it is frozen)."""
        return self.excess_of(loads) - self.excess if self.frozen else math.nan

    def alive(self, alive_share: float = 0.25) -> np.ndarray:
        """Experts that carried at least ``alive_share / N`` of the reference load (bool, (N,))."""
        if not self.frozen:
            return np.zeros(self.n_experts, dtype=bool)
        return self.loads >= alive_share / self.n_experts

    def to_dict(self) -> dict | None:
        if not self.frozen:
            return None
        return {
            "step": self.step,
            "loads": self.loads.tolist(),
            "max_load_excess": self.excess,
            "alive": int(self.alive().sum()),
        }


class DeadExperts:
    """Experts of the frozen reference that lost their load (module docstring).

    **Arguments:** ``n_experts``; ``fraction`` (0.1): dead below this fraction of the reference
    share; ``alive_share`` (0.25): judged experts carried at least ``alive_share / N``.

    :meth:`update` counts, per expert, the steps in a row its filtered load has been below
    ``fraction`` of its reference share; an expert is dead once that reaches the dwell.
    :meth:`revived` is the recovery's test: every judged expert back above twice ``fraction``
    of its share in the mean over the dwell (a margin so that an expert hovering at the
    boundary is not dead and back every other block).
    """

    def __init__(self, n_experts: int, *, fraction: float = 0.1, alive_share: float = 0.25):
        self.n_experts = int(n_experts)
        self.fraction, self.alive_share = float(fraction), float(alive_share)
        self._below = np.zeros(self.n_experts, dtype=np.int64)  # steps in a row below

    def judged(self, ref: FrozenReference, tokens_per_step: float, dwell: int) -> np.ndarray:
        """Experts the rule judges (bool, (N,)): alive in the reference, and expected to receive
        at least :data:`MIN_EXPECTED` tokens over a dwell at their reference share."""
        if not ref.frozen:
            return np.zeros(self.n_experts, dtype=bool)
        enough = ref.loads * tokens_per_step * dwell >= MIN_EXPECTED
        return ref.alive(self.alive_share) & enough

    def update(self, filtered, ref: FrozenReference, block: int, tokens_per_step: float, dwell):
        """One block: ``filtered`` loads (N,). Returns the dead experts (bool, (N,))."""
        judged = self.judged(ref, tokens_per_step, dwell)
        if not judged.any():
            self._below[:] = 0
            return judged
        low = judged & (np.asarray(filtered) < self.fraction * ref.loads)
        self._below = np.where(low, self._below + block, 0)
        return self._below >= dwell

    def revived(self, mean, ref: FrozenReference, tokens_per_step: float, dwell: int) -> bool:
        """Every judged expert above ``2 fraction`` of its reference share in ``mean``."""
        judged = self.judged(ref, tokens_per_step, dwell)
        return not bool(np.any(judged & (np.asarray(mean) < 2.0 * self.fraction * ref.loads)))


# the rule objects a LayerMonitor checkpoints (its state_dict encodes them by these names)
PROFILE_RULES = {"FrozenReference": FrozenReference, "DeadExperts": DeadExperts}
