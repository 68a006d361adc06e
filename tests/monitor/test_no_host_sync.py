"""The hooks never read the device: every torch call they make during the forward pass is checked
by a TorchFunctionMode that raises on the calls that copy data to the host or size an output by
its data (``item``, ``tolist``, ``bool``, ``nonzero``, ``bincount``, ``.cpu()``, ...); the same
routers also run on the meta device, where no data exists. And ``step()`` makes one transfer
per device for all layers."""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")
from torch.overrides import TorchFunctionMode  # noqa: E402

from moebif.monitor.hooks import RouterMonitor  # noqa: E402

nn = torch.nn
T_, N, K = 12, 8, 2

_FORBIDDEN = {
    torch.Tensor.item,
    torch.Tensor.tolist,
    torch.Tensor.numpy,
    torch.Tensor.__bool__,
    torch.Tensor.__int__,
    torch.Tensor.__float__,
    torch.Tensor.__index__,
    torch.Tensor.__repr__,
    torch.Tensor.__format__,
    torch.Tensor.cpu,
    torch.Tensor.nonzero,
    torch.nonzero,
    torch.Tensor.bincount,
    torch.bincount,
    torch.Tensor.unique,
    torch.unique,
    torch.Tensor.masked_select,
    torch.masked_select,
    torch.Tensor.any,
    torch.Tensor.all,
}


class HostRead(AssertionError):
    pass


class NoHostRead(TorchFunctionMode):
    """Raise on any torch call that reads tensor data on the host or has a data-dependent
    output size; record the calls made."""

    def __init__(self):
        super().__init__()
        self.calls = []

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        name = getattr(func, "__name__", str(func))
        self.calls.append(name)
        if func in _FORBIDDEN:
            raise HostRead(f"host read: {name}")
        if func in (torch.where, torch.Tensor.where) and len(args) + len(kwargs) == 1:
            raise HostRead("host read: torch.where(condition)")
        if func in (torch.repeat_interleave, torch.Tensor.repeat_interleave):
            if "output_size" not in kwargs:
                raise HostRead("host read: repeat_interleave without output_size")
        if func is torch.Tensor.to and any(
            str(a) == "cpu" for a in (*args[1:], kwargs.get("device"))
        ):
            raise HostRead("host read: .to('cpu')")
        return func(*args, **kwargs)


class Fixed(nn.Module):
    """Returns fixed outputs (made outside the mode), so only the hooks' own calls are checked."""

    def __init__(self, out, **attrs):
        super().__init__()
        self.weight = nn.Parameter(torch.zeros(N, 4))
        self.out = out
        for k, v in attrs.items():
            setattr(self, k, v)

    def forward(self, x):
        return self.out


def _outputs(device):
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(T_, N, generator=g)
    idx = torch.topk(logits, K, dim=-1).indices
    idx[0, 0] = N  # the skip slot
    idx[1, 1] = -1
    mask = torch.nn.functional.one_hot(idx[:, 0].clamp(0, N - 1), N)
    return {k: v.to(device) for k, v in dict(logits=logits, idx=idx, mask=mask).items()}


class IndexTopKRouter(Fixed):  # transformers 5.x: (logits, weights, indices)
    pass


class SwitchTop1Router(Fixed):  # one-hot capacity mask
    pass


class NllbMoeTop2Router(Fixed):  # (top-1 mask, combine weights, logits): read by name
    pass


class ScoresRouter(Fixed):  # Llama-4: (scores, logits), no indices
    pass


class LogitsRouter(Fixed):  # DBRX: logits only; the block hands the indices to its experts
    pass


class Experts(nn.Module):
    def forward(self, hidden_states, top_k_index, top_k_weights):
        return hidden_states


class Block(nn.Module):
    def __init__(self, router, top_k=K, idx=None, experts=True):
        super().__init__()
        self.router, self.top_k, self.idx = router, top_k, idx
        if experts:
            self.experts = Experts()

    def forward(self, x):
        self.router(x)
        if self.idx is not None:
            self.experts(x, self.idx, None)
        return x


def _model(device):
    o = _outputs(device)
    lg, idx, mask = o["logits"], o["idx"], o["mask"]
    gates = torch.zeros(T_, N, device=device).scatter_(1, idx.clamp(0, N - 1), 0.5)
    blocks = [
        Block(IndexTopKRouter((lg, torch.ones(T_, K, device=device), idx), scoring_func="softmax")),
        Block(SwitchTop1Router((mask, torch.ones(T_, 1, device=device), lg)), top_k=1),
        Block(NllbMoeTop2Router((mask, gates, lg), scoring_func="softmax")),
        Block(ScoresRouter((torch.sigmoid(lg), lg), scoring_func="sigmoid"), experts=False),
        Block(LogitsRouter(lg), idx=idx.clamp(0, N - 1)),
    ]
    for b in blocks:
        b.router.num_experts = N
    model = nn.Sequential(*blocks).to(device).train()
    o["gates"] = gates
    return model, o


def test_hooks_make_no_host_read():
    model, o = _model("cpu")
    mon = RouterMonitor(model, window=32)
    assert [r.selection for r in mon._routes.values()] == ["auto", "auto", "gates", "auto", "auto"]
    x = torch.zeros(T_, 4)
    with NoHostRead() as mode:
        model(x)
        model(x)
    assert "index_add_" in mode.calls and "softmax" in mode.calls  # the hooks did run
    for r in mon._routes.values():
        assert r.error is None, (r.label, r.error)
    mon.step()
    idx = o["idx"]
    valid = idx[(idx >= 0) & (idx < N)]
    top1 = o["mask"].sum(0).numpy()
    want = {
        "0.router": 2 * np.bincount(valid.numpy(), minlength=N),
        "1.router": 2 * top1,
        "2.router": 2 * (o["gates"] != 0).sum(0).numpy(),
        "3.router": 2 * np.bincount(torch.topk(o["logits"], K).indices.reshape(-1), minlength=N),
        "4.router": 2 * np.bincount(idx.clamp(0, N - 1).reshape(-1).numpy(), minlength=N),
    }
    for label, w in want.items():
        np.testing.assert_array_equal(mon.counts(label)[0], w, err_msg=label)
    mon.close()


def test_a_host_read_in_a_hook_would_be_caught():
    """The check itself works: the old hook's ``torch.bincount`` is refused."""
    t = torch.tensor([0, 1, 1])
    with NoHostRead(), pytest.raises(HostRead, match="bincount"):
        torch.bincount(t, minlength=4)


def test_hooks_run_on_the_meta_device():
    model, _ = _model("meta")
    mon = RouterMonitor(model, window=32)
    assert {b.device.type for b in mon._bufs.values()} == {"meta"}
    model(torch.zeros(T_, 4, device="meta"))
    for r in mon._routes.values():
        assert r.error is None, (r.label, r.error)
    mon.close()


def test_step_makes_one_transfer_for_all_layers():
    from moebif.monitor.tiny import text_batches, tiny_model

    model = tiny_model("mixtral").train()
    mon = RouterMonitor(model, window=32)
    assert len(mon._bufs) == 1 and len(mon.routers) == 2  # one buffer for both layers
    x = next(text_batches(1, 2, 16))
    model(input_ids=x)
    with _Transfers() as tr:
        mon.step()
    assert tr.count == 1
    assert mon.counts("model.layers.0.mlp.gate").sum() == 2 * 16 * 2
    mon.close()


class _Transfers(TorchFunctionMode):
    """Counts the device-to-host copies (``clone`` of a CPU buffer, ``to``, ``cpu``)."""

    def __init__(self):
        super().__init__()
        self.count = 0

    def __torch_function__(self, func, types, args=(), kwargs=None):
        if func in (torch.Tensor.clone, torch.Tensor.to, torch.Tensor.cpu, torch.Tensor.copy_):
            self.count += 1
        return func(*args, **(kwargs or {}))
