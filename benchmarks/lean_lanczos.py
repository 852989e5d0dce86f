"""Benchmark: what memory-lean Lanczos does to SD, and what it saves.

1. SD (SLQ histogram, KDE, pseudo-spectrum) and per-module SD/expansion of the trained
   built-ins (tiny-gpt2 and the digits MLP, the main job's EoS training from the cache)
   with full reorthogonalisation, a float16 basis ("half") and the three-term recurrence
   ("none"), with the same minibatches and the same probes, so the differences are the
   reorthogonalisation's alone.
2. Peak resident memory of a Lanczos run in a fresh process on a diagonal operator of
   GPT-2-small's size (d = 124,439,808: the 20-step λ_max check) and of d = 16M in every
   mode, against :func:`sdcompress.linalg.lanczos_memory_bytes`.

Writes ``results/bench/lean_lanczos.json`` and ``results/bench/lean_lanczos.md``. Run::

    python benchmarks/lean_lanczos.py             # full (minutes on 2 CPU cores)
    python benchmarks/lean_lanczos.py --quick     # smoke test
    python benchmarks/lean_lanczos.py --sweep     # SD of the MLP against Lanczos steps, full vs none
                                                  # (lean_lanczos_steps.{json,md})

One thread (``torch.set_num_threads(1)``); the load average is recorded.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from sdcompress.data import BatchStream
from sdcompress.estimator import EstimateConfig
from sdcompress.estimator.density_sd import density_estimate
from sdcompress.io import write_json_atomic, write_text_atomic
from sdcompress.linalg import hessian_slq, lanczos_memory_bytes
from sdcompress.models import FunctionalLoss
from sdcompress.train.cache import pretrained_builtin

logger = logging.getLogger("benchmarks.lean_lanczos")
ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "results" / "bench"
MODES = ("full", "half", "none")

PEAK_SCRIPT = """
import resource, sys, time, psutil, torch
from sdcompress.linalg import SymmetricOperator, top_eigenvalue, lanczos_memory_bytes
class Diag(SymmetricOperator):
    def __init__(s, x):
        super().__init__(); s.x, s.d, s.dtype, s.device = x, len(x), x.dtype, x.device
    def _matmat(s, V):
        return V * s.x
torch.set_num_threads(1)
d, steps, mode = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
x = torch.linspace(-1.0, 1.0, d); x[0] = 3.0
op = Diag(x)
before = psutil.Process().memory_info().rss  # current, with the operator's diagonal already allocated
t = time.perf_counter()
top = top_eigenvalue(op, steps=steps, reorth=mode)
print(before, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024, time.perf_counter() - t, top)
"""


def peak_memory(d: int, steps: int, mode: str) -> dict[str, Any]:
    """Peak RSS of ``top_eigenvalue`` in a fresh process minus the RSS just before it
    (so the operator's diagonal is excluded)."""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    out = subprocess.run([sys.executable, "-c", PEAK_SCRIPT, str(d), str(steps), mode], capture_output=True, text=True, env=env, check=True)
    before, after, seconds, top = out.stdout.split()
    grown = int(after) - int(before)
    pred = lanczos_memory_bytes(d, steps, torch.float32, mode)
    row = {"d": d, "steps": steps, "reorth": mode, "peak_growth_bytes": grown, "predicted_bytes": pred,
           "ratio": grown / pred, "seconds": float(seconds), "top": float(top)}
    logger.info("  d=%d steps=%d %s: peak +%.2f GB, predicted %.2f GB", d, steps, mode, grown / 2**30, pred / 2**30)
    return row


def sd_rows(name: str, runs: int, steps: int) -> dict[str, Any]:
    """SD and per-module SD of a cached trained built-in in every mode, same batches and probes."""
    loaded, data, result = pretrained_builtin(name)
    model = loaded.model.eval()
    lr, wd = float(result.config.lr), float(result.config.weight_decay)
    floss = FunctionalLoss(model, loss_fn=loaded.loss_fn)
    stream = BatchStream(data.train, result.data_config.batch_size, seed=1)
    econf = EstimateConfig(n_bootstrap=0)
    out: dict[str, Any] = {"d": floss.d, "lr": lr, "weight_decay": wd, "runs": runs, "steps": steps, "modes": {},
                           "sizes": dict(zip(floss.layout.names, floss.layout.sizes))}
    for mode in MODES:
        start = time.perf_counter()
        meas = hessian_slq(floss, stream.batch, runs, steps, seed=0, reorth=mode)
        secs = time.perf_counter() - start
        row: dict[str, Any] = {"seconds": secs, "n_hvp": meas.n_hvp, "lanczos_bytes": lanczos_memory_bytes(floss.d, steps, torch.float32, mode)}
        for method in ("slq", "kde", "ps"):
            est = density_estimate(meas, method, lr=lr, weight_decay=wd, config=econf)
            row[method] = {"sd": est.sd, "module_sd": est.module_sd, "module_expansion": est.module_expansion,
                           "module_weight_defect": est.extras["module_weight_defect"]}
        out["modes"][mode] = row
        logger.info("  %s %s: SD-PS %.1f (%.1f s)", name, mode, row["ps"]["sd"], secs)
    full = out["modes"]["full"]
    for mode in MODES:
        row = out["modes"][mode]
        for method in ("slq", "kde", "ps"):
            r, f = row[method], full[method]
            r["ratio_to_full"] = r["sd"] / f["sd"]
            big = [k for k, v in f["module_sd"].items() if v >= 0.05 * f["sd"]]
            r["module_sd_max_rel_diff"] = max(abs(r["module_sd"][k] / f["module_sd"][k] - 1) for k in big)
            r["module_expansion_max_abs_diff"] = max(abs(r["module_expansion"][k] - f["module_expansion"][k]) for k in f["module_expansion"])
    return out


def steps_sweep(runs: int, steps_list: list[int]) -> dict[str, Any]:
    """SD-PS of the trained digits MLP against the number of Lanczos steps, full vs none."""
    loaded, data, result = pretrained_builtin("mlp")
    floss = FunctionalLoss(loaded.model.eval(), loss_fn=loaded.loss_fn)
    stream = BatchStream(data.train, result.data_config.batch_size, seed=1)
    lr, wd = float(result.config.lr), float(result.config.weight_decay)
    rows = []
    for steps in steps_list:
        for mode in ("full", "none"):
            meas = hessian_slq(floss, stream.batch, runs, steps, seed=0, reorth=mode)
            est = density_estimate(meas, "ps", lr=lr, weight_decay=wd, config=EstimateConfig(n_bootstrap=0))
            rows.append({"steps": steps, "reorth": mode, "sd": est.sd, "n_hvp": meas.n_hvp})
            logger.info("  steps=%d %s: SD-PS %.1f", steps, mode, est.sd)
    return {"model": "mlp", "d": floss.d, "lr": lr, "weight_decay": wd, "runs": runs, "rows": rows}


def sweep_markdown(res: dict[str, Any]) -> str:
    sw = res["sweep"]
    full = {r["steps"]: r["sd"] for r in sw["rows"] if r["reorth"] == "full"}
    ref = full.get(80, full[max(full)])
    lines = ["# SD of the digits MLP against Lanczos steps: full reorthogonalisation vs the O(d) recurrence", "",
             f"Command: `{res['command']}` ({res['seconds']:.0f} s), load average {res['load']}. Trained built-in `mlp` "
             f"(d = {sw['d']:,}, η = {sw['lr']}, wd = {sw['weight_decay']}), {sw['runs']} SLQ runs, same batches and probes; "
             "SD-PS; ratio to full reorthogonalisation at 80 steps (the default).", "",
             "| steps | full | none |", "| ---: | --- | --- |"]
    for steps in sorted({r["steps"] for r in sw["rows"]}):
        cells = [next(f"{r['sd']:.1f} ({r['sd'] / ref:.3f}×)" for r in sw["rows"] if r["steps"] == steps and r["reorth"] == m) for m in ("full", "none")]
        lines.append(f"| {steps} | " + " | ".join(cells) + " |")
    return "\n".join(lines + [""])


def markdown(res: dict[str, Any]) -> str:
    m = res["machine"]
    lines = ["# Memory-lean Lanczos: SD against full reorthogonalisation, and peak memory", "",
             f"Machine: {m['cpu']}, {m['cores']} cores, torch {m['torch']}, 1 thread; load average {m['load_start']} at start, "
             f"{m['load_end']} at the end. Command: `{res['command']}` ({res['seconds']:.0f} s).", "",
             "Modes (`reorth`): `full` keeps the m × d basis and reorthogonalises against all of it twice; `half` the same "
             "against a float16 basis (√d-scaled); `none` the three-term recurrence in O(d). `auto` (the default) takes "
             "the first that fits the memory budget (0.1 of available memory unless `memory_budget` is given).", "",
             "## SD of the trained built-ins (same minibatches, same probes)", "",
             "| model (d) | η, wd | runs × steps | mode | Lanczos memory | time | SD-SLQ | SD-KDE | SD-PS | per-module SD, max rel. diff | expansion shares, max abs. diff |",
             "| --- | --- | --- | --- | ---: | ---: | --- | --- | --- | ---: | ---: |"]
    for name, r in res["sd"].items():
        for mode, row in r["modes"].items():
            cells = [f"{row[k]['sd']:.1f} ({row[k]['ratio_to_full']:.4f}×)" for k in ("slq", "kde", "ps")]
            lines.append(f"| {name} ({r['d']:,}) | {r['lr']}, {r['weight_decay']} | {r['runs']} × {r['steps']} | {mode} | "
                         f"{row['lanczos_bytes'] / 2**20:.1f} MiB | {row['seconds']:.0f} s | " + " | ".join(cells)
                         + f" | {row['ps']['module_sd_max_rel_diff']:.3f} | {row['ps']['module_expansion_max_abs_diff']:.3f} |")
    if "sd_run" in res:
        r = res["sd_run"]
        lines += ["", f"(These SD rows come from an earlier run: `{r['command']}`, {r['seconds']:.0f} s, load average "
                  f"{r['load']['load_start']} → {r['load']['load_end']}; the memory table below from the command above.)"]
    lines += ["", "Ratios are to the `full` row of the same model. Per-module columns: SD-PS's module SD over blocks holding ≥ 5% of "
              "SD, and the expansion shares (all blocks), against `full`.", "",
              "## Peak resident memory of one Lanczos run (fresh process, diagonal operator)", "",
              "| d | steps | mode | measured peak growth | predicted (`lanczos_memory_bytes`) | ratio | time | λ_max (true 3) |",
              "| ---: | ---: | --- | ---: | ---: | ---: | ---: | ---: |"]
    for r in res["memory"]:
        lines.append(f"| {r['d']:,} | {r['steps']} | {r['reorth']} | {r['peak_growth_bytes'] / 2**30:.2f} GiB | "
                     f"{r['predicted_bytes'] / 2**30:.2f} GiB | {r['ratio']:.2f} | {r['seconds']:.1f} s | {r['top']:.4f} |")
    lines += ["", "## Per-module SD and expansion (SD-PS, full reorthogonalisation, the runs above)", "",
              "Blocks are parameter tensors; size share n_b/d, SD share SD_b/SD, expansion share E_b (PAPER.md §8). "
              "Blocks below 1% of d and of the expansion are left out.", "",
              "| model | parameter | size share | SD share | expansion share | SD share, none − full | expansion share, none − full |",
              "| --- | --- | ---: | ---: | ---: | ---: | ---: |"]
    for name, r in res["sd"].items():
        f, n = r["modes"]["full"]["ps"], r["modes"]["none"]["ps"]
        sizes = r.get("sizes", {})
        for k in f["module_sd"]:
            size = sizes.get(k, float("nan")) / r["d"]
            if size < 0.01 and f["module_expansion"][k] < 0.01:
                continue
            lines.append(f"| {name} | {k} | {size:.3f} | {f['module_sd'][k] / f['sd']:.3f} | {f['module_expansion'][k]:.3f} | "
                         f"{n['module_sd'][k] / n['sd'] - f['module_sd'][k] / f['sd']:+.3f} | {n['module_expansion'][k] - f['module_expansion'][k]:+.3f} |")
    full124 = lanczos_memory_bytes(124_439_808, 20, torch.float32, "full") / 2**30
    lines += ["", f"For comparison, `full` at d = 124,439,808 and 20 steps would need {full124:.1f} GiB "
              f"(predicted); 80 steps: {lanczos_memory_bytes(124_439_808, 80, torch.float32, 'full') / 2**30:.1f} GiB. "
              "The growth includes the float64 start vector drawn before the run (2 vectors, freed before the first "
              "product) and allocator slack.", ""]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="tiny settings (smoke test)")
    parser.add_argument("--output-dir", default=str(OUT))
    parser.add_argument("--skip-memory", action="store_true", help="skip the large-d memory runs")
    parser.add_argument("--sweep", action="store_true", help="only the steps sweep on the MLP (lean_lanczos_steps.*)")
    parser.add_argument("--render", action="store_true", help="only rewrite lean_lanczos.md from lean_lanczos.json")
    parser.add_argument("--memory-only", action="store_true",
                        help="redo only the memory runs, keeping the SD rows of an existing lean_lanczos.json")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    torch.set_num_threads(1)
    t0 = time.perf_counter()
    if args.render:
        out = Path(args.output_dir)
        res_r = json.loads((out / "lean_lanczos.json").read_text())
        if "sizes" not in next(iter(res_r["sd"].values())):  # runs before sizes were recorded: the layout is deterministic
            for name, r in res_r["sd"].items():
                loaded, _, _ = pretrained_builtin(name)
                fl = FunctionalLoss(loaded.model, loss_fn=loaded.loss_fn)
                r["sizes"] = dict(zip(fl.layout.names, fl.layout.sizes))
        write_text_atomic(out / "lean_lanczos.md", markdown(res_r))
        return
    if args.sweep:
        sres: dict[str, Any] = {"command": "python " + " ".join(["benchmarks/lean_lanczos.py", *sys.argv[1:]]),
                                "load": [round(x, 2) for x in os.getloadavg()],
                                "sweep": steps_sweep(4 if args.quick else 32, [20, 40] if args.quick else [40, 80, 120, 160])}
        sres["seconds"] = time.perf_counter() - t0
        out = Path(args.output_dir)
        write_json_atomic(out / "lean_lanczos_steps.json", sres)
        write_text_atomic(out / "lean_lanczos_steps.md", sweep_markdown(sres))
        return
    res: dict[str, Any] = {"machine": {"cpu": platform.processor() or platform.machine(), "cores": os.cpu_count(),
                                       "torch": torch.__version__, "load_start": [round(x, 2) for x in os.getloadavg()]},
                           "command": "python " + " ".join(["benchmarks/lean_lanczos.py", *sys.argv[1:]])}
    runs, steps = (4, 20) if args.quick else (32, 80)
    if args.memory_only:
        old = json.loads((Path(args.output_dir) / "lean_lanczos.json").read_text())
        res["sd"], res["sd_run"] = old["sd"], {k: old[k] for k in ("command", "seconds")} | {"load": old["machine"]}
    else:
        res["sd"] = {name: sd_rows(name, runs, steps) for name in ("mlp", "tiny-gpt2")}
    res["memory"] = []
    if not args.skip_memory:
        sizes = [(1_000_000, 20)] if args.quick else [(16_000_000, 20), (124_439_808, 20)]
        for d, st in sizes:
            for mode in (MODES if d <= 16_000_000 else ("none",)):
                res["memory"].append(peak_memory(d, st, mode))
    res["machine"]["load_end"] = [round(x, 2) for x in os.getloadavg()]
    res["seconds"] = time.perf_counter() - t0
    out = Path(args.output_dir)
    write_json_atomic(out / "lean_lanczos.json", json.loads(json.dumps(res, default=float)))
    write_text_atomic(out / "lean_lanczos.md", markdown(res))
    logger.info("wrote %s", out / "lean_lanczos.md")


if __name__ == "__main__":
    main()
