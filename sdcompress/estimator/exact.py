"""Exact sharpness exponents from dense minibatch Hessians (PAPER.md §3, "Exact").

For each of n minibatches B_1, …, B_n at the point w:

    α(B_b) = eigvalsh(H_{B_b}(w)),   σ_i = |1 − η·wd − η α_i|   (J = (1 − η·wd) I − η H)
    λ^{(b)} = sort_decreasing(ln σ)
    λ_k = (1/n) Σ_b λ_k^{(b)}          (averaged index by index)

and SD is the Kaplan–Yorke dimension of λ (PAPER.md §2). Cost: n · d Hessian-vector
product equivalents (one reverse-over-reverse pass per row of H) plus n · O(d³) for the
eigendecompositions; memory Θ(d²). The eigendecomposition is always done in float64
(the Hessian itself is formed in the loss's dtype).
"""

from __future__ import annotations

import logging
import time
from typing import Callable

import numpy as np
import torch

from sdcompress.data.core import Batch
from sdcompress.estimator.kaplan_yorke import critical_index, sharpness_dimension
from sdcompress.estimator.result import SDEstimate
from sdcompress.estimator.uncertainty import bootstrap
from sdcompress.linalg.dense import check_dense_size, dense_hessian
from sdcompress.models.functional import FunctionalLoss
from sdcompress.progress import progress

logger = logging.getLogger(__name__)

# ln of the smallest normal float64: the exponent of a direction with σ = 0 exactly
_LOG_TINY = float(np.log(np.finfo(np.float64).tiny))


def minibatch_eigenvalues(
    floss: FunctionalLoss,
    batch_for: Callable[[int], Batch],
    n_batches: int,
    *,
    w: torch.Tensor | None = None,
    chunk_size: int | None = None,
    max_params: int = 16384,
) -> np.ndarray:
    """(n_batches, d) ascending eigenvalues of the dense minibatch Hessians, float64.

    Raises:
        EstimatorError: d above ``max_params`` (the message gives the memory needed).
    """
    w = floss.params_vector() if w is None else w
    check_dense_size(floss.d, max_params, w.dtype)
    out = np.empty((n_batches, floss.d))
    for b in progress(range(n_batches), desc="dense Hessians", total=n_batches):
        H = dense_hessian(floss, batch_for(b), w, chunk_size=chunk_size)
        out[b] = torch.linalg.eigvalsh(H.double()).cpu().numpy()
        del H
    return out


def sorted_exponents(eigenvalues: np.ndarray, lr: float, weight_decay: float = 0.0) -> np.ndarray:
    """ln|1 − η·wd − η α| per row, each row sorted decreasing (an exact zero σ → ln(tiny))."""
    sigma = np.abs(1.0 - lr * weight_decay - lr * np.asarray(eigenvalues, dtype=np.float64))
    with np.errstate(divide="ignore"):
        lam = np.maximum(np.log(sigma), _LOG_TINY)
    return -np.sort(-lam, axis=-1)


def exact_estimate(
    floss: FunctionalLoss,
    batch_for: Callable[[int], Batch],
    *,
    lr: float,
    weight_decay: float,
    n_batches: int,
    chunk_size: int | None,
    max_params: int,
    n_bootstrap: int,
    confidence: float,
    seed: int,
    neutral_tol: float,
    params: tuple[str, ...] | None = None,
    settings: dict | None = None,
) -> SDEstimate:
    """Exact SD from ``n_batches`` dense minibatch Hessians (see the module docstring).

    Uncertainty: a bootstrap over the minibatches (``n_bootstrap`` replicates, percentile
    interval at ``confidence``).

    Returns:
        An :class:`SDEstimate` with one exponent per parameter and, in ``extras``,
        ``top_eigenvalue`` (mean over batches of λ_max(H_B)), ``top_eigenvalue_max``,
        ``trace`` (mean of tr H_B), ``n_negative`` and ``n_edge`` (mean counts of α < 0
        and of α > 2/η), ``per_batch_sd`` and ``sd_bootstrap_std``.
    """
    start = time.perf_counter()
    evs = minibatch_eigenvalues(floss, batch_for, n_batches, chunk_size=chunk_size, max_params=max_params)
    per_batch = sorted_exponents(evs, lr, weight_decay)  # (n, d)
    lam = per_batch.mean(axis=0)
    sd, j = sharpness_dimension(lam), critical_index(lam)
    interval, reps = bootstrap(
        n_batches, lambda c: sharpness_dimension(c @ per_batch / n_batches), n_boot=n_bootstrap, level=confidence, seed=seed
    )
    center = float(np.log(abs(1.0 - lr * weight_decay)))
    n_neutral = int(np.sum(np.abs(lam - center) <= neutral_tol))
    extras = {
        "top_eigenvalue": float(evs[:, -1].mean()),
        "top_eigenvalue_max": float(evs[:, -1].max()),
        "edge_of_stability": 2.0 / lr,
        "trace": float(evs.sum(axis=1).mean()),
        "n_negative": float(np.mean(np.sum(evs < 0, axis=1))),
        "n_edge": float(np.mean(np.sum(evs > 2.0 / lr, axis=1))),
        "per_batch_sd": [sharpness_dimension(row) for row in per_batch],
        "neutral_exponent": center,
        "exponent_sum": float(lam.sum()),
    }
    if len(reps):
        extras["sd_bootstrap_std"] = float(np.std(reps))
    return SDEstimate(
        method="exact",
        sd=sd,
        j_star=j,
        exponents=lam,
        d=floss.d,
        n_hvp=n_batches * floss.d,
        wall_time_s=time.perf_counter() - start,
        lr=lr,
        weight_decay=weight_decay,
        sd_interval=interval,
        uncertainty=f"bootstrap {100 * confidence:g}% over {n_batches} minibatches ({n_bootstrap} replicates)" if interval else "",
        n_neutral=n_neutral,
        neutral_tol=neutral_tol,
        params=params,
        settings=settings or {},
        extras=extras,
    )
