"""The alarm rules of :class:`~moebif.monitor.LayerMonitor`: one :class:`AlarmRule` subclass per
alarm kind, one file each, and the registry :data:`RULES` (kind -> class), in the order the
monitor builds and runs them. See :mod:`.base` for the interface a new rule implements."""

from .approaching import ApproachingThreshold as ApproachingThreshold
from .base import AlarmRule as AlarmRule
from .base import BlockContext as BlockContext
from .collapse_in_progress import CollapseInProgress as CollapseInProgress
from .collapsed import Collapsed as Collapsed
from .dead_experts import DeadExpertsRule as DeadExpertsRule
from .metastable import Metastable as Metastable
from .recovered import RECOVER as RECOVER
from .recovered import Recovered as Recovered

# kind -> rule class, in the order the monitor raises one step's alarms
RULES: dict[str, type[AlarmRule]] = {
    cls.kind: cls
    for cls in (
        ApproachingThreshold,
        Metastable,
        CollapseInProgress,
        Collapsed,
        DeadExpertsRule,
        Recovered,
    )
}

__all__ = ["RECOVER", "RULES", "AlarmRule", "BlockContext"]
