"""Benchmark: the cost of one Lyapunov step, and how many steps a frame needs to converge.

1. One step of the Lyapunov estimator of the SGD map (the SGD step w ↦ w − η(g + wd·w),
   m Hessian-vector products J Q and the d × m QR), in plain-gradient equivalents, on
   ``tiny-gpt2`` (built-in config, d ≈ 36k, 8 × 64 tokens of pydoc) and the digits MLP
   (64-16-16-10, d = 1,440, batch 64), for m = 8, 16, 32, one CPU thread:

   - ``before``: what ``lyapunov_sd`` did until this change: a separate gradient for the
     SGD step (``sharded_grad``), a fresh ``HessianOperator`` per step whose
     double-backward graph is built again for the m products, and a float64 Householder
     QR of the frame (``torch.linalg.qr(Z.double())``);
   - ``after``: :func:`~sdcompress.estimator.lyapunov_sgd.sgd_step_and_tangents` (one
     gradient graph for the step and the m products; ``hvp_method="auto"``, i.e. a vmapped
     backward pass per chunk of columns on small models) and
     :func:`~sdcompress.linalg.qr.cholesky_qr` in the model's dtype;
   - ``after, loop``: one backward pass per column forced (``"double-backward"``);
   - ``after, vmap``: the ``vmap(jvp(grad))`` path (the CUDA default).

   The numbers of ``before`` and ``after`` are checked against each other.
2. Convergence on the digits MLP at the edge of stability (the cached built-in: η = 0.2,
   wd = 1e-2, 1,000 SGD steps), m = 16, the ``"auto"`` tolerance ½ |ln(1 − η·wd)| =
   0.001 and a two-frame test (:func:`~sdcompress.estimator.lyapunov.frames_test`), from
   the Jacobian warm start and from a random frame, capped at 4,000 steps: steps and
   products to convergence, D_Λ, the exponents, and the time. (Both runs carry the same
   pair of frames, one warm and one random, and differ in which one is reported.)
3. Which start converges faster per product: one frame each (no test), 2,000 steps from
   the Jacobian warm start and from a random frame; the sorted block means of the 16
   exponents per 250 steps.

Writes ``results/bench/lyapunov_step.json`` (every number, with the machine and its load)
and ``results/bench/lyapunov_step.md``. Run::

    python benchmarks/lyapunov_step.py            # full run (~5 minutes on 2 busy CPU cores)
    python benchmarks/lyapunov_step.py --quick    # smoke test (no convergence part)
"""

from __future__ import annotations

import argparse
import logging
import os
import platform
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import torch

from sdcompress.data import BatchStream, digits, pydoc
from sdcompress.estimator.lyapunov_sgd import lyapunov_sd, sgd_step_and_tangents
from sdcompress.io import write_json_atomic, write_text_atomic
from sdcompress.linalg.distributed import sharded_grad
from sdcompress.linalg.operators import HessianOperator, StepJacobian
from sdcompress.linalg.qr import cholesky_qr
from sdcompress.models import MLP, FunctionalLoss, tiny_gpt2

from estimator import best_time  # benchmarks/estimator.py: the same timing rule for every benchmark

logger = logging.getLogger("benchmarks.lyapunov_step")
OUT = Path(__file__).resolve().parents[1] / "results" / "bench"
LR, WD = 0.1, 0.01


def load() -> str:
    try:
        return " ".join(f"{x:.2f}" for x in os.getloadavg())
    except OSError:
        return "n/a"


def setups(quick: bool) -> dict[str, dict[str, Any]]:
    torch.manual_seed(0)
    gpt = tiny_gpt2(seed=0).eval()
    ids = BatchStream(pydoc(block_size=64).train, 4 if quick else 8, seed=0).batch(0)["input_ids"]
    mlp = MLP((64, 16, 16, 10))
    x, y = BatchStream(digits().train, 64, seed=0).batch(0)
    return {
        "tiny-gpt2": dict(loss=FunctionalLoss(gpt), batch={"input_ids": ids, "labels": ids}, batch_desc=f"{len(ids)} × 64 tokens"),
        "mlp": dict(loss=FunctionalLoss(mlp), batch=(x, y), batch_desc="64 images"),
    }


def step_before(loss: FunctionalLoss, batch: Any, w: torch.Tensor, Q: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The step as it was: separate gradient, operator (and graph) rebuilt, float64 Householder QR."""
    g = sharded_grad(loss, batch, w)
    J = StepJacobian(HessianOperator(loss, batch, w, chunk_size=16), LR, WD)
    Z = J.matmat(Q.T.contiguous()).T
    Qn, _ = torch.linalg.qr(Z.to(torch.float64))
    return w - LR * (g + WD * w), Qn.to(w.dtype)


def step_after(loss: FunctionalLoss, batch: Any, w: torch.Tensor, Q: torch.Tensor, method: str) -> tuple[torch.Tensor, torch.Tensor]:
    w1, Z = sgd_step_and_tangents(loss, batch, w, Q, lr=LR, weight_decay=WD, method=method, chunk_size=16)
    return w1, cholesky_qr(Z).Q


def bench_step(s: dict[str, Any], ms: list[int], repeats: int) -> dict[str, Any]:
    loss, batch = s["loss"], s["batch"]
    w = loss.params_vector()
    t_grad = best_time(lambda: sharded_grad(loss, batch, w), repeats=repeats)
    out: dict[str, Any] = {"gradient_s": t_grad, "d": loss.d, "batch": s["batch_desc"]}
    for m in ms:
        Q = torch.linalg.qr(torch.randn(loss.d, m, generator=torch.Generator().manual_seed(m)))[0]
        wb, Qb = step_before(loss, batch, w, Q)
        wa, Qa = step_after(loss, batch, w, Q, "auto")
        row: dict[str, Any] = {
            "check_max_rel_diff_w": float((wa - wb).abs().max() / wb.abs().max()),
            # frames agree up to column signs
            "check_max_abs_diff_frame": float((Qa.abs() - Qb.abs()).abs().max()),
        }
        for name, fn in (("before", lambda: step_before(loss, batch, w, Q)),
                         ("after", lambda: step_after(loss, batch, w, Q, "auto")),
                         ("after_loop", lambda: step_after(loss, batch, w, Q, "double-backward")),
                         ("after_vmap", lambda: step_after(loss, batch, w, Q, "vmap"))):
            t = best_time(fn, repeats=repeats)
            row[name] = {"s_per_step": t, "gradients_per_step": t / t_grad}
            logger.info("  m=%d %s: %.3g s/step = %.1f gradients (load %s)", m, name, t, t / t_grad, load())
        out[str(m)] = row
    return out


def bench_convergence(max_steps: int) -> list[dict[str, Any]]:
    from sdcompress.train import pretrained_builtin

    loaded, data, result = pretrained_builtin("mlp")
    tc = result.to_dict()["config"]
    floss = FunctionalLoss(loaded.model, loss_fn=loaded.loss_fn)
    rows = []
    for warm in ("jacobian", "random"):
        cfg = SimpleNamespace(lyapunov_exponents=16, lyapunov_steps=max_steps, lyapunov_warmup=0, lyapunov_tol="auto",
                              lyapunov_check_every=50, lyapunov_warm_start=warm, n_bootstrap=0)
        start = time.perf_counter()
        est = lyapunov_sd(floss, BatchStream(data.train, 64, seed=1), lr=tc["lr"], weight_decay=tc["weight_decay"], config=cfg)
        c = est.convergence
        rows.append({
            "warm_start": warm, "lr": tc["lr"], "weight_decay": tc["weight_decay"], "m": 16, "max_steps": max_steps,
            "converged": est.converged, "steps": c["steps"], "burn_in": c["burn_in"], "hvp": est.n_hvp,
            "warm_start_hvp": est.extras.get("warm_start_hvp", 0), "tol": c["tol"],
            "max_frame_difference": c.get("max_frame_difference"), "max_half_difference": c.get("max_half_difference"),
            "max_stderr": c.get("max_stderr"), "max_principal_angle_deg": c.get("max_principal_angle_deg"),
            "dimension": est.sd, "lower_bound": est.lower_bound, "exponents": est.exponents.tolist(),
            "frame_b": c.get("frame_b"), "seconds": time.perf_counter() - start, "load": load(),
        })
        logger.info("  %s: converged=%s after %d steps, %d HVPs, D = %.2f, %.0f s (load %s)", warm, est.converged, c["steps"],
                    est.n_hvp, est.sd, rows[-1]["seconds"], load())
    return rows


def bench_single_frames(steps: int, block: int = 250) -> list[dict[str, Any]]:
    import numpy as np

    from sdcompress.train import pretrained_builtin

    loaded, data, result = pretrained_builtin("mlp")
    tc = result.to_dict()["config"]
    floss = FunctionalLoss(loaded.model, loss_fn=loaded.loss_fn)
    rows = []
    for warm in ("jacobian", "random"):
        cfg = SimpleNamespace(lyapunov_exponents=16, lyapunov_steps=steps, lyapunov_warmup=0, lyapunov_tol=None,
                              lyapunov_warm_start=warm, n_bootstrap=0)
        start = time.perf_counter()
        est = lyapunov_sd(floss, BatchStream(data.train, 64, seed=1), lr=tc["lr"], weight_decay=tc["weight_decay"], config=cfg)
        running = np.asarray(est.extras["running_exponents"])
        total = running * np.arange(1, len(running) + 1)[:, None]
        per_step = np.diff(np.vstack([np.zeros(running.shape[1]), total]), axis=0)
        blocks = []
        for a in range(0, len(per_step), block):
            means = np.sort(per_step[a : a + block].mean(axis=0))[::-1]
            blocks.append({"from": a, "to": a + block, "max": float(means[0]), "median": float(np.median(means)), "min": float(means[-1])})
        rows.append({"warm_start": warm, "steps": steps, "hvp": est.n_hvp, "seconds": time.perf_counter() - start,
                     "blocks": blocks, "load": load()})
        logger.info("  single frame, %s: %d HVPs, %.0f s (load %s)", warm, est.n_hvp, rows[-1]["seconds"], load())
    return rows


def markdown(res: dict[str, Any]) -> str:
    lines = ["# One Lyapunov step, before and after (one gradient graph, Cholesky-QR2 in the model's dtype)", "",
             f"Command: `{res['command']}`; {res['machine']}; torch {res['torch']}; 1 thread; "
             f"load average {res['load_start']} at the start, {res['load_end']} at the end; total {res['seconds']:.0f} s.", "",
             "Gradient equivalents per step (time of one step / time of one plain gradient on the same batch; "
             "minimum over repeats). `before`: separate gradient + operator graph rebuilt + float64 Householder QR; "
             "`after`: what `lyapunov_sd` does by default (hvp_method auto): one graph for the SGD step and the m "
             "products (a vmapped backward pass per 16 columns when d ≤ 8,192, a loop of backward passes above) + "
             "Cholesky-QR2 in float32; `after, loop`: the loop of backward passes forced; `after, vmap`: the "
             "vmap(jvp(grad)) path (the CUDA default). `check`: largest difference of the next point (relative) and "
             "of the frame (up to column signs) between before and after.", "",
             "| model | d | gradient (ms) | m | before | after | after, loop | after, vmap | check |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---|"]
    for name, r in res["step"].items():
        for m in res["m"]:
            row = r[str(m)]
            lines.append(f"| {name} | {r['d']:,} | {1e3 * r['gradient_s']:.2f} | {m} | {row['before']['gradients_per_step']:.1f} | "
                         f"{row['after']['gradients_per_step']:.1f} | {row['after_loop']['gradients_per_step']:.1f} | "
                         f"{row['after_vmap']['gradients_per_step']:.1f} | "
                         f"w {row['check_max_rel_diff_w']:.0e}, frame {row['check_max_abs_diff_frame']:.0e} |")
    if res.get("convergence"):
        lines += ["", "## Convergence on the digits MLP at EoS (m = 16, two frames, tolerance ½|ln(1 − η·wd)|)", "",
                  "| warm start | converged | steps | products | D_Λ | Λ_1 | Λ_16 | frames differ | halves differ | std. error | largest principal angle | s |",
                  "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
        for c in res["convergence"]:
            f = lambda x, s=".2g": "n/a" if x is None else format(x, s)  # noqa: E731
            lines.append(f"| {c['warm_start']} | {c['converged']} | {c['steps']} | {c['hvp']:,} | "
                         f"{'≥ ' if c['lower_bound'] else ''}{c['dimension']:.1f} | {c['exponents'][0]:+.5f} | {c['exponents'][-1]:+.5f} | "
                         f"{f(c['max_frame_difference'])} | {f(c['max_half_difference'])} | {f(c['max_stderr'])} | "
                         f"{f(c['max_principal_angle_deg'], '.0f')}° | {c['seconds']:.0f} |")
        lines += ["", f"Tolerance {res['convergence'][0]['tol']:.4g}; the bulk contracted by weight decay sits at "
                  f"ln(1 − η·wd) = {-2 * res['convergence'][0]['tol']:.4g}. Exponents are the means over the last half of the "
                  "steps (the first half is burn-in)."]
    if res.get("single_frames"):
        rows = res["single_frames"]
        lines += ["", "## One frame from each start, no test (digits MLP at EoS, m = 16)", "",
                  "Sorted means of the 16 per-step log-stretches over each block of steps: max / median / min. "
                  f"The bulk's exponent is ln(1 − η·wd) ≈ {-2 * res['convergence'][0]['tol']:.4f}." if res.get("convergence") else "", "",
                  "| steps | " + " | ".join(r["warm_start"] for r in rows) + " |", "|---|" + "---|" * len(rows)]
        for i, b in enumerate(rows[0]["blocks"]):
            cells = [f"{r['blocks'][i]['max']:+.5f} / {r['blocks'][i]['median']:+.5f} / {r['blocks'][i]['min']:+.5f}" for r in rows]
            lines.append(f"| {b['from']}–{b['to']} | " + " | ".join(cells) + " |")
        lines += ["", "Products: " + ", ".join(f"{r['warm_start']} {r['hvp']:,} in {r['seconds']:.0f} s" for r in rows) + "."]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="smoke test: fewer repeats, no convergence part")
    parser.add_argument("--max-steps", type=int, default=4000, help="cap of the convergence runs")
    parser.add_argument("--out", type=Path, default=OUT)
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    torch.set_num_threads(1)
    start = time.perf_counter()
    res: dict[str, Any] = {
        "command": "python benchmarks/lyapunov_step.py" + (" --quick" if args.quick else ""),
        "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores", "torch": torch.__version__,
        "load_start": load(), "m": [8, 16, 32], "lr": LR, "weight_decay": WD,
    }
    res["step"] = {}
    for name, s in setups(args.quick).items():
        logger.info("one Lyapunov step on %s", name)
        res["step"][name] = bench_step(s, res["m"], 2 if args.quick else 5)
    if not args.quick:
        logger.info("convergence on the digits MLP at EoS")
        res["convergence"] = bench_convergence(args.max_steps)
        logger.info("one frame from each start, no test")
        res["single_frames"] = bench_single_frames(2000)
    res["load_end"], res["seconds"] = load(), time.perf_counter() - start
    args.out.mkdir(parents=True, exist_ok=True)
    write_json_atomic(args.out / "lyapunov_step.json", res)
    write_text_atomic(args.out / "lyapunov_step.md", markdown(res))
    print(markdown(res))


if __name__ == "__main__":
    main()
