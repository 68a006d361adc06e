"""Sweeps under hostile input (issue 22): every numeric input is bounded before anything is built
or run, bad options are one line with exit code 2 within seconds, the cluster is on the
loopback, and --resume starts a store that does not exist yet."""

from __future__ import annotations

import json
import math
import time

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from moebif.cli import main
from moebif.sweep import SpecError, parse_spec
from moebif.sweep.spec import MAX_CELL_SECONDS, MAX_CELLS

from .conftest import write_toml

BOUND = 5.0  # seconds: a hang guard


def _run(capsys, *args):
    capsys.readouterr()
    t0 = time.monotonic()
    try:
        code = main([str(a) for a in args])
    except SystemExit as e:
        code = e.code
    out = capsys.readouterr()
    return int(code or 0), out.out, out.err, time.monotonic() - t0


def _bad(capsys, *args, key: str):
    code, out, err, dt = _run(capsys, *args)
    assert code == 2 and dt < BOUND, (code, dt, err)
    assert err.startswith(f"moebif: error: {key}") and err.count("\n") == 1, err
    assert "Traceback" not in err
    return err


def _spec(tmp_path, doc, name="s.toml"):
    path = tmp_path / name
    write_toml(path, doc)
    return path


def test_a_billion_values_on_an_axis_is_refused_before_any_array(tmp_path, capsys, small_doc):
    small_doc["axes"]["T"] = {"start": 0.5, "stop": 1.5, "num": 1_000_000_000}
    err = _bad(capsys, "sweep", _spec(tmp_path, small_doc), "--dry-run", key="axes.T.num")
    assert "--max-cells" in err


def test_a_step_range_near_the_float_max_is_refused(tmp_path, capsys, small_doc):
    small_doc["axes"]["T"] = {"start": -1e308, "stop": 1e308, "step": 1e-300}
    _bad(capsys, "sweep", _spec(tmp_path, small_doc), "--dry-run", key="axes.T.step")


def test_the_grid_limit_and_max_cells(tmp_path, capsys, small_doc):
    small_doc["axes"]["T"] = {"start": 0.5, "stop": 3.0, "num": 40}  # 40 x 3 = 120 cells
    spec = _spec(tmp_path, small_doc)
    err = _bad(capsys, "sweep", spec, "--dry-run", "--max-cells", "100", key="axes:")
    assert "120 cells" in err and "--max-cells" in err
    code, out, _, _ = _run(capsys, "sweep", spec, "--dry-run", "--max-cells", "200", "--json")
    assert code == 0 and json.loads(out)["cells"] == 120
    assert MAX_CELLS == 100_000


def test_steps_beyond_64_bits_are_refused(tmp_path, capsys, small_doc):
    small_doc["params"]["steps"] = 10**20
    out = tmp_path / "s.zarr"
    _bad(capsys, "sweep", _spec(tmp_path, small_doc), "--out", out, key="params.steps")
    assert not out.exists()  # no half-made store


def test_a_cell_beyond_a_day_of_work_is_refused(tmp_path, capsys, small_doc):
    small_doc["params"]["steps"] = 10**13  # 6 replicas: ~1400 core-hours a cell
    err = _bad(capsys, "sweep", _spec(tmp_path, small_doc), "--dry-run", key="params.steps")
    assert "core-hours" in err and f"{MAX_CELL_SECONDS / 3600:g}" in err


def test_replicas_and_store_size_are_bounded(small_doc):
    small_doc["run"]["replicas"] = 10**7
    with pytest.raises(SpecError) as e:
        parse_spec(small_doc)
    assert e.value.key == "run.replicas"
    # 300 cells x 1e6 replicas x (4 quantities + 2 experts) = 1.8e9 values
    small_doc["axes"]["T"] = {"start": 0.5, "stop": 3.0, "num": 100}
    small_doc["run"]["replicas"] = 10**6
    small_doc["params"]["steps"] = 1
    with pytest.raises(SpecError, match="values"):
        parse_spec(small_doc)


def test_a_bad_scheduler_address_is_one_line(tmp_path, capsys, small_doc):
    spec = _spec(tmp_path, small_doc)
    err = _bad(capsys, "sweep", spec, "--scheduler", "notanaddress", key="--scheduler")
    assert "notanaddress" in err


def test_a_scheduler_that_does_not_answer_is_one_line_within_the_bound(tmp_path, capsys, small_doc):
    """A port that accepts and stays silent (Dask's handshake alone would wait for it without
    a bound) and a refused port (Dask retries those for its whole timeout): both within
    --connect-timeout, and nothing written."""
    import socket

    spec, out = _spec(tmp_path, small_doc), tmp_path / "x.zarr"
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(8)
        port = silent.getsockname()[1]
        t0 = time.monotonic()
        err = _bad(
            capsys, "sweep", spec, "--out", out, "--scheduler", f"tcp://127.0.0.1:{port}",
            "--connect-timeout", "1", key="--scheduler",
        )  # fmt: skip
        assert time.monotonic() - t0 >= 1.0 and "no answer within 1 s" in err
    with socket.socket() as closed:  # a port nobody listens on
        closed.bind(("127.0.0.1", 0))
        port = closed.getsockname()[1]
    err = _bad(
        capsys, "sweep", spec, "--out", out, "--scheduler", f"127.0.0.1:{port}", key="--scheduler"
    )
    assert "refused" in err.lower()
    _bad(
        capsys,
        "sweep",
        spec,
        "--scheduler",
        "x:1",
        "--connect-timeout",
        "0",
        key="--connect-timeout",
    )
    assert not out.exists()


def test_sweep_plot_select_needs_a_coordinate(tmp_path, capsys, small_doc):
    from moebif.sweep.store import SweepStore

    spec = parse_spec(small_doc)
    store = tmp_path / "s.zarr"
    SweepStore.create(store, spec, spec.chunks())
    _bad(capsys, "sweep-plot", store, "--x", "gamma", "--select", "T=abc", key="--select")
    _bad(capsys, "sweep-plot", store, "--x", "gamma", "--select", "T=nan", key="--select")


def test_resume_starts_a_store_that_does_not_exist(tmp_path, capsys, small_doc):
    out = tmp_path / "new.zarr"
    code, stdout, err, _ = _run(
        capsys, "sweep", _spec(tmp_path, small_doc), "--out", out, "--resume", "--dry-run"
    )
    assert code == 0 and err.count("\n") == 1 and "does not exist yet; starting it" in err


def test_json_errors_are_json(tmp_path, capsys, small_doc):
    small_doc["params"]["steps"] = 10**20
    code, out, err, _ = _run(capsys, "sweep", _spec(tmp_path, small_doc), "--dry-run", "--json")
    assert code == 2 and err.count("\n") == 1
    assert json.loads(out) == {
        "error": {"argument": "params.steps", "message": err.split(": ", 3)[3].strip()}
    }


def test_every_dask_service_is_on_the_loopback(monkeypatch):
    import distributed

    from moebif.sweep.executors import DaskExecutor

    seen = {}

    class FakeCluster:
        def __init__(self, **kw):
            seen.update(kw)

        def close(self):
            pass

    class FakeClient:
        dashboard_link = "http://127.0.0.1:8787/status"

        def __init__(self, *a, **k):
            pass

        def run(self, fn, **k):
            return {}

        def scheduler_info(self, **k):
            return {"services": {"dashboard": 8787}, "workers": {}}

        def close(self):
            pass

    monkeypatch.setattr(distributed, "LocalCluster", FakeCluster)
    monkeypatch.setattr(distributed, "Client", FakeClient)
    DaskExecutor(local_workers=2).close()
    assert seen["host"] == "127.0.0.1"
    assert seen["dashboard_address"].startswith("127.0.0.1:")
    assert seen["worker_dashboard_address"].startswith("127.0.0.1:")


HOSTILE = [
    None,
    True,
    0,
    -1,
    1,
    2**63,
    10**20,
    -(10**20),
    0.0,
    -0.0,
    1e-320,
    1e308,
    -1e308,
    math.inf,
    -math.inf,
    math.nan,
    "",
    "abc",
    [],
    [1, 1],
    [0.5, "x"],
    {},
    {"start": 0, "stop": 1, "num": 10**9},
    {"start": 1e308, "stop": -1e308, "step": -1e-308},
    {"start": 0, "stop": 1, "num": 3, "log": True},
    {"start": 1, "stop": 2, "step": 0},
    {"start": 1, "stop": 2},
]
PARAM_KEYS = ["a", "gamma", "T", "h", "n_experts", "batch", "eta", "steps", "rho", "y0"]


@settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    where=st.lists(
        st.tuples(
            st.sampled_from(["params", "axes", "run"]),
            st.sampled_from([*PARAM_KEYS, "replicas", "seed", "cells_per_task", "task_seconds"]),
            st.sampled_from(HOSTILE),
        ),
        min_size=1,
        max_size=3,
    )
)
def test_fuzz_the_spec_parser(small_doc, where):
    import copy

    doc = copy.deepcopy(small_doc)
    for table, key, value in where:
        if value is None:
            doc[table].pop(key, None)
        else:
            doc[table][key] = value
    t0 = time.monotonic()
    try:
        spec = parse_spec(doc)
    except SpecError as e:
        assert e.key and "\n" not in str(e)
    else:
        spec.chunks()
        assert spec.n_cells <= MAX_CELLS
        assert float(spec.cell_cost().max()) <= MAX_CELL_SECONDS
    assert time.monotonic() - t0 < BOUND


@pytest.mark.slow
def test_ctrl_c_with_local_workers_is_one_line_and_resumable(tmp_path, heavy_doc):
    """Ctrl+C in a terminal reaches the whole process group, the Dask workers included."""
    import os
    import signal
    import subprocess
    import sys

    heavy_doc["params"]["steps"] = 300_000
    spec, out = _spec(tmp_path, heavy_doc), tmp_path / "h.zarr"
    cmd = [sys.executable, "-c", "import sys; from moebif.cli import main; sys.exit(main())"]
    proc = subprocess.Popen(
        [
            *cmd,
            "sweep",
            str(spec),
            "--out",
            str(out),
            "--local-workers",
            "2",
            "--dashboard",
            "none",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    deadline = time.monotonic() + 120
    while not (out / ".zattrs").exists() and not (out / "zarr.json").exists():
        assert time.monotonic() < deadline and proc.poll() is None
        time.sleep(0.2)
    time.sleep(2.0)
    os.killpg(proc.pid, signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130
    lines = [x for x in err.splitlines() if x.strip()]
    assert lines[-1].startswith("moebif: interrupted") and "--resume" in lines[-1]
    assert "Traceback" not in err and "WARNING" not in err, err
    from moebif.sweep.store import SweepStore

    assert SweepStore.open(out).pending()  # resumable: the missing chunks are known


@pytest.mark.parametrize(
    "study,params,key",
    [
        ({"simulator": "hysteresis"}, {"a": 3.0, "rate": 1e-300}, "params.rate"),
        ({"experiment": "fig08"}, {"horizon_gamma": 1e30}, "params.horizon_gamma"),
    ],
)
def test_a_costly_cell_names_what_sets_its_work(study, params, key):
    from moebif.sweep.experiments import get_study

    name = study.get("simulator") or f"experiment:{study['experiment']}"
    q = next(iter(get_study(name).quantities))
    doc = {"study": study, "params": params, "axes": {"T": [0.5, 1.0]}, "run": {"quantities": [q]}}
    if "experiment" in study:
        doc["axes"]["gamma"] = [1.0]
    with pytest.raises(SpecError) as e:
        parse_spec(doc)
    assert e.value.key == key and "core-hours" in str(e.value)
