"""Fixtures of the monitor tests."""

from __future__ import annotations

import pytest


@pytest.fixture(autouse=True)
def _one_torch_thread():
    """One torch thread per test: on a loaded 2-core machine two OpenMP threads made a tiny
    model's training step 70x slower (2.2 s against 32 ms)."""
    try:
        import torch
    except ImportError:
        yield
        return
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
