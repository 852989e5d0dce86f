"""Constant-step SGD at the edge of stability: ``train_sgd``.

One step is ``torch.optim.SGD`` (coupled weight decay, optional heavy-ball momentum) on
the t-th batch of the seeded stream ω; with momentum 0 that is

    w_{t+1} = w_t − η (∇L_{B_t}(w_t) + wd · w_t).

Every ``log_every`` steps (and at step 0 and the last step) the log records, at w_t and
before the step: the loss on a fixed train subset and on a fixed test subset (accuracy
where defined), the minibatch loss L_{B_t}(w_t), and λ_max(H_{B_t}(w_t)) next to 2/η.

Determinism: the only randomness is the batch stream (a pure function of seed and step)
and the Lanczos start vectors (their own seeded generators); no global RNG stream is
read or advanced. On CPU the same inputs give bit-identical weights and logs, and a run
resumed from a checkpoint ends bit-identical to an uninterrupted one.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import shutil
import tempfile
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

import torch

from sdcompress.config import DataConfig
from sdcompress.data.core import DatasetBundle, move_batch
from sdcompress.data.stream import BatchStream
from sdcompress.errors import ConfigError, DivergenceError, ModelError
from sdcompress.io import set_default_modes
from sdcompress.models.functional import check_deterministic
from sdcompress.models.loader import LoadedModel
from sdcompress.progress import progress
from sdcompress.train.checkpoint import CHECKPOINT_FILE, load_checkpoint, read_checkpoint_info, save_checkpoint
from sdcompress.train.config import TrainConfig
from sdcompress.train.eos import Sharpness, evaluate, eos_verdict, fixed_subset, model_device, sharpness
from sdcompress.train.step_size import AUTO_LR, resolve_auto
from sdcompress.train.log import MODEL_DIR, TrainResult, write_train_log

logger = logging.getLogger(__name__)

#: TrainConfig fields that do not change the trajectory or its log: a checkpoint written
#: under other values of these can be resumed (e.g. to extend a run with more steps).
_NOT_IN_FINGERPRINT = ("steps", "checkpoint_every", "eos_window", "eos_tolerance")


def run_fingerprint(loaded: LoadedModel, data: DatasetBundle, config: TrainConfig, data_config: DataConfig) -> str:
    """Hash of everything that decides the trajectory and its log.

    Model name, the bytes of the initial trainable parameters, dataset name and split
    sizes, the minibatch stream settings, and the training settings other than
    ``steps``, ``checkpoint_every`` and the verdict's window/tolerance.
    """
    h = hashlib.sha256()
    settings = {
        "model": loaded.name,
        "dataset": data.name,
        "n_train": len(data.train),
        "n_test": len(data.test),
        "train": {k: v for k, v in config.to_dict().items() if k not in _NOT_IN_FINGERPRINT},
        "data": {k: v for k, v in asdict(data_config).items() if k in ("batch_size", "seed", "replacement")},
    }
    h.update(json.dumps(settings, sort_keys=True).encode())
    for name, p in loaded.model.named_parameters():
        h.update(name.encode())
        h.update(p.detach().contiguous().view(-1).view(torch.uint8).cpu().numpy().tobytes())
    return h.hexdigest()[:20]


def _divergence(step: int, value: float, what: str, lr: float) -> DivergenceError:
    return DivergenceError(
        f"training diverged at step {step}: the {what} is {value} with step size η = {lr:g} (2/η = {2 / lr:.4g}); "
        f"the step is too large for this model: try --lr {lr / 2:g}"
    )


def _record(
    loaded: LoadedModel, data: DatasetBundle, batch: Any, step: int, config: TrainConfig, rows: tuple[list[int], list[int]], batch_size: int, steps_per_epoch: int,
    sharp: Sharpness | None = None,
) -> dict[str, Any]:
    """The log record at w_t (before step t's update); ``sharp``: λ_max already measured there."""
    with torch.no_grad():
        mb_loss = float(loaded.loss(batch))
    if not math.isfinite(mb_loss):
        raise _divergence(step, mb_loss, "minibatch loss", config.lr)
    train_loss, train_acc = evaluate(loaded, data.train, rows[0], batch_size)
    test_loss, test_acc = evaluate(loaded, data.test, rows[1], batch_size)
    if sharp is None:
        sharp = sharpness(loaded, batch, steps=config.sharpness_steps, seed=step)
    return {
        "step": step,
        "epoch": step / steps_per_epoch,
        "train_loss": train_loss,
        "train_accuracy": train_acc,
        "test_loss": test_loss,
        "test_accuracy": test_acc,
        "minibatch_loss": mb_loss,
        "sharpness": sharp.value,
        "sharpness_residual": sharp.residual,
        "two_over_lr": 2.0 / config.lr,
        "stability_threshold": 2.0 * (1.0 + config.momentum) / config.lr - config.weight_decay,
    }


def _save_model(loaded: LoadedModel, folder: Path) -> Path:
    """``save_pretrained`` into ``folder/model`` as a whole: written beside it, then swapped in."""
    target = folder / MODEL_DIR
    tmp = Path(tempfile.mkdtemp(prefix=f".{MODEL_DIR}.", suffix=".tmp", dir=folder))
    old = folder / f".{MODEL_DIR}.old"
    try:
        loaded.model.save_pretrained(tmp)
        if loaded.tokenizer is not None:
            loaded.tokenizer.save_pretrained(tmp)
        set_default_modes(tmp)  # mkdtemp makes 0700, safetensors 0600
        if target.exists():
            shutil.rmtree(old, ignore_errors=True)
            os.replace(target, old)
        os.replace(tmp, target)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
        shutil.rmtree(old, ignore_errors=True)
    return target


def train_sgd(
    loaded: LoadedModel,
    data: DatasetBundle,
    config: TrainConfig,
    *,
    data_config: DataConfig | None = None,
    stream: BatchStream | None = None,
    output_dir: str | Path | None = None,
    resume: bool = True,
) -> TrainResult:
    """Train ``loaded.model`` in place with constant-step SGD, logging sharpness against 2/η.

    Args:
        loaded: the model and its loss (trained in place; its train/eval mode is left as is).
        data: train split (minibatches) and test split (test loss).
        config: step size, steps, momentum, weight decay, logging, verdict, checkpoints.
            ``lr: auto`` takes η = 2(1 + μ)/(λ_0 + wd) from λ_0 = λ_max of the first
            minibatch's Hessian at the starting weights (:mod:`sdcompress.train.step_size`;
            the step-0 log record reuses λ_0); the result's config holds the η used.
        data_config: batch size, seed and sampling of the stream ω (default ``DataConfig()``).
        stream: a ready stream over ``data.train`` (overrides ``data_config``'s batch size,
            seed and sampling, which are then recorded from the stream).
        output_dir: when given, writes ``checkpoint.safetensors`` every
            ``checkpoint_every`` steps, and at the end ``train_log.json``,
            ``train_log.png`` and ``model/`` (``save_pretrained``). The folder is created.
        resume: continue from ``output_dir``'s checkpoint when it belongs to this run
            (same fingerprint) and is not past ``config.steps``; otherwise start afresh.

    Returns:
        The log, the EoS verdict, final losses and output paths.

    Raises:
        ConfigError: bad settings, a batch size larger than the train split, a model whose
            task does not match the data, or ``lr: auto`` at a start with λ_0 + wd ≤ 0.
        ModelError: a model with active dropout (its loss is random) or no trainable parameter.
        DivergenceError: a non-finite loss; the message suggests half the step size.
    """
    config.validate()
    data_config = DataConfig(name=data.name) if data_config is None else data_config
    if stream is None:
        stream = BatchStream(data.train, data_config.batch_size, seed=data_config.seed, replacement=data_config.replacement)
    else:
        data_config = replace(data_config, batch_size=stream.batch_size, seed=stream.seed, replacement=stream.replacement)
    if loaded.task != data.task:
        raise ConfigError(f"model {loaded.name!r} is a {loaded.task!r} model but dataset {data.name!r} is {data.task!r}; pick a matching dataset")
    check_deterministic(loaded.model)
    params = [p for p in loaded.model.parameters() if p.requires_grad]
    if not params:
        raise ModelError(f"model {loaded.name!r} has no trainable parameter (all have requires_grad=False)")
    device = model_device(loaded)
    sharp_0 = None
    if config.lr == AUTO_LR:  # at w_0, before any checkpoint is loaded: a resumed run gets the same η
        sharp_0 = sharpness(loaded, move_batch(stream.batch(0), device), steps=config.sharpness_steps, seed=0)
        config = resolve_auto(config, sharp_0.value)
        logger.info("lr auto: λ_max(H_B) = %.5g at step 0 (%d Lanczos steps) → η = 2(1 + μ)/(λ_max + wd) = %.5g",
                    sharp_0.value, config.sharpness_steps, config.lr)
    optimizer = torch.optim.SGD(params, lr=config.lr, momentum=config.momentum, weight_decay=config.weight_decay)
    fingerprint = run_fingerprint(loaded, data, config, data_config)
    n_eval = config.eval_batches * stream.batch_size
    rows = (fixed_subset(data.train, n_eval), fixed_subset(data.test, n_eval))
    folder = None if output_dir is None else Path(output_dir)

    start, records, resumed_from = 0, [], None
    ckpt = None if folder is None else folder / CHECKPOINT_FILE
    info = read_checkpoint_info(ckpt) if resume and ckpt is not None else None
    if info is not None:
        if info.fingerprint == fingerprint and info.step <= config.steps:
            load_checkpoint(ckpt, loaded.model, optimizer)
            start, records, resumed_from = info.step, info.records, info.step
            logger.info("resuming from the checkpoint at step %d in %s", start, ckpt)
        else:
            why = "another run's settings or initial weights" if info.fingerprint != fingerprint else f"step {info.step} > steps {config.steps}"
            logger.warning("ignoring the checkpoint in %s (%s); training from step 0", ckpt, why)

    bar = progress(total=config.steps, initial=start, desc=f"SGD η={config.lr:g}", unit="step")
    try:
        for t in range(start, config.steps + 1):
            batch = move_batch(stream.batch(t), device)
            if t % config.log_every == 0 or t == config.steps:
                rec = _record(loaded, data, batch, t, config, rows, stream.batch_size, stream.steps_per_epoch,
                              sharp=sharp_0 if t == 0 else None)
                records.append(rec)
                logger.debug("step %d: %s", t, rec)
                bar.set_postfix(loss=f"{rec['train_loss']:.4g}", lam=f"{rec['sharpness']:.4g}", two_over_lr=f"{2 / config.lr:.4g}")
            if t == config.steps:
                break
            optimizer.zero_grad(set_to_none=True)
            loss = loaded.loss(batch)
            if not torch.isfinite(loss.detach()):
                raise _divergence(t, float(loss.detach()), "minibatch loss", config.lr)
            loss.backward()
            optimizer.step()
            bar.update(1)
            if ckpt is not None and ((t + 1) % config.checkpoint_every == 0 or t + 1 == config.steps):
                save_checkpoint(ckpt, loaded.model, optimizer, t + 1, fingerprint, records)
    finally:
        bar.close()

    verdict = eos_verdict(
        records, lr=config.lr, weight_decay=config.weight_decay, momentum=config.momentum, window=config.eos_window,
        tolerance=config.eos_tolerance,
    )
    result = TrainResult(
        model=loaded.name,
        dataset=data.name,
        n_params=sum(p.numel() for p in params),
        config=config,
        data_config=data_config,
        log=tuple(records),
        verdict=verdict,
        steps=config.steps,
        resumed_from=resumed_from,
        fingerprint=fingerprint,
        output_dir=folder,
    )
    logger.info("%s", verdict.message)
    if folder is not None:
        from sdcompress.train.plots import save_training_plot

        folder.mkdir(parents=True, exist_ok=True)
        _save_model(loaded, folder)
        save_training_plot(result, folder)
        write_train_log(result, folder)  # last: its presence marks a finished run
    return result
