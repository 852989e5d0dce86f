"""From an SLQ spectral measure to sharpness exponents and SD: histogram (SD-SLQ), kernel
density (SD-KDE) and pseudo-spectrum (SD-PS), PAPER.md §3.

The SLQ measure μ = (d/n) Σ_r Σ_k τ_rk δ(θ_rk) (see :mod:`sdcompress.linalg.slq`)
estimates the eigenvalue density of the minibatch Hessian. Each eigenvalue α becomes
the exponent

    g(α) = ln(|1 − η·wd − η α| + ε)

(J = (1 − η·wd) I − η H with weight decay), and SD is the Kaplan–Yorke dimension of the
pushed-forward density: SD = μ({g ≥ λ*}) with λ* the level where ∫_{g ≥ λ*} g dμ = 0
(the continuous form of PAPER.md §2; the discrete formula with weights computes it).

Choices the paper leaves open, and why. The numbers are SD relative to exact SD on the
digits MLP (64-16-16-10, d = 1,440) trained at the edge of stability (η = 0.5, wd =
0.01, mean λ_max(H_B) = 4.04 ≥ 2/η; exact SD/d = 0.48), from one SLQ measure of 24 runs
× 50 Lanczos steps over the same 8 minibatches; tests/test_estimator_density.py checks
each effect on that setting.

- **Coordinates: u = asinh(α/s) + α/c**, s = ``density_scale`` · R, c =
  ``density_linear`` · R, R = max|θ|. Network Hessians have an atom of exactly-zero
  eigenvalues (hundreds of directions), a bulk spread over many decades around 0 (|α|
  from 1e-12 to 1e-1) and a few outliers near and beyond 2/η. With weight decay every
  zero-curvature direction has exponent ln(1 − η·wd) ≈ −η·wd, and SD moves by one
  direction per η·wd of error in the positive exponent mass, so α must be resolved to
  a fraction of wd near 0; a linear grid or a fixed kernel width in α (PyHessian's
  density) smears the atom into the tails. u is linear (α/s) below s, so the atom and
  signs need no special case; logarithmic between s and c, so the bulk keeps its
  decades at a relative resolution; and linear again (α/c) above c, so outliers are
  resolved to an absolute c·δu. The last part matters: in a purely logarithmic u a bin
  or kernel of relative width δ pushes an outlier α to α·e^δ and its exponent
  ln(ηα − 1) grows. Measured, log-only → log-linear (c = 0.1 R): kernel h = 0.3
  +13.9% → +3.7%; 64-bin histogram +9.6% → +4.8%; kernel h = 1 +96% → +29%.
- **Cells, not points.** Every density is held as masses on ``grid_size`` cells uniform
  in u; a cell's exponent is the exact mean of g over the cell (uniform in α, closed
  form via ∫ ln(|x| + ε) dx), so the log singularity at α = (1 − η·wd)/η is integrated
  rather than sampled.
- **Histogram (SD-SLQ):** ``n_bins`` equal-width bins in u (groups of grid cells), mass
  spread evenly within a bin. Measured: 64 bins +4.8%, 256 (default) +1.5%, 1,024 +1.2%.
- **KDE (SD-KDE):** a Gaussian kernel in u of width h (``bandwidth``, u units; default
  0.05, a 5% relative width in the bulk), cell masses integrated exactly (Φ
  differences). Smoothing spreads mass outward and the positive exponent mass grows, so
  SD grows with h: h = 0.01–0.1 gave +1.2% to +1.5% (the raw Ritz nodes: +1.2%), 0.3
  gave +3.7%, 1.0 gave +29%. Silverman's rule in u (``"silverman"``, for comparison)
  chose h = 0.9 on these multi-modal spectra: +24%.
- **Pseudo-spectrum (SD-PS):** M = ``n_quantiles`` groups of equal mass d/M, each a
  single exponent, the discrete formula with weights d/M. The paper's reading
  (``ps_representative="quantile"``) maps the α-quantile at level (k − ½)/M through g;
  midpoints miss the outliers in the top group and land near the singularity at
  α = (1 − η·wd)/η, and SD moved with M: 0.46, 0.92, 1.02 × exact for M = 10, 100,
  1,000. The default ``"mean"`` sorts the KDE cells by exponent and gives each group
  its mean exponent: Σλ equals ∫ g dμ and SD agrees with SD-KDE to within one group for
  any M (1.0125, 1.0127, 1.0127 × exact for M = 10, 100, 1,000).
- **ε** (``eps``): g adds ε inside the logarithm so a node at α = (1 − η·wd)/η stays
  finite. Since g(0) = ln(1 − η·wd + ε), ε shifts every neutral exponent by about ε and
  SD with weight decay moves by ≈ n₀·ε/|λ| (n₀ neutral directions): ε must be far below
  η·wd. Measured: ε = 0 to 1e-6 change SD by < 0.03%; 1e-4 by +2%; 1e-3 by +24%.
  Default 1e-8.
- **Uncertainty** comes from a bootstrap over SLQ runs. Probe noise dominated the
  Lanczos error: over 5 probe seeds on 8 minibatches, 8 runs (one probe per batch) put
  SD within −11%…+5% of exact and 24 runs within ±4%, while going from 60 to 150
  Lanczos steps moved SD by 1–2.5% (from 40 to 60 steps, up to 5%).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from scipy.special import ndtr, xlogy

from sdcompress.errors import ConfigError
from sdcompress.estimator.kaplan_yorke import critical_index, sharpness_dimension
from sdcompress.linalg.slq import SpectralMeasure


def step_exponent(alpha: np.ndarray | float, lr: float, weight_decay: float = 0.0, eps: float = 0.0) -> np.ndarray:
    """g(α) = ln(|1 − η·wd − η α| + ε), the one-step exponent of an eigenvalue α of H."""
    x = np.abs(1.0 - lr * weight_decay - lr * np.asarray(alpha, dtype=np.float64)) + eps
    with np.errstate(divide="ignore"):
        return np.log(x)


def _antiderivative(x: np.ndarray, eps: float) -> np.ndarray:
    """G(x) = sign(x)·[(|x| + ε) ln(|x| + ε) − |x| − ε ln ε], with G' = ln(|x| + ε), G(0) = 0."""
    a = np.abs(x)
    return np.sign(x) * (xlogy(a + eps, a + eps) - a - xlogy(eps, eps))


def cell_mean_exponent(lo: np.ndarray, hi: np.ndarray, lr: float, weight_decay: float = 0.0, eps: float = 0.0) -> np.ndarray:
    """Mean of g(α) over α uniform in [lo, hi] (elementwise), exact up to rounding.

    With x = c − ηα, c = 1 − η·wd: mean = (G(x_lo) − G(x_hi)) / (η (hi − lo)). Narrow cells
    (|Δx| below 1e-3·(|x| + ε), where the closed form would cancel) use the midpoint.
    """
    lo, hi = np.asarray(lo, dtype=np.float64), np.asarray(hi, dtype=np.float64)
    c = 1.0 - lr * weight_decay
    x_lo, x_hi = c - lr * lo, c - lr * hi
    mid = step_exponent(0.5 * (lo + hi), lr, weight_decay, eps)
    dx = x_lo - x_hi
    wide = np.abs(dx) > 1e-3 * (np.abs(0.5 * (x_lo + x_hi)) + eps)
    out = mid.copy()
    if np.any(wide):
        out[wide] = (_antiderivative(x_lo[wide], eps) - _antiderivative(x_hi[wide], eps)) / dx[wide]
    return out


def to_u(alpha: np.ndarray | float, s: float, c: float) -> np.ndarray:
    """u(α) = asinh(α/s) + α/c: linear (α/s) for |α| ≪ s, logarithmic for s ≪ |α| ≪ c,
    linear again (α/c) for |α| ≳ c. Odd and strictly increasing."""
    a = np.asarray(alpha, dtype=np.float64)
    return np.arcsinh(a / s) + a / c


def from_u(u: np.ndarray | float, s: float, c: float) -> np.ndarray:
    """The inverse of :func:`to_u`, by bisection (exact to rounding).

    For u ≥ 0 the root lies in [0, min(c·u, s·sinh u)], since each term of u(α) is ≥ 0.
    """
    u = np.asarray(u, dtype=np.float64)
    mag = np.abs(u)
    lo = np.zeros_like(mag)
    with np.errstate(over="ignore"):
        hi = np.minimum(c * mag, s * np.sinh(np.minimum(mag, 700.0)))
    for _ in range(80):  # the bracket shrinks 2^80-fold: below float64 resolution
        mid = 0.5 * (lo + hi)
        below = to_u(mid, s, c) < mag
        lo, hi = np.where(below, mid, lo), np.where(below, hi, mid)
    return np.sign(u) * 0.5 * (lo + hi)


@dataclass(frozen=True)
class DensityGrid:
    """Cells uniform in u = asinh(α/s) + α/c (see :func:`to_u`).

    Attributes:
        scale: s, below which the grid is linear in α with resolution s·δu.
        linear: c, above which the grid is linear in α with resolution c·δu.
        u_edges: (G + 1,) cell edges in u.
    """

    scale: float
    linear: float
    u_edges: np.ndarray

    @property
    def alpha_edges(self) -> np.ndarray:
        return from_u(self.u_edges, self.scale, self.linear)

    @property
    def alpha_centers(self) -> np.ndarray:
        return from_u(0.5 * (self.u_edges[1:] + self.u_edges[:-1]), self.scale, self.linear)

    @property
    def size(self) -> int:
        return len(self.u_edges) - 1

    def u(self, alpha: np.ndarray) -> np.ndarray:
        return to_u(alpha, self.scale, self.linear)

    def alpha(self, u: np.ndarray) -> np.ndarray:
        return from_u(u, self.scale, self.linear)

    def cell_exponents(self, lr: float, weight_decay: float, eps: float) -> np.ndarray:
        """(G,) the mean exponent of each cell."""
        a = self.alpha_edges
        return cell_mean_exponent(a[:-1], a[1:], lr, weight_decay, eps)


def spectral_radius(measure: SpectralMeasure) -> float:
    """R = max |θ| over the Ritz values (a tiny positive floor for an all-zero spectrum)."""
    radius = float(np.max(np.abs(measure.nodes))) if len(measure.nodes) else 0.0
    return max(radius, 1e-30)


def silverman_bandwidth(u: np.ndarray, mass: np.ndarray) -> float:
    """0.9 · min(σ, IQR/1.34) · n_eff^{-1/5} of weighted points (Kish n_eff)."""
    w = mass / mass.sum()
    mean = float(np.sum(w * u))
    sigma = math.sqrt(max(float(np.sum(w * (u - mean) ** 2)), 0.0))
    order = np.argsort(u)
    cdf = np.cumsum(w[order])
    q1, q3 = np.interp([0.25, 0.75], cdf, u[order])
    spread = min(sigma, (q3 - q1) / 1.34) if q3 > q1 else sigma
    n_eff = 1.0 / float(np.sum(w**2))
    h = 0.9 * spread * n_eff ** (-0.2)
    return h if h > 0 else 1e-3


def resolve_bandwidth(bandwidth: float | str, u: np.ndarray, mass: np.ndarray) -> float:
    """A bandwidth in u units from a number or a rule name.

    Raises:
        ConfigError: an unknown rule or a non-positive number.
    """
    if isinstance(bandwidth, str):
        if bandwidth == "silverman":
            return silverman_bandwidth(u, mass)
        raise ConfigError(f"bandwidth must be a positive number (in u = asinh(α/s) units) or 'silverman', got {bandwidth!r}")
    if not bandwidth > 0:
        raise ConfigError(f"bandwidth must be > 0, got {bandwidth}")
    return float(bandwidth)


def make_grid(measure: SpectralMeasure, *, density_scale: float, density_linear: float, grid_size: int, pad: float) -> DensityGrid:
    """G cells uniform in u covering the nodes with ``pad`` (u units) on each side;
    s = ``density_scale`` · R and c = ``density_linear`` · R with R = max |θ|."""
    radius = spectral_radius(measure)
    s, c = density_scale * radius, density_linear * radius
    u = to_u(measure.nodes, s, c)
    lo, hi = float(u.min()) - pad, float(u.max()) + pad
    if hi - lo < 1e-9:
        lo, hi = lo - 1.0, hi + 1.0
    return DensityGrid(s, c, np.linspace(lo, hi, grid_size + 1))


def kde_run_masses(measure: SpectralMeasure, grid: DensityGrid, h: float) -> np.ndarray:
    """(n_runs, G) masses of each run's Gaussian-smoothed nodes (rows sum to d τ-mass / n)."""
    out = np.zeros((measure.n_runs, grid.size))
    u_nodes = grid.u(measure.nodes)
    masses = measure.masses()
    edges = grid.u_edges
    for r in range(measure.n_runs):
        sel = measure.run == r
        cdf = ndtr((edges[None, :] - u_nodes[sel, None]) / h)  # (k, G + 1)
        out[r] = masses[sel] @ np.diff(cdf, axis=1)
    return out


def kde_block_masses(measure: SpectralMeasure, grid: DensityGrid, h: float) -> np.ndarray:
    """(G, n_blocks) the per-block node masses (:meth:`SpectralMeasure.block_masses`)
    smoothed by the same Gaussian kernel as :func:`kde_run_masses`; summed over blocks
    they give that density's cell masses (up to the basis' loss of orthogonality)."""
    u_nodes = grid.u(measure.nodes)
    bm = measure.block_masses()
    out = np.zeros((grid.size, bm.shape[1]))
    for r in range(measure.n_runs):
        sel = measure.run == r
        cdf = ndtr((grid.u_edges[None, :] - u_nodes[sel, None]) / h)  # (k, G + 1)
        out += np.diff(cdf, axis=1).T @ bm[sel]
    return out


def histogram_block_masses(measure: SpectralMeasure, grid: DensityGrid, n_bins: int) -> np.ndarray:
    """(G, n_blocks) the per-block node masses binned like :func:`histogram_run_masses`."""
    per = grid.size // n_bins
    bins = np.clip(np.searchsorted(grid.u_edges[::per], grid.u(measure.nodes), side="right") - 1, 0, n_bins - 1)
    bm = measure.block_masses()
    binned = np.zeros((n_bins, bm.shape[1]))
    np.add.at(binned, bins, bm)
    return np.repeat(binned / per, per, axis=0)


def kaplan_yorke_cell_weights(exponents: np.ndarray, masses: np.ndarray) -> np.ndarray:
    """(G,) the share w_c ∈ [0, 1] of each cell counted by SD: 1 for the cells (sorted
    by exponent, decreasing) before the Kaplan–Yorke crossing, the fraction of the
    crossing cell, 0 beyond; so Σ_c w_c · masses[c] = SD of the cells."""
    sd, j, _, w = cells_sd(exponents, masses)
    keep = np.nonzero(masses > 0)[0]
    order = keep[np.argsort(-exponents[keep], kind="stable")]
    out = np.zeros(len(masses))
    out[order[:j]] = 1.0
    if j < len(order):
        out[order[j]] = (sd - float(np.sum(w[:j]))) / w[j]
    return out


def histogram_run_masses(measure: SpectralMeasure, grid: DensityGrid, n_bins: int) -> np.ndarray:
    """(n_runs, G) masses of each run's histogram in u with ``n_bins`` bins (groups of
    G / n_bins cells), spread evenly over the cells of a bin."""
    if grid.size % n_bins:
        raise ConfigError(f"grid_size ({grid.size}) must be a multiple of n_bins ({n_bins})")
    per = grid.size // n_bins
    bin_edges = grid.u_edges[::per]
    u_nodes = grid.u(measure.nodes)
    masses = measure.masses()
    out = np.zeros((measure.n_runs, grid.size))
    for r in range(measure.n_runs):
        sel = measure.run == r
        counts, _ = np.histogram(u_nodes[sel], bins=bin_edges, weights=masses[sel])
        out[r] = np.repeat(counts / per, per)
    return out


def cells_sd(exponents: np.ndarray, masses: np.ndarray) -> tuple[float, int, np.ndarray, np.ndarray]:
    """SD of cells (exponent, mass): sort decreasing, weighted Kaplan–Yorke.

    Returns:
        (sd, j*, sorted exponents, their masses) over the cells with positive mass.
    """
    keep = masses > 0
    lam, w = exponents[keep], masses[keep]
    order = np.argsort(-lam, kind="stable")
    lam, w = lam[order], w[order]
    return sharpness_dimension(lam, w), critical_index(lam, w), lam, w


def quantile_alphas(grid: DensityGrid, masses: np.ndarray, n_quantiles: int) -> np.ndarray:
    """α at the equal-mass levels (k − ½)/M of the cell density (linear CDF within a cell in u)."""
    cdf = np.concatenate([[0.0], np.cumsum(masses)])
    levels = (np.arange(n_quantiles) + 0.5) / n_quantiles * cdf[-1]
    return grid.alpha(np.interp(levels, cdf, grid.u_edges))


def pseudo_spectrum(
    grid: DensityGrid,
    masses: np.ndarray,
    n_quantiles: int,
    d: int,
    lr: float,
    weight_decay: float,
    eps: float,
    representative: str = "mean",
    cell_exponents: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """The pseudo-spectrum: M exponents (sorted decreasing), each with weight d/M.

    ``"quantile"`` (the paper's): g at the α-quantiles of levels (k − ½)/M.
    ``"mean"``: the density's cells sorted by exponent are cut into M equal-mass groups,
    each represented by its mean exponent (so Σ of the pseudo-spectrum equals ∫ g dμ and
    the few outliers beyond 2/η are not lost inside a group's midpoint).
    """
    if representative == "quantile":
        lam = np.sort(step_exponent(quantile_alphas(grid, masses, n_quantiles), lr, weight_decay, eps))[::-1]
        return lam, np.full(n_quantiles, d / n_quantiles)
    lam_cells = grid.cell_exponents(lr, weight_decay, eps) if cell_exponents is None else cell_exponents
    order = np.argsort(-lam_cells, kind="stable")
    w = masses[order]
    cum_w = np.concatenate([[0.0], np.cumsum(w)])
    cum_s = np.concatenate([[0.0], np.cumsum(w * lam_cells[order])])
    # running mass and running sum are piecewise linear in the mass coordinate
    cuts = np.linspace(0.0, cum_w[-1], n_quantiles + 1)
    sums = np.interp(cuts, cum_w, cum_s)
    group = cum_w[-1] / n_quantiles
    lam = np.diff(sums) / group
    return np.minimum.accumulate(lam), np.full(n_quantiles, d / n_quantiles)


def weighted_neutral(lam: np.ndarray, w: np.ndarray, center: float, tol: float) -> int:
    """Rounded mass of exponents within ``tol`` of ``center`` (the neutral exponent)."""
    return int(round(float(np.sum(w[np.abs(lam - center) <= tol]))))
