"""The pre-flight's smaller probes: what the plan-and-compress stage runs besides
Hessian-vector products, and what the estimators spend besides their products.

Why: one gradient and one product predict the products well, but on GPT-2 small the
compression stage's float64 SVDs (48 matrices, seconds each) and the planner's
per-module curvature products (one backward pass through the graph of one module's
gradient: far cheaper than a whole-model product) dominate that stage, and on a small
model (d ≈ 10³) the estimators' Python work (Lanczos bookkeeping, the density grid,
the bootstrap, the Lyapunov QR) costs more than the products. Each is timed here once,
on the real weights and batch where there is one, and scaled by the settings:

- :func:`probe_compression`: a float64 SVD of each distinct target shape (up to
  ``MAX_SHAPES``, largest first; other shapes scaled by ``out·in·min(out, in)`` from
  the nearest timed one), the rebuilding of a rank-k truncation ``W − U_k S_k V_kᵀ``
  at two ranks (a line in k), and, on the larger batch of the product line (a cheap
  model) or the first ``n_small`` examples (a slow one), the planner's three kinds of
  curvature work: the gradient of the target weights with its
  graph, one Hutchinson probe (a backward pass over all target weights) and one
  module's truncation product (a backward pass to one weight; the mean over up to three
  modules spread through the network, since a module nearer the input has a longer
  path back).
- :func:`probe_overheads`: the same SLQ (Lanczos with block weights, then the density,
  pseudo-spectrum and bootstrap of :func:`~sdcompress.estimator.density_sd.density_estimate`)
  and the same Lyapunov QR loop as the estimate, run on a free diagonal operator at two
  sizes d' ≤ d and extrapolated linearly in d (every mode's non-product work is linear
  in d at fixed steps).
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import replace
from typing import Any, Sequence

import numpy as np
import torch

from sdcompress.data.core import Batch
from sdcompress.linalg.operators import SymmetricOperator
from sdcompress.pipeline.costs import Knobs, Probe, _head, _timed, shape_key, useful_rank

logger = logging.getLogger(__name__)

#: distinct target shapes whose SVD is timed (largest first); others are scaled by flops
MAX_SHAPES = 4
#: a gradient faster than this (seconds, at n_small) marks a cheap model: its curvature work is timed
#: on the larger batch of the product line and repeated (a slow model's once, on n_small examples)
CHEAP_GRADIENT_S = 2.0
#: sizes at which the estimators' non-product work is timed (capped at d)
OVERHEAD_SIZES = (4096, 1 << 22)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _once(fn: Any, device: torch.device) -> float:
    t = time.perf_counter()
    fn()
    _sync(device)
    return time.perf_counter() - t


def probe_compression(probe: Probe, model: torch.nn.Module, batch: Batch, modules: Sequence[Any], *,
                      loss_fn: Any = torch.nn.functional.cross_entropy, curvature: bool = True) -> Probe:
    """Time the compression stage's SVDs, truncation rebuilds and curvature products.

    Args:
        probe: the probe of :func:`~sdcompress.pipeline.costs.probe_costs` (``n_small`` is reused).
        model: the model (not changed; ``.grad`` untouched).
        batch: the real minibatch (on the model's device).
        modules: the target modules (:func:`sdcompress.plan.describe_modules`).
        loss_fn: loss on (logits, targets) for tuple batches.
        curvature: also time the per-module curvature products.

    Returns:
        ``probe`` with ``svd_s``, ``t_curv_graph``, ``t_curv_probe`` and ``t_curv_product`` set.
    """
    if not modules:
        return probe
    from sdcompress.models.functional import model_loss

    start = time.perf_counter()
    named = dict(model.named_parameters())
    device = next(model.parameters()).device
    svd_s: dict[str, list[float]] = {}
    shapes = sorted({(m.out_features, m.in_features) for m in modules}, key=lambda s: -s[0] * s[1] * min(s))
    for o, i in shapes[:MAX_SHAPES]:
        m = next(x for x in modules if (x.out_features, x.in_features) == (o, i))
        W = named[m.weight].detach()
        Wd = (W.T if m.transposed else W).double()  # (out, in), as the planner and compress_ take it
        t_svd = _once(lambda: torch.linalg.svd(Wd, full_matrices=False), device)
        U, S, Vh = torch.linalg.svd(Wd, full_matrices=False)
        k2 = max(2, useful_rank(o, i) // 2)

        def rebuild(k: int) -> None:  # mirrors sdcompress.plan.curvature.module_curvature
            delta = Wd - (U[:, :k] * S[:k]) @ Vh[:k]
            (delta.T if m.transposed else delta).to(W.dtype).contiguous()

        svd_s[shape_key(o, i)] = [t_svd, _timed(lambda: rebuild(1), device, 0.05, 3),
                                  _timed(lambda: rebuild(k2), device, 0.05, 3), float(k2)]
    out = replace(probe, svd_s=svd_s)
    if curvature:
        # on the larger head of the product line when the model is cheap (as the planner's batch), else n_small
        n_curv = probe.hvp_sizes[-1] if probe.hvp_sizes and probe.t_grad < CHEAP_GRADIENT_S else probe.n_small
        small = _head(batch, n_curv)
        weights = [named[m.weight] for m in modules]
        holder: dict[str, Any] = {}

        def graph() -> None:
            with torch.enable_grad():
                holder["g"] = torch.autograd.grad(model_loss(model, small, loss_fn), weights, create_graph=True)

        t_graph = _timed(graph, device, 0.1, 3) if probe.t_grad < CHEAP_GRADIENT_S else _once(graph, device)
        grads = holder.pop("g")
        gen = torch.Generator().manual_seed(0)
        vs = [(2 * torch.randint(0, 2, W.shape, generator=gen, dtype=torch.int8) - 1).to(W.dtype).to(device) for W in weights]
        t_probe = _timed(lambda: torch.autograd.grad(grads, weights, vs, retain_graph=True), device, 0.2, 3)
        picks = sorted({0, len(modules) // 2, len(modules) - 1})
        t_prod = [_timed(lambda j=j: torch.autograd.grad(grads[j], weights[j], vs[j], retain_graph=True), device, 0.1, 3)
                  for j in picks]
        del grads
        out = replace(out, t_curv_graph=t_graph, t_curv_probe=t_probe, t_curv_product=float(np.mean(t_prod)),
                      n_curv=n_curv)
    logger.debug("compression probe: %.2f s", time.perf_counter() - start)
    return replace(out, wall_time_s=out.wall_time_s + time.perf_counter() - start)


# ------------------------------------------------------------------------------ overheads


class _FreeDiagonal(SymmetricOperator):
    """A diagonal operator with distinct eigenvalues: its product costs O(d), so timing a
    Lanczos run on it times everything but the product."""

    def __init__(self, d: int, dtype: torch.dtype, device: torch.device) -> None:
        super().__init__()
        self.d, self.dtype, self.device = d, dtype, device
        self.diag = torch.linspace(-0.1, 1.0, d, dtype=dtype, device=device)

    def _matmat(self, V: torch.Tensor) -> torch.Tensor:
        return V * self.diag


def _scaled_blocks(sizes: Sequence[int], d_small: int) -> list[slice]:
    """The parameter blocks shrunk in proportion to fit ``d_small`` (each at least 1)."""
    total = max(sum(sizes), 1)
    n = min(len(sizes), d_small)
    cuts = [max(1, round(s * d_small / total)) for s in sizes[:n]]
    while sum(cuts) > d_small:  # rounding up many one-element blocks can overshoot
        j = max(range(n), key=lambda q: cuts[q])
        cuts[j] -= 1
    cuts[-1] += d_small - sum(cuts)
    out, start = [], 0
    for c in cuts:
        out.append(slice(start, start + c))
        start += c
    return out


def _slq_overhead(d: int, d_real: int, k: Knobs, mode: str, block_sizes: Sequence[int], estimate: Any,
                  dtype: torch.dtype, device: torch.device, lr: float, weight_decay: float) -> tuple[float, float]:
    """(seconds of the R Lanczos runs without products at size ``d``, seconds of the density step
    for dimension ``d_real``)."""
    from sdcompress.estimator.density_sd import density_estimate
    from sdcompress.linalg.slq import slq

    runs = min(k.slq_runs, 2)  # runs are alike: time two, scale to R
    op = _FreeDiagonal(d, dtype, device)
    blocks = _scaled_blocks(block_sizes, d) if block_sizes else None
    t = time.perf_counter()
    measure = slq(lambda r: op, runs, min(k.lanczos_steps, d), seed=0, reorth=mode, blocks=blocks, desc="overhead probe")
    _sync(device)
    per_run = (time.perf_counter() - t - runs * k.lanczos_steps * _matvec_seconds(op)) / runs
    # R runs' worth of nodes for the density step: the timed runs, repeated
    reps = math.ceil(k.slq_runs / runs)
    n = len(measure.nodes)
    tiled = replace(
        measure, nodes=np.tile(measure.nodes, reps)[: n * reps], tau=np.tile(measure.tau, reps),
        run=np.concatenate([measure.run + runs * j for j in range(reps)]), n_runs=runs * reps, d=d_real,
        traces=np.tile(measure.traces, reps), top=np.tile(measure.top, reps),
        block_weights=None if measure.block_weights is None else np.tile(measure.block_weights, (reps, 1)))
    cfg = estimate.with_overrides(slq_runs=runs * reps) if hasattr(estimate, "with_overrides") else estimate
    method = k.method if k.method in ("ps", "kde", "slq") else "ps"
    t = time.perf_counter()
    density_estimate(tiled, method, lr=lr, weight_decay=weight_decay, config=cfg)  # type: ignore[arg-type]
    return max(per_run, 0.0) * k.slq_runs, time.perf_counter() - t


def _matvec_seconds(op: _FreeDiagonal) -> float:
    v = torch.ones(op.d, dtype=op.dtype, device=op.device)
    return _timed(lambda: op._matmat(v[None]), op.device, 0.01, 5)


def _lyapunov_step_overhead(d: int, k: Knobs, dtype: torch.dtype, device: torch.device) -> float:
    """Seconds per Lyapunov step without products (QR of each frame, bookkeeping) at size ``d``."""
    from sdcompress.estimator.lyapunov import lyapunov_spectrum

    steps = max(2, min(k.lyap_steps, 6))
    m = min(k.lyap_m, d)

    def step_jvp(x: torch.Tensor, Q: torch.Tensor, t: int) -> tuple[torch.Tensor, torch.Tensor]:
        return x, 0.9 * Q

    twin = k.lyap_frames > 1
    lyap_logger = logging.getLogger("sdcompress.estimator.lyapunov")
    level = lyap_logger.level
    lyap_logger.setLevel(logging.WARNING)  # the stand-in operator's "Lyapunov dimension" is not the user's
    t = time.perf_counter()
    try:
        lyapunov_spectrum(lambda x: x, torch.zeros(d, dtype=dtype, device=device), m, steps, warmup=1, step_jvp_fn=step_jvp,
                          tol=1e-12 if twin else None, check_every=10 ** 6, twin_seed=1 if twin else None,
                          desc="overhead probe")
        _sync(device)
    finally:
        lyap_logger.setLevel(level)
    return (time.perf_counter() - t) / steps


def _line(d: int, sizes: Sequence[int], values: Sequence[float]) -> float:
    """A line through (sizes, values) evaluated at d (constant with one point)."""
    if len(sizes) < 2 or sizes[0] == sizes[-1]:
        return max(values[-1], 0.0)
    slope = max((values[-1] - values[0]) / (sizes[-1] - sizes[0]), 0.0)
    return max(values[-1] + slope * (d - sizes[-1]), 0.0)


def probe_overheads(probe: Probe, k: Knobs, block_sizes: Sequence[int], estimate: Any, *, lr: float,
                    weight_decay: float = 0.0, d: int | None = None) -> Probe:
    """Time the estimators' non-product work at the settings ``k`` (module docstring).

    Args:
        probe: the probe (its ``d``, dtype and device are used unless ``d`` is given).
        k: the settings (SLQ runs and steps, reorthogonalisation, Lyapunov m, frames, steps).
        block_sizes: sizes of the parameter tensors (the SLQ's per-block weights).
        estimate: the :class:`~sdcompress.estimator.EstimateConfig` (density and bootstrap settings).
        lr, weight_decay: η and wd (the density grid's exponents).
        d: the dimension to predict for (default ``probe.d``).

    Returns:
        ``probe`` with ``overhead`` set: ``slq_lanczos`` and ``slq_density`` (seconds per
        estimate at ``k.slq_runs`` × ``k.lanczos_steps``), ``lyap_step`` (seconds per step
        at ``k.lyap_m``), and the settings they were timed at.
    """
    from sdcompress.pipeline.costs import lanczos_mode

    start = time.perf_counter()
    d = probe.d if d is None else d
    dtype = {8: torch.float64, 4: torch.float32, 2: torch.float16}.get(probe.itemsize, torch.float32)
    device = torch.device(probe.device)
    sizes = sorted({min(d, s) for s in OVERHEAD_SIZES})
    over: dict[str, float] = {"slq_runs": float(k.slq_runs), "lanczos_steps": float(k.lanczos_steps),
                              "lyap_m": float(k.lyap_m), "lyap_frames": float(k.lyap_frames)}
    if k.method in ("ps", "kde", "slq"):
        mode = lanczos_mode(probe, k.lanczos_steps, k.lanczos_budget, k.reorth)
        runs = [_slq_overhead(s, d, k, mode, block_sizes, estimate, dtype, device, lr, weight_decay) for s in sizes]
        over["slq_lanczos"] = _line(d, sizes, [r[0] for r in runs])
        over["slq_density"] = float(np.mean([r[1] for r in runs]))
    if k.lyapunov or k.method == "lyapunov":
        over["lyap_step"] = _line(d, sizes, [_lyapunov_step_overhead(s, k, dtype, device) for s in sizes])
    over["wall_time_s"] = time.perf_counter() - start
    return replace(probe, overhead=over, wall_time_s=probe.wall_time_s + over["wall_time_s"])


__all__ = ["CHEAP_GRADIENT_S", "MAX_SHAPES", "OVERHEAD_SIZES", "probe_compression", "probe_overheads"]
