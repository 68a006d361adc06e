"""The integrations with the real libraries: the examples of docs/monitoring.md (HF Trainer with
accelerate, PyTorch Lightning, TensorBoard) are run as written, then what they produced is
checked: metrics in ``trainer.state.log_history`` and in the ``report_to`` TensorBoard events, the
Lightning logger's metrics, TensorBoard scalars and alarm text read back with tensorboard's
event reader, and resuming from the checkpoints each one saves."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")

from moebif.monitor import read_log  # noqa: E402

DOC = Path(__file__).resolve().parents[2] / "docs" / "monitoring.md"
LAYERS = ("model.layers.0.mlp.gate", "model.layers.1.mlp.gate")


def _example(name: str) -> str:
    text = DOC.read_text(encoding="utf-8")
    m = re.search(rf"<!-- example: {name} -->\n```python\n(.*?)```", text, re.S)
    assert m, f"docs/monitoring.md: no example {name!r}"
    return m.group(1)


def _run(name: str, where: Path) -> dict:
    ns: dict = {"__name__": f"example_{name}"}
    code = compile(_example(name), f"docs/monitoring.md:{name}", "exec")
    exec(code, ns)  # noqa: S102 - the documentation's own example
    return ns


def _events(folder: Path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    (f,) = {p.parent for p in folder.rglob("events.out.tfevents.*")}
    ea = EventAccumulator(str(f), size_guidance={"scalars": 0, "tensors": 0})
    ea.Reload()
    return ea


@pytest.mark.filterwarnings("ignore::FutureWarning", "ignore::UserWarning")
def test_trainer_example(tmp_path, monkeypatch):
    pytest.importorskip("accelerate")
    pytest.importorskip("tensorboard")
    monkeypatch.chdir(tmp_path)
    ns = _run("trainer", tmp_path)
    trainer, cb = ns["trainer"], ns["callback"]
    assert cb.monitor.step_index == 12 == trainer.state.global_step
    hist = [h for h in trainer.state.log_history if "loss" in h]
    assert [h["step"] for h in hist] == [4, 8, 12]
    for h in hist:
        for lab in LAYERS:
            for m in ("max_vio", "n_eff", "dead"):
                assert np.isfinite(h[f"router/{lab}/{m}"])
    # the report_to TensorBoard logger got them too
    ea = _events(tmp_path / "out_trainer")
    tags = ea.Tags()["scalars"]
    for lab in LAYERS:
        assert f"train/router/{lab}/max_vio" in tags
        steps = {e.step for e in ea.Scalars(f"train/router/{lab}/n_eff")}
        assert steps == {4, 8, 12}
    # counts: one row per optimizer step, the two accumulated micro-batches summed
    log = read_log(tmp_path / "out_trainer" / "router_log.jsonl")
    c = log.layers[LAYERS[0]].counts
    assert c.shape == (12, 8) and (c.sum(1) == 2 * 4 * 32 * 2).all()
    # resume from the step-6 checkpoint: the monitor continues (new log segment)
    ckpt = tmp_path / "out_trainer" / "checkpoint-6"
    state = json.loads((ckpt / "router_monitor.json").read_text())
    assert state["step_index"] == 6
    from transformers import Trainer

    from moebif.monitor.integrations import RouterMonitorCallback
    from moebif.monitor.tiny import tiny_model

    t2 = Trainer(model=tiny_model("mixtral"), args=trainer.args, train_dataset=ns["data"])
    cb2 = RouterMonitorCallback.attach(t2, log="out_trainer/router_log.jsonl", window=32)
    t2.train(resume_from_checkpoint=str(ckpt))
    assert cb2.monitor.step_index == 12
    log = read_log(tmp_path / "out_trainer" / "router_log.jsonl")
    assert [(s.segment, s.start_step) for s in log.segments] == [(0, 0), (1, 6)]
    np.testing.assert_array_equal(log.layers[LAYERS[0]].steps, np.arange(12))
    np.testing.assert_array_equal(log.layers[LAYERS[0]].counts[:6], c[:6])
    # the alarms of the resumed monitor include those before the checkpoint
    before = [a.to_dict() for a in cb.alarms if a.step <= 6]
    assert [a.to_dict() for a in cb2.monitor.alarms if a.step <= 6] == before


@pytest.mark.filterwarnings("ignore::UserWarning", "ignore::DeprecationWarning")
def test_lightning_example(tmp_path, monkeypatch):
    pl = pytest.importorskip("pytorch_lightning")
    pytest.importorskip("tensorboard")
    monkeypatch.chdir(tmp_path)
    ns = _run("lightning", tmp_path)
    trainer, cb = ns["trainer"], ns["callback"]
    assert trainer.global_step == 8 and cb.monitor.step_index == 8
    # the logger got the metrics
    (metrics_csv,) = (tmp_path / "out_lightning").rglob("metrics.csv")
    header = metrics_csv.read_text().splitlines()[0].split(",")
    labels = [f"model.{lab}" for lab in LAYERS]  # the LightningModule holds the LM as .model
    assert list(cb.monitor.routers) == labels
    for lab in labels:
        assert f"router/{lab}/max_vio" in header and f"router/{lab}/n_eff" in header
    # 2 micro-batches of 4 x 32 tokens summed per optimizer step
    c = read_log(tmp_path / "out_lightning" / "router_log.jsonl").layers[labels[0]].counts
    assert c.shape == (8, 8) and (c.sum(1) == 2 * 4 * 32 * 2).all()
    ea = _events(tmp_path / "out_lightning" / "tb")
    assert f"router/{labels[0]}/dead" in ea.Tags()["scalars"]
    # the checkpoint holds the monitor; fitting on from it continues its steps
    (ckpt,) = (tmp_path / "out_lightning").rglob("*.ckpt")
    saved = torch.load(ckpt, weights_only=False)["callbacks"]
    (state,) = [v for k, v in saved.items() if "RouterMonitorLightning" in k]
    assert state["monitor"]["step_index"] == 8
    from moebif.monitor.integrations import RouterMonitorLightning

    cb2 = RouterMonitorLightning(log="out_lightning/router_log.jsonl", window=32)
    t2 = pl.Trainer(
        max_steps=12,
        accumulate_grad_batches=2,
        callbacks=[cb2],
        logger=False,
        enable_checkpointing=False,
        accelerator="cpu",
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    t2.fit(ns["LitLM"](), ns["loader"], ckpt_path=str(ckpt))
    assert cb2.monitor.step_index == 12
    log = read_log(tmp_path / "out_lightning" / "router_log.jsonl")
    assert [(s.segment, s.start_step) for s in log.segments] == [(0, 0), (1, 8)]


def test_tensorboard_example(tmp_path, monkeypatch):
    pytest.importorskip("tensorboard")
    monkeypatch.chdir(tmp_path)
    ns = _run("tensorboard", tmp_path)
    monitor = ns["monitor"]
    ea = _events(tmp_path / "out_tb")
    tags = ea.Tags()["scalars"]
    for lab in LAYERS:
        for m in ("kappa_hat", "kappa_lo", "kappa_hi", "max_vio", "n_eff", "dead"):
            assert f"router/{lab}/{m}" in tags, m
        got = {e.step: e.value for e in ea.Scalars(f"router/{lab}/max_vio")}
        assert sorted(got) == list(range(80))
        assert got[79] == pytest.approx(monitor.metrics()[lab]["max_vio"], rel=1e-6)
        k = ea.Scalars(f"router/{lab}/kappa_hat")
        lo = {e.step: e.value for e in ea.Scalars(f"router/{lab}/kappa_lo")}
        hi = {e.step: e.value for e in ea.Scalars(f"router/{lab}/kappa_hi")}
        assert all(lo[e.step] <= e.value <= hi[e.step] for e in k if e.step in lo and e.step in hi)
    # every alarm is in the text, at its step
    assert monitor.alarms
    text = " ".join(
        t.tensor_proto.string_val[0].decode() for t in ea.Tensors("router/alarms/text_summary")
    )
    for a in monitor.alarms:
        assert f"step {a.step} `{a.layer}` **{a.kind}**" in text
    assert "custom_scalars" in str(ea.Tags()) or ea.Tags()
