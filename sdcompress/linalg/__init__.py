"""Matrix-free linear algebra: Hessian-vector products, operators, Lanczos, SLQ, traces,
and dense references for tiny models."""

from sdcompress.linalg.dense import check_dense_size, dense_bytes, dense_hessian
from sdcompress.linalg.hvp import HVP_METHODS, GradientGraph, HvpMethod, batched_hvp, hvp_double_backward, make_hvp
from sdcompress.linalg.lanczos import (
    REORTH_MODES,
    Eigenpairs,
    LanczosResult,
    available_memory_bytes,
    choose_reorth,
    default_memory_budget,
    lanczos,
    lanczos_memory_bytes,
    top_eigenpairs,
    top_eigenvalue,
)
from sdcompress.linalg.operators import DenseOperator, HessianOperator, StepJacobian, SymmetricOperator
from sdcompress.linalg.slq import SpectralMeasure, hessian_slq, slq
from sdcompress.linalg.trace import TraceEstimate, hutchinson_trace, rademacher

__all__ = [
    "DenseOperator",
    "Eigenpairs",
    "HessianOperator",
    "GradientGraph",
    "HVP_METHODS",
    "HvpMethod",
    "LanczosResult",
    "REORTH_MODES",
    "SpectralMeasure",
    "StepJacobian",
    "SymmetricOperator",
    "TraceEstimate",
    "available_memory_bytes",
    "batched_hvp",
    "check_dense_size",
    "choose_reorth",
    "default_memory_budget",
    "dense_bytes",
    "dense_hessian",
    "hessian_slq",
    "hutchinson_trace",
    "hvp_double_backward",
    "lanczos",
    "lanczos_memory_bytes",
    "make_hvp",
    "rademacher",
    "slq",
    "top_eigenpairs",
    "top_eigenvalue",
]
