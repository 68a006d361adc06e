"""Hugging Face ``Trainer`` integration of the controller (``moebif[trainer]``).

    from moebif.control.integrations import RouterControllerCallback
    trainer = Trainer(model=model, args=args, train_dataset=ds,
                      callbacks=[RouterControllerCallback()])
    trainer.train()

The controller is built on the Trainer's model at ``on_train_begin`` and stepped at every
``on_step_end`` (after the optimizer step: the loads of all gradient-accumulation micro-batches).
At each ``on_save`` its state goes to ``router_controller.json`` in the checkpoint folder (world
process zero); a Trainer resuming from a checkpoint that has one continues from it. Turn the
model's aux loss off (``router_aux_loss_coef = 0``) to balance by the controller alone.
"""

from __future__ import annotations

import json
import os

from transformers import TrainerCallback

__all__ = ["RouterControllerCallback"]

STATE_FILE = "router_controller.json"


class RouterControllerCallback(TrainerCallback):
    """A ``TrainerCallback`` that balances the MoE routers of the trained model in closed loop.

    **Arguments:**

    - ``controller``: an existing :class:`~moebif.control.RouterController` (default: one is
      built at ``on_train_begin`` with ``**controller_options``).
    - ``**controller_options``: for the controller built here (``gains=``, ``monitor=``, ...).
    """

    def __init__(self, controller=None, **controller_options):
        self.controller = controller
        self.controller_options = controller_options

    def on_train_begin(self, args, state, control, model=None, **kwargs):
        if self.controller is None:
            from ..controller import RouterController

            self.controller = RouterController(model, **self.controller_options)
        path = os.path.join(args.output_dir, f"checkpoint-{state.global_step}", STATE_FILE)
        if state.global_step > 0 and os.path.isfile(path):
            with open(path, encoding="utf-8") as fh:
                self.controller.load_state_dict(json.load(fh))

    def on_step_end(self, args, state, control, **kwargs):
        self.controller.step()

    def on_save(self, args, state, control, **kwargs):
        if self.controller is None or not state.is_world_process_zero:
            return
        from ..._io import atomic_write_text

        folder = os.path.join(args.output_dir, f"checkpoint-{state.global_step}")
        if os.path.isdir(folder):
            atomic_write_text(
                os.path.join(folder, STATE_FILE), json.dumps(self.controller.state_dict())
            )
