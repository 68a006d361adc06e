"""PyTorch Lightning integration of the controller (``moebif[lightning]``).

    from moebif.control.integrations import RouterControllerLightning
    trainer = pl.Trainer(callbacks=[RouterControllerLightning()])
    trainer.fit(lit_module)

The controller is built on the ``LightningModule`` at ``on_fit_start`` and stepped once per
optimizer step (``on_before_optimizer_step``: after all ``accumulate_grad_batches``
micro-batches, the loads of the whole step; the new bias acts from the next forward pass). Its
state is saved in Lightning checkpoints and restored on resume.
"""

from __future__ import annotations

import pytorch_lightning as pl

__all__ = ["RouterControllerLightning"]


class RouterControllerLightning(pl.Callback):
    """A Lightning ``Callback`` that balances the MoE routers of the module being fitted.

    **Arguments:**

    - ``controller``: an existing :class:`~moebif.control.RouterController` (default: built at
      ``on_fit_start`` with ``**controller_options``).
    - ``**controller_options``: for the controller built here (``gains=``, ``monitor=``, ...).
    """

    def __init__(self, controller=None, **controller_options):
        self.controller = controller
        self.controller_options = controller_options
        self._restored = None

    def on_fit_start(self, trainer, pl_module):
        if self.controller is None:
            from ..controller import RouterController

            self.controller = RouterController(pl_module, **self.controller_options)
        if self._restored is not None:
            self.controller.load_state_dict(self._restored)
            self._restored = None

    def on_before_optimizer_step(self, trainer, pl_module, optimizer):
        self.controller.step()

    def state_dict(self) -> dict:
        return {} if self.controller is None else {"controller": self.controller.state_dict()}

    def load_state_dict(self, state_dict: dict) -> None:
        if "controller" in state_dict:
            if self.controller is None:
                self._restored = state_dict["controller"]
            else:
                self.controller.load_state_dict(state_dict["controller"])
