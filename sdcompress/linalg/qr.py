"""Thin QR of a tall d × m frame in the frame's own dtype (Cholesky-QR2, shifted fallback).

The Benettin/QR method re-orthonormalises a d × m block Z = J Q every step. Casting Z to
float64 for ``torch.linalg.qr`` makes a float64 d × m copy (16 GB at GPT-2-small, m = 16);
this module never does. It computes

    G₁ = Zᵀ Z,   R = chol(G₁),    Q₁ = Z R⁻¹,       (Cholesky-QR)
    G₂ = Q₁ᵀ Q₁, R₂ = chol(G₂),   Q  = Q₁ R₂⁻¹,     (the second pass: "QR2")

with the m × m Gram matrices accumulated in float64 over row blocks of at most
``block_rows`` rows (so the only float64 temporaries are a block × m slice and m × m
matrices) and the triangular solves done in Z's dtype. R is the Cholesky factor of the
float64 Gram matrix of Z itself, so it (and its diagonal, the stretch factors the
Lyapunov exponents average) is Z's exact R factor to about κ(Z)²·1e-16 relative
(measured on a float32 5000 × 16 frame: 4e-15 at κ = 1, 3e-10 at κ = 1e3, 1e-6 at
κ = 1e5), far better than R₂R₁, which carries the float32 rounding of Q₁ (1e-9 to 1e-7).
Q is the second pass's, orthonormal to the dtype's rounding (≈ 1e-6 in float32,
≈ 1e-15 in float64) as long as κ(Z)·u_dtype ≲ 0.1; Z = QR holds to the dtype's rounding.

Ill-conditioned frames (a direction squeezed to nearly zero by a step, κ(Z) beyond
``max_cond``, or a Gram matrix Cholesky rejects): *shifted* Cholesky-QR3 (Fukaya et al.
2020): R₀ = chol(G₁ + s I) with s = 11 (d·m + m(m+1)) u ‖Z‖₂² (u the dtype's unit
roundoff), Q₀ = Z R₀⁻¹, then two Cholesky-QR passes on Q₀. If that also fails (a
column exactly zero, non-finite entries), Householder ``torch.linalg.qr`` in Z's own
dtype is the last resort. Every path returns R with a positive diagonal (Q's columns are
flipped to match); an exactly zero column gives R[i, i] = 0 and an arbitrary unit column.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass

import torch
from torch import Tensor

from sdcompress.errors import EstimatorError

logger = logging.getLogger(__name__)

#: above this 2-norm condition number of Z, Cholesky-QR2 switches to the shifted variant
DEFAULT_MAX_COND = {torch.float16: 1e2, torch.bfloat16: 1e1, torch.float32: 1e5, torch.float64: 1e12}


@dataclass(frozen=True)
class FrameQR:
    """Z = Q R with Q (d, m) orthonormal in Z's dtype and R (m, m) upper triangular, float64.

    Attributes:
        Q: (d, m) in Z's dtype and device, orthonormal columns.
        R: (m, m) float64 upper triangular with a non-negative diagonal.
        method: ``"cholesky-qr2"``, ``"shifted-cholesky-qr3"`` or ``"householder"``.
    """

    Q: Tensor
    R: Tensor
    method: str

    @property
    def diag(self) -> Tensor:
        """(m,) float64 diagonal of R (the stretch factors)."""
        return torch.diagonal(self.R)


def gram(Z: Tensor, *, block_rows: int = 65536) -> Tensor:
    """ZᵀZ in float64, accumulated over row blocks (no float64 copy of the whole Z).

    Args:
        Z: (d, m) tensor of any floating dtype.
        block_rows: rows cast to float64 at a time.

    Returns:
        (m, m) float64 symmetric matrix on Z's device.
    """
    d, m = Z.shape
    G = torch.zeros(m, m, dtype=torch.float64, device=Z.device)
    for i in range(0, d, block_rows):
        blk = Z[i : i + block_rows].to(torch.float64)
        G += blk.T @ blk
    return 0.5 * (G + G.T)


def _solve_right(Z: Tensor, R: Tensor) -> Tensor:
    """Z R⁻¹ in Z's dtype (R upper triangular, cast to Z's dtype for the solve)."""
    return torch.linalg.solve_triangular(R.to(Z.dtype), Z, upper=True, left=False)


def _cholesky(G: Tensor) -> Tensor | None:
    """Upper Cholesky factor of G (float64), or ``None`` when G is not positive definite."""
    L, info = torch.linalg.cholesky_ex(G)
    if int(info) != 0 or not torch.isfinite(L).all():
        return None
    return L.T


def _chol_pass(Z: Tensor, block_rows: int) -> tuple[Tensor, Tensor] | None:
    R = _cholesky(gram(Z, block_rows=block_rows))
    if R is None:
        return None
    return _solve_right(Z, R), R


def _householder(Z: Tensor) -> FrameQR:
    Q, R = torch.linalg.qr(Z)
    R = R.to(torch.float64)
    signs = torch.where(torch.diagonal(R) < 0, -1.0, 1.0).to(R)
    return FrameQR(Q * signs.to(Q.dtype), signs[:, None] * R, "householder")


def cholesky_qr(Z: Tensor, *, max_cond: float | None = None, block_rows: int = 65536) -> FrameQR:
    """Thin QR of a tall (d, m) frame without a float64 copy of it (see the module docstring).

    Args:
        Z: (d, m) floating tensor with d ≥ m (float32 or float64; half precisions work
            with their own, looser, accuracy).
        max_cond: the largest κ₂(Z) (estimated from R₁) for which plain Cholesky-QR2 is
            trusted; above it the shifted Cholesky-QR3 runs. Default by dtype: 1e5 for
            float32, 1e12 for float64.
        block_rows: rows per float64 block of the Gram matrix.

    Returns:
        A :class:`FrameQR` with Q in Z's dtype, R in float64 with a non-negative diagonal,
        and the path taken.

    Raises:
        EstimatorError: Z is not a 2-D floating tensor with at least as many rows as
            columns, or has non-finite entries.
    """
    if not isinstance(Z, Tensor) or Z.ndim != 2 or not Z.is_floating_point() or Z.shape[0] < Z.shape[1]:
        shape = tuple(Z.shape) if isinstance(Z, Tensor) else type(Z).__name__
        raise EstimatorError(f"the frame must be a floating (d, m) tensor with d ≥ m, got {shape}; pass tangent vectors as columns")
    if not torch.isfinite(Z).all():
        raise EstimatorError("the frame has non-finite entries (nan or inf): the map diverges; use a smaller step size")
    d, m = Z.shape
    if m == 0:
        return FrameQR(Z, torch.zeros(0, 0, dtype=torch.float64, device=Z.device), "cholesky-qr2")
    limit = DEFAULT_MAX_COND.get(Z.dtype, 1e5) if max_cond is None else max_cond
    first = _chol_pass(Z, block_rows)
    if first is not None:
        Q1, R1 = first
        diag = torch.diagonal(R1).abs()
        # κ(R₁) ≥ max diag / min diag; a cheap lower bound, backed by the second pass's check
        cond = float(diag.max() / diag.min()) if float(diag.min()) > 0 else math.inf
        if cond <= limit:
            second = _chol_pass(Q1, block_rows)
            if second is not None:
                return FrameQR(second[0], R1, "cholesky-qr2")
    # shifted Cholesky-QR3: a shift makes the Gram matrix safely positive definite
    u = torch.finfo(Z.dtype).eps / 2
    G = gram(Z, block_rows=block_rows)
    norm2 = float(torch.linalg.matrix_norm(G, ord=2))
    if math.isfinite(norm2) and norm2 > 0:
        shift = 11.0 * (d * m + m * (m + 1)) * u * norm2
        R0 = _cholesky(G + shift * torch.eye(m, dtype=torch.float64, device=G.device))
        if R0 is not None:
            Q0 = _solve_right(Z, R0)
            p1 = _chol_pass(Q0, block_rows)
            if p1 is not None:
                p2 = _chol_pass(p1[0], block_rows)
                if p2 is not None:
                    return FrameQR(p2[0], p2[1] @ p1[1] @ R0, "shifted-cholesky-qr3")
    logger.debug("Cholesky-QR failed on a (%d, %d) frame; Householder QR in %s", d, m, Z.dtype)
    return _householder(Z)


__all__ = ["DEFAULT_MAX_COND", "FrameQR", "cholesky_qr", "gram"]
