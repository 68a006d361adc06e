"""moebif.torch.RouterMonitor on the router layouts of transformers 4.x and 5.x.

The package needs transformers 5 (``pyproject.toml``), so no environment of ours has
transformers 4: its layouts are replayed here by hand-built modules that return what the 4.x
modules return (a sparse MoE block whose ``gate`` Linear gives the logits and whose forward
selects top-k of their softmax, as Mixtral, Qwen2/3-MoE and OLMoE do in 4.x; Qwen2-MoE's
one-output ``shared_expert_gate`` beside it; a DeepSeek-V3 router returning ``(indices,
weights)`` chosen with a correction bias; Llama-4's ``(scores, logits)``). The counts are
checked against the selections the modules themselves made.
"""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")
nn = torch.nn
F = torch.nn.functional

from moebif.monitor.hooks import RouterMonitor, find_routers  # noqa: E402
from moebif.monitor.tiny import tiny_model  # noqa: E402

H, N, K = 16, 8, 2


class SparseMoeBlock(nn.Module):
    """A transformers-4 Mixtral-style block: gate Linear, softmax + top-k, returns logits."""

    def __init__(self, gate_out=N, **extra):
        super().__init__()
        self.hidden_dim, self.num_experts, self.top_k = H, N, K
        self.gate = nn.Linear(H, gate_out, bias=False)
        self.experts = nn.ModuleList(nn.Linear(H, H) for _ in range(N))
        self.selected = []  # the block's own selections (the spy)
        for k, v in extra.items():
            setattr(self, k, v)

    def forward(self, x):
        shape = x.shape
        x = x.reshape(-1, self.hidden_dim)
        router_logits = self.gate(x)
        routing_weights = F.softmax(router_logits, dim=1, dtype=torch.float)
        routing_weights, selected_experts = torch.topk(routing_weights, self.top_k, dim=-1)
        self.selected.append(selected_experts.detach().clone())
        out = torch.zeros_like(x)
        for e in range(self.num_experts):
            tok, slot = torch.where(selected_experts == e)
            if tok.numel():
                w = routing_weights[tok, slot, None].to(x.dtype)
                out.index_add_(0, tok, self.experts[e](x[tok]) * w)
        return out.reshape(shape), router_logits


class SharedExpertMoeBlock(SparseMoeBlock):
    """A transformers-4 Qwen2-MoE block: the sparse block plus a shared expert weighted by a
    one-output ``shared_expert_gate`` Linear (which scores no expert)."""

    def __init__(self):
        super().__init__()
        self.shared_expert = nn.Linear(H, H)
        self.shared_expert_gate = nn.Linear(H, 1, bias=False)

    def forward(self, x):
        out, logits = super().forward(x)
        flat = x.reshape(-1, self.hidden_dim)
        shared = F.sigmoid(self.shared_expert_gate(flat)) * self.shared_expert(flat)
        return out + shared.reshape(out.shape), logits


class FakeV3TopkRouter(nn.Module):
    """A transformers-4 DeepSeek-V3-style router: returns ``(indices, weights)``, indices first,
    selected with a correction bias (not top-k of the logits)."""

    def __init__(self):
        super().__init__()
        self.top_k = K
        self.weight = nn.Parameter(torch.randn(N, H))
        self.register_buffer("e_score_correction_bias", torch.zeros(N))
        self.e_score_correction_bias[5] = 10.0

    def forward(self, x):
        logits = F.linear(x.reshape(-1, H).float(), self.weight.float())
        scores = logits.sigmoid()
        idx = torch.topk(scores + self.e_score_correction_bias, K, dim=-1).indices
        return idx, scores.gather(1, idx)


class FakeV3Moe(nn.Module):
    def __init__(self):
        super().__init__()
        self.gate = FakeV3TopkRouter()
        self.selected = []

    def forward(self, x):
        idx, w = self.gate(x)
        self.selected.append(idx.detach().clone())
        return x * w.sum(-1).reshape(x.shape[:-1] + (1,)).to(x.dtype)


class FakeLlama4Router(nn.Linear):
    """transformers' Llama4Router (4.x and 5.x): returns ``(scores, logits)``, no indices."""

    def __init__(self):
        super().__init__(H, N, bias=False)
        self.num_experts, self.top_k = N, K
        self.selected = []

    def forward(self, x):
        logits = super().forward(x.reshape(-1, H))
        top, idx = torch.topk(logits, self.top_k, dim=1)
        self.selected.append(idx.detach().clone())
        scores = torch.full_like(logits, float("-inf")).scatter_(1, idx, top).sigmoid()
        return scores, logits


class FakeGateLinearTopKRouter(nn.Module):
    """A transformers-5 router holding a ``gate`` Linear (like 5.x AfmoeTokenChoiceRouter)."""

    def __init__(self):
        super().__init__()
        self.top_k, self.num_experts = K, N
        self.gate = nn.Linear(H, N, bias=False)

    def forward(self, x):
        logits = self.gate(x.reshape(-1, H))
        scores = logits.sigmoid()
        idx = torch.topk(scores, K, dim=-1).indices
        return logits, scores.gather(1, idx), idx


class Model(nn.Module):
    def __init__(self, *blocks):
        super().__init__()
        self.layers = nn.ModuleList(blocks)

    def forward(self, x):
        for b in self.layers:
            out = b(x)
            x = out[0] if isinstance(out, tuple) else out
        return x


def _x(seed=0, shape=(3, 5)):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(*shape, H, generator=g)


def _selected(block):
    return torch.bincount(torch.cat(block.selected).reshape(-1), minlength=N).numpy()


def test_v4_sparse_moe_block_gate_is_found_and_counted_like_the_block(tmp_path):
    torch.manual_seed(0)
    model = Model(SparseMoeBlock(), SparseMoeBlock())
    routers = find_routers(model)
    assert list(routers) == ["layers.0.gate", "layers.1.gate"]
    assert all(type(m) is nn.Linear for m in routers.values())
    mon = RouterMonitor(model, log=tmp_path / "log.jsonl", window=32)
    assert mon.monitors["layers.0.gate"].top_k == K
    model.train()
    model(_x(0))
    model(_x(1, (2, 7)))  # two micro-batches of one step are summed
    mon.step()
    for i, block in enumerate(model.layers):
        c = mon.counts(f"layers.{i}.gate")
        assert c.shape == (1, N)
        np.testing.assert_array_equal(c[0], _selected(block))
        assert c[0].sum() == (15 + 14) * K
    model.eval()
    with torch.no_grad():
        model(_x(2))
    mon.step()
    assert len(mon.steps) == 1  # eval forward passes are not counted
    mon.close()


def test_v4_shared_expert_gate_is_not_a_router():
    torch.manual_seed(0)
    model = Model(SharedExpertMoeBlock(), SparseMoeBlock()).train()
    assert list(find_routers(model)) == ["layers.0.gate", "layers.1.gate"]
    mon = RouterMonitor(model, window=32)
    model(_x(0))
    mon.step()
    for i, block in enumerate(model.layers):
        np.testing.assert_array_equal(mon.counts(f"layers.{i}.gate")[0], _selected(block))
    mon.close()


def test_v4_block_ties_and_bfloat16_follow_the_block_selection():
    torch.manual_seed(0)
    tied = SparseMoeBlock()
    with torch.no_grad():
        tied.gate.weight.zero_()  # all logits equal: the selection is decided by tie-breaking
    low = SparseMoeBlock().to(torch.bfloat16)
    model, model_bf16 = Model(tied).train(), Model(low).train()
    mon, mon_bf16 = RouterMonitor(model, window=32), RouterMonitor(model_bf16, window=32)
    model(_x(0))
    model_bf16(_x(0).to(torch.bfloat16))
    mon.step()
    mon_bf16.step()
    np.testing.assert_array_equal(mon.counts("layers.0.gate")[0], _selected(tied))
    np.testing.assert_array_equal(mon_bf16.counts("layers.0.gate")[0], _selected(low))
    mon.close()
    mon_bf16.close()


def test_router_returning_indices_first_is_counted_from_its_indices():
    torch.manual_seed(0)
    moe = FakeV3Moe()
    model = Model(moe).train()
    assert list(find_routers(model)) == ["layers.0.gate"]
    mon = RouterMonitor(model, window=32)
    model(_x(0))
    mon.step()
    c = mon.counts("layers.0.gate")[0]
    np.testing.assert_array_equal(c, _selected(moe))
    assert c[5] == 15  # the correction bias forces expert 5: not top-k of the logits
    mon.close()


def test_router_returning_no_indices_is_counted_by_top_k_of_its_logits():
    torch.manual_seed(0)
    router = FakeLlama4Router()
    model = Model(router).train()
    assert list(find_routers(model)) == ["layers.0"]
    mon = RouterMonitor(model, window=32)
    model(_x(0))
    mon.step()
    np.testing.assert_array_equal(mon.counts("layers.0")[0], _selected(router))
    mon.close()


def test_layouts_not_taken_for_a_v4_block():
    blocks = [
        SparseMoeBlock(router_jitter_noise=0.01),  # PhiMoE: sampled selection in training
        SparseMoeBlock(moe_statics=nn.Identity()),  # Ernie-4.5-MoE: bias-corrected top-k
        SparseMoeBlock(gate_out=N + 1),  # the gate does not score the experts
    ]
    no_top_k = SparseMoeBlock()
    del no_top_k.top_k
    for b in [*blocks, no_top_k]:
        assert find_routers(Model(b)) == {}
        with pytest.raises(ValueError, match="no MoE router"):
            RouterMonitor(Model(b))
    # a 5.x router holding a `gate` Linear is counted once, by its own indices
    routers = find_routers(Model(FakeGateLinearTopKRouter()))
    assert list(routers) == ["layers.0"]


def test_named_modules_and_indices():
    torch.manual_seed(0)
    model = Model(SparseMoeBlock(), SparseMoeBlock(), FakeV3Moe()).train()
    # a named 4.x block, or its gate Linear, is counted like find_routers counts it
    mon = RouterMonitor(
        model, modules={"b0": model.layers[0], "g1": model.layers[1].gate}, window=32
    )
    assert set(mon.routers) == {"b0", "g1"}
    assert mon.routers["b0"] is model.layers[0].gate
    # a user `indices` function for a named module gets that module's output
    calls = []

    def first(out):
        calls.append(out)
        return out[0]

    mon2 = RouterMonitor(model, modules=["layers.2.gate"], indices=first, window=32)
    assert list(mon2.routers) == ["layers.0.gate", "layers.1.gate", "layers.2.gate"]
    model(_x(0))
    mon.step()
    mon2.step()
    np.testing.assert_array_equal(mon.counts("b0")[0], _selected(model.layers[0]))
    np.testing.assert_array_equal(mon.counts("g1")[0], _selected(model.layers[1]))
    for i, block in enumerate(model.layers):
        np.testing.assert_array_equal(mon2.counts(f"layers.{i}.gate")[0], _selected(block))
    assert len(calls) == 1  # only for the named module
    mon.close()
    mon2.close()


@pytest.mark.parametrize("family", ["mixtral", "qwen2_moe", "olmoe"])
def test_v5_detection_unchanged(family):
    pytest.importorskip("transformers", minversion="5")
    model = tiny_model(family)
    routers = find_routers(model)
    # exactly the 5.x gate modules (as before 4.x support): no Linear, no block
    old = {
        n: m
        for n, m in model.named_modules()
        if type(m).__name__.lower().endswith("router") and hasattr(m, "top_k")
    }
    assert routers == old and len(routers) == 2
    assert all(not isinstance(m, nn.Linear) for m in routers.values())
    seen = {}

    def spy(name):
        def hook(mod, args, out):
            seen[name] = out[-1].detach().clone()

        return hook

    for name, mod in routers.items():
        mod.register_forward_hook(spy(name))
    mon = RouterMonitor(model, window=32)
    x = torch.randint(0, 512, (2, 8), generator=torch.Generator().manual_seed(0))
    model.train()
    model(input_ids=x)
    mon.step()
    for name in routers:
        want = torch.bincount(seen[name].reshape(-1), minlength=8).numpy()
        np.testing.assert_array_equal(mon.counts(name)[0], want)
    mon.close()
