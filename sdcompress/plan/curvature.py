"""Curvature restricted to each target module: the statistics the SD planner and the HAWQ baselines split by.

For a target weight ``W_m`` (an ``out × in`` map) and the minibatch loss ``L_B``, let
``H_mm`` be the diagonal block of the Hessian that acts on ``W_m`` alone. Two numbers per
module are measured, by reverse-over-reverse Hessian-vector products on the model (the
gradient graph is built once per minibatch, then one backward pass per product; never
``jvp(jacrev)``):

- ``trace`` = tr(H_mm), Hutchinson with Rademacher probes ``v`` over all target weights:
  ``E[v_mᵀ (H v)_m] = tr(H_mm)`` because the cross terms have mean zero, so one product per
  probe serves every module (PAPER.md §8, "v_bᵀ H v"). Mean over minibatches and probes.
  HAWQ's sensitivity (Dong et al., NeurIPS 2020) is this trace over the block's size.
- ``costs[k]`` = ½ δ_kᵀ H_mm δ_k for the truncation ``δ_k = W − W_k`` of the weight to its
  best rank-k approximation (plain SVD): the second-order prediction of the loss a rank-k
  factorisation of this module adds when the others are left alone. Exact on the
  quadratic model of the loss; one product per (module, rank, minibatch). Ranks form a
  grid over the ranks whose factorisation is smaller than the dense weight
  (``k(out + in) < out·in``; every rank up to ``dense_grid``, else about ``2·grid``
  points); between grid points :meth:`ModuleCurvature.cost` interpolates linearly, and
  above the grid it is 0 (the planner keeps such a module dense).

Everything is measured in float64 of the model's own outputs (products are taken in the
model's dtype, sums in float64); the model is not changed (``torch.autograd.grad`` leaves
``.grad`` untouched) and the result depends only on the batches and ``seed``.
"""

from __future__ import annotations

import bisect
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import torch
from torch import nn

from sdcompress.data.core import Batch, move_batch
from sdcompress.errors import PlanError
from sdcompress.models.functional import model_loss
from sdcompress.plan.targets import ModuleInfo
from sdcompress.progress import progress


@dataclass(frozen=True)
class ModuleCurvature:
    """Curvature of the loss restricted to one module's weight.

    Attributes:
        trace: Hutchinson estimate of tr(H_mm) (mean over minibatches and probes).
        ranks: increasing ranks at which the truncation cost was measured.
        costs: ½ δ_kᵀ H_mm δ_k for each rank in ``ranks`` (may be slightly negative where
            the minibatch Hessian is indefinite; users clamp at 0).
        sq_norms: ‖δ_k‖²_F = Σ_{j>k} σ_j² for each rank in ``ranks``.
        numel: the weight's size (HAWQ divides the trace by it).
    """

    trace: float
    ranks: tuple[int, ...]
    costs: tuple[float, ...]
    sq_norms: tuple[float, ...]
    numel: int

    def cost(self, k: int) -> float:
        """½ δ_kᵀ H_mm δ_k at rank ``k``, linear between measured ranks, ≥ 0 (0 above the grid)."""
        return max(_interp(self.ranks, self.costs, k), 0.0)

    def to_dict(self) -> dict:
        return {"trace": self.trace, "ranks": list(self.ranks), "costs": list(self.costs),
                "sq_norms": list(self.sq_norms), "numel": self.numel}


def _interp(xs: Sequence[int], ys: Sequence[float], x: int) -> float:
    if x >= xs[-1]:
        return float(ys[-1]) if x == xs[-1] else 0.0
    if x <= xs[0]:
        return float(ys[0])
    j = bisect.bisect_left(xs, x)
    if xs[j] == x:
        return float(ys[j])
    x0, x1, y0, y1 = xs[j - 1], xs[j], ys[j - 1], ys[j]
    return float(y0 + (y1 - y0) * (x - x0) / (x1 - x0))


def rank_grid(full: int, *, dense_grid: int = 32, grid: int = 24) -> list[int]:
    """Ranks at which truncation costs are measured: all of ``1..full`` when ``full ≤
    dense_grid``, else ``grid`` roughly geometric points from 1 to ``full`` (both included)."""
    if full <= dense_grid:
        return list(range(1, full + 1))
    pts = {1, full}
    for j in range(grid):
        pts.add(max(1, min(full, round(math.exp(math.log(full) * j / (grid - 1))))))
        pts.add(max(1, min(full, round(full * (j + 1) / grid))))
    return sorted(pts)


def module_curvature(
    model: nn.Module,
    modules: Sequence[ModuleInfo],
    batches: Sequence[Batch],
    *,
    loss_fn=torch.nn.functional.cross_entropy,
    probes: int = 8,
    seed: int = 0,
    dense_grid: int = 32,
    grid: int = 24,
) -> dict[str, ModuleCurvature]:
    """Per-module Hessian trace and rank-truncation costs (see the module docstring).

    Args:
        model: the trained model (not changed).
        modules: target modules (:func:`sdcompress.plan.targets.describe_modules`).
        batches: minibatches the Hessian is averaged over (at least one).
        loss_fn: loss on (logits, targets) for tuple batches.
        probes: Rademacher probes per minibatch for the traces.
        seed: seed of the probes.
        dense_grid, grid: see :func:`rank_grid`.

    Returns:
        ``{module name: ModuleCurvature}``.

    Raises:
        PlanError: no batches.
    """
    if not batches:
        raise PlanError("module_curvature needs at least one minibatch: pass batches (or curvature_batches ≥ 1)")
    named = dict(model.named_parameters())
    weights = [named[m.weight] for m in modules]
    device = weights[0].device
    deltas: dict[str, list[tuple[int, torch.Tensor, float]]] = {}
    for m, W in zip(modules, weights):
        Wd = W.detach().double()
        Wd = Wd.T if m.transposed else Wd  # (out, in)
        U, S, Vh = torch.linalg.svd(Wd, full_matrices=False)
        rows = []
        o, i = m.out_features, m.in_features
        useful = max(1, max((k for k in range(1, min(o, i) + 1) if k * (o + i) < o * i), default=1))
        for k in rank_grid(useful, dense_grid=dense_grid, grid=grid):
            delta = Wd - (U[:, :k] * S[:k]) @ Vh[:k]
            stored = delta.T if m.transposed else delta
            rows.append((k, stored.to(W.dtype).contiguous(), float((S[k:] ** 2).sum())))
        deltas[m.name] = rows
    gen = torch.Generator().manual_seed(seed)
    traces = {m.name: 0.0 for m in modules}
    costs = {m.name: [0.0] * len(deltas[m.name]) for m in modules}
    for batch in progress(list(batches), desc="curvature", unit="batch", total=len(batches)):
        batch = move_batch(batch, device)
        with torch.enable_grad():
            grads = torch.autograd.grad(model_loss(model, batch, loss_fn), weights, create_graph=True)
        for _ in range(probes):
            vs = [(2 * torch.randint(0, 2, W.shape, generator=gen, dtype=torch.int8) - 1).to(W.dtype).to(device) for W in weights]
            hv = torch.autograd.grad(grads, weights, vs, retain_graph=True)
            for m, v, h in zip(modules, vs, hv):
                traces[m.name] += float((v.double() * h.double()).sum()) / (probes * len(batches))
        for m, W, g in zip(modules, weights, grads):
            for j, (_, delta, _) in enumerate(deltas[m.name]):
                (h,) = torch.autograd.grad(g, W, delta, retain_graph=True)
                costs[m.name][j] += 0.5 * float((delta.double() * h.double()).sum()) / len(batches)
        del grads
    return {
        m.name: ModuleCurvature(
            trace=traces[m.name],
            ranks=tuple(k for k, _, _ in deltas[m.name]),
            costs=tuple(costs[m.name]),
            sq_norms=tuple(s for _, _, s in deltas[m.name]),
            numel=m.numel,
        )
        for m in modules
    }


def curvature_from_dict(data: Mapping[str, Mapping]) -> dict[str, ModuleCurvature]:
    """Inverse of ``{k: v.to_dict()}``."""
    return {k: ModuleCurvature(float(v["trace"]), tuple(int(x) for x in v["ranks"]), tuple(float(x) for x in v["costs"]),
                               tuple(float(x) for x in v["sq_norms"]), int(v["numel"])) for k, v in data.items()}


__all__ = ["ModuleCurvature", "curvature_from_dict", "module_curvature", "rank_grid"]
