"""SD-SLQ, SD-KDE and SD-PS as :class:`SDEstimate` objects, with a bootstrap over SLQ runs.

The numerics (grid in u = asinh(α/s), cell exponents, histogram, kernel, quantiles) and
the reasons for each choice are in :mod:`sdcompress.estimator.density`.

Per-module SD and expansion (PAPER.md §8) come from the same SLQ runs: each Ritz node
carries per-block weights (:attr:`SpectralMeasure.block_weights`, from the dot products
of the Lanczos vectors with the probe restricted to each parameter tensor), which are
smoothed into per-block cell masses M_b[c] exactly as the method smooths the total
(kernel for kde/ps, bins for slq). Then

- SD_b = Σ_c w_c M_b[c], with w_c the Kaplan–Yorke share of cell c (1 before the
  crossing, the fraction of the crossing cell, 0 beyond; the method's own smoothing is
  the smoothed indicator), rescaled so Σ_b SD_b equals the method's SD;
- E_b ∝ Σ_c max(λ_c, 0) M_b[c] with λ_c the cell's mean exponent (ε included), shares
  summing to 1.

The per-block masses are unbiased but noisy (a Hutchinson estimate per block): blocks
whose estimate comes out negative (small blocks, noise) are set to 0 before the
normalisation. tests/test_estimator_density.py measures the error against dense
eigenvectors on the digits MLP at the edge of stability.
"""

from __future__ import annotations

from typing import Literal

import numpy as np

from sdcompress.estimator.config import EstimateConfig
from sdcompress.estimator.density import (
    cells_sd,
    histogram_block_masses,
    histogram_run_masses,
    kaplan_yorke_cell_weights,
    kde_block_masses,
    kde_run_masses,
    make_grid,
    pseudo_spectrum,
    resolve_bandwidth,
    spectral_radius,
    step_exponent,
    to_u,
)
from sdcompress.estimator.kaplan_yorke import critical_index, sharpness_dimension
from sdcompress.estimator.result import SDEstimate
from sdcompress.estimator.uncertainty import bootstrap
from sdcompress.linalg.slq import SpectralMeasure

DensityMethod = Literal["slq", "kde", "ps"]
# cells lighter than this fraction of d are dropped from the stored exponents/density
_MASS_FLOOR = 1e-9


def _shares(values: np.ndarray, total: float) -> np.ndarray:
    """Clip negative (noise) entries to 0 and rescale to sum to ``total`` (all zero: zeros)."""
    v = np.maximum(values, 0.0)
    s = float(v.sum())
    return v * (total / s) if s > 0 else np.zeros_like(v)


def module_estimates(
    measure: SpectralMeasure,
    block_cells: np.ndarray,
    cell_masses: np.ndarray,
    cell_exponents: np.ndarray,
    sd: float,
) -> tuple[dict[str, float], dict[str, float], dict[str, float]]:
    """Per-block SD (summing to ``sd``) and expansion shares (summing to 1).

    Args:
        measure: the SLQ measure (for the block names).
        block_cells: (G, n_blocks) per-block cell masses M_b[c].
        cell_masses: (G,) the method's cell masses (defines the Kaplan–Yorke weights).
        cell_exponents: (G,) mean exponent of each cell.
        sd: the method's SD.

    Returns:
        ``(module_sd, module_expansion, raw)`` keyed by block name; ``raw`` holds the
        unnormalised per-block counts Σ_c w_c M_b[c] (before clipping/rescaling).
    """
    names = measure.block_names or tuple(str(i) for i in range(block_cells.shape[1]))
    w = kaplan_yorke_cell_weights(cell_exponents, cell_masses)
    raw = w @ block_cells
    expansion = np.maximum(cell_exponents, 0.0) @ block_cells
    sd_b = _shares(raw, sd)
    e_b = _shares(expansion, 1.0)
    return (
        {n: float(v) for n, v in zip(names, sd_b)},
        {n: float(v) for n, v in zip(names, e_b)},
        {n: float(v) for n, v in zip(names, raw)},
    )


def density_estimate(
    measure: SpectralMeasure,
    method: DensityMethod,
    *,
    lr: float,
    weight_decay: float,
    config: EstimateConfig,
    wall_time_s: float = 0.0,
    params: tuple[str, ...] | None = None,
) -> SDEstimate:
    """SD from an SLQ spectral measure by histogram, kernel density or pseudo-spectrum.

    Args:
        measure: the SLQ measure of the minibatch Hessian.
        method: ``"slq"`` (histogram), ``"kde"`` or ``"ps"``.
        lr: η.
        weight_decay: wd.
        config: reads ``eps``, ``bandwidth``, ``n_bins``, ``grid_size``,
            ``density_scale``, ``n_quantiles``, ``n_bootstrap``, ``confidence``, ``seed``
            and ``neutral_tol``.
        wall_time_s: time already spent (the SLQ runs), added to this step's.
        params: the parameter patterns, recorded in the result.

    Returns:
        An :class:`SDEstimate`. ``exponents``/``weights``: the cell exponents and masses
        (slq, kde) or the M quantile exponents with weights d/M (ps). ``extras``:
        ``density`` (cell centres α and masses, for plots), ``bandwidth_u``, ``scale``,
        ``trace`` and ``trace_stderr`` (Hutchinson, from the runs' first Lanczos
        coefficient), ``top_eigenvalue`` (largest Ritz value), ``mass_near_zero``,
        ``slq_nodes``/``slq_masses`` (the raw measure), ``sd_ritz`` (SD of the raw Ritz
        nodes, for comparison); with per-block weights also ``module_sd_raw`` (the
        per-block counts before rescaling to SD), ``module_weight_defect`` (largest
        |Σ_b ω − τ| of a node: the basis' loss of orthogonality) and ``reorth``.
        ``module_sd``/``module_expansion``: per parameter tensor when the measure has
        block weights (see the module docstring), else ``None``.
    """
    import time

    start = time.perf_counter()
    d, eps = measure.d, config.eps
    radius = spectral_radius(measure)
    s, c = config.density_scale * radius, config.density_linear * radius
    h = resolve_bandwidth(config.bandwidth, to_u(measure.nodes, s, c), measure.masses())
    grid = make_grid(measure, density_scale=config.density_scale, density_linear=config.density_linear, grid_size=config.grid_size, pad=4.0 * h)
    cell_lam = grid.cell_exponents(lr, weight_decay, eps)
    if method == "slq":
        run_masses = histogram_run_masses(measure, grid, config.n_bins)
    else:
        run_masses = kde_run_masses(measure, grid, h)
    n_quantiles = min(config.n_quantiles, d)

    def sd_of(masses: np.ndarray) -> float:
        if method == "ps":
            lam_q, w_q = pseudo_spectrum(grid, masses, n_quantiles, d, lr, weight_decay, eps, config.ps_representative, cell_lam)
            return sharpness_dimension(lam_q, w_q)
        return cells_sd(cell_lam, masses)[0]

    masses = run_masses.sum(axis=0)
    if method == "ps":
        lam, weights = pseudo_spectrum(grid, masses, n_quantiles, d, lr, weight_decay, eps, config.ps_representative, cell_lam)
        sd, j = sharpness_dimension(lam, weights), critical_index(lam, weights)
    else:
        sd, j, lam, weights = cells_sd(cell_lam, masses)
    n = measure.n_runs
    interval, reps = bootstrap(n, lambda c: sd_of(c @ run_masses), n_boot=config.n_bootstrap, level=config.confidence, seed=config.seed)

    center = float(np.log(abs(1.0 - lr * weight_decay) + eps))
    node_lam = step_exponent(measure.nodes, lr, weight_decay, eps)
    node_mass = measure.masses()
    order = np.argsort(-node_lam, kind="stable")
    keep = masses > _MASS_FLOOR * d
    traces = measure.traces
    extras = {
        "density": {"alpha": grid.alpha_centers[keep].tolist(), "mass": masses[keep].tolist(), "exponent": cell_lam[keep].tolist()},
        "bandwidth_u": h,
        "scale": s,
        "linear_scale": c,
        "trace": float(traces.mean()),
        "trace_stderr": float(traces.std(ddof=1) / np.sqrt(n)) if n > 1 else float("nan"),
        "top_eigenvalue": float(measure.top.max()),
        "top_eigenvalue_mean": float(measure.top.mean()),
        "edge_of_stability": 2.0 / lr,
        "mass_near_zero": float(node_mass[np.abs(measure.nodes) <= 1e-4 * np.max(np.abs(measure.nodes))].sum()),
        "neutral_exponent": center,
        "exponent_sum": float(np.sum(node_mass * node_lam)),
        "sd_ritz": sharpness_dimension(node_lam[order], node_mass[order]),
        "slq_nodes": measure.nodes.tolist(),
        "slq_masses": node_mass.tolist(),
        "slq_run": measure.run.tolist(),
    }
    if len(reps):
        extras["sd_bootstrap_std"] = float(np.std(reps))
    module_sd = module_expansion = None
    if measure.block_weights is not None:
        block_cells = histogram_block_masses(measure, grid, config.n_bins) if method == "slq" else kde_block_masses(measure, grid, h)
        module_sd, module_expansion, raw = module_estimates(measure, block_cells, masses, cell_lam, float(sd))
        extras["module_sd_raw"] = raw
        extras["module_weight_defect"] = float(np.max(np.abs(measure.block_weights.sum(axis=1) - measure.tau)))
    n_neutral = int(round(float(node_mass[np.abs(node_lam - center) <= config.neutral_tol].sum())))
    settings = {
        "slq_runs": n,
        "lanczos_steps": int(np.bincount(measure.run).max()),
        "eps": eps,
        "bandwidth": config.bandwidth,
        "n_bins": config.n_bins,
        "grid_size": config.grid_size,
        "density_scale": config.density_scale,
        "density_linear": config.density_linear,
        "n_quantiles": n_quantiles,
        "ps_representative": config.ps_representative,
        "seed": config.seed,
        "reorth": measure.reorth,
    }
    return SDEstimate(
        method=method,
        sd=float(sd),
        j_star=int(j),
        exponents=np.asarray(lam, dtype=np.float64),
        weights=np.asarray(weights, dtype=np.float64),
        d=d,
        n_hvp=measure.n_hvp,
        wall_time_s=wall_time_s + time.perf_counter() - start,
        lr=lr,
        weight_decay=weight_decay,
        sd_interval=interval,
        uncertainty=f"bootstrap {100 * config.confidence:g}% over {n} SLQ runs ({config.n_bootstrap} replicates)" if interval else "",
        n_neutral=n_neutral,
        neutral_tol=config.neutral_tol,
        params=params,
        settings=settings,
        extras=extras,
        module_sd=module_sd,
        module_expansion=module_expansion,
    )
