"""The stages of the main job. Each loads its artifact from the run folder when it is there
(resume) and otherwise computes it and writes it atomically."""

from __future__ import annotations

import copy
import json
import logging
import os
import shutil
import tempfile
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Callable

import torch

from sdcompress.compress import CompressionReport, compress_, load_compressed, save_compressed
from sdcompress.data import BatchStream, DatasetBundle
from sdcompress.config import AUTO_LR
from sdcompress.errors import ConfigError
from sdcompress.estimator import estimate_sd
from sdcompress.estimator.result import SDEstimate
from sdcompress.evaluate import EvalReport, evaluate, measure_sd, verdict
from sdcompress.io import set_default_modes, write_json_atomic
from sdcompress.models import BUILTIN_MODELS, LoadedModel, load_model
from sdcompress.pipeline.config import RunConfig
from sdcompress.pipeline.folder import (
    COMPRESSION_FILE,
    ESTIMATES_FILE,
    EVAL_AFTER_FILE,
    EVAL_BEFORE_FILE,
    LYAPUNOV_DIR,
    MODEL_DIR,
    PLAN_FILE,
    SGD_PHASE_DIR,
    TRAIN_LOG_FILE,
    TRAINED_DIR,
    TRIES_DIR,
)
from sdcompress.plan import Plan, check_target_rank, describe_modules, make_plan, needs_curvature, planning_inputs

logger = logging.getLogger(__name__)


# ------------------------------------------------------------------------------ train


def train_summary(log: dict[str, Any], phase: str) -> dict[str, Any]:
    """Scalars of a ``train_log.json`` (TrainResult.to_dict) for the report."""
    if not log:
        return {"phase": phase}
    final, verdict_ = log.get("final", {}), log.get("verdict", {})
    cfg = log.get("config", {})
    return {
        "phase": phase,
        "steps": log.get("steps"),
        "lr": cfg.get("lr"),
        "weight_decay": cfg.get("weight_decay"),
        "momentum": cfg.get("momentum"),
        "batch_size": log.get("data_config", {}).get("batch_size"),
        "final_train_loss": final.get("train_loss"),
        "final_test_loss": final.get("test_loss"),
        "final_sharpness": final.get("sharpness"),
        "two_over_lr": verdict_.get("two_over_lr"),
        "at_eos": verdict_.get("at_eos"),
        "eos": verdict_.get("message"),
    }


@dataclass
class Trained:
    """The model the plan is made from, its data, and its training record.

    Attributes:
        loaded, data: model and dataset bundle.
        log: ``TrainResult.to_dict()`` (``{}`` before training or without one).
        phase: what kind of training produced it.
        pending: a non-built-in model whose SGD phase is still to run (needs the folder).
    """

    loaded: LoadedModel
    data: DatasetBundle
    log: dict[str, Any]
    phase: str
    pending: bool = False


def load_trained(cfg: RunConfig, folder: Path | None, device: torch.device, *,
                 check: Callable[[LoadedModel], None] | None = None) -> Trained:
    """Load (resume), or train a built-in at EoS (cached), or load a checkpoint whose SGD
    phase :func:`finish_training` runs once the run folder exists. Writes nothing.

    ``check`` runs on the model before any training (a built-in's untrained skeleton has
    the same modules); default :func:`check_targets`. ``sdcompress estimate`` loads
    through here too, with its own check."""
    from sdcompress.train import builtin_for_data, load_training_data, pretrained_builtin

    check = check or (lambda loaded: check_targets(cfg, loaded))
    name = cfg.model.name
    if folder is not None and (folder / TRAINED_DIR).is_dir() and (folder / TRAIN_LOG_FILE).is_file():
        loaded = replace(load_model(str(folder / TRAINED_DIR)), name=name)
        loaded.model.to(device)
        log = json.loads((folder / TRAIN_LOG_FILE).read_text())
        logger.info("loaded the trained model from %s", folder / TRAINED_DIR)
        check(loaded)
        return Trained(loaded, load_training_data(name, cfg.data, loaded.tokenizer), log, log.get("phase", "loaded"))
    if name in BUILTIN_MODELS:
        # the untrained structure has the same module names: check targets before training
        skeleton = builtin_for_data(name, load_training_data(name, cfg.data), seed=cfg.model.seed, options=cfg.model.options)
        check(skeleton)
        loaded, data, result = pretrained_builtin(name, train_config=cfg.train, data_config=cfg.data,
                                                  model_options=cfg.model.options, model_seed=cfg.model.seed, device=device)
        loaded.model.to(device)
        return Trained(loaded, data, result.to_dict(), "edge-of-stability training of the built-in (cached)")
    loaded = load_model(name, seed=cfg.model.seed, **cfg.model.options)
    loaded.model.to(device)
    check(loaded)
    data = load_training_data(name, cfg.data, loaded.tokenizer)
    return Trained(loaded, data, {}, checkpoint_phase(cfg), pending=cfg.train.steps > 0)


def checkpoint_phase(cfg: RunConfig) -> str:
    """How the report names the SGD phase run from a checkpoint."""
    lr = "η auto (2/λ_max at the start)" if cfg.train.lr == AUTO_LR else f"η = {cfg.train.lr:g}"
    return f"constant-η SGD phase of {cfg.train.steps} steps from the checkpoint ({lr})"


def finish_training(cfg: RunConfig, trained: Trained, folder: Path) -> Trained:
    """Run a pending SGD phase (checkpointed in ``folder/sgd_phase`` so it resumes), then
    write ``trained/`` (save_pretrained, all or nothing) and ``train_log.json``."""
    from sdcompress.train import train_sgd

    if trained.pending:
        result = train_sgd(trained.loaded, trained.data, cfg.train, data_config=cfg.data, output_dir=folder / SGD_PHASE_DIR)
        # the pre-flight may have changed the step count since load_trained named the phase
        trained = replace(trained, log=result.to_dict(), pending=False, phase=checkpoint_phase(cfg))
    target = folder / TRAINED_DIR
    if not target.is_dir():
        tmp = Path(tempfile.mkdtemp(prefix=f".{TRAINED_DIR}.", suffix=".tmp", dir=folder))
        try:
            trained.loaded.model.save_pretrained(tmp)
            if trained.loaded.tokenizer is not None:
                trained.loaded.tokenizer.save_pretrained(tmp)
            set_default_modes(tmp)  # mkdtemp makes 0700, safetensors 0600: one mode for the run folder
            os.replace(tmp, target)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
    if not (folder / TRAIN_LOG_FILE).is_file():
        write_json_atomic(folder / TRAIN_LOG_FILE, {**trained.log, "phase": trained.phase})
    return trained


def with_trained_lr(cfg: RunConfig, trained: Trained) -> RunConfig:
    """``cfg`` with ``train.lr: auto`` replaced by the η its SGD phase used (from the training
    log), so that every later stage (SD, the plan, the re-measure) uses that η.

    Raises:
        ConfigError: ``auto`` with no SGD phase to take η from (``--steps 0``).
    """
    from sdcompress.train.step_size import trained_lr

    if cfg.train.lr != AUTO_LR:
        return cfg
    lr = trained_lr(trained.log)
    if lr is None:
        raise ConfigError("train.lr is auto but no SGD phase ran to choose η from (e.g. --steps 0); "
                          "pass the step size the model was trained with, e.g. --lr 0.1")
    return replace(cfg, train=replace(cfg.train, lr=lr))


# --------------------------------------------------------------------------- estimate


def _params(cfg: RunConfig) -> Any:
    return getattr(cfg.estimate, "params", None)


def _lr_wd(cfg: RunConfig) -> tuple[float, float]:
    return float(cfg.train.lr), float(getattr(cfg.train, "weight_decay", 0.0))


def needs_subspace(cfg: RunConfig) -> bool:
    """The Lyapunov subspace is needed by the SD planner (and by baselines sized to it)."""
    return cfg.plan.strategy == "sd" or not cfg.plan.budget


def stage_estimate(cfg: RunConfig, folder: Path, loaded: LoadedModel, data: DatasetBundle,
                   stream: BatchStream, *, lyapunov: bool = True) -> tuple[SDEstimate, SDEstimate | None, EvalReport]:
    """SD estimate, Lyapunov subspace estimate (unless ``lyapunov`` is False: the pre-flight
    found no room for it, or a dry run), and the evaluation of the trained model."""
    lr, wd = _lr_wd(cfg)
    kw = dict(lr=lr, weight_decay=wd, params=_params(cfg), loss_fn=loaded.loss_fn, config=cfg.estimate)
    if (folder / ESTIMATES_FILE).is_file():
        est = SDEstimate.load(folder, ESTIMATES_FILE)
    else:
        logger.info("estimating SD (%s)", cfg.estimate.method)
        est = estimate_sd(loaded.model, stream, method=cfg.estimate.method, **kw)
        est.save(folder, ESTIMATES_FILE)
        for written in folder.glob("*.safetensors"):  # the subspace of a Lyapunov estimate (safetensors: 0600)
            set_default_modes(written)
    logger.debug("%s", est.summary())  # estimate_sd logged it at INFO
    lyap = est if est.subspace is not None else None
    if lyap is None and needs_subspace(cfg) and lyapunov:
        ldir = folder / LYAPUNOV_DIR
        if (ldir / ESTIMATES_FILE).is_file():
            lyap = SDEstimate.load(ldir, ESTIMATES_FILE)
        else:
            # the frame starts from the first step's Jacobian (estimate.lyapunov_warm_start) and runs to
            # its convergence test (estimate.lyapunov_tol), capped at estimate.lyapunov_steps
            logger.info("tracking the dominant Lyapunov subspace (warm start: %s, tolerance: %s, at most %s steps)",
                        cfg.estimate.lyapunov_warm_start, cfg.estimate.lyapunov_tol, cfg.estimate.lyapunov_steps)
            lyap = estimate_sd(loaded.model, stream, method="lyapunov", **kw)
            tmp = Path(tempfile.mkdtemp(prefix=f".{LYAPUNOV_DIR}.", suffix=".tmp", dir=folder))
            try:
                lyap.save(tmp, ESTIMATES_FILE)
                set_default_modes(tmp)
                os.replace(tmp, ldir)
            finally:
                shutil.rmtree(tmp, ignore_errors=True)  # gone after the rename; removed when anything failed
        logger.debug("%s", lyap.summary())  # estimate_sd logged it at INFO
        conv = lyap.convergence or {}
        if lyap.converged:
            logger.info("the Lyapunov subspace converged after %s steps (%s test)", conv.get("steps"), conv.get("test"))
        elif lyap.converged is False:
            def g(x: Any) -> str:
                return "n/a" if x is None else f"{float(x):.3g}"

            logger.warning("the Lyapunov subspace did NOT converge within %s steps (frames differ by %s, tolerance %s): "
                           "plans must not use it; raise --set estimate.lyapunov_steps=N",
                           conv.get("steps"), g(conv.get("max_frame_difference")), g(conv.get("tol")))
    if (folder / EVAL_BEFORE_FILE).is_file():
        before = EvalReport.load(folder / EVAL_BEFORE_FILE)
    else:
        before = evaluate(loaded, data, config=replace(cfg.evaluate, remeasure_sd=False))
        before = replace(before, sd=float(est.sd), d=int(est.d))
        before.save(folder / EVAL_BEFORE_FILE)
    return est, lyap, before


# ------------------------------------------------------------------------------ tries

#: marks a plan written by a dry run (made before the Lyapunov stage; a full run remakes it)
DRY_RUN_NOTE = "dry run: planned before the Lyapunov stage, from the SD estimate alone; the full run plans again"


def check_targets(cfg: RunConfig, loaded: LoadedModel) -> None:
    """Refuse, before anything is written, target patterns that match nothing and a
    hand-set rank larger than a target matrix.

    Raises:
        ModelError: a pattern matches no Linear/Conv1D module (real names listed).
        PlanError: ``target_rank`` exceeds a module's full rank.
    """
    cfg.check_model(loaded.model)  # estimator settings that need d (Lyapunov m ≤ d, exact's size)
    check_target_rank(cfg.plan, describe_modules(loaded.model, cfg.plan.targets, cfg.plan.ignore))


@dataclass
class TriesResult:
    """The chosen plan and what each try gave.

    Attributes:
        plan: the chosen plan (the last try: the first that passed, or the largest).
        tries: one summary per try.
        compressed: the chosen compressed model and its report, when still in memory.
        evaluation: the chosen try's evaluation (losses; SD is added by the final stage).
    """

    plan: Plan
    tries: list[dict[str, Any]] = field(default_factory=list)
    compressed: tuple[LoadedModel, CompressionReport] | None = None
    evaluation: EvalReport | None = None


def compress_copy(loaded: LoadedModel, plan: Plan) -> tuple[LoadedModel, CompressionReport]:
    """A compressed deep copy of ``loaded`` (the original is left as it is)."""
    model = copy.deepcopy(loaded.model)
    report = compress_(model, plan)
    return replace(loaded, model=model), report


def stage_tries(cfg: RunConfig, folder: Path, loaded: LoadedModel, data: DatasetBundle, est: SDEstimate,
                lyap: SDEstimate | None, before: EvalReport, tolerance: float) -> TriesResult:
    """Plan, compress and evaluate; with ``plan.tolerance``, raise until within it."""
    closed = cfg.plan.tolerance is not None
    fisher, curv = [], []
    if cfg.plan.strategy == "fisher":
        fs = BatchStream(data.train, cfg.data.batch_size, seed=cfg.plan.seed, replacement=cfg.data.replacement)
        fisher = fs.take(cfg.plan.fisher_batches)
    if needs_curvature(cfg.plan):
        cs = BatchStream(data.train, cfg.data.batch_size, seed=cfg.plan.seed + 1, replacement=cfg.data.replacement)
        curv = cs.take(cfg.plan.curvature_batches)
    inputs = planning_inputs(loaded.model, cfg.plan, params=_params(cfg), fisher_batches=fisher, curvature_batches=curv,
                             loss_fn=loaded.loss_fn)
    modules, stats, curvature = inputs.modules, inputs.stats, inputs.curvature
    result: TriesResult | None = None
    previous: dict | None = None
    for attempt in range(cfg.plan.max_tries if closed else 1):
        pcfg = cfg.plan.escalated(attempt)
        tdir = folder / TRIES_DIR / f"{attempt + 1:02d}" if closed else folder
        plan_path = tdir / PLAN_FILE
        plan = Plan.load(plan_path) if plan_path.is_file() else None
        if plan is not None and DRY_RUN_NOTE in plan.notes and not cfg.dry_run:
            plan = None  # a dry run's plan was made before the Lyapunov stage: make it again
        if plan is None:
            plan = make_plan(est, modules, pcfg, subspace=lyap, stats=stats, curvature=curvature)
            if cfg.dry_run:
                plan = replace(plan, notes=tuple(plan.notes) + (DRY_RUN_NOTE,))
        if previous is not None and plan.to_dict()["modules"] == previous:
            logger.info("try %d would repeat the previous plan: nothing left to raise", attempt + 1)
            break
        previous = plan.to_dict()["modules"]
        plan.save(plan_path)
        if closed:
            plan.save(folder / PLAN_FILE)  # the current plan, before anything is compressed
        logger.info("%s", plan.summary())
        for note in plan.notes:
            logger.info("note: %s", note)
        if cfg.dry_run:
            return TriesResult(plan)
        eval_path = tdir / ("evaluation.json" if closed else EVAL_AFTER_FILE)
        compressed = None
        if eval_path.is_file():
            ev = EvalReport.load(eval_path)
            creport = CompressionReport.from_dict(json.loads((tdir / COMPRESSION_FILE).read_text()))
        else:
            compressed = compress_copy(loaded, plan)
            creport = compressed[1]
            ev = evaluate(compressed[0], data, config=replace(cfg.evaluate, remeasure_sd=False))
            creport.save(tdir / COMPRESSION_FILE)
            if closed:
                ev.save(eval_path)
        v = verdict(before.test_loss, ev.test_loss, tolerance)
        summary = {"try": attempt + 1, "scale": plan.budget.get("sd_scale", plan.budget.get("knob")),
                   "test_loss": ev.test_loss, "delta": v.delta_test_loss, "preserved": v.preserved,
                   "params_after": creport.params_after, "bytes_after": creport.bytes_after}
        if closed:
            logger.info("try %d: %s", attempt + 1, v.message)
        result = TriesResult(plan, (result.tries if result else []) + [summary], compressed, ev)
        if v.preserved:
            break
    if result is None:  # unreachable: the loop runs at least once and only stops after a try
        raise RuntimeError("closed loop made no try")
    if not closed:
        result.tries = []
    else:
        result.plan.save(folder / PLAN_FILE)  # the chosen try's plan
    return result


# ------------------------------------------------------------------------------ final


def stage_compress_final(cfg: RunConfig, folder: Path, loaded: LoadedModel, data: DatasetBundle, stream: BatchStream,
                         est: SDEstimate, result: TriesResult) -> tuple[dict[str, Any], EvalReport]:
    """Save the chosen compressed model, re-measure SD on it, write evaluation_after.json."""
    plan = result.plan
    after_path = folder / EVAL_AFTER_FILE
    comp_path = folder / COMPRESSION_FILE
    model_dir = folder / MODEL_DIR
    compressed = result.compressed
    if not model_dir.is_dir():
        if compressed is None:
            compressed = compress_copy(loaded, plan)
        save_compressed(compressed[0].model, model_dir, plan, compressed[1], tokenizer=loaded.tokenizer,
                        extra={"source_model": cfg.model.name, "dataset": cfg.data.name, "sd": est.sd})
    if cfg.plan.tolerance is not None:  # the chosen try's compression report, at the top
        chosen = folder / TRIES_DIR / f"{result.tries[-1]['try']:02d}" / COMPRESSION_FILE
        write_json_atomic(comp_path, json.loads(chosen.read_text()))
    creport_dict = json.loads(comp_path.read_text())
    if after_path.is_file() and (EvalReport.load(after_path).sd is not None or not cfg.evaluate.remeasure_sd):
        return creport_dict, EvalReport.load(after_path)
    ev = result.evaluation
    if cfg.evaluate.remeasure_sd:
        if compressed is None:
            c_loaded = load_compressed(model_dir)
            c_loaded = replace(loaded, model=c_loaded.model.to(next(loaded.model.parameters()).device))
        else:
            c_loaded = compressed[0]
        # pre-flight: re-probe the compressed model (a gradient and a product) and log the re-measure's prediction
        from sdcompress.pipeline.preflight import remeasure_prediction

        remeasure_prediction(cfg, c_loaded, stream, lr=est.lr, weight_decay=est.weight_decay)
        logger.info("re-measuring SD on the compressed model (same batches ω, η = %g)", est.lr)
        sd_after = measure_sd(c_loaded, stream, lr=est.lr, weight_decay=est.weight_decay, estimate_config=cfg.estimate,
                              method=est.method, params=_params(cfg))
        ev = replace(ev, sd=float(sd_after.sd), d=int(sd_after.d), estimate=sd_after.to_dict())
    ev.save(after_path)
    return creport_dict, ev


__all__ = ["Trained", "TriesResult", "check_targets", "compress_copy", "finish_training", "load_trained", "needs_subspace",
           "stage_compress_final", "stage_estimate", "stage_tries", "train_summary"]
