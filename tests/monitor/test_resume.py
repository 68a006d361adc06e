"""Checkpoint and resume: a run SIGKILLed between checkpoints and resumed from the last one gives
the same alarms and, read back, the same log as the uninterrupted run (one header per segment;
the lines the killed run wrote after its checkpoint are replaced)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")

from moebif.monitor import read_log  # noqa: E402

from ._resume_run import run  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.slow  # 64 s; checkpoints stay in the default suite (tests/monitor/test_state.py)
def test_kill_and_resume_equals_an_uninterrupted_run(tmp_path):
    steps, every, kill_at = 100, 30, 75  # checkpoints at 30, 60, 90; killed after step 75
    full = run(tmp_path / "full", steps, every)
    killed = subprocess.run(
        [
            sys.executable,
            "-m",
            "tests.monitor._resume_run",
            str(tmp_path / "cut"),
            str(steps),
            str(every),
            "--kill-at",
            str(kill_at),
        ],
        cwd=ROOT,
        # this checkout's moebif (src/), not whichever one the environment has installed
        env={**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT / "src"), str(ROOT)])},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-2000:]
    cut_log = tmp_path / "cut" / "router_log.jsonl"
    assert read_log(cut_log).layers["model.layers.0.mlp.gate"].steps[-1] == kill_at
    resumed = run(tmp_path / "cut", steps, every, resume=True)
    # the alarms of the resumed monitor (restored + new) are the uninterrupted run's
    assert [a.to_dict() for a in resumed.alarms] == [a.to_dict() for a in full.alarms]
    assert any(a.kind in ("collapse-in-progress", "collapsed") for a in full.alarms)
    assert json.dumps(resumed.summary()) == json.dumps(full.summary())
    # the concatenated log reads back as the uninterrupted one
    a, b = read_log(tmp_path / "full" / "router_log.jsonl"), read_log(cut_log)
    assert [(s.segment, s.start_step) for s in b.segments] == [(0, 0), (1, 60)]
    assert any("replaced" in w for w in b.warnings)  # steps 60-75 of the killed run
    assert set(a.layers) == set(b.layers)
    for label in a.layers:
        x, y = a.layers[label], b.layers[label]
        np.testing.assert_array_equal(x.steps, np.arange(steps))
        np.testing.assert_array_equal(y.steps, x.steps)
        np.testing.assert_array_equal(y.counts, x.counts)
        np.testing.assert_array_equal(y.importance, x.importance)
    with (tmp_path / "cut" / "router_log.jsonl").open() as fh:
        headers = [line for line in fh if line.startswith('{"moebif_log"')]
    assert len(headers) == 2


def test_router_monitor_state_is_plain_and_checked(tmp_path):
    from moebif.monitor.hooks import RouterMonitor
    from moebif.monitor.tiny import text_batches, tiny_model

    model = tiny_model("olmoe").train()
    mon = RouterMonitor(model, window=32)
    for x in text_batches(3, 2, 16):
        model(input_ids=x)
        mon.step()
    state = mon.state_dict()
    json.dumps(state)  # plain values
    torch.save(state, tmp_path / "s.pt")
    state = torch.load(tmp_path / "s.pt", weights_only=True)
    other = RouterMonitor(tiny_model("olmoe"), window=32)
    other.load_state_dict(state)
    assert other.step_index == 3 and other.segment == 1
    with pytest.raises(ValueError, match="routers differ"):
        RouterMonitor(tiny_model("deepseek_v3"), window=32).load_state_dict(state)
    with pytest.raises(ValueError, match="not a RouterMonitor"):
        other.load_state_dict({"x": 1})
