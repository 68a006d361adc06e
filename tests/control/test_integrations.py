"""The example of docs/control.md runs as written; the Hugging Face Trainer and Lightning callbacks
step the controller once per optimizer step and keep its state in their checkpoints."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")

DOC = Path(__file__).resolve().parents[2] / "docs" / "control.md"


def test_doc_example_runs():
    text = DOC.read_text(encoding="utf-8")
    m = re.search(r"<!-- example: loop -->\n```python\n(.*?)```", text, re.S)
    assert m, "docs/control.md: no example 'loop'"
    ns: dict = {"__name__": "example_loop"}
    exec(compile(m.group(1), "docs/control.md:loop", "exec"), ns)  # noqa: S102
    ctl = ns["ctl"]
    assert ctl.step_index == 20 and ns["state"]["version"] == 1
    assert all(np.any(b != 0) for b in ns["biases"].values())


@pytest.mark.filterwarnings("ignore::FutureWarning", "ignore::UserWarning")
def test_trainer_callback_steps_and_checkpoints(tmp_path):
    pytest.importorskip("accelerate")
    from transformers import Trainer, TrainingArguments

    from moebif.control.integrations import RouterControllerCallback
    from moebif.control.integrations.hf import STATE_FILE
    from moebif.monitor.tiny import corpus, text_batches, tiny_model

    data = [
        {"input_ids": x[0], "labels": x[0]}
        for x in text_batches(12, 1, 32, seed=0, corpus=corpus("pydoc", 1 << 18))
    ]
    model = tiny_model("mixtral")
    model.config.router_aux_loss_coef = 0.0
    args = TrainingArguments(
        output_dir=str(tmp_path / "out"),
        per_device_train_batch_size=2,
        gradient_accumulation_steps=2,
        max_steps=3,
        save_steps=3,
        report_to=[],
        use_cpu=True,
        disable_tqdm=True,
    )
    cb = RouterControllerCallback()
    Trainer(model=model, args=args, train_dataset=data, callbacks=[cb]).train()
    assert cb.controller.step_index == 3  # one step per optimizer step, not per micro-batch
    (saved,) = (tmp_path / "out").rglob(STATE_FILE)
    state = json.loads(saved.read_text())
    assert state["step_index"] == 3
    for lab, d in state["layers"].items():
        np.testing.assert_array_equal(d["bias"], cb.controller.bias(lab))


def test_lightning_callback_state_round_trip():
    pytest.importorskip("pytorch_lightning")
    from moebif.control import RouterController
    from moebif.control.integrations import RouterControllerLightning
    from moebif.monitor.tiny import tiny_model

    model = tiny_model("olmoe")
    ctl = RouterController(model)
    cb = RouterControllerLightning(ctl)
    cb.on_before_optimizer_step(None, None, None)
    assert ctl.step_index == 1
    cb2 = RouterControllerLightning()
    cb2.load_state_dict(cb.state_dict())
    cb2.on_fit_start(None, tiny_model("olmoe"))
    assert cb2.controller.step_index == 1
