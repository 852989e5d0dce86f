"""Plots of an :class:`SDEstimate`: the sorted exponents with their running sum and j*
marked, (density methods) the spectral density of H and of the exponents, and (Lyapunov)
the running exponent estimates with the convergence verdict."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from sdcompress.estimator.result import SDEstimate
from sdcompress.io import save_figure_atomic

EXPONENTS_PNG = "exponents.png"
DENSITY_PNG = "density.png"
CONVERGENCE_PNG = "lyapunov_convergence.png"


def _figure(*args, **kwargs):  # noqa: ANN002, ANN003, ANN202
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt.subplots(*args, **kwargs)


def plot_exponents(est: SDEstimate, path: str | Path) -> Path:
    """Sorted exponents λ_k (left axis) and the running sum Σ_{i ≤ k} λ_i (right axis)
    against the cumulative direction count, with j* and SD marked.

    Returns:
        The written path.
    """
    lam = np.asarray(est.exponents, dtype=np.float64)
    w = np.ones_like(lam) if est.weights is None else np.asarray(est.weights, dtype=np.float64)
    count = np.cumsum(w)  # directions up to and including each exponent
    running = np.cumsum(w * lam)
    fig, ax = _figure(figsize=(7, 4))
    ax.step(count, lam, where="post", color="C0", label="exponent λ_k = ln|1 − η·wd − ηα|")
    ax.axhline(0.0, color="0.6", lw=0.8)
    ax.set_xlabel("direction k (sorted by exponent)")
    ax.set_ylabel("exponent", color="C0")
    ax.set_yscale("symlog", linthresh=max(1e-4, float(np.min(np.abs(lam[lam != 0]))) if np.any(lam != 0) else 1e-4))
    ax2 = ax.twinx()
    ax2.plot(count, running, color="C1", label="running sum")
    ax2.set_ylabel("running sum Σ λ", color="C1")
    j_count = float(np.sum(w[: est.j_star])) if est.j_star else 0.0
    ax.axvline(j_count, color="C3", ls="--", lw=1, label=f"j* ({est.j_star} exponents, {j_count:.0f} directions)")
    ax.axvline(est.sd, color="C2", ls=":", lw=1.5, label=f"SD = {est.sd:.1f}{' (lower bound)' if est.lower_bound else ''}")
    lines = ax.get_legend_handles_labels()
    lines2 = ax2.get_legend_handles_labels()
    ax.legend(lines[0] + lines2[0], lines[1] + lines2[1], fontsize=8, loc="lower left")
    ax.set_title(f"{est.method}: SD = {est.sd:.1f} of d = {est.d} (η = {est.lr:g}, wd = {est.weight_decay:g})", fontsize=10)
    return save_figure_atomic(fig, path)


def plot_density(est: SDEstimate, path: str | Path) -> Path | None:
    """The estimated eigenvalue density of H (symlog α axis, 2/η marked) and the density
    of the exponents ln|1 − η·wd − ηα|; ``None`` when the estimate carries no density.

    Returns:
        The written path, or ``None``.
    """
    dens = est.extras.get("density")
    if not dens:
        return None
    alpha = np.asarray(dens["alpha"], dtype=np.float64)
    mass = np.asarray(dens["mass"], dtype=np.float64)
    lam = np.asarray(dens["exponent"], dtype=np.float64)
    fig, (a1, a2) = _figure(1, 2, figsize=(11, 4))
    a1.plot(alpha, mass, color="C0", lw=1)
    a1.set_xscale("symlog", linthresh=max(float(est.extras.get("scale", 1e-6)) * 10, 1e-12))
    a1.set_yscale("log")
    a1.axvline(2.0 / est.lr, color="C3", ls="--", lw=1, label="2/η")
    a1.axvline(0.0, color="0.6", lw=0.8)
    a1.set_xlabel("Hessian eigenvalue α (symlog)")
    a1.set_ylabel("eigenvalues per cell")
    a1.set_title(f"spectral density of H ({est.method}, mass d = {est.d})", fontsize=10)
    a1.legend(fontsize=8)
    order = np.argsort(lam)
    finite = np.isfinite(lam[order])
    bins = np.linspace(np.percentile(lam[order][finite], 0.1), lam[order][finite].max(), 120) if finite.sum() > 1 else 10
    a2.hist(lam[order][finite], bins=bins, weights=mass[order][finite], color="C1", log=True)
    a2.axvline(0.0, color="0.6", lw=0.8)
    a2.axvline(float(est.extras.get("neutral_exponent", 0.0)), color="C2", ls=":", lw=1, label="neutral ln|1 − η·wd|")
    a2.set_xlabel("exponent ln(|1 − η·wd − ηα| + ε)")
    a2.set_ylabel("directions per bin")
    a2.set_title("density of the exponents", fontsize=10)
    a2.legend(fontsize=8)
    return save_figure_atomic(fig, path)


def plot_convergence(est: SDEstimate, path: str | Path) -> Path | None:
    """Running means of the tracked Lyapunov exponents over the averaged steps, with the
    weight-decay bulk's exponent ln|1 − η·wd| and the convergence verdict in the title;
    ``None`` when the estimate has no running exponents.

    Returns:
        The written path, or ``None``.
    """
    running = est.extras.get("running_exponents")
    if not running:
        return None
    r = np.asarray(running, dtype=np.float64)
    c = est.convergence or {}
    start = int(c.get("burn_in", est.settings.get("lyapunov_warmup", 0)) or 0)
    steps = start + 1 + np.arange(len(r))
    fig, ax = _figure(figsize=(7, 4))
    ax.plot(steps, r, lw=0.8)
    shrink = abs(1.0 - est.lr * est.weight_decay)
    if shrink > 0:
        ax.axhline(float(np.log(shrink)), color="C3", ls=":", lw=1, label="bulk ln|1 − η·wd|")
    ax.axhline(0.0, color="0.6", lw=0.8)
    ax.set_xlabel("step (running mean from the end of the burn-in)")
    ax.set_ylabel("exponent estimate")
    verdict = {True: f"converged after {c.get('steps')} steps", False: f"NOT converged within {c.get('steps')} steps",
               None: "no convergence test"}[est.converged]
    ax.set_title(f"Lyapunov exponents (m = {r.shape[1]}): {verdict}", fontsize=10)
    ax.legend(fontsize=8)
    return save_figure_atomic(fig, path)


def plot_estimate(est: SDEstimate, folder: str | Path) -> list[Path]:
    """Write every plot that applies to ``est`` into ``folder``; returns the paths."""
    folder = Path(folder)
    out = [plot_exponents(est, folder / EXPONENTS_PNG)]
    for extra in (plot_density(est, folder / DENSITY_PNG), plot_convergence(est, folder / CONVERGENCE_PNG)):
        if extra is not None:
            out.append(extra)
    return out
