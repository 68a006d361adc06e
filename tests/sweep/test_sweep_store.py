"""In-process sweeps: the store's layout, its values against direct library calls and the theory,
chunking independence, interruption and resume."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import xarray as xr

import moebif
from moebif.sweep import InProcess, StoreError, SweepStore, cell_seed, parse_spec, run_sweep

from .conftest import write_toml


def _values(path) -> xr.Dataset:
    return xr.open_zarr(path).load().drop_attrs()


def test_store_layout_opens_with_xarray(tmp_path, small_doc):
    spec = parse_spec(small_doc)
    rep = run_sweep(spec, tmp_path / "s.zarr")
    assert rep.tasks == 8 and len(rep.tasks_run) == 8 and rep.tasks_skipped == 0
    ds = xr.open_zarr(tmp_path / "s.zarr")
    assert set(ds.coords) == {"T", "gamma", "replica", "expert"}
    np.testing.assert_array_equal(ds["T"], spec.axes["T"])
    np.testing.assert_array_equal(ds["gamma"], [0.5, 1.0, 2.0])
    assert ds.sizes == {"T": 4, "gamma": 3, "replica": 6, "expert": 2}
    assert set(ds.data_vars) == {
        "collapsed",
        "max_load",
        "final_loads",
        "final_u",
        "final_abs_u_hat",
        "cell_seed",
        "done",
    }
    assert ds["final_loads"].dims == ("T", "gamma", "replica", "expert")
    assert ds["collapsed"].dtype == bool and ds["cell_seed"].dtype == np.uint64
    assert ds["done"].dims == ("T", "gamma") and bool(ds["done"].all())
    assert ds["max_load"].chunks == ((1, 1, 1, 1), (2, 1), (6,))
    a = ds.attrs
    assert a["moebif_sweep"] == 1 and a["study"] == "batch_router"
    assert a["spec"] == json.loads(json.dumps(spec.canonical()))
    assert a["versions"]["moebif"] == moebif.__version__
    assert set(a["versions"]) >= {"numpy", "numba", "xarray", "zarr", "dask", "python"}
    assert a["chunks"] == {"T": 1, "gamma": 2} and a["cells"] == 12 and a["tasks"] == 8
    # every cell's seed is the documented one
    flat = np.asarray(ds["cell_seed"]).ravel()
    assert flat.tolist() == [cell_seed(7, i) for i in range(12)]


def test_cell_values_equal_the_library_called_directly(tmp_path, small_doc):
    spec = parse_spec(small_doc)
    run_sweep(spec, tmp_path / "s.zarr", executor=InProcess(threads=1))
    ds = _values(tmp_path / "s.zarr")
    i, j = 2, 1
    T, g = float(spec.axes["T"][i]), float(spec.axes["gamma"][j])
    sim = moebif.simulate_batch_router(
        moebif.RouterParams(a=3.0, gamma=g, T=T),
        batch=256,
        eta=0.02,
        steps=2500,
        runs=6,
        seed=cell_seed(7, i * 3 + j),
        record_every=2500,
        record_scores=True,
    )
    u = np.tanh(sim.scores[:, -1] / (2 * T))
    cell = ds.isel(T=i, gamma=j)
    np.testing.assert_array_equal(cell["final_u"], u)
    np.testing.assert_array_equal(cell["final_abs_u_hat"], np.abs(sim.u_hat[:, -1]))
    np.testing.assert_array_equal(cell["max_load"], 0.5 * (1 + np.abs(u)))
    np.testing.assert_allclose(cell["final_loads"].sum("expert"), 1.0, rtol=0, atol=1e-15)
    np.testing.assert_array_equal(cell["collapsed"], np.abs(u) > 0.2)


def test_collapse_map_follows_the_pitchfork(tmp_path):
    """Thm 4.1: collapsed iff a > 2 gamma T; checked on cells with |kappa - 1| >= 0.3."""
    doc = {
        "study": {"simulator": "batch_router"},
        "params": {"a": 3.0, "batch": 512},
        "axes": {"T": {"start": 0.4, "stop": 4.0, "num": 6, "log": True}, "gamma": [0.5, 1, 2]},
        "run": {"replicas": 8, "seed": 1, "quantities": ["collapsed"]},
    }
    doc["params"].update(eta=0.02, steps=4000)  # 80 units of ODE time at gamma = 1
    run_sweep(parse_spec(doc), tmp_path / "m.zarr", executor=InProcess(threads=1))
    ds = _values(tmp_path / "m.zarr")
    kappa = 3.0 / (2 * ds["gamma"] * ds["T"])
    p = ds["collapsed"].mean("replica")
    far = abs(kappa - 1) >= 0.3
    assert int(far.sum()) >= 10
    assert bool(((p == 1.0) == (kappa > 1)).where(far, True).all())
    assert bool(((p == 0.0) == (kappa < 1)).where(far, True).all())


def test_values_do_not_depend_on_chunking(tmp_path, small_doc):
    ref = run_sweep(parse_spec(small_doc), tmp_path / "a.zarr")
    assert ref.tasks == 8
    small_doc["run"]["cells_per_task"] = 6
    other = run_sweep(parse_spec(small_doc), tmp_path / "b.zarr", executor=InProcess(threads=1))
    assert other.tasks == 2 and other.chunks == {"T": 2, "gamma": 3}
    assert _values(tmp_path / "a.zarr").identical(_values(tmp_path / "b.zarr"))


def test_n_experts_axis_pads_the_expert_dimension(tmp_path):
    doc = {
        "study": {"simulator": "batch_router"},
        "params": {"a": 5.0, "steps": 500, "batch": 128},
        "axes": {"n_experts": [2, 4]},
        "run": {"replicas": 3, "quantities": ["final_loads", "max_load", "load_excess"]},
    }
    run_sweep(parse_spec(doc), tmp_path / "n.zarr")
    ds = _values(tmp_path / "n.zarr")
    assert ds.sizes["expert"] == 4
    loads = ds["final_loads"]
    assert bool(loads.sel(n_experts=2).isel(expert=[2, 3]).isnull().all())
    np.testing.assert_allclose(loads.sum("expert", skipna=True), 1.0, atol=1e-12)
    np.testing.assert_array_equal(ds["max_load"], loads.max("expert"))
    excess = (ds["max_load"] - 1 / ds["n_experts"]) / (1 - 1 / ds["n_experts"])
    np.testing.assert_allclose(ds["load_excess"], excess, rtol=1e-14)


def test_other_studies_match_their_library_functions(tmp_path):
    hyst = {
        "study": {"simulator": "hysteresis"},
        "params": {"gamma": 1.0, "T": 1.0, "batch": 256, "eta": 0.02, "rate": 0.2},
        "axes": {"a": [1.5, 4.0]},
        "run": {"replicas": 4, "seed": 2, "quantities": ["h_switch_up", "h_switch_down", "width"]},
    }
    run_sweep(parse_spec(hyst), tmp_path / "h.zarr")
    ds = _values(tmp_path / "h.zarr")
    assert ds["width"].dims == ("a",)
    direct = moebif.sweep_hysteresis(
        moebif.RouterParams(a=4.0, gamma=1.0, T=1.0),
        rate=0.2,
        batch=256,
        eta=0.02,
        runs=4,
        seed=cell_seed(2, 1),
    )
    assert float(ds["width"].sel(a=4.0)) == direct.width
    assert float(ds["h_switch_up"].sel(a=4.0)) == direct.h_switch_up

    topk = {
        "study": {"simulator": "topk_router"},
        "params": {"a": 2.0, "n_experts": 6, "steps": 300, "batch": 64},
        "axes": {"top_k": [1, 2]},
        "run": {"replicas": 3, "seed": 4, "quantities": ["final_loads", "max_load"]},
    }
    run_sweep(parse_spec(topk), tmp_path / "k.zarr")
    ds = _values(tmp_path / "k.zarr")
    run = moebif.simulate_topk_router(
        moebif.RouterParams(a=2.0, gamma=1.0, T=1.0, n_experts=6),
        batch=64,
        eta=0.01,
        steps=300,
        runs=3,
        top_k=2,
        seed=cell_seed(4, 1),
        record_every=None,
    )
    expect = np.array([moebif.inclusion_probabilities(r, 1.0, 2) / 2 for r in run.scores])
    np.testing.assert_array_equal(ds["final_loads"].sel(top_k=2), expect)
    np.testing.assert_allclose(ds["final_loads"].sum("expert"), 1.0, atol=1e-12)


def test_experiment_cell_fig08(tmp_path):
    from moebif.experiments.fig08_collapse_region import Config, final_abs_u

    doc = {
        "study": {"experiment": "fig08"},
        "params": {"horizon_gamma": 20.0, "batch": 128},
        "axes": {"gamma": [0.5, 2.0], "T": [1.0]},
        "run": {"replicas": 5, "seed": 9, "quantities": ["final_abs_u"]},
    }
    spec = parse_spec(doc)
    assert spec.study == "experiment:fig08"
    run_sweep(spec, tmp_path / "e.zarr")
    ds = _values(tmp_path / "e.zarr")
    cfg = Config(horizon_gamma=20.0, batch=128, runs=5, seed=cell_seed(9, 1))
    np.testing.assert_array_equal(
        ds["final_abs_u"].sel(gamma=2.0, T=1.0), final_abs_u(cfg, 2.0, 1.0, 0, 0)
    )
    bad = {**doc, "params": {"band": 0.1}}
    with pytest.raises(ValueError, match="params.band"):
        parse_spec(bad)


class _Stop(Exception):
    pass


def test_interrupted_sweep_resumes_without_recomputing(tmp_path, small_doc):
    spec = parse_spec(small_doc)
    full = tmp_path / "full.zarr"
    run_sweep(spec, full)
    part = tmp_path / "part.zarr"
    seen = []

    def stop_after_three(res):
        seen.append(res.index)
        if len(seen) == 3:
            raise _Stop

    with pytest.raises(_Stop):
        run_sweep(spec, part, on_result=stop_after_three)
    st = SweepStore.open(part)
    pending = st.pending()
    assert sorted(set(range(8)) - set(pending)) == sorted(seen)
    ds = xr.open_zarr(part)
    sizes = [np.prod([b - a for a, b in st.blocks()[i]]) for i in seen]
    assert int(ds["done"].sum()) == sum(sizes)
    assert bool(ds["max_load"].where(~ds["done"]).isnull().all())
    with pytest.raises(StoreError, match="already exists"):
        run_sweep(spec, part)
    rep = run_sweep(spec, part, resume=True)
    assert sorted(rep.tasks_run) == pending and rep.tasks_skipped == 3
    assert not set(rep.tasks_run) & set(seen)
    assert _values(part).identical(_values(full))
    # a finished store resumes to nothing
    assert run_sweep(spec, part, resume=True).tasks_run == ()


def test_resume_refuses_another_spec(tmp_path, small_doc):
    run_sweep(parse_spec(small_doc), tmp_path / "s.zarr")
    small_doc["params"]["steps"] = 2400
    with pytest.raises(StoreError, match=r"params\.steps differs"):
        run_sweep(parse_spec(small_doc), tmp_path / "s.zarr", resume=True)
    small_doc["params"]["steps"] = 2500
    small_doc["study"]["name"] = "renamed"  # the label does not change the numbers
    small_doc["run"]["cells_per_task"] = 3  # nor does the task size: the store's is kept
    rep = run_sweep(parse_spec(small_doc), tmp_path / "s.zarr", resume=True)
    assert rep.tasks_run == () and rep.chunks == {"T": 1, "gamma": 2}


def test_killed_cli_sweep_loses_only_chunks_in_flight(tmp_path, heavy_doc, capsys):
    """SIGKILL the `moebif sweep` process mid-run; --resume completes it to the same values."""
    from moebif.cli import main

    heavy_doc["params"]["steps"] = 10_000  # ~0.03 s a cell in-process
    spec = tmp_path / "h.toml"
    write_toml(spec, heavy_doc)
    store = tmp_path / "h.zarr"
    proc = subprocess.Popen(
        [sys.executable, "-m", "moebif", "sweep", str(spec), "--out", str(store)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 60
        done = 0
        while time.monotonic() < deadline and proc.poll() is None:
            if store.exists():
                try:
                    done = int(np.asarray(SweepStore.open(store).done_mask()).sum())
                except Exception:
                    done = 0
                if done >= 4:
                    break
            time.sleep(0.02)
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.wait()
    assert proc.returncode == -signal.SIGKILL, "the sweep finished before it could be killed"
    st = SweepStore.open(store)
    left = st.pending()
    assert 0 < len(left) < 12
    assert main(["sweep", str(spec), "--out", str(store), "--resume", "--json"]) == 0
    rep = json.loads(capsys.readouterr().out)
    assert rep["tasks_run"] == len(left) and rep["tasks_skipped"] == 12 - len(left)
    ref = run_sweep(parse_spec(heavy_doc), tmp_path / "ref.zarr", executor=InProcess(threads=1))
    assert ref.tasks == 12
    assert _values(store).identical(_values(tmp_path / "ref.zarr"))


def test_balancer_strength_axis_is_the_balanced_router(tmp_path):
    """A spec names a balancer and sweeps its strength: each cell is the balanced router at
    that multiple of it (same seed, same numbers); a selection scheme is refused."""
    from moebif.model.balancers import parse_balancers
    from moebif.sim.topk_router import simulate_topk_router

    doc = {
        "study": {"simulator": "topk_router"},
        "params": {"a": 6.0, "n_experts": 8, "batch": 256, "eta": 0.02, "steps": 1500},
        "axes": {"strength": [0.0, 3.0]},
        "run": {"replicas": 4, "seed": 5, "quantities": ["max_load", "collapsed"]},
    }
    doc["params"]["balancer"] = "aux:1"
    spec = parse_spec(doc)
    run_sweep(spec, tmp_path / "b.zarr", executor=InProcess(threads=1))
    ds = _values(tmp_path / "b.zarr")
    p = moebif.RouterParams(a=6.0, gamma=1.0, T=1.0, n_experts=8)
    for i, s in enumerate([0.0, 3.0]):
        common = dict(batch=256, eta=0.02, steps=1500, runs=4, seed=cell_seed(5, i))
        bal = parse_balancers("aux:1").scaled(s)
        run = simulate_topk_router(p, record_every=None, balancer=bal, **common)
        want = moebif.inclusion_probabilities(run.scores[0], 1.0, 1).max()
        assert float(ds["max_load"].isel(strength=i, replica=0)) == want
    # a = 6 lies in the metastable window of 8 experts; with aux:3 (collapse_a 6.4) no replica
    # collapses
    assert not bool(ds["collapsed"].isel(strength=1).any())
    # a selection scheme is refused, naming the key
    doc["params"]["balancer"] = "bias:1e-3"
    with pytest.raises(Exception, match="balancer"):
        parse_spec(doc)
