"""Weight-only quantization with real packed storage: int8 and int4, symmetric, per group.

A ``(rows, cols)`` weight is cut along ``cols`` (the input dimension) into groups of
``group_size`` consecutive entries (the last group of a row may be shorter). Each group g
gets one float scale ``s_g = max_j |w_j| / q_max`` with ``q_max = 2^(bits−1) − 1``
(127 for int8, 7 for int4) and stores ``q_j = clamp(round(w_j / s_g), −q_max, q_max)``;
the weight is read back as ``q_j · s_g``. The round-trip error of an entry is at most
``s_g / 2``. A group of zeros gets scale 1 (any scale reads back zero).

Storage: int8 values in an ``int8`` tensor (1 byte each); int4 values shifted to
``q + 8 ∈ [1, 15]`` and packed two per ``uint8`` byte (even index in the low nibble), so
``ceil(n / 2)`` bytes; scales in the weight's float dtype. Masks are packed 8 per byte.

CPU fallback: there are no integer matmul kernels here. :class:`QuantizedLinear`
dequantizes its weight (or its two factors) on the fly in every forward pass and runs a
float matmul, so it saves memory at rest and on disk, not time. On GPUs the packed
tensors can be handed to a real int8/int4 kernel; this module does not need one.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from sdcompress.errors import CompressionError


def qmax(bits: int) -> int:
    """Largest stored magnitude: ``2^(bits−1) − 1``."""
    if bits not in (8, 4):
        raise CompressionError(f"bits {bits!r} is not supported; use 8 or 4")
    return 2 ** (bits - 1) - 1


def quantize_groups(w: Tensor, bits: int, group_size: int) -> tuple[Tensor, Tensor]:
    """Symmetric per-group quantization of a 2-D weight along its columns.

    Args:
        w: ``(rows, cols)`` float weight.
        bits: 8 or 4.
        group_size: entries per group along ``cols``.

    Returns:
        ``(q, scales)``: ``q`` int8 ``(rows, cols)`` in ``[−q_max, q_max]``; ``scales``
        ``(rows, ceil(cols / group_size))`` in ``w``'s dtype.
    """
    qm = qmax(bits)
    rows, cols = w.shape
    n_groups = math.ceil(cols / group_size)
    work = w.to(torch.float64 if w.dtype == torch.float64 else torch.float32)
    padded = F.pad(work, (0, n_groups * group_size - cols)).view(rows, n_groups, group_size)
    scales = padded.abs().amax(dim=-1) / qm  # (rows, n_groups)
    scales = torch.where(scales == 0, torch.ones_like(scales), scales).to(w.dtype)
    # quantize with the scales as stored, so that dequantization sees the same numbers
    q = torch.round(padded / scales.to(work.dtype).unsqueeze(-1)).clamp_(-qm, qm)
    return q.view(rows, -1)[:, :cols].to(torch.int8), scales


def dequantize_groups(q: Tensor, scales: Tensor, group_size: int) -> Tensor:
    """Inverse of :func:`quantize_groups`: ``q · s`` with each group's scale; dtype of ``scales``."""
    cols = q.shape[1]
    expanded = scales.repeat_interleave(group_size, dim=1)[:, :cols]
    return q.to(scales.dtype) * expanded


def pack_int4(q: Tensor) -> Tensor:
    """Pack int8 values in ``[−7, 7]`` two per byte: ``(n,) → (ceil(n/2),)`` uint8."""
    u = (q.flatten().to(torch.int16) + 8).to(torch.uint8)
    if u.numel() % 2:
        u = torch.cat([u, u.new_full((1,), 8)])  # pad with a stored zero
    return u[0::2] | (u[1::2] << 4)


def unpack_int4(packed: Tensor, n: int) -> Tensor:
    """Inverse of :func:`pack_int4`: the first ``n`` int8 values."""
    low = (packed & 0x0F).to(torch.int8)
    high = (packed >> 4).to(torch.int8)
    return (torch.stack([low, high], dim=-1).flatten()[:n] - 8).to(torch.int8)


def pack_bits(mask: Tensor) -> Tensor:
    """Pack a boolean tensor 8 per byte (least significant bit first): ``(n,) → (ceil(n/8),)`` uint8."""
    flat = mask.flatten().to(torch.uint8)
    pad = (-flat.numel()) % 8
    if pad:
        flat = torch.cat([flat, flat.new_zeros(pad)])
    shifts = torch.arange(8, device=flat.device, dtype=torch.uint8)
    return (flat.view(-1, 8) << shifts).sum(dim=1, dtype=torch.uint8)


def unpack_bits(packed: Tensor, n: int) -> Tensor:
    """Inverse of :func:`pack_bits`: the first ``n`` booleans."""
    shifts = torch.arange(8, device=packed.device, dtype=torch.uint8)
    return ((packed.unsqueeze(-1) >> shifts) & 1).flatten()[:n].bool()


class PackedTensor(nn.Module):
    """A ``(rows, cols)`` weight stored as packed integers plus per-group scales.

    With ``n_values < rows·cols`` it holds only the entries selected by a mask (in
    row-major order); :meth:`dequantize` then needs that mask.

    Buffers:
        data: int8 ``(n_values,)`` (int8) or uint8 ``(ceil(n_values/2),)`` (int4).
        scales: ``(rows, ceil(cols/group_size))`` float.
    """

    def __init__(
        self,
        rows: int,
        cols: int,
        bits: int,
        group_size: int,
        n_values: int | None = None,
        dtype: torch.dtype | None = None,
        device: torch.device | str | None = None,
    ) -> None:
        super().__init__()
        qmax(bits)
        self.rows, self.cols, self.bits, self.group_size = rows, cols, bits, group_size
        self.n_values = rows * cols if n_values is None else n_values
        n_bytes = self.n_values if bits == 8 else math.ceil(self.n_values / 2)
        data_dtype = torch.int8 if bits == 8 else torch.uint8
        self.register_buffer("data", torch.zeros(n_bytes, dtype=data_dtype, device=device))
        n_groups = math.ceil(cols / group_size)
        self.register_buffer("scales", torch.ones(rows, n_groups, dtype=dtype or torch.get_default_dtype(), device=device))

    @classmethod
    def quantize(cls, w: Tensor, bits: int, group_size: int, mask: Tensor | None = None) -> PackedTensor:
        """Quantize ``w`` (``(rows, cols)``); with ``mask``, store only the kept entries."""
        w = w.detach()
        if mask is not None:
            w = w * mask  # masked entries must not set a group's scale
        q, scales = quantize_groups(w, bits, group_size)
        values = q.flatten() if mask is None else q[mask]
        out = cls(w.shape[0], w.shape[1], bits, group_size, values.numel(), dtype=w.dtype, device=w.device)
        out.data.copy_(values if bits == 8 else pack_int4(values))
        out.scales.copy_(scales)
        return out

    def int_values(self) -> Tensor:
        """The stored integers as int8 ``(n_values,)``."""
        return self.data if self.bits == 8 else unpack_int4(self.data, self.n_values)

    def dequantize(self, mask: Tensor | None = None) -> Tensor:
        """The float weight ``(rows, cols)``; ``mask`` is required when only kept entries are stored."""
        values = self.int_values()
        if mask is None:
            q = values.view(self.rows, self.cols)
        else:
            q = torch.zeros(self.rows * self.cols, dtype=torch.int8, device=values.device)
            q[mask.flatten()] = values
            q = q.view(self.rows, self.cols)
        return dequantize_groups(q, self.scales, self.group_size)

    def storage_bytes(self) -> int:
        """Bytes actually stored: packed integers plus scales."""
        return self.data.numel() * self.data.element_size() + self.scales.numel() * self.scales.element_size()

    def extra_repr(self) -> str:
        return f"{self.rows}×{self.cols}, int{self.bits}, group_size={self.group_size}, values={self.n_values}"
