"""Dense reference Hessians for tiny models and the memory check that guards them.

    H_B(w) = ∇²_w L_B(w)  (d × d),  computed as jacrev(grad(L_B))(w)

Reverse-over-reverse is used on purpose: it is the path independent of the
forward-over-reverse Hessian-vector products that every matrix-free operator uses, and
``jacfwd(jacrev)``/``torch.func.hessian`` get second derivatives through ``layer_norm``
wrong in torch 2.13. Call it in float64 (model and batch cast to float64) for a reference.
"""

from __future__ import annotations

import torch
from torch import Tensor
from torch.func import grad, jacrev

from sdcompress.data.core import Batch
from sdcompress.errors import EstimatorError
from sdcompress.models.functional import FunctionalLoss


def dense_bytes(d: int, dtype: torch.dtype = torch.float64) -> int:
    """Bytes of one d × d matrix of ``dtype``."""
    return d * d * torch.empty((), dtype=dtype).element_size()


def check_dense_size(d: int, max_params: int, dtype: torch.dtype = torch.float64) -> None:
    """Refuse a dense Hessian that would not fit comfortably in memory.

    Args:
        d: number of parameters.
        max_params: the largest d allowed.
        dtype: the Hessian's dtype (for the size in the message).

    Raises:
        EstimatorError: ``d > max_params``, with the memory the matrix would need and the fix.
    """
    if d > max_params:
        gib = dense_bytes(d, dtype) / 2**30
        raise EstimatorError(
            f"a dense Hessian over d = {d:,} parameters needs {gib:,.1f} GiB ({dtype}) per minibatch, above the "
            f"limit of d = {max_params:,} (max_dense_params): use method='slq', 'kde' or 'ps' (matrix-free), "
            "or restrict the estimate to a parameter subset with params=[...]"
        )


def dense_hessian(loss: FunctionalLoss, batch: Batch, w: Tensor | None = None, *, chunk_size: int | None = None) -> Tensor:
    """The full minibatch Hessian H_B(w), symmetrised.

    Args:
        loss: the functional loss (its dtype is the model's; cast the model to float64
            for a float64 reference).
        batch: the minibatch B.
        w: the point (default: the model's current parameters).
        chunk_size: rows of H computed per vmapped reverse pass (``None``: all at once;
            bounds memory at about ``chunk_size`` × one backward pass).

    Returns:
        (d, d) tensor ½(H + Hᵀ) in ``w``'s dtype (the two agree to rounding).
    """
    w = loss.params_vector() if w is None else w
    H = jacrev(grad(lambda x: loss(x, batch)), chunk_size=chunk_size)(w)
    return 0.5 * (H + H.T)
