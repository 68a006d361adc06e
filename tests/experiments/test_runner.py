"""`moebif reproduce`: outputs, claims, skip-if-complete, bad arguments."""

import json

import pytest

from moebif.experiments import REGISTRY, load_experiment
from moebif.experiments.runner import is_complete, reproduce, run_one


def test_theory_quick_outputs_and_claims(tmp_path):
    out = tmp_path / "res"
    out.mkdir()
    res = run_one("theory", True, str(out))
    d = out / "theory"
    for f in ("figure.png", "figure.svg", "data.json", "claims.json", "config.json"):
        assert (d / f).stat().st_size > 0
    meta = json.loads((d / "config.json").read_text())
    assert meta["complete"] and meta["quick"] and meta["versions"]["moebif"]
    claims = res["claims"]
    ids = {c["id"] for c in claims}
    assert {"thm4.1", "thm5.1-folds", "thm5.1-count", "prop6.1", "eq21-vs-eq16", "eq9-10"} <= ids
    for c in claims:
        assert set(c) >= {"id", "statement", "predicted", "measured", "tolerance", "holds"}
        assert c["holds"], c
    assert is_complete(out, "theory", quick=True)
    assert not is_complete(out, "theory", quick=False)
    assert not list(out.glob(".*partial*"))  # no temporary folders left behind


def test_reproduce_skips_complete_and_writes_report(tmp_path):
    out = tmp_path / "r"
    first = reproduce(["theory"], out=out, quick=True, show_progress=False)
    assert [o.status for o in first] == ["done"]
    stamp = (out / "theory" / "config.json").stat().st_mtime_ns
    second = reproduce(["theory"], out=out, quick=True, show_progress=False)
    assert [o.status for o in second] == ["skipped"]
    assert (out / "theory" / "config.json").stat().st_mtime_ns == stamp
    assert second[0].claims == first[0].claims
    html = (out / "report.html").read_text()
    assert "claims hold" in html and "data:image/png;base64," in html
    claims = json.loads((out / "claims.json").read_text())
    assert len(claims) == len(first[0].claims)
    forced = reproduce(["theory"], out=out, quick=True, force=True, show_progress=False)
    assert forced[0].status == "done"


@pytest.mark.parametrize("exp_id", list(REGISTRY))
def test_every_experiment_has_the_interface(exp_id):
    mod = load_experiment(exp_id)
    assert mod.ID == exp_id and mod.TITLE and mod.PAPER
    assert callable(mod.run) and callable(mod.claims) and callable(mod.plot)
    assert type(mod.quick()) is mod.Config


def test_cli_unknown_id_and_unwritable_out(cli, tmp_path):
    code, _, err = cli("reproduce", "--only", "theory,fig99", "--out", str(tmp_path))
    assert code == 2 and "--only" in err and "fig99" in err and err.count("\n") == 1
    blocker = tmp_path / "file"
    blocker.write_text("x")
    code, _, err = cli("reproduce", "--out", str(blocker / "sub"))
    assert code == 2 and "--out" in err and err.count("\n") == 1
    code, _, err = cli("reproduce", "--jobs", "0", "--out", str(tmp_path))
    assert code == 2 and "--jobs" in err
