"""RouterMonitor under torch.distributed: 2 processes on CPU (gloo, torch.multiprocessing), a
tiny Mixtral in DDP trained on a different shard of real text per rank. The counts the monitors
see are the sum over the ranks of what each rank's routers selected, identical on both ranks, so
the alarms are identical; only rank 0 writes the log, and ``moebif diagnose`` on it gives the
online alarms. Labels are the same with and without the DDP (and FSDP) wrapper."""

from __future__ import annotations

import json
import os
import socket

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")
import torch.distributed as dist  # noqa: E402
import torch.multiprocessing as mp  # noqa: E402

from moebif.monitor import read_log  # noqa: E402

STEPS, WINDOW = 64, 32


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

        from moebif.monitor.hooks import RouterMonitor, find_routers
        from moebif.monitor.tiny import text_batches, tiny_model

        model = tiny_model("mixtral", seed=0).train()
        plain_labels = list(find_routers(model))
        local = {lab: [] for lab in plain_labels}  # what this rank's routers selected
        logit_sums = {lab: [] for lab in plain_labels}  # and the sums of their logits

        def spy(lab):
            def hook(mod, args, out):
                if mod.training and torch._C._current_graph_task_id() == -1:
                    local[lab][-1] += torch.bincount(out[-1].reshape(-1), minlength=8).numpy()
                    logit_sums[lab][-1] += out[0].detach().double().reshape(-1, 8).sum(0).numpy()

            return hook

        for lab, mod in find_routers(model).items():
            mod.register_forward_hook(spy(lab))
        ddp = DDP(model)
        group = dist.new_group([0, 1])  # an explicit data-parallel group
        mon = RouterMonitor(ddp, window=WINDOW, history=None, group=group, log=f"{out}/log.jsonl")
        opt = torch.optim.AdamW(ddp.parameters(), lr=3e-3)
        alarms = []
        for i, x in enumerate(text_batches(STEPS, 2, 32, seed=100 + rank)):
            for lab in local:
                local[lab].append(np.zeros(8, np.int64))
                logit_sums[lab].append(np.zeros(8))
            model.router_aux_loss_coef = -1.0 if 20 <= i < 40 else 0.1
            loss = ddp(input_ids=x, labels=x).loss
            opt.zero_grad()
            loss.backward()
            opt.step()
            alarms += [a.to_dict() for a in mon.step()]
        mon.close()
        fsdp_labels = None
        try:
            from torch.distributed.fsdp import FullyShardedDataParallel as FSDP
            from torch.distributed.fsdp.wrap import ModuleWrapPolicy

            layer_cls = type(tiny_model("mixtral").model.layers[0])
            wrapped = FSDP(
                tiny_model("mixtral"),
                auto_wrap_policy=ModuleWrapPolicy({layer_cls}),
                device_id=torch.device("cpu"),
                use_orig_params=True,
            )
            raw = [n for n, _ in wrapped.named_modules() if n.endswith("mlp.gate")]
            fsdp_labels = {"raw": raw, "found": list(find_routers(wrapped))}
        except Exception as e:  # FSDP on CPU is not available everywhere
            fsdp_labels = {"error": f"{type(e).__name__}: {e}"}
        res = {
            "labels": list(mon.routers),
            "plain_labels": plain_labels,
            "counts": {lab: mon.counts(lab).tolist() for lab in mon.routers},
            "local": {lab: np.array(v).tolist() for lab, v in local.items()},
            "logit_sums": {lab: np.array(v).tolist() for lab, v in logit_sums.items()},
            "alarms": alarms,
            "writer": mon.is_writer,
            "fsdp": fsdp_labels,
        }
        with open(f"{out}/rank{rank}.json", "w") as fh:
            json.dump(res, fh)
    finally:
        dist.destroy_process_group()


def test_two_ranks_gloo_same_counts_same_alarms_one_log(tmp_path, cli):
    # fork: the ranks inherit the imported torch and transformers (spawn re-imports them, 15 s
    # of the test on a loaded 2-core machine)
    mp.start_processes(
        _worker, args=(2, _free_port(), str(tmp_path)), nprocs=2, join=True, start_method="fork"
    )
    r0, r1 = (json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1))
    # labels: no `module.` from DDP, the same as on the bare model
    assert (
        r0["labels"]
        == r0["plain_labels"]
        == r1["labels"]
        == ["model.layers.0.mlp.gate", "model.layers.1.mlp.gate"]
    )
    for lab in r0["labels"]:
        c0, c1 = np.array(r0["counts"][lab]), np.array(r1["counts"][lab])
        assert c0.shape == (STEPS, 8)
        np.testing.assert_array_equal(c0, c1)
        # the sum over the ranks of what each rank's router selected
        np.testing.assert_array_equal(c0, np.array(r0["local"][lab]) + np.array(r1["local"][lab]))
        assert not np.array_equal(r0["local"][lab], r1["local"][lab])  # the shards differ
        assert (c0.sum(1) == 2 * 2 * 32 * 2).all()
        # the logged mean logits: over both ranks' tokens (sums and token counts all-reduced)
        tokens = 2 * 2 * 32
        want = (np.array(r0["logit_sums"][lab]) + np.array(r1["logit_sums"][lab])) / tokens
        logged = read_log(tmp_path / "log.jsonl").layers[lab].scores
        np.testing.assert_allclose(logged, want, rtol=2e-8, atol=1e-9)
        assert not np.allclose(r0["logit_sums"][lab], r1["logit_sums"][lab])
    assert r0["alarms"] == r1["alarms"] and r0["alarms"]
    assert (r0["writer"], r1["writer"]) == (True, False)
    assert [p.name for p in tmp_path.glob("log.jsonl*")] == ["log.jsonl"]
    # diagnose on the log gives the online alarms
    r = cli(
        "diagnose", tmp_path / "log.jsonl", "--window", WINDOW, "--out", tmp_path / "o", "--json"
    )
    assert r.code == 0, r.err
    offline = sorted(
        (a["step"], a["layer"], a["kind"]) for lay in r.json["layers"] for a in lay["alarms"]
    )
    online = sorted((a["step"], a["layer"], a["kind"]) for a in r0["alarms"])
    assert offline == online
    fs = r0["fsdp"]
    print("FSDP:", fs)
    if "error" not in fs:  # FSDP 1 on CPU where this torch has it
        assert fs["raw"] and all("_fsdp_wrapped_module" in n for n in fs["raw"])
        assert fs["found"] == r0["plain_labels"]
