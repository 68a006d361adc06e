"""The executors against each other, on a real dask.distributed LocalCluster with 2 worker
processes: the same numbers bit for bit, a worker killed mid-sweep, interrupt and resume."""

from __future__ import annotations

import os
import signal

import pytest
import xarray as xr

from moebif.sweep import (
    DaskExecutor,
    ExecutorError,
    InProcess,
    LocalProcesses,
    SweepStore,
    parse_spec,
    run_sweep,
)


def _values(path) -> xr.Dataset:
    return xr.open_zarr(path).load().drop_attrs()


@pytest.fixture(scope="module")
def reference(tmp_path_factory, heavy_doc_module):
    """The heavy sweep in-process (numba's own threads): the values every executor must give."""
    path = tmp_path_factory.mktemp("ref") / "ref.zarr"
    run_sweep(parse_spec(heavy_doc_module), path, executor=InProcess())
    return _values(path)


@pytest.fixture(scope="module")
def heavy_doc_module():
    import copy

    from .conftest import HEAVY

    return copy.deepcopy(HEAVY)


def test_dask_equals_in_process_bit_for_bit(tmp_path, dask_client, heavy_doc_module, reference):
    ex = DaskExecutor(client=dask_client)
    assert ex.workers == 2 and ex.threads == 1
    rep = run_sweep(parse_spec(heavy_doc_module), tmp_path / "d.zarr", executor=ex)
    assert rep.tasks == 12 and sorted(rep.tasks_run) == list(range(12))
    got = _values(tmp_path / "d.zarr")
    assert got.identical(reference)
    # both workers took part
    assert len(dask_client.run(os.getpid)) == 2


def test_local_processes_equal_in_process(tmp_path, heavy_doc_module, reference):
    with LocalProcesses(2) as ex:
        rep = run_sweep(parse_spec(heavy_doc_module), tmp_path / "p.zarr", executor=ex)
    assert rep.executor == "2 local processes" and len(rep.tasks_run) == 12
    assert _values(tmp_path / "p.zarr").identical(reference)


class _Interrupt(Exception):
    pass


def test_dask_interrupt_and_resume_recompute_no_finished_chunk(
    tmp_path, dask_client, heavy_doc_module, reference
):
    spec = parse_spec(heavy_doc_module)
    path = tmp_path / "r.zarr"
    first = []

    def interrupt(res):
        first.append(res.index)
        if len(first) == 4:
            raise _Interrupt

    with pytest.raises(_Interrupt):
        run_sweep(spec, path, executor=DaskExecutor(client=dask_client), on_result=interrupt)
    # the interrupted run's futures are cancelled: nothing keeps running on the cluster
    st = SweepStore.open(path)
    pending = st.pending()
    assert sorted(set(range(12)) - set(pending)) == sorted(first)
    rep = run_sweep(spec, path, executor=DaskExecutor(client=dask_client), resume=True)
    # the resumed run computed exactly the missing chunks, each once
    assert sorted(rep.tasks_run) == pending and len(rep.tasks_run) == 12 - 4
    assert rep.tasks_skipped == 4 and not set(rep.tasks_run) & set(first)
    assert _values(path).identical(reference)


def test_workers_with_other_versions_are_refused(dask_client, monkeypatch):
    import moebif._version

    # this process claims another moebif version than the one the workers import
    monkeypatch.setattr(moebif._version, "__version__", "0.0.0-other")
    with pytest.raises(ExecutorError, match="moebif"):
        DaskExecutor(client=dask_client)


def test_an_existing_scheduler_by_its_address(dask_client):
    """The address path (the connect probe reads the scheduler's first handshake byte, then Dask
    connects) reaches a real scheduler within the default timeout."""
    with DaskExecutor(dask_client.scheduler.address) as ex:
        assert ex.workers == 2


def test_cli_local_workers(tmp_path, capsys, small_doc):
    """`moebif sweep --local-workers 2` starts its own LocalCluster and gives the in-process
    numbers; the summary names the executor."""
    import json

    from moebif.cli import main

    from .conftest import write_toml

    spec = tmp_path / "s.toml"
    write_toml(spec, small_doc)
    code = main(
        ["sweep", str(spec), "--out", str(tmp_path / "d.zarr"), "--local-workers", "2", "--json"]
    )
    assert code == 0
    out = capsys.readouterr()
    rep = json.loads(out.out)
    assert rep["executor"].startswith("dask, 2 workers") and rep["tasks_run"] == 8
    assert rep["dashboard"].startswith("http://127.0.0.1:") and rep["dashboard"] in out.err
    run_sweep(parse_spec(small_doc), tmp_path / "i.zarr")
    assert _values(tmp_path / "d.zarr").identical(_values(tmp_path / "i.zarr"))


@pytest.mark.slow
def test_cli_unreachable_scheduler_exits_2(tmp_path, capsys, small_doc):
    from moebif.cli import main

    from .conftest import write_toml

    spec = tmp_path / "s.toml"
    write_toml(spec, small_doc)
    with pytest.raises(SystemExit) as e:
        main(
            [
                "sweep",
                str(spec),
                "--out",
                str(tmp_path / "x.zarr"),
                "--scheduler",
                "tcp://127.0.0.1:9",
            ]
        )
    assert e.value.code == 2
    assert capsys.readouterr().err.startswith("moebif: error: --scheduler: cannot connect")
    assert not (tmp_path / "x.zarr").exists()


def test_worker_killed_mid_sweep(tmp_path, dask_client, heavy_doc_module, reference):
    """SIGKILL a worker while it computes a task: the scheduler reruns its tasks on the other
    worker (or on the nanny's replacement) and the store ends complete and identical. (Last in
    this module: it kills a worker of the shared cluster.)"""
    client = dask_client
    pids = client.run(os.getpid)
    killed = {}

    def kill_busy_worker(res):
        if killed:
            return
        busy = {w: keys for w, keys in client.processing().items() if keys}
        if not busy:
            return
        addr = sorted(busy)[0]
        killed["addr"], killed["tasks"] = addr, list(busy[addr])
        os.kill(pids[addr], signal.SIGKILL)

    rep = run_sweep(
        parse_spec(heavy_doc_module),
        tmp_path / "k.zarr",
        executor=DaskExecutor(client=client),
        on_result=kill_busy_worker,
    )
    assert killed and killed["tasks"], "no worker was busy when the first chunk came back"
    assert killed["addr"] not in client.scheduler_info(n_workers=-1)["workers"]
    assert sorted(rep.tasks_run) == list(range(12))
    ds = xr.open_zarr(tmp_path / "k.zarr")
    assert bool(ds["done"].all())
    assert _values(tmp_path / "k.zarr").identical(reference)
