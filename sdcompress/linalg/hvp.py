"""Hessian-vector products of a minibatch loss.

Default path: forward-over-reverse, ``jvp(grad(f))``, batched over vectors with
``vmap`` in chunks. Do not replace it with ``jvp(jacrev(f))`` or ``torch.func.hessian``
(forward-over-``jacrev``): in torch 2.13 they get second derivatives through
``layer_norm`` wrong (10–15% in GPT-2's LayerNorm blocks). Double backward
(``torch.autograd.grad(create_graph=True)``) is the independent path tests compare with.
"""

from __future__ import annotations

from typing import Callable, Literal

import torch
from torch import Tensor
from torch.func import grad, jvp, vmap

from sdcompress.data.core import Batch
from sdcompress.models.functional import FunctionalLoss

HvpMethod = Literal["vmap", "loop", "double-backward"]


def make_hvp(loss: FunctionalLoss, batch: Batch, w: Tensor | None = None) -> Callable[[Tensor], Tensor]:
    """``v ↦ H_B(w) v`` by forward-over-reverse (``jvp`` of ``grad``)."""
    w = loss.params_vector() if w is None else w
    g = grad(lambda x: loss(x, batch))

    def hvp(v: Tensor) -> Tensor:
        return jvp(g, (w,), (v,))[1]

    return hvp


def hvp_double_backward(loss: FunctionalLoss, batch: Batch, w: Tensor, V: Tensor) -> Tensor:
    """Rows of ``V`` (k, d) times H_B(w) by reverse-over-reverse, one vector at a time."""
    x = w.detach().requires_grad_(True)
    (g,) = torch.autograd.grad(loss(x, batch), x, create_graph=True)
    rows = [torch.autograd.grad(g, x, v, retain_graph=i + 1 < len(V))[0] for i, v in enumerate(V)]
    return torch.stack(rows)


def batched_hvp(
    loss: FunctionalLoss,
    batch: Batch,
    V: Tensor,
    w: Tensor | None = None,
    *,
    chunk_size: int | None = 16,
    method: HvpMethod = "vmap",
) -> Tensor:
    """``V @ H_B(w)`` for the rows of ``V`` (H is symmetric, so each row is H v).

    Args:
        loss: the functional loss.
        batch: the minibatch B.
        V: (k, d) tensor of vectors.
        w: point at which the Hessian is taken (default: the model's current parameters).
        chunk_size: vectors per ``vmap`` call; bounds memory at about
            ``chunk_size`` × (activation memory of one forward-backward). ``None``: all.
        method: ``"vmap"`` (default, fastest measured on CPU), ``"loop"`` of
            forward-over-reverse, or ``"double-backward"``.

    Returns:
        (k, d) tensor.
    """
    w = loss.params_vector() if w is None else w
    if V.ndim == 1:
        return batched_hvp(loss, batch, V[None], w, chunk_size=chunk_size, method=method)[0]
    if method == "double-backward":
        return hvp_double_backward(loss, batch, w, V)
    hvp = make_hvp(loss, batch, w)
    if method == "loop":
        return torch.stack([hvp(v) for v in V])
    step = len(V) if chunk_size is None else max(1, chunk_size)
    if step == 1:
        return torch.stack([hvp(v) for v in V])
    return torch.cat([vmap(hvp)(V[i : i + step]) for i in range(0, len(V), step)])
