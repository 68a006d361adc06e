"""The `moebif` command's contract (SPEC section 4): JSON fields, exit code 2 on bad input."""

import json
import subprocess
import sys

import pytest

from moebif import RouterParams, equilibria, hysteresis_halfwidth


def test_theory_json_fields(cli):
    code, out, err = cli("theory", "--a", "3", "--gamma", "1", "--T", "1", "--h", "0.08", "--json")
    assert code == 0 and err == ""
    rep = json.loads(out)
    assert rep["params"] == {"a": 3.0, "gamma": 1.0, "T": 1.0, "h": 0.08, "n_experts": 2}
    assert rep["critical_a"] == 2.0 and rep["kappa"] == 1.5 and rep["regime"] == "bistable"
    assert rep["hysteresis_halfwidth"] == hysteresis_halfwidth(3.0, 1.0, 1.0)
    ref = equilibria(RouterParams(a=3, gamma=1, T=1, h=0.08))
    assert [e["y"] for e in rep["equilibria"]] == [e.y for e in ref]
    for e in rep["equilibria"]:
        assert set(e) >= {"y", "u", "stable", "eigenvalue"}
        assert isinstance(e["stable"], bool) and isinstance(e["u"], float)
    ys = [e["y"] for e in rep["equilibria"]]
    assert ys == sorted(ys)


@pytest.mark.parametrize(
    "a,h,expected", [(1.5, 0.0, "balanced"), (3.0, 1.0, "biased"), (3.0, -0.1, "bistable")]
)
def test_theory_regimes(cli, a, h, expected):
    code, out, _ = cli("theory", "--a", str(a), "--gamma", "1", "--T", "1", "--h", str(h), "--json")
    rep = json.loads(out)
    assert rep["regime"] == expected
    assert (rep["hysteresis_halfwidth"] == 0.0) == (a <= 2.0)


def test_theory_many_experts_json(cli):
    code, out, _ = cli(
        "theory",
        "--a",
        "3.5",
        "--gamma",
        "1",
        "--T",
        "1",
        "--experts",
        "4",
        "--json",
    )
    rep = json.loads(out)
    assert code == 0
    assert rep["critical_a"] == 4.0 and rep["kappa"] == 0.875
    assert 3.2 < rep["collapse_a"] < 3.25 and rep["regime"] == "metastable"
    assert rep["uniform_state_eigenvalues"]["contrast_multiplicity"] == 3


def test_theory_table_output(cli):
    code, out, _ = cli("theory", "--a", "4", "--gamma", "1", "--T", "1")
    assert code == 0 and "bistable" in out and "equilibria" in out


def test_fold_curve_json_and_csv(cli, tmp_path):
    code, out, _ = cli(
        "fold-curve",
        "--gamma",
        "1",
        "--T",
        "1",
        "--points",
        "5",
        "--q-max",
        "1",
        "--json",
    )
    rep = json.loads(out)
    assert code == 0 and len(rep["a"]) == 5 and rep["q"][2] == 0.0 and rep["a"][2] == 2.0
    f = tmp_path / "fold.csv"
    code, _, err = cli("fold-curve", "--gamma", "1", "--T", "1", "--csv", str(f))
    lines = f.read_text().splitlines()
    assert code == 0 and lines[0] == "q,a,h,y" and len(lines) == 202


@pytest.mark.parametrize(
    "args,name",
    [
        (["theory", "--a", "3", "--gamma", "1", "--T", "0"], "--T"),
        (["theory", "--a", "3", "--gamma", "-1", "--T", "1"], "--gamma"),
        (["theory", "--a", "3", "--gamma", "nan", "--T", "1"], "--gamma"),
        (["theory", "--a", "-3", "--gamma", "1", "--T", "1"], "--a"),
        (["theory", "--a", "x", "--gamma", "1", "--T", "1"], "--a"),
        (["theory", "--a", "3", "--gamma", "1", "--T", "1", "--h", "inf"], "--h"),
        (["theory", "--a", "3", "--gamma", "1", "--T", "1", "--experts", "1"], "--experts"),
        (["theory", "--a", "3", "--gamma", "1"], "--T"),
        (["theory", "--a", "3", "--gamma", "1", "--T", "1", "--bogus", "1"], "--bogus"),
        (["fold-curve", "--gamma", "1", "--T", "1", "--points", "1"], "--points"),
        (["fold-curve", "--gamma", "1", "--T", "1", "--q-max", "-1"], "--q-max"),
        (["fold-curve", "--gamma", "1", "--T", "1", "--csv", "/nonexistent/dir/f.csv"], "--csv"),
    ],
)
def test_bad_input_exits_2_with_one_line(cli, args, name):
    code, out, err = cli(*args)
    assert code == 2
    assert out == ""
    lines = err.strip().splitlines()
    assert len(lines) == 1 and name in lines[0] and "Traceback" not in err


def test_console_script_subprocess():
    """The installed entry point: version, exit code 2, no traceback, no torch/numba import."""
    r = subprocess.run(
        [sys.executable, "-m", "moebif.cli", "--version"], capture_output=True, text=True
    )
    assert r.returncode == 0 and r.stdout.startswith("moebif ")
    r = subprocess.run(
        [sys.executable, "-m", "moebif.cli", "theory", "--a", "1", "--gamma", "1", "--T", "-2"],
        capture_output=True,
        text=True,
    )
    assert r.returncode == 2 and r.stderr.count("\n") == 1 and "--T" in r.stderr
    code = (
        "import sys, moebif.cli as c; c.main(['theory','--a','3','--gamma','1','--T','1']);"
        "print(sorted(m for m in ('torch','numba','matplotlib') if m in sys.modules))"
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert r.returncode == 0 and r.stdout.strip().splitlines()[-1] == "[]"


def test_simulate_json_contract(cli, tmp_path):
    out = tmp_path / "sim.csv"
    code, stdout, _ = cli(
        "simulate",
        "--a",
        "3",
        "--gamma",
        "1",
        "--T",
        "1",
        "--h",
        "0.08",
        "--batch",
        "512",
        "--eta",
        "0.002",
        "--steps",
        "2000",
        "--runs",
        "8",
        "--seed",
        "1",
        "--json",
        "--out",
        str(out),
    )
    assert code == 0
    rep = json.loads(stdout)
    for key in (
        "t",
        "u_mean",
        "u_std",
        "u_meanfield",
        "final_u_mean",
        "final_u_std",
        "sup_error",
        "seconds",
    ):
        assert key in rep
    assert len(rep["t"]) == len(rep["u_mean"]) == len(rep["u_meanfield"])
    assert rep["sup_error"] == pytest.approx(
        max(abs(m - f) for m, f in zip(rep["u_mean"], rep["u_meanfield"], strict=True))
    )
    assert out.read_text().splitlines()[0] == "t,u_mean,u_std,u_meanfield"
    # same seed, same numbers
    code, again, _ = cli(
        "simulate",
        "--a",
        "3",
        "--gamma",
        "1",
        "--T",
        "1",
        "--h",
        "0.08",
        "--batch",
        "512",
        "--eta",
        "0.002",
        "--steps",
        "2000",
        "--runs",
        "8",
        "--seed",
        "1",
        "--json",
    )
    assert json.loads(again)["u_mean"] == rep["u_mean"]


def test_hysteresis_json_contract(cli):
    code, stdout, _ = cli(
        "hysteresis",
        "--a",
        "4",
        "--gamma",
        "1",
        "--T",
        "1",
        "--rate",
        "0.02",
        "--json",
    )
    rep = json.loads(stdout)
    assert code == 0
    for key in ("h_switch_up", "h_switch_down", "width", "predicted_width", "rate", "seconds"):
        assert key in rep
    assert rep["width"] == pytest.approx(rep["h_switch_up"] - rep["h_switch_down"])
    assert rep["predicted_width"] == pytest.approx(2 * hysteresis_halfwidth(4, 1, 1))


SIM = ["simulate", "--a", "3", "--gamma", "1", "--T", "1"]
SIM_OK = {"--batch": "16", "--eta": "0.01", "--steps": "10", "--runs": "2"}


@pytest.mark.parametrize(
    "option,value",
    [
        ("--eta", "0"),
        ("--eta", "nan"),
        ("--batch", "0"),
        ("--steps", "0"),
        ("--runs", "0"),
        ("--rho", "-1"),
        ("--seed", "-3"),
        ("--y0", "inf"),
    ],
)
def test_simulate_bad_input(cli, option, value):
    opts = {**SIM_OK, option: value}
    args = SIM + [x for kv in opts.items() for x in kv]
    code, out, err = cli(*args)
    assert code == 2 and out == "" and option in err and len(err.strip().splitlines()) == 1


def test_simulate_bad_out_file(cli, tmp_path):
    args = SIM + [x for kv in SIM_OK.items() for x in kv]
    code, _, err = cli(*args, "--out", str(tmp_path / "x.txt"))
    assert code == 2 and "--out" in err
    code, _, err = cli(*args, "--out", str(tmp_path / "missing" / "x.csv"))
    assert code == 2 and "--out" in err


@pytest.mark.parametrize(
    "args,argument",
    [
        (["theory", "--a", "3", "--gamma", "0", "--T", "1", "--json"], "--gamma"),
        (["theory", "--a", "x", "--gamma", "1", "--T", "1", "--json"], "--a"),
        (["theory", "--bogus", "--json"], "--bogus"),
    ],
)
def test_json_bad_input_is_a_json_error(cli, args, argument):
    code, out, err = cli(*args)
    assert code == 2 and err.startswith("moebif: error:") and err.count("\n") == 1
    rep = json.loads(out)
    assert rep["error"]["argument"] == argument and rep["error"]["message"]
    assert out.count("\n") == 1
