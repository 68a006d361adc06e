"""Spec parsing and checking: every bad entry is reported by its key before anything runs."""

from __future__ import annotations

import json

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from moebif.cli import main
from moebif.sweep import SpecError, cell_seed, parse_spec
from moebif.sweep.spec import chunk_shape

from .conftest import write_toml


def _err(doc) -> SpecError:
    with pytest.raises(SpecError) as e:
        parse_spec(doc)
    return e.value


def test_ranges_lists_and_defaults(small_doc):
    doc = small_doc
    doc["axes"] = {
        "T": {"start": 0.5, "stop": 3.0, "num": 4, "log": True},
        "gamma": {"start": 0.5, "stop": 2.0, "step": 0.5},
        "batch": [64, 128.0],
    }
    del doc["params"]["batch"]
    spec = parse_spec(doc)
    np.testing.assert_array_equal(spec.axes["T"], np.geomspace(0.5, 3.0, 4))
    np.testing.assert_array_equal(spec.axes["gamma"], [0.5, 1.0, 1.5, 2.0])
    assert spec.axes["batch"].dtype == np.int64 and spec.axes["batch"].tolist() == [64, 128]
    assert spec.shape == (4, 4, 2) and spec.n_cells == 32
    # defaults of the registry are resolved into the stored spec
    assert spec.params["h"] == 0.0 and spec.params["n_experts"] == 2 and spec.params["rho"] == 0.0
    c = spec.canonical()
    assert c["study"] == {"simulator": "batch_router", "name": "small"}
    assert json.loads(json.dumps(c)) == c
    # the cells run in C order over the axes as written
    v = spec.cell_values(1)
    assert (v["T"], v["gamma"], v["batch"]) == (0.5, 0.5, 128)


@pytest.mark.parametrize(
    "edit,key,words",
    [
        (lambda d: d["study"].update(simulator="nope"), "study.simulator", "unknown simulator"),
        (lambda d: d["study"].update(experiment="fig08"), "study", "exactly one"),
        (lambda d: d.update(study={"experiment": "fig99"}), "study.experiment", "unknown"),
        (lambda d: d.update(study={"experiment": "fig03"}), "study.experiment", "no cell"),
        (
            lambda d: d["run"].update(quantities=["max_load", "nope"]),
            "run.quantities[1]",
            "unknown",
        ),
        (lambda d: d["run"].update(quantities=[]), "run.quantities", "non-empty"),
        (lambda d: d["run"].pop("quantities"), "run.quantities", "list what"),
        (lambda d: d["run"].update(replicas=0), "run.replicas", ">= 1"),
        (lambda d: d["run"].update(seed=-1), "run.seed", ">= 0"),
        (lambda d: d["run"].update(chunk=3), "run.chunk", "unknown key"),
        (lambda d: d["axes"].update(T=[]), "axes.T", "empty axis"),
        (lambda d: d["axes"].update(T={"start": 1, "stop": 2, "num": 0}), "axes.T", "empty"),
        (lambda d: d["axes"].update(T=[1.0, 1.0]), "axes.T", "duplicate"),
        (lambda d: d["axes"].update(T=[1.0, -1.0]), "axes.T[1]", "> 0"),
        (lambda d: d["axes"].update(T={"start": 1, "num": 3}), "axes.T", "start and stop"),
        (
            lambda d: d["axes"].update(T={"start": -1, "stop": 2, "num": 3, "log": True}),
            "axes.T",
            "log range",
        ),
        (
            lambda d: d["axes"].update(T={"start": 1, "stop": 2, "num": 3, "stp": 1}),
            "axes.T.stp",
            "unknown range key",
        ),
        (lambda d: d["axes"].update(nope=[1.0]), "axes.nope", "unknown parameter"),
        (lambda d: d["axes"].update(a=[1.0]), "axes.a", "also set in [params]"),
        (lambda d: d.update(axes={}), "axes", "at least one axis"),
        (lambda d: d["params"].update(eta=-0.1), "params.eta", "> 0"),
        (lambda d: d["params"].update(steps=1.5), "params.steps", "integer"),
        (lambda d: d["params"].update(batch="big"), "params.batch", "number"),
        (lambda d: d["params"].pop("a"), "params.a", "required"),
        (lambda d: d["params"].update(bogus=1), "params.bogus", "unknown parameter"),
        (lambda d: d.update(extra={}), "extra", "unknown table"),
        # a combination that is invalid in one cell only: eta * gamma >= 2 at gamma = 150
        (lambda d: d["axes"].update(gamma=[1.0, 150.0]), "params.eta", "eta * gamma"),
        (
            lambda d: d["params"].update(eta=0.5) or d["axes"].update(gamma=[1.0, 4.0]),
            "params.eta",
            "gamma=4.0",
        ),
    ],
)
def test_bad_specs_name_the_key(small_doc, edit, key, words):
    edit(small_doc)
    e = _err(small_doc)
    assert e.key == key, str(e)
    assert words in str(e)


def test_cross_checks_of_other_studies():
    base = {"run": {"replicas": 2, "quantities": ["max_load"]}}
    doc = base | {
        "study": {"simulator": "topk_router"},
        "params": {"a": 3.0, "n_experts": 4},
        "axes": {"top_k": [1, 4]},
    }
    e = _err(doc)
    assert e.key == "axes.top_k" and "n_experts" in str(e)
    doc = base | {
        "study": {"simulator": "topk_router"},
        "params": {"a": 3.0, "n_experts": 4},
        "axes": {"T": [1.0]},
    }
    doc["run"] = {"replicas": 2, "quantities": ["hit_time"]}
    assert _err(doc).key == "run.quantities[0]"
    doc = {
        "study": {"simulator": "feedback_hysteresis"},
        "params": {"n_experts": 4, "a_low": 5.0, "a_high": 4.0, "threshold": 0.5},
        "axes": {"T": [1.0]},
        "run": {"replicas": 2, "quantities": ["a_switch_up"]},
    }
    assert _err(doc).key == "params.a_high"
    doc["params"].update(a_low=1.0, threshold=0.1)
    assert _err(doc).key == "params.threshold"


def test_cell_seeds_are_seedsequence_spawns():
    kids = np.random.SeedSequence(11).spawn(5)
    for i, kid in enumerate(kids):
        assert cell_seed(11, i) == int(kid.generate_state(1, np.uint64)[0])
    assert len({cell_seed(11, i) for i in range(1000)}) == 1000


@settings(max_examples=60, deadline=None)
@given(
    shape=st.lists(st.integers(1, 7), min_size=1, max_size=4).map(tuple),
    cells=st.integers(1, 60),
)
def test_chunks_tile_the_grid(shape, cells):
    ch = chunk_shape(shape, cells)
    assert len(ch) == len(shape)
    assert all(1 <= c <= n for c, n in zip(ch, shape, strict=True))
    assert int(np.prod(ch)) <= max(1, cells)
    # the last axes are filled first: an axis is split only when all later ones are whole
    for i in range(len(shape) - 1):
        if ch[i] > 1:
            assert all(c == n for c, n in zip(ch[i + 1 :], shape[i + 1 :], strict=True))


def test_task_size_follows_the_cost_estimate(small_doc):
    del small_doc["run"]["cells_per_task"]
    small_doc["run"]["task_seconds"] = 0.0012
    spec = parse_spec(small_doc)
    per_cell = spec.cell_cost().mean()  # 6 replicas x 2500 steps / 1.2e7 = 1.25 ms
    assert per_cell == pytest.approx(6 * 2500 / 1.2e7)
    assert spec.chunks() == (1, 1)
    small_doc["run"]["task_seconds"] = 1.0
    assert parse_spec(small_doc).chunks() == (4, 3)


def test_cli_bad_spec_exits_2_before_anything(tmp_path, capsys, small_doc):
    small_doc["axes"]["T"] = []
    spec = tmp_path / "bad.toml"
    write_toml(spec, small_doc)
    out = tmp_path / "s.zarr"
    with pytest.raises(SystemExit) as e:
        main(["sweep", str(spec), "--out", str(out)])
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("moebif: error: axes.T: empty axis") and err.count("\n") == 1
    assert not out.exists()


@pytest.mark.parametrize(
    "args,option",
    [
        (["--scheduler", "tcp://127.0.0.1:1", "--local-workers", "2"], "--local-workers"),
        (["--local-workers", "0"], "--local-workers"),
        (["--jobs", "0"], "--jobs"),
        (["--max-cells", "0"], "--max-cells"),
    ],
)
def test_cli_bad_options_exit_2(tmp_path, capsys, small_doc, args, option):
    spec = tmp_path / "s.toml"
    write_toml(spec, small_doc)
    with pytest.raises(SystemExit) as e:
        main(["sweep", str(spec), "--out", str(tmp_path / "s.zarr"), *args])
    assert e.value.code == 2
    assert capsys.readouterr().err.startswith(f"moebif: error: {option}:")


def test_cli_not_toml_and_dry_run(tmp_path, capsys, small_doc):
    bad = tmp_path / "x.toml"
    bad.write_text("[study\n")
    with pytest.raises(SystemExit):
        main(["sweep", str(bad)])
    assert capsys.readouterr().err.startswith("moebif: error: spec: not valid TOML")
    spec = tmp_path / "s.toml"
    write_toml(spec, small_doc)
    assert main(["sweep", str(spec), "--out", str(tmp_path / "s.zarr"), "--dry-run", "--json"]) == 0
    plan = json.loads(capsys.readouterr().out)
    assert plan["cells"] == 12 and plan["tasks"] == 8 and plan["chunks"] == {"T": 1, "gamma": 2}
    assert not (tmp_path / "s.zarr").exists()
