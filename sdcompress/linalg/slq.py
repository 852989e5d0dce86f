"""Stochastic Lanczos quadrature (SLQ) with a varying operator (PAPER.md §3).

Run r (r = 0, …, n − 1) takes its own operator A_r (the Hessian of a fresh minibatch
B_r), one Rademacher probe v_r (entries ±1, so ‖v_r‖² = d) and m Lanczos steps with full
reorthogonalisation started at q = v_r/√d. With T_r = U diag(θ) Uᵀ the m × m tridiagonal,
Gauss quadrature gives qᵀ f(A_r) q ≈ Σ_k τ_rk f(θ_rk) with τ_rk = U[0, k]², and since
vᵀ f(A) v = d · qᵀ f(A) q estimates tr f(A) = Σ_i f(α_i), the measure

    μ = (d / n) Σ_r Σ_k τ_rk δ(θ_rk)          (total mass d)

estimates the eigenvalue counting measure of the minibatch Hessian, averaged over
minibatches: ∫ f dμ ≈ E_B Σ_i f(α_i(H_B)). A run never mixes batches. Each run also
gives a Hutchinson trace sample d · T_r[0, 0] = v_rᵀ A_r v_r for free.

Per-block weights (PAPER.md §8). With ``blocks`` (slices of the flat parameter vector,
one per parameter tensor), each run records the dot products of its Lanczos vectors with
the probe restricted to each block, and node k of run r gets block weights
ω_rk,b = (C_r[:, b] · s_k) s_k[0] / ‖v_r‖ with Σ_b ω_rk,b = τ_rk, so that
(d/n) Σ_r Σ_k ω_rk,b f(θ_rk) estimates E_B tr(P_b f(H_B)): how much of f's mass lives in
block b. No extra operator products and no stored basis.

Cost: n · m operator products and O(n · m² · d) for the reorthogonalisation; memory
O(m · d) for one run's Krylov basis with full reorthogonalisation, O(d) without
(``reorth``/``memory_budget``, see :mod:`sdcompress.linalg.lanczos`).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Callable, Sequence

import numpy as np
import torch

from sdcompress.data.core import Batch
from sdcompress.errors import ConfigError
from sdcompress.linalg.hvp import HvpMethod
from sdcompress.linalg.lanczos import lanczos
from sdcompress.linalg.operators import HessianOperator, SymmetricOperator
from sdcompress.linalg.trace import rademacher
from sdcompress.models.functional import FunctionalLoss
from sdcompress.progress import progress

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class SpectralMeasure:
    """The SLQ estimate μ = (d / n) Σ_r Σ_k τ_rk δ(θ_rk) of the eigenvalue counting measure.

    Attributes:
        nodes: (N,) Ritz values θ_rk of all runs, float64.
        tau: (N,) squared first components τ_rk (each run's τ sum to 1).
        run: (N,) index r of the run each node comes from.
        d: the operator's dimension (the measure's total mass).
        n_runs: number of runs n.
        n_hvp: operator products spent.
        traces: (n,) per-run Hutchinson samples v_rᵀ A_r v_r (mean: a trace estimate).
        top: (n,) the largest Ritz value of each run (a lower bound on λ_max(A_r)).
        block_weights: (N, n_blocks) ω_rk,b, the share of node k's weight τ_rk in block b
            (rows sum to τ up to the basis' loss of orthogonality), or ``None``.
        block_names: the blocks' names (parameter names), or ``None``.
        reorth: the Lanczos reorthogonalisation mode the runs used.
    """

    nodes: np.ndarray
    tau: np.ndarray
    run: np.ndarray
    d: int
    n_runs: int
    n_hvp: int
    traces: np.ndarray
    top: np.ndarray
    block_weights: np.ndarray | None = None
    block_names: tuple[str, ...] | None = None
    reorth: str = "full"

    def block_masses(self, run_weights: np.ndarray | None = None) -> np.ndarray:
        """(N, n_blocks) mass of each node in each block, d ω_rk,b / n (times ω_r per run
        with ``run_weights``); rows sum to :meth:`masses`.

        Raises:
            ConfigError: the measure has no block weights.
        """
        if self.block_weights is None:
            raise ConfigError("this spectral measure has no per-block weights: run SLQ with blocks (hessian_slq records them)")
        m = self.d * self.block_weights / self.n_runs
        return m if run_weights is None else m * np.asarray(run_weights, dtype=np.float64)[self.run][:, None]

    def masses(self, run_weights: np.ndarray | None = None) -> np.ndarray:
        """(N,) mass of each node, d τ_rk / n, or with per-run weights ω_r (Σ ω_r = n,
        e.g. bootstrap counts): d ω_r τ_rk / n."""
        m = self.d * self.tau / self.n_runs
        return m if run_weights is None else m * np.asarray(run_weights, dtype=np.float64)[self.run]

    def integrate(self, f: Callable[[np.ndarray], np.ndarray]) -> float:
        """∫ f dμ ≈ E_B tr f(H_B)."""
        return float(np.sum(self.masses() * f(self.nodes)))


def slq(
    operator_for_run: Callable[[int], SymmetricOperator],
    runs: int,
    steps: int,
    *,
    seed: int = 0,
    desc: str = "SLQ",
    reorth: str = "auto",
    memory_budget: int | None = None,
    blocks: Sequence[slice] | None = None,
    block_names: Sequence[str] | None = None,
) -> SpectralMeasure:
    """SLQ over a varying operator: run r uses ``operator_for_run(r)`` and a fresh probe.

    Args:
        operator_for_run: returns run r's symmetric operator (all of the same dimension).
        runs: number of runs n ≥ 1.
        steps: Lanczos steps m ≥ 1 per run (clipped to d; a run may stop earlier on
            breakdown, when its Krylov space is invariant).
        seed: seeds the Rademacher probes (drawn on the CPU, independent of device).
        desc: progress-bar label.
        reorth: Lanczos reorthogonalisation, ``"auto"`` (by ``memory_budget``),
            ``"full"``, ``"half"`` or ``"none"`` (see :mod:`sdcompress.linalg.lanczos`).
        memory_budget: bytes one run may use for ``"auto"`` (``None``: 0.1 of the
            available memory).
        blocks: slices of the flat vector to record per-block weights for.
        block_names: their names (default ``"0"``, ``"1"``, ...).

    Returns:
        The :class:`SpectralMeasure`.

    Raises:
        ConfigError: ``runs < 1`` or ``steps < 1``, operators of different sizes, or a bad
            reorthogonalisation mode or budget.
    """
    if runs < 1:
        raise ConfigError(f"SLQ needs at least one run, got runs={runs}")
    if steps < 1:
        raise ConfigError(f"SLQ needs at least one Lanczos step per run, got steps={steps}")
    gen = torch.Generator(device="cpu").manual_seed(seed)
    nodes, tau, run_of, traces, top, bw = [], [], [], [], [], []
    n_hvp, d, mode = 0, None, "full"
    for r in progress(range(runs), desc=desc, total=runs):
        op = operator_for_run(r)
        if d is None:
            d = op.d
        elif op.d != d:
            raise ConfigError(f"SLQ operators must share their dimension: run 0 has d={d}, run {r} has d={op.d}")
        v = rademacher(1, op.d, generator=gen, dtype=op.dtype, device=op.device)[0]
        before = op.n_matvecs
        res = lanczos(op, v, steps, reorth=reorth, memory_budget=memory_budget, blocks=blocks)
        n_hvp += op.n_matvecs - before
        mode = res.reorth
        theta, U = res.ritz()  # float64, ascending
        if blocks is not None:
            bw.append(res.block_weights().numpy())
        nodes.append(theta.numpy())
        tau.append((U[0] ** 2).numpy())
        run_of.append(np.full(len(theta), r))
        traces.append(op.d * float(res.alpha[0]))
        top.append(float(theta[-1]))
    return SpectralMeasure(
        nodes=np.concatenate(nodes),
        tau=np.concatenate(tau),
        run=np.concatenate(run_of),
        d=int(d),
        n_runs=runs,
        n_hvp=n_hvp,
        traces=np.asarray(traces),
        top=np.asarray(top),
        block_weights=np.concatenate(bw) if blocks is not None else None,
        block_names=(tuple(block_names) if block_names is not None else tuple(str(i) for i in range(len(blocks)))) if blocks is not None else None,
        reorth=mode,
    )


def hessian_slq(
    loss: FunctionalLoss,
    batch_for_run: Callable[[int], Batch],
    runs: int,
    steps: int,
    *,
    w: torch.Tensor | None = None,
    chunk_size: int | None = 16,
    method: HvpMethod = "auto",
    seed: int = 0,
    reorth: str = "auto",
    memory_budget: int | None = None,
    module_weights: bool = True,
) -> SpectralMeasure:
    """SLQ of the minibatch Hessian with a fresh minibatch per run (PAPER.md §3).

    Run r uses :class:`~sdcompress.linalg.HessianOperator` on ``batch_for_run(r)`` at the
    point ``w`` (so under ``torch.distributed`` each product is data-parallel).

    Args:
        loss: the functional loss.
        batch_for_run: the minibatch B_r of run r.
        runs: number of runs n.
        steps: Lanczos steps m per run.
        w: the point (default: the model's current parameters).
        chunk_size: vectors per vmap call of the Hessian-vector product.
        method: Hessian-vector product path.
        seed: seeds the probes.
        reorth: Lanczos reorthogonalisation (``"auto"``: by ``memory_budget``).
        memory_budget: bytes one Lanczos run may use (``None``: 0.1 of the available
            memory; see :func:`sdcompress.linalg.lanczos.lanczos_memory_bytes`).
        module_weights: record per-parameter-tensor block weights (O(d) per step, no
            extra products), named by ``loss.layout.names``.

    Returns:
        The :class:`SpectralMeasure` (estimate of E_B of the counting measure of H_B).
    """
    w = loss.params_vector() if w is None else w
    slices = loss.layout.slices() if module_weights else None
    return slq(
        lambda r: HessianOperator(loss, batch_for_run(r), w, chunk_size=chunk_size, method=method),
        runs,
        steps,
        seed=seed,
        desc="SLQ runs",
        reorth=reorth,
        memory_budget=memory_budget,
        blocks=list(slices.values()) if slices is not None else None,
        block_names=list(slices) if slices is not None else None,
    )
