"""Rank correlations between a complexity measure and the generalization gap.

Two statistics, as in the paper (PAPER.md §4) and Jiang et al. (2020), "Fantastic
generalization measures and where to find them":

- Kendall's τ_b over all runs of a grid. For n pairs (x_i, y_i) let P be the number of
  concordant pairs (sign(x_i − x_j)·sign(y_i − y_j) = +1), Q the number of discordant
  ones (−1), and n_x, n_y the numbers of pairs tied in x and in y. Then

      τ_b = (P − Q) / sqrt((n_0 − n_x)(n_0 − n_y)),   n_0 = n(n − 1)/2,

  which is scipy.stats.kendalltau's default ("b") variant.
- The granulated Kendall coefficient. For a hyperparameter θ_i (learning rate, batch
  size), group the runs that agree on every *other* factor (including the seed) and
  compute τ within each group, where only θ_i varies:

      ψ_i = (1/m_i) Σ_{groups} τ(measure, gap | θ_{−i} fixed),   Ψ = mean_i ψ_i.

  Groups in which τ is undefined (a constant measure or gap, or fewer than two runs)
  are left out and counted.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from sdcompress.errors import ConfigError


def kendall_tau(x: Sequence[float] | np.ndarray, y: Sequence[float] | np.ndarray) -> float:
    """Kendall's τ_b of two equally long samples (see the module docstring).

    Args:
        x: first sample.
        y: second sample, same length.

    Returns:
        τ_b in [−1, 1], or ``nan`` when fewer than two pairs or either sample is constant.

    Raises:
        ConfigError: the samples differ in length or hold non-finite values.
    """
    a = np.asarray(x, dtype=np.float64)
    b = np.asarray(y, dtype=np.float64)
    if a.shape != b.shape or a.ndim != 1:
        raise ConfigError(f"kendall_tau needs two 1-D samples of equal length, got shapes {a.shape} and {b.shape}")
    if not (np.all(np.isfinite(a)) and np.all(np.isfinite(b))):
        raise ConfigError(f"kendall_tau got non-finite values (x={a.tolist()}, y={b.tolist()}); drop those runs first")
    n = len(a)
    if n < 2:
        return float("nan")
    iu = np.triu_indices(n, k=1)  # all pairs i < j; grids here are small (O(n²) is fine)
    sx = np.sign(a[:, None] - a[None, :])[iu]
    sy = np.sign(b[:, None] - b[None, :])[iu]
    n0 = len(sx)
    concordant_minus_discordant = float(np.sum(sx * sy))
    nx, ny = float(np.sum(sx == 0)), float(np.sum(sy == 0))
    denom = math.sqrt((n0 - nx) * (n0 - ny))
    return concordant_minus_discordant / denom if denom > 0 else float("nan")


@dataclass(frozen=True)
class GranulatedKendall:
    """ψ per varied hyperparameter and their mean Ψ.

    Attributes:
        psi: ψ_i for each varied factor (``nan`` when no group had a defined τ).
        mean: Ψ, the mean of the defined ψ_i (``nan`` when none is defined).
        n_groups: groups that entered each ψ_i.
        n_undefined: groups left out because τ was undefined in them.
    """

    psi: dict[str, float]
    mean: float
    n_groups: dict[str, int] = field(default_factory=dict)
    n_undefined: dict[str, int] = field(default_factory=dict)


def granulated_kendall(
    measure: Sequence[float] | np.ndarray,
    gap: Sequence[float] | np.ndarray,
    factors: Mapping[str, Sequence[Any]],
    vary: Sequence[str],
) -> GranulatedKendall:
    """The granulated Kendall coefficient of Jiang et al. (2020) (module docstring).

    Args:
        measure: the complexity measure of each run.
        gap: the generalization gap of each run.
        factors: each factor's value per run (e.g. ``{"lr": [...], "batch_size": [...],
            "seed": [...]}``); factors not in ``vary`` are always held fixed in a group.
        vary: the factors ψ is computed over (e.g. ``("lr", "batch_size")``).

    Returns:
        A :class:`GranulatedKendall`.

    Raises:
        ConfigError: lengths disagree, or a factor in ``vary`` is not in ``factors``.
    """
    m = np.asarray(measure, dtype=np.float64)
    g = np.asarray(gap, dtype=np.float64)
    n = len(m)
    if len(g) != n or any(len(v) != n for v in factors.values()):
        lengths = {"measure": n, "gap": len(g), **{k: len(v) for k, v in factors.items()}}
        raise ConfigError(f"granulated_kendall needs one value per run everywhere, got lengths {lengths}")
    missing = [v for v in vary if v not in factors]
    if missing or not vary:
        raise ConfigError(f"factors to vary {list(vary)} must be non-empty and among {sorted(factors)}; missing {missing}")
    psi: dict[str, float] = {}
    n_groups: dict[str, int] = {}
    n_undefined: dict[str, int] = {}
    for axis in vary:
        others = [k for k in factors if k != axis]
        groups: dict[tuple, list[int]] = {}
        for i in range(n):
            groups.setdefault(tuple(factors[k][i] for k in others), []).append(i)
        taus = [kendall_tau(m[idx], g[idx]) for idx in groups.values()]
        defined = [t for t in taus if not math.isnan(t)]
        psi[axis] = float(np.mean(defined)) if defined else float("nan")
        n_groups[axis] = len(defined)
        n_undefined[axis] = len(taus) - len(defined)
    good = [v for v in psi.values() if not math.isnan(v)]
    return GranulatedKendall(psi, float(np.mean(good)) if good else float("nan"), n_groups, n_undefined)


def correlation_table(
    runs: Sequence[Mapping[str, Any]],
    measures: Sequence[str],
    gaps: Sequence[str],
    factors: Sequence[str],
    vary: Sequence[str],
    *,
    n_bootstrap: int = 0,
    level: float = 0.95,
    seed: int = 0,
) -> list[dict[str, Any]]:
    """One row per (measure, gap): τ over all runs, ψ per varied factor, and Ψ.

    Args:
        runs: one mapping per run holding every measure, gap and factor by name.
        measures: names of the complexity measures (columns).
        gaps: names of the generalization gaps.
        factors: names of all grid factors (varied ones and fixed ones such as the seed).
        vary: the factors ψ is computed over.
        n_bootstrap: resamples of the percentile bootstrap intervals of τ and Ψ (0: none;
            see :func:`bootstrap_interval`, runs resampled with replacement).
        level: coverage of the intervals.
        seed: seed of the resampling.

    Returns:
        Rows ``{"measure", "gap", "tau", "psi_<factor>"..., "psi_mean", "n_runs"}``, plus
        ``tau_ci`` and ``psi_mean_ci`` (``[low, high]``) when ``n_bootstrap`` > 0; runs
        where the measure or the gap is not finite are left out of that row.
    """
    rows = []
    for gap in gaps:
        for name in measures:
            keep = [r for r in runs if _finite(r.get(name)) and _finite(r.get(gap))]
            x = [float(r[name]) for r in keep]
            y = [float(r[gap]) for r in keep]
            fac = {f: [r[f] for r in keep] for f in factors}
            gk = granulated_kendall(x, y, fac, vary) if keep else GranulatedKendall({v: float("nan") for v in vary}, float("nan"))
            row: dict[str, Any] = {"measure": name, "gap": gap, "tau": kendall_tau(x, y) if keep else float("nan")}
            row.update({f"psi_{v}": gk.psi[v] for v in vary})
            row["psi_mean"] = gk.mean
            row["n_runs"] = len(keep)
            if n_bootstrap > 0:
                row.update(_bootstrap_cis(np.asarray(x), np.asarray(y), fac, vary, n_bootstrap, level, seed))
            rows.append(row)
    return rows


def _bootstrap_cis(x: np.ndarray, y: np.ndarray, fac: Mapping[str, Sequence[Any]], vary: Sequence[str],
                   n_resamples: int, level: float, seed: int) -> dict[str, list[float]]:
    """Bootstrap intervals of τ and Ψ of one (measure, gap) pair (runs resampled together)."""
    n = len(x)

    def tau(idx: np.ndarray) -> float:
        return kendall_tau(x[idx], y[idx])

    def psi(idx: np.ndarray) -> float:
        return granulated_kendall(x[idx], y[idx], {f: [v[i] for i in idx] for f, v in fac.items()}, vary).mean

    return {"tau_ci": list(bootstrap_interval(tau, n, n_resamples=n_resamples, level=level, seed=seed)),
            "psi_mean_ci": list(bootstrap_interval(psi, n, n_resamples=n_resamples, level=level, seed=seed))}


def _finite(v: Any) -> bool:
    try:
        return v is not None and math.isfinite(float(v))
    except (TypeError, ValueError):
        return False


def bootstrap_interval(
    stat: Callable[[np.ndarray], float],
    n: int,
    *,
    n_resamples: int = 1000,
    level: float = 0.95,
    seed: int = 0,
) -> tuple[float, float]:
    """Percentile bootstrap interval of a statistic of ``n`` runs.

    Each resample draws ``n`` run indices with replacement (numpy ``default_rng(seed)``)
    and calls ``stat(indices)``; resamples where the statistic is undefined (``nan``, e.g.
    a constant sample) are dropped.

    Args:
        stat: the statistic of the runs at the given indices.
        n: number of runs.
        n_resamples: resamples (0: no interval).
        level: coverage in (0, 1).
        seed: seed of the resampling.

    Returns:
        ``(low, high)``: the (1 − level)/2 and (1 + level)/2 quantiles of the defined
        resampled values, or ``(nan, nan)`` when there are none.

    Raises:
        ConfigError: ``level`` outside (0, 1) or negative ``n_resamples``.
    """
    if not 0 < level < 1 or n_resamples < 0:
        raise ConfigError(f"bootstrap needs 0 < level < 1 and n_resamples ≥ 0, got level={level}, n_resamples={n_resamples}")
    if n_resamples == 0 or n < 1:
        return float("nan"), float("nan")
    rng = np.random.default_rng(seed)
    vals = np.array([stat(rng.integers(0, n, size=n)) for _ in range(n_resamples)], dtype=np.float64)
    vals = vals[np.isfinite(vals)]
    if not len(vals):
        return float("nan"), float("nan")
    lo, hi = np.quantile(vals, [(1 - level) / 2, (1 + level) / 2])
    return float(lo), float(hi)


def partial_kendall(x: Sequence[float] | np.ndarray, y: Sequence[float] | np.ndarray, z: Sequence[float] | np.ndarray) -> float:
    """Kendall's partial τ of x and y given z:
    (τ_xy − τ_xz·τ_yz) / sqrt((1 − τ_xz²)(1 − τ_yz²)) (Kendall 1942).

    Returns:
        The partial τ, or ``nan`` when a τ is undefined or |τ_xz| or |τ_yz| is 1.
    """
    txy, txz, tyz = kendall_tau(x, y), kendall_tau(x, z), kendall_tau(y, z)
    denom = (1 - txz**2) * (1 - tyz**2)
    if not all(math.isfinite(t) for t in (txy, txz, tyz)) or denom <= 0:
        return float("nan")
    return (txy - txz * tyz) / math.sqrt(denom)


def slice_slope(x: Sequence[float] | np.ndarray, y: Sequence[float] | np.ndarray, group: Sequence[Any] | np.ndarray) -> float:
    """Least-squares coefficient of x in y ~ x + one intercept per group (the pooled
    within-group slope): Σ (x − x̄_g)(y − ȳ_g) / Σ (x − x̄_g)².

    Returns:
        The slope, or ``nan`` when x is constant within every group.
    """
    a = np.asarray(x, dtype=np.float64)
    b = np.asarray(y, dtype=np.float64)
    g = np.asarray(group)
    xc, yc = a.copy(), b.copy()
    for v in np.unique(g):
        m = g == v
        xc[m] -= a[m].mean()
        yc[m] -= b[m].mean()
    sxx = float(np.sum(xc * xc))
    return float(np.sum(xc * yc)) / sxx if sxx > 1e-300 else float("nan")


def fmt_interval(v: Any) -> str:
    """``[lo, hi]`` with signs and 2 decimals, or ``—`` when missing or not finite (tables)."""
    return f"[{v[0]:+.2f}, {v[1]:+.2f}]" if v and all(math.isfinite(x) for x in v) else "—"


def fmt_signed(v: Any) -> str:
    """A coefficient with its sign and 3 decimals, or ``—`` when missing or not finite (tables)."""
    return f"{v:+.3f}" if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) else "—"
