"""Experiment 3: grokking on (a + b) mod 97 and what SD does during the transition.

The ``modular-mlp`` (one-hot a and b, one hidden layer) on a 40/60 train/test split of
all 97² pairs, trained with constant-η SGD (ReLU, plain SGD + weight decay; and GELU
with heavy-ball momentum + weight decay, PAPER.md §4 setting 3). At log-spaced
checkpoints: train/test accuracy and loss, SD (density estimator: d is too large for
dense Hessians), the Hessian trace and the top eigenvalue of the training-loss Hessian.
For momentum the step Jacobian is the plain-SGD proxy (1 − η·wd) I − η H, as in the paper.

The transition is read off the curves: it starts when the model has memorised the
training set (train accuracy ≥ ``memorised_acc``) and ends when it generalises (test
accuracy ≥ ``generalised_acc``, or at the last checkpoint if it never does). "Does SD
drop?" compares SD/d at those two checkpoints and reports its minimum in between;
Kendall τ over checkpoints says how each measure tracks the gap.

Run: ``python -m sdcompress.experiments.grokking [--config recipes/experiments/grokking.yaml] [--quick]``.
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
    eval_stream,
    experiment_main,
    fit_sgd,
    gaps,
    write_outputs,
)
from sdcompress.experiments.measures import MeasureSettings, full_batch_curvature, sd_measures
from sdcompress.experiments.stats import kendall_tau
from sdcompress.models import load_model

logger = logging.getLogger(__name__)


@dataclass
class GrokVariant:
    """One training recipe of the modular MLP.

    Attributes:
        name: label.
        activation: ``relu`` or ``gelu``.
        hidden: hidden width.
        lr, momentum, weight_decay, batch_size: the optimiser (torch.optim.SGD semantics).
        steps: SGD steps.
        seed: init and ω.
    """

    name: str = "relu-sgd-wd"
    activation: Literal["relu", "gelu"] = "relu"
    hidden: int = 128
    lr: float = 2.0
    momentum: float = 0.0
    weight_decay: float = 2e-4
    batch_size: int = 256
    steps: int = 40_000
    seed: int = 0


@dataclass
class GrokConfig:
    """The grokking experiment.

    Attributes:
        output_dir: where results go.
        p: modulus; train_fraction: share of pairs trained on; data_seed: the split.
        variants: training recipes.
        n_checkpoints: measurement points (log-spaced from ``first_checkpoint`` to the
            last step, plus step 0).
        measures: SD estimator settings (``methods[0]`` is the SD reported).
        memorised_acc, generalised_acc: thresholds that delimit the transition.
    """

    output_dir: str = "results/grokking"
    p: int = 97
    train_fraction: float = 0.4
    data_seed: int = 0
    variants: list[GrokVariant] = field(default_factory=lambda: [GrokVariant()])
    n_checkpoints: int = 60
    first_checkpoint: int = 50
    measures: MeasureSettings = field(default_factory=lambda: MeasureSettings(methods=["kde"], n_batches=8, dense_max_params=0))
    memorised_acc: float = 0.99
    generalised_acc: float = 0.9

    def quick(self) -> "GrokConfig":
        """p = 11, a few steps and checkpoints, tiny estimators."""
        return replace(
            self, p=11, n_checkpoints=3, first_checkpoint=2,
            variants=[replace(v, hidden=8, steps=6, batch_size=16) for v in self.variants],
            measures=replace(self.measures, n_batches=2, estimator={**self.measures.estimator, "slq_runs": 2, "lanczos_steps": 6, "n_bootstrap": 0, "n_quantiles": 50}),
        )


def checkpoint_steps(total: int, n: int, first: int) -> list[int]:
    """Step 0 plus ``n − 1`` distinct steps log-spaced in [first, total] (total included)."""
    if n <= 1 or total <= 0:
        return [0]
    first = max(1, min(first, total))
    pts = np.unique(np.round(np.geomspace(first, total, n - 1)).astype(int))
    return [0] + [int(x) for x in pts]


def transition(rows: list[dict[str, Any]], memorised: float, generalised: float) -> dict[str, Any]:
    """Where memorisation and generalisation happen and what SD/d, trace and sharpness do.

    The window runs from the first checkpoint with train accuracy ≥ ``memorised`` to the
    first later one with test accuracy ≥ ``generalised``, or to the last checkpoint when
    the run never gets there (``generalised_reached`` says which; never a silent cut).

    Returns:
        ``memorised_step``, ``end_step``, ``generalised_reached``, ``final_test_acc``; the
        measures at both ends and their relative change; ``sd_dropped`` (SD/d lower at the
        end than at memorisation); the minimum of SD/d in the window and where it is;
        ``midpoint_step`` (first test accuracy ≥ half the final one) and SD/d there; and
        Kendall τ of SD/d against test accuracy over the window.
    """
    mem = next((r for r in rows if r["train_acc"] >= memorised), None)
    out: dict[str, Any] = {"memorised_step": mem["step"] if mem else None, "final_test_acc": rows[-1]["test_acc"] if rows else None}
    if mem is None:
        return out
    after = [r for r in rows if r["step"] >= mem["step"]]
    gen = next((r for r in after if r["test_acc"] >= generalised), None)
    end = gen or after[-1]
    out.update({"end_step": end["step"], "generalised_reached": gen is not None})
    for key in ("sd_over_d", "hess_trace", "hess_top"):
        a, b = mem.get(key, math.nan), end.get(key, math.nan)
        out[f"{key}_at_memorised"], out[f"{key}_at_end"] = a, b
        out[f"{key}_relative_change"] = (b - a) / abs(a) if a else math.nan
    out["sd_dropped"] = bool(out["sd_over_d_at_end"] < out["sd_over_d_at_memorised"])
    window = [r for r in after if r["step"] <= end["step"]]
    low = min(window, key=lambda r: r["sd_over_d"])
    out.update({"sd_over_d_min_in_window": low["sd_over_d"], "sd_over_d_min_step": low["step"],
                "sd_over_d_min_test_acc": low["test_acc"], "n_checkpoints_in_window": len(window)})
    mid = next((r for r in window if r["test_acc"] >= 0.5 * end["test_acc"]), None)
    if mid is not None:
        out["midpoint_step"], out["sd_over_d_at_midpoint"] = mid["step"], mid["sd_over_d"]
    if len(window) > 1:
        out["kendall_sd_vs_test_acc_in_window"] = kendall_tau([r["sd_over_d"] for r in window], [r["test_acc"] for r in window])
    return out


def run_variant(cfg: GrokConfig, v: GrokVariant, bundle: DatasetBundle) -> dict[str, Any]:
    """Train one variant, measuring at every checkpoint."""
    loaded = load_model("modular-mlp", seed=v.seed, p=cfg.p, hidden=v.hidden, activation=v.activation)
    model = loaded.model
    rows: list[dict[str, Any]] = []
    steps = checkpoint_steps(v.steps, cfg.n_checkpoints, cfg.first_checkpoint)
    method = cfg.measures.methods[0]

    def hook(step: int, m: torch.nn.Module) -> None:
        t0 = time.perf_counter()
        row: dict[str, Any] = {"step": step, **gaps(m, bundle)}
        batches = eval_stream(bundle.train, v.batch_size, v.seed + step)
        row.update(sd_measures(m, batches, lr=v.lr, weight_decay=v.weight_decay, s=cfg.measures)[0])
        row["sd_over_d"] = row[f"sd_over_d_{method}"]
        row.update(full_batch_curvature(m, bundle, cfg.measures, seed=v.seed))
        row["measure_time_s"] = time.perf_counter() - t0
        rows.append(row)
        logger.info("%s step %d: train %.3f test %.3f SD/d %.4f trace %.3g top %.3g", v.name, step,
                    row["train_acc"], row["test_acc"], row["sd_over_d"], row["hess_trace"], row["hess_top"])

    settings = SGDSettings(lr=v.lr, batch_size=v.batch_size, weight_decay=v.weight_decay, momentum=v.momentum, seed=v.seed, max_steps=v.steps)
    fit = fit_sgd(model, bundle.train, settings, hook=hook, hook_steps=steps)
    return analyse(cfg, {"variant": asdict(v), "settings": _settings(cfg), "rows": rows, "train_time_s": fit.wall_time_s,
                         "d": rows[0].get("d") if rows else None})


def _settings(cfg: GrokConfig) -> dict[str, Any]:
    """What, besides the variant, decides a variant's checkpoint rows."""
    return {"p": cfg.p, "train_fraction": cfg.train_fraction, "data_seed": cfg.data_seed, "n_checkpoints": cfg.n_checkpoints,
            "first_checkpoint": cfg.first_checkpoint, "measures": asdict(cfg.measures)}


def analyse(cfg: GrokConfig, res: dict[str, Any]) -> dict[str, Any]:
    """Add the transition and Kendall τ over checkpoints (measure vs gap) to a result."""
    rows = res["rows"]
    taus = {}
    for key in ("sd_over_d", "hess_trace", "hess_top"):
        for gap in ("acc_gap", "loss_gap"):
            vals = [(r[key], r[gap]) for r in rows if math.isfinite(r.get(key, math.nan))]
            taus[f"{key}~{gap}"] = kendall_tau([a for a, _ in vals], [b for _, b in vals]) if len(vals) > 1 else math.nan
    return {**res, "transition": transition(rows, cfg.memorised_acc, cfg.generalised_acc), "kendall_over_checkpoints": taus}


SPREAD_KEYS = ("memorised_step", "end_step", "final_test_acc", "sd_over_d_at_memorised", "sd_over_d_min_in_window",
               "sd_over_d_min_step", "sd_over_d_at_end", "sd_over_d_relative_change", "kendall_sd_vs_test_acc_in_window",
               "hess_trace_relative_change", "hess_top_relative_change")


def seed_spread(results: list[dict[str, Any]]) -> dict[str, Any]:
    """Per recipe run with several seeds (variants equal but for ``name`` and ``seed``):
    each transition number per seed, with its mean, sample standard deviation and range.

    The in-window minimum of SD/d is the minimum between memorisation and the first
    checkpoint with test accuracy ≥ ``generalised_acc`` (:func:`transition`); the minimum
    over the whole run is reported next to it as ``sd_over_d_min_overall`` (and its step).

    Returns:
        ``{"<name of the first seed's variant>": {"seeds": [...], "variants": [...],
        "<key>": {"per_seed": [...], "mean", "std", "min", "max"}}}`` for every group of
        two or more seeds.
    """
    groups: dict[str, list[dict[str, Any]]] = {}
    for r in results:
        v = {k: x for k, x in r["variant"].items() if k not in ("name", "seed")}
        groups.setdefault(repr(sorted(v.items())), []).append(r)
    out: dict[str, Any] = {}
    for members in groups.values():
        if len(members) < 2:
            continue
        entry: dict[str, Any] = {"seeds": [m["variant"]["seed"] for m in members], "variants": [m["variant"]["name"] for m in members]}
        numbers = []
        for m in members:
            low = min(m["rows"], key=lambda row: row["sd_over_d"])
            numbers.append({**m["transition"], "sd_over_d_min_overall": low["sd_over_d"], "sd_over_d_min_overall_step": low["step"]})
        for key in (*SPREAD_KEYS, "sd_over_d_min_overall", "sd_over_d_min_overall_step"):
            vals = [n.get(key) for n in numbers]
            if any(v is None for v in vals):
                continue
            a = np.asarray(vals, dtype=np.float64)
            entry[key] = {"per_seed": vals, "mean": float(a.mean()), "std": float(a.std(ddof=1)), "min": float(a.min()), "max": float(a.max())}
        out[members[0]["variant"]["name"]] = entry
    return out


def run(cfg: GrokConfig, out_dir: Path) -> dict[str, Any]:
    """All variants; writes ``grokking_<name>.json/.csv/.png`` and ``grokking.json``.

    A variant whose ``grokking_<name>.json`` already holds rows for the same variant and
    settings is not retrained: its analysis, table and figure are rebuilt from those rows
    (so adding a variant to the recipe runs only the new one).
    """
    import json

    from sdcompress.experiments import plots

    start = time.perf_counter()
    bundle = load_data("modular", p=cfg.p, train_fraction=cfg.train_fraction, seed=cfg.data_seed)
    results = []
    for v in cfg.variants:
        path = out_dir / f"grokking_{v.name}.json"
        old = json.loads(path.read_text()) if path.exists() else {}
        if old.get("variant") == asdict(v) and old.get("settings") == json.loads(json.dumps(_settings(cfg))):
            res = analyse(cfg, old)
        else:
            res = run_variant(cfg, v, bundle)
        results.append(res)
        write_outputs(out_dir, f"grokking_{v.name}", res, res["rows"])
        plots.grokking_figure(res["rows"], out_dir / f"grokking_{v.name}.png",
                              f"{v.name}: (a+b) mod {cfg.p}, hidden {v.hidden}, η={v.lr:g}, wd={v.weight_decay:g}, momentum={v.momentum:g}", lr=v.lr)
    summary = {r["variant"]["name"]: {"transition": r["transition"], "kendall_over_checkpoints": r["kendall_over_checkpoints"],
                                      "d": r["d"], "train_time_s": r["train_time_s"]} for r in results}
    payload = {"config": asdict(cfg), "summary": summary, "seed_spread": seed_spread(results), "wall_time_s": time.perf_counter() - start}
    write_outputs(out_dir, "grokking", payload)
    return payload


def main(argv: list[str] | None = None) -> int:
    """Command-line entry."""
    return experiment_main("grokking", __doc__.splitlines()[0], GrokConfig, run, argv)


if __name__ == "__main__":
    raise SystemExit(main())
