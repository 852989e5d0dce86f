"""Matrix-free symmetric operators (curvlinops-style): the minibatch Hessian H_B and the
SGD step Jacobian J = (1 − η·wd) I − η H_B, plus a dense twin for tests.

An operator has ``d``, ``dtype``, ``device`` and ``matmat(V)`` acting on the *rows* of a
(k, d) tensor (``matvec`` is the k = 1 case). Every operator here is symmetric, so row
and column conventions agree. ``n_matvecs`` counts vectors multiplied so estimators can
report their cost in Hessian-vector products.
"""

from __future__ import annotations

import abc

import torch
from torch import Tensor

from sdcompress.config import check_step_size
from sdcompress.data.core import Batch
from sdcompress.errors import ConfigError
from sdcompress.linalg.distributed import all_reduce_sum, is_distributed, shard_batch
from sdcompress.linalg.hvp import GradientGraph, HvpMethod, batched_hvp, resolve_method
from sdcompress.models.functional import FunctionalLoss


class SymmetricOperator(abc.ABC):
    """Base class: a symmetric d × d linear map applied to rows."""

    d: int
    dtype: torch.dtype
    device: torch.device

    def __init__(self) -> None:
        self.n_matvecs = 0

    @abc.abstractmethod
    def _matmat(self, V: Tensor) -> Tensor:
        """The product on a (k, d) block, without counting."""

    def matmat(self, V: Tensor) -> Tensor:
        """(k, d) → (k, d): each row v becomes A v."""
        self.n_matvecs += V.shape[0]
        return self._matmat(V)

    def matvec(self, v: Tensor) -> Tensor:
        return self.matmat(v[None])[0]

    def __matmul__(self, v: Tensor) -> Tensor:
        return self.matvec(v) if v.ndim == 1 else self.matmat(v.T).T

    def to_dense(self, chunk: int = 256) -> Tensor:
        """The d × d matrix, by multiplying the identity (tests and tiny models only)."""
        eye = torch.eye(self.d, dtype=self.dtype, device=self.device)
        return torch.cat([self.matmat(eye[i : i + chunk]) for i in range(0, self.d, chunk)])


class DenseOperator(SymmetricOperator):
    """A symmetric matrix as an operator (the dense twin used in tests)."""

    def __init__(self, A: Tensor) -> None:
        super().__init__()
        if A.ndim != 2 or A.shape[0] != A.shape[1]:
            raise ConfigError(f"DenseOperator needs a square matrix, got shape {tuple(A.shape)}")
        self.A, self.d, self.dtype, self.device = A, A.shape[0], A.dtype, A.device

    def _matmat(self, V: Tensor) -> Tensor:
        return V @ self.A  # A symmetric: (A vᵀ)ᵀ = v A


class HessianOperator(SymmetricOperator):
    """H_B(w) = ∇²_w L_B(w), the Hessian of the minibatch loss over the chosen parameters.

    Under ``torch.distributed`` with several processes, each process multiplies by the
    Hessian of its shard of B and the results are all-reduced (see
    :mod:`sdcompress.linalg.distributed`); every process must call ``matmat`` with the
    same vectors.

    With the double-backward path the gradient graph of (this process's shard of) B is
    built on the first product and kept until the operator is dropped, so repeated
    products (Lanczos, power iteration) cost one backward pass each.

    Args:
        loss: functional loss over a parameter subset (its d is the operator's d).
        batch: the minibatch B (fixed for the operator's lifetime).
        w: the point (default: the model's current parameters).
        chunk_size: vectors per vmap call.
        method: Hessian-vector product path (see :func:`batched_hvp`; ``"auto"``
            picks the fastest measured).
    """

    def __init__(
        self,
        loss: FunctionalLoss,
        batch: Batch,
        w: Tensor | None = None,
        *,
        chunk_size: int | None = 16,
        method: HvpMethod = "auto",
    ) -> None:
        super().__init__()
        self.loss, self.batch = loss, batch
        self.w = loss.params_vector() if w is None else w
        self.d, self.dtype, self.device = loss.d, self.w.dtype, self.w.device
        self.chunk_size, self.method = chunk_size, method
        self._graph: GradientGraph | None = None

    def _hvp(self, batch: Batch, V: Tensor) -> Tensor:
        method = resolve_method(self.method, len(V), self.device)
        if method == "double-backward":
            if self._graph is None:
                self._graph = GradientGraph(self.loss, batch, self.w, chunk_size=self.chunk_size)
            return self._graph.matmat(V)
        return batched_hvp(self.loss, batch, V, self.w, chunk_size=self.chunk_size, method=method)

    def _matmat(self, V: Tensor) -> Tensor:
        if not is_distributed():
            return self._hvp(self.batch, V)
        shard, weight = shard_batch(self.batch)
        return all_reduce_sum(self._hvp(shard, V) * weight)


class StepJacobian(SymmetricOperator):
    """J = (1 − η·wd) I − η H: the Jacobian of one SGD step w ↦ w − η(∇L_B(w) + wd·w).

    Args:
        hessian: the Hessian operator H.
        lr: step size η > 0.
        weight_decay: L2 coefficient wd ≥ 0 (coupled, as in ``torch.optim.SGD``).
    """

    def __init__(self, hessian: SymmetricOperator, lr: float, weight_decay: float = 0.0) -> None:
        super().__init__()
        lr, weight_decay = check_step_size(lr, weight_decay)
        self.hessian, self.lr, self.weight_decay = hessian, lr, weight_decay
        self.d, self.dtype, self.device = hessian.d, hessian.dtype, hessian.device

    @property
    def n_hvp(self) -> int:
        return self.hessian.n_matvecs

    def _matmat(self, V: Tensor) -> Tensor:
        return (1.0 - self.lr * self.weight_decay) * V - self.lr * self.hessian.matmat(V)
