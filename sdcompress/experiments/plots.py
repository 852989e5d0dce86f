"""Figures of the experiments (PNG, written atomically)."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

import matplotlib

matplotlib.use("Agg")  # files only; never needs a display
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from sdcompress.io import save_figure_atomic  # noqa: E402

LABELS = {
    "sd_exact": "SD (exact)", "sd_slq": "SD-SLQ", "sd_kde": "SD-KDE", "sd_ps": "SD-PS",
    "lambda_1": "λ₁ (top exponent)", "hess_top": "top Hessian eigenvalue", "hess_trace": "Hessian trace",
    "loss_gap": "|train − test| loss", "acc_gap": "|train − test| accuracy",
}


def _label(k: str) -> str:
    return LABELS.get(k, k)


def grid_figures(grid_rows: list[dict[str, Any]], wd_rows: list[dict[str, Any]], table: list[dict[str, Any]], out_dir: Path) -> list[Path]:
    """Measure-vs-gap scatter panels for the grid, and SD/d against weight decay."""
    paths = []
    if grid_rows:
        measures = [m for m in ("sd_exact", "sd_slq", "sd_kde", "sd_ps", "lambda_1", "hess_top", "hess_trace") if m in grid_rows[0]]
        tau = {(r["measure"], r["gap"]): r["tau"] for r in table}
        fig, axes = plt.subplots(2, len(measures), figsize=(3.0 * len(measures), 6.0), squeeze=False)
        lrs = sorted({r["lr"] for r in grid_rows})
        bss = sorted({r["batch_size"] for r in grid_rows})
        cmap = plt.get_cmap("viridis")
        markers = "osD^v<>p*h"
        for i, gap in enumerate(("loss_gap", "acc_gap")):
            for j, m in enumerate(measures):
                ax = axes[i, j]
                for r in grid_rows:
                    ax.scatter(r[m], r[gap], color=cmap(lrs.index(r["lr"]) / max(1, len(lrs) - 1)),
                               marker=markers[bss.index(r["batch_size"]) % len(markers)], s=22, alpha=0.8)
                ax.set_title(f"τ = {tau.get((m, gap), float('nan')):+.2f}", fontsize=9)
                ax.set_xlabel(_label(m), fontsize=8)
                if j == 0:
                    ax.set_ylabel(_label(gap), fontsize=8)
                ax.tick_params(labelsize=7)
        handles = [plt.Line2D([], [], color=cmap(k / max(1, len(lrs) - 1)), marker="o", ls="", label=f"η={lr:g}") for k, lr in enumerate(lrs)]
        handles += [plt.Line2D([], [], color="gray", marker=markers[k % len(markers)], ls="", label=f"B={b}") for k, b in enumerate(bss)]
        fig.legend(handles=handles, loc="upper center", ncol=len(handles), fontsize=8, frameon=False)
        fig.tight_layout(rect=(0, 0, 1, 0.94))
        paths.append(save_figure_atomic(fig, out_dir / "grid_measures_vs_gap.png"))
    if wd_rows:
        fig, ax = plt.subplots(1, 2, figsize=(9, 3.4))
        wds = sorted({r["weight_decay"] for r in wd_rows})
        xs = np.arange(len(wds))
        for key, axis, color in (("sd_over_d_exact", ax[0], "C0"), ("loss_gap", ax[1], "C1")):
            for r in wd_rows:
                axis.scatter(wds.index(r["weight_decay"]), r.get(key, np.nan), color=color, s=20)
            means = [np.mean([r.get(key, np.nan) for r in wd_rows if r["weight_decay"] == w]) for w in wds]
            axis.plot(xs, means, color=color)
            axis.set_xticks(xs, [f"{w:g}" for w in wds])
            axis.set_xlabel("weight decay")
        ax[0].set_ylabel("SD / d (exact)")
        ax[1].set_ylabel(_label("loss_gap"))
        tacc = ax[1].twinx()
        tacc.plot(xs, [np.mean([r["test_acc"] for r in wd_rows if r["weight_decay"] == w]) for w in wds], color="C2", ls="--")
        tacc.set_ylabel("test accuracy", color="C2")
        fig.tight_layout()
        paths.append(save_figure_atomic(fig, out_dir / "grid_weight_decay.png"))
    return paths


def eos_figure(traces: Sequence[dict[str, Any]], finals: Sequence[dict[str, Any]], path: Path, title: str) -> Path:
    """Left: sharpness over training against 2/η (one colour per η). Right: SD/d vs η."""
    fig, ax = plt.subplots(1, 2, figsize=(10, 3.8))
    cmap = plt.get_cmap("plasma")
    n = max(1, len(traces) - 1)
    for k, tr in enumerate(traces):
        c = cmap(k / n * 0.9)
        ax[0].plot(tr["steps"], tr["sharpness"], color=c, label=f"η={tr['lr']:g}")
        ax[0].axhline(2.0 / tr["lr"], color=c, ls=":", lw=1)
    ax[0].set_yscale("log")
    ax[0].set_xlabel("step")
    ax[0].set_ylabel("top Hessian eigenvalue (dotted: 2/η)")
    ax[0].legend(fontsize=7)
    by_key: dict[str, list[tuple[float, float, bool]]] = {}
    for f in finals:
        by_key.setdefault(f["series"], []).append((f["lr"], f["sd_over_d"], bool(f.get("at_eos", f["eos_ratio"] >= 1.0))))
    for name, pts in by_key.items():
        pts.sort()
        ax[1].plot([p[0] for p in pts], [p[1] for p in pts], marker="o", label=name)
        for lr, v, eos in pts:
            if eos:
                ax[1].scatter([lr], [v], s=90, facecolors="none", edgecolors="red")
    ax[1].set_xscale("log")
    ax[1].set_xlabel("learning rate η")
    ax[1].set_ylabel("SD / d (red ring: at EoS)")
    for f in finals:
        if f.get("collapsed"):
            ax[1].annotate("collapsed", (f["lr"], f["sd_over_d"]), fontsize=7, textcoords="offset points", xytext=(-20, -12))
    ax[1].legend(fontsize=7)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return save_figure_atomic(fig, path)


def grokking_figure(rows: Sequence[dict[str, Any]], path: Path, title: str, lr: float | None = None) -> Path:
    """Accuracy, SD/d, trace and sharpness over training steps (log x); 2/η dotted."""
    steps = np.array([max(r["step"], 1) for r in rows])
    fig, ax = plt.subplots(4, 1, figsize=(7, 9), sharex=True)
    ax[0].plot(steps, [r["train_acc"] for r in rows], label="train")
    ax[0].plot(steps, [r["test_acc"] for r in rows], label="test")
    ax[0].set_ylabel("accuracy")
    ax[0].legend(fontsize=8)
    for k, (key, lab) in enumerate((("sd_over_d", "SD / d"), ("hess_trace", "Hessian trace"), ("hess_top", "top eigenvalue")), start=1):
        ax[k].plot(steps, [r.get(key, np.nan) for r in rows], marker=".", ms=3)
        ax[k].set_ylabel(lab)
    if lr:
        ax[3].axhline(2.0 / lr, color="gray", ls=":", lw=1, label="2/η")
        ax[3].legend(fontsize=8)
    ax[3].set_xscale("log")
    ax[3].set_xlabel("step")
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return save_figure_atomic(fig, path)


def scatter_figure(x: Sequence[float], y: Sequence[float], path: Path, *, xlabel: str, ylabel: str, title: str, groups: Sequence[str] | None = None) -> Path:
    """One scatter plot (optionally coloured by group) with a title holding the statistic."""
    fig, ax = plt.subplots(figsize=(5, 3.8))
    if groups is None:
        ax.scatter(x, y, s=22)
    else:
        for k, g in enumerate(sorted(set(groups))):
            idx = [i for i, gi in enumerate(groups) if gi == g]
            ax.scatter([x[i] for i in idx], [y[i] for i in idx], s=22, color=f"C{k}", label=g)
        ax.legend(fontsize=7)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title, fontsize=9)
    fig.tight_layout()
    return save_figure_atomic(fig, path)


def tie_figure(rows: Sequence[dict[str, Any]], corr: dict[str, Any], fractions: Sequence[float], path: Path) -> Path:
    """Δ test loss after SD-guided compression against SD/d, one panel per budget."""
    fig, axes = plt.subplots(1, len(fractions), figsize=(4.6 * len(fractions), 3.8), squeeze=False)
    groups = sorted({_tie_group(r) for r in rows})
    for ax, f in zip(axes[0], fractions):
        sub = [r for r in rows if r["params_fraction"] == f]
        for k, g in enumerate(groups):
            pts = [r for r in sub if _tie_group(r) == g]
            ax.scatter([r["sd_over_d"] for r in pts], [r["delta_test_loss"] for r in pts], s=20, color=f"C{k}", label=g)
        c = corr[f"{f:g}"]
        ax.set_title(f"keep {f:g} of target params: τ(SD, Δ) = {c['kendall_sd_vs_delta_test_loss']:+.2f}", fontsize=9)
        ax.set_xlabel("SD / d (exact, before compression)")
        ax.set_ylabel("Δ test loss (SD-guided plan)")
    axes[0][0].legend(fontsize=7)
    fig.tight_layout()
    return save_figure_atomic(fig, path)


def _tie_group(r: dict[str, Any]) -> str:
    return "η × B grid" if r["axis"] == "grid" else f"wd = {r['weight_decay']:g}"
