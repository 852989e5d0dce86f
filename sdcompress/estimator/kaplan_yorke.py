"""The Kaplan–Yorke formula that turns sorted exponents into a dimension (PAPER.md §2).

    j* = max { j : λ_1 + … + λ_j ≥ 0 }            (j* = 0 if λ_1 < 0)
    SD = j* + (λ_1 + … + λ_{j*}) / |λ_{j*+1}|      for 1 ≤ j* < d
    SD = d if j* = d;  SD = 0 if λ_1 < 0

Note j* is the *last index where the running sum is still ≥ 0*, not the number of
positive exponents (a common error, PAPER.md §6).
"""

from __future__ import annotations

from typing import Sequence

import numpy as np


def critical_index(exponents: Sequence[float] | np.ndarray, weights: Sequence[float] | np.ndarray | None = None) -> int:
    """j*: the number of leading exponents whose running sum is ≥ 0 (0 if λ_1 < 0).

    With ``weights`` (each exponent standing for ``w_i`` eigenvalues, as in the
    pseudo-spectrum) the running sum is weighted; j* still counts entries.
    """
    lam = np.asarray(exponents, dtype=np.float64)
    w = np.ones_like(lam) if weights is None else np.asarray(weights, dtype=np.float64)
    if lam.ndim != 1 or lam.shape != w.shape:
        raise ValueError(f"exponents must be 1-D (got shape {lam.shape}) with matching weights {w.shape}")
    if len(lam) and np.any(np.diff(lam) > 1e-12 * max(1.0, float(np.abs(lam).max()))):
        raise ValueError("exponents must be sorted in decreasing order")
    running = np.cumsum(w * lam)
    nonneg = np.nonzero(running >= 0)[0]
    if len(lam) == 0 or lam[0] < 0:
        return 0
    # the running sum of decreasing exponents is concave: ≥ 0 on a prefix
    return int(nonneg[-1]) + 1


def sharpness_dimension(exponents: Sequence[float] | np.ndarray, weights: Sequence[float] | np.ndarray | None = None) -> float:
    """SD of exponents sorted in decreasing order (PAPER.md §2).

    Args:
        exponents: λ_1 ≥ λ_2 ≥ … (one per direction, or one per group with ``weights``).
        weights: optional multiplicity of each exponent (the pseudo-spectrum's d/M per
            quantile). With weights, SD = Σ_{i ≤ j*} w_i + S_{j*} / |λ_{j*+1}|, where
            S_{j*} = Σ_{i ≤ j*} w_i λ_i: the continuous Kaplan–Yorke interpolation in which
            the next group is entered direction by direction.

    Returns:
        SD in [0, Σ weights]; 0 when λ_1 < 0, the total count when every running sum is ≥ 0.

    Examples:
        >>> sharpness_dimension([1.0, -0.5, -2.0])   # j* = 2, S = 0.5
        2.25
        >>> sharpness_dimension([-0.1, -0.2])
        0.0
    """
    lam = np.asarray(exponents, dtype=np.float64)
    w = np.ones_like(lam) if weights is None else np.asarray(weights, dtype=np.float64)
    j = critical_index(lam, w)
    total = float(w.sum())
    if j == 0:
        return 0.0
    if j == len(lam):
        return total
    s = float(np.sum(w[:j] * lam[:j]))
    nxt = abs(float(lam[j]))
    # s < |λ_{j+1}|·w_{j+1} by definition of j*, so the fraction stays within the next group
    return float(np.sum(w[:j])) + (s / nxt if nxt > 0 else float(w[j]))
