"""Hessian-vector products of a minibatch loss.

Three paths, all exact to rounding (tests compare them with a dense float64 Hessian and
with finite differences of the gradient):

- ``"vmap"``: forward-over-reverse, ``jvp(grad(f))``, batched over vectors with ``vmap``
  in chunks. Do not replace it with ``jvp(jacrev(f))`` or ``torch.func.hessian``
  (forward-over-``jacrev``): in torch 2.13 they get second derivatives through
  ``layer_norm`` wrong (10–15% in GPT-2's LayerNorm blocks).
- ``"loop"``: the same product one vector at a time.
- ``"double-backward"``: reverse-over-reverse. The gradient graph g = ∇L_B(w) is built
  once (``create_graph=True``) and each product is one more backward pass,
  ``autograd.grad(g, w, v, retain_graph=True)``. :class:`HessianOperator` keeps that
  graph for its lifetime, so a Lanczos run pays for it once.

``"auto"`` (the default) is the path measured fastest (benchmarks/estimator.py,
results/bench/estimator.md; one CPU thread on a busy 2-core machine):

- single vectors (Lanczos, SLQ, power iteration): double backward with the graph kept,
  0.67 ms against 6.45 ms for forward-over-reverse on the digits MLP and 37 ms against
  134 ms on tiny-gpt2 (torch.func's per-call overhead dominates single products);
- blocks on CPU: double backward with the graph kept as well. On tiny-gpt2 it beat
  vmap (37 vs 45 ms per vector); on the MLP vmap was as fast or up to 2× faster when
  all 32 vectors went through one vmap call (pass ``method="vmap"``,
  ``chunk_size=None`` for wide blocks on tiny models);
- blocks on CUDA: vmap forward-over-reverse, which vectorises across vectors (not
  measured here: the benchmark machine had no GPU).
"""

from __future__ import annotations

from typing import Callable, Literal

import torch
from torch import Tensor
from torch.func import grad, jvp, vmap

from sdcompress.data.core import Batch
from sdcompress.models.functional import FunctionalLoss

HvpMethod = Literal["auto", "vmap", "loop", "double-backward"]
HVP_METHODS: tuple[str, ...] = ("auto", "vmap", "loop", "double-backward")


def resolve_method(method: HvpMethod, n_vectors: int, device: torch.device) -> HvpMethod:
    """The concrete path ``"auto"`` stands for (see the module docstring)."""
    if method != "auto":
        return method
    if n_vectors > 1 and device.type == "cuda":
        return "vmap"
    return "double-backward"


def make_hvp(loss: FunctionalLoss, batch: Batch, w: Tensor | None = None) -> Callable[[Tensor], Tensor]:
    """``v ↦ H_B(w) v`` by forward-over-reverse (``jvp`` of ``grad``)."""
    w = loss.params_vector() if w is None else w
    g = grad(lambda x: loss(x, batch))

    def hvp(v: Tensor) -> Tensor:
        return jvp(g, (w,), (v,))[1]

    return hvp


class GradientGraph:
    """g = ∇L_B(w) with its autograd graph kept, for repeated reverse-over-reverse products.

    Args:
        loss: the functional loss.
        batch: the minibatch B.
        w: the point.
    """

    def __init__(self, loss: FunctionalLoss, batch: Batch, w: Tensor) -> None:
        self.x = w.detach().requires_grad_(True)
        with torch.enable_grad():
            (self.g,) = torch.autograd.grad(loss(self.x, batch), self.x, create_graph=True)

    def matmat(self, V: Tensor) -> Tensor:
        """Rows of ``V`` (k, d) times H_B(w), one backward pass each (graph retained)."""
        rows = [torch.autograd.grad(self.g, self.x, v, retain_graph=True)[0] for v in V]
        return torch.stack(rows).detach()


def hvp_double_backward(loss: FunctionalLoss, batch: Batch, w: Tensor, V: Tensor) -> Tensor:
    """Rows of ``V`` (k, d) times H_B(w) by reverse-over-reverse (builds the graph once per call)."""
    return GradientGraph(loss, batch, w).matmat(V)


def batched_hvp(
    loss: FunctionalLoss,
    batch: Batch,
    V: Tensor,
    w: Tensor | None = None,
    *,
    chunk_size: int | None = 16,
    method: HvpMethod = "auto",
    graph: GradientGraph | None = None,
) -> Tensor:
    """``V @ H_B(w)`` for the rows of ``V`` (H is symmetric, so each row is H v).

    Args:
        loss: the functional loss.
        batch: the minibatch B.
        V: (k, d) tensor of vectors, or one (d,) vector.
        w: point at which the Hessian is taken (default: the model's current parameters).
        chunk_size: vectors per ``vmap`` call; bounds memory at about
            ``chunk_size`` × (activation memory of one forward-backward). ``None``: all.
        method: ``"auto"`` (default, fastest measured; see the module docstring),
            ``"vmap"``, ``"loop"`` of forward-over-reverse, or ``"double-backward"``.
        graph: a :class:`GradientGraph` of the same loss, batch and point to reuse
            (double backward only).

    Returns:
        (k, d) tensor (or (d,) for a single vector).
    """
    w = loss.params_vector() if w is None else w
    if V.ndim == 1:
        return batched_hvp(loss, batch, V[None], w, chunk_size=chunk_size, method=method, graph=graph)[0]
    method = resolve_method(method, len(V), w.device)
    if method == "double-backward":
        return (graph or GradientGraph(loss, batch, w)).matmat(V)
    hvp = make_hvp(loss, batch, w)
    step = len(V) if chunk_size is None else max(1, chunk_size)
    if method == "loop" or step == 1 or len(V) == 1:  # vmap over one vector only adds overhead
        return torch.stack([hvp(v) for v in V])
    return torch.cat([vmap(hvp)(V[i : i + step]) for i in range(0, len(V), step)])
