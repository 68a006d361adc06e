"""Quick variants of the hysteresis experiments (fig07, fig10, fig11): they run and their claims
hold; and `reproduce` survives being killed."""

import json
import os
import signal
import subprocess
import sys
import time

import pytest

from moebif.experiments import load_experiment
from moebif.experiments.runner import evaluate


@pytest.mark.parametrize("exp_id", ["fig07", "fig10", "fig11"])
def test_quick_variant_claims_hold(exp_id):
    mod = load_experiment(exp_id)
    cfg = mod.quick()
    res = evaluate(mod, cfg)
    assert res.claims
    for c in res.claims:
        assert c.holds, (c.id, c.predicted, c.measured, c.tolerance)
    fig = mod.plot(res.data, cfg)
    assert fig.axes
    import matplotlib.pyplot as plt

    plt.close(fig)


def test_killed_reproduce_resumes_without_recomputing(tmp_path):
    """Kill a run right after its first experiment finished; the re-run keeps that one and
    completes the rest."""
    out = tmp_path / "res"
    cmd = [
        sys.executable,
        "-m",
        "moebif.cli",
        "reproduce",
        "--quick",
        "--only",
        "theory,fig10",
        "--out",
        str(out),
        "--jobs",
        "1",
    ]
    proc = subprocess.Popen(
        cmd, stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True, start_new_session=True
    )
    deadline = time.time() + 120
    try:
        for line in proc.stderr:
            if line.startswith("[theory] done"):
                os.killpg(proc.pid, signal.SIGKILL)
                break
            assert time.time() < deadline
    finally:
        proc.wait(timeout=30)
    meta = json.loads((out / "theory" / "config.json").read_text())
    assert meta["complete"]
    assert not (out / "fig10" / "config.json").exists()
    stamp = (out / "theory" / "config.json").stat().st_mtime_ns

    again = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert again.returncode == 0, again.stderr
    assert "[theory] already complete, skipped" in again.stderr
    assert "[fig10] done" in again.stderr
    assert (out / "theory" / "config.json").stat().st_mtime_ns == stamp
    assert json.loads((out / "fig10" / "config.json").read_text())["complete"]
    assert not list(out.glob(".*partial*"))
    ids = {c["experiment"] for c in json.loads((out / "claims.json").read_text())}
    assert ids == {"theory", "fig10"}
