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
  ``autograd.grad(g, w, v, retain_graph=True)``; a block of vectors on a small model
  (d ≤ ``BATCHED_BACKWARD_MAX_D``) goes through one vmapped backward pass per chunk
  (``is_grads_batched=True``). :class:`HessianOperator` keeps that graph for its
  lifetime, so a Lanczos run pays for it once.

``"auto"`` (the default) is the path measured fastest (benchmarks/estimator.py,
results/bench/hvp.md; one CPU thread on a busy 2-core machine, in plain gradients per
vector):

- single vectors (Lanczos, SLQ, power iteration): double backward with the graph kept
  (torch.func's per-call overhead dominates single forward-over-reverse products);
- blocks on CPU: double backward with the graph kept, batched over the block on small
  models (the digits MLP: 0.26 gradients per vector, against 0.60 for vmap
  forward-over-reverse and 1.6 for a loop), looped on larger ones (GPT-2s, where
  batching did not pay);
- blocks on CUDA: vmap forward-over-reverse, which vectorises across vectors (not
  measured here: the benchmark machine had no GPU).

Why a product costs more than a gradient: a kept-graph product is one backward pass
through the graph of the gradient, which holds the forward's and the backward's nodes,
so it costs about 1.5 plain gradients; the functional wrapper (``functional_call``, the
flat vector's split/cat) adds to the graph's build (once per operator), not to each
product. Building the graph on the model's own parameter tensors instead (as PyHessian
does) was measured slower per product here (0.39 vs 0.36 ms on the MLP, 17.5 vs 16.4
ms on tiny-gpt2: the per-parameter split and concatenation of the vectors cost more
than the flat graph's split node), so the flat graph stays.
"""

from __future__ import annotations

import logging
from typing import Callable, Literal

import torch
from torch import Tensor
from torch.func import grad, jvp, vmap

from sdcompress.data.core import Batch
from sdcompress.models.functional import FunctionalLoss

logger = logging.getLogger(__name__)

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


# blocks of vectors go through one vmapped backward pass (``is_grads_batched``) up to this d;
# measured on CPU (benchmarks/estimator.py, results/bench/hvp.md): 0.26 gradients per vector
# on the digits MLP (d = 1,440) against 1.6 for a loop; on the GPT-2s (d ≥ 36k) a loop was
# as fast or faster
BATCHED_BACKWARD_MAX_D = 16384


class GradientGraph:
    """g = ∇L_B(w) with its autograd graph kept, for repeated reverse-over-reverse products.

    Args:
        loss: the functional loss.
        batch: the minibatch B.
        w: the point.
        chunk_size: vectors per batched backward pass (blocks on small models).
    """

    def __init__(self, loss: FunctionalLoss, batch: Batch, w: Tensor, chunk_size: int | None = 16) -> None:
        self.x = w.detach().requires_grad_(True)
        self.chunk_size = chunk_size
        self._batched = self.x.numel() <= BATCHED_BACKWARD_MAX_D
        with torch.enable_grad():
            (self.g,) = torch.autograd.grad(loss(self.x, batch), self.x, create_graph=True)

    def matvec(self, v: Tensor) -> Tensor:
        """H_B(w) v by one backward pass (graph retained)."""
        return torch.autograd.grad(self.g, self.x, v, retain_graph=True)[0].detach()

    def matmat(self, V: Tensor) -> Tensor:
        """Rows of ``V`` (k, d) times H_B(w) (graph retained): one vmapped backward pass per
        chunk of rows when d ≤ ``BATCHED_BACKWARD_MAX_D``, else one backward pass per row."""
        if len(V) == 1:
            return self.matvec(V[0])[None]
        if self._batched:
            step = len(V) if self.chunk_size is None else max(1, self.chunk_size)
            try:
                return torch.cat([
                    torch.autograd.grad(self.g, self.x, V[i : i + step], retain_graph=True, is_grads_batched=True)[0].detach()
                    for i in range(0, len(V), step)
                ])
            except RuntimeError as exc:  # an op without a batching rule: fall back to the loop
                logger.info("batched double backward unavailable (%s); looping over vectors", str(exc).splitlines()[0][:120])
                self._batched = False
        return torch.stack([self.matvec(v) for v in V])


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
