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

from sdcompress.data import BatchStream, DatasetBundle
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
        evals = torch.linalg.eigvalsh(dense_hessian(loss, batch, chunk_size=128).double())
        return {"hess_top": float(evals[-1]), "hess_trace": float(evals.sum()), "hess_min": float(evals[0]), "hess_dense": 1.0}
    op = HessianOperator(loss, batch, chunk_size=8)
    top = top_eigenvalue(op, steps=s.lanczos_steps, seed=seed)
    tr = hutchinson_trace(HessianOperator(loss, batch, chunk_size=8), s.trace_probes, seed=seed)
    return {"hess_top": top, "hess_trace": float(tr.value), "hess_dense": 0.0}


DENSITY_METHODS = ("slq", "kde", "ps")


def density_estimates(model: nn.Module, batches: BatchStream | list[Batch], *, lr: float, weight_decay: float, cfg: Any, methods: list[str]) -> dict[str, Any]:
    """SD-SLQ, SD-KDE and SD-PS from *one* SLQ spectral measure.

    ``estimate_sd`` runs SLQ afresh for each density method; with the same seed and
    batches it builds the same measure each time, so building it once and reading the
    three densities off it gives the same numbers (tests check this) at a third of the
    Hessian-vector products. The model is used in its own dtype.
    """
    import time

    from sdcompress.estimator.density_sd import density_estimate
    from sdcompress.estimator.batches import BatchSource
    from sdcompress.linalg.slq import hessian_slq
    from sdcompress.models import FunctionalLoss

    device = next(model.parameters()).device
    floss = FunctionalLoss(model, cfg.params, nn.functional.cross_entropy)
    source = BatchSource(batches, device, None)
    cfg = cfg.with_overrides(slq_runs=source.n_runs(cfg.slq_runs))  # a list: equal runs per batch
    start = time.perf_counter()
    measure = hessian_slq(floss, source.for_run, cfg.slq_runs, cfg.lanczos_steps,
                          chunk_size=cfg.chunk_size, method=cfg.hvp_method, seed=cfg.seed)
    wall = time.perf_counter() - start
    out = {}
    for m in methods:
        method_cfg = cfg.with_overrides(method=m)
        out[m] = density_estimate(measure, m, lr=lr, weight_decay=weight_decay, config=method_cfg, wall_time_s=wall / len(methods),
                                  params=tuple(cfg.params) if cfg.params is not None else None)
    return out


def sd_measures(
    model: nn.Module,
    batches: BatchStream | list[Batch],
    *,
    lr: float,
    weight_decay: float,
    s: MeasureSettings,
) -> tuple[dict[str, Any], dict[str, Any]]:
    """SD by each estimator in ``s.methods`` plus the exponent summaries.

    Args:
        model: the model at the point to measure.
        batches: minibatch i of the exact estimator and of SLQ run i (a seeded stream
            gives every run a fresh minibatch).
        lr, weight_decay: the step map's η and wd.
        s: settings (``n_batches`` and ``estimator`` options go to the EstimateConfig).

    Returns:
        The row and the :class:`~sdcompress.estimator.SDEstimate` of each method. The row
        holds ``sd_<m>``, ``sd_over_d_<m>``, ``wall_<m>`` per method; ``d``; and from the
        exact estimate (or the first method run) ``lambda_1``, ``j_star``, ``n_neutral``,
        ``n_expanding`` / ``n_contracting`` (exponents above / below the neutral value
        ln|1 − η·wd| by more than the neutral tolerance), ``exp_sum`` (sum of all
        exponents), ``mb_hess_top`` and ``mb_hess_trace`` (mean over minibatches).
    """
    from sdcompress.estimator import EstimateConfig, estimate_sd

    out: dict[str, Any] = {}
    cfg = EstimateConfig(**{"n_batches": s.n_batches, **s.estimator})
    first = None
    estimates = {}
    density = [m for m in s.methods if m in DENSITY_METHODS]
    shared = density_estimates(model, batches, lr=lr, weight_decay=weight_decay, cfg=cfg, methods=density) if len(density) > 1 else {}
    for method in s.methods:
        est = shared.get(method) or estimate_sd(model, batches, lr=lr, method=method, weight_decay=weight_decay, config=cfg)
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
        center = float(first.extras.get("neutral_exponent", 0.0))
        out["exponent_source"] = first.method
        out["lambda_1"] = float(lam[0])
        out["j_star"] = int(first.j_star)
        out["n_neutral"] = int(first.n_neutral)
        out["n_expanding"] = float(w[lam > center + tol].sum())
        out["n_contracting"] = float(w[lam < center - tol].sum())
        out["exp_sum"] = float((w * lam).sum())
        if "top_eigenvalue" in first.extras:
            out["mb_hess_top"] = float(first.extras.get("top_eigenvalue_mean", first.extras["top_eigenvalue"]))
        if "trace" in first.extras:
            out["mb_hess_trace"] = float(first.extras["trace"])
    return out, estimates
