"""GPT-2 small end to end on a GPU: time and peak GPU memory per stage of the main job.

Where CUDA is present this runs ``sdcompress MODEL --dataset pydoc --target-rank auto``
with the main job's full default settings (the pre-flight still runs and records its
predictions, with no time limit) on GPT-2 small — a ``GPT2Config()`` model built here and
saved to a folder (no network), or ``--model gpt2`` from a local Hugging Face cache
(``HF_HUB_OFFLINE=1``) — and writes ``results/gpu/gpu.json`` (every number) and
``results/gpu/gpu.md`` (the table): per stage the wall-clock seconds and the peak GPU
memory allocated (``torch.cuda.max_memory_allocated``, reset at each stage boundary), next
to the pre-flight's predictions.

Without CUDA it runs a smoke mode (a tiny GPT-2, a few steps, CPU; peak resident memory
instead of GPU memory) that checks the script end to end; ``tests/test_gpu_script.py``
runs it. Run::

    python benchmarks/gpu.py                       # GPU: GPT-2 small from config
    HF_HUB_OFFLINE=1 python benchmarks/gpu.py --model gpt2
    python benchmarks/gpu.py --smoke --out /tmp/gpu-smoke   # CPU smoke mode
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from sdcompress.io import write_json_atomic  # noqa: E402

STAGE_LOGGER = "sdcompress.pipeline.run"


class StageMeter(logging.Handler):
    """Splits a run at the pipeline's ``[k/5] ...`` log lines: per stage, seconds and peak memory
    (GPU memory allocated on CUDA, resident memory on CPU)."""

    def __init__(self, device: torch.device) -> None:
        super().__init__(level=logging.INFO)
        self.device, self.rows = device, []
        self._label: str | None = None
        self._t0 = time.perf_counter()
        self._peak = 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        if device.type != "cuda":
            self._thread = threading.Thread(target=self._sample, daemon=True)
            self._thread.start()

    def _memory(self) -> int:
        if self.device.type == "cuda":
            return int(torch.cuda.max_memory_allocated(self.device))
        import psutil

        return int(psutil.Process().memory_info().rss)

    def _sample(self) -> None:
        while not self._stop.is_set():
            self._peak = max(self._peak, self._memory())
            self._stop.wait(0.005)

    def _close(self) -> None:
        if self._label is None:
            return
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        peak = max(self._peak, self._memory())
        self.rows.append({"stage": self._label, "seconds": time.perf_counter() - self._t0, "peak_bytes": peak})

    def _open(self, label: str) -> None:
        self._label, self._t0 = label, time.perf_counter()
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.device)
        self._peak = self._memory()

    def emit(self, record: logging.LogRecord) -> None:
        msg = record.getMessage()
        if record.name == STAGE_LOGGER and msg.startswith("[") and "/5]" in msg[:6]:
            self._close()
            self._open(msg)

    def finish(self) -> list[dict[str, Any]]:
        self._close()
        self._label = None
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        return self.rows


def run_config(model: str, out: Path, smoke: bool) -> Any:
    """The main job's config: the CLI's defaults (``sdcompress MODEL --dataset pydoc --target-rank auto``),
    or a tiny smoke setting."""
    from sdcompress.cli.main import build_parser
    from sdcompress.cli.run import config_from_args

    argv = [model, "--dataset", "pydoc", "--target-rank", "auto", "--output-dir", str(out), "--overwrite",
            "--time-budget", "0"]
    if smoke:
        argv += ["--set", "model.options={n_embd: 16, n_layer: 1, n_head: 2}", "--set", "data.block_size=16",
                 "--set", "data.batch_size=8", "--set", "train.steps=10", "--set", "train.log_every=5",
                 "--set", "train.sharpness_steps=3", "--set", "estimate.slq_runs=2", "--set", "estimate.lanczos_steps=6",
                 "--set", "estimate.lyapunov_exponents=2", "--set", "estimate.lyapunov_steps=4",
                 "--set", "estimate.lyapunov_warmup=1", "--set", "estimate.n_bootstrap=10",
                 "--set", "evaluate.max_test_examples=32", "--set", "evaluate.max_train_examples=32",
                 "--set", "plan.curvature_batches=1"]
    parser, _ = build_parser(argv)
    return config_from_args(parser.parse_args(argv))


def run_metered(cfg: Any, device: torch.device) -> tuple[Any, list[dict[str, Any]], float]:
    """Run the pipeline once with a :class:`StageMeter` on the ``sdcompress`` logger.

    Returns:
        The run report, the meter's per-stage rows and the wall-clock seconds.
    """
    from sdcompress.pipeline import run_pipeline

    log = logging.getLogger("sdcompress")
    log.setLevel(logging.INFO)
    meter = StageMeter(device)
    log.addHandler(meter)
    start = time.perf_counter()
    try:
        report = run_pipeline(cfg)
    finally:
        rows = meter.finish()
        log.removeHandler(meter)
    return report, rows, time.perf_counter() - start


def measure(model: str, out: Path, smoke: bool, device: torch.device) -> dict[str, Any]:
    """Run the main job once with a :class:`StageMeter` attached; returns the record."""
    cfg = run_config(model, out / "run", smoke)
    cfg.device = device.type
    report, rows, seconds = run_metered(cfg, device)
    return {
        "mode": "smoke" if smoke else "full", "model": model, "device": str(device),
        "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "memory": "peak GPU memory allocated" if device.type == "cuda" else "peak resident memory (CPU)",
        "threads": torch.get_num_threads(), "total_seconds": seconds, "stages": rows,
        "preflight": report.preflight, "sd_before": report.sd_before, "sd_after": report.sd_after,
        "test_loss_before": report.test_loss_before, "test_loss_after": report.test_loss_after,
        "params_before": report.params_before, "params_after": report.params_after,
        "wall_time_s": report.wall_time_s, "torch": torch.__version__,
    }


def markdown(rec: dict[str, Any]) -> str:
    lines = [f"# GPT-2 end to end on {rec['device_name']} ({rec['mode']} mode)", "",
             f"Model `{rec['model']}`, {rec['threads']} CPU threads, torch {rec['torch']}; total "
             f"{rec['total_seconds']:.1f} s. Memory column: {rec['memory']}.", "",
             "| stage | seconds | peak memory (GiB) |", "|---|---:|---:|"]
    lines += [f"| {r['stage']} | {r['seconds']:.1f} | {r['peak_bytes'] / 2**30:.2f} |" for r in rec["stages"]]
    pre = rec.get("preflight")
    if pre:
        lines += ["", "Pre-flight predictions:", "", "| stage | predicted seconds | predicted peak (GiB) |", "|---|---:|---:|"]
        lines += [f"| {s['name']} | {s['seconds']:.1f} | {s['peak_bytes'] / 2**30:.2f} |" for s in pre["stages"]]
    lines += ["", f"SD {rec['sd_before']} → {rec['sd_after']}; test loss {rec['test_loss_before']:.4f} → "
              f"{rec['test_loss_after']:.4f}; parameters {rec['params_before']:,} → {rec['params_after']:,}."]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=None,
                        help="a model folder or hub name (default: GPT-2 small built from GPT2Config; tiny-gpt2 in smoke mode)")
    parser.add_argument("--smoke", action="store_true", help="tiny model, few steps, on the CPU (the default without CUDA)")
    parser.add_argument("--out", default=None, help="results folder (default: results/gpu; a temporary folder in smoke mode)")
    args = parser.parse_args(argv)
    cuda = torch.cuda.is_available()
    smoke = args.smoke or not cuda
    if not cuda and not args.smoke:
        print("no CUDA device: running the CPU smoke mode (nothing is written to results/gpu)")
    device = torch.device("cuda" if cuda and not smoke else "cpu")
    out = Path(args.out) if args.out else (Path(tempfile.mkdtemp(prefix="gpu-smoke-")) if smoke else ROOT / "results" / "gpu")
    out.mkdir(parents=True, exist_ok=True)
    model = args.model
    work = Path(tempfile.mkdtemp(prefix="gpt2-small-"))
    if model is None:
        if smoke:
            model = "tiny-gpt2"
        else:
            sys.path.insert(0, str(ROOT / "benchmarks"))
            from gpt2_small import make_model_folder

            model = str(make_model_folder(work / "gpt2-small"))
    rec = measure(model, work, smoke, device)
    rec["command"] = "python benchmarks/gpu.py " + " ".join(argv if argv is not None else sys.argv[1:])
    name = "smoke" if smoke else "gpu"
    write_json_atomic(out / f"{name}.json", rec)
    (out / f"{name}.md").write_text(markdown(rec))
    print(markdown(rec))
    return 0


if __name__ == "__main__":
    sys.exit(main())
