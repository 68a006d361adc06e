"""The registry of reproducible experiments: one module per paper figure.

Each module defines ``ID``, ``TITLE``, ``PAPER`` (where in the paper), a frozen dataclass
``Config`` whose defaults are the paper's values (with a ``seed`` field), ``quick() -> Config``
(fewer replicas, coarser grids, same code path), and the three steps

- ``run(config, progress=None) -> dict``: computes the data (JSON-ready: it is saved as
  ``data.json``);
- ``claims(data, config) -> list[Claim]``: checks the paper's statements on the data alone, so
  a finished run can be re-checked from its ``data.json`` (``moebif reproduce --recheck``);
- ``plot(data, config) -> matplotlib Figure``;

and optionally ``notes(data, config) -> str``. The runner hands ``claims``, ``plot`` and
``notes`` the data exactly as it reads back from ``data.json`` (lists for arrays, ``None`` for
NaN; :func:`moebif.experiments.base.json_roundtrip`), so whatever they need must be in the data,
and a re-check from the saved file gives the same claims. ``run`` derives every random stream
from ``config.seed`` (``moebif reproduce --seed K`` / ``--seeds S`` replace it; see
:func:`moebif.experiments.runner.experiment_seed`). Modules are imported lazily.
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
    "bal-phase": "bal_phase",
    "bal-bias": "bal_bias",
    "bal-bias-cycle": "bal_bias_cycle",
    "bal-capacity": "bal_capacity",
    "bal-compare": "bal_compare",
    "ctl-suppression": "ctl_suppression",
}

__all__ = ["REGISTRY", "load_experiment"]


def load_experiment(exp_id: str) -> ModuleType:
    if exp_id not in REGISTRY:
        raise KeyError(exp_id)
    return importlib.import_module(f"{__name__}.{REGISTRY[exp_id]}")
