"""SD-SLQ, SD-KDE and SD-PS as :class:`SDEstimate` objects, with a bootstrap over SLQ runs.

The numerics (grid in u = asinh(α/s), cell exponents, histogram, kernel, quantiles) and
the reasons for each choice are in :mod:`sdcompress.estimator.density`.
"""

from __future__ import annotations

from typing import Literal

import numpy as np

from sdcompress.estimator.config import EstimateConfig
from sdcompress.estimator.density import (
    cells_sd,
    histogram_run_masses,
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
        nodes, for comparison).
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
    )
