"""The router monitor in training stacks, each behind an optional extra:

- :class:`RouterMonitorCallback` (``moebif[trainer]``): a Hugging Face ``TrainerCallback``;
- :class:`RouterMonitorLightning` (``moebif[lightning]``): a PyTorch Lightning ``Callback``;
- :class:`RouterTensorBoard` (``moebif[tensorboard]``): TensorBoard scalars per layer (kappa_hat
  with its 95% band, MaxVio, Neff, dead experts) and the alarms as text.

Names are imported on first use, so ``import moebif.monitor.integrations`` needs none of them.
"""

from __future__ import annotations

__all__ = ["RouterMonitorCallback", "RouterMonitorLightning", "RouterTensorBoard", "scalars"]

_WHERE = {
    "RouterMonitorCallback": ".hf",
    "RouterMonitorLightning": ".lightning",
    "RouterTensorBoard": ".tensorboard",
    "scalars": ".tensorboard",
}


def __getattr__(name):
    if name in _WHERE:
        import importlib

        return getattr(importlib.import_module(_WHERE[name], __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
