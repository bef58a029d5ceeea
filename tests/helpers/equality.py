"""The three comparisons the tests make between computed and expected numbers; each has its own
name because each means something different."""

from __future__ import annotations

import numpy as np
import torch


def bit_equal(a: torch.Tensor, b: torch.Tensor) -> bool:
    """Whether ``a`` and ``b`` are bit-equal: same dtype and shape, equal values with equal signs
    of zero (-0.0 differs from 0.0), NaN matching NaN."""
    if a.dtype != b.dtype or a.shape != b.shape:
        return False
    equal = (a == b) & (torch.signbit(a) == torch.signbit(b))
    return bool((equal | (a.isnan() & b.isnan())).all())


def equal_values(a: torch.Tensor, b: torch.Tensor) -> bool:
    """Whether ``a`` and ``b`` hold equal values: same dtype and shape, equal element by element
    with 0.0 == -0.0 (IEEE equality), NaN matching NaN. Weaker than :func:`bit_equal`."""
    return a.dtype == b.dtype and a.shape == b.shape and bool(((a == b) | (a.isnan() & b.isnan())).all())


def agree(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Element-wise agreement of two arrays: a boolean array, true where the elements are equal
    (0.0 == -0.0) or both NaN. For reporting which elements differ, not just whether any do."""
    return (a == b) | (np.isnan(a) & np.isnan(b))
