"""Exact sharpness exponents from dense minibatch Hessians (PAPER.md §3, "Exact").

For each of n minibatches B_1, …, B_n at the point w:

    α(B_b) = eigvalsh(H_{B_b}(w)),   σ_i = |1 − η·wd − η α_i|   (J = (1 − η·wd) I − η H)
    λ^{(b)} = sort_decreasing(ln σ)
    λ_k = (1/n) Σ_b λ_k^{(b)}          (averaged index by index)

and SD is the Kaplan–Yorke dimension of λ (PAPER.md §2). Cost: n · d Hessian-vector
product equivalents (one reverse-over-reverse pass per row of H) plus n · O(d³) for the
eigendecompositions; memory Θ(d²). The eigendecomposition is always done in float64
(the Hessian itself is formed in the loss's dtype).

Per-module SD and expansion share (PAPER.md §8). With the Kaplan–Yorke weights of the
averaged exponents, w_i = 1 for i ≤ j*, w_{j*+1} = SD − j*, 0 beyond (Σ w_i = SD), and
u_i^{(B)} the eigenvectors of H_B ordered like their exponents λ_i^{(B)} (the same
decreasing order the averaging uses), for each parameter tensor b (rows P_b of the
flat vector)

    SD_b = (1/n) Σ_B Σ_i w_i ‖P_b u_i^{(B)}‖²                    (Σ_b SD_b = SD),
    E_b  ∝ (1/n) Σ_B Σ_i max(λ_i^{(B)}, 0) ‖P_b u_i^{(B)}‖²     (Σ_b E_b = 1),

E_b with each minibatch's own exponents (what a density method's f(H_B) sees). Tied
exponents (|Δλ| ≤ ``_TIE_TOL`` within one minibatch, e.g. the exactly-zero eigenvalues of
a symmetry) share the mean of their weights, so SD_b does not depend on which basis
``eigh`` returns for a degenerate eigenspace. When no exponent is positive in any
minibatch there is no expansion to share and ``module_expansion`` is ``None``.
"""

from __future__ import annotations

import logging
import time
from typing import Callable, Sequence

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
# exponents closer than this within one minibatch are one degenerate eigenspace
_TIE_TOL = 1e-9


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


def minibatch_spectra(
    floss: FunctionalLoss,
    batch_for: Callable[[int], Batch],
    n_batches: int,
    *,
    lr: float,
    weight_decay: float,
    w: torch.Tensor | None = None,
    chunk_size: int | None = None,
    max_params: int = 16384,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Eigenvalues, sorted exponents and per-block eigenvector mass of the dense minibatch Hessians.

    Returns:
        ``(eigenvalues, exponents, mass)``: (n, d) ascending eigenvalues; (n, d) exponents
        ln|1 − η·wd − ηα| sorted decreasing per row; (n, n_params, d) float64 with
        ``mass[B, b, i]`` = ‖P_b u_i‖² for the eigenvector of exponent ``exponents[B, i]``
        and parameter tensor b in ``floss.layout`` order (columns sum to 1).

    Raises:
        EstimatorError: d above ``max_params`` (the message gives the memory needed).
    """
    w = floss.params_vector() if w is None else w
    check_dense_size(floss.d, max_params, w.dtype)
    sizes = list(floss.layout.sizes)
    evs = np.empty((n_batches, floss.d))
    lam = np.empty((n_batches, floss.d))
    mass = np.empty((n_batches, len(sizes), floss.d))
    for b in progress(range(n_batches), desc="dense Hessians", total=n_batches):
        H = dense_hessian(floss, batch_for(b), w, chunk_size=chunk_size)
        alpha, U = torch.linalg.eigh(H.double())
        del H
        alpha_np = alpha.cpu().numpy()
        sigma = np.abs(1.0 - lr * weight_decay - lr * alpha_np)
        with np.errstate(divide="ignore"):
            row = np.maximum(np.log(sigma), _LOG_TINY)
        order = np.argsort(-row, kind="stable")
        evs[b], lam[b] = alpha_np, row[order]
        sq = U.square()  # (d, d): sq[k, i] = u_i[k]²
        per_block = torch.stack([blk.sum(dim=0) for blk in sq.split(sizes, dim=0)])  # (n_params, d)
        mass[b] = per_block.cpu().numpy()[:, order]
        del U, sq
    return evs, lam, mass


def tie_averaged(weights: np.ndarray, exponents: np.ndarray, tol: float = _TIE_TOL) -> np.ndarray:
    """``weights`` with each run of tied ``exponents`` (sorted, gaps ≤ tol) given its mean weight."""
    out = np.asarray(weights, dtype=np.float64).copy()
    lam = np.asarray(exponents, dtype=np.float64)
    if len(lam) < 2:
        return out
    breaks = np.nonzero(np.abs(np.diff(lam)) > tol)[0] + 1
    for lo, hi in zip(np.r_[0, breaks], np.r_[breaks, len(lam)]):
        if hi - lo > 1:
            out[lo:hi] = out[lo:hi].mean()
    return out


def kaplan_yorke_weights(exponents: np.ndarray) -> np.ndarray:
    """w_i = 1 for i ≤ j*, SD − j* at j* + 1, 0 beyond (Σ w_i = SD), for decreasing exponents."""
    lam = np.asarray(exponents, dtype=np.float64)
    sd, j = sharpness_dimension(lam), critical_index(lam)
    w = np.zeros(len(lam))
    w[:j] = 1.0
    if j < len(lam):
        w[j] = sd - j
    return w


def module_shares(
    exponents: np.ndarray, per_batch: np.ndarray, mass: np.ndarray, names: Sequence[str]
) -> tuple[dict[str, float], dict[str, float] | None]:
    """SD_b and E_b of every parameter tensor (see the module docstring).

    Args:
        exponents: (d,) averaged exponents, sorted decreasing (the SD reported).
        per_batch: (n, d) each minibatch's sorted exponents.
        mass: (n, n_params, d) ‖P_b u_i‖² in the order of ``per_batch``.
        names: the parameter names (``floss.layout.names``).

    Returns:
        ``(module_sd, module_expansion)``; ``module_expansion`` is ``None`` when no
        exponent is positive.
    """
    w = kaplan_yorke_weights(exponents)
    sd_b = np.zeros(len(names))
    ex_b = np.zeros(len(names))
    for lam_b, mass_b in zip(per_batch, mass):
        sd_b += mass_b @ tie_averaged(w, lam_b)
        ex_b += mass_b @ np.maximum(lam_b, 0.0)
    n = len(per_batch)
    module_sd = {name: float(v / n) for name, v in zip(names, sd_b)}
    total = float(ex_b.sum())
    module_expansion = {name: float(v / total) for name, v in zip(names, ex_b)} if total > 0 else None
    return module_sd, module_expansion


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
        An :class:`SDEstimate` with one exponent per parameter, ``module_sd`` and
        ``module_expansion`` per parameter tensor (module docstring) and, in ``extras``,
        ``param_sizes`` (elements per tensor),
        ``top_eigenvalue`` (mean over batches of λ_max(H_B)), ``top_eigenvalue_max``,
        ``trace`` (mean of tr H_B), ``n_negative`` and ``n_edge`` (mean counts of α < 0
        and of α > 2/η), ``per_batch_sd`` and ``sd_bootstrap_std``.
    """
    start = time.perf_counter()
    evs, per_batch, mass = minibatch_spectra(floss, batch_for, n_batches, lr=lr, weight_decay=weight_decay,
                                             chunk_size=chunk_size, max_params=max_params)
    lam = per_batch.mean(axis=0)
    sd, j = sharpness_dimension(lam), critical_index(lam)
    module_sd, module_expansion = module_shares(lam, per_batch, mass, floss.layout.names)
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
        "param_sizes": dict(zip(floss.layout.names, floss.layout.sizes)),
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
        module_sd=module_sd,
        module_expansion=module_expansion,
    )
