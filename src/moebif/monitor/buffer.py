"""The device buffer of :class:`~moebif.monitor.hooks.RouterMonitor`, laid out by name.

Every router adds into a fixed slice of one float64 buffer per device (no host reads in the
hooks: fixed-size slices, no data-dependent shapes). :class:`SegmentLayout` names the parts of
one router's slice, for N experts:

====================  ========================================================================
``invalid_low``       selected indices below -1 (an error, raised by ``step()``)
``unassigned``        index -1 (dropped)
``counts``            experts ``0 .. N-1``: the selections per expert
``skip``              index N, the skip slot transformers' experts accept, and the unassigned
                      slots of a capacity mask (dropped)
``invalid_high``      indices above N, or mask entries other than 0/1 (an error)
``importance``        the per-token selection probabilities, summed (rows sum to 1: their sum
                      is the tokens scored)
``logit_sums``        the router's logits, summed per expert
``logit_tokens``      the tokens whose logits were summed (so ranks add up before the mean)
``forces``            the force probe's :data:`~moebif.monitor.forces.FORCE_FIELDS` sums
====================  ========================================================================

``selection`` (the first N + 4 values) takes every selected index, so its sum is ``k`` times the
tokens routed. The functions below add into a slice through its layout."""

from __future__ import annotations

from dataclasses import dataclass

from .forces import FORCE_FIELDS

__all__ = [
    "SegmentLayout",
    "add_importance",
    "add_indices",
    "add_logits",
    "add_mask",
    "segment_layout",
]


@dataclass(frozen=True)
class SegmentLayout:
    """Where each quantity of one router with ``n`` experts sits in its slice (module
    docstring); ``size`` values in all."""

    n: int
    invalid_low: int
    unassigned: int
    counts: slice
    skip: int
    invalid_high: int
    selection: slice
    importance: slice
    logit_sums: slice
    logit_tokens: int
    forces: slice
    size: int


def segment_layout(n: int) -> SegmentLayout:
    """The layout of a router with ``n`` experts."""
    n = int(n)
    f0 = 3 * n + 5
    return SegmentLayout(
        n=n,
        invalid_low=0,
        unassigned=1,
        counts=slice(2, n + 2),
        skip=n + 2,
        invalid_high=n + 3,
        selection=slice(0, n + 4),
        importance=slice(n + 4, 2 * n + 4),
        logit_sums=slice(2 * n + 4, 3 * n + 4),
        logit_tokens=3 * n + 4,
        forces=slice(f0, f0 + FORCE_FIELDS),
        size=f0 + FORCE_FIELDS,
    )


def _ones(seg, numel: int):
    import torch

    return torch.ones(1, dtype=seg.dtype, device=seg.device).expand(numel)


def add_indices(seg, idx, lay: SegmentLayout) -> None:
    """Add selected indices: one fixed-size ``index_add_``, no data-dependent shape (below -1
    -> ``invalid_low``, -1 -> ``unassigned``, e -> ``counts[e]``, N -> ``skip``, above N ->
    ``invalid_high``)."""
    b = idx.detach().reshape(-1).long()
    b = (b + 2).clamp_(lay.invalid_low, lay.invalid_high)
    seg[lay.selection].index_add_(0, b, _ones(seg, b.numel()))


def add_mask(seg, mask, lay: SegmentLayout, k: int, *, dispatch=False) -> None:
    """A one-hot / dispatch mask ``(..., N)`` (``dispatch``: ``(T, N, capacity)``) or a dense
    gate matrix (nonzero = dispatched): counts per expert; the unassigned of ``k`` per token go
    to the skip slot (dropped); entries other than 0/1 are invalid."""
    n = lay.n
    m = mask.detach()
    tokens = m.shape[0] if dispatch else m.numel() // n
    if dispatch:
        m = m.reshape(m.shape[0], n, -1).transpose(1, 2)
    m = m.reshape(-1, n)
    if m.is_floating_point():
        m = m != 0
    m = m.to(seg.dtype)
    c = m.sum(0)
    seg[lay.counts] += c
    seg[lay.skip] += k * tokens - c.sum()  # dropped (beyond capacity)
    seg[lay.invalid_high] += ((m != 0) & (m != 1)).sum()


def add_importance(seg, p, lay: SegmentLayout) -> None:
    """Add per-token probabilities ``(T, N)`` (rows sum to 1) into ``importance``."""
    seg[lay.importance] += p.sum(0)


def add_logits(seg, logits, lay: SegmentLayout) -> None:
    """Add per-token router logits ``(T, N)`` (summed in float64) and their token count."""
    seg[lay.logit_sums] += logits.sum(0, dtype=seg.dtype)
    seg[lay.logit_tokens] += logits.shape[0]
