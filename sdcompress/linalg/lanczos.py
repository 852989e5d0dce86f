"""Lanczos with full reorthogonalisation, and top eigenpairs in *algebraic* order.

PyHessian's power iteration returns the eigenvalue of largest magnitude, which at a
saddle can be the most negative one. Here ``top_eigenpairs`` returns the largest
algebraic eigenvalues (Ritz values of the Lanczos tridiagonal), as ``eigh`` would.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from sdcompress.errors import ConfigError
from sdcompress.linalg.operators import SymmetricOperator


@dataclass(frozen=True)
class LanczosResult:
    """T = Qᵀ A Q for an orthonormal Krylov basis Q.

    Attributes:
        alpha: (m,) diagonal of the tridiagonal T (float64).
        beta: (m − 1,) off-diagonal of T (float64).
        Q: (m, d) Krylov basis (rows), or ``None`` when not kept.
    """

    alpha: Tensor
    beta: Tensor
    Q: Tensor | None

    @property
    def steps(self) -> int:
        return len(self.alpha)

    def tridiagonal(self) -> Tensor:
        m = self.steps
        T = torch.diag(self.alpha)
        if m > 1:
            T += torch.diag(self.beta, 1) + torch.diag(self.beta, -1)
        return T

    def ritz(self) -> tuple[Tensor, Tensor]:
        """Ritz values (ascending) and the eigenvectors of T (columns), float64."""
        return torch.linalg.eigh(self.tridiagonal())


def lanczos(op: SymmetricOperator, v0: Tensor, steps: int, *, keep_basis: bool = False, tol: float = 1e-10) -> LanczosResult:
    """Run ``steps`` Lanczos iterations of ``op`` from ``v0`` with full reorthogonalisation.

    Stops early on breakdown (an invariant subspace was found: β_j ≤ tol·‖T‖).
    The recurrence runs in the operator's dtype; α and β are returned in float64.

    Args:
        op: symmetric operator.
        v0: (d,) start vector (normalised here).
        steps: maximum Krylov dimension m (≤ d).
        keep_basis: return the basis Q (needed for Ritz vectors).
        tol: relative breakdown threshold.
    """
    if steps < 1:
        raise ConfigError(f"Lanczos needs at least one step, got {steps}")
    steps = min(steps, op.d)
    q = v0 / v0.norm()
    Q = torch.zeros(steps, op.d, dtype=op.dtype, device=op.device)
    alphas, betas = [], []
    scale = 0.0
    for j in range(steps):
        Q[j] = q
        z = op.matvec(q)
        a = torch.dot(q, z)
        alphas.append(float(a))
        # full reorthogonalisation, twice ("twice is enough", Parlett)
        for _ in range(2):
            z = z - Q[: j + 1].T @ (Q[: j + 1] @ z)
        b = float(z.norm())
        scale = max(scale, abs(alphas[-1]), b)
        if j + 1 == steps or b <= tol * max(scale, 1e-30):
            break
        betas.append(b)
        q = z / b
    m = len(alphas)
    return LanczosResult(
        alpha=torch.tensor(alphas, dtype=torch.float64),
        beta=torch.tensor(betas[: m - 1], dtype=torch.float64),
        Q=Q[:m] if keep_basis else None,
    )


@dataclass(frozen=True)
class Eigenpairs:
    """Top eigenpairs in algebraic order (largest first) and their cost."""

    values: Tensor  # (k,) float64, descending
    vectors: Tensor  # (k, d) in the operator's dtype
    n_matvecs: int
    residuals: Tensor  # (k,) ‖A v − λ v‖, float64


def top_eigenpairs(
    op: SymmetricOperator,
    k: int = 1,
    *,
    steps: int = 30,
    seed: int = 0,
    v0: Tensor | None = None,
) -> Eigenpairs:
    """The k largest *algebraic* eigenvalues of ``op`` and their eigenvectors.

    A single Lanczos run of ``steps`` iterations (full reorthogonalisation); extreme
    eigenvalues converge first, so 20–40 steps give the top few to several digits on
    typical Hessians. Residual norms are returned so callers can check convergence.

    Args:
        op: symmetric operator.
        k: number of eigenpairs.
        steps: Krylov dimension (clipped to d).
        seed: seeds the random start vector when ``v0`` is not given.
        v0: start vector.
    """
    if not 1 <= k <= op.d:
        raise ConfigError(f"k must be between 1 and d={op.d}, got {k}")
    start = op.n_matvecs
    if v0 is None:
        g = torch.Generator(device="cpu").manual_seed(seed)
        v0 = torch.randn(op.d, generator=g, dtype=torch.float64).to(dtype=op.dtype, device=op.device)
    res = lanczos(op, v0, max(steps, k), keep_basis=True)
    evals, evecs = res.ritz()
    order = torch.argsort(evals, descending=True)[:k]
    values = evals[order]
    vectors = (evecs[:, order].T.to(res.Q.dtype).to(res.Q.device)) @ res.Q  # (k, d)
    resid = torch.stack([(op.matvec(v) - float(lam) * v).norm().double() for v, lam in zip(vectors, values)])
    return Eigenpairs(values, vectors, op.n_matvecs - start, resid)


def top_eigenvalue(op: SymmetricOperator, *, steps: int = 30, seed: int = 0) -> float:
    """The largest algebraic eigenvalue of ``op`` (see :func:`top_eigenpairs`)."""
    if not 1 <= op.d:
        raise ConfigError("operator has dimension 0")
    res = lanczos(op, torch.randn(op.d, generator=torch.Generator().manual_seed(seed), dtype=torch.float64).to(op.dtype).to(op.device), steps)
    return float(res.ritz()[0][-1])
