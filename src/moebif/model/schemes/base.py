"""The interface every balancing scheme implements (the rules for a new scheme).

A scheme is one class, in one file of this package, registered by name in
:data:`moebif.model.schemes.SCHEMES`. Every layer reads that registry: the spec parser
(:func:`moebif.model.balancers.parse_balancers`), the spec's label and mean-field terms
(:func:`moebif.model.balancers.field_terms`), the theory (:mod:`moebif.model.balancer_theory`),
the simulator's kernel mode (:mod:`moebif.sim.balanced_router`), the explorer
(:mod:`moebif.explore.balancers`) and the CLI help (``moebif simulate --balancer``).

A scheme's options live in the fields of :class:`~moebif.model.balancers.BalancerSpec` that it
declares in :attr:`Scheme.fields` (each field belongs to exactly one scheme, or to the
optimizer). Adding a scheme: write a subclass of :class:`Scheme` in a new file that implements
every abstract method and sets the class attributes, add its fields to ``BalancerSpec``, and add
the class to ``SCHEMES`` in ``__init__.py``. ``tests/model/test_schemes.py`` checks that every
registered scheme implements the whole interface.

Modelled on scipy's ``integrate/_ivp`` (``base.OdeSolver``, one file per method, ``METHODS``)
and diffrax's ``AbstractTerm``.
"""

from __future__ import annotations

import abc
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar, Literal, NamedTuple

if TYPE_CHECKING:
    from ..balancers import BalancerSpec

__all__ = ["KINDS", "ExplorerView", "Kind", "Scheme", "Shift", "ShiftContext"]

Kind = Literal["gradient", "selection", "capacity"]
KINDS: tuple[str, ...] = ("gradient", "selection", "capacity")


@dataclass(frozen=True)
class ShiftContext:
    """The uniform state a scheme's shift is taken at: ``n`` experts, top-``k``, ``a``,
    ``gamma``, ``T``, the gradient rate ``lr / eta``, ``batch`` (``None``: ``B -> inf``), the
    router step ``eta`` (``None``: unknown), ``alpha_k`` (uniform-state slope of the inclusion
    probabilities) and ``A = a alpha_k / (k T)`` (the contrast gain of the reinforcement)."""

    n: int
    k: int
    a: float
    gamma: float
    T: float
    rate: float
    batch: int | None
    eta: float | None
    alpha_k: float
    A: float


@dataclass(frozen=True)
class Shift:
    """A scheme's shift of the uniform state's eigenvalues: ``contrast`` (``dlambda_c``),
    ``common`` (``dlambda_0``), ``acts_on`` (the parameter it moves: ``rho``, ``gamma``, ``a``,
    ``T``) and ``oscillatory`` (its loss of stability is a Hopf point)."""

    contrast: float
    common: float = 0.0
    acts_on: str = "none"
    oscillatory: bool = False


class ExplorerView(NamedTuple):
    """How the explorer (:mod:`moebif.explore.balancers`) shows a scheme that acts near balance
    as a load feedback ``rho = rho_of(strength, params)`` (``rho_text``: that formula)."""

    name: str
    label: str
    strength_label: str
    strength_max: float
    rho_of: Any
    rho_text: str


class Scheme(abc.ABC):
    """One balancing scheme of a real MoE stack.

    **Class attributes (all required):**

    - ``name``: the canonical registry name.
    - ``names``: every registry name the class answers to, with its one-line help (the
      ``--balancer`` names; ``aux-megatron`` is the aux loss in Megatron's normalisation).
    - ``aliases``: further spellings accepted by the parser, mapped to a name of ``names``.
    - ``options``: the ``key=value`` options its items accept.
    - ``kind``: ``gradient`` (a loss whose gradient moves the scores), ``selection`` (changes
      which experts the tokens are sent to) or ``capacity`` (changes how many are served).
    - ``fields``: the :class:`~moebif.model.balancers.BalancerSpec` fields holding its options.
    - ``kernel_mode``: the selection mode of the simulator's kernel (``None``: the scheme keeps
      the softmax / top-k selection), see :data:`moebif.sim._kernels.balancers`.
    - ``overrides``: the selection no longer follows the scores (at most one such scheme in a
      spec).
    - ``strength_names``: the names with a minimal-strength theory
      (:func:`moebif.model.balancer_theory.minimal_strength`).
    - ``by_construction``: balanced at every ``a`` (on/off, no strength to choose).

    **Methods** (``spec`` is the whole :class:`BalancerSpec`; a method reads only this
    scheme's ``fields``):

    - :meth:`parse`, :meth:`label`, :meth:`active`: the ``--balancer`` syntax.
    - :meth:`terms`: its mean-field terms (the :class:`~moebif.model.field.VectorField`
      extension point).
    - :meth:`shift`: its shift of the effective parameters at the uniform state.
    - :meth:`kernel`: the slots it fills in the simulator's float vector.
    - :meth:`selection_slope`, :meth:`served_slope`, :meth:`dropped`: its cost.
    """

    name: ClassVar[str]
    names: ClassVar[dict[str, str]]
    aliases: ClassVar[dict[str, str]] = {}
    options: ClassVar[tuple[str, ...]] = ()
    kind: ClassVar[Kind]
    fields: ClassVar[tuple[str, ...]]
    kernel_mode: ClassVar[tuple[str, int] | None] = None
    overrides: ClassVar[bool] = False
    strength_names: ClassVar[tuple[str, ...]] = ()
    by_construction: ClassVar[bool] = False

    # -- the --balancer syntax ---------------------------------------------------------------

    @abc.abstractmethod
    def parse(self, name: str, value: float | None, opts: dict[str, str], item: str) -> dict:
        """The ``BalancerSpec`` keyword arguments of the item ``name[:value][:key=val...]``
        (``name`` one of :attr:`names`); raise :class:`~moebif.params.ParameterError` naming
        ``balancer`` with ``item`` on a bad value or option."""

    @abc.abstractmethod
    def active(self, spec: BalancerSpec) -> bool:
        """Whether ``spec`` switches this scheme on."""

    @abc.abstractmethod
    def label(self, spec: BalancerSpec) -> list[str]:
        """Its items of ``spec`` in the ``--balancer`` syntax (empty when off)."""

    # -- mean field and theory --------------------------------------------------------------

    @abc.abstractmethod
    def terms(self, spec: BalancerSpec, *, rate: float, batch: int | None) -> tuple:
        """Its mean-field terms (empty: no static term, e.g. a selection override)."""

    @abc.abstractmethod
    def shift(self, spec: BalancerSpec, ctx: ShiftContext) -> Shift:
        """Its shift of the uniform state's eigenvalues (:class:`Shift`)."""

    # -- simulator ----------------------------------------------------------------------------

    @abc.abstractmethod
    def kernel(self, spec: BalancerSpec, n_experts: int, top_k: int) -> dict[str, float]:
        """Its slots of the simulator kernel's float vector: ``{"AUX": ...}`` for the slot
        ``BAL_AUX`` of :mod:`moebif.sim._kernels.balancers` (the selection mode comes from
        :attr:`kernel_mode`)."""

    # -- cost -----------------------------------------------------------------------------

    def selection_slope(self, spec: BalancerSpec, n: int, k: int, slope: float) -> float:
        """The uniform-state slope of the selected load in the scores after this scheme
        (``slope``: before it). Default: unchanged."""
        return slope

    def served_slope(self, spec: BalancerSpec, n: int, k: int, batch: int | None) -> float:
        """The factor on the slope of the *served* load (capacity). Default: 1."""
        return 1.0

    def dropped(self, spec: BalancerSpec, n: int, k: int, batch: int | None) -> float | None:
        """Fraction of assignments (or tokens) it leaves unserved at balance (``None``:
        none by construction)."""
        return None

    def explorer(self) -> ExplorerView | None:
        """The explorer's view of the scheme (:class:`ExplorerView`), or ``None`` when it is not
        a near-balance load feedback."""
        return None
