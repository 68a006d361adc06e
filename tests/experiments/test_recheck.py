"""Compute, check, draw: claims re-derived from the saved data alone (`reproduce --recheck`)."""

import dataclasses
import json

import pytest

from moebif.experiments import REGISTRY, load_experiment
from moebif.experiments.base import config_from_dict, config_to_dict, json_roundtrip
from moebif.experiments.runner import recheck, reproduce


@pytest.mark.parametrize("exp_id", list(REGISTRY))
def test_config_survives_config_json(exp_id):
    """The config saved in config.json rebuilds the very same frozen Config (tuples included)."""
    mod = load_experiment(exp_id)
    for cfg in (mod.Config(), mod.quick()):
        again = config_from_dict(mod.Config, json_roundtrip(config_to_dict(cfg)))
        assert again == cfg
        assert hash(again) == hash(cfg)  # every field is hashable again (lists became tuples)


def test_config_from_dict_ignores_dropped_and_defaults_new_fields():
    mod = load_experiment("theory")
    values = {**config_to_dict(mod.quick()), "field_from_an_old_version": 1}
    del values["a_max"]
    cfg = config_from_dict(mod.Config, values)
    assert cfg.random_points == mod.quick().random_points and cfg.a_max == mod.Config().a_max


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    out = tmp_path_factory.mktemp("finished")
    reproduce(["theory", "fig09"], out=out, quick=True, show_progress=False)
    return out


def _copy(src, dst):
    import shutil

    shutil.copytree(src, dst)
    return dst


def test_recheck_rederives_the_same_claims(finished, tmp_path, cli):
    out = _copy(finished, tmp_path / "run")
    before = (out / "claims.json").read_bytes()
    stamp = (out / "theory" / "data.json").stat().st_mtime_ns
    outcomes = recheck(out)
    assert {o.id for o in outcomes} == {"theory", "fig09"}
    assert all(o.ok and not o.changed for o in outcomes)
    assert (out / "claims.json").read_bytes() == before
    assert (out / "theory" / "data.json").stat().st_mtime_ns == stamp  # nothing recomputed
    r = cli("reproduce", "--recheck", str(out))
    assert r.code == 0, r.err
    assert "none changed" in r.err


def test_recheck_reports_a_changed_claim(finished, tmp_path, cli):
    """Tamper with the saved data: the claim computed from it changes, is reported, and the
    rewritten claims.json and report say it does not hold."""
    out = _copy(finished, tmp_path / "run")
    path = out / "theory" / "data.json"
    data = json.loads(path.read_text())
    data["checks"]["prop6.1"]["max_deviation"] = 0.5
    path.write_text(json.dumps(data))
    r = cli("reproduce", "--recheck", str(out))
    assert r.code == 1
    assert "[theory] claim prop6.1: changed" in r.err and "1 changed" in r.err
    claims = {c["id"]: c for c in json.loads((out / "claims.json").read_text())}
    assert claims["prop6.1"]["holds"] is False and claims["prop6.1"]["measured"] == 0.5
    assert claims["thm4.1"]["holds"] is True
    stored = json.loads((out / "theory" / "claims.json").read_text())
    assert [c for c in stored if c["id"] == "prop6.1"][0]["holds"] is False
    assert 'class="fail"' in (out / "report.html").read_text()
    # a second recheck finds the rewritten claims unchanged, but one does not hold: still 1
    r = cli("reproduce", "--recheck", str(out))
    assert r.code == 1 and "none changed" in r.err


def test_recheck_of_a_run_whose_data_lacks_what_claims_need(finished, tmp_path, cli):
    out = _copy(finished, tmp_path / "run")
    path = out / "fig09" / "data.json"
    data = json.loads(path.read_text())
    del data["T_onset"]
    path.write_text(json.dumps(data))
    r = cli("reproduce", "--recheck", str(out))
    assert r.code == 1
    assert "[fig09] cannot re-derive its claims: KeyError" in r.err
    assert "Traceback" not in r.err


def test_recheck_bad_folder(tmp_path, cli):
    for bad in (tmp_path / "missing", tmp_path):
        r = cli("reproduce", "--recheck", str(bad))
        assert r.code == 2 and "--recheck" in r.err and r.err.count("\n") == 1, r.err
    (tmp_path / "file").write_text("x")
    r = cli("reproduce", "--recheck", str(tmp_path / "file"))
    assert r.code == 2 and r.err.count("\n") == 1
    r = cli("reproduce", "--recheck", str(tmp_path), "--quick")
    assert r.code == 2 and "--recheck" in r.err and "--quick" in r.err


def test_claims_are_computed_from_the_saved_data(finished):
    """The claims in claims.json are the module's claims() of data.json and config.json."""
    for exp_id in ("theory", "fig09"):
        mod = load_experiment(exp_id)
        meta = json.loads((finished / exp_id / "config.json").read_text())
        data = json.loads((finished / exp_id / "data.json").read_text())
        cfg = config_from_dict(mod.Config, meta["config"])
        assert dataclasses.asdict(cfg) == dataclasses.asdict(mod.quick())
        derived = json_roundtrip(
            [{**c.to_dict(), "experiment": exp_id} for c in mod.claims(data, cfg)]
        )
        assert derived == json.loads((finished / exp_id / "claims.json").read_text())
