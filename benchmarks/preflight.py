"""Benchmark: the pre-flight's predicted stage times and peak memory against a real run.

For each case the main job runs once (``run_pipeline`` with the CLI's defaults for that
model, a few settings lowered so a case takes minutes on 2 busy cores, and no time limit
so the pre-flight changes nothing); a log handler splits the run at the pipeline's
``[k/5]`` stage lines and records each stage's wall-clock seconds and peak resident
memory. The pre-flight's per-stage predictions are summed to the same stages:

    [1/5] model and training   ↔ SGD phase (the measured time excludes the probe itself)
    [2/5] estimate             ↔ SD estimate + Lyapunov + evaluate (before)
    [3/5] plan and compress    ↔ plan+compress (curvature, compression, evaluation)
    [4/5] save and re-measure  ↔ re-measure SD (the measured time excludes the re-probe)

Finer rows split stage 2 at its log lines (SD estimate, Lyapunov, evaluation) and stage 3
(the plan's summary: curvature and planning done; ``compressed N modules``: the copy
compressed; then its evaluation) against the predictions and their ``parts``, and compare the re-measure's updated prediction (logged by the
re-probe of the compressed model just before it runs) with the time from that log line
to the ``[5/5]`` line.

Writes ``results/bench/preflight.json`` (every number) and ``preflight.md`` (the table),
with the machine load (``os.getloadavg``) next to the timings. Run::

    nice -n 10 python benchmarks/preflight.py          # both cases
    nice -n 10 python benchmarks/preflight.py --repeats 3  # and the run-to-run spread
    python benchmarks/preflight.py --quick --out /tmp/pf # smaller, for a smoke check
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from gpt2_small import make_model_folder  # noqa: E402
from gpu import run_metered  # noqa: E402

from sdcompress.io import write_json_atomic  # noqa: E402
from sdcompress.pipeline.preflight import REMEASURE_RECORD  # noqa: E402

class Marks(logging.Handler):
    """Times of the log records that split stage 3 (plan made; model compressed) and stage 4
    (the re-probe's updated prediction; the report line that ends the re-measure)."""

    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.t: dict[str, float] = {}
        self.remeasure: dict[str, Any] | None = None

    def emit(self, record: logging.LogRecord) -> None:
        now, msg = time.perf_counter(), record.getMessage()
        if msg.startswith("[2/5]"):
            self.t["stage2"] = now
        elif msg.startswith("tracking the dominant Lyapunov"):
            self.t["lyapunov"] = now
        elif msg.startswith("the Lyapunov subspace"):
            self.t["lyapunov_done"] = now
        elif msg.startswith("[3/5]"):
            self.t["stage3"] = now
        elif msg.startswith("[4/5]"):
            self.t["stage4"] = now
        elif msg.startswith("[5/5]"):
            self.t["stage5"] = now
        elif record.name == "sdcompress.pipeline.stages" and "stage3" in self.t and "planned" not in self.t:
            self.t["planned"] = now  # the plan's summary: curvature and planning done
        elif record.name == "sdcompress.compress.apply" and msg.startswith("compressed ") and "compressed" not in self.t:
            self.t["compressed"] = now
        payload = getattr(record, REMEASURE_RECORD, None)
        if payload is not None:
            self.remeasure, self.t["reprobed"] = payload, now


GROUPS = {"[1/5]": ("SGD phase",), "[2/5]": ("SD estimate", "Lyapunov", "evaluate"), "[3/5]": ("plan+compress",),
          "[4/5]": ("re-measure SD",)}


def cases(quick: bool, work: Path) -> list[dict[str, Any]]:
    """(name, model, CLI overrides) of each case."""
    small = ["estimate.slq_runs=6", "estimate.lanczos_steps=20", "estimate.lyapunov_exponents=6",
             "estimate.lyapunov_steps=20", "estimate.lyapunov_warmup=4", "evaluate.max_test_examples=256",
             "evaluate.max_train_examples=256", "plan.curvature_batches=1"]
    if quick:
        small = ["estimate.slq_runs=2", "estimate.lanczos_steps=6", "estimate.lyapunov_exponents=2",
                 "estimate.lyapunov_steps=4", "estimate.lyapunov_warmup=1", "evaluate.max_test_examples=32",
                 "evaluate.max_train_examples=32", "plan.curvature_batches=1"]
    width = 32 if quick else 96
    gpt2 = make_model_folder(work / f"gpt2-2x{width}", n_layer=2, n_embd=width, n_head=4, n_positions=64, vocab_size=257)
    return [
        {"name": f"GPT-2 2 layers × {width} (a save_pretrained folder: SGD phase from the checkpoint)", "model": str(gpt2),
         "set": small + ["train.steps=" + ("6" if quick else "20"), "train.log_every=" + ("3" if quick else "10"),
                         "data.batch_size=16", "train.lr=0.05"]},
        {"name": "digits MLP (built-in, trained at EoS, cached)", "model": "mlp", "set": small},
    ]


def run_case(case: dict[str, Any], out: Path) -> dict[str, Any]:
    from sdcompress.cli.main import build_parser
    from sdcompress.cli.run import config_from_args

    argv = [case["model"], "--target-rank", "auto", "--output-dir", str(out), "--overwrite", "--time-budget", "0"]
    for s in case["set"]:
        argv += ["--set", s]
    if case["model"] != "mlp":
        argv += ["--dataset", "pydoc"]
    parser, _ = build_parser(argv)
    cfg = config_from_args(parser.parse_args(argv))
    cfg.device = "cpu"
    load0 = os.getloadavg()
    marks = Marks()
    log = logging.getLogger("sdcompress")
    log.addHandler(marks)
    try:
        report, rows, seconds = run_metered(cfg, torch.device("cpu"))
    finally:
        log.removeHandler(marks)
    pre = report.preflight
    stages = {s["name"]: s for s in pre["stages"]}
    table = []
    for row in rows:
        key = row["stage"][:5]
        if key not in GROUPS:
            continue
        names = [n for n in GROUPS[key] if n in stages]
        predicted = sum(stages[n]["seconds"] for n in names)
        measured = row["seconds"] - (pre["probe"]["wall_time_s"] if key == "[1/5]" else 0.0)
        table.append({"stage": row["stage"], "predicted_from": names, "predicted_s": predicted, "measured_s": measured,
                      "ratio": predicted / measured if measured > 0 else None,
                      "predicted_peak_bytes": max((stages[n]["peak_bytes"] for n in names), default=None),
                      "measured_peak_bytes": row["peak_bytes"],
                      "predicted_hvps": sum(stages[n]["hvps"] for n in names),
                      "predicted_svds": sum(stages[n].get("svds", 0) for n in names)})
    t = marks.t
    parts = []  # stages 2 and 3 split by their log lines, and the re-probed re-measure
    for name, a, b in (("SD estimate", "stage2", "lyapunov"), ("Lyapunov", "lyapunov", "lyapunov_done"),
                       ("evaluate", "lyapunov_done", "stage3")):
        if a in t and b in t and name in stages:
            predicted, measured = stages[name]["seconds"], t[b] - t[a]
            parts.append({"stage": f"[2/5] {name}", "predicted_s": predicted, "measured_s": measured,
                          "ratio": predicted / measured if measured > 0 else None,
                          "predicted_parts": stages[name].get("parts", {})})
    pc = stages.get("plan+compress", {}).get("parts", {})
    for name, a, b in (("curvature and plan", "stage3", "planned"), ("compress a copy", "planned", "compressed"),
                       ("evaluate the copy", "compressed", "stage4")):
        if a in t and b in t:
            key = {"curvature and plan": "curvature", "compress a copy": "compress", "evaluate the copy": "evaluate"}[name]
            predicted, measured = pc.get(key), t[b] - t[a]
            parts.append({"stage": f"[3/5] {name}", "predicted_s": predicted, "measured_s": measured,
                          "ratio": predicted / measured if predicted is not None and measured > 0 else None})
    if marks.remeasure is not None and "stage5" in t:
        predicted, measured = marks.remeasure["stage"]["seconds"], t["stage5"] - t["reprobed"]
        parts.append({"stage": "[4/5] re-measure SD, re-probed on the compressed model", "predicted_s": predicted,
                      "measured_s": measured, "ratio": predicted / measured if measured > 0 else None,
                      "reprobe_wall_time_s": marks.remeasure["probe_wall_time_s"],
                      "reprobe": marks.remeasure["probe"]})
        for row in table:  # the first table's stage 4 without the re-probe itself
            if row["stage"].startswith("[4/5]"):
                row["measured_s"] -= marks.remeasure["probe_wall_time_s"]
                row["ratio"] = row["predicted_s"] / row["measured_s"] if row["measured_s"] > 0 else None
    return {"case": case["name"], "command": "sdcompress " + " ".join(argv), "load_before": load0,
            "load_after": os.getloadavg(), "threads": torch.get_num_threads(), "total_s": seconds,
            "probe": pre["probe"], "stages": table, "parts": parts, "preflight": pre}


def markdown(records: list[dict[str, Any]]) -> str:
    lines = ["# Pre-flight: predicted against measured, per stage", "",
             "Made by `python benchmarks/preflight.py` (one CPU thread per torch op pool as set; the machine is shared, "
             "so the load average is given with each case). Predicted times come from one gradient and one "
             "Hessian-vector product timed on the real batch; a stage's measured time is its wall clock between the "
             "pipeline's `[k/5]` log lines (stage 1 without the probe itself). Memory: peak resident set size. "
             "The first run of each case is shown in full; the ratios of every run follow at the end.", ""]
    for r in [r for r in records if r.get("repeat", 0) == 0]:
        p = r["probe"]
        lines += [f"## {r['case']}", "", f"`{r['command']}`", "",
                  f"d = {p['d']:,}; one gradient {p['t_grad'] * 1e3:.1f} ms, one product {p['t_hvp'] * 1e3:.1f} ms "
                  f"({p['t_hvp_first'] * 1e3:.1f} ms the first) at {p['n_small']} examples; {r['threads']} threads; "
                  f"load average {r['load_before'][0]:.1f} before, {r['load_after'][0]:.1f} after; total {r['total_s']:.1f} s.",
                  "", "| stage | predicted from | products | predicted s | measured s | predicted / measured | "
                  "predicted peak (MiB) | measured peak (MiB) | SVDs |", "|---|---|---:|---:|---:|---:|---:|---:|---:|"]
        for s in r["stages"]:
            ratio = "n/a" if s["ratio"] is None else f"{s['ratio']:.2f}"
            pk = "n/a" if s["predicted_peak_bytes"] is None else f"{s['predicted_peak_bytes'] / 2**20:.0f}"
            lines.append(f"| {s['stage'][:40]} | {', '.join(s['predicted_from']) or '-'} | {s['predicted_hvps']} | "
                         f"{s['predicted_s']:.2f} | {s['measured_s']:.2f} | {ratio} | {pk} | "
                         f"{s['measured_peak_bytes'] / 2**20:.0f} | {s.get('predicted_svds', 0)} |")
        if r.get("parts"):
            lines += ["", "| part | predicted s | measured s | predicted / measured |", "|---|---:|---:|---:|"]
            for s in r["parts"]:
                ratio = "n/a" if s["ratio"] is None else f"{s['ratio']:.2f}"
                pred = "n/a" if s["predicted_s"] is None else f"{s['predicted_s']:.2f}"
                lines.append(f"| {s['stage']} | {pred} | {s['measured_s']:.2f} | {ratio} |")
            rp = next((s for s in r["parts"] if "reprobe" in s), None)
            if rp is not None:
                q = rp["reprobe"]
                lines.append(f"\nRe-probe of the compressed model: d = {q['d']:,}, one gradient {q['t_grad'] * 1e3:.1f} ms, "
                             f"one product {q['t_hvp'] * 1e3:.1f} ms at {q['n_small']} examples "
                             f"(took {rp['reprobe_wall_time_s']:.2f} s, excluded from the stage-4 row above).")
        lines.append("")
    if any(r.get("repeat", 0) > 0 for r in records):
        lines += ["## predicted / measured in every run", ""]
        for case in dict.fromkeys(r["case"] for r in records):
            runs = [r for r in records if r["case"] == case]
            lines += [f"{case}:", "", "| stage | " + " | ".join(f"run {r['repeat'] + 1}" for r in runs) + " |",
                      "|---|" + "---:|" * len(runs)]
            for j, row in enumerate(runs[0]["stages"] + runs[0].get("parts", [])):
                cells = []
                for r in runs:
                    rows = r["stages"] + r.get("parts", [])
                    x = rows[j]["ratio"] if j < len(rows) else None
                    cells.append("n/a" if x is None else f"{x:.2f}")
                lines.append(f"| {row['stage'][:60]} | " + " | ".join(cells) + " |")
            loads = ", ".join(f"{r['load_before'][0]:.1f}–{r['load_after'][0]:.1f}" for r in runs)
            lines += ["", f"Load average before–after each run: {loads}.", ""]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="tiny settings (a smoke check)")
    parser.add_argument("--out", default=str(ROOT / "results" / "bench"), help="where preflight.{json,md} go")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
    parser.add_argument("--repeats", type=int, default=1, help="run every case this many times (the spread)")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    logging.basicConfig(level=logging.WARNING)
    work = Path(tempfile.mkdtemp(prefix="preflight-bench-"))
    records = []
    for rep in range(args.repeats):  # the cases in turn, so that repeats see the machine at different moments
        for i, c in enumerate(cases(args.quick, work)):
            records.append({**run_case(c, work / f"run{i}"), "repeat": rep})
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    write_json_atomic(out / "preflight.json", {"records": records})
    (out / "preflight.md").write_text(markdown(records))
    print(markdown(records))
    return 0


if __name__ == "__main__":
    sys.exit(main())
