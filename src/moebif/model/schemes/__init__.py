"""The balancing schemes: one class per scheme (:class:`~.base.Scheme` states the interface),
one file per scheme, and ONE registry, :data:`SCHEMES` (name -> class), that the spec parser,
the theory, the simulator, the explorer and the CLI help all read.

The registry's order is the order of a spec's label and of its mean-field terms.
"""

from __future__ import annotations

from .aux import AuxLoss
from .base import KINDS, ExplorerView, Kind, Scheme, Shift, ShiftContext
from .bias import LossFreeBias
from .capacity import Capacity, capacity_slope
from .control import Control
from .expert_choice import ExpertChoice
from .importance import Importance
from .noisy import NoisyGating
from .quantile import Quantile
from .sinkhorn import Sinkhorn
from .zloss import ZLoss

__all__ = [
    "KINDS",
    "SCHEMES",
    "AuxLoss",
    "Capacity",
    "Control",
    "ExplorerView",
    "ExpertChoice",
    "Importance",
    "Kind",
    "LossFreeBias",
    "NoisyGating",
    "Quantile",
    "Scheme",
    "Shift",
    "ShiftContext",
    "Sinkhorn",
    "ZLoss",
    "capacity_slope",
    "scheme_classes",
    "scheme_help",
    "scheme_instances",
    "lookup",
]

_CLASSES: tuple[type[Scheme], ...] = (
    AuxLoss,
    ZLoss,
    Importance,
    LossFreeBias,
    Quantile,
    Capacity,
    NoisyGating,
    Sinkhorn,
    ExpertChoice,
    Control,
)

#: name -> scheme class: every ``--balancer`` name (``aux-megatron`` is :class:`AuxLoss`).
SCHEMES: dict[str, type[Scheme]] = {name: cls for cls in _CLASSES for name in cls.names}

_INSTANCES: dict[type[Scheme], Scheme] = {cls: cls() for cls in _CLASSES}
_ALIASES: dict[str, str] = {alias: name for cls in _CLASSES for alias, name in cls.aliases.items()}


def scheme_classes() -> tuple[type[Scheme], ...]:
    """The registered classes, each once, in registry order."""
    return tuple(dict.fromkeys(SCHEMES.values()))


def scheme_instances() -> tuple[Scheme, ...]:
    """One instance of each registered class, in registry order (schemes are stateless: their
    options live in the :class:`~moebif.model.balancers.BalancerSpec`)."""
    return tuple(_INSTANCES.get(cls) or cls() for cls in scheme_classes())


def lookup(name: str) -> tuple[str, Scheme] | None:
    """``(registry name, scheme)`` of a ``--balancer`` name or alias (``None``: unknown)."""
    name = _ALIASES.get(name, name)
    cls = SCHEMES.get(name)
    if cls is None:
        return None
    return name, _INSTANCES.get(cls) or cls()


def scheme_help() -> dict[str, str]:
    """name -> one-line help of every registered name (the CLI help and docs)."""
    return {name: cls.names[name] for name, cls in SCHEMES.items()}
