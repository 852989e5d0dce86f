"""``train_log.png``: λ_max against 2/η (top) and the losses (bottom) over training."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from sdcompress.io import save_figure_atomic
from sdcompress.train.log import PLOT_FILE, TrainResult


def plot_training(result: TrainResult) -> Any:
    """A two-panel matplotlib figure of a training log.

    Top: λ_max(H_B) per logged step, 2/η, the EoS bar (1 − tol)·2(1 + μ)/η and, with
    weight decay or momentum, the exact stability threshold 2(1 + μ)/η − wd. Bottom:
    train (fixed subset), minibatch and test loss.
    """
    # A bare Figure (no pyplot): no global backend or figure registry is touched.
    from matplotlib.figure import Figure

    s = result.series()
    cfg, v = result.config, result.verdict
    fig = Figure(figsize=(7, 6))
    ax1, ax2 = fig.subplots(2, 1, sharex=True)
    ax1.plot(s["step"], s["sharpness"], "o-", ms=3, color="tab:blue", label="λ_max(H_B)")
    ax1.axhline(2 / cfg.lr, color="k", lw=1, label=f"2/η = {2 / cfg.lr:.3g}")
    limit = "2/η" if cfg.momentum == 0 else "2(1+μ)/η"
    ax1.axhline(v.threshold - cfg.weight_decay, color="k", lw=1, ls=":", label=f"EoS bar (1 − {cfg.eos_tolerance:g})·{limit} − wd")
    if cfg.weight_decay > 0 or cfg.momentum > 0:
        ax1.axhline(2 * (1 + cfg.momentum) / cfg.lr - cfg.weight_decay, color="tab:red", lw=1, ls="--", label=f"{limit} − wd")
    if v.n_points:
        ax1.axvspan(v.window_steps[0], v.window_steps[1], color="0.9", zorder=0, label="verdict window")
    ax1.set_ylabel("sharpness")
    ax1.set_title(f"{result.model} on {result.dataset}: {'at EoS' if v.at_eos else 'not at EoS'} (η = {cfg.lr:g}, wd = {cfg.weight_decay:g})")
    ax1.legend(fontsize=8)
    ax2.plot(s["step"], s["train_loss"], "-", color="tab:blue", label="train loss (fixed subset)")
    ax2.plot(s["step"], s["minibatch_loss"], ".", ms=3, color="tab:gray", alpha=0.6, label="minibatch loss")
    ax2.plot(s["step"], s["test_loss"], "-", color="tab:orange", label="test loss")
    ax2.set_xlabel("SGD step")
    ax2.set_ylabel("loss")
    ax2.legend(fontsize=8)
    fig.subplots_adjust(hspace=0.08)  # (tight_layout costs ~1 s; savefig's tight bbox is enough)
    return fig


def save_training_plot(result: TrainResult, folder: str | Path) -> Path:
    """Write ``folder/train_log.png`` atomically."""
    return save_figure_atomic(plot_training(result), Path(folder) / PLOT_FILE)
