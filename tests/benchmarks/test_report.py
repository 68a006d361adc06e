"""The shared benchmark report (benchmarks/_report.py): table, JSON, exit code."""

import importlib.util
import json
import math
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parents[2] / "benchmarks" / "_report.py"


@pytest.fixture(scope="module")
def report_mod():
    spec = importlib.util.spec_from_file_location("bench_report", HERE)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _run(mod, path, value, *, same=True):
    rep = mod.Report("demo", "a demo benchmark", json_path=path)
    rep.table("cases", [("case", "<8"), ("seconds", ">9.3f"), ("n", ">4")], [["one", 0.5, 3]])
    rep.check("fast / slow", value, 2.0)
    rep.check("overhead", 0.1, 0.2, at_least=False)
    rep.check("latency", 120.0, 150.0, at_least=False, unit=" ms")
    rep.require("identical results", same)
    return rep.finish()


def test_meets_targets_exit_0_and_json(report_mod, tmp_path, capsys):
    path = tmp_path / "sub" / "demo.json"
    assert _run(report_mod, path, 3.0) == 0
    out = capsys.readouterr().out
    assert "a demo benchmark" in out and "one" in out and "0.500" in out and "ok" in out
    doc = json.loads(path.read_text())
    assert doc["benchmark"] == "demo" and doc["ok"] is True and doc["failed"] == []
    assert doc["tables"][0]["rows"] == [{"case": "one", "seconds": 0.5, "n": 3}]
    assert [c["ok"] for c in doc["checks"]] == [True, True, True, True]
    assert "120.00 ms   target <= 150 ms   ok" in out and doc["checks"][2]["unit"] == " ms"
    assert doc["checks"][0] == {
        "label": "fast / slow",
        "value": 3.0,
        "target": 2.0,
        "comparison": ">=",
        "ok": True,
    }


@pytest.mark.parametrize(("value", "same"), [(1.5, True), (math.nan, True), (3.0, False)])
def test_below_target_exits_nonzero(report_mod, tmp_path, capsys, value, same):
    path = tmp_path / "demo.json"
    assert _run(report_mod, path, value, same=same) == 1
    captured = capsys.readouterr()
    assert ("BELOW TARGET" in captured.out) or ("FAILED" in captured.out)
    assert "demo:" in captured.err
    doc = json.loads(path.read_text())  # written even when a check fails (NaN as null)
    assert doc["ok"] is False and doc["failed"]


def test_arguments_default_and_explicit_json(report_mod, tmp_path):
    assert report_mod.arguments("doc", []).json is None
    assert (
        report_mod.arguments("doc", ["--json", str(tmp_path / "x.json")]).json
        == tmp_path / "x.json"
    )
    rep = report_mod.Report("name", "t")
    assert rep.json_path == Path("bench-results") / "name.json"
    with pytest.raises(SystemExit) as e:
        report_mod.arguments("doc", ["--bogus"])
    assert e.value.code == 2


@pytest.mark.parametrize("path", sorted(HERE.parent.glob("bench_*.py")), ids=lambda p: p.name)
def test_every_benchmark_reports_through_report(path):
    """Each benchmark prints its table, writes JSON and sets its exit code through Report."""
    text = path.read_text()
    assert "from _report import" in text and "Report" in text
    assert "arguments(__doc__" in text and "Report(" in text
    assert "return report.finish()" in text and "sys.exit(main())" in text
