"""The run's plots, each a function of saved artifacts (so ``sdcompress report`` re-renders them).

- ``modules.png``: per-module rank (as a fraction of full rank), kept fraction and bits,
  with the SD floor's degrees of freedom;
- ``loss.png``: test loss, train loss and gap before/after (and each closed-loop try);
- ``exponents.png``: the sharpness exponents sorted decreasing and their running sum,
  with j* and SD marked (PAPER.md §2);
- ``training.png``: top sharpness against 2/η over training, when a log exists.

Figures are built with the object API (``matplotlib.figure.Figure``), so no pyplot
backend or global figure state is involved.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator


def plot_modules(plan: Mapping[str, Any], compression: Mapping[str, Any] | None = None) -> Figure:
    """Per-module choices of a plan (``Plan.to_dict``) and their reconstruction errors."""
    mods = plan.get("modules", [])
    errs = {m["name"]: m["rel_error"] for m in (compression or {}).get("modules", [])}
    names = [m["name"] for m in mods]
    y = np.arange(len(mods))
    fig = Figure(figsize=(9, 0.35 * len(mods) + 1.8))
    ax1, ax2 = fig.subplots(1, 2, sharey=True, gridspec_kw={"width_ratios": [3, 1]})
    kept = []
    for m in mods:
        o, i = m["out_features"], m["in_features"]
        if m.get("rank") is not None:
            kept.append(m["rank"] * (o + i) / (o * i))
        elif m.get("keep_fraction") is not None:
            kept.append(m["keep_fraction"])
        else:
            kept.append(1.0)
    bits = [m.get("bits") or 32 for m in mods]
    colors = ["tab:blue" if b == 32 else "tab:orange" if b == 8 else "tab:red" for b in bits]
    ax1.barh(y, kept, color=colors)
    for yi, m, k in zip(y, mods, kept):
        label = f"rank {m['rank']}" if m.get("rank") is not None else (
            f"keep {m['keep_fraction']:.0%}" if m.get("keep_fraction") is not None else "dense")
        label += f", {m['bits']} bits" if m.get("bits") else ""
        if m["name"] in errs:
            label += f"  (err {errs[m['name']]:.3f})"
        ax1.text(min(k, 1.0) + 0.01, yi, label, va="center", fontsize=7)
    ax1.set_yticks(y, names, fontsize=7)
    ax1.invert_yaxis()
    ax1.set_xlim(0, 1.6)
    ax1.set_xlabel("stored weight values / dense (blue float, orange 8-bit, red 4-bit)")
    ax1.set_title(f"plan '{plan.get('strategy')}'" + (f", SD = {plan['sd']:.1f} of d = {plan['d']}" if plan.get("sd") is not None else ""))
    ax2.barh(y, bits, color=colors)
    ax2.set_xlabel("bits per stored value")
    ax2.set_xticks([4, 8, 32])
    fig.tight_layout()
    return fig


def plot_losses(before: Mapping[str, Any], after: Mapping[str, Any], tries: Sequence[Mapping[str, Any]] = (),
                tolerance: float | None = None) -> Figure:
    """Test/train loss and gap before and after (``EvalReport.to_dict`` each)."""
    fig = Figure(figsize=(7, 3.6))
    ax1, ax2 = fig.subplots(1, 2)
    labels = ["before", "after"]
    x = np.arange(2)
    for off, key, color in ((-0.2, "train_loss", "tab:green"), (0.2, "test_loss", "tab:blue")):
        vals = [before.get(key, np.nan), after.get(key, np.nan)]
        ax1.bar(x + off, vals, width=0.4, color=color, label=key.replace("_", " "))
    if tolerance is not None and before.get("test_loss") is not None:
        ax1.axhline(before["test_loss"] + tolerance, color="k", ls="--", lw=1, label=f"test before + tol {tolerance:g}")
    ax1.set_xticks(x, labels)
    ax1.set_ylabel("loss (nats)")
    ax1.legend(fontsize=7)
    ax1.set_title("loss before / after")
    if tries:
        t = np.arange(1, len(tries) + 1)
        ax2.plot(t, [tr.get("test_loss", np.nan) for tr in tries], "o-", label="test loss")
        ax2.axhline(before.get("test_loss", np.nan), color="tab:blue", ls=":", label="before")
        if tolerance is not None:
            ax2.axhline(before.get("test_loss", np.nan) + tolerance, color="k", ls="--", lw=1, label="tolerance")
        ax2.set_xlabel("closed-loop try")
        ax2.set_xticks(t)
        ax2.set_title("closed loop")
    else:
        ax2.bar(x, [before.get("gap", np.nan), after.get("gap", np.nan)], color="tab:purple")
        ax2.set_xticks(x, labels)
        ax2.set_title("train/test gap (test − train)")
    ax2.legend(fontsize=7) if tries else None
    fig.tight_layout()
    return fig


def plot_exponents(estimate: Mapping[str, Any], after: Mapping[str, Any] | None = None) -> Figure:
    """Sorted exponents (``SDEstimate.to_dict``) against the number of directions they stand
    for, and the running sum with j* and SD marked; ``after`` overlays the compressed model."""
    fig = Figure(figsize=(9, 3.6))
    ax1, ax2 = fig.subplots(1, 2)
    for est, style, tag in ((estimate, "-", "before"), (after, "--", "after")):
        if not est or not est.get("exponents"):
            continue
        lam = np.asarray(est["exponents"], dtype=float)
        w = np.ones_like(lam) if est.get("weights") is None else np.asarray(est["weights"], dtype=float)
        idx = np.cumsum(w)
        run = np.cumsum(w * lam)
        ax1.plot(idx, lam, style, lw=1.2, label=f"{tag} ({est.get('method')})")
        ax2.plot(idx, run, style, lw=1.2, label=f"{tag}: SD = {est.get('sd', float('nan')):.1f}")
        j = int(est.get("j_star", 0))
        if 0 < j <= len(idx):
            ax2.axvline(idx[j - 1], color="tab:red" if tag == "before" else "tab:orange", lw=0.8, ls=":")
        if est.get("sd") is not None:
            ax1.axvline(float(est["sd"]), color="tab:red" if tag == "before" else "tab:orange", lw=0.8, ls=":")
    for ax in (ax1, ax2):
        ax.xaxis.set_major_locator(MaxNLocator(5))
    ax1.axhline(0, color="k", lw=0.6)
    ax1.set_xlabel("direction index (cumulative multiplicity)")
    ax1.set_ylabel("exponent λ = ln|1 − η·wd − ηα|")
    ax1.set_title("sharpness exponents (dotted: SD)")
    ax1.legend(fontsize=7)
    ax2.axhline(0, color="k", lw=0.6)
    ax2.set_xlabel("j")
    ax2.set_ylabel("λ_1 + … + λ_j")
    ax2.set_title("running sum (dotted: j*)")
    ax2.legend(fontsize=7)
    fig.tight_layout()
    return fig


def plot_training(log: Mapping[str, Any]) -> Figure | None:
    """Top minibatch sharpness against 2/η (and 2/η − wd) and the losses over training, from a
    ``train_log.json`` (``TrainResult.to_dict``: records with ``step``, ``sharpness``,
    ``train_loss``, ``test_loss``, ``two_over_lr``). ``None`` when there is no record."""
    records = [r for r in log.get("log", []) if r.get("sharpness") is not None]
    if not records:
        return None
    steps = [r["step"] for r in records]
    fig = Figure(figsize=(8, 3.2))
    ax1, ax2 = fig.subplots(1, 2)
    ax1.plot(steps, [r["sharpness"] for r in records], ".-", label="λ_max(H_B)")
    ax1.plot(steps, [r["two_over_lr"] for r in records], "k--", label="2/η")
    if records[0].get("stability_threshold") is not None:
        ax1.plot(steps, [r["stability_threshold"] for r in records], "k:", lw=0.8, label="2/η − wd")
    ax1.set_xlabel("step")
    ax1.set_title("sharpness vs 2/η")
    ax1.legend(fontsize=7)
    for key in ("train_loss", "test_loss"):
        vals = [r.get(key) for r in records]
        if any(v is not None for v in vals):
            ax2.plot(steps, [np.nan if v is None else v for v in vals], lw=1, label=key.replace("_", " "))
    ax2.set_xlabel("step")
    ax2.set_title("loss")
    ax2.legend(fontsize=7)
    fig.tight_layout()
    return fig


__all__ = ["plot_exponents", "plot_losses", "plot_modules", "plot_training"]
