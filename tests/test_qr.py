"""Cholesky-QR2 (and its shifted fallback) against float64 Householder QR."""

from __future__ import annotations

import pytest
import torch

from sdcompress.errors import EstimatorError
from sdcompress.linalg.qr import cholesky_qr, gram

F64 = torch.float64


def _frame(d: int, m: int, cond: float, seed: int) -> torch.Tensor:
    """A (d, m) float64 matrix with singular values spaced log-uniformly from 1 to 1/cond."""
    g = torch.Generator().manual_seed(seed)
    U = torch.linalg.qr(torch.randn(d, m, generator=g, dtype=F64))[0]
    V = torch.linalg.qr(torch.randn(m, m, generator=g, dtype=F64))[0]
    s = torch.logspace(0, -torch.log10(torch.tensor(cond)).item(), m, dtype=F64)
    return (U * s) @ V.T


def _reference(Z64: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    Q, R = torch.linalg.qr(Z64)
    signs = torch.sign(torch.diagonal(R))
    return Q * signs, signs[:, None] * R


def _orth(Q: torch.Tensor) -> float:
    Q = Q.to(F64)
    return float((Q.T @ Q - torch.eye(Q.shape[1], dtype=F64)).abs().max())


@pytest.mark.parametrize("cond", [1.0, 1e3])
def test_float32_cholesky_qr2_matches_float64_householder(cond: float) -> None:
    Z64 = _frame(5000, 16, cond, seed=0)
    Z = Z64.float()
    out = cholesky_qr(Z, block_rows=777)  # several row blocks
    assert out.method == "cholesky-qr2"
    assert out.Q.dtype == torch.float32 and out.R.dtype == F64
    Qr, Rr = _reference(Z.double())  # the float32 input, factored exactly in float64
    assert _orth(out.Q) < 2e-6  # orthonormal to float32 rounding
    # R (and its diagonal, the stretch factors) to float64 accuracy relative to ‖Z‖
    assert float((out.R - Rr).abs().max()) < 1e-14 * cond
    # measured 4e-15 (κ = 1) and 3e-10 (κ = 1e3): κ²·1e-16
    assert float(((torch.diagonal(out.R) - torch.diagonal(Rr)) / torch.diagonal(Rr)).abs().max()) < 1e-14 * cond**2
    assert bool((torch.diagonal(out.R) > 0).all())
    assert float((out.Q.double() - Qr).abs().max()) < 1e-5 * cond
    assert float((out.Q.double() @ out.R - Z.double()).abs().max()) < 1e-6


def test_float64_frame_is_exact_to_rounding() -> None:
    Z = _frame(300, 8, 1e4, seed=1)
    out = cholesky_qr(Z)
    Qr, Rr = _reference(Z)
    assert out.method == "cholesky-qr2"
    assert _orth(out.Q) < 1e-14
    assert float((out.R - Rr).abs().max()) < 1e-10  # measured 2.7e-12 at κ = 1e4 (κ²·u bounds it by 1e-8)
    assert float((out.Q - Qr).abs().max()) < 1e-10


def test_ill_conditioned_frame_takes_the_shifted_path() -> None:
    Z64 = _frame(4000, 12, 1e7, seed=2)
    out = cholesky_qr(Z64.float())
    assert out.method == "shifted-cholesky-qr3"
    assert _orth(out.Q) < 1e-5
    _, Rr = _reference(Z64.float().double())
    assert bool((torch.diagonal(out.R) > 0).all())
    # leading stretch factors to float64-ish accuracy, the tiny one to float32 relative to ‖Z‖
    d = torch.diagonal(out.R)
    dr = torch.diagonal(Rr)
    assert float(((d[:6] - dr[:6]) / dr[:6]).abs().max()) < 1e-6
    assert float((d - dr).abs().max()) < 1e-6
    assert float((out.Q.double() @ out.R - Z64.float().double()).abs().max()) < 1e-5


def test_zero_column_falls_back_to_householder_with_a_zero_stretch() -> None:
    Z = _frame(200, 4, 1.0, seed=3).float()
    Z[:, 2] = 0.0
    out = cholesky_qr(Z)
    assert out.method == "householder"
    assert float(torch.diagonal(out.R)[2]) == pytest.approx(0.0, abs=1e-6)
    assert bool((torch.diagonal(out.R) >= 0).all())
    assert float((out.Q.double() @ out.R - Z.double()).abs().max()) < 1e-5


def test_gram_is_float64_of_the_blocks() -> None:
    Z = torch.randn(1000, 5, generator=torch.Generator().manual_seed(4))
    G = gram(Z, block_rows=64)
    assert G.dtype == F64
    assert torch.allclose(G, Z.double().T @ Z.double(), rtol=0, atol=1e-10)


def test_bad_frames_are_refused() -> None:
    with pytest.raises(EstimatorError, match="d ≥ m"):
        cholesky_qr(torch.zeros(3, 5))
    with pytest.raises(EstimatorError, match="non-finite"):
        cholesky_qr(torch.full((5, 2), float("nan")))
