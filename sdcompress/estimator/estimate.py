"""``estimate_sd``: sharpness exponents and the Sharpness Dimension of a model.

One entry point for every estimator (PAPER.md §2–§3): ``"exact"`` (dense minibatch
Hessians), ``"slq"``/``"kde"``/``"ps"`` (stochastic Lanczos quadrature density) and
``"lyapunov"`` (multi-step exponents along the SGD trajectory). Minibatches come from a
seeded :class:`~sdcompress.data.BatchStream` (batch i for minibatch/run/step i), from a
finite list of batches (used as given: see :mod:`sdcompress.estimator.batches`) or from an
iterator consumed in order.
"""

from __future__ import annotations

import copy
import logging
import time
from collections.abc import Iterable, Sequence
from dataclasses import asdict, replace
from typing import Any, Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from sdcompress.config import check_step_size
from sdcompress.data.core import Batch
from sdcompress.data.stream import BatchStream
from sdcompress.errors import ConfigError, EstimatorError
from sdcompress.estimator.batches import BatchSource
from sdcompress.estimator.config import EstimateConfig
from sdcompress.estimator.density_sd import density_estimate
from sdcompress.estimator.exact import exact_estimate
from sdcompress.estimator.result import SDEstimate
from sdcompress.linalg.slq import hessian_slq
from sdcompress.models.functional import FunctionalLoss

logger = logging.getLogger(__name__)

LossFn = Callable[[Tensor, Tensor], Tensor]


def _model_device_dtype(model: nn.Module) -> tuple[torch.device, torch.dtype]:
    for p in model.parameters():
        return p.device, p.dtype
    raise EstimatorError(f"the model ({type(model).__name__}) has no parameters")


def estimate_sd(
    model: nn.Module,
    batches: BatchStream | Iterable[Batch] | Batch,
    *,
    lr: float,
    method: str | None = None,
    weight_decay: float = 0.0,
    params: str | Sequence[str] | None = None,
    loss_fn: LossFn | None = None,
    config: EstimateConfig | None = None,
    **overrides: Any,
) -> SDEstimate:
    """Sharpness exponents and SD of ``model`` at its current parameters.

    The step map is SGD with step η and coupled weight decay wd, whose Jacobian on
    minibatch B is J = (1 − η·wd) I − η H_B (PAPER.md §1); exponents are
    ln|1 − η·wd − η α| of the minibatch Hessian's eigenvalues α, sorted decreasing,
    and SD is their Kaplan–Yorke dimension (PAPER.md §2).

    Args:
        model: a Hugging Face model (dict batches with ``labels``; its own loss) or any
            ``nn.Module`` taking ``inputs`` of ``(inputs, targets)`` batches. It must be
            deterministic (no active dropout: call ``model.eval()``); it is never
            modified (``dtype="float64"`` works on a copy).
        batches: a :class:`~sdcompress.data.BatchStream` (minibatch i is
            ``stream.batch(i)``); a finite list of batches, used as given (``exact``: each
            batch once; SLQ family: ``slq_runs`` rounded up to a multiple of the list's
            length, equal runs per batch; ``lyapunov``: one batch per step, at least
            ``lyapunov_steps``); an iterator, consumed in order and never cycled; or a
            single batch. See :mod:`sdcompress.estimator.batches`.
        lr: the step size η > 0 the model is (or was) trained with.
        method: ``"exact"``, ``"slq"``, ``"kde"``, ``"ps"`` or ``"lyapunov"``
            (default: ``config.method``, i.e. ``"ps"``).
        weight_decay: coupled L2 coefficient wd ≥ 0 of the SGD step.
        params: parameter patterns to restrict to (default: ``config.params``, i.e. all).
        loss_fn: loss on ``(logits, targets)`` for tuple batches (default: cross-entropy).
        config: an :class:`EstimateConfig` (default: ``EstimateConfig()``).
        **overrides: fields of the config to replace (``slq_runs=8``, ...).

    Returns:
        An :class:`SDEstimate` (``sd``, ``j_star``, ``exponents``, ``d``, ``n_hvp``,
        ``wall_time_s``, ``sd_interval``, ``extras`` ...).

    Raises:
        ConfigError: lr ≤ 0 or not finite, wd < 0, an unknown or out-of-range setting.
        ModelError: a parameter pattern matches nothing (the message lists real names),
            or the model has active dropout.
        EstimatorError: an empty batch list, an iterator that runs out, a list shorter than
            ``lyapunov_steps``, exact on too many parameters.
        FieldError: ``lyapunov_exponents`` above d (``estimate.lyapunov_exponents``, from
            :func:`~sdcompress.estimator.lyapunov_sgd.lyapunov_sd`).
    """
    lr, weight_decay = check_step_size(lr, weight_decay)
    if method is not None:
        overrides["method"] = method
    if params is not None:
        overrides["params"] = [params] if isinstance(params, str) else list(params)
    config = (config or EstimateConfig()).with_overrides(**overrides)  # validated on construction
    if not isinstance(model, nn.Module):
        raise ConfigError(f"model must be a torch.nn.Module, got {type(model).__name__}")

    device, model_dtype = _model_device_dtype(model)
    dtype = None
    if config.dtype == "float64" and model_dtype != torch.float64:
        model = copy.deepcopy(model).to(torch.float64)
        dtype = torch.float64
    floss = FunctionalLoss(model, config.params, loss_fn if loss_fn is not None else F.cross_entropy)
    source = BatchSource(batches, device, dtype)
    source(0)  # fail early on an empty stream
    patterns = tuple(config.params) if config.params is not None else None
    logger.info("estimating SD (%s) over d = %d parameters, η = %g, wd = %g; batches: %s", config.method, floss.d, lr,
                weight_decay, source.description)

    if config.method == "exact":
        config = config.with_overrides(n_batches=source.n_exact(config.n_batches))
        est = exact_estimate(
            floss, source, lr=lr, weight_decay=weight_decay, n_batches=config.n_batches, chunk_size=config.chunk_size,
            max_params=config.max_dense_params, n_bootstrap=config.n_bootstrap, confidence=config.confidence,
            seed=config.seed, neutral_tol=config.neutral_tol, params=patterns,
            settings={**asdict(config), "batches": source.description},
        )
    elif config.method == "lyapunov":
        from sdcompress.estimator.lyapunov_sgd import lyapunov_sd

        source.check_steps(config.lyapunov_steps)
        if source.finite:
            if source.size > config.lyapunov_steps:
                logger.info("Lyapunov: following the first %d of the %d batches given (one per step)",
                            config.lyapunov_steps, source.size)
            lyap_batches: Any = source.take(config.lyapunov_steps)
        else:
            lyap_batches = batches if isinstance(batches, BatchStream) and dtype is None else iter(source)
        est = lyapunov_sd(floss, lyap_batches, lr=lr, weight_decay=weight_decay, config=config)
        if patterns is not None and est.params is None:
            est = replace(est, params=patterns)
    else:
        config = config.with_overrides(slq_runs=source.n_runs(config.slq_runs))
        start = time.perf_counter()
        measure = hessian_slq(
            floss, source.for_run, config.slq_runs, config.lanczos_steps, chunk_size=config.chunk_size,
            method=config.hvp_method, seed=config.seed,  # type: ignore[arg-type]
            reorth=config.reorth, memory_budget=config.memory_budget,
        )
        est = density_estimate(
            measure, config.method, lr=lr, weight_decay=weight_decay, config=config,  # type: ignore[arg-type]
            wall_time_s=time.perf_counter() - start, params=patterns,
        )
        # a new estimate with the settings completed: a frozen result is never changed in place
        settings = {**asdict(config), "batches": source.description}
        est = replace(est, settings={**est.settings, **{k: v for k, v in settings.items() if k not in est.settings}})
    logger.info("%s", est.summary())
    return est
