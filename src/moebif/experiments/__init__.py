"""The registry of reproducible experiments: one module per paper figure.

Each module defines ``ID``, ``TITLE``, ``PAPER`` (where in the paper), a frozen dataclass
``Config`` whose defaults are the paper's values, ``quick() -> Config`` (fewer replicas, coarser
grids, same code path), ``run(config, progress=None) -> ExperimentResult`` and
``plot(result, config) -> matplotlib Figure``. Modules are imported lazily.
"""

from __future__ import annotations

import importlib
from types import ModuleType

# id -> module name, in report order
REGISTRY: dict[str, str] = {
    "theory": "analytic",
    "fig01": "fig01_soft_router",
    "fig02": "fig02_hard_router",
    "fig03": "fig03_balancing",
    "fig04": "fig04_digits",
    "fig05": "fig05_digits_balancing",
    "fig06": "fig06_meanfield",
    "fig07": "fig07_hysteresis",
    "fig08": "fig08_collapse_region",
    "fig09": "fig09_onset",
    "fig10": "fig10_width_vs_a",
    "fig11": "fig11_feedback",
    "nexp-branches": "many_branches",
    "nexp-hysteresis": "many_hysteresis",
    "nexp-metastable": "many_metastable",
    "nexp-topk": "many_topk",
}

__all__ = ["REGISTRY", "load_experiment"]


def load_experiment(exp_id: str) -> ModuleType:
    if exp_id not in REGISTRY:
        raise KeyError(exp_id)
    return importlib.import_module(f"{__name__}.{REGISTRY[exp_id]}")
