"""Shared fixtures of the sweep tests: small specs and a real two-worker Dask LocalCluster."""

from __future__ import annotations

import copy

import pytest

pytest.importorskip("distributed")
pytest.importorskip("zarr")
pytest.importorskip("xarray")

# two experts, a = 3: collapse iff 2 gamma T < 3; eta gamma <= 0.04, 2500 steps = 50 / gamma
# of ODE time at the smallest gamma
SMALL = {
    "study": {"simulator": "batch_router", "name": "small"},
    "params": {"a": 3.0, "batch": 256, "eta": 0.02, "steps": 2500},
    "axes": {"T": {"start": 0.5, "stop": 3.0, "num": 4, "log": True}, "gamma": [0.5, 1.0, 2.0]},
    "run": {
        "replicas": 6,
        "seed": 7,
        "quantities": ["collapsed", "max_load", "final_loads", "final_u", "final_abs_u_hat"],
        "cells_per_task": 2,
    },
}

# tasks of ~0.1 s each (12 of them, on a quiet core): a worker can be killed while it computes
HEAVY = copy.deepcopy(SMALL)
HEAVY["params"] = {"a": 3.0, "batch": 64, "eta": 0.02, "steps": 15_000}
HEAVY["axes"] = {"T": [0.5, 0.8, 1.2, 2.0, 3.0, 4.0], "gamma": [0.5, 1.0, 2.0, 3.0]}
HEAVY["run"] = {
    "replicas": 16,
    "seed": 3,
    "quantities": ["collapsed", "max_load"],
    "cells_per_task": 2,
}


@pytest.fixture
def small_doc():
    return copy.deepcopy(SMALL)


@pytest.fixture
def heavy_doc():
    return copy.deepcopy(HEAVY)


def write_toml(path, doc) -> None:
    """A minimal TOML writer for the spec dicts above (tables of scalars, lists, inline tables)."""

    def val(v):
        if isinstance(v, bool):
            return "true" if v else "false"
        if isinstance(v, str):
            return '"' + v + '"'
        if isinstance(v, list):
            return "[" + ", ".join(val(x) for x in v) + "]"
        if isinstance(v, dict):
            return "{ " + ", ".join(f"{k} = {val(x)}" for k, x in v.items()) + " }"
        return repr(v)

    lines = []
    for table, entries in doc.items():
        lines.append(f"[{table}]")
        lines += [f"{k} = {val(v)}" for k, v in entries.items()]
        lines.append("")
    path.write_text("\n".join(lines))


@pytest.fixture(scope="module")
def dask_client():
    """A real LocalCluster: 2 worker processes, one thread each, loopback only."""
    from distributed import Client, LocalCluster

    with (
        LocalCluster(
            n_workers=2,
            threads_per_worker=1,
            processes=True,
            host="127.0.0.1",
            dashboard_address=None,
        ) as cluster,
        Client(cluster) as client,
    ):
        yield client
