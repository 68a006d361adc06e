"""Router adapters and the device-buffer layout: every registered adapter implements the adapter
interface and reports its layout; the named slices of a router's buffer segment are disjoint and
cover it; a tiny model's routers are found by their family's adapter."""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from moebif.monitor.buffer import segment_layout  # noqa: E402
from moebif.monitor.forces import FORCE_FIELDS  # noqa: E402
from moebif.monitor.routers import ADAPTERS, RouterAdapter  # noqa: E402


def test_every_registered_adapter_implements_the_interface():
    names = [a.name for a in ADAPTERS]
    assert len(set(names)) == len(names)
    for a in ADAPTERS:
        assert isinstance(a, RouterAdapter)
        assert type(a).match is not RouterAdapter.match
        assert isinstance(a.layout, str) and a.layout
        assert a.match("x", torch.nn.Linear(4, 4), None, None) is None  # not a router
        assert a.inside("m.block").startswith("m.block.")


@pytest.mark.parametrize("n", [2, 8, 61])
def test_segment_layout_names_every_value_once(n):
    lay = segment_layout(n)
    owner = np.full(lay.size, -1)
    parts = {
        "invalid_low": lay.invalid_low,
        "unassigned": lay.unassigned,
        "counts": lay.counts,
        "skip": lay.skip,
        "invalid_high": lay.invalid_high,
        "importance": lay.importance,
        "logit_sums": lay.logit_sums,
        "logit_tokens": lay.logit_tokens,
        "forces": lay.forces,
    }
    for i, where in enumerate(parts.values()):
        idx = np.arange(lay.size)[where]
        assert (owner[idx] == -1).all()
        owner[idx] = i
    assert (owner >= 0).all() and lay.size == 3 * n + 5 + FORCE_FIELDS
    assert len(range(lay.size)[lay.counts]) == n and len(range(lay.size)[lay.forces]) == 5
    # the selection takes every index from invalid_low to invalid_high
    assert range(lay.size)[lay.selection] == range(lay.invalid_low, lay.invalid_high + 1)


def test_add_indices_puts_each_index_in_its_named_slot():
    from moebif.monitor.buffer import add_indices

    n = 4
    lay = segment_layout(n)
    seg = torch.zeros(lay.size, dtype=torch.float64)
    add_indices(seg, torch.tensor([-3, -1, 0, 2, 2, 4, 9]), lay)
    assert seg[lay.invalid_low] == 1 and seg[lay.unassigned] == 1
    assert seg[lay.counts].tolist() == [1, 0, 2, 0]
    assert seg[lay.skip] == 1 and seg[lay.invalid_high] == 1
    assert seg[lay.importance].sum() == 0


def test_a_tiny_models_routers_report_their_adapter():
    pytest.importorskip("transformers")
    from moebif.monitor.hooks import RouterMonitor
    from moebif.monitor.tiny import tiny_model

    mon = RouterMonitor(tiny_model("mixtral"), forces=False)
    lay = mon.layouts
    assert len(lay) == 2
    for d in lay.values():
        assert d["adapter"] == "named-router" and (d["n_experts"], d["top_k"]) == (8, 2)
        assert d["buffer"]["size"] == segment_layout(8).size
    offsets = sorted(d["buffer"]["offset"] for d in lay.values())
    assert offsets == [0, segment_layout(8).size]  # one buffer, one slice after the other
    mon.close()


def test_sinks_receive_each_steps_records(tmp_path):
    """A sink gets one record per router and step: the counts the monitor and the log hold."""
    pytest.importorskip("transformers")
    from moebif.monitor import read_log
    from moebif.monitor.hooks import RouterMonitor
    from moebif.monitor.sinks import ListSink, Sink
    from moebif.monitor.tiny import text_batches, tiny_model

    torch.set_num_threads(1)
    model = tiny_model("mixtral", seed=1).train()
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    sink = ListSink()
    assert isinstance(sink, Sink)
    mon = RouterMonitor(model, window=32, log=tmp_path / "log.jsonl", sinks=[sink])
    for x in text_batches(4, 2, 16, seed=2):
        loss = model(input_ids=x, labels=x).loss
        opt.zero_grad()
        loss.backward()
        opt.step()
        mon.step()
    mon.close()
    assert sink.closed and len(sink.records) == 4 * 2
    back = read_log(tmp_path / "log.jsonl")
    for label in mon.routers:
        mine = [r for r in sink.records if r.layer == label]
        assert [r.step for r in mine] == [0, 1, 2, 3]
        np.testing.assert_array_equal(np.stack([r.counts for r in mine]), mon.counts(label))
        np.testing.assert_array_equal(np.stack([r.counts for r in mine]), back.layers[label].counts)
        assert all(r.tokens == 2 * 16 and r.importance is not None for r in mine)
    assert sum(len(r.alarms) for r in sink.records) == len(mon.alarms)
    with pytest.raises(ValueError, match="sinks"):
        RouterMonitor(model, sinks=[object()])
