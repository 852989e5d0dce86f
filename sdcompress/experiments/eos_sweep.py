"""Experiment 2: SD/d against the learning rate, below and above the edge of stability.

For each series (a model, a dataset, a batch size) and each η: constant-η SGD from the
same initialisation and the same ω, tracking the top eigenvalue of the training-loss
Hessian against 2/η; at the end, SD from minibatch Hessians at the final weights (exact
for the digits MLP, the SLQ density for ``tiny-gpt2``). A run is "at EoS" when the final
sharpness is at least ``eos_fraction`` × 2/η (the sharpness of a stable run sits below
2/η; at EoS it hovers at it).

Run: ``python -m sdcompress.experiments.eos_sweep [--config recipes/experiments/eos_sweep.yaml] [--quick]``.
"""

from __future__ import annotations

import logging
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import torch

from sdcompress.data import load_data
from sdcompress.errors import DivergenceError
from sdcompress.experiments.common import (
    SGDSettings,
    bundle_as,
    eval_stream,
    experiment_main,
    fit_sgd,
    write_outputs,
)
from sdcompress.experiments.measures import MeasureSettings, sd_measures
from sdcompress.models import FunctionalLoss, load_model, model_loss

logger = logging.getLogger(__name__)


@dataclass
class SeriesConfig:
    """One curve of SD/d against η.

    Attributes:
        name: label in tables and plots.
        model: built-in model name; model_options: its constructor options.
        data: built-in dataset name; data_options: its loader options.
        dtype: ``float64`` or ``float32``.
        batch_size: SGD minibatch size (≥ the train split: full-batch GD).
        weight_decay: coupled L2 coefficient (also in the step Jacobian).
        lrs: the learning rates.
        steps: SGD steps per run.
        sharpness_every: steps between sharpness measurements.
        sharpness_examples: training examples in the sharpness Hessian (0: all).
        sharpness_dense: form that Hessian densely (tiny models) instead of Lanczos.
        lanczos_steps: Krylov steps of the top eigenvalue when not dense.
        measures: SD estimators and their settings at the final weights.
        seed: init and ω.
    """

    name: str = "mlp-gd"
    model: str = "mlp"
    model_options: dict[str, Any] = field(default_factory=lambda: {"widths": [64, 16, 16, 10], "bias": False})
    data: str = "digits"
    data_options: dict[str, Any] = field(default_factory=lambda: {"train_fraction": 0.5})
    dtype: str = "float64"
    batch_size: int = 100_000
    weight_decay: float = 0.0
    lrs: list[float] = field(default_factory=lambda: [0.1, 0.2, 0.4, 0.8, 1.6])
    steps: int = 2000
    sharpness_every: int = 50
    sharpness_examples: int = 0
    sharpness_dense: bool = False
    lanczos_steps: int = 20
    measures: MeasureSettings = field(default_factory=lambda: MeasureSettings(methods=["exact"], n_batches=1))
    seed: int = 0


@dataclass
class EosConfig:
    """The sweep: several series and the EoS criterion."""

    output_dir: str = "results/eos"
    eos_fraction: float = 0.9
    series: list[SeriesConfig] = field(default_factory=lambda: [SeriesConfig()])

    def quick(self) -> "EosConfig":
        """Two η per series, a few steps, tiny estimators."""
        small = []
        for s in self.series:
            q = replace(s, lrs=s.lrs[:2], steps=6, sharpness_every=3, lanczos_steps=5,
                        measures=replace(s.measures, n_batches=min(2, s.measures.n_batches),
                                         estimator={**s.measures.estimator, "slq_runs": 2, "lanczos_steps": 6, "n_bootstrap": 0, "n_quantiles": 50}))
            if s.model == "mlp":
                q.model_options = {**s.model_options, "widths": [64, 8, 10]}
                q.batch_size = min(s.batch_size, 128)
            if s.model == "tiny-gpt2":
                q.model_options = {**s.model_options, "n_layer": 1, "n_embd": 8, "n_head": 2}
                q.batch_size = min(s.batch_size, 4)
                q.sharpness_examples = 4
            small.append(q)
        return replace(self, series=small)


def sharpness(model: torch.nn.Module, batch, s: SeriesConfig, loss_fn) -> float:
    """Top algebraic eigenvalue of the Hessian of the loss on ``batch``."""
    from sdcompress.linalg import HessianOperator, top_eigenvalue
    from sdcompress.linalg.dense import dense_hessian

    loss = FunctionalLoss(model, loss_fn=loss_fn)
    if s.sharpness_dense:
        return float(torch.linalg.eigvalsh(dense_hessian(loss, batch, chunk_size=128).double())[-1])
    return top_eigenvalue(HessianOperator(loss, batch, chunk_size=8), steps=s.lanczos_steps, seed=s.seed)


def run_series(s: SeriesConfig, eos_fraction: float) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """All η of one series: the sharpness traces and one final row per η."""
    dtype = getattr(torch, s.dtype)
    bundle = bundle_as(load_data(s.data, **s.data_options), dtype)
    train = bundle.train
    n_sharp = len(train) if not s.sharpness_examples else min(s.sharpness_examples, len(train))
    sharp_batch = train.take(torch.arange(n_sharp))
    traces, finals = [], []
    for lr in s.lrs:
        loaded = load_model(s.model, seed=s.seed, **s.model_options)
        model = loaded.model.to(dtype)
        trace = {"series": s.name, "lr": lr, "steps": [], "sharpness": [], "loss": []}

        def hook(step: int, m: torch.nn.Module) -> None:
            trace["steps"].append(step)
            trace["sharpness"].append(sharpness(m, sharp_batch, s, loaded.loss_fn))
            with torch.no_grad():
                trace["loss"].append(float(model_loss(m, sharp_batch, loaded.loss_fn)))

        settings = SGDSettings(lr=lr, batch_size=s.batch_size, weight_decay=s.weight_decay, seed=s.seed, max_steps=s.steps)
        row: dict[str, Any] = {"series": s.name, "lr": lr, "two_over_lr": 2.0 / lr, "batch_size": min(s.batch_size, len(train))}
        try:
            fit = fit_sgd(model, train, settings, hook=hook, hook_steps=range(0, s.steps + 1, s.sharpness_every), loss_fn=loaded.loss_fn)
        except DivergenceError as exc:
            logger.warning("%s η=%g diverged: %s", s.name, lr, exc)
            row["diverged"] = True
            finals.append(row)
            traces.append(trace)
            continue
        t0 = time.perf_counter()
        tail = trace["sharpness"][len(trace["sharpness"]) // 2 :]  # the second half: on the attractor
        row.update({"diverged": False, "train_time_s": fit.wall_time_s, "final_sharpness": trace["sharpness"][-1],
                    "mean_late_sharpness": sum(tail) / len(tail), "final_loss": trace["loss"][-1]})
        row["eos_ratio"] = row["mean_late_sharpness"] * lr / 2.0
        # a run whose curvature vanished (dead ReLUs: constant output, H = 0) is not at EoS;
        # its SD = d is trivial (every exponent is ln 1 = 0)
        row["collapsed"] = abs(trace["sharpness"][-1]) < 1e-3 * abs(trace["sharpness"][0])
        row["at_eos"] = row["eos_ratio"] >= eos_fraction and not row["collapsed"]
        batches = eval_stream(train, s.batch_size, s.seed)
        row.update(sd_measures(model, batches, lr=lr, weight_decay=s.weight_decay, s=s.measures)[0])
        method = s.measures.methods[0]
        row["sd_over_d"] = row[f"sd_over_d_{method}"]
        row["sd_method"] = method
        row["measure_time_s"] = time.perf_counter() - t0
        logger.info("%s η=%g: sharpness·η/2 = %.2f, SD/d = %.4f (%s), n_neutral = %s",
                    s.name, lr, row["eos_ratio"], row["sd_over_d"], method, row.get("n_neutral"))
        finals.append(row)
        traces.append(trace)
    return traces, finals


def run(cfg: EosConfig, out_dir: Path) -> dict[str, Any]:
    """Every series; writes ``eos.json``/``eos.csv`` and one figure per series."""
    from sdcompress.experiments import plots

    start = time.perf_counter()
    all_traces, all_finals = [], []
    for s in cfg.series:
        traces, finals = run_series(s, cfg.eos_fraction)
        all_traces += traces
        all_finals += finals
        ok = [f for f in finals if not f.get("diverged")]
        plots.eos_figure([t for t in traces if t["steps"]], ok, out_dir / f"eos_{s.name}.png",
                         f"{s.name}: sharpness vs 2/η (left), SD/d vs η (right)")
        write_outputs(out_dir, "eos", {"config": asdict(cfg), "runs": all_finals, "traces": all_traces,
                                       "wall_time_s": time.perf_counter() - start}, all_finals)
    return {"runs": all_finals, "traces": all_traces, "wall_time_s": time.perf_counter() - start}


def main(argv: list[str] | None = None) -> int:
    """Command-line entry."""
    return experiment_main("eos_sweep", __doc__.splitlines()[0], EosConfig, run, argv, folder="eos")


if __name__ == "__main__":
    raise SystemExit(main())
