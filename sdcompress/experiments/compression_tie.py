"""Experiment 4: does the change in test loss after SD-guided compression track SD?

For every model the grid experiment trained (its checkpoints and exact SD estimates are
kept under ``runs/experiments/grid``), plan with the SD-guided planner at fixed
budgets (fractions of the target modules' parameters; ``below_floor`` so that every
model is compressed to the same size even when SD ≈ d), apply the plan, and measure the
test loss again. A plain baseline (uniform rank) planned for the same budget is measured
next to it; ranks are integers, so the two need not keep the same number of values (on
the grid's MLP the SD plan kept 944 of the 1,280 target values at 75%, uniform rank 896;
``params_kept`` is the SD plan's share of the whole model). One correlation: Kendall τ
between SD (exact) and Δ test loss over the runs; one plot.

Run (after ``grid``): ``python -m sdcompress.experiments.compression_tie [--config recipes/experiments/compression_tie.yaml] [--quick]``.
"""

from __future__ import annotations

import copy
import json
import logging
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from sdcompress.data import load_data
from sdcompress.errors import ConfigError
from sdcompress.experiments.common import (
    bundle_as,
    classification_metrics,
    load_checkpoint,
    experiment_main,
    write_outputs,
)
from sdcompress.experiments.stats import kendall_tau

logger = logging.getLogger(__name__)
ESTIMATE_FILE = "estimate_exact.json"


@dataclass
class TieConfig:
    """The compression tie-back.

    Attributes:
        output_dir: where results go.
        grid_runs: the grid experiment's ``grid_runs.json`` (rows with checkpoints).
        axes: which of the grid's axes to use (``grid``: η × batch; ``wd``: weight decay).
        params_fractions: budgets (fraction of the target modules' parameters kept); the
            first is the headline one.
        targets: module patterns to compress (``None``: the planner's default targets).
        baseline: a baseline strategy planned for the same budget (``""``: none); its
            size can differ from the SD plan's (integer ranks).
        train_fraction, data_seed: must match the grid's split.
        dtype: arithmetic of the models (the grid's).
    """

    output_dir: str = "results/compression_tie"
    grid_runs: str = "results/grid/grid_runs.json"
    axes: list[str] = field(default_factory=lambda: ["grid", "wd"])
    params_fractions: list[float] = field(default_factory=lambda: [0.75, 0.5])
    targets: list[str] | None = None
    baseline: str = "uniform-rank"
    train_fraction: float = 0.5
    data_seed: int = 0
    dtype: str = "float64"

    def quick(self) -> "TieConfig":
        """The quick grid's runs."""
        from dataclasses import replace

        return replace(self, grid_runs="runs/experiments/grid-quick/grid_runs.json")


def compressed_test_loss(model: torch.nn.Module, estimate, bundle, cfg: TieConfig, strategy: str, fraction: float) -> dict[str, Any]:
    """Plan with ``strategy`` to keep ``fraction`` of the target parameters, compress a
    copy, and return its metrics."""
    from sdcompress.compress import compress_
    from sdcompress.plan import PlanConfig, make_plan, planning_inputs

    pcfg = PlanConfig(strategy=strategy, budget={"params_fraction": fraction}, below_floor=True, targets=cfg.targets)
    inputs = planning_inputs(model, pcfg)
    plan = make_plan(estimate, inputs.modules, pcfg, stats=inputs.stats)
    clone = copy.deepcopy(model)
    report = compress_(clone, plan)
    te = classification_metrics(clone, bundle.test)
    tr = classification_metrics(clone, bundle.train)
    ranks = {m.name: m.rank for m in plan.modules}
    return {"test_loss": te["loss"], "test_acc": te["acc"], "train_loss": tr["loss"],
            "params_after": report.params_after, "params_before": report.params_before, "ranks": ranks}


def run(cfg: TieConfig, out_dir: Path) -> dict[str, Any]:
    """Compress every checkpointed grid model; write ``compression_tie.json/.csv/.png``."""
    from sdcompress.estimator.result import SDEstimate
    from sdcompress.experiments import plots

    path = Path(cfg.grid_runs)
    if not path.exists():
        raise ConfigError(f"grid results {str(path)!r} not found; run `python -m sdcompress.experiments.grid` first (or pass --set grid_runs=...)")
    runs = [r for r in json.loads(path.read_text())["runs"] if r["axis"] in cfg.axes and r.get("checkpoint")]
    if not runs:
        raise ConfigError(f"{path} holds no checkpointed runs on axes {cfg.axes}; rerun the grid with a checkpoint_dir")
    start = time.perf_counter()
    bundle = None
    rows = []
    for r in runs:
        folder = Path(r["checkpoint"])
        model = load_checkpoint(folder, getattr(torch, cfg.dtype))
        if bundle is None:
            bundle = bundle_as(load_data("digits", train_fraction=cfg.train_fraction, seed=cfg.data_seed), getattr(torch, cfg.dtype))
        estimate = SDEstimate.load(folder, ESTIMATE_FILE)
        before = classification_metrics(model, bundle.test)
        for fraction in cfg.params_fractions:
            row: dict[str, Any] = {k: r[k] for k in ("axis", "lr", "batch_size", "weight_decay", "seed")}
            row.update({"params_fraction": fraction, "sd_exact": estimate.sd, "sd_over_d": estimate.sd_over_d,
                        "loss_gap": r["loss_gap"], "test_loss": before["loss"], "test_acc": before["acc"]})
            sd = compressed_test_loss(model, estimate, bundle, cfg, "sd", fraction)
            row.update({"sd_plan_test_loss": sd["test_loss"], "sd_plan_test_acc": sd["test_acc"],
                        "delta_test_loss": sd["test_loss"] - before["loss"], "params_kept": sd["params_after"] / sd["params_before"],
                        "sd_plan_ranks": sd["ranks"]})
            if cfg.baseline:
                base = compressed_test_loss(model, estimate, bundle, cfg, cfg.baseline, fraction)
                row.update({"baseline_test_loss": base["test_loss"], "baseline_delta_test_loss": base["test_loss"] - before["loss"],
                            "baseline_ranks": base["ranks"]})
            rows.append(row)
            logger.info("%s lr=%g B=%d wd=%g s=%d, budget %g: SD/d %.3f, Δ test loss %.4f", row["axis"], row["lr"], row["batch_size"],
                        row["weight_decay"], row["seed"], fraction, row["sd_over_d"], row["delta_test_loss"])
    corr = {f"{f:g}": correlations([r for r in rows if r["params_fraction"] == f], cfg) for f in cfg.params_fractions}
    payload = {"config": asdict(cfg), "correlation": corr, "runs": rows, "wall_time_s": time.perf_counter() - start}
    write_outputs(out_dir, "compression_tie", payload, rows)
    plots.tie_figure(rows, corr, cfg.params_fractions, out_dir / "compression_tie.png")
    return payload


def correlations(rows: list[dict[str, Any]], cfg: TieConfig) -> dict[str, Any]:
    """Kendall τ of SD against Δ test loss (all runs and per axis) at one budget."""
    out: dict[str, Any] = {"kendall_sd_vs_delta_test_loss": kendall_tau([r["sd_exact"] for r in rows], [r["delta_test_loss"] for r in rows]),
                           "n_runs": len(rows)}
    for axis in cfg.axes:
        sub = [r for r in rows if r["axis"] == axis]
        if len(sub) > 1:
            out[f"kendall_sd_vs_delta_test_loss_{axis}"] = kendall_tau([r["sd_exact"] for r in sub], [r["delta_test_loss"] for r in sub])
    out["median_delta_test_loss"] = float(np.median([r["delta_test_loss"] for r in rows]))
    if cfg.baseline:
        out["kendall_sd_vs_baseline_delta"] = kendall_tau([r["sd_exact"] for r in rows], [r["baseline_delta_test_loss"] for r in rows])
        out["sd_plan_better_fraction"] = sum(r["delta_test_loss"] < r["baseline_delta_test_loss"] for r in rows) / len(rows)
        out["median_baseline_delta_test_loss"] = float(np.median([r["baseline_delta_test_loss"] for r in rows]))
    return out


def main(argv: list[str] | None = None) -> int:
    """Command-line entry."""
    return experiment_main("compression_tie", __doc__.splitlines()[0], TieConfig, run, argv, headline=lambda p: p["correlation"])


if __name__ == "__main__":
    raise SystemExit(main())
