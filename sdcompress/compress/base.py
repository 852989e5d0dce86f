"""What every compressed module shares: the linear-map view and storage accounting.

All compressed modules compute ``y = x Wᵀ + b`` with ``W`` of shape ``(out, in)``, the
``nn.Linear`` convention. A transformers ``Conv1D`` (GPT-2) computes ``y = x W + b`` with
its weight stored ``(in, out)``; that is the same function with ``W`` transposed, so a
``Conv1D`` is replaced by a module in the linear convention and remembers it was one
(``source="conv1d"``) only for reporting and for :meth:`CompressedLinear.to_original`.
"""

from __future__ import annotations

import abc
from typing import Literal

import torch
from torch import Tensor, nn

Source = Literal["linear", "conv1d"]


class CompressedLinear(nn.Module, metaclass=abc.ABCMeta):
    """Base of :class:`LowRankLinear`, :class:`MaskedLinear` and :class:`QuantizedLinear`.

    Attributes:
        in_features, out_features: the linear map's shape ``W: (out, in)``.
        source: ``"linear"`` or ``"conv1d"``: what the module replaced.
        bias: float bias ``(out,)`` or ``None`` (a trainable parameter, left as it was).
    """

    kind: str = ""

    def __init__(
        self,
        in_features: int,
        out_features: int,
        bias: bool,
        source: Source = "linear",
        dtype: torch.dtype | None = None,
        device: torch.device | str | None = None,
    ) -> None:
        super().__init__()
        self.in_features, self.out_features, self.source = in_features, out_features, source
        if bias:
            self.bias = nn.Parameter(torch.zeros(out_features, dtype=dtype, device=device))
        else:
            self.register_parameter("bias", None)

    @abc.abstractmethod
    def to_dense(self) -> Tensor:
        """The equivalent dense weight ``(out, in)``."""

    @abc.abstractmethod
    def weight_storage(self) -> tuple[int, int]:
        """``(values, bytes)`` the weight takes as stored (the bias is not included)."""

    @torch.no_grad()
    def to_original(self) -> nn.Module:
        """A plain ``nn.Linear`` (or ``Conv1D`` when that is what was replaced) with the
        dense weight :meth:`to_dense`: undoes the structure, keeps the compression error."""
        w = self.to_dense()
        if self.source == "conv1d":
            from transformers.pytorch_utils import Conv1D

            mod: nn.Module = Conv1D(self.out_features, self.in_features)
            mod.weight.data = w.t().contiguous()
            mod.bias.data = self.bias.detach().clone() if self.bias is not None else torch.zeros_like(mod.bias)
            return mod.to(w.device)
        lin = nn.Linear(self.in_features, self.out_features, bias=self.bias is not None, device=w.device, dtype=w.dtype)
        lin.weight.copy_(w)
        if self.bias is not None:
            lin.bias.copy_(self.bias)
        return lin

    def _shape_repr(self) -> str:
        src = ", from=Conv1D" if self.source == "conv1d" else ""
        return f"in_features={self.in_features}, out_features={self.out_features}, bias={self.bias is not None}{src}"
