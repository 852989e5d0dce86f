"""Experiment 1b (issue 12): SD against the generalization gap over an (η, batch) grid at
the edge of stability, with and without weight decay, and the weight-decay confound.

The grid of :mod:`sdcompress.experiments.grid` trains to a loss target, which flattens
the loss: none of its runs is at the edge of stability (EoS). Here every run trains for a
fixed number of steps at constant η (no loss target), and the sharpness λ_max is tracked
over the last ``tail_fraction`` of the steps. A run's

    eos_ratio = median over the tail of (λ_max + wd) / (2/η)

is ≥ 1 when the step map w ↦ w − η(∇L_B + wd·w) is at the linear-stability edge along
its top direction (its Jacobian's eigenvalue 1 − η(λ + wd) reaches −1). λ_max is the
top eigenvalue of the *minibatch* Hessian at the training batch size, averaged over
``sharpness_batches`` fresh minibatches (``sharpness: minibatch``; the Jacobian the SD
estimators use), or of the full training-loss Hessian (``sharpness: full``). Runs with
``eos_ratio < eos_threshold`` are excluded from the statistics and counted.

Per run: exact SD, SD-SLQ/KDE/PS, λ_1, the full-batch top eigenvalue and trace, both gaps.
Statistics over the runs at EoS, pooled and within each weight-decay slice: Kendall τ and
the granulated coefficient Ψ of every measure against every gap, each with a percentile
bootstrap interval (runs resampled with replacement). The confound: τ(wd, SD), τ within
fixed-wd slices, the partial Kendall τ of SD and the gap given wd, and the least-squares
coefficient of SD/d in ``gap ~ SD/d + one intercept per wd`` (the within-slice slope),
each with a bootstrap interval.

Run: ``python -m sdcompress.experiments.eos_grid [--config recipes/experiments/eos_grid.yaml] [--quick]``.
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch

from sdcompress.data import DatasetBundle, load_data
from sdcompress.experiments.common import (
    SGDSettings,
    bundle_as,
    eval_stream,
    experiment_main,
    fit_sgd,
    gaps,
    write_outputs,
)
from sdcompress.experiments.grid import GAPS, MEASURES
from sdcompress.experiments.measures import MeasureSettings, full_batch_curvature, sd_measures
from sdcompress.experiments.stats import (
    bootstrap_interval,
    fmt_interval,
    granulated_kendall,
    kendall_tau,
    partial_kendall,
    slice_slope,
)
from sdcompress.io import write_text_atomic
from sdcompress.models import FunctionalLoss, load_model
from sdcompress.progress import progress

logger = logging.getLogger(__name__)



@dataclass
class EosGridConfig:
    """The EoS grid.

    Attributes:
        output_dir: where results go (``eos_grid_runs.*``, ``eos_grid_table.*``).
        widths: MLP widths (input, hidden…, classes).
        dtype: arithmetic of training and curvature.
        train_fraction: digits train split fraction; data_seed fixes the split.
        lrs, batch_sizes, seeds, weight_decays: the grid; the seed fixes init and ω.
        steps: SGD steps per run (constant η, no loss target).
        tail_fraction: the last share of the steps over which λ_max is tracked.
        sharpness_every: steps between sharpness measurements in the tail.
        sharpness: ``minibatch`` (mean top eigenvalue of the training-batch-size Hessians)
            or ``full`` (the full training-loss Hessian).
        sharpness_batches: minibatches per sharpness measurement (``minibatch``).
        lanczos_steps: Krylov steps of each top eigenvalue.
        eos_threshold: runs with eos_ratio below this are excluded and counted.
        n_bootstrap: bootstrap resamples of each interval (0: none).
        bootstrap_level: coverage of the intervals.
        bootstrap_seed: seed of the resampling.
        measures: SD estimators and curvature settings at the final weights.
    """

    output_dir: str = "results/grid"
    widths: list[int] = field(default_factory=lambda: [64, 16, 16, 10])
    dtype: Literal["float64", "float32"] = "float64"
    train_fraction: float = 0.5
    data_seed: int = 0
    lrs: list[float] = field(default_factory=lambda: [0.1, 0.2, 0.4, 0.8])
    batch_sizes: list[int] = field(default_factory=lambda: [16, 32, 64, 128])
    seeds: list[int] = field(default_factory=lambda: [0, 1, 2])
    weight_decays: list[float] = field(default_factory=lambda: [0.0, 1e-2])
    steps: int = 2000
    tail_fraction: float = 0.3
    sharpness_every: int = 100
    sharpness: Literal["minibatch", "full"] = "minibatch"
    sharpness_batches: int = 4
    lanczos_steps: int = 20
    eos_threshold: float = 0.8
    n_bootstrap: int = 1000
    bootstrap_level: float = 0.95
    bootstrap_seed: int = 0
    measures: MeasureSettings = field(default_factory=MeasureSettings)

    def quick(self) -> "EosGridConfig":
        """2 × 2 grid, one seed, two weight decays, a few steps, small estimators."""
        return replace(
            self, widths=[64, 8, 10], lrs=[0.2, 0.4], batch_sizes=[32, 64], seeds=[0], weight_decays=[0.0, 1e-2],
            steps=20, sharpness_every=2, sharpness_batches=2, lanczos_steps=6, n_bootstrap=20,
            measures=replace(self.measures, n_batches=2,
                             estimator={**self.measures.estimator, "slq_runs": 2, "lanczos_steps": 10, "n_bootstrap": 0, "n_quantiles": 50}),
        )


def tail_steps(steps: int, tail_fraction: float, every: int) -> list[int]:
    """The sharpness points: every ``every`` steps over the last ``tail_fraction`` of the
    run, the last step included (at least one point)."""
    first = int(math.ceil((1.0 - tail_fraction) * steps))
    pts = list(range(first, steps + 1, max(1, every)))
    if not pts or pts[-1] != steps:
        pts.append(steps)
    return pts


def eos_ratio(sharpness: list[float], lr: float, weight_decay: float) -> float:
    """median((λ_max + wd) / (2/η)) over the tail's sharpness values (``nan`` if none)."""
    if not sharpness:
        return float("nan")
    return float(np.median([(s + weight_decay) * lr / 2.0 for s in sharpness]))


def minibatch_sharpness(model: torch.nn.Module, bundle: DatasetBundle, cfg: EosGridConfig, batch_size: int, seed: int, step: int) -> float:
    """λ_max at the current weights (see the module docstring)."""
    from sdcompress.linalg import HessianOperator, top_eigenvalue

    loss = FunctionalLoss(model)
    if cfg.sharpness == "full":
        return top_eigenvalue(HessianOperator(loss, bundle.train.all(), chunk_size=8), steps=cfg.lanczos_steps, seed=seed)
    stream = eval_stream(bundle.train, batch_size, seed + 7919 * (step + 1))
    vals = [top_eigenvalue(HessianOperator(loss, stream.batch(i), chunk_size=8), steps=cfg.lanczos_steps, seed=seed + i)
            for i in range(cfg.sharpness_batches)]
    return float(np.mean(vals))


def run_one(cfg: EosGridConfig, bundle: DatasetBundle, *, lr: float, batch_size: int, seed: int, weight_decay: float) -> dict[str, Any]:
    """Train one model for ``cfg.steps`` steps, track its sharpness, measure it."""
    dtype = getattr(torch, cfg.dtype)
    model = load_model("mlp", seed=seed, widths=tuple(cfg.widths), bias=False).model.to(dtype)
    sharp: list[float] = []

    def hook(step: int, m: torch.nn.Module) -> None:
        sharp.append(minibatch_sharpness(m, bundle, cfg, batch_size, seed, step))

    settings = SGDSettings(lr=lr, batch_size=batch_size, weight_decay=weight_decay, seed=seed, max_steps=cfg.steps)
    fit = fit_sgd(model, bundle.train, settings, hook=hook, hook_steps=tail_steps(cfg.steps, cfg.tail_fraction, cfg.sharpness_every))
    row: dict[str, Any] = {"seed": seed, "lr": lr, "batch_size": batch_size, "weight_decay": weight_decay,
                           "eos_ratio": eos_ratio(sharp, lr, weight_decay), "steps": fit.steps, "train_time_s": fit.wall_time_s}
    row["sharpness_median"] = float(np.median(sharp))
    row["sharpness_tail"] = sharp  # JSON only (the CSV keeps scalars)
    row.update(gaps(model, bundle))
    t0 = time.perf_counter()
    sd_row, _ = sd_measures(model, eval_stream(bundle.train, batch_size, seed), lr=lr, weight_decay=weight_decay, s=cfg.measures)
    row.update(sd_row)
    row.update(full_batch_curvature(model, bundle, cfg.measures, seed=seed))
    row["eos_ratio_full_end"] = (row["hess_top"] + weight_decay) * lr / 2.0
    row["at_eos"] = bool(row["eos_ratio"] >= cfg.eos_threshold)
    row["measure_time_s"] = time.perf_counter() - t0
    logger.info("η=%g B=%d wd=%g seed=%d: eos_ratio %.2f, test acc %.3f, SD/d %s", lr, batch_size, weight_decay, seed,
                row["eos_ratio"], row["test_acc"], {k[10:]: round(v, 4) for k, v in row.items() if k.startswith("sd_over_d_")})
    return row


# ------------------------------------------------------------------ statistics


def _interval(cfg: EosGridConfig, n: int, stat) -> list[float]:
    return list(bootstrap_interval(stat, n, n_resamples=cfg.n_bootstrap, level=cfg.bootstrap_level, seed=cfg.bootstrap_seed))


def correlations(cfg: EosGridConfig, runs: list[dict[str, Any]], measures: list[str], vary: list[str]) -> list[dict[str, Any]]:
    """τ and Ψ of every measure against every gap over ``runs``, with bootstrap intervals.

    Ψ varies the factors in ``vary`` with every other factor (seed included) held fixed.
    """
    factors = ["lr", "batch_size", "weight_decay", "seed"]
    out = []
    for gap in GAPS:
        for m in measures:
            keep = [r for r in runs if math.isfinite(float(r.get(m, math.nan))) and math.isfinite(float(r[gap]))]
            x = np.array([float(r[m]) for r in keep])
            y = np.array([float(r[gap]) for r in keep])
            fac = {f: [r[f] for r in keep] for f in factors}

            def tau(idx: np.ndarray) -> float:
                return kendall_tau(x[idx], y[idx])

            def psi(idx: np.ndarray) -> float:
                return granulated_kendall(x[idx], y[idx], {f: [v[i] for i in idx] for f, v in fac.items()}, vary).mean

            full = np.arange(len(keep))
            row: dict[str, Any] = {"measure": m, "gap": gap, "n_runs": len(keep)}
            if len(keep) > 1:
                gk = granulated_kendall(x, y, fac, vary)
                row.update({"tau": tau(full), "tau_ci": _interval(cfg, len(keep), tau),
                            **{f"psi_{v}": gk.psi[v] for v in vary}, "psi_mean": gk.mean, "psi_mean_ci": _interval(cfg, len(keep), psi)})
            out.append(row)
    return out


def confound(cfg: EosGridConfig, runs: list[dict[str, Any]], sd_key: str) -> dict[str, Any]:
    """Does SD say anything about the gap beyond weight decay? (module docstring)."""
    keep = [r for r in runs if math.isfinite(float(r.get(sd_key, math.nan)))]
    out: dict[str, Any] = {"sd": sd_key, "n_runs": len(keep)}
    if len(keep) < 3:
        return out
    sd = np.array([float(r[sd_key]) / float(r["d"]) for r in keep])
    wd = np.array([float(r["weight_decay"]) for r in keep])
    out["tau_wd_sd"] = kendall_tau(wd, sd)
    for gap in GAPS:
        g = np.array([float(r[gap]) for r in keep])
        out[f"tau_wd_{gap}"] = kendall_tau(wd, g)
        out[f"partial_tau_{gap}"] = partial_kendall(sd, g, wd)
        out[f"partial_tau_{gap}_ci"] = _interval(cfg, len(keep), lambda i, g=g: partial_kendall(sd[i], g[i], wd[i]))
        out[f"slope_{gap}"] = slice_slope(sd, g, wd)
        out[f"slope_{gap}_ci"] = _interval(cfg, len(keep), lambda i, g=g: slice_slope(sd[i], g[i], wd[i]))
        slices = {}
        for w in sorted(set(wd.tolist())):
            idx = np.flatnonzero(wd == w)
            slices[f"{w:g}"] = {"n_runs": len(idx), "tau": kendall_tau(sd[idx], g[idx]) if len(idx) > 1 else float("nan"),
                                "tau_ci": _interval(cfg, len(idx), lambda i, idx=idx, g=g: kendall_tau(sd[idx][i], g[idx][i])) if len(idx) > 1 else None}
        out[f"slices_{gap}"] = slices
        lo, hi = out[f"slope_{gap}_ci"]
        out[f"sd_beyond_wd_{gap}"] = bool(math.isfinite(lo) and (lo > 0 or hi < 0))
    return out


# ------------------------------------------------------------------ the experiment


def _key(row: dict[str, Any]) -> tuple:
    return (row["lr"], row["batch_size"], row["weight_decay"], row["seed"])


_JOB_FIELDS = {"lrs", "batch_sizes", "seeds", "weight_decays", "output_dir", "n_bootstrap", "bootstrap_level", "bootstrap_seed", "eos_threshold"}


def analyse(cfg: EosGridConfig, rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Exclusions, pooled and per-slice correlations, and the confound."""
    at = [r for r in rows if r["eos_ratio"] >= cfg.eos_threshold]
    present = [m for m in MEASURES if any(m in r for r in rows)]
    wds = sorted({r["weight_decay"] for r in rows})
    excluded = {f"{w:g}": sum(1 for r in rows if r["weight_decay"] == w and r["eos_ratio"] < cfg.eos_threshold) for w in wds}
    slices = {f"{w:g}": correlations(cfg, [r for r in at if r["weight_decay"] == w], present, ["lr", "batch_size"]) for w in wds}
    sd_key = next((m for m in ("sd_exact", "sd_ps", "sd_kde", "sd_slq") if m in present), None)
    return {"n_runs": len(rows), "n_at_eos": len(at), "n_excluded": len(rows) - len(at), "excluded_by_wd": excluded,
            "eos_ratio_range": [min(r["eos_ratio"] for r in rows), max(r["eos_ratio"] for r in rows)] if rows else None,
            "pooled": correlations(cfg, at, present, ["lr", "batch_size", "weight_decay"] if len(wds) > 1 else ["lr", "batch_size"]),
            "by_weight_decay": slices, "confound": confound(cfg, at, sd_key) if sd_key else {}}


def run(cfg: EosGridConfig, out_dir: Path) -> dict[str, Any]:
    """Run the grid, writing ``eos_grid_runs.json/csv`` after every run (an interrupted
    run resumes: rows already there with the same settings are reused), then the
    statistics to ``eos_grid_table.json/md``."""
    import json

    dtype = getattr(torch, cfg.dtype)
    bundle = bundle_as(load_data("digits", train_fraction=cfg.train_fraction, seed=cfg.data_seed), dtype)
    jobs = [(lr, bs, wd, s) for wd in cfg.weight_decays for s in cfg.seeds for bs in cfg.batch_sizes for lr in cfg.lrs]
    done: dict[tuple, dict[str, Any]] = {}
    partial_path = out_dir / "eos_grid_runs.json"
    if partial_path.exists():
        old = json.loads(partial_path.read_text())
        same = {k: v for k, v in old.get("config", {}).items() if k not in _JOB_FIELDS}
        if same == json.loads(json.dumps({k: v for k, v in asdict(cfg).items() if k not in _JOB_FIELDS})):
            done = {_key(r): r for r in old["runs"]}
    rows: list[dict[str, Any]] = []
    start = time.perf_counter()
    for lr, bs, wd, seed in progress(jobs, desc="EoS grid runs"):
        row = done.get((lr, bs, wd, seed)) or run_one(cfg, bundle, lr=lr, batch_size=bs, seed=seed, weight_decay=wd)
        rows.append(row)
        write_outputs(out_dir, "eos_grid_runs", {"config": asdict(cfg), "runs": rows}, rows)
    stats = analyse(cfg, rows)
    payload = {"config": asdict(cfg), **stats, "wall_time_s": time.perf_counter() - start}
    write_outputs(out_dir, "eos_grid_table", payload)
    write_text_atomic(out_dir / "eos_grid_table.md", markdown_report(cfg, stats))
    return payload


def markdown_report(cfg: EosGridConfig, stats: dict[str, Any]) -> str:
    """The exclusions, the τ / Ψ tables with intervals and the confound as Markdown."""
    pct = int(round(100 * cfg.bootstrap_level))
    lines = [f"Runs: {stats['n_runs']}; at EoS (eos_ratio ≥ {cfg.eos_threshold:g}): {stats['n_at_eos']}; "
             f"excluded: {stats['n_excluded']} (by wd: {stats['excluded_by_wd']}). Intervals: {pct}% percentile bootstrap over runs "
             f"({cfg.n_bootstrap} resamples).", ""]

    def table(title: str, rows: list[dict[str, Any]]) -> None:
        lines.extend([f"### {title}", "", "| measure | gap | n | τ | τ interval | Ψ | Ψ interval |", "|---|---|---|---|---|---|---|"])
        for r in rows:
            if "tau" in r:
                lines.append(f"| {r['measure']} | {r['gap']} | {r['n_runs']} | {r['tau']:+.3f} | {fmt_interval(r['tau_ci'])} | {r['psi_mean']:+.3f} | {fmt_interval(r['psi_mean_ci'])} |")
        lines.append("")

    table("all runs at EoS", stats["pooled"])
    for w, rows in stats["by_weight_decay"].items():
        table(f"weight decay {w}", rows)
    c = stats.get("confound") or {}
    if "tau_wd_sd" in c:
        lines += [f"### the weight-decay confound ({c['sd']}/d, {c['n_runs']} runs)", "", f"τ(wd, SD/d) = {c['tau_wd_sd']:+.3f}.", ""]
        for gap in GAPS:
            within = "; ".join(f"wd {w}: {s['tau']:+.3f} {fmt_interval(s['tau_ci'])}" for w, s in c[f"slices_{gap}"].items())
            beyond = "no"
            if c[f"sd_beyond_wd_{gap}"]:
                beyond = "yes, SD rises with the gap" if c[f"slope_{gap}"] > 0 else "yes, but SD falls as the gap grows"
            lines.append(f"- {gap}: τ(wd, gap) = {c[f'tau_wd_{gap}']:+.3f}; τ within slices: {within}; partial τ(SD, gap | wd) = "
                         f"{c[f'partial_tau_{gap}']:+.3f} {fmt_interval(c[f'partial_tau_{gap}_ci'])}; slope of gap on SD/d within wd = "
                         f"{c[f'slope_{gap}']:+.3g} {fmt_interval(c[f'slope_{gap}_ci'])}. SD tells something beyond wd (interval excludes 0): **{beyond}**.")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    """Command-line entry."""
    return experiment_main("eos_grid", __doc__.splitlines()[0], EosGridConfig, run, argv, folder="eos_grid",
                           headline=lambda p: f"{p['n_at_eos']}/{p['n_runs']} runs at EoS")


if __name__ == "__main__":
    raise SystemExit(main())
