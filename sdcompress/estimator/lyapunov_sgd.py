"""Lyapunov exponents and dominant Lyapunov subspaces of the SGD map (DESIGN.md, estimator).

The map is one SGD step on the batch of step t (PAPER.md §1),

    w_{t+1} = w_t − η (∇L_{B_t}(w_t) + wd · w_t),   J_t = (1 − η·wd) I − η H_{B_t}(w_t),

run from the model's current parameters on a *copy* (the model is never modified). The
tangent map is applied by Hessian-vector products (:class:`~sdcompress.linalg.StepJacobian`
over :class:`~sdcompress.linalg.HessianOperator`, so a minibatch is split across
processes under ``torch.distributed``), the gradient by
:func:`~sdcompress.linalg.distributed.sharded_grad`. The QR method
(:func:`~sdcompress.estimator.lyapunov.lyapunov_spectrum`) gives the top-m multi-step
exponents Λ_1 ≥ … ≥ Λ_m, their Kaplan–Yorke (Lyapunov) dimension D_Λ, and the final
tangent frame Q, whose columns span the directions the attractor expands most.

Module energy. For Q (d × m) orthonormal, ‖Q‖_F² = m; the share of a parameter tensor
P (rows I_P of Q) is Σ_{i ∈ I_P} Σ_j Q_ij² / m, and a module's share (the module that
owns the parameter, ``"layers.0"`` for ``"layers.0.weight"``) is the sum over its
parameters. Shares sum to 1: they say where in the network the dominant subspace lives.
Per exponent, column j's share in a module is Σ_{i ∈ I_module} Q_ij² (columns have unit
norm). Both are divided by the actual norms, so rounding in a float32 Q cannot make the
shares miss 1.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Iterable, Iterator, Sequence
from typing import Any

import numpy as np
import torch
from torch import Tensor

from sdcompress.data.core import Batch, move_batch
from sdcompress.data.stream import BatchStream
from sdcompress.errors import ConfigError, EstimatorError
from sdcompress.estimator.lyapunov import block_bootstrap_dimension, lyapunov_spectrum
from sdcompress.estimator.result import SDEstimate
from sdcompress.linalg.distributed import sharded_grad
from sdcompress.linalg.operators import HessianOperator, StepJacobian
from sdcompress.models.functional import FunctionalLoss, ParamLayout

logger = logging.getLogger(__name__)

ROOT_MODULE = "(root)"  # module name of parameters owned by the top-level module

# Defaults of the EstimateConfig fields read here (used when config is None or lacks them).
_DEFAULTS: dict[str, Any] = {
    "lyapunov_exponents": 16,
    "lyapunov_steps": 100,
    "lyapunov_warmup": 20,
    "seed": 0,
    "chunk_size": 16,
    "neutral_tol": 1e-6,
    "n_bootstrap": 200,
    "confidence": 0.95,
    "hvp_method": None,  # None: HessianOperator's default path
}
_N_BLOCKS = 10


class _BatchSource:
    """Batch t for step t from a :class:`BatchStream`, a sequence, or an iterator."""

    def __init__(self, batches: BatchStream | Iterable[Batch], steps: int, device: torch.device) -> None:
        self.device = device
        self._cached: tuple[int, Batch] | None = None
        self._iter: Iterator[Batch] | None = None
        self._seq: Sequence[Batch] | None = None
        self._stream: BatchStream | None = None
        if isinstance(batches, BatchStream):
            self._stream = batches
            self.description = f"BatchStream(seed={batches.seed}, batch_size={batches.batch_size}, replacement={batches.replacement})"
        elif isinstance(batches, Sequence) and not isinstance(batches, (str, bytes)):
            if len(batches) == 0:
                raise EstimatorError("the batch stream is empty: pass a BatchStream or at least one batch per step")
            if len(batches) < steps:
                raise EstimatorError(
                    f"got {len(batches)} batches for {steps} Lyapunov steps (one batch per step); "
                    "pass a BatchStream or more batches, or lower lyapunov_steps"
                )
            self._seq = batches
            self.description = f"sequence of {len(batches)} batches"
        elif isinstance(batches, Iterable):
            self._iter = iter(batches)
            self.description = "iterator of batches"
        else:
            raise EstimatorError(f"batches must be a BatchStream or an iterable of batches, got {type(batches).__name__}")

    def __call__(self, t: int) -> Batch:
        if self._cached is not None and self._cached[0] == t:
            return self._cached[1]
        if self._stream is not None:
            batch = self._stream.batch(t)
        elif self._seq is not None:
            batch = self._seq[t]
        else:
            try:
                batch = next(self._iter)  # type: ignore[arg-type]
            except StopIteration:
                what = "empty" if t == 0 else f"exhausted after {t} batches"
                raise EstimatorError(f"the batch stream is {what}; the Lyapunov run needs one batch per step") from None
        batch = move_batch(batch, self.device)
        self._cached = (t, batch)
        return batch


def module_of(param_name: str) -> str:
    """The module that owns a parameter: ``"layers.0.weight"`` → ``"layers.0"``."""
    return param_name.rsplit(".", 1)[0] if "." in param_name else ROOT_MODULE


def subspace_energy(Q: Tensor, layout: ParamLayout) -> dict[str, Any]:
    """Where the columns of an orthonormal Q (d × m) live, by parameter and by module.

    Args:
        Q: (d, m) orthonormal basis in ``layout``'s flat order.
        layout: the flat parameter layout.

    Returns:
        ``{"param_energy": {name: share}, "module_energy": {module: share},
        "exponent_energy": {module: [share of column j, j = 1..m]}}``; shares of
        ``param_energy`` and ``module_energy`` sum to 1, and for each column j the
        ``exponent_energy`` shares over modules sum to 1.
    """
    sq = Q.detach().to(torch.float64).square()
    # normalise by the actual norms (= m and 1 for an orthonormal Q) so that a float32 Q,
    # orthonormal only to ~1e-7, still gives shares that sum to 1 to float64 rounding
    col_norms = sq.sum(dim=0)  # (m,)
    total = float(col_norms.sum())
    per_param = {n: sq[s].sum(dim=0) for n, s in layout.slices().items()}  # name -> (m,)
    per_module: dict[str, Tensor] = {}
    for n, col in per_param.items():
        mod = module_of(n)
        per_module[mod] = per_module[mod] + col if mod in per_module else col.clone()
    return {
        "param_energy": {n: float(col.sum()) / total for n, col in per_param.items()},
        "module_energy": {mod: float(col.sum()) / total for mod, col in per_module.items()},
        "exponent_energy": {mod: (col / col_norms).cpu().tolist() for mod, col in per_module.items()},
    }


def _setting(config: Any, name: str) -> Any:
    return getattr(config, name, _DEFAULTS[name]) if config is not None else _DEFAULTS[name]


def lyapunov_sd(
    floss: FunctionalLoss,
    batches: BatchStream | Iterable[Batch],
    *,
    lr: float,
    weight_decay: float = 0.0,
    config: Any | None = None,
) -> SDEstimate:
    """Multi-step Lyapunov exponents, Lyapunov dimension and subspace of SGD on a model.

    Runs ``lyapunov_steps`` SGD steps w ↦ w − η(∇L_{B_t}(w) + wd·w) from the model's
    current parameters (on a copy), tracking m = ``lyapunov_exponents`` tangent vectors
    with J_t = (1 − η·wd) I − η H_{B_t}(w_t) applied by Hessian-vector products; the first
    ``lyapunov_warmup`` steps are discarded. See :func:`lyapunov_spectrum`.

    Uncertainty: block bootstrap of the per-step log-stretches ln R_t[i, i] over the
    averaged steps (10 contiguous blocks, ``n_bootstrap`` replicates, ``confidence``
    percentile interval of the dimension); ``extras["exponent_stderr"]`` is the standard error of each exponent
    from the spread of the block means. It measures the sampling noise along this one
    trajectory, not the bias of a finite run.

    Args:
        floss: the functional loss (model and parameter subset, d = ``floss.d``).
        batches: a :class:`BatchStream` (batch t at step t) or batches consumed in order.
        lr: step size η > 0.
        weight_decay: coupled L2 coefficient wd ≥ 0.
        config: an ``EstimateConfig`` (or ``None``); reads ``lyapunov_exponents`` (16),
            ``lyapunov_steps`` (100, warm-up included), ``lyapunov_warmup`` (20), ``seed``
            (0, the initial frame and the bootstrap), ``chunk_size`` (16, vectors per
            vmap call), ``hvp_method`` (the operator's default), ``n_bootstrap`` (200),
            ``confidence`` (0.95) and ``neutral_tol`` (1e-6: an exponent is counted in
            ``n_neutral`` when |Λ − ln|1 − η·wd|| ≤ neutral_tol, the exponent of a
            zero-curvature direction).

    Returns:
        An :class:`SDEstimate` with ``method="lyapunov"``: ``exponents`` (m, sorted
        decreasing), ``sd`` = D_Λ (a lower bound, SD ≥ m, when ``lower_bound``),
        ``subspace`` the final Q (d, m) in the model's dtype with column j belonging to
        ``exponents[j]``, and ``extras`` with ``module_energy``, ``param_energy``,
        ``exponent_energy`` (columns in the order of ``exponents``), ``exponent_stderr``,
        ``running_exponents`` and ``running_sd`` (per averaged step, for convergence
        plots) and ``n_grad``.

    Raises:
        ConfigError: lr ≤ 0 or not finite, weight_decay < 0.
        EstimatorError: m outside [1, d], steps ≤ warmup, an empty or too short batch
            stream, ``floss`` not a :class:`FunctionalLoss`.
        DivergenceError: the trajectory became non-finite (η too large).
    """
    if not isinstance(floss, FunctionalLoss):
        raise EstimatorError(f"floss must be a sdcompress.models.FunctionalLoss, got {type(floss).__name__}")
    if not (isinstance(lr, (int, float)) and math.isfinite(lr) and lr > 0):
        raise ConfigError(f"learning rate must be a finite number > 0, got {lr!r}")
    if not (isinstance(weight_decay, (int, float)) and math.isfinite(weight_decay) and weight_decay >= 0):
        raise ConfigError(f"weight decay must be a finite number ≥ 0, got {weight_decay!r}")
    m = _setting(config, "lyapunov_exponents")
    steps = _setting(config, "lyapunov_steps")
    warmup = _setting(config, "lyapunov_warmup")
    seed = _setting(config, "seed")
    chunk_size = _setting(config, "chunk_size")
    neutral_tol = _setting(config, "neutral_tol")
    n_boot, confidence = _setting(config, "n_bootstrap"), _setting(config, "confidence")
    hvp_kw = {} if _setting(config, "hvp_method") is None else {"method": _setting(config, "hvp_method")}
    start = time.perf_counter()
    w0 = floss.params_vector()  # a detached clone: the model's parameters are never touched
    source = _BatchSource(batches, steps if isinstance(steps, int) else 0, w0.device)
    n_hvp = [0]  # a count, not the operators: each holds a copy of w (d floats)

    def sgd_step(w: Tensor, t: int) -> Tensor:
        g = sharded_grad(floss, source(t), w)
        return w - lr * (g + weight_decay * w)

    def step_jacobian(w: Tensor, Q: Tensor, t: int) -> Tensor:
        J = StepJacobian(HessianOperator(floss, source(t), w, chunk_size=chunk_size, **hvp_kw), lr, weight_decay)
        out = J.matmat(Q.T.contiguous()).T  # operators act on rows: (m, d) -> (m, d)
        n_hvp[0] += J.n_hvp
        return out

    res = lyapunov_spectrum(
        sgd_step, w0, m, steps, warmup, seed=seed, jvp_fn=step_jacobian, desc="Lyapunov (SGD)"
    )
    (low, high), stderr, n_blocks = block_bootstrap_dimension(
        res.log_stretch, n_blocks=_N_BLOCKS, n_boot=n_boot, level=confidence, seed=seed
    )
    order = res.order
    subspace = res.Q[:, torch.as_tensor(order, device=res.Q.device)]
    energy = subspace_energy(subspace, floss.layout)
    kept = res.steps - res.warmup
    shrink = abs(1 - lr * weight_decay)  # a zero-curvature direction's stretch per step
    neutral = math.log(shrink) if shrink > 0 else -math.inf
    block_len = kept // n_blocks if n_blocks else 0
    interval = None if math.isnan(low) else (low, high)
    uncertainty = (
        f"block bootstrap {100 * confidence:g}% over {n_blocks} blocks of {block_len} steps "
        f"({kept} averaged steps, {n_boot} replicates)"
        if interval is not None
        else f"none: {kept} averaged step(s) are too few for a block bootstrap"
    )
    extras = {
        **energy,
        "exponent_stderr": stderr[order].tolist(),
        "exponents_qr_order": res.exponents_qr.tolist(),
        "running_exponents": res.running[:, order].tolist(),
        "running_sd": res.running_dimension.tolist(),
        "n_grad": res.steps,
    }
    settings = {
        "lyapunov_exponents": m,
        "lyapunov_steps": res.steps,
        "lyapunov_warmup": res.warmup,
        "seed": seed,
        "chunk_size": chunk_size,
        "bootstrap_blocks": n_blocks,
        "bootstrap_replicates": n_boot,
        "confidence": confidence,
        "hvp_method": hvp_kw.get("method", "default"),
        "batches": source.description,
    }
    est = SDEstimate(
        method="lyapunov",
        sd=float(res.dimension),
        j_star=int(res.j_star),
        exponents=res.exponents,
        d=floss.d,
        n_hvp=n_hvp[0],
        wall_time_s=time.perf_counter() - start,
        lr=float(lr),
        weight_decay=float(weight_decay),
        sd_interval=interval,
        uncertainty=uncertainty,
        lower_bound=bool(res.lower_bound),
        n_neutral=int(np.sum(np.abs(res.exponents - neutral) <= neutral_tol)),
        neutral_tol=float(neutral_tol),
        settings=settings,
        extras=extras,
        subspace=subspace,
    )
    logger.info("%s", est.summary())
    return est


__all__ = ["lyapunov_sd", "module_of", "subspace_energy"]
