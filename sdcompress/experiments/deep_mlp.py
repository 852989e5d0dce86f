"""Experiment 2 (issue 12, setting 2): SD-SLQ against the generalization gap for a deep MLP.

The paper's setting 2 (PAPER.md §4: a 5-layer MLP of width 200, plain SGD, a grid of
(η, batch size), 100 epochs; claim: SD-SLQ has the best Kendall τ over the grid) at
laptop scale: widths 64-200-200-200-200-10, ReLU, no bias (d = 134,800) on
scikit-learn digits (50/50 split), float64, plain constant-η SGD without weight decay for
until the full training loss is ≤ 0.01 (setting 1's stopping rule, grid.py), with an
epoch cap. Why not the paper's fixed 100 epochs: at 100 epochs the train loss ranged from
6e-5 (η = 0.2, B = 16) to 4e-2 (η = 0.1, B = 128) in a probe, so the gaps and the
curvature (which falls as cross-entropy flattens) would mostly measure how far training
got; a common loss target compares the runs at the same fit. ``target_train_loss: null``
trains exactly ``max_epochs`` (the paper's recipe).

Exact SD is out of reach at this d (one dense Hessian is 145 GB in float64), so SD comes
from the density estimators only: SD-SLQ, SD-KDE and SD-PS read off one SLQ spectral
measure (:func:`sdcompress.experiments.measures.sd_measures`); λ_1 is the largest
exponent of that density. The full-batch training Hessian gives its top eigenvalue
(Lanczos) and trace (Hutchinson). Gaps: |train − test| accuracy and loss.

Every run records its ``eos_ratio`` as :mod:`sdcompress.experiments.eos_grid` defines it
(median over the last ``tail_fraction`` of training of (λ_max + wd)/(2/η), λ_max the mean
top eigenvalue of ``sharpness_batches`` training-batch-size minibatch Hessians), tracked
at ``sharpness_points`` evenly spaced steps of the tail. The paper's grid is not filtered
on EoS, so the main statistics use every run; a second table keeps only the runs with
``eos_ratio ≥ eos_threshold`` and the excluded runs are counted.

Statistics: Kendall τ and the granulated coefficient Ψ (over η and batch size, seed held
fixed) of every measure against both gaps, each with a percentile bootstrap interval over
runs (:func:`sdcompress.experiments.eos_grid.correlations`), and which measure has the
highest τ per gap.

Run: ``python -m sdcompress.experiments.deep_mlp [--config recipes/experiments/deep_mlp.yaml] [--quick]``.
"""

from __future__ import annotations

import json
import logging
import math
import os
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch

from sdcompress.config import check_step_size
from sdcompress.data import DatasetBundle, load_data
from sdcompress.errors import ConfigError
from sdcompress.experiments.common import SGDSettings, bundle_as, eval_stream, experiment_main, fit_sgd, gaps, write_outputs
from sdcompress.experiments.eos_grid import GAPS, correlations, eos_ratio, minibatch_sharpness, tail_steps
from sdcompress.experiments.measures import MeasureSettings, full_batch_curvature, sd_measures
from sdcompress.experiments.stats import fmt_interval, fmt_signed
from sdcompress.io import write_text_atomic
from sdcompress.models import load_model
from sdcompress.progress import progress

logger = logging.getLogger(__name__)

MEASURES = ["sd_slq", "sd_kde", "sd_ps", "lambda_1", "hess_top", "hess_trace"]
#: the measure the paper's setting-2 claim is about
CLAIMED = "sd_slq"
#: the baselines SD has to beat (PAPER.md §4: "SD beats λ_1 and trace")
BASELINES = ["lambda_1", "hess_top", "hess_trace"]


@dataclass
class DeepMlpConfig:
    """The setting-2 grid.

    Attributes:
        output_dir: where results go (``deep_mlp_runs.*``, ``deep_mlp_table.*``, the plot).
        widths: MLP widths (input, hidden…, classes).
        dtype: arithmetic of training and curvature.
        train_fraction: digits train split fraction; data_seed fixes the split.
        lrs, batch_sizes, seeds: the (η, B, seed) grid; the seed fixes init and ω.
        max_epochs: epoch cap per run (an epoch is ⌊n_train / B⌋ steps).
        target_train_loss: stop once the full train loss is ≤ this (checked every epoch);
            ``None`` trains exactly ``max_epochs``.
        tail_fraction: the last share of the steps over which λ_max is tracked.
        sharpness_points: sharpness measurements spread evenly over the tail (the last
            step always included).
        sharpness: ``minibatch`` or ``full`` (see :mod:`sdcompress.experiments.eos_grid`).
        sharpness_batches: minibatches per sharpness measurement (``minibatch``).
        lanczos_steps: Krylov steps of each top eigenvalue in the tail.
        eos_threshold: runs with eos_ratio at or above this form the "at EoS" table.
        n_bootstrap: bootstrap resamples of each interval (0: none).
        bootstrap_level: coverage of the intervals.
        bootstrap_seed: seed of the resampling.
        measures: SD estimators and curvature settings at the final weights (density
            methods only: exact SD needs d ≤ ``estimator.max_dense_params``).
    """

    output_dir: str = "results/deep_mlp"
    widths: list[int] = field(default_factory=lambda: [64, 200, 200, 200, 200, 10])
    dtype: Literal["float64", "float32"] = "float64"
    train_fraction: float = 0.5
    data_seed: int = 0
    lrs: list[float] = field(default_factory=lambda: [0.025, 0.05, 0.1, 0.2])
    batch_sizes: list[int] = field(default_factory=lambda: [16, 32, 64, 128])
    seeds: list[int] = field(default_factory=lambda: [0, 1])
    max_epochs: int = 1000
    target_train_loss: float | None = 0.01
    tail_fraction: float = 0.3
    sharpness_points: int = 4
    sharpness: Literal["minibatch", "full"] = "minibatch"
    sharpness_batches: int = 2
    lanczos_steps: int = 20
    eos_threshold: float = 0.8
    n_bootstrap: int = 1000
    bootstrap_level: float = 0.95
    bootstrap_seed: int = 0
    measures: MeasureSettings = field(default_factory=lambda: MeasureSettings(methods=["slq", "kde", "ps"]))

    def __post_init__(self) -> None:
        """Reject settings the experiment cannot run, naming the value and the fix.

        Raises:
            ConfigError: an empty or non-positive grid axis, a seed repeated, too few
                widths, max_epochs < 1, a non-positive loss target, a tail fraction outside (0, 1], no sharpness point,
                or an exact (dense) SD method.
        """
        for name in ("lrs", "batch_sizes", "seeds"):
            v = getattr(self, name)
            if not v or len(set(v)) != len(v):
                raise ConfigError(f"{name} must be a non-empty list of distinct values, got {v}; e.g. {name}={self._example[name]}")
        for lr in self.lrs:  # the one step-size check
            check_step_size(lr, section="deep_mlp", lr_name="lrs[]")
        if any(int(b) < 1 for b in self.batch_sizes):
            raise ConfigError(f"batch_sizes must all be ≥ 1, got {self.batch_sizes}; e.g. batch_sizes=[16, 32, 64, 128]")
        if len(self.widths) < 2 or any(int(w) < 1 for w in self.widths):
            raise ConfigError(f"widths must be ≥ 2 positive integers (input … classes), got {self.widths}; e.g. widths=[64, 200, 200, 200, 200, 10]")
        if self.max_epochs < 1:
            raise ConfigError(f"max_epochs must be ≥ 1, got {self.max_epochs}; e.g. max_epochs=1000")
        if self.target_train_loss is not None and not self.target_train_loss > 0:
            raise ConfigError(f"target_train_loss must be > 0 or null, got {self.target_train_loss}; e.g. target_train_loss=0.01")
        if not 0 < self.tail_fraction <= 1:
            raise ConfigError(f"tail_fraction must be in (0, 1], got {self.tail_fraction}; e.g. tail_fraction=0.3")
        if self.sharpness_points < 1 or self.sharpness_batches < 1 or self.lanczos_steps < 2:
            raise ConfigError(f"need sharpness_points ≥ 1, sharpness_batches ≥ 1 and lanczos_steps ≥ 2, got {self.sharpness_points}, "
                              f"{self.sharpness_batches}, {self.lanczos_steps}")
        if "exact" in self.measures.methods:
            raise ConfigError(f"measures.methods={self.measures.methods}: exact SD needs dense Hessians (d² entries), out of reach for "
                              "this model; use measures.methods=[slq, kde, ps]")

    _example = {"lrs": [0.025, 0.05, 0.1, 0.2], "batch_sizes": [16, 32, 64, 128], "seeds": [0, 1]}

    def quick(self) -> "DeepMlpConfig":
        """2 × 2 grid, one seed, a narrow 4-layer MLP, at most 3 epochs, small estimators."""
        return replace(
            self, widths=[64, 12, 12, 10], lrs=[0.05, 0.1], batch_sizes=[64, 128], seeds=[0], max_epochs=3, sharpness_points=2,
            sharpness_batches=1, lanczos_steps=6, n_bootstrap=20,
            measures=replace(self.measures, n_batches=2, trace_probes=4, lanczos_steps=8, dense_max_params=0,
                             estimator={**self.measures.estimator, "slq_runs": 2, "lanczos_steps": 10, "n_bootstrap": 0, "n_quantiles": 50}),
        )


def steps_per_epoch(n_train: int, batch_size: int) -> int:
    """⌊n_train / B⌋ (at least 1): the minibatches of one epoch."""
    return max(1, n_train // min(batch_size, n_train))


def sharpness_steps(steps: int, cfg: DeepMlpConfig) -> list[int]:
    """The tail steps where λ_max is measured: ``cfg.sharpness_points`` evenly spaced over
    the last ``cfg.tail_fraction`` of ``steps`` (:func:`eos_grid.tail_steps`)."""
    every = max(1, int(math.ceil(cfg.tail_fraction * steps / cfg.sharpness_points)))
    return tail_steps(steps, cfg.tail_fraction, every)


def run_one(cfg: DeepMlpConfig, bundle: DatasetBundle, *, lr: float, batch_size: int, seed: int) -> dict[str, Any]:
    """Train one model, track its sharpness over the tail, measure it at the end.

    With a loss target the stopping step T is not known in advance, so training runs
    twice: once to find T, then again for exactly T steps with the sharpness hook over
    the tail of [0, T]. Both passes follow the same seeded trajectory; the final weights
    are checked to be bit-identical.

    Returns:
        One row: the grid point, eos_ratio and the sharpness values, steps and times,
        the gaps, SD-SLQ/KDE/PS, λ_1, the full-batch top eigenvalue and trace.

    Raises:
        RuntimeError: the two passes ended at different weights (non-deterministic
            training: e.g. several threads on a GPU).
    """
    dtype = getattr(torch, cfg.dtype)

    def fresh() -> torch.nn.Module:
        return load_model("mlp", seed=seed, widths=tuple(cfg.widths), bias=False).model.to(dtype)

    spe = steps_per_epoch(len(bundle.train), batch_size)
    settings = SGDSettings(lr=lr, batch_size=batch_size, weight_decay=0.0, seed=seed, max_steps=cfg.max_epochs * spe,
                           target_train_loss=cfg.target_train_loss)
    first_time, reached, first = 0.0, False, None
    if cfg.target_train_loss is not None:
        first = fresh()
        found = fit_sgd(first, bundle.train, settings)
        settings = replace(settings, max_steps=found.steps, target_train_loss=None)
        first_time, reached = found.wall_time_s, found.reached_target
    model = fresh()
    sharp: list[float] = []
    sharp_at: list[int] = []

    def hook(step: int, m: torch.nn.Module) -> None:
        sharp.append(minibatch_sharpness(m, bundle, cfg, batch_size, seed, step))  # type: ignore[arg-type]  # reads the same fields
        sharp_at.append(step)

    fit = fit_sgd(model, bundle.train, settings, hook=hook, hook_steps=sharpness_steps(settings.max_steps, cfg))
    if first is not None and not all(torch.equal(a, b) for a, b in zip(first.parameters(), model.parameters())):
        raise RuntimeError(f"η={lr} B={batch_size} seed={seed}: retraining for {fit.steps} steps did not reproduce the weights of the "
                           "first pass; run on CPU with one thread (--threads 1)")
    row: dict[str, Any] = {"seed": seed, "lr": lr, "batch_size": batch_size, "weight_decay": 0.0,
                           "eos_ratio": eos_ratio(sharp, lr, 0.0), "sharpness_median": float(np.median(sharp)),
                           "steps": fit.steps, "epochs": fit.steps / spe, "reached_target": reached,
                           "train_time_s": first_time + fit.wall_time_s,
                           "sharpness_tail": sharp, "sharpness_steps": sharp_at}  # lists: JSON only
    row.update(gaps(model, bundle))
    t0 = time.perf_counter()
    sd_row, _ = sd_measures(model, eval_stream(bundle.train, batch_size, seed), lr=lr, weight_decay=0.0, s=cfg.measures)
    row.update(sd_row)
    row.update(full_batch_curvature(model, bundle, cfg.measures, seed=seed))
    row["eos_ratio_full_end"] = row["hess_top"] * lr / 2.0
    row["at_eos"] = bool(row["eos_ratio"] >= cfg.eos_threshold)
    row["measure_time_s"] = time.perf_counter() - t0
    logger.info("η=%g B=%d seed=%d: %d steps, eos_ratio %.2f, test acc %.3f, loss gap %.3f, SD-SLQ/d %.4f, λ1 %.3g (%.0f s + %.0f s)",
                lr, batch_size, seed, fit.steps, row["eos_ratio"], row["test_acc"], row["loss_gap"], row.get("sd_over_d_slq", math.nan),
                row.get("lambda_1", math.nan), row["train_time_s"], row["measure_time_s"])
    return row


# ------------------------------------------------------------------ statistics


def ranking(table: list[dict[str, Any]]) -> dict[str, Any]:
    """Per gap: the measures ordered by τ (highest first); whether ``CLAIMED`` has a τ
    strictly above every baseline's (the claim; the other SD estimators are not rivals);
    whether it beats each baseline, and whether its interval lies above each baseline's
    point value."""
    out: dict[str, Any] = {}
    for gap in GAPS:
        rows = {r["measure"]: r for r in table if r["gap"] == gap and "tau" in r and math.isfinite(r["tau"])}
        if CLAIMED not in rows:
            continue
        order = sorted(rows, key=lambda m: -rows[m]["tau"])
        sd = rows[CLAIMED]
        beats = {b: bool(sd["tau"] > rows[b]["tau"]) for b in BASELINES if b in rows}
        out[gap] = {"order": order, "taus": {m: rows[m]["tau"] for m in order}, "claimed_best": bool(beats) and all(beats.values()),
                    "beats": beats,
                    "interval_above": {b: bool(math.isfinite(sd["tau_ci"][0]) and sd["tau_ci"][0] > rows[b]["tau"]) for b in BASELINES if b in rows}}
    return out


def analyse(cfg: DeepMlpConfig, rows: list[dict[str, Any]]) -> dict[str, Any]:
    """τ and Ψ with intervals over every run and over the runs at EoS; the ranking."""
    present = [m for m in MEASURES if any(m in r for r in rows)]
    vary = ["lr", "batch_size"]
    at = [r for r in rows if r["eos_ratio"] >= cfg.eos_threshold]
    table = correlations(cfg, rows, present, vary)  # type: ignore[arg-type]  # reads n_bootstrap, bootstrap_level/seed
    ratios = [r["eos_ratio"] for r in rows]
    return {"n_runs": len(rows), "n_at_eos": len(at), "n_excluded": len(rows) - len(at),
            "eos_ratio_range": [min(ratios), max(ratios)] if rows else None,
            "sd_over_d_slq_range": [min(r["sd_over_d_slq"] for r in rows), max(r["sd_over_d_slq"] for r in rows)] if rows and "sd_over_d_slq" in rows[0] else None,
            "d_minus_sd": {m: [min(r["d"] - r[m] for r in rows), max(r["d"] - r[m] for r in rows)] for m in ("sd_slq", "sd_kde", "sd_ps") if rows and m in rows[0]},
            "test_acc_range": [min(r["test_acc"] for r in rows), max(r["test_acc"] for r in rows)] if rows else None,
            "all_runs": table, "at_eos": correlations(cfg, at, present, vary) if len(at) > 1 else [],  # type: ignore[arg-type]
            "ranking": ranking(table)}


# ------------------------------------------------------------------ the experiment

# fields that only choose which runs exist or how they are summarised; finished runs stay valid when they change
_JOB_FIELDS = {"lrs", "batch_sizes", "seeds", "output_dir", "n_bootstrap", "bootstrap_level", "bootstrap_seed", "eos_threshold"}


def run(cfg: DeepMlpConfig, out_dir: Path) -> dict[str, Any]:
    """Run the grid, writing ``deep_mlp_runs.json/csv`` after every run (an interrupted
    run resumes: rows already there with the same settings are reused), then the
    statistics to ``deep_mlp_table.json/md`` and the scatter plot."""
    dtype = getattr(torch, cfg.dtype)
    bundle = bundle_as(load_data("digits", train_fraction=cfg.train_fraction, seed=cfg.data_seed), dtype)
    jobs = [(lr, bs, s) for s in cfg.seeds for bs in cfg.batch_sizes for lr in cfg.lrs]
    done: dict[tuple, dict[str, Any]] = {}
    partial_path = out_dir / "deep_mlp_runs.json"
    if partial_path.exists():
        old = json.loads(partial_path.read_text())
        same = {k: v for k, v in old.get("config", {}).items() if k not in _JOB_FIELDS}
        if same == json.loads(json.dumps({k: v for k, v in asdict(cfg).items() if k not in _JOB_FIELDS})):
            done = {(r["lr"], r["batch_size"], r["seed"]): r for r in old["runs"]}
    rows: list[dict[str, Any]] = []
    start, load_start = time.perf_counter(), _load()
    for lr, bs, seed in progress(jobs, desc="deep MLP runs"):
        row = done.get((lr, bs, seed)) or run_one(cfg, bundle, lr=lr, batch_size=bs, seed=seed)
        rows.append(row)
        write_outputs(out_dir, "deep_mlp_runs", {"config": asdict(cfg), "runs": rows}, rows)
    stats = analyse(cfg, rows)
    timing = {"wall_time_s": time.perf_counter() - start, "run_time_s": sum(r["train_time_s"] + r["measure_time_s"] for r in rows),
              "n_reused": sum(1 for r in rows if (r["lr"], r["batch_size"], r["seed"]) in done), "torch_threads": torch.get_num_threads(),
              "load_avg_1m_start_end": [load_start, _load()]}
    payload = {"config": asdict(cfg), **stats, **timing}
    write_outputs(out_dir, "deep_mlp_table", payload)
    write_text_atomic(out_dir / "deep_mlp_table.md", markdown_report(cfg, stats, rows, timing))
    from sdcompress.experiments import plots

    plots.grid_figures(rows, [], [r for r in stats["all_runs"] if "tau" in r], out_dir)
    return payload


def _load() -> float:
    """The 1-minute load average (``nan`` where the OS has none)."""
    try:
        return float(os.getloadavg()[0])
    except (AttributeError, OSError):
        return math.nan


def markdown_report(cfg: DeepMlpConfig, stats: dict[str, Any], rows: list[dict[str, Any]], timing: dict[str, Any] | None = None) -> str:
    """The τ / Ψ tables with intervals, the ranking and the per-run summary as Markdown."""
    pct = int(round(100 * cfg.bootstrap_level))
    d = rows[0].get("d", "?") if rows else "?"
    deficit = ", ".join(f"{m} {_range(v, '.1f')}" for m, v in stats["d_minus_sd"].items())
    lines = [f"Setting 2 at laptop scale: MLP {'-'.join(map(str, cfg.widths))}, ReLU, no bias (d = {d}), digits, {cfg.dtype}, "
             f"plain SGD to train loss ≤ {cfg.target_train_loss} (cap {cfg.max_epochs} epochs); η ∈ {cfg.lrs} × B ∈ {cfg.batch_sizes} × seeds {cfg.seeds}.",
             "", f"Runs: {stats['n_runs']}; at EoS (eos_ratio ≥ {cfg.eos_threshold:g}): {stats['n_at_eos']} (excluded from the "
             f"second table: {stats['n_excluded']}); eos_ratio range {_range(stats['eos_ratio_range'])}; SD-SLQ/d range "
             f"{_range(stats['sd_over_d_slq_range'], '.6f')}; d − SD range: "
             f"{deficit}; test accuracy range {_range(stats['test_acc_range'])}. Intervals: {pct}% percentile "
             f"bootstrap over runs ({cfg.n_bootstrap} resamples). Higher τ is better (a bound should rise with the gap).", ""]
    if timing:
        t = timing
        lines += [f"Time: the runs' own training + measurement time summed is {t['run_time_s'] / 60:.1f} min; this invocation took "
                  f"{t['wall_time_s'] / 60:.1f} min with {t['torch_threads']} torch thread(s) and reused {t['n_reused']} finished run(s); "
                  f"1-minute load average {t['load_avg_1m_start_end'][0]:.1f} at its start, {t['load_avg_1m_start_end'][1]:.1f} at its end "
                  "(2 cores shared with other jobs).", ""]

    def table(title: str, trows: list[dict[str, Any]]) -> None:
        lines.extend([f"### {title}", "", "| measure | gap | n | τ | τ interval | Ψ | Ψ interval | ψ_η | ψ_B |", "|---|---|---|---|---|---|---|---|---|"])
        for r in trows:
            if "tau" in r:
                lines.append(f"| {r['measure']} | {r['gap']} | {r['n_runs']} | {fmt_signed(r['tau'])} | {fmt_interval(r['tau_ci'])} | {fmt_signed(r['psi_mean'])} | "
                             f"{fmt_interval(r['psi_mean_ci'])} | {fmt_signed(r['psi_lr'])} | {fmt_signed(r['psi_batch_size'])} |")
        lines.append("")

    table("all runs", stats["all_runs"])
    if stats["at_eos"]:
        table(f"runs at EoS (eos_ratio ≥ {cfg.eos_threshold:g})", stats["at_eos"])
    for gap, r in stats["ranking"].items():
        best_base = max(r["beats"], key=lambda b: r["taus"][b])
        verdict = ("SD-SLQ has a higher τ than λ_1, the top eigenvalue and the trace" if r["claimed_best"]
                   else f"SD-SLQ does NOT have the best τ ({best_base} has {r['taus'][best_base]:+.3f})")
        beats = "; ".join(f"{'above' if v else 'below'} {b} ({r['taus'][b]:+.3f}{', interval above it' if r['interval_above'][b] else ''})"
                          for b, v in r["beats"].items())
        order = ", ".join(f"{m} {r['taus'][m]:+.3f}" for m in r["order"])
        lines.append(f"- {gap}: τ order {order}. **{verdict}**; SD-SLQ is {beats}.")
    lines += ["", "ψ is — where no group of runs that differ only in that factor has a defined τ.",
              "", "### runs", "", "| η | B | seed | steps | eos_ratio | train loss | test acc | acc gap | loss gap | d − SD-SLQ | λ_1 | top eig | trace |",
              "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['lr']:g} | {r['batch_size']} | {r['seed']} | {r['steps']} | {r['eos_ratio']:.2f} | {r['train_loss']:.2e} | "
                     f"{r['test_acc']:.3f} | {r['acc_gap']:.3f} | {r['loss_gap']:.3f} | {r['d'] - r.get('sd_slq', math.nan):.1f} | "
                     f"{r.get('lambda_1', math.nan):+.3g} | {r['hess_top']:.3g} | {r['hess_trace']:.3g} |")
    return "\n".join(lines) + "\n"


def _range(v: list[float] | None, fmt: str = ".3g") -> str:
    return f"{v[0]:{fmt}}–{v[1]:{fmt}}" if v else "—"


def main(argv: list[str] | None = None) -> int:
    """Command-line entry (a user error exits 2 with one line; ``-v`` for the traceback)."""
    return experiment_main("deep_mlp", __doc__.splitlines()[0], DeepMlpConfig, run, argv,
                           headline=lambda p: {g: r["claimed_best"] for g, r in p["ranking"].items()})


if __name__ == "__main__":
    raise SystemExit(main())
