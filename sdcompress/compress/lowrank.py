"""Low-rank factorisation: the (weighted) truncated SVD and :class:`LowRankLinear`.

Weighted SVD. With row weights ``r > 0`` (length out) and column weights ``c > 0``
(length in), the best rank-k approximation of ``W`` in the weighted Frobenius norm
``‖W − UV‖²_{r,c} = Σ_ij r_i c_j (W − UV)_ij²`` is found by factorising the scaled matrix

    W̃ = diag(√r) W diag(√c) = Ũ S Ṽᵀ,

keeping the top k singular triplets and unscaling,

    U = diag(1/√r) Ũ_k S_k^{1/2},      V = S_k^{1/2} Ṽ_kᵀ diag(1/√c),

so ``UV = diag(1/√r) (Ũ_k S_k Ṽ_kᵀ) diag(1/√c)`` (Eckart–Young on ``W̃``). Without
weights this is the plain truncated SVD, whose Frobenius error is the norm of the
dropped singular values, ``‖W − UV‖_F = (Σ_{i>k} σ_i²)^{1/2}``. The square root of
``S_k`` goes to both factors so that they have the same scale, which keeps per-group
quantization of the factors accurate.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from sdcompress.compress.base import CompressedLinear, Source
from sdcompress.errors import CompressionError


def _sqrt_weights(w: Tensor | None, n: int, like: Tensor, what: str) -> Tensor:
    if w is None:
        return torch.ones(n, dtype=torch.float64, device=like.device)
    w = torch.as_tensor(w, dtype=torch.float64, device=like.device)
    if w.shape != (n,) or not bool(torch.all(torch.isfinite(w) & (w > 0))):
        raise CompressionError(f"{what} must be {n} finite positive numbers, got shape {tuple(w.shape)}")
    return w.sqrt()


def weighted_svd(
    w: Tensor,
    rank: int,
    row_weights: Tensor | tuple[float, ...] | None = None,
    col_weights: Tensor | tuple[float, ...] | None = None,
) -> tuple[Tensor, Tensor]:
    """Rank-``rank`` factors ``U (out, k)``, ``V (k, in)`` of ``w`` (module docstring).

    Computed in float64 and returned in ``w``'s dtype and device.

    Args:
        w: ``(out, in)`` weight.
        rank: k, ``1 ≤ k ≤ min(out, in)``.
        row_weights: importance of each output row (``None``: all 1).
        col_weights: importance of each input column (``None``: all 1).

    Returns:
        ``(U, V)`` with ``U @ V`` the best rank-k approximation in the weighted norm.

    Raises:
        CompressionError: rank out of range or weights of the wrong length or sign.
    """
    out_f, in_f = w.shape
    if not 1 <= rank <= min(out_f, in_f):
        raise CompressionError(f"rank {rank} is out of range for a {out_f}×{in_f} weight; use 1 ≤ rank ≤ {min(out_f, in_f)}")
    sr = _sqrt_weights(row_weights, out_f, w, "row_weights")
    sc = _sqrt_weights(col_weights, in_f, w, "col_weights")
    scaled = sr[:, None] * w.detach().to(torch.float64) * sc[None, :]
    u, s, vh = torch.linalg.svd(scaled, full_matrices=False)
    root = s[:rank].sqrt()
    big_u = u[:, :rank] * root / sr[:, None]  # (out, k)
    big_v = root[:, None] * vh[:rank] / sc[None, :]  # (k, in)
    return big_u.to(w.dtype), big_v.to(w.dtype)


class LowRankLinear(CompressedLinear):
    """``y = x Vᵀ Uᵀ + b``: the weight ``W ≈ U @ V`` as two trainable factors.

    Args:
        in_features, out_features: shape of the linear map ``(out, in)``.
        rank: inner dimension k.
        bias: whether there is a bias.
        source: ``"linear"`` or ``"conv1d"`` (what it replaced).
    """

    kind = "lowrank"

    def __init__(
        self,
        in_features: int,
        out_features: int,
        rank: int,
        bias: bool = True,
        source: Source = "linear",
        dtype: torch.dtype | None = None,
        device: torch.device | str | None = None,
    ) -> None:
        super().__init__(in_features, out_features, bias, source, dtype, device)
        self.rank = rank
        self.U = nn.Parameter(torch.zeros(out_features, rank, dtype=dtype, device=device))
        self.V = nn.Parameter(torch.zeros(rank, in_features, dtype=dtype, device=device))

    @classmethod
    @torch.no_grad()
    def from_weight(
        cls,
        w: Tensor,
        bias: Tensor | None,
        rank: int,
        row_weights: tuple[float, ...] | None = None,
        col_weights: tuple[float, ...] | None = None,
        source: Source = "linear",
    ) -> LowRankLinear:
        """Factorise ``w`` ``(out, in)`` by :func:`weighted_svd`; the bias is copied."""
        big_u, big_v = weighted_svd(w, rank, row_weights, col_weights)
        mod = cls(w.shape[1], w.shape[0], rank, bias is not None, source, w.dtype, w.device)
        mod.U.copy_(big_u)
        mod.V.copy_(big_v)
        if bias is not None:
            mod.bias.copy_(bias)
        return mod

    def forward(self, x: Tensor) -> Tensor:  # (..., in) -> (..., out)
        return F.linear(F.linear(x, self.V), self.U, self.bias)

    def to_dense(self) -> Tensor:
        return self.U @ self.V

    def weight_storage(self) -> tuple[int, int]:
        n = self.U.numel() + self.V.numel()
        return n, self.U.numel() * self.U.element_size() + self.V.numel() * self.V.element_size()

    def extra_repr(self) -> str:
        return f"{self._shape_repr()}, rank={self.rank}"
