"""Every MoE family of the installed transformers: RouterMonitor finds its routers and counts,
expert for expert, what the model actually dispatched (tests/monitor/_families.py says how the
truth is read for each layout). Tiny random-init models built from configs, real text.

The default suite runs the families the issue named and one of each other layout; the whole list
runs with ``-m slow`` (about 4 minutes on 2 cores). ``test_family_list`` fails if a family of a
newer transformers does not build, so nothing is skipped silently.
"""

from __future__ import annotations

import json

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")

from moebif.monitor import read_log  # noqa: E402
from moebif.monitor.hooks import RouterMonitor  # noqa: E402
from moebif.monitor.routers import ADAPTERS  # noqa: E402
from moebif.monitor.routers import find_routes as _find  # noqa: E402
from moebif.monitor.tiny import text_batches  # noqa: E402

from . import _families as F  # noqa: E402

FAMILIES = [f for f in F.moe_families() if f not in F.SKIP]
# the six of the issue (scores-only router, a `Gate`, top-k gating with 1-D outputs, one-hot
# capacity mask, dense combine weights, product keys) and the common fused-experts layout with
# softmax (Mixtral) and with sigmoid scores, bias and groups (DeepSeek-V3), a skip slot (ZAYA),
# scores without indices (Llama-4)
DEFAULT = {
    "dbrx",
    "hunyuan_v1_moe",
    "jetmoe",
    "switch_transformers",
    "nllb_moe",
    "doge",
    "mixtral",
    "deepseek_v3",
    "zaya",
    "llama4",
}


def _params():
    return [pytest.param(f, marks=() if f in DEFAULT else pytest.mark.slow, id=f) for f in FAMILIES]


def test_family_list():
    """Every family folder of the installed transformers that mentions experts is either tested
    here or skipped with a reason; the issue's six are among the tested ones."""
    fams = F.moe_families()
    assert set(FAMILIES) | set(F.SKIP) == set(fams)
    assert {"dbrx", "hunyuan_v1_moe", "jetmoe", "switch_transformers", "nllb_moe", "doge"} <= set(
        FAMILIES
    )
    for fam, why in F.SKIP.items():
        print(f"skipped {fam}: {why}")


@pytest.mark.parametrize("family", _params())
def test_family_counts_equal_what_the_model_dispatched(family, tmp_path):
    model, cfg = F.build(family)
    routes = _find(model)
    assert routes, f"{family}: no router found"
    # each router was found by the adapter of its family, which reports its layout
    assert all(r.adapter in {a.name for a in ADAPTERS} for r in routes.values()), family
    truth = F.Dispatched(model, routes)
    log = tmp_path / "log.jsonl"
    mon = RouterMonitor(model, window=64, log=log)
    batches = list(text_batches(3, 2, 16, seed=1))
    for x in batches[:2]:  # two micro-batches in one step are summed
        F.forward(model, cfg, x)
    mon.step()
    model.eval()
    with torch.no_grad():
        F.forward(model, cfg, batches[2])  # eval passes are not counted
    mon.step()
    mon.close()
    truth.remove()
    assert mon.step_index == 1
    back = read_log(log)
    ran = 0
    for label, r in routes.items():
        want = truth.counts[label]
        if want.sum() == 0 and label not in back.layers:
            continue  # a router that got no tokens (Ernie-VL's vision experts on text)
        ran += 1
        got = mon.counts(label)
        assert got.shape == (1, r.n), label
        np.testing.assert_array_equal(got[0], want, err_msg=f"{family} {label}: {truth.how[label]}")
        lay = back.layers[label]
        np.testing.assert_array_equal(lay.counts[0], want)
        assert lay.n_experts == r.n and lay.top_k == r.k
        tokens = 2 * 2 * 16
        assert lay.tokens[0] == tokens, label
        # every assignment is an expert's or dropped (skip slot, -1, beyond capacity)
        assert want.sum() + lay.dropped[0] == r.k * tokens, label
        if truth.skipped[label]:
            assert lay.dropped[0] >= truth.skipped[label]
        if lay.importance is not None:
            p = lay.importance[0]
            assert p.shape == (r.n,) and (p >= 0).all() and abs(p.sum() - 1) < 1e-5
            assert back.header["layers"][label]["probabilities"] == r.scores
    assert ran >= 1
    print(
        json.dumps(
            {
                "family": family,
                "model": type(model).__name__,
                "routers": len(routes),
                "router_class": next(iter(routes.values())).router_class,
                "truth": next(iter(truth.how.values())),
            }
        )
    )
