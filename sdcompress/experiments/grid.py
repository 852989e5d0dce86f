"""Experiment 1: SD against the generalization gap over an (η, batch size) grid.

The paper's MLP design (PAPER.md §4, setting 1) at laptop scale: 64-16-16-10, ReLU, no
bias (d = 1,440) on scikit-learn digits (50/50 split), plain constant-η SGD to a
near-zero training loss (the stopping rule of §7), float64. For every run: exact SD,
SD-SLQ, SD-KDE, SD-PS, λ_1, the top eigenvalue and trace of the full-batch Hessian, and
the gaps |train − test| in accuracy and loss. Then Kendall τ and the granulated Kendall
coefficient (ψ over η, ψ over batch size, their mean) of every measure against every
gap. A second axis varies weight decay at fixed η and batch size (§7's table).

Run: ``python -m sdcompress.experiments.grid [--config recipes/experiments/grid.yaml] [--quick]``.
"""

from __future__ import annotations

import logging
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Literal

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
from sdcompress.experiments.measures import MeasureSettings, full_batch_curvature, sd_measures
from sdcompress.experiments.stats import correlation_table
from sdcompress.io import write_text_atomic
from sdcompress.models import load_model
from sdcompress.progress import progress

logger = logging.getLogger(__name__)

MEASURES = ["sd_exact", "sd_slq", "sd_kde", "sd_ps", "lambda_1", "hess_top", "hess_trace"]
GAPS = ["acc_gap", "loss_gap"]


@dataclass
class GridConfig:
    """The grid experiment.

    Attributes:
        output_dir: where results go.
        widths: MLP widths (input, hidden…, classes).
        dtype: arithmetic of training and curvature.
        train_fraction: digits train split fraction; data_seed fixes the split.
        lrs, batch_sizes, seeds: the (η, B, seed) grid; the seed fixes init and ω.
        max_epochs: epoch cap; target_train_loss: stop when the train loss is ≤ this.
        wd_values: the weight-decay axis, at wd_lr, wd_batch_size for wd_epochs epochs
            (no early stop: weight decay keeps the loss above small targets), wd_seeds.
        measures: what to measure per run.
        checkpoint_dir: trained weights are kept here (gitignored) for compression_tie;
            empty to keep none.
    """

    output_dir: str = "results/grid"
    widths: list[int] = field(default_factory=lambda: [64, 16, 16, 10])
    dtype: Literal["float64", "float32"] = "float64"
    train_fraction: float = 0.5
    data_seed: int = 0
    lrs: list[float] = field(default_factory=lambda: [0.05, 0.1, 0.2, 0.4])
    batch_sizes: list[int] = field(default_factory=lambda: [16, 32, 64, 128])
    seeds: list[int] = field(default_factory=lambda: [0, 1, 2])
    max_epochs: int = 1000
    target_train_loss: float = 0.01
    wd_values: list[float] = field(default_factory=lambda: [0.0, 1e-3, 1e-2, 3e-2])
    wd_lr: float = 0.2
    wd_batch_size: int = 64
    wd_epochs: int = 150
    wd_seeds: list[int] = field(default_factory=lambda: [0, 1, 2])
    measures: MeasureSettings = field(default_factory=MeasureSettings)
    checkpoint_dir: str = "runs/experiments/grid"

    def quick(self) -> "GridConfig":
        """2 × 2 grid, one seed, two weight decays, a few epochs, small estimators."""
        return replace(
            self,
            widths=[64, 8, 10],
            lrs=[0.1, 0.2],
            batch_sizes=[64, 128],
            seeds=[0],
            max_epochs=3,
            wd_values=[0.0, 1e-2],
            wd_epochs=2,
            wd_seeds=[0],
            checkpoint_dir="runs/experiments/grid-quick/checkpoints",
            measures=replace(self.measures, n_batches=2, estimator={**self.measures.estimator, **QUICK_ESTIMATOR}),
        )


#: Estimator settings small enough for tests (options of EstimateConfig).
QUICK_ESTIMATOR: dict[str, Any] = {"slq_runs": 2, "lanczos_steps": 10, "n_bootstrap": 0, "n_quantiles": 50}


def run_one(cfg: GridConfig, bundle: DatasetBundle, *, lr: float, batch_size: int, seed: int, weight_decay: float, max_epochs: int, target: float | None) -> dict[str, Any]:
    """Train one model and measure it; returns one row of the results table."""
    dtype = getattr(torch, cfg.dtype)
    model = load_model("mlp", seed=seed, widths=tuple(cfg.widths), bias=False).model.to(dtype)
    steps_per_epoch = max(1, len(bundle.train) // min(batch_size, len(bundle.train)))
    settings = SGDSettings(lr=lr, batch_size=batch_size, weight_decay=weight_decay, seed=seed,
                           max_steps=max_epochs * steps_per_epoch, target_train_loss=target)
    fit = fit_sgd(model, bundle.train, settings)
    row: dict[str, Any] = {"lr": lr, "batch_size": batch_size, "seed": seed, "weight_decay": weight_decay,
                           "steps": fit.steps, "epochs": fit.steps / steps_per_epoch, "reached_target": fit.reached_target,
                           "train_time_s": fit.wall_time_s}
    row.update(gaps(model, bundle))
    t0 = time.perf_counter()
    batches = eval_stream(bundle.train, batch_size, seed)
    sd_row, estimates = sd_measures(model, batches, lr=lr, weight_decay=weight_decay, s=cfg.measures)
    row.update(sd_row)
    row.update(full_batch_curvature(model, bundle, cfg.measures, seed=seed))
    row["eos_ratio"] = row["hess_top"] * lr / 2.0  # ≥ 1: full-batch sharpness at or above 2/η
    row["mb_eos_ratio"] = row.get("mb_hess_top", float("nan")) * lr / 2.0  # the same for the minibatch Hessians
    row["measure_time_s"] = time.perf_counter() - t0
    if cfg.checkpoint_dir:
        folder = Path(cfg.checkpoint_dir) / f"lr{lr}_bs{batch_size}_wd{weight_decay}_s{seed}"
        model.save_pretrained(folder)
        if "exact" in estimates:  # what compression_tie plans with
            estimates["exact"].save(folder, "estimate_exact.json")
        row["checkpoint"] = str(folder)
    logger.info("lr=%g B=%d wd=%g seed=%d: %d steps, test acc %.3f, SD/d %.4f, λ1 %.3g",
                lr, batch_size, weight_decay, seed, fit.steps, row["test_acc"], row.get("sd_over_d_exact", float("nan")), row.get("lambda_1", float("nan")))
    return row


# fields that only choose which runs exist; the runs already done stay valid when they change
_JOB_FIELDS = {"lrs", "batch_sizes", "seeds", "wd_values", "wd_seeds", "output_dir"}


def _key(row: dict[str, Any]) -> tuple:
    return (row["axis"], row["lr"], row["batch_size"], row["weight_decay"], row["seed"])


def run(cfg: GridConfig, out_dir: Path) -> dict[str, Any]:
    """Run the grid and the weight-decay axis, writing results as they come.

    Rows already present in ``grid_runs.json`` (same key) are reused, so an interrupted
    run resumes where it stopped.
    """
    import json

    dtype = getattr(torch, cfg.dtype)
    bundle = bundle_as(load_data("digits", train_fraction=cfg.train_fraction, seed=cfg.data_seed), dtype)
    jobs = [("grid", lr, bs, 0.0, s, cfg.max_epochs, cfg.target_train_loss) for s in cfg.seeds for bs in cfg.batch_sizes for lr in cfg.lrs]
    jobs += [("wd", cfg.wd_lr, cfg.wd_batch_size, wd, s, cfg.wd_epochs, None) for s in cfg.wd_seeds for wd in cfg.wd_values]
    done: dict[tuple, dict[str, Any]] = {}
    partial = out_dir / "grid_runs.json"
    if partial.exists():
        old = json.loads(partial.read_text())
        same = {k: v for k, v in old.get("config", {}).items() if k not in _JOB_FIELDS}
        if same == {k: v for k, v in asdict(cfg).items() if k not in _JOB_FIELDS}:
            done = {_key(r): r for r in old["runs"]}
    rows: list[dict[str, Any]] = []
    start = time.perf_counter()
    for axis, lr, bs, wd, seed, epochs, target in progress(jobs, desc="grid runs"):
        key = (axis, lr, bs, wd, seed)
        row = done.get(key) or {"axis": axis, **run_one(cfg, bundle, lr=lr, batch_size=bs, seed=seed, weight_decay=wd, max_epochs=epochs, target=target)}
        rows.append(row)
        write_outputs(out_dir, "grid_runs", {"config": asdict(cfg), "runs": rows}, rows)
    grid_rows = [r for r in rows if r["axis"] == "grid"]
    present = [m for m in MEASURES if any(m in r for r in grid_rows)]
    table = correlation_table(grid_rows, present, GAPS, factors=["lr", "batch_size", "seed"], vary=["lr", "batch_size"])
    wd_rows = [r for r in rows if r["axis"] == "wd"]
    wd_table = correlation_table(wd_rows, present, GAPS, factors=["weight_decay", "seed"], vary=["weight_decay"]) if len(wd_rows) > 1 else []
    summary = summarize(grid_rows, wd_rows, table)
    payload = {"config": asdict(cfg), "table": table, "wd_table": wd_table, "summary": summary,
               "wall_time_s": time.perf_counter() - start}
    write_outputs(out_dir, "grid_table", payload, table)
    write_text_atomic(out_dir / "grid_table.md", markdown_report(table, wd_rows, summary, wd_table))
    from sdcompress.experiments import plots

    plots.grid_figures(grid_rows, wd_rows, table, out_dir)
    return payload


def summarize(grid_rows: list[dict[str, Any]], wd_rows: list[dict[str, Any]], table: list[dict[str, Any]]) -> dict[str, Any]:
    """Ranges of SD/d and the verdict: did exact SD beat λ_1 and trace on Kendall τ?"""
    out: dict[str, Any] = {}
    if grid_rows and "sd_over_d_exact" in grid_rows[0]:
        v = [r["sd_over_d_exact"] for r in grid_rows]
        out["sd_over_d_exact_range"] = [min(v), max(v)]
        out["d_minus_sd_range"] = [min(r["d"] - r["sd_exact"] for r in grid_rows), max(r["d"] - r["sd_exact"] for r in grid_rows)]
        out["n_neutral_range"] = [min(r["n_neutral"] for r in grid_rows), max(r["n_neutral"] for r in grid_rows)]
        out["n_at_eos"] = sum(r["eos_ratio"] >= 1.0 for r in grid_rows)
    out["n_runs"] = len(grid_rows)
    out["n_reached_target"] = sum(bool(r["reached_target"]) for r in grid_rows)
    tau = {(r["measure"], r["gap"]): r["tau"] for r in table}
    verdict = {}
    for gap in GAPS:
        sd = tau.get(("sd_exact", gap))
        if sd is None:
            continue
        verdict[gap] = {other: bool(sd > tau[(other, gap)]) for other in ("lambda_1", "hess_trace", "hess_top") if (other, gap) in tau}
    out["sd_exact_beats_on_tau"] = verdict
    out["wd_axis"] = [{k: r[k] for k in ("weight_decay", "seed", "sd_over_d_exact", "test_acc", "loss_gap", "acc_gap") if k in r} for r in wd_rows]
    return out


def markdown_report(table: list[dict[str, Any]], wd_rows: list[dict[str, Any]], summary: dict[str, Any],
                    wd_table: list[dict[str, Any]] | None = None) -> str:
    """The correlation tables, the plain verdict and the weight-decay table as Markdown.

    A measure that bounds the generalization gap should rise with it: higher τ is better,
    and a negative τ means the measure moves *against* the gap.
    """
    psi_cols = [k for k in (table[0] if table else {}) if k.startswith("psi_")]
    lines = ["### η × batch-size grid (weight decay 0)", "",
             "| measure | gap | Kendall τ | " + " | ".join(psi_cols) + " |", "|---" * (3 + len(psi_cols)) + "|"]
    for r in table:
        lines.append(f"| {r['measure']} | {r['gap']} | {r['tau']:+.3f} | " + " | ".join(f"{r[c]:+.3f}" for c in psi_cols) + " |")
    lines.append("")
    tau = {(r["measure"], r["gap"]): r["tau"] for r in table}
    for gap, beats in summary.get("sd_exact_beats_on_tau", {}).items():
        t_sd = tau[("sd_exact", gap)]
        sign = "positive (SD rises with the gap)" if t_sd > 0 else "negative (SD falls as the gap grows)"
        said = "; ".join(f"{'higher' if b else 'lower'} than {k} ({tau[(k, gap)]:+.3f})" for k, b in beats.items())
        verdict = "SD beats λ_1 and trace" if beats.get("lambda_1") and beats.get("hess_trace") else "SD does NOT beat both λ_1 and trace"
        lines.append(f"- {gap}: exact SD τ = {t_sd:+.3f}, {sign}; {said}. **{verdict} on Kendall τ here.**")
    if wd_table:
        lines += ["", "### weight-decay axis (η, batch fixed; 3 seeds)", "", "| measure | gap | Kendall τ | ψ over wd |", "|---|---|---|---|"]
        for r in wd_table:
            lines.append(f"| {r['measure']} | {r['gap']} | {r['tau']:+.3f} | {r['psi_weight_decay']:+.3f} |")
    if wd_rows:
        lines += ["", "| wd | seed | SD/d (exact) | test acc | loss gap | acc gap |", "|---|---|---|---|---|---|"]
        for r in wd_rows:
            lines.append(f"| {r['weight_decay']:g} | {r['seed']} | {r.get('sd_over_d_exact', float('nan')):.3f} | {r['test_acc']:.3f} | {r['loss_gap']:.3f} | {r['acc_gap']:.3f} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    """Command-line entry."""
    return experiment_main("grid", __doc__.splitlines()[0], GridConfig, run, argv, headline=lambda p: p["summary"].get("sd_exact_beats_on_tau"))


if __name__ == "__main__":
    raise SystemExit(main())
