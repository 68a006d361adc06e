"""Experiment cells as sweep studies: the spec's ``study.experiment = "ID"``.

**The cell protocol.** An experiment of :mod:`moebif.experiments` can be swept when its module
(or an adapter registered in :data:`CELL_ADAPTERS`) exposes:

- ``Config``: its frozen dataclass; the scalar fields (bool, int, float, str) are the study's
  parameters (a spec's ``[params]`` and ``[axes]`` override them), except ``seed`` and ``runs``,
  which the sweep sets to the cell's own seed and to ``run.replicas``;
- ``cell(config, **axes) -> dict``: one cell, a dict quantity -> array of shape
  ``(config.runs,)`` (one value a replica) or ``()`` (one value a cell);
- ``CELL_AXES: dict[str, Param]``: the keyword arguments of ``cell`` that are not Config fields
  (e.g. ``gamma`` and ``T`` of fig08's grid), each a required parameter of the study;
- ``CELL_QUANTITIES: dict[str, Quantity]``: what ``cell`` returns;
- optional ``CELL_PARAMS: dict[str, Param]``: the Config fields a sweep may set, with their
  domains (by default every scalar field, typed by its default, without bounds);
  ``cell_check(values)`` (cross-parameter checks raising ``ParameterError``);
  ``cell_work(values, replicas)`` (replica-steps, to size tasks);
  ``cell_boundaries(values, varying)`` (theory boundaries, as :meth:`Study.boundaries`).

The existing experiments do not define these names; the adapters below wrap their per-cell
functions without touching the experiment modules.
"""

from __future__ import annotations

import dataclasses
import functools
from types import SimpleNamespace

import numpy as np

from ..params import ParameterError, RouterParams
from .params import REQUIRED, Param, Quantity
from .studies import Study

__all__ = ["CELL_ADAPTERS", "ExperimentStudy", "experiment_study", "get_study"]


# ----------------------------------------------------------------------------------------------
# adapters of existing experiments


def _final_abs_u_adapter(exp_id: str) -> SimpleNamespace:
    """fig08 (and fig09, which runs the same cells): the final ``|u_hat|`` of the batch router at
    ``h``, ``a``, started from a small random asymmetry, after ``horizon_gamma / gamma`` ODE time
    with ``eta = eta_gamma / gamma``
    (:func:`moebif.experiments.fig08_collapse_region.final_abs_u`)."""
    from ..experiments import load_experiment
    from ..experiments.fig08_collapse_region import final_abs_u

    mod = load_experiment(exp_id)

    def cell(config, *, gamma, T):
        # the experiment derives its streams from (config.seed, i, j); the sweep gives every cell
        # its own config.seed, so i = j = 0 here
        return {"final_abs_u": final_abs_u(config, gamma, T, 0, 0)}

    def work(v, replicas):
        return replicas * round(v["horizon_gamma"] / v["eta_gamma"])

    def boundaries(v, varying):
        return {"a = 2γT (pitchfork)": v["a"] - 2.0 * v["gamma"] * v["T"]}

    def check(v):
        RouterParams(a=v["a"], gamma=v["gamma"], T=v["T"], h=v["h"])

    return SimpleNamespace(
        Config=mod.Config,
        cell=cell,
        CELL_AXES={
            "gamma": Param(float, REQUIRED, "forgetting rate", gt=0),
            "T": Param(float, REQUIRED, "softmax temperature", gt=0),
        },
        CELL_QUANTITIES={
            "final_abs_u": Quantity("final |u_hat| of each replica (the experiment's cell)")
        },
        CELL_PARAMS={
            "a": Param(float, mod.Config.a, "reinforcement strength", ge=0),
            "h": Param(float, mod.Config.h, "external skew b1 - b2"),
            "batch": Param(int, mod.Config.batch, "tokens a step", ge=1),
            "eta_gamma": Param(float, mod.Config.eta_gamma, "eta * gamma", gt=0, lt=2),
            "horizon_gamma": Param(float, mod.Config.horizon_gamma, "t_end * gamma", gt=0),
            "init_asymmetry": Param(
                float, mod.Config.init_asymmetry, "sd of the initial load", ge=0, lt=1
            ),
        },
        cell_work=work,
        cell_boundaries=boundaries,
        cell_check=check,
    )


CELL_ADAPTERS = {
    "fig08": functools.partial(_final_abs_u_adapter, "fig08"),
    "fig09": functools.partial(_final_abs_u_adapter, "fig09"),
}


# ----------------------------------------------------------------------------------------------
# the study


class ExperimentStudy(Study):
    """A study whose cell is an experiment's ``cell(config, **axes)`` (see the module doc)."""

    speed = 1.2e7  # replica-steps a second of the two-expert batch router
    size_params = ("horizon_gamma", "eta_gamma")

    def __init__(self, exp_id: str, proto):
        self.name = f"experiment:{exp_id}"
        self.exp_id = exp_id
        self.proto = proto
        self.doc = f"cell function of experiment {exp_id}"
        if hasattr(proto, "CELL_PARAMS"):
            params = dict(proto.CELL_PARAMS)
        else:
            params = {
                f.name: Param(type(f.default), f.default, "Config field")
                for f in dataclasses.fields(proto.Config)
                if f.name not in ("seed", "runs")
                and isinstance(f.default, bool | int | float | str)
            }
        for name, p in proto.CELL_AXES.items():
            params[name] = p
        self.params = params
        self.quantities = dict(proto.CELL_QUANTITIES)

    def check(self, v):
        fn = getattr(self.proto, "cell_check", None)
        if fn is not None:
            fn(v)

    def experts(self, v):
        return 0

    def work(self, v, replicas):
        fn = getattr(self.proto, "cell_work", None)
        return fn(v, replicas) if fn is not None else replicas * 1e6

    def boundaries(self, v, varying=frozenset()):
        fn = getattr(self.proto, "cell_boundaries", None)
        return fn(v, varying) if fn is not None else {}

    def run(self, v, *, replicas, seed, quantities, threads):
        fields = {f.name for f in dataclasses.fields(self.proto.Config)}
        cfg = {k: v[k] for k in v if k in fields and k not in self.proto.CELL_AXES}
        cfg["seed"] = seed
        if "runs" in fields:
            cfg["runs"] = replicas
        config = self.proto.Config(**cfg)
        axes = {k: v[k] for k in self.proto.CELL_AXES}
        out = self.proto.cell(config, **axes)
        missing = [q for q in quantities if q not in out]
        if missing:
            raise ValueError(f"{self.name}: cell() did not return {', '.join(missing)}")
        return {q: np.asarray(out[q]) for q in quantities}


@functools.cache
def experiment_study(exp_id: str) -> ExperimentStudy:
    """The study of experiment ``exp_id``: its module's cell protocol, else an adapter.

    Raises :class:`~moebif.params.ParameterError` (name ``experiment``) when the id is unknown
    or the experiment has no cell function."""
    from ..experiments import REGISTRY, load_experiment

    if exp_id not in REGISTRY:
        raise ParameterError("experiment", f"unknown experiment {exp_id!r}")
    mod = load_experiment(exp_id)
    if all(hasattr(mod, a) for a in ("cell", "CELL_AXES", "CELL_QUANTITIES")):
        return ExperimentStudy(exp_id, mod)
    if exp_id in CELL_ADAPTERS:
        return ExperimentStudy(exp_id, CELL_ADAPTERS[exp_id]())
    have = ", ".join(sorted(CELL_ADAPTERS))
    raise ParameterError(
        "experiment", f"experiment {exp_id!r} has no cell function (sweepable: {have})"
    )


def get_study(name: str) -> Study:
    """The registered study ``name`` (``experiment:ID`` loads an experiment's cell function)."""
    from .studies import STUDIES

    if name.startswith("experiment:"):
        return experiment_study(name.split(":", 1)[1])
    return STUDIES[name]
