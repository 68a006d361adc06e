"""What each balancing scheme does to the router's bifurcation, and how strong it must be.

The package, by concern: :mod:`.effective` (part 1, from each scheme's
:meth:`~moebif.model.schemes.Scheme.shift`), :mod:`.scan` (the one branch scan shared by the
thresholds, the strength scan and the capacity scan), :mod:`.strength` (part 2),
:mod:`.bias` (part 3), :mod:`.capacity` (parts 4-5), :mod:`.advise`.

Conventions: ``N`` experts, top-``k``, mean-field time ``t = n eta``; a gradient scheme enters the
field with ``rate = lr / eta`` (:mod:`moebif.model.balancers`). ``alpha_k`` is the uniform-state
slope of the inclusion probabilities (:func:`moebif.model.topk.topk_uniform_slope`,
``alpha_1 = 1/N``), ``A = a alpha_k / (k T)`` the contrast gain of the reinforcement, and
``lambda_c = A - gamma`` the contrast eigenvalue of the bare uniform state (eqs. 9-10, 8k).

**1. Effective parameters near balance (Remark 7.1 made concrete),** :func:`effective_parameters`.
A scheme shifts the contrast eigenvalue by ``dlambda_c`` (and the common mode by ``dlambda_0``).
The same shift is obtained from the bare router with ``a_eff = a + dlambda_c k T / alpha_k``
(``rho_eff = a - a_eff``, the load feedback of sec. 8.7), or with ``gamma_eff = gamma - dlambda_c``
on the contrasts, or with ``T_eff = a alpha_k / (k (A + dlambda_c))``. Closed forms:

- aux loss (``c, f`` of :func:`~moebif.model.balancers.aux_normalisation`):
  ``dlambda_c = -rate alpha c alpha_f / (N T^2)`` with ``alpha_f = alpha_k`` (``f`` over all
  choices) or ``1/N`` (first choice). So HF: ``rho_eff = rate alpha k / T``; Megatron / OLMo:
  ``rho_eff = rate alpha / T`` whatever ``N, k``. A load feedback, contrasts only.
- importance loss: ``dlambda_c = -2 rate w / (N T^2)``.
- z-loss (``y = 2 rate c / (N T^2)``): the common level settles where
  ``lse* = (gamma log N + a / (N T)) / (gamma + y)``; ``dlambda_c = -y lse*``,
  ``dlambda_0 = -y``. A ``gamma`` on both modes, whose contrast part saturates at
  ``gamma log N + a / (N T)``: the linear threshold becomes ``a_lin + 2 rate c (1 + log N) k /
  (N alpha_k T)`` (top-1: ``N gamma T + 2 rate c (1 + log N) / T``).
- capacity: ``a_eff = a phi``, ``phi = P(Binomial(B - 1, k/N) <= C - 1)`` (the slope of the
  served load ``E min(n_i, C)``; ``B -> inf``: 1 for ``cf > 1``). Remark 7.1's "lower ``a``".
- noisy gating / jitter: ``T_eff = T alpha_k / alpha_noise`` with the slope of the noisy
  selection (:func:`~moebif.model.balancers.noisy_uniform_slope`). Remark 7.1's "raise ``T``".
- quantile balancing with EMA ``e``: the bias low-passes the logits at ``omega = (1 - e) / eta``;
  the uniform state is stable iff ``A < gamma + omega`` (``gamma_eff = gamma + omega``; the loss
  of stability is a Hopf point, not a pitchfork). ``e = 0``: ``omega = 1/eta``, balanced.
- Sinkhorn, expert choice: the loads do not depend on the scores (``a_eff = 0``).

**2. Minimal strength that rules collapse out,** :func:`balanced_thresholds`,
:func:`minimal_strength`. The field with the scheme's terms is permutation-equivariant, so its
"m winners at gap d" states stay invariant: ``r = c 1 + T d 1_W``. Along each branch, the two
equations (winner, loser) are linear in ``a``; for shift-invariant terms
``a(d) = (gamma T d - dG0(d)) / dX(d)`` (``X``: the part of the field proportional to ``a``,
``G0`` the rest of the terms, ``d`` = winner minus loser), for the z-loss the common level ``c``
is solved for too. Stability is read from the eigenvalues of the full Jacobian there (built from
the two-level inclusion probabilities of :func:`~moebif.model.topk.two_level_inclusion`).
``collapse_a(strength)`` is the smallest ``a`` on a stable part of any branch (branches
``m = 1 .. N-1`` for ``N <= 16``, else ``m <= k + 1`` and ``m >= N - k - 1``, as
:func:`~moebif.model.topk.topk_collapse_threshold`); at zero strength it equals
``thresholds(N, k).collapse`` (``a_SN``). The minimal strength is the smallest one with
``collapse_a(strength) > a`` (capacity: the *largest* factor ``cf``). It is compared in
:func:`advise` with the two naive rules: the *linear* rule (strength for ``a_eff < a_lin``) and
the *rho* rule (strength for ``a_eff < a_SN``, as if the scheme were the linear feedback of
sec. 8.7). For the aux loss under SGD the gradient ``p_j (f_j - f.p)`` vanishes on a saturated
branch (like ``N e^{-d}``), so ``collapse_a`` grows only logarithmically in the coefficient and
the minimal coefficient grows exponentially with ``a / (gamma T)``.

**3. The loss-free bias as a relay integral controller,** :class:`BiasTheory`. Two experts,
``y = r1 - r2``, bias gap ``b = beta1 - beta2``, selection ``s = y + b``; the reinforcement
follows the selection, the forgetting acts on the scores:
``y' = a tanh(s / 2T) - gamma y + h``, ``b' = -U sign(s)``, ``U = 2 u / eta`` (each step moves
``b`` by ``2u``). Hence ``s' = a tanh(s / 2T) - gamma s + gamma b + h - U sign(s)``; linearised,

    s' = lambda s + (h + gamma b) - U sign(s),    lambda = a / (2T) - gamma.

So the issue's form ``s' = lambda s + h - u sign(s)`` holds with ``u -> U`` and ``h -> h + gamma
b``: the bias enters the forgetting term too, and that integral part helps. Solving the linear
system from ``b = 0``: ``s`` returns to 0 iff ``s0 < U (1 + gamma / lambda) / lambda =
U A / lambda^2`` (the **first-return radius**, not ``U / lambda``), and a step of skew ``h``
applied at balance is absorbed iff ``h < U (1 + gamma / lambda) = U A / lambda`` (not ``U``).
A slowly rising skew is absorbed whatever its size: in the sliding state ``y = h / gamma``,
``b = -h / gamma`` and the equivalent control ``h + gamma b`` is 0. A first return is not a
recovery: the bias has wound up by then, the gap overshoots, and below a critical rate the loop
locks into a relay cycle of alternating collapses; it returns to balance and stays only from
inside :meth:`BiasTheory.recovery_radius` (:mod:`moebif.model.bias_relay`). No excursion at
all from any state needs
``U > max_d [a (pi_w - pi_l) / k - gamma T d]`` (the largest drift on the one-winner branch; the
same for N experts and top-k with ``U = 2 u / eta`` on the winner-loser gap). **Chattering**: at
balance, ``sign`` of a noisy count. When ``u sqrt(B) / T`` is small, the batch noise dithers the
relay into a linear integral gain ``kappa = sqrt(2B / pi) alpha_k / (T sqrt(q (1 - q)))``
(``q = k/N``) and the fluctuations follow a linear AR(1) system (:meth:`BiasTheory.chattering`,
discrete Lyapunov equation): their size grows like ``sqrt(u)`` (not ``u``), and for
``lambda > 0`` the loop holds balance only if ``u`` exceeds :meth:`BiasTheory.hold_rate`
(about ``eta lambda / kappa``). When ``u kappa >= 1`` the relay is deterministic and ``s``
cycles between ``0`` and ``+-2u`` (standard deviation ``sqrt(2) u``; ``u`` when
``lambda < 0``). The prediction "amplitude ~ u" holds only in that regime, with the factor
``sqrt(2)``.

**4. Capacity**: dropped fraction of assignments ``N E[(n_i - C)+] / (k B)`` with
``n_i ~ Binomial(B, pi_i)`` (exact marginal: tokens are independent), :func:`dropped_fraction`;
on a collapsed branch, ``sum_i (pi_i / k - cf / N)+``. Capacity bounds the *served* imbalance
at ``cf / N`` but keeps the selection's: a collapsed router keeps dropping.

**5. Balanced by construction** (quantile, Sinkhorn, expert choice): no collapsed state at any
``a``. Their cost: the selection ignores the scores, so a genuine preference is removed from the
loads (``skew_response = 0``), and expert choice leaves a fraction ``(1 - C/B)^N`` of tokens with
no expert (column-wise choice on iid token scores; :func:`expert_choice_unrouted`).

**6. The closed-loop balancer,** :class:`ControlTheory` (:mod:`.control`): the gain-scheduled PI
selection bias of :mod:`moebif.model.control_law`. Its fixed points have uniform loads unless
the integral is clipped, so a collapsed fixed point needs a bias gap beyond the integral's
authority; its linear map at balance has no switching (no relay cycle); its cost is the
chattering of that AR(1) map and the whole of a genuine skew's load response (absorbed).
"""

from __future__ import annotations

from .advise import advise as advise
from .bias import BiasTheory as BiasTheory
from .bias import Chattering as Chattering
from .capacity import dropped_fraction as dropped_fraction
from .capacity import expert_choice_unrouted as expert_choice_unrouted
from .control import ControlChattering as ControlChattering
from .control import ControlTheory as ControlTheory
from .effective import EffectiveParameters as EffectiveParameters
from .effective import effective_parameters as effective_parameters
from .effective import linear_threshold as linear_threshold
from .strength import STRENGTH_SCHEMES as STRENGTH_SCHEMES
from .strength import BalancedThresholds as BalancedThresholds
from .strength import balanced_thresholds as balanced_thresholds
from .strength import branch_drift_max as branch_drift_max
from .strength import hysteresis_width as hysteresis_width
from .strength import linear_noisy as linear_noisy
from .strength import minimal_strength as minimal_strength
from .strength import noisy_collapse_threshold as noisy_collapse_threshold
from .strength import scheme_spec as scheme_spec

__all__ = [
    "BalancedThresholds",
    "BiasTheory",
    "Chattering",
    "ControlChattering",
    "ControlTheory",
    "EffectiveParameters",
    "STRENGTH_SCHEMES",
    "advise",
    "balanced_thresholds",
    "branch_drift_max",
    "dropped_fraction",
    "effective_parameters",
    "expert_choice_unrouted",
    "hysteresis_width",
    "linear_noisy",
    "linear_threshold",
    "minimal_strength",
    "noisy_collapse_threshold",
    "scheme_spec",
]
