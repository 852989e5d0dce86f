"""``report.md`` and the plots of a run folder, rendered from the saved artifacts only.

:func:`render_run` needs nothing but the folder (``report.json``; ``estimates.json``,
``evaluation_after.json`` and ``train_log.json`` when present), so ``sdcompress report
RUN_DIR`` can redo it at any time.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

from sdcompress.io import save_figure_atomic, write_text_atomic
from sdcompress.report.plots import plot_exponents, plot_losses, plot_modules, plot_training
from sdcompress.report.run import REPORT_FILE, RunReport

logger = logging.getLogger(__name__)

MARKDOWN_FILE = "report.md"
PLOTS = {"modules": "modules.png", "loss": "loss.png", "exponents": "exponents.png", "training": "training.png"}
#: artifacts of a run folder and what each holds (listed in report.md)
FILES = {
    "report.json": "the numbers: SD, losses, sizes before/after, verdict, environment",
    "report.md": "this page",
    "config.json": "the resolved run configuration",
    "plan.json": "the compression plan (written before anything changed)",
    "estimates.json": "SD estimate of the trained model (exponents, settings, cost)",
    "lyapunov/": "Lyapunov estimate (exponents, module energy) and its subspace (lyapunov_subspace.safetensors)",
    "train_log.json": "the training log: losses and sharpness vs 2/η over steps, EoS verdict",
    "evaluation_before.json": "test/train loss, gap of the trained model",
    "evaluation_after.json": "the same after compression, with SD re-measured",
    "compression.json": "per-module reconstruction errors and sizes",
    "model/": "the compressed model (load with sdcompress.load_model)",
    "trained/": "the model the plan was made from",
    "tries/": "closed-loop attempts (plan and evaluation of each)",
}


def _read(folder: Path, name: str) -> dict[str, Any] | None:
    path = folder / name
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError:
        logger.warning("%s is not valid JSON; skipped in the report", path)
        return None


def _f(x: Any, spec: str) -> str:
    return "n/a" if x is None else format(x, spec)


def render_markdown(report: RunReport, folder: Path | None = None, plots: dict[str, str] | None = None) -> str:
    """The Markdown summary of a run."""
    v = report.verdict
    lines = [f"# sdcompress: {report.model} on {report.dataset}", ""]
    lines.append(f"**{'✅' if v.get('preserved') else '❌'} {v.get('message', '')}**")
    lines += ["", "## Before and after", "", "| | before | after |", "|---|---:|---:|"]
    lines += [f"| {a} | {b} | {c} |" for a, b, c in report.summary_rows()]
    notes = report.plan.get("notes", [])
    if notes:
        lines += ["", "## What SD says about this compression", ""] + [f"- {n}" for n in notes]
    est = report.estimate
    if est:
        lines += ["", "## Estimate", ""]
        ci = est.get("sd_interval")
        ci_s = f" (interval {ci[0]:.1f}–{ci[1]:.1f}, {est.get('uncertainty', '')})" if ci else ""
        lines.append(f"- SD ({est.get('method')}) = {'≥ ' if est.get('lower_bound') else ''}{_f(est.get('sd'), '.1f')} "
                     f"of d = {est.get('d')} (SD/d = {_f(est.get('sd_over_d'), '.3f')}){ci_s}; j* = {est.get('j_star')}")
        lines.append(f"- nearly neutral exponents (|λ − ln|1 − η·wd|| ≤ {est.get('neutral_tol')}, the exponent of a "
                     f"zero-curvature direction): {est.get('n_neutral')}")
        lines.append(f"- η = {est.get('lr')}, weight decay = {est.get('weight_decay')}; {est.get('n_hvp')} Hessian-vector "
                     f"products in {_f(est.get('wall_time_s'), '.1f')} s")
        if est.get("lyapunov"):
            ly = est["lyapunov"]
            lines.append(f"- Lyapunov: m = {ly.get('m')} tracked exponents, D_Λ = {'≥ ' if ly.get('lower_bound') else ''}"
                         f"{_f(ly.get('sd'), '.1f')}, top exponent {_f(ly.get('top'), '.4f')}")
    lines += module_share_lines(_read(folder, "estimates.json") if folder is not None else None)
    lines += lyapunov_convergence_lines(_read(folder, "lyapunov/estimates.json") if folder is not None else None)
    tr = report.training
    if tr:
        lines += ["", "## Training", ""] + [f"- {k}: {val}" for k, val in tr.items() if not isinstance(val, (list, dict))]
    mods = report.plan.get("modules", [])
    if mods:
        errs = {m["name"]: m for m in report.compression.get("modules", [])}
        lines += ["", f"## Plan ({report.plan.get('strategy')})", "",
                  "| module | out×in | kind | rank | keep | bits | rel. error | stored values | why |",
                  "|---|---|---|---:|---:|---:|---:|---:|---|"]
        for m in mods:
            e = errs.get(m["name"], {})
            kind = e.get("kind") or ("lowrank" if m.get("rank") else "masked" if m.get("keep_fraction") else "dense")
            lines.append(
                f"| {m['name']} | {m['out_features']}×{m['in_features']} | {kind} | {m.get('rank') or '-'} | "
                f"{_f(m.get('keep_fraction'), '.0%') if m.get('keep_fraction') else '-'} | {m.get('bits') or '-'} | "
                f"{_f(e.get('rel_error'), '.4f')} | {_f(e.get('params'), ',')} | {m.get('reason', '')} |"
            )
    if report.tries:
        lines += ["", "## Closed loop", "", "| try | sd_scale / knob | test loss | Δ | params after | preserved |",
                  "|---:|---:|---:|---:|---:|---|"]
        for i, t in enumerate(report.tries, 1):
            lines.append(f"| {i} | {_f(t.get('scale'), '.3g')} | {_f(t.get('test_loss'), '.4f')} | {_f(t.get('delta'), '+.4f')} | "
                         f"{_f(t.get('params_after'), ',')} | {t.get('preserved')} |")
    if plots:
        lines += ["", "## Plots", ""] + [f"![{k}]({p})" for k, p in plots.items()]
    present = [(k, d) for k, d in FILES.items() if folder is None or (folder / k.rstrip("/")).exists()]
    lines += ["", "## Files", ""] + [f"- `{k}`: {d}" for k, d in present]
    env = report.environment
    if env:
        lines += ["", "## Environment", "", ", ".join(f"{k} {val}" for k, val in env.items() if val is not None)]
    pre = getattr(report, "preflight", None)
    if pre:
        lines += ["", "## Pre-flight", "", f"One gradient {_f(pre['probe']['t_grad'], '.3g')} s, one Hessian-vector product "
                  f"{_f(pre['probe']['t_hvp'], '.3g')} s at {pre['probe']['n_small']} examples "
                  f"({pre['probe']['threads']} threads, {pre['probe']['device']}).", "",
                  "| stage | predicted time (s) | predicted peak memory (GiB) | settings |", "|---|---:|---:|---|"]
        lines += [f"| {st['name']} | {st['seconds']:.1f} | {st['peak_bytes'] / 2**30:.2f} | {st['detail']} |"
                  for st in pre.get("stages", [])]
        lines += [f"- picked: {c}" for c in pre.get("choices", [])]
    if report.wall_time_s:
        lines += ["", "Time per stage: " + ", ".join(f"{k} {val:.1f} s" for k, val in report.wall_time_s.items())]
    return "\n".join(lines) + "\n"


def module_share_lines(est: dict[str, Any] | None) -> list[str]:
    """The "per-module SD share / expansion share / size share" table of an estimate dict.

    SD share = SD_b / SD (``module_sd``), expansion share = E_b (``module_expansion``),
    size share = n_b / d (``extras["param_sizes"]``); empty when the estimate has no
    per-module numbers.
    """
    if not est or not est.get("module_sd"):
        return []
    msd, mex = est["module_sd"], est.get("module_expansion") or {}
    sizes = (est.get("extras") or {}).get("param_sizes") or {}
    total_sd = sum(msd.values())
    d = sum(sizes.values()) or est.get("d") or 0
    lines = ["", f"## Where the attractor lives and where it expands ({est.get('method')})", "",
             "SD share = SD_b / SD (the attractor's directions in the tensor), expansion share = E_b (mass of the "
             "expanding directions, weighted by their exponents), size share = n_b / d (PAPER.md §8).", "",
             "| parameter | SD_b | SD share | expansion share | size share |", "|---|---:|---:|---:|---:|"]
    for name, v in msd.items():
        sd_share = v / total_sd if total_sd > 0 else None
        size_share = sizes[name] / d if name in sizes and d else None
        lines.append(f"| {name} | {_f(v, '.2f')} | {_f(sd_share, '.3f')} | {_f(mex.get(name), '.3f')} | {_f(size_share, '.3f')} |")
    if not mex:
        lines.append("")
        lines.append("No exponent is positive: there is no expansion to share.")
    return lines


def lyapunov_convergence_lines(ly: dict[str, Any] | None) -> list[str]:
    """One line saying whether the Lyapunov subspace converged, with the test's numbers."""
    if not ly or ly.get("converged") is None:
        return []
    c = ly.get("convergence") or {}
    steps, test = c.get("steps"), c.get("test")

    def num(key: str) -> str:
        x = c.get(key)
        return format(x, ".2g") if isinstance(x, (int, float)) and not isinstance(x, bool) else "n/a"

    stats = (f"frames differ by {num('max_frame_difference')} (dimensions by {num('dimension_difference')}), halves by "
             f"{num('max_half_difference')}, standard error {num('max_stderr')}; tolerance {num('tol')}")
    if ly.get("converged"):
        return ["", f"- Lyapunov subspace: converged after {steps} steps ({test} test: {stats}; {c.get('hvp')} products); "
                f"D_Λ = {'≥ ' if ly.get('lower_bound') else ''}{_f(ly.get('sd'), '.1f')}"]
    return ["", f"- Lyapunov subspace: NOT converged within {steps} steps ({test} test: {stats}); it is not the dominant "
            "subspace and plans do not use it (raise --set estimate.lyapunov_steps=N)"]


def render_plots(report: RunReport, folder: Path) -> dict[str, str]:
    """Write the plots into ``folder``; returns name → file name of those written."""
    written = {}
    if report.plan.get("modules"):
        save_figure_atomic(plot_modules(report.plan, report.compression), folder / PLOTS["modules"])
        written["modules"] = PLOTS["modules"]
    tol = report.verdict.get("tolerance")
    save_figure_atomic(plot_losses(report.evaluation_before, report.evaluation_after, report.tries, tol), folder / PLOTS["loss"])
    written["loss"] = PLOTS["loss"]
    est = _read(folder, "estimates.json")
    after = (_read(folder, "evaluation_after.json") or {}).get("estimate")
    if est and est.get("exponents"):
        save_figure_atomic(plot_exponents(est, after), folder / PLOTS["exponents"])
        written["exponents"] = PLOTS["exponents"]
    log = _read(folder, "train_log.json")
    if log:
        fig = plot_training(log)
        if fig is not None:
            save_figure_atomic(fig, folder / PLOTS["training"])
            written["training"] = PLOTS["training"]
    return written


def render_run(folder: str | Path) -> Path:
    """Re-render ``report.md`` and the plots of a finished run folder.

    Raises:
        ConfigError: the folder holds no (valid) ``report.json``.
    """
    folder = Path(folder)
    report = RunReport.load(folder)
    plots = render_plots(report, folder)
    return write_text_atomic(folder / MARKDOWN_FILE, render_markdown(report, folder, plots))


__all__ = [
    "FILES",
    "MARKDOWN_FILE",
    "PLOTS",
    "REPORT_FILE",
    "lyapunov_convergence_lines",
    "module_share_lines",
    "render_markdown",
    "render_plots",
    "render_run",
]
