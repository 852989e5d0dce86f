"""Setting 4 (PAPER.md §4, issue 12): SD of a GPT-2 language model trained from scratch
with SGD and with heavy-ball momentum, against the generalization gap, over (η, batch) grids.

The built-in ``tiny-gpt2`` (a real ``transformers`` GPT-2, eager attention) is trained
from scratch on the ``pydoc`` corpus (byte level; train and test split by topic) with
constant-η ``torch.optim.SGD`` for a fixed number of steps, once per optimizer (plain SGD,
μ = 0, and heavy-ball momentum μ) and per (η, batch size, seed). Over the last
``tail_fraction`` of the steps the sharpness λ_max (mean top eigenvalue of
``sharpness_batches`` fresh training-batch-size minibatch Hessians, Lanczos) is tracked,
and a run's

    eos_ratio = median over the tail of (λ_max + wd) / (2(1 + μ)/η)

(:func:`sdcompress.train.eos.eos_verdict`'s ``median_ratio`` over the whole tail): the
quadratic model of heavy-ball SGD is linearly stable while η(λ + wd) < 2(1 + μ), so 1 is
the edge of stability (EoS) with or without momentum. Runs with ``eos_ratio <
eos_threshold`` are excluded from the statistics and counted.

At the final weights, per run: SD-SLQ, SD-KDE and SD-PS from one SLQ spectral measure of
the minibatch Hessians at the training batch size, λ_1 (the top exponent of that density),
the top eigenvalue and trace of the training-loss Hessian on ``hessian_examples`` training
blocks (Lanczos, Hutchinson), the train and test loss (mean next-token cross-entropy) and
next-token accuracy on ``eval_examples`` blocks of each split, and both gaps |train − test|
(the loss gap is the paper's main one for language models). As in the paper, the SD
estimators use the plain-SGD step Jacobian I − ηH_B for the momentum runs too (the
heavy-ball map acts on (w, v) and has a 2d-dimensional Jacobian; SD here is a proxy).

Statistics over the runs at EoS, per optimizer and pooled: Kendall τ and the granulated
coefficient Ψ (η and B varied, everything else, the optimizer included, held fixed) of
every measure against both gaps, each with a percentile bootstrap interval.

Run: ``python -m sdcompress.experiments.gpt_grid [--config recipes/experiments/gpt_grid.yaml] [--quick]``.
"""

from __future__ import annotations

import logging
import shutil
import tempfile
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch

from sdcompress.config import check_step_size
from sdcompress.data import ArrayDataset, DatasetBundle, load_data
from sdcompress.errors import ConfigError, DivergenceError
from sdcompress.experiments.common import SGDSettings, eval_stream, experiment_main, fit_sgd, write_outputs
from sdcompress.experiments.eos_grid import tail_steps
from sdcompress.experiments.measures import MeasureSettings, full_batch_curvature, sd_measures
from sdcompress.experiments.stats import correlation_table, fmt_interval, fmt_signed
from sdcompress.io import write_text_atomic
from sdcompress.models import load_model
from sdcompress.models.loader import LoadedModel
from sdcompress.progress import progress
from sdcompress.train.eos import eos_verdict, evaluate, fixed_subset, sharpness

logger = logging.getLogger(__name__)

MEASURES = ["sd_slq", "sd_kde", "sd_ps", "lambda_1", "hess_top", "hess_trace"]
GAPS = ["loss_gap", "acc_gap"]
FACTORS = ["optimizer", "lr", "batch_size", "seed"]


@dataclass
class OptimizerGrid:
    """One optimizer and its learning rates.

    Attributes:
        name: label in tables and plots (unique).
        momentum: heavy-ball μ of ``torch.optim.SGD`` (0: plain SGD).
        lrs: the step sizes η of this optimizer's grid.
    """

    name: str = "sgd"
    momentum: float = 0.0
    lrs: list[float] = field(default_factory=lambda: [0.1, 0.2, 0.4, 0.7])


def _default_measures() -> MeasureSettings:
    return MeasureSettings(methods=["slq", "kde", "ps"], n_batches=12, dense_max_params=0, lanczos_steps=20, trace_probes=16,
                           hessian_examples=128, estimator={"slq_runs": 12, "lanczos_steps": 40, "n_bootstrap": 0})


@dataclass
class GptGridConfig:
    """The setting-4 grid.

    Attributes:
        output_dir: where results go (``gpt_grid_runs.*``, ``gpt_grid_table.*``, figures).
        model_options: options of the built-in ``tiny-gpt2`` (its ``block_size`` is
            ``block_size`` and its vocabulary the byte vocabulary plus EOS).
        block_size: tokens per ``pydoc`` block (the context length).
        test_fraction: expected fraction of ``pydoc`` topics held out.
        train_examples: training blocks kept (evenly spread over the topic-ordered split,
            0: all): a small training set lets the model overfit, so the gap measures
            overfitting rather than the train/test topic shift.
        dtype: arithmetic of training and curvature.
        optimizers: the optimizers, each with its η grid.
        batch_sizes, seeds: the rest of the grid; the seed fixes init and ω.
        weight_decay: coupled L2 coefficient (same for every run; in the Jacobian too).
        steps: SGD steps per run (constant η, no loss target).
        tail_fraction: the last share of the steps over which λ_max is tracked.
        sharpness_every: steps between sharpness measurements in the tail.
        sharpness_batches: minibatches per sharpness measurement.
        lanczos_steps: Krylov steps of each top eigenvalue.
        eval_examples: blocks of each split (evenly spread) in the losses and accuracies
            (0: all).
        eos_threshold: runs with eos_ratio below this are excluded and counted.
        n_bootstrap: bootstrap resamples of each interval (0: none).
        bootstrap_level: coverage of the intervals.
        bootstrap_seed: seed of the resampling.
        measures: SD estimators and curvature settings at the final weights.
    """

    output_dir: str = "results/gpt_grid"
    model_options: dict[str, Any] = field(default_factory=lambda: {"n_layer": 2, "n_embd": 32, "n_head": 2})
    block_size: int = 64
    test_fraction: float = 0.15
    train_examples: int = 256
    dtype: Literal["float32", "float64"] = "float32"
    optimizers: list[OptimizerGrid] = field(default_factory=lambda: [
        OptimizerGrid("sgd", 0.0, [0.1, 0.2, 0.4, 0.7]), OptimizerGrid("momentum", 0.9, [0.02, 0.05, 0.1, 0.2])])
    batch_sizes: list[int] = field(default_factory=lambda: [4, 8, 16, 32])
    seeds: list[int] = field(default_factory=lambda: [0])
    weight_decay: float = 0.0
    steps: int = 800
    tail_fraction: float = 0.3
    sharpness_every: int = 60
    sharpness_batches: int = 2
    lanczos_steps: int = 15
    eval_examples: int = 512
    eos_threshold: float = 0.8
    n_bootstrap: int = 1000
    bootstrap_level: float = 0.95
    bootstrap_seed: int = 0
    measures: MeasureSettings = field(default_factory=_default_measures)

    def quick(self) -> "GptGridConfig":
        """A 1-layer, 8-wide model, 2 η × 2 B per optimizer, a few steps, small estimators."""
        return replace(
            self, model_options={**self.model_options, "n_layer": 1, "n_embd": 8, "n_head": 2}, block_size=16,
            optimizers=[replace(o, lrs=o.lrs[:2]) for o in self.optimizers], batch_sizes=self.batch_sizes[:2], seeds=self.seeds[:1],
            steps=12, sharpness_every=2, sharpness_batches=1, lanczos_steps=5, eval_examples=32, n_bootstrap=20,
            measures=replace(self.measures, n_batches=2, lanczos_steps=5, trace_probes=2, hessian_examples=8,
                             estimator={**self.measures.estimator, "slq_runs": 2, "lanczos_steps": 8, "n_bootstrap": 0, "n_quantiles": 50}),
        )

    def validate(self) -> None:
        """Refuse a grid that cannot run, naming the value and the fix.

        Raises:
            ConfigError: an empty or non-positive grid axis, a momentum outside [0, 1),
                duplicate optimizer names, or a step/tail/threshold setting out of range.
        """
        if not self.optimizers:
            raise ConfigError("optimizers is empty; give at least one, e.g. [{name: sgd, momentum: 0.0, lrs: [0.1]}]")
        names = [o.name for o in self.optimizers]
        if len(set(names)) != len(names):
            raise ConfigError(f"optimizer names must be unique, got {names}; rename one")
        for o in self.optimizers:
            if not 0.0 <= o.momentum < 1.0:
                raise ConfigError(f"optimizer {o.name!r}: momentum must be in [0, 1), got {o.momentum}")
            if not o.lrs:
                raise ConfigError(f"optimizer {o.name!r}: lrs is empty; give at least one step size, e.g. [0.1]")
            for lr in o.lrs:  # the toolkit's one check of η (and below of wd)
                check_step_size(lr, section=f"optimizers.{o.name}", lr_name="lrs[]")
        check_step_size(self.optimizers[0].lrs[0], self.weight_decay)
        if not self.batch_sizes or any(not isinstance(b, int) or b < 1 for b in self.batch_sizes):
            raise ConfigError(f"batch_sizes must be a non-empty list of integers ≥ 1, got {self.batch_sizes}")
        if not self.seeds:
            raise ConfigError("seeds is empty; give at least one, e.g. [0]")
        if self.steps < 1 or self.sharpness_every < 1 or self.sharpness_batches < 1 or self.lanczos_steps < 1:
            raise ConfigError(f"steps, sharpness_every, sharpness_batches and lanczos_steps must be ≥ 1, got {self.steps}, "
                              f"{self.sharpness_every}, {self.sharpness_batches}, {self.lanczos_steps}")
        if not 0.0 < self.tail_fraction <= 1.0:
            raise ConfigError(f"tail_fraction must be in (0, 1], got {self.tail_fraction}")
        if self.eval_examples < 0 or self.train_examples < 0:
            raise ConfigError(f"eval_examples and train_examples must be ≥ 0 (0: the whole split), got {self.eval_examples}, {self.train_examples}")


def load_bundle(cfg: GptGridConfig) -> DatasetBundle:
    """The ``pydoc`` byte-level bundle of the config.

    Args:
        cfg: the config (``block_size``, ``test_fraction``, ``train_examples``).

    Returns:
        The bundle with ``train_examples`` evenly spread training blocks (all when 0)
        and the whole test split; ``info`` records how many blocks were kept.
    """
    bundle = load_data("pydoc", block_size=cfg.block_size, test_fraction=cfg.test_fraction)
    if not cfg.train_examples or cfg.train_examples >= len(bundle.train):
        return bundle
    rows = torch.tensor(fixed_subset(bundle.train, cfg.train_examples))
    train = ArrayDataset({k: v[rows] for k, v in bundle.train.tensors.items()}, bundle.train.task)
    return DatasetBundle(bundle.name, train, bundle.test, {**bundle.info, "train_blocks": len(train), "train_blocks_of": len(bundle.train)})


def build_model(cfg: GptGridConfig, bundle: DatasetBundle, seed: int) -> LoadedModel:
    """A fresh ``tiny-gpt2`` sized for the bundle, in the config's dtype.

    Args:
        cfg: the config (``model_options``, ``block_size``, ``dtype``).
        bundle: the data (its ``vocab_size``).
        seed: the initialisation seed.

    Returns:
        The loaded model (eager attention, no dropout).
    """
    loaded = load_model("tiny-gpt2", seed=seed, **{**cfg.model_options, "block_size": cfg.block_size,
                                                    "vocab_size": bundle.info["vocab_size"]})
    loaded.model.to(getattr(torch, cfg.dtype))
    return loaded


def lm_gaps(loaded: LoadedModel, bundle: DatasetBundle, n: int) -> dict[str, float]:
    """Train/test mean next-token loss and accuracy on ``n`` evenly spread blocks of each
    split (0: all), the gaps |train − test| (the paper's) and the signed ones (test −
    train loss, train − test accuracy: positive when the model overfits).

    Args:
        loaded: the trained model.
        bundle: the data.
        n: blocks per split (0: all).

    Returns:
        ``train_/test_loss``, ``train_/test_acc``, ``loss_gap``, ``acc_gap`` and the
        ``*_signed`` gaps.
    """
    out: dict[str, float] = {}
    for split, data in (("train", bundle.train), ("test", bundle.test)):
        loss, acc = evaluate(loaded, data, fixed_subset(data, n or len(data)), batch_size=256)
        out[f"{split}_loss"], out[f"{split}_acc"] = loss, float(acc)
    out["loss_gap"] = abs(out["train_loss"] - out["test_loss"])
    out["acc_gap"] = abs(out["train_acc"] - out["test_acc"])
    out["loss_gap_signed"] = out["test_loss"] - out["train_loss"]
    out["acc_gap_signed"] = out["train_acc"] - out["test_acc"]
    return out


def run_one(cfg: GptGridConfig, bundle: DatasetBundle, opt: OptimizerGrid, *, lr: float, batch_size: int, seed: int) -> dict[str, Any]:
    """Train one model for ``cfg.steps`` steps, track its sharpness, measure it.

    Args:
        cfg: the config.
        bundle: the data (from :func:`load_bundle`).
        opt: the optimizer (its momentum; ``lr`` need not be one of its ``lrs``).
        lr, batch_size, seed: the run's grid point; the seed fixes init and ω.

    Returns:
        The run's row (a diverged run has ``diverged`` true and no measures).
    """
    loaded = build_model(cfg, bundle, seed)
    records: list[dict[str, float]] = []

    def hook(step: int, m: torch.nn.Module) -> None:
        stream = eval_stream(bundle.train, batch_size, seed + 7919 * (step + 1))
        vals, losses = [], []
        for i in range(cfg.sharpness_batches):
            batch = stream.batch(i)
            vals.append(sharpness(loaded, batch, steps=cfg.lanczos_steps, seed=seed + i).value)
            with torch.no_grad():
                losses.append(float(loaded.loss(batch)))
        records.append({"step": step, "sharpness": float(np.mean(vals)), "train_loss": float(np.mean(losses))})

    row: dict[str, Any] = {"optimizer": opt.name, "momentum": opt.momentum, "lr": lr, "batch_size": batch_size, "seed": seed,
                           "weight_decay": cfg.weight_decay, "eos_threshold_value": 2.0 * (1.0 + opt.momentum) / lr}
    settings = SGDSettings(lr=lr, batch_size=batch_size, weight_decay=cfg.weight_decay, momentum=opt.momentum, seed=seed, max_steps=cfg.steps)
    try:
        fit = fit_sgd(loaded.model, bundle.train, settings, hook=hook, hook_steps=tail_steps(cfg.steps, cfg.tail_fraction, cfg.sharpness_every))
    except DivergenceError as exc:
        logger.warning("%s η=%g B=%d seed=%d diverged: %s", opt.name, lr, batch_size, seed, exc)
        return {**row, "diverged": True, "eos_ratio": float("nan"), "at_eos": False}
    verdict = eos_verdict(records, lr=lr, weight_decay=cfg.weight_decay, momentum=opt.momentum, window=1.0)
    row.update({"diverged": False, "eos_ratio": verdict.median_ratio, "steps": fit.steps, "train_time_s": fit.wall_time_s,
                "sharpness_median": float(np.median([r["sharpness"] for r in records]))})
    row["sharpness_tail"] = [r["sharpness"] for r in records]  # JSON only (the CSV keeps scalars)
    row.update(lm_gaps(loaded, bundle, cfg.eval_examples))
    t0 = time.perf_counter()
    sd_row, _ = sd_measures(loaded.model, eval_stream(bundle.train, batch_size, seed), lr=lr, weight_decay=cfg.weight_decay, s=cfg.measures)
    row.update(sd_row)
    row.update(full_batch_curvature(loaded.model, bundle, cfg.measures, seed=seed))
    row["at_eos"] = bool(row["eos_ratio"] >= cfg.eos_threshold)
    row["measure_time_s"] = time.perf_counter() - t0
    logger.info("%s η=%g B=%d seed=%d: eos_ratio %.2f, loss gap %.4f, SD/d %s", opt.name, lr, batch_size, seed, row["eos_ratio"],
                row["loss_gap"], {k[10:]: round(v, 4) for k, v in row.items() if k.startswith("sd_over_d_")})
    return row


# ------------------------------------------------------------------ statistics


def correlations(cfg: GptGridConfig, runs: list[dict[str, Any]], measures: list[str]) -> list[dict[str, Any]]:
    """τ and Ψ (η and B varied) of every measure against every gap, with intervals.

    Args:
        cfg: the config (bootstrap settings).
        runs: the runs to correlate over.
        measures: the measure columns.

    Returns:
        :func:`~sdcompress.experiments.stats.correlation_table` rows with ``tau_ci`` and
        ``psi_mean_ci``.
    """
    return correlation_table(runs, measures, GAPS, FACTORS, ["lr", "batch_size"], n_bootstrap=cfg.n_bootstrap,
                             level=cfg.bootstrap_level, seed=cfg.bootstrap_seed)


def analyse(cfg: GptGridConfig, rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Exclusions (below the EoS threshold or diverged); per-optimizer and pooled
    correlations over the runs at EoS (``pooled``, ``by_optimizer``) and over every
    finished run, the paper's protocol (``all_pooled``, ``all_by_optimizer``); and per
    optimizer the spread of eos_ratio and of η·λ_max (median over the tail).

    Args:
        cfg: the config (threshold, optimizers, bootstrap settings).
        rows: every run's row.

    Returns:
        The statistics (the keys above plus counts and the eos_ratio range).
    """
    done = [r for r in rows if not r.get("diverged")]
    at = [r for r in done if r["eos_ratio"] >= cfg.eos_threshold]
    present = [m for m in MEASURES if any(m in r for r in rows)]
    names = [o.name for o in cfg.optimizers if any(r["optimizer"] == o.name for r in rows)]
    excluded = {n: {"below_eos": sum(1 for r in done if r["optimizer"] == n and r["eos_ratio"] < cfg.eos_threshold),
                    "diverged": sum(1 for r in rows if r["optimizer"] == n and r.get("diverged"))} for n in names}
    spread = {}
    for n in names:
        ratio = [r["eos_ratio"] for r in done if r["optimizer"] == n]
        eta_lam = [r["lr"] * r["sharpness_median"] for r in done if r["optimizer"] == n]
        spread[n] = {"eos_ratio": [min(ratio), float(np.median(ratio)), max(ratio)] if ratio else None,
                     "lr_times_sharpness": [min(eta_lam), float(np.median(eta_lam)), max(eta_lam)] if eta_lam else None}
    return {"n_runs": len(rows), "n_at_eos": len(at), "n_excluded": len(rows) - len(at), "excluded_by_optimizer": excluded,
            "eos_ratio_range": [min(r["eos_ratio"] for r in done), max(r["eos_ratio"] for r in done)] if done else None,
            "spread_by_optimizer": spread,
            "pooled": correlations(cfg, at, present),
            "by_optimizer": {n: correlations(cfg, [r for r in at if r["optimizer"] == n], present) for n in names},
            "all_pooled": correlations(cfg, done, present),
            "all_by_optimizer": {n: correlations(cfg, [r for r in done if r["optimizer"] == n], present) for n in names}}


# ------------------------------------------------------------------ the experiment


def _key(row: dict[str, Any]) -> tuple:
    return (row["optimizer"], row["momentum"], row["lr"], row["batch_size"], row["seed"])


_JOB_FIELDS = {"optimizers", "batch_sizes", "seeds", "output_dir", "n_bootstrap", "bootstrap_level", "bootstrap_seed", "eos_threshold"}


def _reusable(cfg: GptGridConfig, path: Path) -> dict[tuple, dict[str, Any]]:
    """Finished runs of an earlier, interrupted call with the same run settings."""
    import json

    if not path.exists():
        return {}
    old = json.loads(path.read_text())
    same = {k: v for k, v in old.get("config", {}).items() if k not in _JOB_FIELDS}
    if same != json.loads(json.dumps({k: v for k, v in asdict(cfg).items() if k not in _JOB_FIELDS})):
        return {}
    return {_key(r): r for r in old["runs"]}


def run(cfg: GptGridConfig, out_dir: Path) -> dict[str, Any]:
    """Run the grid, writing ``gpt_grid_runs.json/csv`` after every run (an interrupted
    run resumes: rows already there with the same settings are reused), then the
    statistics to ``gpt_grid_table.json/md`` and the figures.

    Args:
        cfg: the config.
        out_dir: the output folder (created when missing).

    Returns:
        The table payload (config, data info, statistics, wall time, threads, load).

    Raises:
        ConfigError: the config cannot run (:meth:`GptGridConfig.validate`).
    """
    cfg.validate()
    bundle = load_bundle(cfg)
    jobs = [(o, lr, bs, s) for o in cfg.optimizers for s in cfg.seeds for bs in cfg.batch_sizes for lr in o.lrs]
    done = _reusable(cfg, out_dir / "gpt_grid_runs.json")
    rows: list[dict[str, Any]] = []
    start = time.perf_counter()
    for opt, lr, bs, seed in progress(jobs, desc="GPT grid runs"):
        row = done.get((opt.name, opt.momentum, lr, bs, seed)) or run_one(cfg, bundle, opt, lr=lr, batch_size=bs, seed=seed)
        rows.append(row)
        write_outputs(out_dir, "gpt_grid_runs", {"config": asdict(cfg), "data": bundle.info, "runs": rows}, rows)
    stats = analyse(cfg, rows)
    payload = {"config": asdict(cfg), "data": bundle.info, **stats, "wall_time_s": time.perf_counter() - start,
               "threads": torch.get_num_threads(), "load_average": list(_load())}
    write_outputs(out_dir, "gpt_grid_table", payload)
    write_text_atomic(out_dir / "gpt_grid_table.md", markdown_report(cfg, payload))
    figures(cfg, rows, stats, out_dir)
    return payload


def _load() -> tuple[float, float, float]:
    try:
        import os

        return os.getloadavg()
    except OSError:
        return (float("nan"),) * 3


def figures(cfg: GptGridConfig, rows: list[dict[str, Any]], stats: dict[str, Any], out_dir: Path) -> list[Path]:
    """One measure-vs-gap panel figure per optimizer over all finished runs (colour η,
    marker B; titles: τ over those runs), and SD-KDE/d against the loss gap over all
    finished runs, grouped by optimizer and by whether the run is at EoS.

    Args:
        cfg: the config.
        rows: every run's row.
        stats: :func:`analyse` of the rows.
        out_dir: where the PNGs go.

    Returns:
        The paths written.
    """
    from sdcompress.experiments import plots

    done = [r for r in rows if not r.get("diverged")]
    paths = []
    for name, table in stats["all_by_optimizer"].items():
        sub = [r for r in done if r["optimizer"] == name]
        if not sub:
            continue
        with tempfile.TemporaryDirectory(dir=out_dir) as tmp:
            made = plots.grid_figures(sub, [], table, Path(tmp))
            target = out_dir / f"gpt_grid_{name}_vs_gap.png"
            shutil.move(str(made[0]), target)  # same file system: an atomic rename
            paths.append(target)
    key = next((m for m in ("sd_kde", "sd_ps", "sd_slq") if done and m in done[0]), None)
    if key:
        tau = next(r["tau"] for r in stats["all_pooled"] if r["measure"] == key and r["gap"] == "loss_gap")
        groups = [f"{r['optimizer']}, {'at' if r['at_eos'] else 'below'} EoS" for r in done]
        paths.append(plots.scatter_figure([r[key] / r["d"] for r in done], [r["loss_gap"] for r in done], out_dir / "gpt_grid_pooled_sd_vs_loss_gap.png",
                                          xlabel=f"{plots.LABELS.get(key, key)} / d", ylabel="|train − test| loss",
                                          title=f"tiny-gpt2 on pydoc, all finished runs: τ = {tau:+.2f}", groups=groups))
    return paths


def markdown_report(cfg: GptGridConfig, payload: dict[str, Any]) -> str:
    """Exclusions, the spread of eos_ratio, the τ / Ψ tables with intervals (runs at EoS
    and all finished runs), and the wall time and load.

    Args:
        cfg: the config.
        payload: what :func:`run` returns.

    Returns:
        The Markdown text.
    """
    pct = int(round(100 * cfg.bootstrap_level))
    grid = "; ".join(f"{o.name} (μ = {o.momentum:g}): η ∈ {o.lrs}" for o in cfg.optimizers)
    data = payload.get("data", {})
    lines = [f"tiny-gpt2 {cfg.model_options} from scratch on pydoc (byte level, block {cfg.block_size}, "
             f"{data.get('train_blocks', 'all')} training blocks, {cfg.eval_examples or 'all'} blocks per split in the losses), "
             f"{cfg.dtype}, {cfg.steps} constant-η steps; {grid}; B ∈ {cfg.batch_sizes}; seeds {cfg.seeds}; wd {cfg.weight_decay:g}.", "",
             f"Runs: {payload['n_runs']}; at EoS (eos_ratio = median over the last {cfg.tail_fraction:g} of the steps of "
             f"(λ_max + wd)/(2(1+μ)/η) ≥ {cfg.eos_threshold:g}): {payload['n_at_eos']}; excluded: {payload['n_excluded']} "
             f"(by optimizer: {payload['excluded_by_optimizer']}).", ""]
    for name, sp in payload["spread_by_optimizer"].items():
        if sp["eos_ratio"]:
            r, e = sp["eos_ratio"], sp["lr_times_sharpness"]
            lines.append(f"- {name}: eos_ratio min / median / max {r[0]:.2f} / {r[1]:.2f} / {r[2]:.2f}; η·λ_max {e[0]:.2f} / {e[1]:.2f} / {e[2]:.2f}.")
    lines += ["", f"SD of the momentum runs uses the plain-SGD Jacobian I − ηH_B (the paper's proxy). Intervals: {pct}% percentile "
              f"bootstrap over runs ({cfg.n_bootstrap} resamples). Ψ: mean of ψ_η and ψ_B (the other factors, optimizer included, held fixed).", ""]

    def table(title: str, rows: list[dict[str, Any]]) -> None:
        if not any(r["n_runs"] for r in rows):
            lines.extend([f"### {title}", "", "no runs.", ""])
            return
        lines.extend([f"### {title}", "", "| measure | gap | n | τ | τ interval | Ψ | Ψ interval |", "|---|---|---|---|---|---|---|"])
        for r in rows:
            lines.append(f"| {r['measure']} | {r['gap']} | {r['n_runs']} | {fmt_signed(r['tau'])} | {fmt_interval(r.get('tau_ci'))} | "
                         f"{fmt_signed(r['psi_mean'])} | {fmt_interval(r.get('psi_mean_ci'))} |")
        lines.append("")

    lines += ["## all finished runs (the paper's protocol: no EoS filter)", ""]
    table("pooled", payload["all_pooled"])
    for name, rows in payload["all_by_optimizer"].items():
        table(f"optimizer {name}", rows)
    lines += [f"## runs at EoS only (eos_ratio ≥ {cfg.eos_threshold:g})", ""]
    table("pooled", payload["pooled"])
    for name, rows in payload["by_optimizer"].items():
        table(f"optimizer {name}", rows)
    load = ", ".join(f"{x:.2f}" for x in payload["load_average"])
    lines.append(f"Wall time {payload['wall_time_s']:.0f} s ({payload['wall_time_s'] / 60:.1f} min) with {payload['threads']} torch thread(s); "
                 f"load average at the end (1, 5, 15 min): {load}.")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    """Command-line entry: a user error prints one line and exits 2 (``-v``: the traceback).

    Args:
        argv: arguments (default: ``sys.argv``).

    Returns:
        The exit code: 0, or 2 for a user error.
    """
    return experiment_main("gpt_grid", __doc__.splitlines()[0], GptGridConfig, run, argv, folder="gpt_grid",
                           headline=lambda p: f"{p['n_at_eos']}/{p['n_runs']} runs at EoS")

if __name__ == "__main__":
    raise SystemExit(main())
