"""RouterController under torch.distributed: 2 processes on CPU (gloo), a tiny Mixtral in DDP
trained on a different shard of real text per rank. The loads the law sees are the sum over the
ranks of what each rank's routers selected, and the bias is the same on both ranks."""

from __future__ import annotations

import os
import socket

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")
import torch.distributed as dist  # noqa: E402
import torch.multiprocessing as mp  # noqa: E402

STEPS = 6


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _worker(rank: int, world: int, port: int, out: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        from torch.nn.parallel import DistributedDataParallel as DDP

        from moebif.control import ControlGains, RouterController
        from moebif.monitor.hooks import find_routers
        from moebif.monitor.tiny import corpus, text_batches, tiny_model

        model = tiny_model("mixtral", seed=0).train()
        model.router_aux_loss_coef = 0.0
        local = {lab: [] for lab in find_routers(model)}

        def spy(lab):  # registered after the controller's hook: the biased selection
            def hook(mod, args, o):
                if mod.training and torch._C._current_graph_task_id() == -1:
                    local[lab][-1] += torch.bincount(o[-1].reshape(-1), minlength=8).numpy()

            return hook

        ddp = DDP(model)
        ctl = RouterController(ddp, gains=ControlGains(k_i=0.05))
        for lab, mod in find_routers(model).items():
            mod.register_forward_hook(spy(lab))
        opt = torch.optim.AdamW(ddp.parameters(), lr=1e-3)
        biases = []
        data = corpus("pydoc", 1 << 18)
        for x in text_batches(STEPS, 2, 32, seed=100 + rank, corpus=data):
            for lab in local:
                local[lab].append(np.zeros(8, np.int64))
            loss = ddp(input_ids=x, labels=x).loss
            opt.zero_grad()
            loss.backward()
            opt.step()
            b = ctl.step()
            biases.append(np.concatenate([b[lab] for lab in local]))
        np.savez(
            f"{out}/rank{rank}.npz",
            biases=np.array(biases),
            **{f"local_{i}": np.array(v) for i, v in enumerate(local.values())},
        )
    finally:
        dist.destroy_process_group()


def test_same_bias_on_every_rank_from_the_summed_loads(tmp_path):
    from moebif.model.control_law import ControlGains, initial_state, update

    mp.spawn(_worker, args=(2, _free_port(), str(tmp_path)), nprocs=2, join=True)
    r0, r1 = (np.load(tmp_path / f"rank{r}.npz") for r in (0, 1))
    np.testing.assert_array_equal(r0["biases"], r1["biases"])
    assert np.any(r0["biases"] != 0)
    # the law on the sum of the two ranks' own selections gives that bias
    gains = ControlGains(k_i=0.05)
    want = []
    states = [initial_state(8), initial_state(8)]
    for s in range(STEPS):
        row = []
        for i in range(2):
            summed = r0[f"local_{i}"][s] + r1[f"local_{i}"][s]
            assert not np.array_equal(r0[f"local_{i}"][s], r1[f"local_{i}"][s]) or s > 0
            states[i] = update(gains, states[i], summed)
            row.append(states[i].bias)
        want.append(np.concatenate(row))
    np.testing.assert_allclose(r0["biases"], np.array(want), rtol=0, atol=1e-12)
