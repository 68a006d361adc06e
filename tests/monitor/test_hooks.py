"""moebif.torch.RouterMonitor on tiny random-init transformers MoE models (no download) and on
stand-in routers: what is counted (indices, masks, skip slot, -1, invalid indices), the soft
importance, micro-batches, eval passes, gradient checkpointing, sync_every, bounded history."""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")

from moebif.monitor import read_log  # noqa: E402
from moebif.monitor.hooks import RouterIndexError, RouterMonitor, find_routers  # noqa: E402
from moebif.monitor.tiny import text_batches, tiny_model  # noqa: E402

from ._training import train  # noqa: E402

nn = torch.nn


def _spy(routers):
    seen = {}

    def spy(name):
        def hook(mod, args, out):
            if mod.training:
                seen.setdefault(name, []).append([t.detach().clone() for t in out])

        return hook

    handles = [mod.register_forward_hook(spy(name)) for name, mod in routers.items()]
    return seen, handles


@pytest.mark.parametrize("family", ["mixtral", "qwen2_moe", "olmoe"])
def test_counts_and_importance_come_from_the_gate_in_training_only(family, tmp_path):
    model = tiny_model(family)
    routers = find_routers(model)
    assert len(routers) == 2
    seen, _ = _spy(routers)
    mon = RouterMonitor(model, log=tmp_path / "log.jsonl", window=32)
    fed = {}  # what each LayerMonitor.update receives
    for name, m in mon.monitors.items():
        m.update = lambda c, imp=None, sc=None, forces=None, name=name, f=m.update: (
            fed.setdefault(name, []).append(sc) or f(c, imp, sc, forces=forces)
        )
    a, b = next(text_batches(1, 4, 16)), next(text_batches(1, 2, 8, seed=5))
    model.train()
    model(input_ids=a)
    model(input_ids=b)  # two micro-batches of different sizes in one step are summed
    mon.step()
    for name in routers:
        idx = torch.cat([o[-1].reshape(-1) for o in seen[name]])
        np.testing.assert_array_equal(mon.counts(name)[0], torch.bincount(idx, minlength=8).numpy())
        assert mon.counts(name)[0].sum() == (4 * 16 + 2 * 8) * 2  # tokens x top-2
    model.eval()
    with torch.no_grad():
        model(input_ids=a)
    assert mon.step() == []
    assert len(mon.steps) == 1 and mon.step_index == 1  # eval forward passes are not counted
    mon.close()
    log = read_log(tmp_path / "log.jsonl")
    assert set(log.layers) == set(routers)
    assert log.header["model_class"] == type(model).__name__
    for name in routers:
        lay = log.layers[name]
        assert (lay.n_experts, lay.top_k) == (8, 2)
        assert lay.meta["probabilities"] == "softmax" and lay.meta["importance"] is True
        # importance: mean over all tokens of the step of softmax(router logits)
        logits = torch.cat([o[0].reshape(-1, 8) for o in seen[name]])
        want = torch.softmax(logits.double(), -1).mean(0).numpy()
        np.testing.assert_allclose(lay.importance[0], want, rtol=2e-5, atol=1e-7)
        assert lay.tokens[0] == 4 * 16 + 2 * 8 and lay.dropped[0] == 0
        # scores: mean over all tokens of the step of the router's pre-softmax logits, handed to
        # the monitor and logged (9 digits)
        assert lay.meta["scores"] is True
        mean_logits = logits.double().mean(0).numpy()
        np.testing.assert_allclose(fed[name][0], mean_logits, rtol=1e-12, atol=1e-12)
        np.testing.assert_allclose(lay.scores[0], mean_logits, rtol=2e-8, atol=1e-9)


def test_deepseek_v3_counts_follow_the_corrected_selection_and_sigmoid_importance(tmp_path):
    model = tiny_model("deepseek_v3").train()
    routers = find_routers(model)
    assert len(routers) == 1
    ((label, gate),) = routers.items()
    with torch.no_grad():
        gate.weight.normal_(0, 1.0)
        gate.e_score_correction_bias[:] = 0.0
        gate.e_score_correction_bias[5] = 10.0  # the bias alone forces expert 5 (group 1)
    seen, _ = _spy(routers)
    mon = RouterMonitor(model, window=32, log=tmp_path / "l.jsonl")
    model(input_ids=next(text_batches(1, 2, 16)))
    mon.step()
    c = mon.counts(label)[0]
    assert c[5] == 32  # every token picks expert 5: the selection, not top-k of the logits
    assert c[:4].sum() == 0  # group-limited routing: only the group of expert 5
    mon.close()
    lay = read_log(tmp_path / "l.jsonl").layers[label]
    assert lay.meta["probabilities"] == "sigmoid"
    s = torch.sigmoid(seen[label][0][0].double().reshape(-1, 8))
    want = (s / s.sum(-1, keepdim=True)).mean(0).numpy()  # the scores, normalised per token
    np.testing.assert_allclose(lay.importance[0], want, rtol=2e-5, atol=1e-7)
    # the logged scores are the mean logits before the sigmoid (and before the correction bias)
    want = seen[label][0][0].double().reshape(-1, 8).mean(0).numpy()
    np.testing.assert_allclose(lay.scores[0], want, rtol=2e-8, atol=1e-9)


class IndexRouter(nn.Module):
    """A router returning ``(logits, weights, indices)`` with the indices it is told to."""

    top_k, num_experts = 2, 4

    def __init__(self):
        super().__init__()
        self.weight = nn.Parameter(torch.zeros(4, 3))
        self.next = None

    def forward(self, x):
        logits = x @ self.weight.T
        return logits, torch.ones(x.shape[0], 2), self.next


class Net(nn.Module):
    def __init__(self, *routers):
        super().__init__()
        self.layers = nn.ModuleList(routers)

    def forward(self, x):
        for r in self.layers:
            r(x)
        return x


def test_skip_slot_and_minus_one_are_dropped_other_indices_are_an_error(tmp_path):
    router = IndexRouter()
    model = Net(router).train()
    mon = RouterMonitor(model, window=32, log=tmp_path / "l.jsonl")
    router.next = torch.tensor([[0, 4], [-1, 1], [3, 3], [4, -1]])  # N = 4 is the skip slot
    model(torch.zeros(4, 3))
    mon.step()
    np.testing.assert_array_equal(mon.counts("layers.0")[0], [1, 1, 0, 2])
    lay = read_log(tmp_path / "l.jsonl").layers["layers.0"]
    assert lay.dropped[0] == 4 and lay.tokens[0] == 4
    # an index that is no expert: the forward pass goes on, step() names the layer
    router.next = torch.tensor([[0, 7], [1, -3], [2, 3], [0, 1]])
    model(torch.zeros(4, 3))
    with pytest.raises(RouterIndexError, match=r"'layers\.0'.*2 selected expert indices"):
        mon.step()
    mon.close()


class MaskRouter(nn.Module):
    """Switch-style: returns a one-hot capacity mask ``(B, S, N)``, probs, logits."""

    def __init__(self, mask):
        super().__init__()
        self.mask = mask
        self.lin = nn.Linear(3, mask.shape[-1])

    def forward(self, x):
        logits = self.lin(x)
        return self.mask, logits.softmax(-1).max(-1, keepdim=True).values, logits


def test_one_hot_and_dispatch_masks_are_recognised():
    g = torch.Generator().manual_seed(0)
    idx = torch.randint(0, 6, (2, 5), generator=g)
    mask = torch.nn.functional.one_hot(idx, 6)
    mask[1, 4] = 0  # a token beyond capacity: dropped
    model = Net(MaskRouter(mask)).train()
    # named without any hint: the integer (..., N) output is a one-hot mask, not indices
    mon = RouterMonitor(model, modules=["layers.0"], top_k=1, window=32)
    model(torch.zeros(2, 5, 3))
    mon.step()
    want = np.bincount(idx.reshape(-1).numpy(), minlength=6)
    want[idx[1, 4]] -= 1
    np.testing.assert_array_equal(mon.counts("layers.0")[0], want)
    # a dispatch mask (T, N, capacity), e.g. GShard's
    disp = torch.zeros(10, 6, 3, dtype=torch.bool)
    for t, e in enumerate(idx.reshape(-1).tolist()):
        disp[t, e, t % 3] = True
    mon2 = RouterMonitor(
        Net(nn.Identity()),
        modules={"d": nn.Identity()},
        n_experts=6,
        top_k=1,
        selection="dispatch",
        indices=lambda out: disp,
        window=32,
    )
    mon2.routers["d"].train()(torch.zeros(1))
    mon2.step()
    np.testing.assert_array_equal(mon2.counts("d")[0], np.bincount(idx.reshape(-1), minlength=6))
    mon.close()
    mon2.close()


@pytest.mark.filterwarnings("ignore:`gradient_checkpointing_enable` is deprecated:FutureWarning")
@pytest.mark.parametrize("reentrant", [False, True])
def test_gradient_checkpointing_is_not_counted_twice(reentrant):
    batches = list(text_batches(2, 4, 16, seed=3))

    def run(checkpointing):
        model = tiny_model("mixtral", seed=1).train()
        if checkpointing:
            model.gradient_checkpointing_enable(
                gradient_checkpointing_kwargs={"use_reentrant": reentrant}
            )
        routers = find_routers(model)
        calls = dict.fromkeys(routers, 0)

        def count(name):
            def hook(mod, args, out):
                calls[name] += 1

            return hook

        for name, mod in routers.items():
            mod.register_forward_hook(count(name))
        mon = RouterMonitor(model, window=32)
        for x in batches:
            out = model(input_ids=x, labels=x)
            out.loss.backward()
            mon.step()
        mon.close()
        return {k: mon.counts(k) for k in routers}, calls

    plain, plain_calls = run(False)
    ckpt, ckpt_calls = run(True)
    # the checkpointed forward really ran the routers again in the backward pass ...
    assert all(ckpt_calls[k] == 2 * plain_calls[k] for k in plain_calls)
    # ... and the counts are those of the forward passes alone
    for k in plain:
        np.testing.assert_array_equal(ckpt[k], plain[k])
        assert ckpt[k].sum() == 2 * 4 * 16 * 2


def test_sync_every_and_history_do_not_change_the_results(tmp_path):
    batches = list(text_batches(7, 2, 16, seed=4))

    def run(**kw):
        model = tiny_model("qwen2_moe", seed=2).train()
        mon = RouterMonitor(model, window=32, **kw)
        alarms = []
        for x in batches:
            model(input_ids=x)
            alarms += mon.step()
        alarms += mon.flush()
        mon.close()
        return mon, alarms

    ref, ref_alarms = run(log=tmp_path / "a.jsonl", history=None)
    k3, k3_alarms = run(log=tmp_path / "b.jsonl", sync_every=3, history=2)
    assert ref.step_index == k3.step_index == 7
    assert [a.to_dict() for a in k3_alarms] == [a.to_dict() for a in ref_alarms]
    a, b = read_log(tmp_path / "a.jsonl"), read_log(tmp_path / "b.jsonl")
    for label in ref.routers:
        np.testing.assert_array_equal(a.layers[label].counts, b.layers[label].counts)
        np.testing.assert_array_equal(a.layers[label].importance, b.layers[label].importance)
        np.testing.assert_array_equal(k3.counts(label), ref.counts(label)[-2:])  # history = 2
    assert list(k3.steps) == [5, 6] and len(ref.steps) == 7


def test_history_is_bounded_in_the_router_monitor():
    model = Net(IndexRouter()).train()
    mon = RouterMonitor(model, window=32, history=5)
    router = model.layers[0]
    for _ in range(40):
        router.next = torch.tensor([[0, 1], [2, 3]])
        model(torch.zeros(2, 3))
        mon.step()
    assert mon.counts("layers.0").shape == (5, 4) and len(mon.steps) == 5
    lm = mon.monitors["layers.0"]
    assert lm.history == 5 and len(lm.block_record) <= 5


@pytest.mark.slow
@pytest.mark.parametrize(("family", "steps"), [("mixtral", 300), ("olmoe", 400)])
def test_tiny_model_provoked_collapse_is_flagged(family, steps):
    """Real text, aux-loss coefficient -1 from 25% to 55% of the run: every layer raises a
    collapse alarm after the flip (the alarm rules are issue 12's; this checks the plumbing
    from the hooks to the monitors on a real training run)."""
    mon, _ = train(family, steps=steps, phases=(0.25, 0.55), bad_coef=-1.0, coef=0.1)
    for lab in mon.routers:
        kinds = [(a.step, a.kind) for a in mon.alarms if a.layer == lab]
        flagged = [s for s, k in kinds if k in ("collapse-in-progress", "collapsed")]
        assert flagged and max(flagged) >= 0.25 * steps, kinds


def test_labels_drop_wrapper_components_and_detach_pauses_counting():
    from moebif.monitor.hooks import clean_label

    assert clean_label("_fsdp_wrapped_module.model.layers.0._fsdp_wrapped_module.mlp.gate") == (
        "model.layers.0.mlp.gate"
    )
    assert clean_label("_orig_mod.layers.1._checkpoint_wrapped_module.gate") == "layers.1.gate"
    assert clean_label("module.layers.0") == "module.layers.0"  # a real name is kept
    model = Net(IndexRouter()).train()
    wrapped = torch.nn.DataParallel(model)
    assert list(find_routers(wrapped)) == list(find_routers(model)) == ["layers.0"]
    mon = RouterMonitor(wrapped, window=32)
    router = model.layers[0]
    router.next = torch.tensor([[0, 1], [2, 3]])
    model(torch.zeros(2, 3))
    mon.step()
    mon.detach()
    model(torch.zeros(2, 3))
    assert mon.step() == [] and mon.step_index == 1  # not counted while detached
    mon.attach()
    model(torch.zeros(2, 3))
    mon.step()
    assert mon.step_index == 2 and mon.counts("layers.0").sum() == 8
    mon.close()
