"""Benchmark: Hessian-vector product paths, Lyapunov step cost, and SD by SLQ/KDE/PS vs exact.

1. Seconds per Hessian-vector product per vector on ``tiny-gpt2`` (built-in config,
   d ≈ 36k, 8 × 64 tokens) and the digits MLP (64-16-16-10, d = 1,440, batch 64):
   vmap forward-over-reverse (blocks of 32 vectors), a loop of forward-over-reverse, a
   loop of double backward (gradient graph rebuilt for every vector), double backward
   with the graph kept (what :class:`HessianOperator` does), and, side by side on the same
   model and batch, PyHessian and curvlinops where they import (their products are
   checked against ours). Why a path is missing is recorded.
2. One step of :func:`sdcompress.estimator.lyapunov.lyapunov_sd` (m HVPs, a d × m QR
   and the SGD step's gradient) in gradient-evaluation equivalents for m = 8, 32, 64.
3. SD by SLQ histogram, KDE and pseudo-spectrum against exact SD on the digits MLP
   trained to the edge of stability with plain SGD (two settings: η = 0.5 with weight
   decay 0.01, and PAPER.md §7's η = 0.2 without), each with its time and HVP count.

Writes ``results/bench/estimator.json`` (every number, with the machine) and
``results/bench/estimator.md`` (tables). Run::

    python benchmarks/estimator.py              # full run (minutes on 2 CPU cores)
    python benchmarks/estimator.py --quick      # smoke test

PyHessian and curvlinops are optional: ``pip install pyhessian curvlinops-for-pytorch``
(or put them on ``PYTHONPATH``). Timings take the minimum over repeats, so a busy
machine inflates them less; each is single-threaded (``torch.set_num_threads(1)``).
"""

from __future__ import annotations

import argparse
import logging
import os
import platform
import sys
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from torch import nn

from sdcompress.data import BatchStream, digits, pydoc
from sdcompress.estimator import EstimateConfig, estimate_sd
from sdcompress.io import write_json_atomic, write_text_atomic
from sdcompress.linalg import GradientGraph, batched_hvp, hvp_double_backward
from sdcompress.linalg.distributed import sharded_grad
from sdcompress.models import MLP, FunctionalLoss, tiny_gpt2

logger = logging.getLogger("benchmarks.estimator")
OUT = Path(__file__).resolve().parents[1] / "results" / "bench"


def best_time(fn: Callable[[], Any], *, repeats: int = 5, min_time: float = 0.3) -> float:
    """Minimum over ``repeats`` of the mean time of ``fn`` (called until ``min_time`` s)."""
    fn()  # warm-up
    best = float("inf")
    for _ in range(repeats):
        n, start = 0, time.perf_counter()
        while True:
            fn()
            n += 1
            if time.perf_counter() - start >= min_time:
                break
        best = min(best, (time.perf_counter() - start) / n)
    return best


# --- models -------------------------------------------------------------------------------


class LogitsOnly(nn.Module):
    """A GPT-2 as ``ids -> next-token logits (N, V)`` for libraries that take a tensor model
    and a loss module; with ``CrossEntropyLoss`` on the shifted ids it is the HF loss."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        logits = self.model(input_ids=ids).logits[:, :-1]
        return logits.reshape(-1, logits.shape[-1])


def setups(quick: bool) -> dict[str, dict[str, Any]]:
    """Model, functional loss, batch, and a tensor-model view (for PyHessian/curvlinops)."""
    torch.manual_seed(0)
    gpt = tiny_gpt2(seed=0).eval()
    ids = BatchStream(pydoc(block_size=64).train, 4 if quick else 8, seed=0).batch(0)["input_ids"]
    mlp = MLP((64, 16, 16, 10))
    x, y = BatchStream(digits().train, 64, seed=0).batch(0)
    return {
        "tiny-gpt2": dict(model=gpt, loss=FunctionalLoss(gpt), batch={"input_ids": ids, "labels": ids},
                          tensor_model=LogitsOnly(gpt), X=ids, y=ids[:, 1:].reshape(-1), batch_desc=f"{len(ids)} × 64 tokens"),
        "mlp": dict(model=mlp, loss=FunctionalLoss(mlp), batch=(x, y), tensor_model=mlp, X=x, y=y, batch_desc="64 images"),
    }


# --- 1. HVP paths -------------------------------------------------------------------------------


def bench_hvp(s: dict[str, Any], k: int, repeats: int) -> dict[str, Any]:
    loss, batch = s["loss"], s["batch"]
    w = loss.params_vector()
    V = torch.randn(k, loss.d, generator=torch.Generator().manual_seed(0))
    ref = batched_hvp(loss, batch, V[:2], w, method="vmap")
    paths: dict[str, Any] = {}

    def record(name: str, fn: Callable[[], Any], per: int, check: torch.Tensor | None = None, note: str = "") -> None:
        t = best_time(fn, repeats=repeats)
        row = {"s_per_vector": t / per, "note": note}
        if check is not None:
            row["max_rel_diff_vs_vmap"] = float((check - ref).abs().max() / ref.abs().max())
        paths[name] = row
        logger.info("  %-32s %.3g ms/vector", name, 1e3 * t / per)

    record("vmap forward-over-reverse", lambda: batched_hvp(loss, batch, V, w, chunk_size=16, method="vmap"), k,
           batched_hvp(loss, batch, V[:2], w, method="vmap"), f"blocks of {k}, vmap chunks of 16")
    record("loop forward-over-reverse", lambda: batched_hvp(loss, batch, V[:4], w, method="loop"), 4,
           batched_hvp(loss, batch, V[:2], w, method="loop"))
    record("loop double backward", lambda: [hvp_double_backward(loss, batch, w, v[None]) for v in V[:4]], 4,
           hvp_double_backward(loss, batch, w, V[:2]), "gradient graph rebuilt for every vector")
    f = lambda x: loss(x, batch)  # noqa: E731
    fwd_jacrev = lambda v: torch.func.jvp(torch.func.jacrev(f), (w,), (v,))[1]  # noqa: E731
    record("jvp of jacrev (known wrong; reference)", lambda: [fwd_jacrev(v) for v in V[:2]], 2,
           torch.stack([fwd_jacrev(v) for v in V[:2]]),
           "forward-over-jacrev: torch 2.13 gets second derivatives through layer_norm wrong; not used anywhere")
    graph = GradientGraph(loss, batch, w)
    record("double backward, graph kept", lambda: graph.matmat(V), k, graph.matmat(V[:2]),
           "HessianOperator's path: graph built once per operator (not timed), one backward per vector")
    record("graph build (once per operator)", lambda: GradientGraph(loss, batch, w), 1, None, "per operator, not per vector")
    return paths


def bench_pyhessian(s: dict[str, Any], k: int, repeats: int) -> dict[str, Any]:
    try:
        import pyhessian
        from pyhessian import hessian as PyHessian
        from pyhessian.utils import hessian_vector_product
    except ImportError as exc:
        return {"status": "not installed", "error": f"{exc}; pip install pyhessian"}
    model, loss = s["tensor_model"], s["loss"]
    try:
        H = PyHessian(model, nn.CrossEntropyLoss(), data=(s["X"], s["y"]), cuda=False)  # runs backward in its constructor
        V = torch.randn(k, loss.d, generator=torch.Generator().manual_seed(0))
        split = lambda v: [t.view_as(p) for t, p in zip(v.split([p.numel() for p in H.params]), H.params)]  # noqa: E731
        flat = lambda out: torch.cat([o.reshape(-1) for o in out])  # noqa: E731
        hv = torch.stack([flat(hessian_vector_product(H.gradsH, H.params, split(v))) for v in V[:2]])
        ref = batched_hvp(loss, s["batch"], V[:2], method="vmap")
        t = best_time(lambda: [hessian_vector_product(H.gradsH, H.params, split(v)) for v in V[:4]], repeats=repeats)
        top = H.eigenvalues(maxIter=50, top_n=1)[0][0]
        return {"status": "ok", "version": getattr(pyhessian, "__version__", "0.1"), "s_per_vector": t / 4,
                "max_rel_diff_vs_sdcompress": float((hv - ref).abs().max() / ref.abs().max()),
                "power_iteration_top_eigenvalue": float(top),
                "note": "double backward with the graph kept from its constructor; power iteration returns the largest |λ|"}
    except Exception as exc:  # noqa: BLE001 - record why a third-party library failed on this model
        return {"status": "failed", "error": f"{type(exc).__name__}: {exc}"[:400]}


def bench_curvlinops(s: dict[str, Any], k: int, repeats: int) -> dict[str, Any]:
    try:
        import curvlinops
        from curvlinops import HessianLinearOperator
    except ImportError as exc:
        return {"status": "not installed", "error": f"{exc}; pip install curvlinops-for-pytorch"}
    model, loss = s["tensor_model"], s["loss"]
    try:
        params = [p for p in model.parameters() if p.requires_grad]
        H = HessianLinearOperator(model, nn.CrossEntropyLoss(), params, [(s["X"], s["y"])], progressbar=False)
        V = torch.randn(k, loss.d, generator=torch.Generator().manual_seed(0))
        hv = (H @ V[:2].T).T
        ref = batched_hvp(loss, s["batch"], V[:2], method="vmap")
        t = best_time(lambda: H @ V.T, repeats=repeats)
        return {"status": "ok", "version": getattr(curvlinops, "__version__", "3.x"), "s_per_vector": t / k,
                "max_rel_diff_vs_sdcompress": float((hv - ref).abs().max() / ref.abs().max()),
                "note": f"H @ (d × {k}) block: vmap of jvp over jacrev (the forward-over-jacrev path with torch 2.13's "
                        "LayerNorm error, compare the 'jvp of jacrev' row)"}
    except Exception as exc:  # noqa: BLE001
        return {"status": "failed", "error": f"{type(exc).__name__}: {exc}"[:400]}


# --- 1b. HVP cost in plain gradients, side by side with PyHessian (results/bench/hvp.*) --------------


def hvp_setups() -> dict[str, dict[str, Any]]:
    """A 120k GPT-2 (tiny-gpt2 at width 64), tiny-gpt2 and the digits MLP, each with one batch."""
    out = {}
    ids = BatchStream(pydoc(block_size=64).train, 8, seed=0).batch(0)["input_ids"]
    for name, kw in (("gpt2-120k", {"n_embd": 64}), ("tiny-gpt2", {})):
        m = tiny_gpt2(seed=0, **kw).eval()
        out[name] = dict(model=m, loss=FunctionalLoss(m), batch={"input_ids": ids, "labels": ids}, tensor_model=LogitsOnly(m),
                         X=ids, y=ids[:, 1:].reshape(-1), batch_desc="8 × 64 tokens")
    torch.manual_seed(0)
    mlp = MLP((64, 16, 16, 10))
    x, y = BatchStream(digits().train, 64, seed=0).batch(0)
    out["mlp"] = dict(model=mlp, loss=FunctionalLoss(mlp), batch=(x, y), tensor_model=mlp, X=x, y=y, batch_desc="64 images")
    return out


def bench_hvp_cost(s: dict[str, Any], rounds: int, k: int = 32) -> dict[str, Any]:
    """Per-vector cost of each path in plain gradients, measured in ``rounds`` interleaved rounds.

    Each round times every path (best of 3 × ≥ 0.2 s) and divides by that round's plain
    gradient (``loss.backward()`` on the model's own parameters), so a load change between
    rounds moves numerator and denominator together. Reported: median and [min, max].
    """
    from sdcompress.linalg import HessianOperator
    from sdcompress.models.functional import model_loss

    model, loss, batch = s["model"], s["loss"], s["batch"]
    w = loss.params_vector()
    gen = torch.Generator().manual_seed(0)
    v, V = torch.randn(loss.d, generator=gen), torch.randn(k, loss.d, generator=gen)
    op = HessianOperator(loss, batch, w)
    op.matvec(v)  # builds the kept graph once, as a Lanczos run does

    def plain() -> None:
        model.zero_grad(set_to_none=True)
        model_loss(model, batch).backward()

    def functional() -> None:
        x = w.detach().requires_grad_(True)
        torch.autograd.grad(loss(x, batch), x)

    paths: dict[str, tuple[Callable[[], Any], int]] = {
        "plain gradient": (plain, 1),
        "functional gradient": (functional, 1),
        "HVP, single vector (default: Lanczos/SLQ)": (lambda: op.matvec(v), 1),
        f"HVP, block of {k} (default on CPU)": (lambda: op.matmat(V), k),
        f"HVP, block of {k}, vmap forward-over-reverse": (lambda: batched_hvp(loss, batch, V, w, method="vmap", chunk_size=None), k),
        "gradient graph build (once per operator)": (lambda: GradientGraph(loss, batch, w), 1),
    }
    check = {f"HVP, block of {k} (default on CPU)": op.matmat(V[:3])}
    try:
        from pyhessian import hessian as PyHessian
        from pyhessian.utils import hessian_vector_product

        H = PyHessian(s["tensor_model"], nn.CrossEntropyLoss(), data=(s["X"], s["y"]), cuda=False)
        split = lambda u: [t.view_as(p) for t, p in zip(u.split([p.numel() for p in H.params]), H.params)]  # noqa: E731
        vs = split(v)
        paths["PyHessian, single vector"] = (lambda: hessian_vector_product(H.gradsH, H.params, vs), 1)
        check["PyHessian, single vector"] = torch.stack([torch.cat([o.reshape(-1) for o in hessian_vector_product(H.gradsH, H.params, split(u))]) for u in V[:3]])
        pyh = "PyHessian 0.1"
    except ImportError as exc:
        pyh = f"not installed ({exc}); pip install pyhessian"
    ref = batched_hvp(loss, batch, V[:3], w, method="vmap")
    diffs = {name: float((c - ref).abs().max() / ref.abs().max()) for name, c in check.items()}
    times: dict[str, list[float]] = {name: [] for name in paths}
    ratios: dict[str, list[float]] = {name: [] for name in paths}
    for _ in range(rounds):
        for name, (fn, per) in paths.items():
            times[name].append(best_time(fn, repeats=3, min_time=0.2) / per)
        for name in paths:
            ratios[name].append(times[name][-1] / times["plain gradient"][-1])
    out: dict[str, Any] = {"d": loss.d, "batch": s["batch_desc"], "pyhessian": pyh, "rounds": rounds, "paths": {}}
    for name in paths:
        r = sorted(ratios[name])
        out["paths"][name] = {"gradients_median": float(np.median(r)), "gradients_min": r[0], "gradients_max": r[-1],
                              "ms_median": 1e3 * float(np.median(times[name])), "max_rel_diff_vs_vmap": diffs.get(name)}
        logger.info("  %-50s %.2f [%.2f, %.2f] gradients", name, np.median(r), r[0], r[-1])
    return out


def hvp_markdown(res: dict[str, Any]) -> str:
    m = res["machine"]
    models = list(res["models"])
    lines = ["# Hessian-vector product cost, in plain gradients per vector", "",
             f"Machine: {m['cpu']}, {m['cores']} cores, torch {m['torch']}, 1 thread; load average {m['load_average']} at start, "
             f"{m['load_end']} at the end. Command: `{res['command']}` ({res['seconds']:.0f} s).", "",
             f"Each cell: median over {res['models'][models[0]]['rounds']} interleaved rounds of (time per vector) / (time of a plain "
             "gradient, `loss.backward()` on the model's parameters, in the same round), [min, max] over rounds; ms per vector "
             "(median) after it. PyHessian runs in the same process on the same model and batch.", "",
             "| path | " + " | ".join(f"{n} (d = {res['models'][n]['d']:,}, {res['models'][n]['batch']})" for n in models) + " |",
             "| --- | " + " | ".join("---:" for _ in models) + " |"]
    for name in res["models"][models[0]]["paths"]:
        cells = []
        for n in models:
            r = res["models"][n]["paths"].get(name)
            cells.append("—" if r is None else f"{r['gradients_median']:.2f} [{r['gradients_min']:.2f}, {r['gradients_max']:.2f}], {r['ms_median']:.3g} ms")
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    agree = []
    for n in models:
        parts = [f"{k} {v['max_rel_diff_vs_vmap']:.1e}" for k, v in res["models"][n]["paths"].items() if v["max_rel_diff_vs_vmap"] is not None]
        agree.append(f"{n}: " + ", ".join(parts))
    lines += ["", "Agreement with vmap forward-over-reverse (max |diff| / max |entry|, float32): " + "; ".join(agree) + ".", ""]
    return "\n".join(lines)


# --- 2. Lyapunov step -----------------------------------------------------------------------------


def bench_lyapunov(s: dict[str, Any], ms: list[int], steps: int, repeats: int) -> dict[str, Any]:
    loss, batch = s["loss"], s["batch"]
    w = loss.params_vector()
    t_grad = best_time(lambda: sharded_grad(loss, batch, w), repeats=repeats)
    out: dict[str, Any] = {"gradient_s": t_grad, "d": loss.d, "steps_timed": steps}
    try:
        from sdcompress.estimator.lyapunov_sgd import lyapunov_sd
    except ImportError as exc:
        out["error"] = f"sdcompress.estimator.lyapunov_sgd unavailable: {exc}"
        return out
    for m in ms:
        cfg = EstimateConfig(method="lyapunov", lyapunov_exponents=m, lyapunov_steps=steps + 1, lyapunov_warmup=1)
        best = float("inf")
        for _ in range(max(1, repeats // 2)):
            start = time.perf_counter()
            est = lyapunov_sd(loss, [batch] * (steps + 1), lr=0.1, config=cfg)
            best = min(best, (time.perf_counter() - start) / (steps + 1))
        out[str(m)] = {"s_per_step": best, "gradient_equivalents": best / t_grad, "hvp_per_step": est.n_hvp / (steps + 1)}
        logger.info("  Lyapunov m=%d: %.3g s/step = %.1f gradients", m, best, best / t_grad)
    return out


# --- 3. SD by density methods vs exact -----------------------------------------------------------------


def train_eos(lr: float, wd: float, epochs: int) -> nn.Module:
    """The digits MLP trained with plain SGD (constant η, coupled weight decay)."""
    data = digits()
    torch.manual_seed(0)
    model = MLP((64, 16, 16, 10))
    stream = BatchStream(data.train, 64, seed=0)
    opt = torch.optim.SGD(model.parameters(), lr=lr, weight_decay=wd)
    for t in range(epochs * stream.steps_per_epoch):
        x, y = stream.batch(t)
        loss = nn.functional.cross_entropy(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    return model.eval()


def bench_sd(settings: list[tuple[float, float, int]], quick: bool) -> list[dict[str, Any]]:
    rows = []
    for lr, wd, epochs in settings:
        model = train_eos(lr, wd, epochs)
        stream = BatchStream(digits().train, 64, seed=1)
        cfg = EstimateConfig(n_batches=4 if quick else 20, slq_runs=8 if quick else 32, lanczos_steps=30 if quick else 80)
        row: dict[str, Any] = {"lr": lr, "weight_decay": wd, "epochs": epochs, "batch_size": 64}
        exact = estimate_sd(model, stream, lr=lr, weight_decay=wd, method="exact", config=cfg)
        row["exact"] = {"sd": exact.sd, "sd_over_d": exact.sd_over_d, "interval": exact.sd_interval, "seconds": exact.wall_time_s,
                        "n_hvp": exact.n_hvp, "n_neutral": exact.n_neutral, "top_eigenvalue": exact.extras["top_eigenvalue"],
                        "two_over_lr": 2 / lr, "n_batches": cfg.n_batches}
        for method in ("slq", "kde", "ps"):
            est = estimate_sd(model, stream, lr=lr, weight_decay=wd, method=method, config=cfg)
            row[method] = {"sd": est.sd, "ratio_to_exact": est.sd / exact.sd, "interval": est.sd_interval, "seconds": est.wall_time_s,
                           "n_hvp": est.n_hvp, "slq_runs": cfg.slq_runs, "lanczos_steps": cfg.lanczos_steps}
            logger.info("  η=%g wd=%g %s: SD %.1f vs exact %.1f (%.3f)", lr, wd, method, est.sd, exact.sd, est.sd / exact.sd)
        rows.append(row)
    return rows


def default_path_summary(hvp: dict[str, Any]) -> str:
    """What ``hvp_method="auto"`` does, next to which path measured fastest here."""
    parts = []
    for name, r in hvp.items():
        paths = {k: v["s_per_vector"] for k, v in r["paths"].items() if not k.startswith(("graph build", "jvp of jacrev"))}
        single = {k: v for k, v in paths.items() if k != "vmap forward-over-reverse"}
        parts.append(f"{name}: fastest single-vector path {min(single, key=single.get)}, fastest block path {min(paths, key=paths.get)}")
    return ("auto = double backward with the graph kept for single vectors (Lanczos, SLQ) and, on CPU, for blocks; "
            "vmap forward-over-reverse for blocks on CUDA (not measured here). Measured: " + "; ".join(parts) + ".")


# --- report -----------------------------------------------------------------------------------------------


def markdown(res: dict[str, Any]) -> str:
    lines = ["# Estimator benchmark", "", f"Machine: {res['machine']['cpu']}, torch {res['machine']['torch']}, "
             f"{res['machine']['threads']} thread(s), load average at start {res['machine']['load_average']}. "
             "Times are minima over repeats.", "", "## Hessian-vector products (ms per vector)", ""]
    models = list(res["hvp"])
    lines += ["| path | " + " | ".join(f"{m} (d = {res['hvp'][m]['d']:,}, {res['hvp'][m]['batch']})" for m in models) + " |",
              "| --- | " + " | ".join("---:" for _ in models) + " |"]
    names = list(res["hvp"][models[0]]["paths"])
    for name in names:
        cells = []
        for m in models:
            row = res["hvp"][m]["paths"][name]
            diff = f" (rel. diff {row['max_rel_diff_vs_vmap']:.1e})" if "max_rel_diff_vs_vmap" in row else ""
            cells.append(f"{1e3 * row['s_per_vector']:.3g}{diff}")
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    for lib in ("pyhessian", "curvlinops"):
        cells = []
        for m in models:
            r = res["hvp"][m][lib]
            cells.append(f"{1e3 * r['s_per_vector']:.3g} (rel. diff {r['max_rel_diff_vs_sdcompress']:.1e})" if r["status"] == "ok"
                         else f"{r['status']}: {r['error'][:80]}")
        lines.append(f"| {lib} | " + " | ".join(cells) + " |")
    lines += ["", "Rel. diff: largest |difference| to the vmap forward-over-reverse product over its largest entry (float32).",
              "", f"Default (`hvp_method=\"auto\"`): {res['default_path']}", "",
              "## One Lyapunov step (m HVPs + d × m QR + the SGD gradient), in gradient evaluations", "",
              "| model | gradient (ms) | " + " | ".join(f"m = {m}" for m in res["lyapunov_m"]) + " |",
              "| --- | ---: | " + " | ".join("---:" for _ in res["lyapunov_m"]) + " |"]
    for m_name, r in res["lyapunov"].items():
        cells = [f"{r[str(m)]['gradient_equivalents']:.1f} ({r[str(m)]['s_per_step']:.3g} s)" if str(m) in r else r.get("error", "-")
                 for m in res["lyapunov_m"]]
        lines.append(f"| {m_name} | {1e3 * r['gradient_s']:.3g} | " + " | ".join(cells) + " |")
    lines += ["", "## SD of the digits MLP at the edge of stability: density methods vs exact", "",
              "| η | wd | λ_max / (2/η) | exact SD (SD/d) [95% CI] | time, HVPs | SD-SLQ | SD-KDE | SD-PS |",
              "| ---: | ---: | ---: | --- | --- | --- | --- | --- |"]
    for r in res["sd"]:
        e = r["exact"]
        ci = f"[{e['interval'][0]:.0f}, {e['interval'][1]:.0f}]" if e["interval"] else ""
        cells = [f"{r[m]['sd']:.1f} ({r[m]['ratio_to_exact']:.3f}×), {r[m]['seconds']:.1f} s, {r[m]['n_hvp']} HVPs" for m in ("slq", "kde", "ps")]
        lines.append(f"| {r['lr']} | {r['weight_decay']} | {e['top_eigenvalue'] / e['two_over_lr']:.2f} | {e['sd']:.1f} ({e['sd_over_d']:.3f}) {ci} | "
                     f"{e['seconds']:.1f} s, {e['n_hvp']} | " + " | ".join(cells) + " |")
    lines += ["", f"Exact: {res['sd'][0]['exact']['n_batches']} minibatches (dense Hessians, d HVP-equivalents each). "
              f"Density methods: {res['sd'][0]['slq']['slq_runs']} SLQ runs × {res['sd'][0]['slq']['lanczos_steps']} Lanczos steps, "
              "each run on a fresh minibatch of the same seeded stream (the paper's varying operator), so the ratio includes "
              "minibatch sampling noise as well as the estimator's error. λ_max / (2/η): the mean over the exact "
              "minibatches of the top eigenvalue of H_B, over 2/η (≈ 1 at the edge of stability).", ""]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="tiny settings (smoke test)")
    parser.add_argument("--output-dir", default=str(OUT), help="where estimator.json and estimator.md go")
    parser.add_argument("--hvp-only", action="store_true", help="only the HVP cost table (hvp.json, hvp.md)")
    parser.add_argument("--rounds", type=int, default=7, help="interleaved rounds of the HVP cost table")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    torch.set_num_threads(1)
    if args.hvp_only:
        t0 = time.perf_counter()
        res_h: dict[str, Any] = {"machine": {"cpu": platform.processor() or platform.machine(), "cores": os.cpu_count(), "threads": 1,
                                             "torch": torch.__version__, "load_average": [round(x, 2) for x in os.getloadavg()]},
                                 "command": "python benchmarks/estimator.py " + " ".join(sys.argv[1:]), "models": {}}
        for name, s in hvp_setups().items():
            logger.info("HVP cost on %s (d = %d)", name, s["loss"].d)
            res_h["models"][name] = bench_hvp_cost(s, 2 if args.quick else args.rounds)
        res_h["machine"]["load_end"] = [round(x, 2) for x in os.getloadavg()]
        res_h["seconds"] = time.perf_counter() - t0
        out = Path(args.output_dir)
        write_json_atomic(out / "hvp.json", res_h)
        write_text_atomic(out / "hvp.md", hvp_markdown(res_h))
        logger.info("wrote %s", out / "hvp.md")
        return
    repeats = 2 if args.quick else 5
    k = 8 if args.quick else 32
    res: dict[str, Any] = {"machine": {"cpu": platform.processor() or platform.machine(), "cores": os.cpu_count(), "threads": 1,
                                       "torch": torch.__version__, "load_average": [round(x, 2) for x in os.getloadavg()],
                                       "device": "cpu"}}
    res["hvp"], res["lyapunov"] = {}, {}
    res["lyapunov_m"] = [8, 32, 64]
    for name, s in setups(args.quick).items():
        logger.info("HVP paths on %s (d = %d)", name, s["loss"].d)
        res["hvp"][name] = {"d": s["loss"].d, "batch": s["batch_desc"], "paths": bench_hvp(s, k, repeats)}
        res["hvp"][name]["pyhessian"] = bench_pyhessian(s, k, repeats)
        res["hvp"][name]["curvlinops"] = bench_curvlinops(s, k, repeats)
        logger.info("Lyapunov steps on %s", name)
        res["lyapunov"][name] = bench_lyapunov(s, res["lyapunov_m"], 1 if args.quick else 3, repeats)
    res["default_path"] = default_path_summary(res["hvp"])
    settings = [(0.5, 0.01, 60), (0.2, 0.0, 150)] if not args.quick else [(0.5, 0.01, 10)]
    logger.info("SD by density methods vs exact")
    res["sd"] = bench_sd(settings, args.quick)
    out = Path(args.output_dir)
    write_json_atomic(out / "estimator.json", res)
    write_text_atomic(out / "estimator.md", markdown(res))
    logger.info("wrote %s and %s", out / "estimator.json", out / "estimator.md")


if __name__ == "__main__":
    main()
