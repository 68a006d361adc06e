"""PyTorch Lightning integration (``moebif[lightning]``).

    from moebif.monitor.integrations import RouterMonitorLightning
    trainer = pl.Trainer(callbacks=[RouterMonitorLightning(log="router_log.jsonl")])
    trainer.fit(lit_module)

The callback builds a :class:`~moebif.monitor.hooks.RouterMonitor` on the ``LightningModule``
(its routers, wherever they sit inside it) at ``on_fit_start``, closes its step once per
optimizer step (``on_before_optimizer_step``: after all ``accumulate_grad_batches``
micro-batches), and logs ``router/<layer>/<metric>`` (kappa_hat with its band, MaxVio, Neff, dead
experts, max-load excess) through ``LightningModule.log_dict`` to the trainer's loggers every
``log_every_n_steps``. Alarms go to the ``moebif`` logger and to ``self.alarms``; with
``tensorboard=`` (a log folder or a ``SummaryWriter``) also to TensorBoard, with the band layout.
The monitor's state is saved in Lightning checkpoints (``state_dict``/``load_state_dict``) and
restored on resume.
"""

from __future__ import annotations

import logging

import pytorch_lightning as pl

from .tensorboard import RouterTensorBoard, scalars

__all__ = ["RouterMonitorLightning"]

logger = logging.getLogger("moebif")


class RouterMonitorLightning(pl.Callback):
    """A Lightning ``Callback`` that monitors the MoE routers of the module being fitted.

    **Arguments:**

    - ``monitor``: an existing RouterMonitor (default: built at ``on_fit_start``).
    - ``prefix``: of the logged names (``router/``).
    - ``tensorboard``: also write scalars and alarms with :class:`RouterTensorBoard` (a folder or
      a ``SummaryWriter``; ``None``: no).
    - ``**monitor_options``: for the RouterMonitor built here (``log=``, ``window=``, ...).
    """

    def __init__(
        self, monitor=None, *, prefix: str = "router/", tensorboard=None, **monitor_options
    ):
        self.monitor = monitor
        self.prefix = prefix
        self.monitor_options = monitor_options
        self.alarms: list = []
        self._tb_arg = tensorboard
        self._tb = None
        self._restored = None
        self._stepped = False

    def on_fit_start(self, trainer, pl_module):
        if self.monitor is None:
            from ..hooks import RouterMonitor

            opts = dict(self.monitor_options)
            opts.setdefault("optimizer", trainer.optimizers[0] if trainer.optimizers else None)
            self.monitor = RouterMonitor(pl_module, **opts)
        if self._restored is not None:
            self.monitor.load_state_dict(self._restored)
            self._restored = None
        if self._tb_arg is not None and trainer.is_global_zero:
            self._tb = RouterTensorBoard(self._tb_arg, prefix=self.prefix)

    def on_before_optimizer_step(self, trainer, pl_module, optimizer):
        new = self.monitor.step()
        self._stepped = True
        if new:
            self.alarms += new
            if trainer.is_global_zero:
                for a in new:
                    logger.warning(
                        "router alarm: step %d %s %s: %s", a.step, a.layer, a.kind, a.message
                    )
        if self._tb is not None:
            self._tb.write(self.monitor, trainer.global_step, new)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        if not self._stepped:
            return
        self._stepped = False
        if trainer.global_step % max(1, trainer.log_every_n_steps) == 0:
            values = scalars(self.monitor, self.prefix)
            if values:
                pl_module.log_dict(values, on_step=True, on_epoch=False, logger=True)

    def on_fit_end(self, trainer, pl_module):
        if self.monitor is not None:
            self.alarms += self.monitor.flush()
            self.monitor.close()
        if self._tb is not None:
            self._tb.close()

    def state_dict(self) -> dict:
        return {} if self.monitor is None else {"monitor": self.monitor.state_dict()}

    def load_state_dict(self, state_dict: dict) -> None:
        if "monitor" in state_dict:
            if self.monitor is None:
                self._restored = state_dict["monitor"]
            else:
                self.monitor.load_state_dict(state_dict["monitor"])
