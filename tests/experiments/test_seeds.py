"""Seeds as a first-class option: `reproduce --seed K` and `--seeds S`, fragile claims."""

import json
import re
import shutil

import pytest

from moebif.experiments import REGISTRY, load_experiment
from moebif.experiments.report import claims_table, format_spread
from moebif.experiments.runner import (
    COST,
    aggregate_claims,
    experiment_config,
    experiment_seed,
    recheck,
    reproduce,
)

IDS = ["theory", "fig09"]


def test_default_seed_unchanged_and_derived_seeds_distinct():
    seen = set()
    for exp_id in REGISTRY:
        mod = load_experiment(exp_id)
        default = mod.Config().seed
        assert experiment_seed(exp_id, default) == default
        assert experiment_config(mod, True) == mod.quick()  # a plain run is today's run
        for base in (None, 0, 1, 12345):
            for index in range(4):
                if base is None and index == 0:
                    continue
                s = experiment_seed(exp_id, default, base=base, index=index)
                assert 0 <= s < 2**31 and s == experiment_seed(
                    exp_id, default, base=base, index=index
                )
                seen.add(s)
    # 16 experiments x (4 bases x 4 indices - 1): no two alike
    assert len(seen) == len(REGISTRY) * 15
    with pytest.raises(ValueError):
        experiment_seed("theory", 0, base=-1)


def test_aggregate_counts_fragile_and_spread():
    def claim(holds, measured, cid="c"):
        return {
            "id": cid,
            "experiment": "x",
            "statement": "s",
            "predicted": 1.0,
            "measured": measured,
            "tolerance": "t",
            "holds": holds,
        }

    per_seed = [
        [claim(True, {"v": 1.0, "w": [1, 2]}), claim(True, 5.0, "d"), claim(False, "a", "e")],
        [claim(False, {"v": 3.0, "w": [2, 2]}), claim(True, 5.0, "d"), claim(False, "b", "e")],
        [claim(True, {"v": None, "w": [3, 2]}), claim(True, 7.0, "d"), claim(False, "a", "e")],
    ]
    agg = {c["id"]: c for c in aggregate_claims(per_seed, [{"x": 10}, {"x": 11}, {"x": 12}])}
    c = agg["c"]
    assert c["holds"] is False and c["fragile"] is True and c["status"] == "fragile"
    assert c["fraction_holding"] == pytest.approx(2 / 3) and c["holds_at"] == [True, False, True]
    assert c["seeds"] == [10, 11, 12]
    assert c["spread"]["v"] == {"min": 1.0, "max": 3.0, "mean": 2.0, "sd": 2**0.5, "missing": 1}
    assert c["spread"]["w"][1]["sd"] == 0.0 and c["spread"]["w"][0]["max"] == 3.0
    assert agg["d"]["holds"] is True and agg["d"]["status"] == "holds"
    assert agg["e"]["status"] == "does not hold" and agg["e"]["spread"] == {
        "values": ["a", "b", "a"]
    }
    assert format_spread(agg["d"]["spread"]) == "5…7"
    # the terminal table marks the fragile claim
    from rich.console import Console

    con = Console(width=160, record=True)
    con.print(claims_table(list(agg.values())))
    text = con.export_text()
    assert re.search(r"c .*2/3 .*FRAGILE", text) and re.search(r"e .*0/3 .*NO", text)
    assert "1 fragile" in text


@pytest.fixture(scope="module")
def single(tmp_path_factory):
    out = tmp_path_factory.mktemp("single")
    reproduce(IDS, out=out, quick=True, show_progress=False)
    return out


@pytest.fixture(scope="module")
def two_seeds(tmp_path_factory):
    out = tmp_path_factory.mktemp("two")
    reproduce(IDS, out=out, quick=True, seeds=2, show_progress=False)
    return out


def test_seed_option_derives_every_seed(tmp_path, single):
    out = tmp_path / "k7"
    reproduce(IDS, out=out, quick=True, seed=7, show_progress=False)
    for exp_id in IDS:
        meta = json.loads((out / exp_id / "config.json").read_text())
        default = load_experiment(exp_id).Config().seed
        assert meta["seed"] == experiment_seed(exp_id, default, base=7) != default
        assert meta["config"]["seed"] == meta["seed"] and meta["base_seed"] == 7
    a = json.loads((single / "fig09" / "data.json").read_text())["final_abs_u_mean"]
    b = json.loads((out / "fig09" / "data.json").read_text())["final_abs_u_mean"]
    assert a != b  # another seed, other numbers
    # same K, same numbers; a run at another K is not mistaken for a finished one
    again = reproduce(IDS, out=out, quick=True, seed=7, show_progress=False)
    assert [o.status for o in again] == ["skipped", "skipped"]
    other = reproduce(["fig09"], out=out, quick=True, seed=8, show_progress=False)
    assert other[0].status == "done"


def test_seeds_run_layout_claims_and_report(two_seeds, single):
    out = two_seeds
    for j in (0, 1):
        for exp_id in IDS:
            assert json.loads((out / f"seed-{j}" / exp_id / "config.json").read_text())["complete"]
    # seed 0 is the single-seed run
    assert (out / "seed-0" / "fig09" / "claims.json").read_text() == (
        single / "fig09" / "claims.json"
    ).read_text()
    claims = json.loads((out / "claims.json").read_text())
    assert {c["experiment"] for c in claims} == set(IDS)
    for c in claims:
        assert len(c["holds_at"]) == 2 and len(c["measured"]) == 2 and len(c["seeds"]) == 2
        assert c["holds"] == all(c["holds_at"]) and c["fraction_holding"] in (0.0, 0.5, 1.0)
        assert c["seeds"][0] == load_experiment(c["experiment"]).Config().seed
    onset = next(c for c in claims if c["id"] == "fig09-onset")
    assert set(onset["spread"]["ratio"][0]) >= {"min", "max", "mean", "sd"}
    html = (out / "report.html").read_text()
    assert "2 seeds" in html and "seeds holding" in html and html.count("<img") == len(IDS)
    run = json.loads((out / "run.json").read_text())
    assert run["seeds"] == 2 and run["quick"] is True


def test_seeds_run_resumes_and_extends(two_seeds, tmp_path, cli):
    out = tmp_path / "run"
    shutil.copytree(two_seeds, out)
    r = cli("reproduce", "--quick", "--only", ",".join(IDS), "--seeds", 3, "--out", out)
    assert r.code == 0, r.err
    assert r.err.count("already complete, skipped") == 4  # seeds 0 and 1 kept
    assert "[theory] (seed 2) done" in r.err and "[fig09] (seed 2) done" in r.err
    assert "3/3" in r.out and "hold at all 3 seeds" in r.out
    claims = json.loads((out / "claims.json").read_text())
    assert all(len(c["holds_at"]) == 3 for c in claims)


def test_recheck_of_a_seeds_run_marks_a_claim_fragile(two_seeds, tmp_path, cli):
    out = tmp_path / "run"
    shutil.copytree(two_seeds, out)
    r = cli("reproduce", "--recheck", out)
    assert r.code == 0, r.err
    path = out / "seed-1" / "theory" / "data.json"
    data = json.loads(path.read_text())
    data["checks"]["prop6.1"]["max_deviation"] = 0.5
    path.write_text(json.dumps(data))
    r = cli("reproduce", "--recheck", out)
    assert r.code == 1 and "[theory] (seed 1) claim prop6.1: changed" in r.err
    assert "FRAGILE" in r.out
    claims = {c["id"]: c for c in json.loads((out / "claims.json").read_text())}
    assert claims["prop6.1"]["status"] == "fragile" and claims["prop6.1"]["holds_at"] == [
        True,
        False,
    ]
    html = (out / "report.html").read_text()
    assert 'class="fragile"' in html
    # the section listing the seeds at which a claim fails names prop6.1 and its failing seed
    section = html.split("Fragile claims and claims that do not hold", 1)[1].split("<h2", 1)[0]
    assert "prop6.1" in section and f"seed {claims['prop6.1']['seeds'][1]}:" in section
    assert f"seed {claims['prop6.1']['seeds'][0]}:" not in section
    outcomes = recheck(out)
    assert all(not o.changed for o in outcomes)


def test_order_and_jobs_never_change_a_result(tmp_path, single):
    """With several jobs the costliest experiments start first, each in its own worker process;
    with one job they run in this process. Neither the order nor the process changes a number."""
    assert COST["fig09"][0] > COST["theory"][0]  # with jobs, fig09 starts before theory
    out = tmp_path / "jobs"
    reproduce(IDS[::-1], out=out, quick=True, jobs=2, show_progress=False)
    for exp_id in IDS:
        for name in ("data.json", "claims.json"):
            a = (single / exp_id / name).read_text()
            assert a == (out / exp_id / name).read_text(), (exp_id, name)
    assert (single / "claims.json").read_text() == (out / "claims.json").read_text()


def test_every_experiment_has_a_cost():
    assert set(COST) == set(REGISTRY)
    assert all(0 < q < f for q, f in COST.values())


def test_bad_seed_options(cli, tmp_path):
    r = cli("reproduce", "--seeds", 0, "--out", tmp_path)
    assert r.code == 2 and "--seeds" in r.err and r.err.count("\n") == 1
    r = cli("reproduce", "--seed", -3, "--out", tmp_path)
    assert r.code == 2 and "--seed" in r.err and r.err.count("\n") == 1
    r = cli("reproduce", "--seed", "x", "--out", tmp_path)
    assert r.code == 2 and r.err.count("\n") == 1
