"""The balancing schemes of real MoE stacks: their formulas, and their terms in the vector field.

**How a scheme enters the score model.** The router scores ``r_i`` are the mean logits times
``T`` (logits ``z = r / T``, router probabilities ``p = softmax(z)``, the ``P_i`` of the stacks).
One router step (one optimizer step, one global batch of ``B`` tokens) is

    r <- r + eta (a l - rho (l - 1/N) - gamma r + b) + Delta,

with ``l`` the served loads and ``Delta`` the balancer's own step. For a *gradient* scheme with
loss ``L(r)`` (aux loss, z-loss, importance loss) ``Delta = -lr dL/dr`` under SGD, so in ODE time
``t = n eta`` it adds ``-(lr / eta) dL/dr`` to the field (``rate = lr / eta``; ``lr = eta`` when
the same optimizer drives everything, the default). Under Adam ``Delta = -lr m_hat / (sqrt(v_hat)
+ eps)``: the step is normalised by the gradient's RMS, so (i) when the task gradient dominates
Adam's second moment ``v`` (RMS ``sigma``), the scheme acts as SGD with ``lr / sigma`` (the
coefficient keeps its meaning only relative to ``sigma``); (ii) when the balancer's own gradient
dominates ``v``, the step tends to ``lr sign(dL/dr)``: a relay of amplitude ``lr`` whatever the
coefficient, which does *not* vanish where the softmax saturates (SGD's aux gradient does, like
``e^{-d}``). :mod:`moebif.sim.balanced_router` simulates both; the theory of both limits is in
:mod:`moebif.model.balancer_theory`.

*Selection* schemes (loss-free bias, quantile balancing, Sinkhorn, expert choice, capacity) do not
touch the scores; they change which experts the tokens are sent to, hence the loads that
reinforce the experts.

**The schemes, as the stacks implement them** (token arrays: ``probs``, ``logits``, ``routing_map``
of shape ``(tokens, N)``; the functions below reproduce them line by line and are what the tests
check the mean-field terms against):

- Switch / GShard aux loss, :func:`aux_loss`. ``L = c sum_i f_i P_i`` with ``P_i`` the mean router
  probability (gradient only through ``P``) and ``f_i`` the token fraction:

  * ``hf``: HF ``load_balancing_loss_func`` (``transformers/models/mixtral/modeling_mixtral.py``,
    also Qwen2-MoE, Qwen3-MoE; transformers 5.24): ``c = N``, ``f`` counts all ``k`` choices (sums
    to ``k``), and all layers' tokens are pooled (``f`` and ``P`` are means over layers).
  * ``megatron``: ``switch_load_balancing_loss_func`` (``megatron/core/transformer/moe/
    moe_utils.py``): ``c = N / k`` (the factor ``E / (k T^2)`` on ``sum_i (sum_t p_ti) n_i``).
    ``aux_loss`` counts ``f`` on the micro-batch, ``seq_aux_loss`` per sequence,
    ``global_aux_loss`` over the data-parallel and accumulation steps (arXiv 2501.11873).
  * ``olmo``: OLMo-core ``load_balancing_loss`` (``src/olmo_core/nn/moe/loss.py``): ``c = N / k``,
    and ``lb_loss_weight / n_layers`` when ``scale_loss_by_num_layers`` (``nn/moe/moe.py``).
  * ``deepspeed``: ``deepspeed/moe/sharded_moe.py``: ``top1gating`` ``N sum me ce``;
    ``top2gating`` ``N^2 mean(me ce)`` with ``ce`` of the *first* choice only; ``topkgating``
    ``N^2 / k mean(me ce)`` (all ``k`` choices).

- Router z-loss (ST-MoE), :func:`z_loss`: ``c mean_t logsumexp(z_t)^2`` (Megatron ``z_loss_func``,
  OLMo-core ``router_z_loss``, HF SwitchTransformers ``router_z_loss_func``); gradient
  ``(2c / T) lse(z) p_j`` per score.
- Importance loss, :func:`importance_loss`: ``w CV(P)^2 = w N sum_i (P_i - 1/N)^2`` (Shazeer et
  al. 2017 with full-softmax gates; the paper's ``L_lb`` of sec. 8.2 is it divided by ``N``).
- Loss-free bias (DeepSeek-V3, arXiv 2408.15664), :func:`bias_update`: selection is top-k of the
  scores plus ``beta``, gate weights use the unbiased scores; once a global batch
  ``beta_i += u sign(mean(n) - n_i)``: uncentred in Megatron ``get_updated_expert_bias``
  (``moe_utils.py``), minus its mean in torchtitan ``_update_expert_bias``
  (``torchtitan/components/optimizer/optimizer.py``).
- Quantile balancing, :func:`quantile_update`: Megatron ``qb_dual_update`` (``moe_utils.py``) and
  ``_update_router_qb_beta`` (``megatron/core/distributed/finalize_model_grads.py``): selection is
  top-k of ``scores - beta`` with the *previous* global batch's ``beta``; the new ``beta`` is the
  column quantile that gives each expert ``m k / N`` tokens, EMA-blended
  (``moe_router_quantile_balancing_ema``, default 0) and re-centred.
- Capacity factor, :func:`expert_capacity`, :func:`drop_over_capacity`: ``C = ceil(cf k T / N)``
  (Megatron ``get_capacity`` on ``T k`` assignments, DeepSpeed ``_capacity`` with ``cf k``); the
  assignments beyond ``C`` are dropped by router probability (Megatron ``probs``, DeepSpeed
  ``topkgating``), by position (Megatron ``position``; DeepSpeed ``top2gating``, first choices
  first) or at random (DeepSpeed ``top1gating`` ``use_rts``).
- Jitter and noisy gating, :func:`noisy_logits`: Switch's multiplicative input jitter
  ``x U(1 - eps, 1 + eps)`` (HF ``modeling_switch_transformers.py`` ``router_jitter_noise``,
  DeepSpeed ``multiplicative_jitter``); Shazeer's noisy top-k ``z + sigma N(0, 1)``.
- Sinkhorn, :func:`sinkhorn`: Megatron ``sinkhorn`` (``moe_utils.py``) on ``exp(logits)``, top-k of
  the normalised matrix for the selection only, no gradient (``router.py``,
  ``sinkhorn_load_balancing``).
- Expert choice (Zhou et al. 2022), :func:`expert_choice`: each expert takes its top-``C`` tokens.

**Mean-field terms** (the :class:`~moebif.model.field.VectorField` extension point): at the
field's state, with ``f`` the expected token fraction (``f = pi``, the inclusion probabilities,
summing to ``k``; ``f = p`` for DeepSpeed's first-choice ``ce``),

- :class:`AuxLossTerm`: ``-(rate c / T) p_j (f_j - f . p)``;
- :class:`ZLossTerm`: ``-(2 rate c / T) lse(r / T) p_j``;
- :class:`ImportanceTerm`: ``-(2 rate w N) (dp/dr) (p - 1/N)``;
- :class:`CapacityTerm`: the reinforcement ``(a / k) pi`` replaced by ``a E[min(n_i, C)] / (k B)``
  (``n_i ~ Binomial(B, pi_i)``; ``B -> inf``: ``a min(pi_i / k, cf / N)``);
- :class:`NoisyGatingTerm`: ``(a / k)`` times the inclusion probabilities of the noisy selection;
- :class:`SelectionOffsetTerm`: a static selection bias ``beta`` (the loss-free bias, frozen).

Every term comes with its Jacobian. In the score model all tokens of a batch share the logits,
so ``P`` is the same in every micro-batch or sequence: the aux gradient is linear in ``f`` and
the micro-batch, per-sequence and global-batch losses give *identical* steps (the Qwen effect
needs token heterogeneity across micro-batches, which this model does not have).
"""

from __future__ import annotations

import functools
import math
from dataclasses import asdict, dataclass, fields, replace

import numpy as np

from ..params import ParameterError, check_finite
from .field import FieldState
from .schemes import SCHEMES, lookup, scheme_instances

__all__ = [
    "AUX_VARIANTS",
    "DROP_POLICIES",
    "SCHEMES",
    "AuxLossTerm",
    "BalancerSpec",
    "CapacityTerm",
    "ImportanceTerm",
    "NoisyGatingTerm",
    "SelectionOffsetTerm",
    "ZLossTerm",
    "aux_loss",
    "aux_normalisation",
    "bias_update",
    "drop_over_capacity",
    "expert_capacity",
    "expert_choice",
    "field_terms",
    "importance_loss",
    "noise_distribution",
    "noisy_inclusion",
    "noisy_logits",
    "noisy_two_level",
    "noisy_uniform_slope",
    "parse_balancers",
    "quantile_update",
    "sinkhorn",
    "z_loss",
]

AUX_VARIANTS = ("hf", "megatron", "olmo", "deepspeed")
DROP_POLICIES = ("probs", "position", "random")

# ----------------------------------------------------------------------------------------------
# the stacks' formulas on token arrays (numpy)


def aux_normalisation(variant: str, n_experts: int, top_k: int, layers: int = 1):
    """``(c_over_alpha, first_choice)``: the aux loss is ``alpha * c_over_alpha * sum_i f_i P_i``
    per layer in the score model, with ``f`` over all ``k`` choices (summing to ``k``) or over the
    first choice only (``first_choice``, DeepSpeed top-2).

    ``layers``: HF pools all layers' tokens into one loss, so with the other ``L - 1`` layers
    balanced one layer's gradient carries ``1 / L^2`` (``f`` and ``P`` are means over layers);
    OLMo-core divides the weight by ``L``; Megatron and DeepSpeed have one loss per layer.
    """
    n, k = int(n_experts), int(top_k)
    if variant == "hf":
        return n / layers**2, False
    if variant == "megatron":
        return n / k, False
    if variant == "olmo":
        return n / k / layers, False
    if variant == "deepspeed":
        if k == 1:
            return float(n), False
        if k == 2:
            return float(n), True  # N^2 mean(me ce1) = N sum me ce1, ce of the first choice
        return n / k, False  # N^2 / k mean(me ce)
    raise ParameterError(
        "aux_variant", f"must be one of {', '.join(AUX_VARIANTS)}, got {variant!r}"
    )


def aux_loss(
    probs, routing_map, *, variant: str = "hf", top_k: int = 1, first_choice=None
) -> float:
    """The Switch aux loss of one batch with coefficient 1, as ``variant`` computes it.

    **Arguments:** ``probs`` router probabilities (softmax over all experts), ``routing_map`` 0/1
    selections, both ``(tokens, N)``; ``first_choice``: ``(tokens,)`` index of each token's
    first choice (DeepSpeed top-2 only). HF (``modeling_mixtral.py``):
    ``N * sum(mean(map) * mean(probs))``; Megatron (``switch_load_balancing_loss_func``):
    ``sum(probs.sum(0) * map.sum(0)) * N / (k T^2)``; OLMo-core ``load_balancing_loss``
    (``local_batch``): ``N / k * dot(map.sum(0), probs.mean(0)) / T``; DeepSpeed: see
    :func:`aux_normalisation`."""
    probs = np.asarray(probs, dtype=float)
    mp = np.asarray(routing_map, dtype=float)
    t, n = probs.shape
    k = int(top_k)
    if variant == "hf":
        return float(np.sum(mp.mean(axis=0) * probs.mean(axis=0)) * n)
    if variant == "megatron":
        return float(np.sum(probs.sum(axis=0) * mp.sum(axis=0)) * n / (k * t * t))
    if variant == "olmo":
        return float(n / k * np.dot(mp.sum(axis=0), probs.mean(axis=0)) / t)
    if variant == "deepspeed":
        me = probs.mean(axis=0)
        if k == 1:
            return float(np.sum(me * mp.mean(axis=0)) * n)
        if k == 2:
            first = np.zeros_like(probs)
            first[np.arange(t), np.asarray(first_choice)] = 1.0
            return float(np.mean(me * first.mean(axis=0)) * n * n)
        return float(np.mean(me * mp.mean(axis=0)) * n * n / k)
    raise ParameterError(
        "aux_variant", f"must be one of {', '.join(AUX_VARIANTS)}, got {variant!r}"
    )


def z_loss(logits) -> float:
    """Router z-loss with coefficient 1: ``mean_t logsumexp(z_t)^2`` (Megatron ``z_loss_func``)."""
    z = np.asarray(logits, dtype=float)
    zmax = z.max(axis=1, keepdims=True)
    lse = zmax[:, 0] + np.log(np.exp(z - zmax).sum(axis=1))
    return float(np.mean(lse**2))


def importance_loss(probs) -> float:
    """``CV(P)^2 = N sum_i (P_i - 1/N)^2`` of the mean router probability ``P`` (weight 1)."""
    P = np.asarray(probs, dtype=float).mean(axis=0)
    n = P.size
    return float(n * np.sum((P - 1.0 / n) ** 2))


def bias_update(bias, tokens_per_expert, u: float, *, centred: bool = False) -> np.ndarray:
    """One loss-free bias update: ``beta + u sign(mean(n) - n)`` (Megatron
    ``get_updated_expert_bias``); ``centred``: minus the update's mean (torchtitan)."""
    n = np.asarray(tokens_per_expert, dtype=float)
    delta = u * np.sign(n.mean() - n)
    if centred:
        delta = delta - delta.mean()
    return np.asarray(bias, dtype=float) + delta


def quantile_update(scores, k: int, beta):
    """Megatron ``qb_dual_update``: ``(indices, beta_local)``. Tokens pick the top-k of
    ``scores - beta``; ``beta_local`` is the ``(m k / N + 1)``-th largest of ``scores - alpha`` in
    each column, ``alpha`` the ``(k + 1)``-th largest of ``scores - beta`` in each row."""
    s = np.asarray(scores, dtype=float)
    m, n = s.shape
    if (m * k) % n:
        raise ParameterError("batch", f"quantile balancing needs tokens * k divisible by N = {n}")
    sb = s - np.asarray(beta, dtype=float)
    order = np.argsort(-sb, axis=1, kind="stable")
    indices = order[:, :k]
    alpha = np.take_along_axis(sb, order[:, k : k + 1], axis=1)
    col_target = m * k // n
    beta_local = -np.sort(-(s - alpha), axis=0)[col_target]
    return indices, beta_local


def quantile_beta(beta, beta_local, ema: float) -> np.ndarray:
    """``_update_router_qb_beta``: ``ema beta + (1 - ema) beta_local``, re-centred."""
    new = ema * np.asarray(beta, dtype=float) + (1.0 - ema) * np.asarray(beta_local, dtype=float)
    return new - new.mean()


def sinkhorn(cost, tol: float = 1e-4) -> np.ndarray:
    """Megatron ``sinkhorn``: alternate row and column scalings of ``exp(cost)`` until the mean
    change of the column scaling is below ``tol``."""
    c = np.exp(np.asarray(cost, dtype=float))
    d0 = np.ones(c.shape[0])
    d1 = np.ones(c.shape[1])
    eps = 1e-8
    err = 1e9
    d1_old = d1
    while err > tol:
        d0 = (1.0 / d0.size) / (np.sum(d1 * c, axis=1) + eps)
        d1 = (1.0 / d1.size) / (np.sum(d0[:, None] * c, axis=0) + eps)
        err = float(np.mean(np.abs(d1_old - d1)))
        d1_old = d1
    return d1 * c * d0[:, None]


def expert_capacity(tokens: int, n_experts: int, top_k: int, cf: float) -> int:
    """``C = ceil(cf k T / N)`` tokens per expert (Megatron ``get_capacity(T k, N, cf)``)."""
    return int(math.ceil(tokens * top_k / n_experts * cf - 1e-12))


def drop_over_capacity(probs, routing_map, capacity: int, policy: str = "probs", rng=None):
    """The routing map after dropping the assignments beyond ``capacity`` in each expert:
    ``probs``: keep the ``C`` largest router probabilities (Megatron
    ``apply_router_token_dropping``);
    ``position``: keep the first ``C`` tokens in order; ``random``: keep ``C`` tokens chosen at
    random (DeepSpeed ``use_rts``; needs ``rng``)."""
    mp = np.asarray(routing_map, dtype=bool)
    t, n = mp.shape
    if capacity >= t:
        return mp.copy()
    if policy == "probs":
        key = np.where(mp, np.asarray(probs, dtype=float), -1.0)
    elif policy == "position":
        key = np.where(mp, -np.arange(t, dtype=float)[:, None] * np.ones((1, n)), -np.inf)
    elif policy == "random":
        key = np.where(mp, rng.random((t, n)), -1.0)
    else:
        raise ParameterError("capacity_policy", f"must be one of {DROP_POLICIES}, got {policy!r}")
    keep = np.zeros_like(mp)
    top = np.argsort(-key, axis=0, kind="stable")[:capacity]
    np.put_along_axis(keep, top, True, axis=0)
    return mp & keep


def expert_choice(scores, capacity: int) -> np.ndarray:
    """Expert choice routing map: each expert (column) takes its ``capacity`` best tokens."""
    s = np.asarray(scores, dtype=float)
    keep = np.zeros(s.shape, dtype=bool)
    top = np.argsort(-s, axis=0, kind="stable")[: min(capacity, s.shape[0])]
    np.put_along_axis(keep, top, True, axis=0)
    return keep


def noisy_logits(logits, rng, *, sigma: float = 0.0, jitter: float = 0.0) -> np.ndarray:
    """Per-token logits of the noisy schemes: ``z (1 + jitter U(-1, 1))`` then ``+ sigma N(0, 1)``.
    (Switch multiplies the router *input* by ``U(1 - eps, 1 + eps)``; for a router input of one
    effective direction per expert that is a factor on each logit, the reading used here.)"""
    z = np.asarray(logits, dtype=float)
    if jitter:
        z = z * rng.uniform(1.0 - jitter, 1.0 + jitter, z.shape)
    if sigma:
        z = z + sigma * rng.standard_normal(z.shape)
    return z


# ----------------------------------------------------------------------------------------------
# the spec of a combination of schemes

# The schemes themselves (parse, label, terms, shift, kind, kernel mode, cost): one class each in
# :mod:`moebif.model.schemes`, and its registry SCHEMES (name -> class) is the only list of names.


@dataclass(frozen=True)
class BalancerSpec:
    """A combination of balancing schemes (0 / ``False`` switches a scheme off).

    **Fields:** ``aux`` (coefficient), ``aux_variant`` (``hf``, ``megatron``, ``olmo``,
    ``deepspeed``), ``aux_layers`` (MoE layers sharing the loss, see :func:`aux_normalisation`),
    ``zloss``, ``importance``; ``bias`` (rate ``u`` per step, in score units: ``beta`` is added to
    ``r``, so a bias ``b`` on the logits is ``b T``), ``bias_centred``; ``quantile`` (on/off),
    ``quantile_ema``; ``capacity`` (factor ``cf``; 0: no capacity), ``capacity_policy``;
    ``noise`` (``sigma``), ``jitter`` (``eps``); ``sinkhorn``; ``expert_choice`` (``cf``);
    ``optimizer`` (``sgd`` or ``adam``) and ``lr`` (step size of the gradient schemes; ``None``:
    the router's ``eta``), ``adam_beta1``, ``adam_beta2``, ``adam_eps``, ``adam_floor`` (RMS of the
    task gradient on the scores, added to Adam's second moment: the part of ``v`` that the
    balancer does not make); ``control`` (integral gain ``k_i`` of the closed-loop law of
    :mod:`moebif.model.control_law`, logits per step per unit relative load error; 0: off),
    ``control_kp``, ``control_beta``, ``control_safety``, ``control_bias_max``,
    ``control_gain_max`` (the other :class:`~moebif.model.control_law.ControlGains`) and
    ``control_margin`` (``theory``: the gain schedule reads the open-loop margin of the model's
    theory; ``none``: fixed gains), see :mod:`moebif.model.schemes.control`.

    Each field belongs to one scheme of :data:`moebif.model.schemes.SCHEMES` (its ``fields``) or
    to the optimizer; :attr:`schemes` lists the schemes a spec switches on.

    At most one selection override (``bias``, ``quantile``, ``sinkhorn``, ``expert_choice``,
    ``control``);
    ``noise`` and ``jitter`` combine with none or with ``bias``; ``capacity`` not with
    ``expert_choice``. Invalid values raise :class:`ParameterError` naming ``balancer.<field>``.
    """

    aux: float = 0.0
    aux_variant: str = "hf"
    aux_layers: int = 1
    zloss: float = 0.0
    importance: float = 0.0
    bias: float = 0.0
    bias_centred: bool = False
    quantile: bool = False
    quantile_ema: float = 0.0
    capacity: float = 0.0
    capacity_policy: str = "probs"
    noise: float = 0.0
    jitter: float = 0.0
    sinkhorn: bool = False
    expert_choice: float = 0.0
    optimizer: str = "sgd"
    lr: float | None = None
    adam_beta1: float = 0.9
    adam_beta2: float = 0.999
    adam_eps: float = 1e-8
    adam_floor: float = 0.0
    control: float = 0.0
    control_kp: float = 0.1
    control_beta: float = 0.2
    control_safety: float = 2.0
    control_bias_max: float = 16.0
    control_gain_max: float = 20.0
    control_margin: str = "theory"

    def __post_init__(self):
        for f in fields(self):
            v = getattr(self, f.name)
            if f.name in ("aux_variant", "capacity_policy", "optimizer", "control_margin"):
                continue
            if isinstance(v, bool) or v is None:
                continue
            x = check_finite(f"balancer.{f.name}", v)
            if x < 0:
                raise ParameterError(f"balancer.{f.name}", f"must be >= 0, got {x:g}")
        if self.aux_variant not in AUX_VARIANTS:
            raise ParameterError(
                "balancer.aux_variant", f"must be one of {', '.join(AUX_VARIANTS)}"
            )
        if self.capacity_policy not in DROP_POLICIES:
            raise ParameterError(
                "balancer.capacity_policy", f"must be one of {', '.join(DROP_POLICIES)}"
            )
        if self.optimizer not in ("sgd", "adam"):
            raise ParameterError("balancer.optimizer", "must be sgd or adam")
        if int(self.aux_layers) != self.aux_layers or self.aux_layers < 1:
            raise ParameterError("balancer.aux_layers", "must be an integer >= 1")
        if self.lr is not None and not self.lr > 0:
            raise ParameterError("balancer.lr", "must be > 0")
        if not self.quantile_ema < 1.0:
            raise ParameterError("balancer.quantile_ema", "must be < 1")
        if self.jitter >= 1.0:
            raise ParameterError("balancer.jitter", "must be < 1")
        for name in ("adam_beta1", "adam_beta2"):
            if not getattr(self, name) < 1.0:
                raise ParameterError(f"balancer.{name}", "must be < 1")
        if not 0.0 < self.control_beta <= 1.0:
            raise ParameterError("balancer.control_beta", "must be in (0, 1]")
        if not self.control_gain_max >= 1.0:
            raise ParameterError("balancer.control_gain_max", "must be >= 1")
        if self.control_margin not in ("theory", "none"):
            raise ParameterError("balancer.control_margin", "must be theory or none")
        if 0.0 < self.capacity < 1e-9 or 0.0 < self.expert_choice < 1e-9:
            raise ParameterError("balancer.capacity", "must be 0 (off) or > 0")
        sel = [
            n
            for n, on in (
                ("bias", self.bias > 0),
                ("quantile", self.quantile),
                ("sinkhorn", self.sinkhorn),
                ("expert_choice", self.expert_choice > 0),
                ("control", self.control > 0),
            )
            if on
        ]
        if len(sel) > 1:
            raise ParameterError(
                "balancer", f"at most one selection override, got {' and '.join(sel)}"
            )
        if (self.noise > 0 or self.jitter > 0) and sel and sel[0] != "bias":
            raise ParameterError("balancer.noise", f"noisy gating does not combine with {sel[0]}")
        if self.capacity > 0 and self.expert_choice > 0:
            raise ParameterError("balancer.capacity", "does not combine with expert choice")

    # -- descriptions ---------------------------------------------------------------------------

    @property
    def schemes(self) -> tuple:
        """The registered schemes (:mod:`moebif.model.schemes`) this spec switches on, in
        registry order."""
        return tuple(s for s in scheme_instances() if s.active(self))

    @property
    def selection(self) -> str:
        """The selection mode: ``softmax``, ``bias``, ``quantile``, ``sinkhorn``,
        ``expert_choice`` (``noisy`` when noise or jitter is on and nothing overrides it): the
        ``kernel_mode`` of the active scheme that overrides the selection, else of any active
        scheme with a mode, else ``softmax``."""
        on = [s for s in self.schemes if s.kernel_mode is not None]
        for s in on:
            if s.overrides:
                return s.kernel_mode[0]
        return on[0].kernel_mode[0] if on else "softmax"

    @property
    def has_gradient(self) -> bool:
        return any(s.kind == "gradient" for s in self.schemes)

    @property
    def is_null(self) -> bool:
        return not self.schemes

    def scaled(self, factor: float) -> BalancerSpec:
        """Every strength multiplied by ``factor`` (coefficients, ``u``, ``sigma``, ``eps``,
        capacity factors); switches and the optimizer unchanged."""
        return replace(
            self,
            aux=self.aux * factor,
            zloss=self.zloss * factor,
            importance=self.importance * factor,
            bias=self.bias * factor,
            capacity=self.capacity * factor,
            noise=self.noise * factor,
            jitter=min(self.jitter * factor, 0.999),
            expert_choice=self.expert_choice * factor,
            control=self.control * factor,
            control_kp=self.control_kp * factor,
        )

    def to_dict(self) -> dict:
        return asdict(self)

    def label(self) -> str:
        """The spec in the ``--balancer`` syntax (:func:`parse_balancers`)."""
        parts = [item for scheme in self.schemes for item in scheme.label(self)]
        if self.optimizer == "adam":
            parts.append("adam" + (f":floor={self.adam_floor:g}" if self.adam_floor else ""))
        if self.lr is not None:
            parts.append(f"lr:{self.lr:g}")
        return ",".join(parts) or "none"


def parse_balancers(text: str) -> BalancerSpec:
    """Parse ``"aux:1e-2,zloss:1e-3,bias:1e-3,capacity:1.25"`` into a :class:`BalancerSpec`.

    Items (comma-separated) ``name[:value][:key=value...]``; names: ``aux`` (HF normalisation),
    ``aux-megatron``, ``aux-olmo``, ``aux-deepspeed`` (option ``layers=L``), ``zloss``,
    ``importance``, ``bias`` (Megatron, uncentred), ``bias-centred`` (torchtitan), ``quantile``
    (value: EMA, default 0), ``capacity`` (option ``policy=probs|position|random``), ``noisy``,
    ``jitter``, ``sinkhorn``, ``expert-choice``; ``sgd`` / ``adam`` (option ``floor=F``) and
    ``lr:LR`` set the optimizer of the gradient schemes. ``none`` or an empty string: no balancer.
    Raises :class:`ParameterError` naming ``balancer`` with the offending item.
    """
    kw: dict = {}
    text = (text or "").strip()
    if text in ("", "none"):
        return BalancerSpec()
    for item in text.split(","):
        item = item.strip()
        if not item:
            continue
        bits = item.split(":")
        name, rest = bits[0].strip().lower(), [b.strip() for b in bits[1:]]
        value = None
        opts = {}
        for b in rest:
            if "=" in b:
                key, val = b.split("=", 1)
                opts[key.strip()] = val.strip()
            elif value is None:
                try:
                    value = float(b)
                except ValueError:
                    raise ParameterError(
                        "balancer", f"{item!r}: value {b!r} is not a number"
                    ) from None
            else:
                raise ParameterError("balancer", f"{item!r}: more than one value")

        def need(v=value, item=item):
            if v is None:
                raise ParameterError("balancer", f"{item!r}: needs a value, e.g. {item}:1e-2")
            return v

        def known(*allowed, opts=opts, item=item):
            bad = set(opts) - set(allowed)
            if bad:
                raise ParameterError("balancer", f"{item!r}: unknown option {sorted(bad)[0]!r}")

        found = lookup(name)
        if found is not None:
            key, scheme = found
            known(*scheme.options)
            kw.update(scheme.parse(key, value, opts, item))
        elif name in ("sgd", "adam"):
            known("floor")
            kw["optimizer"] = name
            if "floor" in opts:
                try:
                    kw["adam_floor"] = float(opts["floor"])
                except ValueError:
                    raise ParameterError("balancer", f"{item!r}: floor must be a number") from None
        elif name == "lr":
            known()
            kw["lr"] = need()
        else:
            raise ParameterError(
                "balancer", f"unknown scheme {name!r} (known: {', '.join(SCHEMES)}, sgd, adam, lr)"
            )
    return BalancerSpec(**kw)


# ----------------------------------------------------------------------------------------------
# mean-field terms


@dataclass(frozen=True)
class AuxLossTerm:
    """``-(rate c / T) p_j (f_j - f . p)``: minus ``rate`` times the gradient of
    ``alpha c sum_i f_i p_i`` through ``p`` (``f`` held), with ``c, f`` of :func:`aux_normalisation`
    (``f = pi`` over all choices, or ``f = p`` for DeepSpeed's first-choice ``ce``)."""

    alpha: float
    variant: str = "hf"
    layers: int = 1
    rate: float = 1.0
    shift_invariant = True
    name = "aux"

    def _coef(self, st: FieldState):
        c, first = aux_normalisation(self.variant, st.n, st.k, self.layers)
        return self.rate * self.alpha * c / st.T, first

    def drift(self, st: FieldState) -> np.ndarray:
        kap, first = self._coef(st)
        p = st.p
        f = p if first else st.pi
        return -kap * p * (f - f @ p)

    def jacobian(self, st: FieldState) -> np.ndarray:
        kap, first = self._coef(st)
        p, jp = st.p, st.dp
        f, jf = (p, jp) if first else (st.pi, st.dpi)
        s = f @ p
        ds = jf.T @ p + jp.T @ f
        return -kap * ((f - s)[:, None] * jp + p[:, None] * (jf - ds[None, :]))


@dataclass(frozen=True)
class ZLossTerm:
    """``-(2 rate c / T) lse(r / T) p_j``: minus ``rate`` times the gradient of
    ``c lse(z)^2`` (all tokens share the logits). Not shift-invariant: it pulls the common level
    of the logits to ``lse = 0``."""

    coef: float
    rate: float = 1.0
    shift_invariant = False
    name = "zloss"

    def drift(self, st: FieldState) -> np.ndarray:
        return -2.0 * self.rate * self.coef / st.T * st.lse * st.p

    def jacobian(self, st: FieldState) -> np.ndarray:
        p = st.p
        return -2.0 * self.rate * self.coef / st.T * (np.outer(p, p) / st.T + st.lse * st.dp)


@dataclass(frozen=True)
class ImportanceTerm:
    """``-rate (dp/dr)^T grad_p [w N sum (p - 1/N)^2] = -2 rate w N (dp/dr) (p - 1/N)``."""

    weight: float
    rate: float = 1.0
    shift_invariant = True
    name = "importance"

    def drift(self, st: FieldState) -> np.ndarray:
        return -2.0 * self.rate * self.weight * st.n * (st.dp @ (st.p - 1.0 / st.n))

    def jacobian(self, st: FieldState) -> np.ndarray:
        p, T = st.p, st.T
        v = p - 1.0 / st.n
        s = p @ v
        A = np.diag(p) - np.outer(p, p)
        hess_v = (A * (v - s)[:, None] - np.outer(p, p * (v - s))) / T**2
        return -2.0 * self.rate * self.weight * st.n * (st.dp @ st.dp + hess_v)


def _served(pi_over_k, cf: float, n: int, k: int, batch):
    """Expected served load and its derivative in ``pi / k`` (capacity ``C``)."""
    x = np.asarray(pi_over_k, dtype=float)
    if batch is None:
        cap = cf / n
        return np.minimum(x, cap), (x < cap).astype(float)
    from scipy.stats import binom

    B = int(batch)
    C = expert_capacity(B, n, k, cf)
    pi = np.clip(x * k, 0.0, 1.0)
    if C >= B:
        return x.copy(), np.ones_like(x)
    j = np.arange(C)[:, None]
    # E[min(X, C)] = sum_{j < C} P(X > j); d/dpi = B P(Bin(B - 1, pi) <= C - 1)
    served = binom.sf(j, B, pi[None, :]).sum(axis=0) / (k * B)
    slope = binom.cdf(C - 1, B - 1, pi)
    return served, slope


@dataclass(frozen=True)
class CapacityTerm:
    """The reinforcement ``(a / k) pi`` replaced by ``a E[min(n_i, C)] / (k B)``,
    ``n_i ~ Binomial(B, pi_i)``, ``C = ceil(cf k B / N)``; ``batch = None``: the limit
    ``a min(pi_i / k, cf / N)``. Linear in ``a`` (written as a correction to the field)."""

    cf: float
    batch: int | None = None
    shift_invariant = True
    name = "capacity"

    def drift(self, st: FieldState) -> np.ndarray:
        served, _ = _served(st.pi / st.k, self.cf, st.n, st.k, self.batch)
        return st.a * (served - st.pi / st.k)

    def jacobian(self, st: FieldState) -> np.ndarray:
        _, slope = _served(st.pi / st.k, self.cf, st.n, st.k, self.batch)
        return st.a / st.k * (slope - 1.0)[:, None] * st.dpi


@dataclass(frozen=True)
class SelectionOffsetTerm:
    """A frozen selection bias: the reinforcement follows ``pi(r + beta)`` instead of ``pi(r)``
    (the loss-free bias at fixed ``beta``, in score units)."""

    beta: tuple
    shift_invariant = True
    name = "bias"

    def _biased(self, st: FieldState) -> FieldState:
        return FieldState(st.field, st.r + np.asarray(self.beta, dtype=float), a=st.a)

    def drift(self, st: FieldState) -> np.ndarray:
        return st.a / st.k * (self._biased(st).pi - st.pi)

    def jacobian(self, st: FieldState) -> np.ndarray:
        return st.a / st.k * (self._biased(st).dpi - st.dpi)


# -- noisy gating: inclusion probabilities of Gumbel + noise ----------------------------------

_GH = np.polynomial.hermite.hermgauss(48)
_GL = np.polynomial.legendre.leggauss(32)


def _gumbel_cdf(x):
    return np.exp(-np.exp(-np.clip(x, -50.0, None)))


def _gumbel_pdf(x):
    xc = np.clip(x, -50.0, None)
    return np.exp(-xc - np.exp(-xc))


def noise_distribution(sigma: float = 0.0, jitter: float = 0.0):
    """``(pdf, cdf)`` of the per-token logit noise ``X = G (1 + jitter U) + sigma Z`` (``G``
    standard Gumbel: the token heterogeneity of the score model; ``U ~ U(-1, 1)``,
    ``Z ~ N(0, 1)``), vectorised over ``x``, by Gauss-Legendre / Gauss-Hermite quadrature."""
    if sigma < 0 or jitter < 0 or jitter >= 1:
        raise ParameterError("noise", "needs sigma >= 0 and 0 <= jitter < 1")
    tu, wu = _GL
    th, wh = _GH

    def parts(x, fn, dens):
        x = np.asarray(x, dtype=float)
        out = np.zeros_like(x)
        us = [(0.0, 2.0)] if jitter == 0 else list(zip(jitter * tu, wu, strict=True))
        hs = [(0.0, math.sqrt(math.pi))] if sigma == 0 else list(zip(th, wh, strict=True))
        for u, w1 in us:
            scale = 1.0 + u
            for t, w2 in hs:
                y = (x - math.sqrt(2.0) * sigma * t) / scale
                out += w1 * w2 * (fn(y) / scale if dens else fn(y))
        return out / (2.0 * math.sqrt(math.pi))

    return (lambda x: parts(x, _gumbel_pdf, True)), (lambda x: parts(x, _gumbel_cdf, False))


@functools.lru_cache(maxsize=64)
def _noise_table(sigma: float, jitter: float):
    """The noise law tabulated on a fine grid (pdf, cdf), for fast interpolation."""
    pdf, cdf = noise_distribution(sigma, jitter)
    spread = 1.0 + 6.0 * sigma
    x = np.linspace(-8.0 * spread - 6.0, 60.0 * (1.0 + jitter) + 8.0 * sigma, 8001)
    return x, pdf(x), np.clip(cdf(x), 0.0, 1.0)


def _noise_fast(sigma: float, jitter: float):
    """``(pdf, cdf)`` of :func:`noise_distribution` by linear interpolation in a table."""
    x, f, F = _noise_table(float(sigma), float(jitter))
    return (lambda y: np.interp(y, x, f, left=0.0, right=0.0)), (
        lambda y: np.interp(y, x, F, left=0.0, right=1.0)
    )


def _pb_below(q: np.ndarray, kmax: int) -> np.ndarray:
    """``P(sum of Bernoulli(q_j) = c)`` for ``c < kmax``; ``q`` of shape ``(M, X)``."""
    out = np.zeros((kmax, q.shape[1]))
    out[0] = 1.0
    for row in q:
        nxt = out * (1.0 - row)
        nxt[1:] += out[:-1] * row
        out = nxt
    return out


def noisy_inclusion(z, k: int, *, sigma: float = 0.0, jitter: float = 0.0, points: int = 1600):
    """``pi_i``: probability that expert ``i`` is among the ``k`` largest of ``z_j + X_j``, the
    logits ``z`` (shape ``(N,)``) plus iid noise of :func:`noise_distribution`.

    ``pi_i = int f(x - z_i) P(#{j != i: z_j + X_j > x} <= k - 1) dx`` on a grid (trapezoid);
    with ``sigma = jitter = 0`` this is the softmax / Gumbel-top-k inclusion of
    :mod:`moebif.model.inclusion`, which the tests check. Jitter multiplies the *centred* logits
    by ``1 + jitter U``: here the noise law is taken at the centred logits (exact at the uniform
    state, the case the theory uses)."""
    z = np.asarray(z, dtype=float)
    n = z.size
    pdf, cdf = _noise_fast(sigma, jitter)
    spread = 1.0 + 6.0 * sigma
    lo = z.min() - 6.0 * spread - 4.0
    hi = z.max() + 40.0 * (1.0 + jitter) + 6.0 * sigma
    x = np.linspace(lo, hi, points)
    F = cdf(x[None, :] - z[:, None])  # (N, X)
    f = pdf(x[None, :] - z[:, None])
    q = 1.0 - F
    pi = np.empty(n)
    for i in range(n):
        others = np.delete(q, i, axis=0)
        below = _pb_below(others, k).sum(axis=0)
        g = f[i] * below
        pi[i] = np.trapezoid(g, x)
    # the exact probabilities sum to k: remove the quadrature's common error
    return np.clip(pi * (k / pi.sum()), 0.0, 1.0)


def noisy_two_level(
    n_experts: int,
    winners: int,
    k: int,
    d: float,
    *,
    sigma: float = 0.0,
    jitter: float = 0.0,
    points: int = 2400,
) -> tuple[float, float]:
    """``(pi_w, pi_l)`` of the noisy selection at the two-level state (``m`` winners at logit
    gap ``d``): ``pi_w = int f(x - d) P(Bin(m - 1, 1 - F(x - d)) + Bin(N - m, 1 - F(x)) <= k - 1)
    dx`` and likewise for a loser."""
    n, m, k = int(n_experts), int(winners), int(k)
    pdf, cdf = _noise_fast(sigma, jitter)
    spread = 1.0 + 6.0 * sigma
    x = np.linspace(-6.0 * spread - 4.0, d + 40.0 * (1.0 + jitter) + 6.0 * sigma, points)
    qw = np.clip(1.0 - cdf(x - d), 0.0, 1.0)
    ql = np.clip(1.0 - cdf(x), 0.0, 1.0)

    def pmf(nn, q):
        # P(Bin(nn, q) = c) for c < k, shape (k, X)
        out = np.zeros((k, q.size))
        for c in range(min(k, nn + 1)):
            out[c] = math.comb(nn, c) * q**c * (1.0 - q) ** (nn - c)
        return out

    def below(nw, nl):
        pw = pmf(nw, qw)
        pl = pmf(nl, ql)
        tot = np.zeros(x.size)
        for i in range(k):
            for j in range(k - i):
                tot += pw[i] * pl[j]
        return tot

    pi_w = float(np.trapezoid(pdf(x - d) * below(m - 1, n - m), x))
    pi_l = float(np.trapezoid(pdf(x) * below(m, n - m - 1), x))
    scale = k / (m * pi_w + (n - m) * pi_l)  # the exact values sum to k
    return pi_w * scale, pi_l * scale


def noisy_uniform_slope(n_experts: int, k: int, *, sigma: float = 0.0, jitter: float = 0.0):
    """``alpha``: ``d pi / d z = alpha (I - 11^T / N)`` at the uniform state for the noisy
    selection, from ``d pi_i / d z_i = int f^2 (N - 1) C(N-2, k-1) F^{N-1-k} (1 - F)^{k-1} dx``
    (``alpha = (N / (N - 1)) d pi_i / d z_i``; Gumbel noise gives ``topk_uniform_slope``)."""
    n, k = int(n_experts), int(k)
    pdf, cdf = _noise_fast(sigma, jitter)
    spread = 1.0 + 6.0 * sigma
    x = np.linspace(-6.0 * spread - 4.0, 40.0 * (1.0 + jitter) + 6.0 * sigma, 6000)
    F, f = cdf(x), pdf(x)
    comb = math.comb(n - 2, k - 1)
    with np.errstate(divide="ignore", invalid="ignore"):
        g = f * f * (n - 1) * comb * F ** (n - 1 - k) * (1.0 - F) ** (k - 1)
    jii = float(np.trapezoid(np.nan_to_num(g), x))
    return n / (n - 1) * jii


@dataclass(frozen=True)
class NoisyGatingTerm:
    """The reinforcement follows the noisy selection: correction ``(a / k)(pi_noisy - pi)``
    (Jacobian by central differences of :func:`noisy_inclusion`)."""

    sigma: float = 0.0
    jitter: float = 0.0
    shift_invariant = True
    name = "noisy"

    def _pi(self, st: FieldState, r) -> np.ndarray:
        zc = (np.asarray(r) - np.mean(r)) / st.T
        return noisy_inclusion(zc, st.k, sigma=self.sigma, jitter=self.jitter)

    def drift(self, st: FieldState) -> np.ndarray:
        return st.a / st.k * (self._pi(st, st.r) - st.pi)

    def jacobian(self, st: FieldState) -> np.ndarray:
        h = 1e-4 * st.T
        cols = []
        for i in range(st.n):
            e = np.zeros(st.n)
            e[i] = h
            cols.append((self._pi(st, st.r + e) - self._pi(st, st.r - e)) / (2 * h))
        return st.a / st.k * (np.array(cols).T - st.dpi)


def field_terms(spec: BalancerSpec, *, rate: float = 1.0, batch: int | None = None) -> tuple:
    """The mean-field terms of the smooth parts of ``spec`` (gradient schemes with SGD at
    ``rate = lr / eta``, capacity, noisy gating). Selection overrides (bias, quantile, Sinkhorn,
    expert choice) have no static term; Adam has none either (see the module docstring)."""
    out = []
    for scheme in spec.schemes:
        out.extend(scheme.terms(spec, rate=rate, batch=batch))
    return tuple(out)
