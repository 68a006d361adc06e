"""Data of the trainable experiments: the two-regime regression of sec. 8.1 and scikit-learn's
digits (sec. 8.3).

Target of sec. 8.1 on ``x in [-1, 1]``::

    y(x) = -1 - 0.7 x + 0.05 sin(8 pi x)   (x < 0)
    y(x) =  1 + 0.7 x + 0.05 sin(8 pi x)   (x >= 0)

Digits: the 1797 8x8 images of ``sklearn.datasets.load_digits`` (shipped with scikit-learn, no
download), a fixed stratified train/test split, every pixel standardised with the training mean
and standard deviation (constant pixels are left centred, not divided by zero).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

__all__ = ["Dataset", "digits_data", "regression_data", "two_regime_target"]


@dataclass(frozen=True, eq=False)
class Dataset:
    """Tensors shared by every ensemble member: ``x_*`` is ``(N, d_in)`` float32, ``y_*`` is
    ``(N, 1)`` float32 (regression) or ``(N,)`` int64 class labels (classification)."""

    x_train: Tensor
    y_train: Tensor
    x_test: Tensor
    y_test: Tensor
    task: str  # "regression" or "classification"

    @property
    def n_train(self) -> int:
        return self.x_train.shape[0]


def two_regime_target(x: np.ndarray) -> np.ndarray:
    """The target ``y(x)`` of sec. 8.1."""
    x = np.asarray(x, dtype=float)
    wiggle = 0.05 * np.sin(8 * np.pi * x)
    return np.where(x < 0, -1.0 - 0.7 * x, 1.0 + 0.7 * x) + wiggle


def regression_data(*, n_train: int = 1024, n_test: int = 2001, seed: int = 0) -> Dataset:
    """Sec. 8.1 data: ``n_train`` points ``x ~ U[-1, 1]`` (fixed by ``seed``) and, as test set, a
    uniform grid of ``n_test`` points, so that test averages approximate ``E_x`` over ``U[-1, 1]``.
    Inputs are not rescaled: ``x`` already spans ``[-1, 1]`` and the boundary ``x*`` is read in
    these units."""
    rng = np.random.default_rng(seed)
    x_train = rng.uniform(-1.0, 1.0, size=n_train)
    x_test = np.linspace(-1.0, 1.0, n_test)

    def col(a):
        return torch.as_tensor(a, dtype=torch.float32).reshape(-1, 1)

    return Dataset(
        col(x_train),
        col(two_regime_target(x_train)),
        col(x_test),
        col(two_regime_target(x_test)),
        "regression",
    )


def digits_data(*, test_fraction: float = 0.3, seed: int = 0) -> Dataset:
    """Sec. 8.3 data: scikit-learn digits, stratified split (``test_fraction``, ``seed``),
    standardised with training statistics."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    x, y = load_digits(return_X_y=True)
    x_tr, x_te, y_tr, y_te = train_test_split(
        x, y, test_size=test_fraction, stratify=y, random_state=seed
    )
    mean = x_tr.mean(axis=0)
    std = x_tr.std(axis=0)
    std[std == 0] = 1.0
    return Dataset(
        torch.as_tensor((x_tr - mean) / std, dtype=torch.float32),
        torch.as_tensor(y_tr, dtype=torch.int64),
        torch.as_tensor((x_te - mean) / std, dtype=torch.float32),
        torch.as_tensor(y_te, dtype=torch.int64),
        "classification",
    )
