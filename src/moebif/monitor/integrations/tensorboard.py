"""TensorBoard output of a :class:`~moebif.monitor.hooks.RouterMonitor`: per layer the scalars
``router/<layer>/kappa_hat``, ``kappa_lo``, ``kappa_hi`` (the 95% band; drawn as one band chart
by the custom-scalars layout), ``max_vio``, ``n_eff``, ``dead``, ``max_load_excess``, and each
alarm as text (``router/alarms``). Needs ``moebif[tensorboard]``.

    from moebif.monitor.integrations import RouterTensorBoard
    tb = RouterTensorBoard("runs/exp1")
    ...; alarms = monitor.step(); tb.write(monitor, step, alarms)
"""

from __future__ import annotations

__all__ = ["RouterTensorBoard", "scalars"]

# monitor metric -> TensorBoard name
_METRICS = {
    "kappa_hat": "kappa_hat",
    "kappa_lo": "kappa_lo",
    "kappa_hi": "kappa_hi",
    "max_vio": "max_vio",
    "n_eff": "n_eff",
    "dead": "dead",
    "max_load_excess_filtered": "max_load_excess",
    "cv": "cv",
}


def scalars(monitor, prefix: str = "router/") -> dict[str, float]:
    """``{"router/<layer>/<metric>": value}`` of the monitor's last step (finite values only):
    what the integrations log."""
    out = {}
    for label, metrics in monitor.metrics().items():
        for key, name in _METRICS.items():
            if key in metrics:
                out[f"{prefix}{label}/{name}"] = metrics[key]
    return out


def alarm_text(alarms) -> str:
    """The alarms as Markdown lines (``step``, ``layer``, ``kind``: message)."""
    return "\n\n".join(f"step {a.step} `{a.layer}` **{a.kind}**: {a.message}" for a in alarms)


class RouterTensorBoard:
    """Write a RouterMonitor's scalars and alarms to TensorBoard.

    **Arguments:**

    - ``log_dir``: the run folder (a ``SummaryWriter`` is made) or an existing
      ``torch.utils.tensorboard.SummaryWriter``.
    - ``prefix``: of the tags (default ``router/``).
    """

    def __init__(self, log_dir, *, prefix: str = "router/"):
        from torch.utils.tensorboard import SummaryWriter

        self.writer = log_dir if isinstance(log_dir, SummaryWriter) else SummaryWriter(log_dir)
        self.prefix = prefix
        self._layout_done = False

    def _layout(self, monitor) -> None:
        p = self.prefix
        charts = {
            label: [
                "Margin",
                [f"{p}{label}/kappa_hat", f"{p}{label}/kappa_lo", f"{p}{label}/kappa_hi"],
            ]
            for label in monitor.routers
        }
        self.writer.add_custom_scalars({"kappa_hat with its 95% band": charts})
        self._layout_done = True

    def write(self, monitor, step: int, alarms=()) -> None:
        """The monitor's scalars at ``step`` and the ``alarms`` (those :meth:`step` returned)."""
        if not self._layout_done:
            self._layout(monitor)
        for tag, v in scalars(monitor, self.prefix).items():
            self.writer.add_scalar(tag, v, step)
        if alarms:
            self.writer.add_text(f"{self.prefix}alarms", alarm_text(alarms), step)

    def flush(self) -> None:
        self.writer.flush()

    def close(self) -> None:
        self.writer.close()
