"""Matrix-free linear algebra: Hessian-vector products, operators, Lanczos."""

from sdcompress.linalg.hvp import batched_hvp, hvp_double_backward, make_hvp
from sdcompress.linalg.lanczos import Eigenpairs, LanczosResult, lanczos, top_eigenpairs, top_eigenvalue
from sdcompress.linalg.operators import DenseOperator, HessianOperator, StepJacobian, SymmetricOperator

__all__ = [
    "DenseOperator",
    "Eigenpairs",
    "HessianOperator",
    "LanczosResult",
    "StepJacobian",
    "SymmetricOperator",
    "batched_hvp",
    "hvp_double_backward",
    "lanczos",
    "make_hvp",
    "top_eigenpairs",
    "top_eigenvalue",
]
