"""Data parallelism for curvature: each process takes a shard of the minibatch, computes
its Hessian-vector products (or gradient), and the shards are all-reduced.

For a mean loss L_B = (1/n) Σ_i ℓ_i split into shards S_r of sizes n_r,
H_B = Σ_r (n_r / n) H_{S_r}, so each process scales its shard's product by n_r / n and
the sum over processes is the single-process product up to floating-point rounding.
With one process (or ``torch.distributed`` not initialised) nothing changes.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
import torch.distributed as dist
from torch import Tensor

from sdcompress.data.core import Batch, batch_size_of


def world() -> tuple[int, int]:
    """(rank, world_size) of the default process group, (0, 1) when not distributed."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def is_distributed() -> bool:
    return world()[1] > 1


def shard_batch(batch: Batch) -> tuple[Batch, float]:
    """This process's contiguous shard of ``batch`` and its weight n_r / n.

    Shards differ in size by at most one example; a process whose shard is empty gets
    weight 0 and an empty-shard-safe one-example slice (its product is multiplied by 0).
    """
    rank, size = world()
    n = batch_size_of(batch)
    if size == 1:
        return batch, 1.0
    bounds = [round(i * n / size) for i in range(size + 1)]
    lo, hi = bounds[rank], bounds[rank + 1]
    weight = (hi - lo) / n
    if hi == lo:  # more processes than examples: compute on one row, count it 0
        lo, hi, weight = 0, 1, 0.0
    if isinstance(batch, Mapping):
        return {k: v[lo:hi] for k, v in batch.items()}, weight
    return tuple(t[lo:hi] for t in batch), weight  # type: ignore[return-value]


def all_reduce_sum(t: Tensor) -> Tensor:
    """Sum ``t`` over processes (in place, returned); identity with one process."""
    if is_distributed():
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return t


def broadcast_(t: Tensor, src: int = 0) -> Tensor:
    """Make ``t`` equal to process ``src``'s copy (identity with one process)."""
    if is_distributed():
        dist.broadcast(t, src=src)
    return t


def sharded_grad(loss, batch: Batch, w: Tensor) -> Tensor:  # loss: FunctionalLoss
    """∇L_B(w), computed data-parallel when distributed."""
    shard, weight = shard_batch(batch)
    g = torch.func.grad(lambda x: loss(x, shard))(w)
    if is_distributed():
        g = all_reduce_sum(g * weight)
    return g
