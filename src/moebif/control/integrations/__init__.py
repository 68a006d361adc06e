"""The controller in training stacks, each behind an optional extra:

- :class:`RouterControllerCallback` (``moebif[trainer]``): a Hugging Face ``TrainerCallback``;
- :class:`RouterControllerLightning` (``moebif[lightning]``): a PyTorch Lightning ``Callback``.

Both build a :class:`~moebif.control.RouterController` on the trained model when training starts
(or take one), step it once per optimizer step, and keep its state in checkpoints. With a
monitor's callback too, put the controller's after it and pass ``monitor=`` (the counts are then
the monitor's); before it, the controller acts on the counts one step late.

Names are imported on first use, so ``import moebif.control.integrations`` needs none of them.
"""

from __future__ import annotations

__all__ = ["RouterControllerCallback", "RouterControllerLightning"]

_WHERE = {"RouterControllerCallback": ".hf", "RouterControllerLightning": ".lightning"}


def __getattr__(name):
    if name in _WHERE:
        import importlib

        return getattr(importlib.import_module(_WHERE[name], __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
