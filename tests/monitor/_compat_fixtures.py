"""Checkpoint fixtures of the monitor as released before the split of issue 22 (state format
``moebif.LayerMonitor/1`` and ``moebif.RouterMonitor/1``, which saved ``vars(self)``), with the
outputs that code gave when it continued from them.

``python -m tests.monitor._compat_fixtures`` rewrites ``tests/monitor/data/compat_*.json.gz``; it
was run once on the code of commit dc1f1e8 (before the split), and the files are kept as they were
written then: :mod:`tests.monitor.test_state_compat` checks that the current code loads those
checkpoints and continues to the same numbers. The inputs are regenerated from their seeds (a
checksum in each fixture says they are the same inputs)."""

from __future__ import annotations

import gzip
import hashlib
import json
from pathlib import Path

import numpy as np

DATA = Path(__file__).resolve().parent / "data"
LAYER_FIXTURE = DATA / "compat_layer_monitor_v1.json.gz"
ROUTER_FIXTURE = DATA / "compat_router_monitor_v1.json.gz"


def synthetic_run(n=6, k=2, steps=1600, batch=64, seed=11):
    """A top-k softmax router with feedback (its scores an EMA of its own loads), with a ramp of
    the feedback from step 800 (so the model-based rules have something to see): counts,
    soft importance and mean logits per step, and force-probe sums with a reinforcement that
    grows against a fixed restoring force (so the forecast resolves)."""
    rng = np.random.default_rng(seed)
    r = rng.normal(size=n) * 0.2
    C, P, S = (np.empty((steps, n)) for _ in range(3))
    F = np.empty((steps, 5))
    for t in range(steps):
        a = 0.4 if t < 800 else 0.4 + 0.6 * (t - 800) / (steps - 800)
        z = r + rng.normal(size=(batch, n))
        p = np.exp(z - z.max(axis=1, keepdims=True))
        p /= p.sum(axis=1, keepdims=True)
        C[t] = np.bincount(np.argpartition(-z, k - 1, axis=1)[:, :k].ravel(), minlength=n)
        P[t], S[t] = p.mean(axis=0), z.mean(axis=0)
        r = 0.97 * r + 0.03 * a * n * (C[t] / (k * batch) - 1.0 / n)
        d2 = 1.0 + 0.1 * rng.random()
        F[t] = (a * d2 * (1.0 + 0.2 * rng.normal()), -0.6 * d2, d2, 1.0, 0.6)
    return C, P, S, F


def checksum(*arrays) -> str:
    h = hashlib.sha256()
    for a in arrays:
        h.update(np.ascontiguousarray(np.asarray(a, dtype=np.float64)).tobytes())
    return h.hexdigest()[:16]


def outputs(mon) -> dict:
    """What a continued monitor is compared on: alarms, fits, forecasts, summary."""
    return {
        "alarms": [a.to_dict() for a in mon.alarms],
        "fits": [f.to_dict() for f in mon.fits],
        "forecast_history": mon.forecast_history(),
        "summary": mon.summary(),
    }


LAYER_CASES = {
    # fixed window, a fit pending on the worker at the cut (refit_lag 40)
    "fixed_pending": {"options": {"top_k": 2, "window": 256, "refit_lag": 40}, "cut": "pending"},
    # automatic window, cut mid-run
    "auto": {"options": {"top_k": 2}, "cut": 1000},
}


def _layer_fixture() -> dict:
    from moebif.monitor import LayerMonitor

    C, P, S, F = synthetic_run()
    out = {"inputs": {"generator": "synthetic_run()", "checksum": checksum(C, P, S, F)}}
    for name, case in LAYER_CASES.items():
        opts = case["options"]
        full = LayerMonitor(6, **opts)
        full.update_many(C, P, S, F)
        first = LayerMonitor(6, **opts)
        cut = None
        for i in range(C.shape[0]):
            first.update(C[i], P[i], S[i], F[i])
            if case["cut"] == "pending":
                if first._pending is not None and len(first.fits) >= 3:
                    cut = i + 1
                    break
            elif i + 1 == case["cut"]:
                cut = i + 1
                break
        state = json.loads(json.dumps(first.state_dict()))
        first.update_many(C[cut:], P[cut:], S[cut:], F[cut:])
        cont = outputs(first)
        assert json.dumps(cont) == json.dumps(outputs(full))  # resumed = uninterrupted
        out[name] = {"options": opts, "cut": cut, "state": state, "expected": cont}
    return out


def router_run(steps=80, cut=50):
    """Tiny Mixtral on real text, the aux loss flipped to -1 for steps 30-49 (a collapse to
    alarm about); returns the RouterMonitor's state at ``cut``, the rows each layer monitor was
    fed after it (exactly as fed), and the uninterrupted monitor."""
    import torch

    from moebif.monitor.hooks import RouterMonitor
    from moebif.monitor.tiny import text_batches, tiny_model

    torch.set_num_threads(1)
    batches = list(text_batches(steps, 4, 32, seed=7))
    model = tiny_model("mixtral", seed=3).train()
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    mon = RouterMonitor(model, window=32)
    rows: dict[str, list] = {label: [] for label in mon.monitors}
    state = None
    for i in range(steps):
        model.router_aux_loss_coef = -1.0 if 30 <= i < 50 else 0.1
        x = batches[i]
        loss = model(input_ids=x, labels=x).loss
        opt.zero_grad()
        loss.backward()
        opt.step()
        mon.step()
        if i + 1 == cut:
            state = json.loads(json.dumps(mon.state_dict()))
            for label, m in mon.monitors.items():
                m.update = _recording(m.update, rows[label])
    mon.close()
    return state, rows, mon


def _recording(update, sink):
    def rec(counts, importance=None, scores=None, forces=None):
        sink.append([_plain(counts), _plain(importance), _plain(scores), _plain(forces)])
        return update(counts, importance, scores, forces)

    return rec


def _plain(x):
    return None if x is None else np.asarray(x, dtype=float).tolist()


def _router_fixture() -> dict:
    state, rows, mon = router_run()
    return {
        "family": "mixtral",
        "seed": 3,
        "options": {"window": 32},
        "state": state,
        "rows": rows,
        "expected": {
            "alarms": [a.to_dict() for a in mon.alarms],
            "summary": mon.summary(),
            "step_index": mon.step_index,
        },
    }


def write(path: Path, obj: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with gzip.open(path, "wt", encoding="utf-8", compresslevel=9) as f:
        json.dump(obj, f, separators=(",", ":"))


def load(path: Path) -> dict:
    with gzip.open(path, "rt", encoding="utf-8") as f:
        return json.load(f)


if __name__ == "__main__":
    write(LAYER_FIXTURE, _layer_fixture())
    write(ROUTER_FIXTURE, _router_fixture())
    for p in (LAYER_FIXTURE, ROUTER_FIXTURE):
        print(p, p.stat().st_size, "bytes")
