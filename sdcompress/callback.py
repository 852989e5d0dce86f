"""Track sharpness and SD during someone else's training loop, without disturbing it.

Two entry points:

- :class:`SDTracker` — a plain hook for custom loops::

      tracker = SDTracker(model, batches, lr=0.1, every=50, path="run/sd_log.json")
      for step, batch in enumerate(loader, start=1):
          ...; optimizer.step()
          tracker.maybe_log(step)

- :class:`SDCallback` — a ``transformers.TrainerCallback`` doing the same every N
  optimizer steps of a ``Trainer``; records go to ``state.log_history`` (and to the
  ``logs`` of a log event at the same step) and to ``sd_log.json`` in the trainer's
  ``output_dir``.

What each record holds (at step t, on the fixed tracking batches B_1..B_k, at the
current weights w_t and step size η_t):

- ``sharpness``: λ_max(H_{B_1}(w_t)), the largest *algebraic* Hessian eigenvalue of the
  first tracking batch's loss (Lanczos, ``sharpness_steps`` steps), against the edge of
  stability threshold ``sharpness_threshold`` = 2/η_t; ``at_eos`` = λ_max + wd ≥ 2/η_t
  (the step Jacobian (1 − η·wd) I − η H has an eigenvalue ≤ −1: linearly unstable, as in
  :mod:`sdcompress.train`);
- ``sd``: the Sharpness Dimension of the SGD map J = (1 − η·wd) I − η H over the
  tracking batches, by a cheap estimator (SD-PS from a few stochastic Lanczos runs by
  default; pass ``estimate`` for anything else), with ``sd_over_d``, ``d``,
  ``sd_method``, ``n_hvp`` and ``wall_time_s``.

Not disturbing training is a contract, checked by tests/test_callback.py:

- weights: the estimators work on a detached copy of the flat parameter vector
  (``torch.func``), never writing back;
- gradients: nothing calls ``backward`` on the model's parameters, so ``.grad`` is
  untouched;
- RNG streams: the torch CPU and CUDA generators, Python's ``random`` and NumPy's global
  generator are saved before a measurement and restored after it;
- modes: with ``eval_mode=True`` (default) dropout is switched off *for the measurement
  only* (curvature of a random loss is undefined) and every module's training flag is
  restored afterwards; with ``eval_mode=False`` a model with active dropout is refused
  (:class:`~sdcompress.errors.ModelError`).

Under ``torch.distributed`` every process must call the tracker at the same steps with the
same batches (the Hessian-vector products are data-parallel); only rank 0 writes the file.
"""

from __future__ import annotations

import contextlib
import logging
import random
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from sdcompress.config import check_step_size
from sdcompress.data.core import Batch, move_batch
from sdcompress.errors import ConfigError
from sdcompress.io import write_json_atomic
from sdcompress.linalg.distributed import world
from sdcompress.linalg.lanczos import top_eigenvalue
from sdcompress.linalg.operators import HessianOperator
from sdcompress.models.functional import FunctionalLoss, LossFn

log = logging.getLogger(__name__)
LOG_FILE = "sd_log.json"


@contextlib.contextmanager
def undisturbed(model: nn.Module, *, eval_mode: bool = True) -> Iterator[None]:
    """Run a measurement on ``model`` and leave RNG streams and module modes as they were.

    Saves and restores the torch CPU generator, every initialised CUDA generator,
    Python's ``random`` and NumPy's global generator; with ``eval_mode`` puts the model in
    eval mode for the block and restores each module's own ``training`` flag after it.
    """
    cpu_state = torch.get_rng_state()
    cuda_states = torch.cuda.get_rng_state_all() if torch.cuda.is_available() and torch.cuda.is_initialized() else None
    py_state, np_state = random.getstate(), np.random.get_state()
    modes = [(m, m.training) for m in model.modules()]
    try:
        if eval_mode:
            model.eval()
        yield
    finally:
        for m, flag in modes:
            m.training = flag
        torch.set_rng_state(cpu_state)
        if cuda_states is not None:
            torch.cuda.set_rng_state_all(cuda_states)
        random.setstate(py_state)
        np.random.set_state(np_state)


def default_estimate_config() -> Any:
    """The cheap default: SD-PS from 4 SLQ runs of 20 Lanczos steps (80 HVPs), no bootstrap."""
    from sdcompress.estimator import EstimateConfig

    return EstimateConfig(method="ps", slq_runs=4, lanczos_steps=20, n_bootstrap=0)


class SDTracker:
    """Every ``every`` steps, measure top sharpness vs 2/η and SD on fixed batches.

    Args:
        model: the model being trained (measured in place, never modified).
        batches: the tracking batches (dict or ``(inputs, targets)``), fixed for the whole
            run so that records are comparable; moved to the model's device when used.
            ``None``: each call passes its own ``batch``.
        lr: step size η (> 0); ``None`` means every call passes ``lr=``.
        weight_decay: coupled L2 coefficient wd ≥ 0 of the step map.
        every: record at steps ``every, 2·every, ...`` (> 0).
        steps: record exactly at these steps instead of every ``every``.
        estimate: an ``EstimateConfig`` for SD (default :func:`default_estimate_config`);
            ``False`` records sharpness only.
        params: parameter patterns to restrict to (see ``select_parameters``); ``None``: all.
        loss_fn: loss on ``(logits, targets)`` for tuple batches.
        sharpness_steps: Lanczos steps for λ_max.
        eval_mode: measure with dropout off (modes restored after); see the module docs.
        path: JSON file to write the records to after each one (rank 0 only); ``None``: none.
        seed: seed of the Lanczos start vector for λ_max.
    """

    def __init__(
        self,
        model: nn.Module,
        batches: Sequence[Batch] | None = None,
        *,
        lr: float | None = None,
        weight_decay: float = 0.0,
        every: int = 10,
        steps: Sequence[int] | None = None,
        estimate: Any | None = None,
        params: str | Sequence[str] | None = None,
        loss_fn: LossFn | None = F.cross_entropy,
        sharpness_steps: int = 20,
        eval_mode: bool = True,
        path: str | Path | None = None,
        seed: int = 0,
    ) -> None:
        if not isinstance(every, int) or every < 1:
            raise ConfigError(f"every must be a positive integer number of steps, got {every!r}")
        check_step_size(1.0 if lr is None else lr, weight_decay)  # lr=None: each call passes lr=
        if batches is not None and len(batches) == 0:
            raise ConfigError("batches is empty: pass at least one tracking batch (or None and give maybe_log a batch)")
        if sharpness_steps < 1:
            raise ConfigError(f"sharpness_steps must be ≥ 1, got {sharpness_steps}")
        self.model, self.batches = model, list(batches) if batches is not None else None
        self.lr, self.weight_decay, self.every = lr, weight_decay, every
        self.steps = None if steps is None else set(int(s) for s in steps)
        self.estimate = default_estimate_config() if estimate is None else estimate
        self.params, self.loss_fn = params, loss_fn
        self.sharpness_steps, self.eval_mode, self.seed = sharpness_steps, eval_mode, seed
        self.path = None if path is None else Path(path)
        self.history: list[dict[str, Any]] = []

    def due(self, step: int) -> bool:
        """Whether ``step`` is a recording step."""
        return step in self.steps if self.steps is not None else step > 0 and step % self.every == 0

    def maybe_log(self, step: int, batch: Batch | None = None, *, lr: float | None = None) -> dict[str, Any] | None:
        """Record at ``step`` if it is due; returns the record or ``None``.

        Args:
            step: the number of optimizer steps taken so far.
            batch: the batch to measure on when the tracker has no fixed batches.
            lr: the current step size (overrides the tracker's ``lr``; use it with schedules).
        """
        if not self.due(step):
            return None
        record = {"step": int(step), **self.measure(batch, lr=lr)}
        self.history.append(record)
        if self.path is not None and world()[0] == 0:
            write_json_atomic(self.path, {"records": self.history})
        log.info(
            "step %d: sharpness %.4g (2/η = %.4g)%s", step, record["sharpness"], record["sharpness_threshold"],
            f", SD {record['sd']:.1f} of d = {record['d']}" if "sd" in record else "",
        )
        return record

    def measure(self, batch: Batch | None = None, *, lr: float | None = None) -> dict[str, Any]:
        """Sharpness and SD now (no step bookkeeping); see the module docs for the keys."""
        eta = lr if lr is not None else self.lr
        if eta is None:
            raise ConfigError("the tracker has no step size: pass lr= to SDTracker or to maybe_log")
        check_step_size(eta)
        batches = self.batches if self.batches is not None else None if batch is None else [batch]
        if not batches:
            raise ConfigError("no batch to measure on: give SDTracker fixed batches or pass maybe_log(step, batch)")
        device = next(self.model.parameters()).device
        batches = [move_batch(b, device) for b in batches]
        start = time.perf_counter()
        with undisturbed(self.model, eval_mode=self.eval_mode):
            floss = FunctionalLoss(self.model, self.params, self.loss_fn)
            op = HessianOperator(floss, batches[0])
            sharp = top_eigenvalue(op, steps=min(self.sharpness_steps, floss.d), seed=self.seed)
            record: dict[str, Any] = {
                "sharpness": sharp,
                "sharpness_threshold": 2.0 / eta,
                "at_eos": bool(sharp + self.weight_decay >= 2.0 / eta),
                "lr": float(eta),
                "weight_decay": float(self.weight_decay),
            }
            n_hvp = op.n_matvecs
            if self.estimate is not False:
                from sdcompress.estimator import estimate_sd

                est = estimate_sd(
                    self.model, _cycled(batches, self.estimate), lr=eta, weight_decay=self.weight_decay, params=self.params,
                    loss_fn=self.loss_fn, config=self.estimate,
                )
                record.update(sd=float(est.sd), sd_over_d=float(est.sd_over_d), d=int(est.d), sd_method=est.method)
                n_hvp += int(est.n_hvp)
            else:
                record["d"] = floss.d
        record.update(n_hvp=n_hvp, wall_time_s=time.perf_counter() - start)
        return record

    def save(self, path: str | Path | None = None) -> Path:
        """Write all records as JSON (to ``path`` or the tracker's own path)."""
        target = Path(path) if path is not None else self.path
        if target is None:
            raise ConfigError("no path to save to: pass one, or give SDTracker a path")
        return write_json_atomic(target, {"records": self.history})


def _cycled(batches: list[Batch], config: Any) -> list[Batch]:
    """The tracking batches as the estimator should see them: as given (a list gives every
    batch equal weight: exact uses each once, SLQ gives each the same number of runs), and
    for ``"lyapunov"`` repeated in order to one batch per step (a periodic trajectory)."""
    if getattr(config, "method", "ps") != "lyapunov":
        return list(batches)
    n = max(len(batches), int(getattr(config, "lyapunov_steps", len(batches))))
    return [batches[i % len(batches)] for i in range(n)]


try:  # transformers is a dependency; the plain tracker above works without it
    from transformers import TrainerCallback as _TrainerCallback
except ImportError:  # pragma: no cover
    _TrainerCallback = object  # type: ignore[assignment,misc]

#: keys of a record copied into the trainer's logs
LOG_KEYS = ("sharpness", "sharpness_threshold", "at_eos", "sd", "sd_over_d", "sd_method", "n_hvp")


class SDCallback(_TrainerCallback):  # type: ignore[misc,valid-type]
    """A ``transformers.TrainerCallback`` recording sharpness vs 2/η and SD every N steps.

    At each due optimizer step (``state.global_step``) it measures on the fixed tracking
    batches (see :class:`SDTracker`), appends ``{"step": t, "sharpness": …, "sd": …}``
    to ``state.log_history``, adds the same keys to the ``logs`` of a log event at that
    step (so reporting integrations see them), and rewrites ``OUTPUT_DIR/sd_log.json``.
    It never changes ``control``: training, logging and saving go on as without it.

    η is the optimizer's current learning rate (``param_groups[0]["lr"]``, so schedules
    are followed), unless ``lr`` is given; wd is ``args.weight_decay`` unless given. With
    Adam-type optimizers the SGD Jacobian (1 − η·wd) I − η H is a proxy, as in the paper.

    Args:
        batches: fixed tracking batches (dicts with ``input_ids``/``labels`` for causal
            LMs, or ``(inputs, targets)``), e.g. ``[data_collator(train_dataset[:8])]``.
        every: record every this many optimizer steps.
        steps: record exactly at these steps instead.
        lr, weight_decay: override the step map's η and wd.
        path: the JSON file (default ``args.output_dir/sd_log.json``; ``False``: none).
        **tracker_options: passed to :class:`SDTracker` (``estimate``, ``params``,
            ``sharpness_steps``, ``eval_mode``, ``loss_fn``, ``seed``).
    """

    def __init__(
        self,
        batches: Sequence[Batch],
        *,
        every: int = 10,
        steps: Sequence[int] | None = None,
        lr: float | None = None,
        weight_decay: float | None = None,
        path: str | Path | bool | None = None,
        **tracker_options: Any,
    ) -> None:
        if not batches:
            raise ConfigError("SDCallback needs at least one tracking batch")
        self.batches, self.every, self.steps = list(batches), every, steps
        self.lr, self.weight_decay, self.path = lr, weight_decay, path
        self.tracker_options = tracker_options
        self.tracker: SDTracker | None = None
        self._pending: dict[str, Any] | None = None
        # validate the options now rather than at the first step
        SDTracker(nn.Linear(1, 1), self.batches, lr=lr, every=every, steps=steps, **{**tracker_options, "estimate": False})

    def _build(self, args: Any, model: nn.Module) -> SDTracker:
        path = self.path
        if path is None:
            path = Path(args.output_dir) / LOG_FILE if getattr(args, "output_dir", None) else None
        elif path is False or path is True:
            path = Path(args.output_dir) / LOG_FILE if path is True else None
        wd = self.weight_decay if self.weight_decay is not None else float(getattr(args, "weight_decay", 0.0) or 0.0)
        return SDTracker(
            model, self.batches, lr=self.lr, weight_decay=wd, every=self.every, steps=self.steps,
            path=path if getattr(args, "process_index", 0) == 0 else None, **self.tracker_options,
        )

    def on_train_begin(self, args: Any, state: Any, control: Any, model: nn.Module | None = None, **kwargs: Any) -> None:
        if model is not None:
            self.tracker = self._build(args, model)

    def on_step_end(self, args: Any, state: Any, control: Any, model: nn.Module | None = None,
                    optimizer: Any = None, **kwargs: Any) -> None:
        if self.tracker is None:
            if model is None:
                return
            self.tracker = self._build(args, model)
        step = int(state.global_step)
        if not self.tracker.due(step):
            return
        eta = self.lr
        if eta is None:
            eta = float(optimizer.param_groups[0]["lr"]) if optimizer is not None else float(args.learning_rate)
        record = self.tracker.maybe_log(step, lr=eta)
        if record is None:
            return
        entry = {k: record[k] for k in LOG_KEYS if k in record}
        state.log_history.append({**entry, "step": step})
        self._pending = {**entry, "_step": step}

    def on_log(self, args: Any, state: Any, control: Any, logs: dict[str, Any] | None = None, **kwargs: Any) -> None:
        if self._pending is not None and logs is not None and self._pending["_step"] == state.global_step:
            logs.update({k: v for k, v in self._pending.items() if k != "_step"})
        self._pending = None

    @property
    def history(self) -> list[dict[str, Any]]:
        """The records taken so far (empty before training)."""
        return [] if self.tracker is None else self.tracker.history
