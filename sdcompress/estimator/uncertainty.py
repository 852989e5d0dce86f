"""Bootstrap helpers: resampling counts and percentile intervals.

Exact SD is bootstrapped over minibatches (each replicate re-averages the sorted
exponents of n batches drawn with replacement); density SDs over SLQ runs (each
replicate re-weights the runs by their multinomial counts, with the grid and kernel
bandwidth held at their full-sample values). Either way the interval measures the
sampling noise of the minibatches/probes used, not the bias of the method (finite
Lanczos steps, kernel smoothing), which the tests measure against exact SD.
"""

from __future__ import annotations

from typing import Callable

import numpy as np


def bootstrap_counts(n: int, n_boot: int, seed: int) -> np.ndarray:
    """(n_boot, n) multinomial counts: how often each of n items is drawn per replicate."""
    rng = np.random.default_rng(seed)
    return rng.multinomial(n, np.full(n, 1.0 / n), size=n_boot).astype(np.float64)


def percentile_interval(samples: np.ndarray, level: float) -> tuple[float, float]:
    """The central ``level`` percentile interval of ``samples``."""
    tail = 100.0 * (1.0 - level) / 2.0
    low, high = np.percentile(np.asarray(samples, dtype=np.float64), [tail, 100.0 - tail])
    return float(low), float(high)


def bootstrap(n: int, statistic: Callable[[np.ndarray], float], *, n_boot: int, level: float, seed: int) -> tuple[tuple[float, float] | None, np.ndarray]:
    """Percentile interval of ``statistic(counts)`` over multinomial resamples of n items.

    Args:
        n: number of items (minibatches, runs).
        statistic: maps a (n,) count vector (Σ = n) to the statistic.
        n_boot: replicates (0: no interval).
        level: confidence level.
        seed: seeds the resampling.

    Returns:
        (interval or ``None``, the replicate values).
    """
    if n_boot < 1 or n < 2:
        return None, np.empty(0)
    values = np.array([statistic(c) for c in bootstrap_counts(n, n_boot, seed)])
    return percentile_interval(values, level), values
