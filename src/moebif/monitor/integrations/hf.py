"""Hugging Face ``Trainer`` integration (``moebif[trainer]``: transformers and accelerate).

    from moebif.monitor.integrations import RouterMonitorCallback
    trainer = Trainer(model=model, args=args, train_dataset=ds)
    RouterMonitorCallback.attach(trainer, log="router_log.jsonl")
    trainer.train()

The callback builds a :class:`~moebif.monitor.hooks.RouterMonitor` on the trained model at the
start of training, closes its step after every optimizer step (``on_step_end``: the counts of
all gradient-accumulation micro-batches of the step), and at each logging step adds
``router/<layer>/<metric>`` (kappa_hat with ``kappa_lo``/``kappa_hi``, MaxVio, Neff, dead
experts, max-load excess) and, when alarms fired since the last log, ``router/alarms`` (text) to
the logs: into ``trainer.state.log_history`` and, because :meth:`attach` puts the callback
before the ``report_to`` integrations, into what they log (TensorBoard, W&B, ...). The alarms also
go to the ``moebif`` logger (warning).

Checkpoints: at every ``on_save`` the monitor's state goes to ``router_monitor.json`` in the
checkpoint folder (world process zero); when the Trainer resumes from a checkpoint that has one,
the monitor continues from it (its window, its step numbers, a new log segment).

A callback passed as ``Trainer(callbacks=[...])`` instead of :meth:`attach` runs after the
``report_to`` integrations: its metrics still reach ``log_history``, but not those loggers.
"""

from __future__ import annotations

import json
import logging
import os

from transformers import TrainerCallback

from .tensorboard import alarm_text, scalars

__all__ = ["RouterMonitorCallback"]

STATE_FILE = "router_monitor.json"
logger = logging.getLogger("moebif")


class RouterMonitorCallback(TrainerCallback):
    """A ``TrainerCallback`` that monitors the MoE routers of the trained model.

    **Arguments:**

    - ``monitor``: an existing :class:`~moebif.monitor.hooks.RouterMonitor` (default: one is
      built on the Trainer's model at ``on_train_begin`` with ``**monitor_options``).
    - ``prefix``: of the logged names (``router/``).
    - ``**monitor_options``: for the RouterMonitor built here (``log=``, ``window=``,
      ``modules=``, ...).
    """

    def __init__(self, monitor=None, *, prefix: str = "router/", **monitor_options):
        self.monitor = monitor
        self.prefix = prefix
        self.monitor_options = monitor_options
        self.alarms: list = []  # every alarm raised
        self._unlogged: list = []  # alarms since the last on_log

    @classmethod
    def attach(cls, trainer, **kwargs) -> RouterMonitorCallback:
        """Make a callback and put it first in ``trainer``'s callbacks, before the ``report_to``
        integrations, so that what it adds to the logs reaches them. Returns it."""
        cb = cls(**kwargs)
        trainer.callback_handler.callbacks.insert(0, cb)
        return cb

    # ------------------------------------------------------------------------------------

    def on_train_begin(self, args, state, control, model=None, **kwargs):
        if self.monitor is None:
            from ..hooks import RouterMonitor

            opts = dict(self.monitor_options)
            opts.setdefault("optimizer", kwargs.get("optimizer"))  # its lr goes in the log
            self.monitor = RouterMonitor(model, **opts)
        path = os.path.join(args.output_dir, f"checkpoint-{state.global_step}", STATE_FILE)
        if state.global_step > 0 and os.path.isfile(path):
            with open(path, encoding="utf-8") as fh:
                self.monitor.load_state_dict(json.load(fh))

    def on_step_end(self, args, state, control, **kwargs):
        new = self.monitor.step()
        if new:
            self.alarms += new
            self._unlogged += new
            if state.is_world_process_zero:
                for a in new:
                    logger.warning(
                        "router alarm: step %d %s %s: %s", a.step, a.layer, a.kind, a.message
                    )

    def on_log(self, args, state, control, logs=None, **kwargs):
        if self.monitor is None or logs is None:
            return
        extra = scalars(self.monitor, self.prefix)
        if self._unlogged:
            extra[f"{self.prefix}alarms"] = alarm_text(self._unlogged)
            self._unlogged = []
        logs.update(extra)  # what the report_to integrations after this callback log
        if state.log_history:
            state.log_history[-1].update(extra)  # the Trainer appended a copy just before

    def on_save(self, args, state, control, **kwargs):
        if self.monitor is None or not state.is_world_process_zero:
            return
        from ..._io import atomic_write_text

        folder = os.path.join(args.output_dir, f"checkpoint-{state.global_step}")
        if os.path.isdir(folder):
            atomic_write_text(
                os.path.join(folder, STATE_FILE), json.dumps(self.monitor.state_dict())
            )

    def on_train_end(self, args, state, control, **kwargs):
        if self.monitor is not None:
            self.alarms += self.monitor.flush()
            self.monitor.close()
