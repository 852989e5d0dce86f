"""``estimate_sd``: sharpness exponents and the Sharpness Dimension of a model.

One entry point for every estimator (PAPER.md §2–§3): ``"exact"`` (dense minibatch
Hessians), ``"slq"``/``"kde"``/``"ps"`` (stochastic Lanczos quadrature density) and
``"lyapunov"`` (multi-step exponents along the SGD trajectory). Minibatches come from a
seeded :class:`~sdcompress.data.BatchStream` (batch i for minibatch/run/step i) or from
a sequence or iterator of batches.
"""

from __future__ import annotations

import copy
import logging
import math
import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import asdict
from typing import Any, Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from sdcompress.config import check_step_size
from sdcompress.data.core import Batch, move_batch
from sdcompress.data.stream import BatchStream
from sdcompress.errors import ConfigError, EstimatorError
from sdcompress.estimator.config import EstimateConfig
from sdcompress.estimator.density_sd import density_estimate
from sdcompress.estimator.exact import exact_estimate
from sdcompress.estimator.result import SDEstimate
from sdcompress.linalg.slq import hessian_slq
from sdcompress.models.functional import FunctionalLoss

logger = logging.getLogger(__name__)

LossFn = Callable[[Tensor, Tensor], Tensor]


def _is_single_batch(batches: Any) -> bool:
    """A dict of tensors, or a tuple/list of tensors, is one batch, not a stream of them."""
    if isinstance(batches, Mapping):
        return True
    return isinstance(batches, (tuple, list)) and len(batches) > 0 and all(isinstance(t, Tensor) for t in batches)


class BatchSource:
    """Minibatch i on the compute device and dtype, from a stream, sequence or iterator.

    A :class:`BatchStream` gives ``stream.batch(i)``. A sequence gives ``batches[i]`` and
    cycles when i runs past its end (logged once); an iterator is consumed as needed and
    then cycled the same way. A single batch is used for every i.

    Raises:
        EstimatorError: no batch at all.
    """

    def __init__(self, batches: BatchStream | Iterable[Batch] | Batch, device: torch.device, dtype: torch.dtype | None) -> None:
        self.device, self.dtype = device, dtype
        self._stream: BatchStream | None = batches if isinstance(batches, BatchStream) else None
        self._cache: list[Batch] = []
        self._iter: Iterator[Batch] | None = None
        self._warned = False
        if self._stream is not None:
            return
        if _is_single_batch(batches):
            logger.warning("got a single batch: every minibatch/run uses it (the operator does not vary)")
            self._cache = [batches]  # type: ignore[list-item]
        elif isinstance(batches, Sequence) and not isinstance(batches, (str, bytes)):
            self._cache = list(batches)
        elif isinstance(batches, Iterable):
            self._iter = iter(batches)
        else:
            raise EstimatorError(f"batches must be a BatchStream, a sequence or an iterable of batches, got {type(batches).__name__}")
        if self._iter is None and not self._cache:
            raise EstimatorError("the batch stream is empty: pass a BatchStream or at least one batch")

    def _raw(self, i: int) -> Batch:
        if self._stream is not None:
            return self._stream.batch(i)
        while self._iter is not None and len(self._cache) <= i:
            try:
                self._cache.append(next(self._iter))
            except StopIteration:
                self._iter = None
        if not self._cache:
            raise EstimatorError("the batch stream is empty: pass a BatchStream or at least one batch")
        if i >= len(self._cache) and not self._warned:
            logger.warning("only %d batches given; reusing them cyclically for minibatch %d and later", len(self._cache), i)
            self._warned = True
        return self._cache[i % len(self._cache)]

    def __call__(self, i: int) -> Batch:
        batch = move_batch(self._raw(i), self.device)
        if self.dtype is None:
            return batch
        cast = lambda t: t.to(self.dtype) if t.is_floating_point() else t  # noqa: E731
        if isinstance(batch, Mapping):
            return {k: cast(v) for k, v in batch.items()}
        return tuple(cast(t) for t in batch)  # type: ignore[return-value]

    def take(self, n: int) -> list[Batch]:
        return [self(i) for i in range(n)]


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
            ``stream.batch(i)``), or a sequence/iterable of batches (cycled if shorter
            than needed), or a single batch.
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
        EstimatorError: an empty batch stream, exact on too many parameters.
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
    settings = asdict(config)
    logger.info("estimating SD (%s) over d = %d parameters, η = %g, wd = %g", config.method, floss.d, lr, weight_decay)

    if config.method == "exact":
        est = exact_estimate(
            floss, source, lr=lr, weight_decay=weight_decay, n_batches=config.n_batches, chunk_size=config.chunk_size,
            max_params=config.max_dense_params, n_bootstrap=config.n_bootstrap, confidence=config.confidence,
            seed=config.seed, neutral_tol=config.neutral_tol, params=patterns, settings=settings,
        )
    elif config.method == "lyapunov":
        from sdcompress.estimator.lyapunov_sgd import lyapunov_sd

        lyap_batches = batches if isinstance(batches, BatchStream) and dtype is None else source.take(config.lyapunov_steps)
        est = lyapunov_sd(floss, lyap_batches, lr=lr, weight_decay=weight_decay, config=config)
        if patterns is not None and est.params is None:
            from dataclasses import replace

            est = replace(est, params=patterns)
    else:
        start = time.perf_counter()
        measure = hessian_slq(
            floss, source, config.slq_runs, config.lanczos_steps, chunk_size=config.chunk_size,
            method=config.hvp_method, seed=config.seed,  # type: ignore[arg-type]
            reorth=config.reorth, memory_budget=config.memory_budget,
        )
        est = density_estimate(
            measure, config.method, lr=lr, weight_decay=weight_decay, config=config,  # type: ignore[arg-type]
            wall_time_s=time.perf_counter() - start, params=patterns,
        )
        est.settings.update({k: v for k, v in settings.items() if k not in est.settings})
    logger.info("%s", est.summary())
    return est
