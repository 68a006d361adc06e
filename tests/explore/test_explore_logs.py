"""Monitor logs in the explorer: one adapter reads diagnose's JSON and router logs, re-runs the
monitor for the kappa_hat path, and bad files are one clear error (exit 2 from the command, a
400 from the server)."""

import contextlib
import io
import json
import math
import re
import shutil
import subprocess
import sys
import time
import urllib.request

import numpy as np
import pytest

from moebif import RouterParams, simulate_batch_router
from moebif.monitor import LayerMonitor, LogError, read_log, write_log

N, B, S = 4, 256, 6000


@pytest.fixture(scope="module")
def router_log(tmp_path_factory):
    """Two layers of a 4-expert router: kappa = 0.7 (balanced) and 1.3 (collapses)."""
    folder = tmp_path_factory.mktemp("log")
    counts = {}
    for name, kappa, seed in (("0", 0.7, 9), ("1", 1.3, 10)):
        p = RouterParams(a=kappa * N, gamma=1.0, T=1.0, n_experts=N)
        run = simulate_batch_router(p, batch=B, eta=0.01, steps=S - 1, runs=1, seed=seed)
        counts[name] = np.rint(run.u_hat[0] * B)
    path = folder / "router_log.npz"
    write_log(path, np.arange(S), counts)
    return path, counts


@pytest.fixture(scope="module")
def diagnosed(router_log, tmp_path_factory):
    from moebif.cli import main

    out = tmp_path_factory.mktemp("diag")
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        assert main(["diagnose", str(router_log[0]), "--out", str(out), "--json"]) == 0
    (out / "stdout.json").write_text(buf.getvalue())
    return out


def test_diagnose_json_gives_diagnoses_fits_and_alarms(diagnosed):
    from moebif.explore import read_monitor_log

    summary = json.loads((diagnosed / "diagnose.json").read_text())
    for source in ("diagnose.json", "stdout.json"):
        log = read_monitor_log(diagnosed / source)
        assert log.kind == "diagnose" and [x.name for x in log.layers] == ["0", "1"]
        for layer, s in zip(log.layers, summary["layers"], strict=True):
            assert (layer.n_experts, layer.top_k, layer.window) == (N, 1, s["window"])
            assert "re-computed" in layer.note
            assert len(layer.fits) > 3
            # the path ends at diagnose's own last estimate: same window, same fits
            assert layer.fits[-1]["kappa"] == s["estimate"]["kappa"]
            assert layer.fits[-1]["kappa_hi"] == s["estimate"]["kappa_hi"]
            assert [a["kind"] for a in layer.alarms] == [a["kind"] for a in s["alarms"]]
            assert [a["step"] for a in layer.alarms] == [a["step"] - 1 for a in s["alarms"]]
    balanced, collapsed = log.layers
    assert abs(balanced.fits[-1]["kappa"] - 0.7) < 0.15
    assert "collapsed" in {a["kind"] for a in collapsed.alarms}


def test_diagnose_json_without_its_router_log_shows_the_last_estimate(diagnosed, tmp_path):
    from moebif.explore import read_monitor_log

    shutil.copy(diagnosed / "diagnose.json", tmp_path / "diagnose.json")
    obj = json.loads((tmp_path / "diagnose.json").read_text())
    obj["log"] = str(tmp_path / "moved_away.npz")
    (tmp_path / "diagnose.json").write_text(json.dumps(obj))
    log = read_monitor_log(tmp_path / "diagnose.json")
    for layer, s in zip(log.layers, obj["layers"], strict=True):
        assert "only the last estimate" in layer.note and "moved_away.npz" in layer.note
        last = s["estimate"]["kappa"]  # None when the monitor left it unresolved
        assert [f["kappa"] for f in layer.fits] == ([] if last is None else [last])
        assert layer.alarms == s["alarms"]


def test_router_log_runs_the_monitor(router_log):
    from moebif.explore import read_monitor_log

    path, counts = router_log
    log = read_monitor_log(path, window=2048)
    assert log.kind == "router-log"
    for layer in log.layers:
        assert layer.window == 2048
        mon = LayerMonitor(N, window=2048)
        mon.update_many(counts[layer.name])
        assert [f["kappa"] for f in layer.fits] == [
            f.kappa if math.isfinite(f.kappa) else None for f in mon.fits
        ]
        assert [f["step"] for f in layer.fits] == [f.step - 1 for f in mon.fits]
        assert [a["kind"] for a in layer.alarms] == [a.kind for a in mon.alarms]
    assert "window of 2048 steps" in log.layers[0].note


@pytest.mark.parametrize(
    "name,text,msg",
    [
        ("missing.csv", None, "no such file"),
        ("bad.json", '{"layers": [', "line 1, column 13: invalid JSON"),
        ("list.json", "[1, 2]", "expected a JSON object"),
        ("other.json", '{"a": 1}', "key layers"),
        ("alarms.json", '{"layers": [{"layer": "0", "n_experts": 4, "alarms": [3]}]}', "alarms[0]"),
        ("bad.csv", "step,e0,e1\n0,1,x\n", "line 2, column e1: not a number"),
        ("short.csv", "step,e0,e1\n0,1,2\n", "need >= 64 steps"),
        ("log.txt", "hello", "unknown format"),
    ],
)
def test_unreadable_logs_are_one_clear_error(tmp_path, name, text, msg):
    from moebif.explore import read_monitor_log

    path = tmp_path / name
    if text is not None:
        path.write_text(text)
    with pytest.raises(LogError, match=re.escape(msg)) as e:
        read_monitor_log(path)
    assert name in str(e.value) and "\n" not in str(e.value)


def test_server_serves_and_exports_the_monitor_view(diagnosed):
    from starlette.testclient import TestClient

    from moebif.explore import read_monitor_log
    from moebif.explore.server import create_app

    log = read_monitor_log(diagnosed / "diagnose.json")
    with TestClient(create_app(monitor=log, warm_up=False), base_url="http://127.0.0.1") as c:
        meta = c.get("/api/meta").json()["monitor"]
        assert [(x["name"], x["N"], x["k"]) for x in meta["layers"]] == [("0", 4, 1), ("1", 4, 1)]
        m = c.get("/api/monitor").json()
        assert m == json.loads(json.dumps(log.to_dict()))
        r = c.get("/api/export", params={"view": "monitor", "format": "csv"})
        tables = {row.split(",")[0] for row in r.text.splitlines()[1:]}
        want = {f"{x.name}_fits" for x in log.layers}
        want |= {f"{x.name}_alarms" for x in log.layers if x.alarms}  # no rows, no table
        assert tables == want and "1_alarms" in want


def test_uploading_a_log(router_log):
    from starlette.testclient import TestClient

    from moebif.explore.server import create_app

    post = {"x-moebif": "1"}
    with TestClient(create_app(warm_up=False), base_url="http://127.0.0.1") as c:
        assert c.get("/api/monitor").status_code == 404
        r = c.post(
            "/api/monitor", params={"name": "mine.csv"}, content=b"step,e0\n1,2\n", headers=post
        )
        assert r.status_code == 400
        assert r.json()["error"] == "log: mine.csv: line 1: need >= 2 expert columns, got 1"
        r = c.post("/api/monitor", params={"name": "x.npz"}, content=b"\x00garbage", headers=post)
        assert r.status_code == 400 and r.json()["error"].startswith("log: x.npz: not a readable")
        assert c.post("/api/monitor", content=b"", headers={}).status_code == 403
        data = router_log[0].read_bytes()
        r = c.post("/api/monitor", params={"name": "run.npz"}, content=data, headers=post)
        assert r.status_code == 200 and r.json()["source"] == "run.npz"
        assert len(c.get("/api/monitor").json()["layers"]) == 2


MAIN = [sys.executable, "-c", "import sys; from moebif.cli import main; sys.exit(main())"]


@pytest.mark.parametrize(
    "args,option",
    [
        (["--log", "does/not/exist.csv"], "--log"),
        (["--log", "BAD"], "--log"),
        (["--top-k", "0"], "--top-k"),
        (["--port", "70000"], "--port"),
    ],
)
def test_explore_bad_arguments_exit_2_with_one_line(tmp_path, args, option):
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    args = [str(bad) if a == "BAD" else a for a in args]
    r = subprocess.run([*MAIN, "explore", *args], capture_output=True, text=True, timeout=60)
    assert r.returncode == 2, r
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and option in lines[0] and "Traceback" not in r.stderr


def test_explore_serves_on_the_loopback_and_prints_the_url(diagnosed):
    proc = subprocess.Popen(
        [*MAIN, "explore", "--port", "0", "--log", str(diagnosed / "diagnose.json")],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        line = proc.stdout.readline()
        m = re.search(r"http://127\.0\.0\.1:(\d+)/", line)
        assert m, line
        url = m.group(0)
        for _ in range(100):  # the URL is printed just before uvicorn starts
            try:
                meta = json.load(urllib.request.urlopen(url + "api/meta", timeout=5))
                break
            except OSError:
                time.sleep(0.05)
        assert len(meta["monitor"]["layers"]) == 2
        # the port it took is not open on another interface than the loopback
        import socket

        with socket.socket() as s:
            s.bind(("0.0.0.0", 0))
            host = socket.gethostbyname(socket.gethostname())
        if not host.startswith("127."):
            with pytest.raises(OSError), socket.create_connection((host, int(m.group(1))), 2):
                pass
        # the same port is taken now: a second server fails with exit 2 naming --port
        r = subprocess.run([*MAIN, "explore", "--port", m.group(1)], capture_output=True, text=True)
        assert r.returncode == 2 and "--port" in r.stderr and "in use" in r.stderr.lower()
    finally:
        proc.terminate()
        proc.wait(timeout=20)


def _logit_router_log(path, n=6, k=2, steps=1600, batch=64, seed=11):
    """A top-k softmax router whose scores are an EMA of its own loads (feedback 0.6 of the
    balancing strength), logged with its soft importance and mean logits at step numbers
    100, 102, ...: the monitor's estimate comes from the logits."""
    rng = np.random.default_rng(seed)
    r = rng.normal(size=n) * 0.2
    C, P, L = (np.empty((steps, n)) for _ in range(3))
    for t in range(steps):
        z = r + rng.normal(size=(batch, n))
        p = np.exp(z - z.max(axis=1, keepdims=True))
        p /= p.sum(axis=1, keepdims=True)
        C[t] = np.bincount(np.argpartition(-z, k - 1, axis=1)[:, :k].ravel(), minlength=n)
        P[t], L[t] = p.mean(axis=0), z.mean(axis=0)
        r = 0.97 * r + 0.03 * 0.4 * n * (C[t] / (k * batch) - 1.0 / n)
    steps_logged = 100 + 2 * np.arange(steps)
    write_log(path, steps_logged, {"g": C}, importance={"g": P}, scores={"g": L}, top_k=k)
    return steps_logged


def test_diagnose_and_the_explorer_show_the_same_numbers(tmp_path):
    """The CLI and the explorer call one pipeline (moebif.monitor.diagnose): on a log with the
    router's logits, the explorer's kappa_hat path is the logits fit diagnose reports (not a
    loads fit of other settings), with the same alarms at the same log steps."""
    from moebif.cli import main
    from moebif.explore import read_monitor_log
    from moebif.monitor import diagnose

    log = tmp_path / "router_log.jsonl"
    logged = _logit_router_log(log)
    with contextlib.redirect_stdout(io.StringIO()):
        args = ["diagnose", str(log), "--out", str(tmp_path / "d"), "--window", "256", "--json"]
        assert main(args) == 0
    summary = json.loads((tmp_path / "d" / "diagnose.json").read_text())["layers"][0]
    lib = diagnose(log, window=256).layers[0]  # an independent run of the library function
    fits = list(lib.monitor.fits)
    assert len(fits) > 3 and sum(f.source == "logits" for f in fits) >= 3
    for source, view in (
        ("diagnose.json", read_monitor_log(tmp_path / "d" / "diagnose.json").layers[0]),
        ("router log", read_monitor_log(log, window=256).layers[0]),
    ):
        assert [f["kappa"] for f in view.fits] == [
            f.kappa if math.isfinite(f.kappa) else None for f in fits
        ], source
        assert [f["step"] for f in view.fits] == [int(logged[f.step - 1]) for f in fits]
        last = view.fits[-1]
        est = summary["estimate"]
        assert (last["kappa"], last["kappa_lo"], last["kappa_hi"]) == (
            est["kappa"],
            est["kappa_lo"],
            est["kappa_hi"],
        )
        assert [(a["kind"], a["message"]) for a in view.alarms] == [
            (a["kind"], a["message"]) for a in summary["alarms"]
        ]
        assert [a["step"] for a in view.alarms] == [
            int(logged[a["step"] - 1]) for a in summary["alarms"]
        ]
        assert view.window == summary["window"]
    # a loads-only monitor (what the explorer ran before) reads another kappa_hat
    loads_only = LayerMonitor(6, top_k=2, window=256)
    loads_only.update_many(read_log(log).layers["g"].counts)
    assert [f.kappa for f in loads_only.fits] != [f.kappa for f in fits]
