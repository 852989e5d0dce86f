"""The per-model measurements every experiment reports.

For a model at a point w on the attractor, with step size η and weight decay wd
(step Jacobian J_B = (1 − η·wd) I − η H_B, PAPER.md §1):

- SD by each requested estimator (``exact``: dense minibatch Hessians; ``slq``, ``kde``,
  ``ps``: the SLQ density), through :func:`sdcompress.estimator.estimate_sd`;
- λ_1, the top one-step sharpness exponent E_B[ln σ_1(J_B)] (from the exact exponents
  when available, else the largest density exponent);
- counts of neutral (|λ| < tol), expanding (λ > tol) and contracting exponents;
- the top eigenvalue and the trace of the *full-batch* training Hessian: dense and exact
  when d is small (``dense_max_params``), otherwise Lanczos and Hutchinson;
- the mean top eigenvalue of the minibatch Hessians (compare with 2/η for EoS).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn

from sdcompress.data import DatasetBundle
from sdcompress.data.core import Batch

logger = logging.getLogger(__name__)


@dataclass
class MeasureSettings:
    """What to measure and how.

    Attributes:
        methods: SD estimators to run (``exact``, ``slq``, ``kde``, ``ps``).
        n_batches: minibatches the exact estimator averages over (and the SLQ runs draw
            from when ``estimator`` does not say otherwise).
        estimator: options of :class:`sdcompress.estimator.EstimateConfig` (SLQ runs and
            steps, ε, quantiles, bandwidth, neutral tolerance, ...).
        dense_max_params: largest d for which full-batch Hessians are formed densely.
        lanczos_steps: Krylov steps for the top eigenvalue when not dense.
        trace_probes: Hutchinson probes for the trace when not dense.
        hessian_examples: examples of the training split in the "full-batch" Hessian
            (0: all of them).
    """

    methods: list[str] = field(default_factory=lambda: ["exact", "slq", "kde", "ps"])
    n_batches: int = 20
    estimator: dict[str, Any] = field(default_factory=dict)
    dense_max_params: int = 4000
    lanczos_steps: int = 30
    trace_probes: int = 32
    hessian_examples: int = 0


def _full_batch(bundle: DatasetBundle, n: int) -> Batch:
    train = bundle.train
    return train.take(torch.arange(min(n, len(train)) if n else len(train)))


def full_batch_curvature(model: nn.Module, bundle: DatasetBundle, s: MeasureSettings, seed: int = 0) -> dict[str, float]:
    """Top eigenvalue and trace of the Hessian of the training loss (all examples).

    Dense (``jacrev(grad)`` + ``eigvalsh``) when d ≤ ``dense_max_params``, else Lanczos
    (top algebraic eigenvalue) and Hutchinson (trace).
    """
    from sdcompress.linalg import HessianOperator, top_eigenvalue
    from sdcompress.linalg.dense import dense_hessian
    from sdcompress.linalg.trace import hutchinson_trace
    from sdcompress.models import FunctionalLoss

    loss = FunctionalLoss(model)
    batch = _full_batch(bundle, s.hessian_examples)
    if loss.d <= s.dense_max_params:
        evals = torch.linalg.eigvalsh(dense_hessian(loss, batch).double())
        return {"hess_top": float(evals[-1]), "hess_trace": float(evals.sum()), "hess_min": float(evals[0]), "hess_dense": 1.0}
    op = HessianOperator(loss, batch, chunk_size=8)
    top = top_eigenvalue(op, steps=s.lanczos_steps, seed=seed)
    tr = hutchinson_trace(HessianOperator(loss, batch, chunk_size=8), s.trace_probes, seed=seed)
    return {"hess_top": top, "hess_trace": float(tr.value), "hess_dense": 0.0}


def sd_measures(
    model: nn.Module,
    batches: list[Batch],
    *,
    lr: float,
    weight_decay: float,
    s: MeasureSettings,
) -> tuple[dict[str, Any], dict[str, Any]]:
    """SD by each estimator in ``s.methods`` plus the exponent summaries.

    Returns:
        The row and the :class:`~sdcompress.estimator.SDEstimate` of each method. The row
        holds ``sd_<m>``, ``sd_over_d_<m>``, ``wall_<m>`` per method; ``d``; from the exact
        estimate (or the first method run) ``lambda_1``, ``j_star``, ``n_neutral``,
        ``n_expanding``, ``n_contracting``, ``exp_sum`` (sum of all exponents) and
        ``mb_hess_top`` (mean top minibatch-Hessian eigenvalue, when reported).
    """
    from sdcompress.estimator import EstimateConfig, estimate_sd

    out: dict[str, Any] = {}
    cfg = EstimateConfig(**s.estimator)
    first = None
    estimates = {}
    for method in s.methods:
        est = estimate_sd(model, batches, lr=lr, method=method, weight_decay=weight_decay, config=cfg)
        estimates[method] = est
        out[f"sd_{method}"] = float(est.sd)
        out[f"sd_over_d_{method}"] = float(est.sd_over_d)
        out[f"wall_{method}"] = float(est.wall_time_s)
        out["d"] = int(est.d)
        if method == "exact" or first is None:
            first = est
    if first is not None:
        lam = np.asarray(first.exponents, dtype=np.float64)
        w = np.ones_like(lam) if first.weights is None else np.asarray(first.weights, dtype=np.float64)
        tol = float(first.neutral_tol)
        out["exponent_source"] = first.method
        out["lambda_1"] = float(lam[0])
        out["j_star"] = int(first.j_star)
        out["n_neutral"] = int(first.n_neutral)
        out["n_expanding"] = float(w[lam > tol].sum())
        out["n_contracting"] = float(w[lam < -tol].sum())
        out["exp_sum"] = float((w * lam).sum())
        for key in ("mean_top_eigenvalue", "hessian_top_mean", "top_eigenvalue"):
            if key in first.extras:
                out["mb_hess_top"] = float(first.extras[key])
                break
    return out, estimates
