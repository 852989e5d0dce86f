"""Pruning masks: scores, exact sparsity, and :class:`MaskedLinear`.

Score of weight ``W_ij`` with row weights ``r`` and column weights ``c``:
``|W_ij| · √(r_i c_j)`` (plain magnitude without weights). A mask keeps exactly
``kept_count(out·in, keep_fraction)`` weights (round half up, at least one), the highest
scores, ties broken by position (stable sort), so it is reproducible.

Storage. At run time a :class:`MaskedLinear` holds a dense trainable ``weight`` and a
bool ``mask`` buffer and multiplies them in ``forward``: masked entries get zero gradient,
so plain SGD, momentum, weight decay (of zero) and Adam all leave them at zero. On disk
(``state_dict``) it stores only the kept values, ``weight_values`` (kept,), and the mask
packed 1 bit per weight, ``mask_bits`` (ceil(out·in/8),) uint8; loading unpacks both.
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from sdcompress.compress.base import CompressedLinear, Source
from sdcompress.compress.quant import pack_bits, unpack_bits
from sdcompress.errors import CompressionError
from sdcompress.plan.schema import kept_count


def prune_scores(
    w: Tensor, row_weights: tuple[float, ...] | Tensor | None = None, col_weights: tuple[float, ...] | Tensor | None = None
) -> Tensor:
    """``|W_ij| · √(r_i c_j)`` in float64, shape of ``w``."""
    score = w.detach().abs().to(torch.float64)
    if row_weights is not None:
        score = score * torch.as_tensor(row_weights, dtype=torch.float64, device=w.device).sqrt()[:, None]
    if col_weights is not None:
        score = score * torch.as_tensor(col_weights, dtype=torch.float64, device=w.device).sqrt()[None, :]
    return score


def prune_mask(
    w: Tensor,
    keep_fraction: float,
    row_weights: tuple[float, ...] | Tensor | None = None,
    col_weights: tuple[float, ...] | Tensor | None = None,
) -> Tensor:
    """Bool mask of ``w``'s shape keeping the ``kept_count(numel, keep_fraction)`` top scores.

    Raises:
        CompressionError: ``keep_fraction`` outside (0, 1].
    """
    if not 0 < keep_fraction <= 1:
        raise CompressionError(f"keep_fraction {keep_fraction!r} must be in (0, 1]")
    score = prune_scores(w, row_weights, col_weights).flatten()
    k = kept_count(score.numel(), keep_fraction)
    keep = torch.argsort(score, descending=True, stable=True)[:k]
    mask = torch.zeros(score.numel(), dtype=torch.bool, device=w.device)
    mask[keep] = True
    return mask.view_as(w)


class MaskedLinear(CompressedLinear):
    """``y = x (W ⊙ M)ᵀ + b`` with a fixed bool mask ``M`` (module docstring).

    Args:
        in_features, out_features: shape of the linear map ``(out, in)``.
        bias: whether there is a bias.
        source: ``"linear"`` or ``"conv1d"``.
    """

    kind = "masked"

    def __init__(
        self,
        in_features: int,
        out_features: int,
        bias: bool = True,
        source: Source = "linear",
        dtype: torch.dtype | None = None,
        device: torch.device | str | None = None,
    ) -> None:
        super().__init__(in_features, out_features, bias, source, dtype, device)
        self.weight = nn.Parameter(torch.zeros(out_features, in_features, dtype=dtype, device=device))
        self.register_buffer("mask", torch.ones(out_features, in_features, dtype=torch.bool, device=device))

    @classmethod
    @torch.no_grad()
    def from_weight(cls, w: Tensor, bias: Tensor | None, mask: Tensor, source: Source = "linear") -> MaskedLinear:
        """A masked copy of ``w`` ``(out, in)``; masked entries are set to zero."""
        mod = cls(w.shape[1], w.shape[0], bias is not None, source, w.dtype, w.device)
        mod.mask.copy_(mask)
        mod.weight.copy_(w * mask)
        if bias is not None:
            mod.bias.copy_(bias)
        return mod

    @property
    def n_kept(self) -> int:
        return int(self.mask.sum())

    def forward(self, x: Tensor) -> Tensor:  # (..., in) -> (..., out)
        return F.linear(x, self.weight * self.mask, self.bias)

    def to_dense(self) -> Tensor:
        return self.weight * self.mask

    def weight_storage(self) -> tuple[int, int]:
        kept = self.n_kept
        return kept, kept * self.weight.element_size() + math.ceil(self.mask.numel() / 8)

    # Packed on-disk form: only kept values and a 1-bit-per-weight mask (module docstring).
    def _save_to_state_dict(self, destination: dict[str, Any], prefix: str, keep_vars: bool) -> None:
        w = self.weight if keep_vars else self.weight.detach()
        destination[prefix + "weight_values"] = w[self.mask]
        destination[prefix + "mask_bits"] = pack_bits(self.mask)
        if self.bias is not None:
            destination[prefix + "bias"] = self.bias if keep_vars else self.bias.detach()

    def _load_from_state_dict(
        self,
        state_dict: dict[str, Any],
        prefix: str,
        local_metadata: dict[str, Any],
        strict: bool,
        missing_keys: list[str],
        unexpected_keys: list[str],
        error_msgs: list[str],
    ) -> None:
        vkey, mkey = prefix + "weight_values", prefix + "mask_bits"
        if vkey in state_dict and mkey in state_dict:
            values, bits = state_dict.pop(vkey), state_dict.pop(mkey)
            mask = unpack_bits(bits.to(self.mask.device), self.mask.numel()).view_as(self.mask)
            if int(mask.sum()) != values.numel():
                error_msgs.append(f"{prefix}: mask keeps {int(mask.sum())} weights but {values.numel()} values are stored")
                return
            dense = torch.zeros_like(self.weight)
            dense[mask] = values.to(dense)
            state_dict[prefix + "weight"], state_dict[prefix + "mask"] = dense, mask
        super()._load_from_state_dict(state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs)

    def extra_repr(self) -> str:
        n = self.mask.numel()
        return f"{self._shape_repr()}, keep={self.n_kept / n:.1%} ({self.n_kept}/{n})"
