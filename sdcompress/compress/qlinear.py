""":class:`QuantizedLinear`: a dense, low-rank or masked weight stored as int8/int4.

What is stored is quantized (see :mod:`sdcompress.compress.quant` for the scheme):

- dense: ``qweight`` holds ``W (out, in)``;
- low-rank: ``qU`` holds ``U (out, k)`` and ``qV`` holds ``V (k, in)`` (groups along
  each factor's own input dimension: k for U, in for V);
- masked: ``qweight`` holds only the kept values (row-major order), with per-group
  scales over the dense layout; ``mask_bits`` is the packed mask (1 bit per weight).
  Masked entries read back as exactly 0.

The forward pass dequantizes on the fly (CPU fallback, no integer kernels); the bias
stays a float parameter. The quantized weights are buffers, not parameters: they are not
trained further.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

from sdcompress.compress.base import CompressedLinear, Source
from sdcompress.compress.lowrank import weighted_svd
from sdcompress.compress.quant import PackedTensor, pack_bits, unpack_bits


class QuantizedLinear(CompressedLinear):
    """Weight-only int8/int4 linear layer, optionally low-rank or masked (module docstring).

    Args:
        in_features, out_features: shape of the linear map ``(out, in)``.
        bits: 8 or 4.
        group_size: quantization group along the input dimension.
        rank: store factors of this rank instead of the dense weight.
        n_kept: store only this many kept weights (and a mask).
        bias: whether there is a float bias.
        source: ``"linear"`` or ``"conv1d"``.
    """

    kind = "quantized"

    def __init__(
        self,
        in_features: int,
        out_features: int,
        bits: int,
        group_size: int = 64,
        rank: int | None = None,
        n_kept: int | None = None,
        bias: bool = True,
        source: Source = "linear",
        dtype: torch.dtype | None = None,
        device: torch.device | str | None = None,
    ) -> None:
        super().__init__(in_features, out_features, bias, source, dtype, device)
        self.bits, self.group_size, self.rank, self.n_kept = bits, group_size, rank, n_kept
        if rank is not None:
            self.qU = PackedTensor(out_features, rank, bits, group_size, dtype=dtype, device=device)
            self.qV = PackedTensor(rank, in_features, bits, group_size, dtype=dtype, device=device)
        else:
            self.qweight = PackedTensor(out_features, in_features, bits, group_size, n_kept, dtype=dtype, device=device)
        if n_kept is not None:
            self.register_buffer(
                "mask_bits", torch.zeros(math.ceil(in_features * out_features / 8), dtype=torch.uint8, device=device)
            )

    @classmethod
    @torch.no_grad()
    def from_weight(
        cls,
        w: Tensor,
        bias: Tensor | None,
        bits: int,
        group_size: int = 64,
        rank: int | None = None,
        mask: Tensor | None = None,
        row_weights: tuple[float, ...] | None = None,
        col_weights: tuple[float, ...] | None = None,
        source: Source = "linear",
    ) -> QuantizedLinear:
        """Quantize ``w`` ``(out, in)``: its rank-``rank`` factors, its ``mask``-kept
        values, or the dense weight."""
        n_kept = int(mask.sum()) if mask is not None else None
        mod = cls(w.shape[1], w.shape[0], bits, group_size, rank, n_kept, bias is not None, source, w.dtype, w.device)
        if rank is not None:
            big_u, big_v = weighted_svd(w, rank, row_weights, col_weights)
            mod.qU = PackedTensor.quantize(big_u, bits, group_size)
            mod.qV = PackedTensor.quantize(big_v, bits, group_size)
        else:
            mod.qweight = PackedTensor.quantize(w, bits, group_size, mask)
        if mask is not None:
            mod.mask_bits.copy_(pack_bits(mask))
        if bias is not None:
            mod.bias.copy_(bias)
        return mod

    def mask(self) -> Tensor | None:
        """The bool mask ``(out, in)``, or ``None`` when not masked."""
        if self.n_kept is None:
            return None
        return unpack_bits(self.mask_bits, self.out_features * self.in_features).view(self.out_features, self.in_features)

    def forward(self, x: Tensor) -> Tensor:  # (..., in) -> (..., out)
        if self.rank is not None:
            return F.linear(F.linear(x, self.qV.dequantize().to(x.dtype)), self.qU.dequantize().to(x.dtype), self.bias)
        return F.linear(x, self.qweight.dequantize(self.mask()).to(x.dtype), self.bias)

    def to_dense(self) -> Tensor:
        if self.rank is not None:
            return self.qU.dequantize() @ self.qV.dequantize()
        return self.qweight.dequantize(self.mask())

    def weight_storage(self) -> tuple[int, int]:
        if self.rank is not None:
            return self.qU.n_values + self.qV.n_values, self.qU.storage_bytes() + self.qV.storage_bytes()
        extra = self.mask_bits.numel() if self.n_kept is not None else 0
        return self.qweight.n_values, self.qweight.storage_bytes() + extra

    def extra_repr(self) -> str:
        what = f", rank={self.rank}" if self.rank is not None else ""
        if self.n_kept is not None:
            n = self.in_features * self.out_features
            what = f", keep={self.n_kept / n:.1%} ({self.n_kept}/{n})"
        return f"{self._shape_repr()}, bits={self.bits}, group_size={self.group_size}{what}"
