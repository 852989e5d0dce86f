"""Hutchinson's trace estimator.

    tr(A) = E_v[vᵀ A v]  for v with E[v vᵀ] = I;  estimate: (1/n) Σ_i v_iᵀ A v_i

with Rademacher probes (entries ±1), which have the smallest variance among i.i.d.
probes: Var[vᵀAv] = 2 Σ_{i≠j} A_ij² (the diagonal contributes nothing).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from sdcompress.errors import ConfigError
from sdcompress.linalg.operators import SymmetricOperator


def rademacher(n: int, d: int, *, generator: torch.Generator, dtype: torch.dtype, device: torch.device | str) -> Tensor:
    """(n, d) random signs, drawn on the CPU generator (so results do not depend on the device)."""
    signs = torch.randint(0, 2, (n, d), generator=generator, dtype=torch.int8)
    return (2 * signs - 1).to(dtype=dtype, device=device)


@dataclass(frozen=True)
class TraceEstimate:
    """A stochastic trace estimate.

    Attributes:
        value: (1/n) Σ vᵢᵀ A vᵢ.
        stderr: standard error of the mean (sample std / √n; NaN for n = 1).
        n_hvp: operator products spent (= number of probes).
        samples: the n per-probe values vᵢᵀ A vᵢ.
    """

    value: float
    stderr: float
    n_hvp: int
    samples: tuple[float, ...]


def hutchinson_trace(op: SymmetricOperator, n_probes: int = 32, *, seed: int = 0, chunk: int = 16) -> TraceEstimate:
    """Estimate tr(A) with Rademacher probes.

    Args:
        op: the symmetric operator A (e.g. a :class:`~sdcompress.linalg.HessianOperator`).
        n_probes: number of probes n ≥ 1.
        seed: seeds the probes.
        chunk: probes multiplied per ``matmat`` call (vectorised Hessian-vector products).

    Returns:
        A :class:`TraceEstimate`.

    Raises:
        ConfigError: ``n_probes < 1``.
    """
    if n_probes < 1:
        raise ConfigError(f"Hutchinson needs at least one probe, got n_probes={n_probes}")
    g = torch.Generator(device="cpu").manual_seed(seed)
    start = op.n_matvecs
    samples: list[float] = []
    for i in range(0, n_probes, max(1, chunk)):
        V = rademacher(min(chunk, n_probes - i), op.d, generator=g, dtype=op.dtype, device=op.device)
        AV = op.matmat(V)
        samples.extend((V * AV).sum(dim=1).double().tolist())
    vals = torch.tensor(samples, dtype=torch.float64)
    stderr = float(vals.std(unbiased=True) / math.sqrt(len(vals))) if len(vals) > 1 else float("nan")
    return TraceEstimate(float(vals.mean()), stderr, op.n_matvecs - start, tuple(samples))
