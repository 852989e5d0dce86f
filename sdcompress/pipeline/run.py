"""The main job: data → model → EoS training → estimate → plan → compress → evaluate → report.

``run_pipeline(RunConfig(...))`` runs every stage and writes each artifact into the run
folder as soon as it exists, atomically (temporary name, then rename):

    config.json            resolved config (compared on resume)
    trained/, train_log.json  the model the plan is made from; its training log (EoS verdict)
    sgd_phase/             checkpoints of the SGD phase of a non-built-in model (resumable)
    estimates.json         SD estimate (lyapunov/: the Lyapunov estimate and its subspace)
    evaluation_before.json losses and gap of the trained model
    plan.json              the plan, written before anything is changed (dry_run stops here)
    tries/NN/              closed-loop attempts (plan, compression, evaluation of each)
    model/, compression.json  the compressed model (save_compressed) and its report
    evaluation_after.json  losses, gap and SD re-measured with the same ω and η
    report.json, report.md, *.png   the run report (report.json marks a finished run)

Resume: rerunning with the same folder and the same resolved config loads every
finished artifact instead of recomputing it, so the numbers are the same as an
uninterrupted run. A folder holding report.json is refused unless ``overwrite``; an
unfinished folder whose config.json differs is refused too (it names the fields).
``overwrite`` removes the run's own files (``ARTIFACTS``) and nothing else. Bad targets
or ranks, an unloadable model or dataset, and a diverging EoS training of a built-in are
refused before the folder is created.

One run per folder: the run holds an exclusive lock on its folder
(:class:`sdcompress.io.FolderLock`, ``.sdcompress.lock``) from before it looks at the
folder until it returns, so a second run on the same folder, ``--overwrite`` or not, is
refused at once with one line naming the holder (pid, start time) and never mixes its
files with the first's. A lock left by a killed run is not held (the kernel drops it) and
is taken over, and that run's temporary names (``.NAME.*.tmp``) are removed. The output
location is checked first (a regular file or an unwritable place is refused before
anything runs); a fresh run that fails before its first artifact leaves no folder.

A network that did not train (0 steps) or ended at chance level
(:mod:`sdcompress.train.quality`) is refused with :class:`UntrainedError` before its
folder gets any artifact, unless ``allow_untrained`` (then the report's verdict says so).

Built-in models (``tiny-gpt2``, ``mlp``, ``modular-mlp``) are trained to the edge of
stability by :func:`sdcompress.train.cache.pretrained_builtin` (cached between runs);
other models get a short constant-η SGD phase from their checkpoint (``train.steps``).
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

import torch

from sdcompress.data import BatchStream
from sdcompress.estimator.result import SDEstimate
from sdcompress.evaluate import EvalReport, verdict
from sdcompress.errors import UntrainedError
from sdcompress.io import FolderLock, check_writable, make_dirs, remove_created, write_json_atomic
from sdcompress.models import LoadedModel
from sdcompress.pipeline.config import RunConfig, resolve_device
from sdcompress.pipeline.folder import CONFIG_FILE, clear_leftovers, clear_run, prepare_folder
from sdcompress.pipeline.preflight import run_preflight
from sdcompress.pipeline.stages import (
    Trained,
    finish_training,
    load_trained,
    needs_subspace,
    stage_compress_final,
    stage_estimate,
    stage_tries,
    train_summary,
    with_trained_lr,
)
from sdcompress.plan import Plan
from sdcompress.report import RunReport, environment, render_run
from sdcompress.train.quality import TrainingQuality, assess_train_log

logger = logging.getLogger(__name__)


def run_pipeline(config: RunConfig) -> RunReport:
    """Run the main job (module docstring) and return its report.

    With ``dry_run`` the plan is written and the returned report holds the plan's
    predicted sizes (``test_loss_after`` and ``sd_after`` are ``None``); report.json is
    not written, so a later run without ``dry_run`` resumes from the plan.

    Raises:
        ConfigError: invalid settings.
        OutputError: the output location is a regular file or cannot be written.
        FolderLockedError: another live run holds the folder.
        OutputExistsError: see :func:`prepare_folder`.
        UntrainedError: training ended at chance level or did not happen (see ``allow_untrained``).
        ModelError, DataError, OfflineError: the model or data cannot be loaded.
        DivergenceError: training diverged.
    """
    cfg = config.resolved()
    device = resolve_device(cfg.device)
    folder = Path(cfg.output.dir)
    check_writable(folder)
    created = make_dirs(folder)  # the lock lives in the folder; removed again if this run leaves nothing
    try:
        with FolderLock(folder, what="run folder"):
            for path in clear_leftovers(folder):
                logger.info("removed %s, left by an interrupted run", path.name)
            return _run_locked(cfg, folder, device)
    finally:
        remove_created(created)  # only where empty: a failed fresh run leaves nothing behind


def _run_locked(cfg: RunConfig, folder: Path, device: Any) -> RunReport:
    """:func:`run_pipeline` once the folder's lock is held."""
    tolerance = cfg.plan.tolerance if cfg.plan.tolerance is not None else cfg.evaluate.tolerance
    cfg_dict = cfg.to_dict()
    resuming = prepare_folder(folder, cfg_dict, cfg.output.overwrite)
    timings: dict[str, float] = {}
    t = time.perf_counter()
    logger.info("[1/5] model and training (%s on %s)", cfg.model.name, cfg.data.name)
    # what can fail on bad input (model, data, EoS training of a built-in) runs before the folder is touched
    trained = load_trained(cfg, folder if resuming else None, device)  # checks targets first
    quality = _check_quality(cfg, trained) if not trained.pending else None
    if cfg.output.overwrite:
        clear_run(folder)
    fresh = not (folder / CONFIG_FILE).exists()
    write_json_atomic(folder / CONFIG_FILE, cfg_dict)
    logger.info("run folder: %s%s", folder, " (resuming)" if resuming else "")
    try:
        # pre-flight: time a gradient and a product, predict every stage, pick settings that fit (or refuse)
        # (it predicts the full run, also for a dry run, which then stops before the Lyapunov stage)
        cfg, pre = run_preflight(cfg, trained, folder, device, lyapunov=needs_subspace(cfg))
        pending = trained.pending
        trained = finish_training(cfg, trained, folder)
        cfg = with_trained_lr(cfg, trained)  # lr auto: the η the SGD phase chose, for every later stage
        if pending:
            quality = _check_quality(cfg, trained)
    except BaseException:
        if fresh:  # a new run that failed in its first stage leaves nothing behind
            clear_run(folder)
        raise
    loaded, data = trained.loaded, trained.data
    timings["train"] = time.perf_counter() - t

    t = time.perf_counter()
    logger.info("[2/5] estimate: SD and the dominant Lyapunov subspace")
    stream = BatchStream(data.train, cfg.data.batch_size, seed=cfg.data.seed, replacement=cfg.data.replacement)
    use_lyapunov = (pre is None or pre.settings.get("lyapunov", True)) and not cfg.dry_run
    est, lyap, before = stage_estimate(cfg, folder, loaded, data, stream, lyapunov=use_lyapunov)
    timings["estimate"] = time.perf_counter() - t

    t = time.perf_counter()
    logger.info("[3/5] plan%s and compress", " (dry run: plan only)" if cfg.dry_run else "")
    result = stage_tries(cfg, folder, loaded, data, est, lyap, before, tolerance)
    timings["plan+compress"] = time.perf_counter() - t
    if cfg.dry_run:
        return _dry_report(cfg, loaded, est, before, result.plan, tolerance, _training(trained, quality), pre)

    t = time.perf_counter()
    logger.info("[4/5] save the compressed model and re-measure SD")
    compression, after = stage_compress_final(cfg, folder, loaded, data, stream, est, result)
    timings["final"] = time.perf_counter() - t
    v = verdict(before.test_loss, after.test_loss, tolerance, gap_before=before.gap, gap_after=after.gap,
                sd_before=est.sd, sd_after=after.sd, d_before=est.d, d_after=after.d)
    verdict_dict = v.to_dict()
    if quality is not None and quality.untrained:  # allowed by allow_untrained: the report says so first
        verdict_dict["message"] = f"UNTRAINED network (allow_untrained): {quality.reason}; {v.message}"
        verdict_dict["untrained"] = quality.reason
    report = RunReport(
        model=cfg.model.name, dataset=str(cfg.data.name),
        sd_before=float(est.sd), sd_after=after.sd, d_before=int(est.d), d_after=after.d,
        test_loss_before=before.test_loss, test_loss_after=after.test_loss,
        params_before=compression["params_before"], params_after=compression["params_after"],
        bytes_before=compression["bytes_before"], bytes_after=compression["bytes_after"],
        verdict=verdict_dict, plan=_plan_summary(result.plan), compression=compression,
        evaluation_before={**before.to_dict(), "estimate": None}, evaluation_after={**after.to_dict(), "estimate": None},
        estimate=_estimate_summary(est, lyap), training=_training(trained, quality), tries=result.tries,
        config=cfg_dict,
        environment=environment(str(device)), wall_time_s=timings,
        preflight=None if pre is None else pre.to_dict(),
    )
    logger.info("[5/5] report")
    report.save(folder)
    render_run(folder)
    logger.info("%s", verdict_dict["message"])
    return report


def _n_outputs(trained: Trained) -> int | None:
    """K of the chance level: the classes of a classifier; for a language model the entries of
    its output layer (a uniform guess over what the model can output scores ln K: GPT-2's
    50,257 on byte-level text, whose data vocabulary is 257), else the data's vocabulary."""
    info = trained.data.info
    if trained.loaded.task == "classification":
        k = info.get("n_classes")
    else:
        k = output_size(trained.loaded.model) or info.get("vocab_size")
    return int(k) if k else None


def output_size(model: Any) -> int | None:
    """Rows of a language model's output layer (``get_output_embeddings``), else its config's
    ``vocab_size``; ``None`` when neither is known."""
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    weight = getattr(head, "weight", None)
    if isinstance(weight, torch.Tensor) and weight.dim() == 2:
        return int(weight.shape[0])
    vocab = getattr(getattr(model, "config", None), "vocab_size", None)
    return int(vocab) if vocab else None


def _check_quality(cfg: RunConfig, trained: Trained) -> TrainingQuality | None:
    """Refuse a network that did not train (steps = 0) or ended at chance level, unless
    ``cfg.allow_untrained`` (then a warning, and the report says so).

    A checkpoint used as it is (no SGD phase, no log) was trained elsewhere: not judged.

    Raises:
        UntrainedError: the network is untrained and ``allow_untrained`` is false.
    """
    if not trained.log:
        return None
    quality = assess_train_log(trained.log, _n_outputs(trained))
    if not quality.untrained:
        return quality
    if getattr(cfg, "allow_untrained", False):
        logger.warning("%s; continuing because allow_untrained is set (the report says so)", quality.reason)
        return quality
    fix = "pass --steps > 0" if quality.steps == 0 else "use a smaller --lr or more --steps"
    raise UntrainedError(f"{quality.reason}: SD, the plan and the verdict of such a network mean nothing; {fix}, "
                         "or pass --allow-untrained to study it anyway")


def _training(trained: Trained, quality: TrainingQuality | None) -> dict[str, Any]:
    summary = train_summary(trained.log, trained.phase)
    if quality is not None:
        summary["quality"] = quality.to_dict()
    return summary


def _plan_summary(plan: Plan) -> dict[str, Any]:
    d = plan.to_dict()
    for m in d["modules"]:  # weights live in plan.json; the report keeps the choices
        m.pop("row_weights", None)
        m.pop("col_weights", None)
    return d


def _estimate_summary(est: SDEstimate, lyap: SDEstimate | None) -> dict[str, Any]:
    d = {k: v for k, v in est.to_dict().items() if k not in ("exponents", "weights", "extras")}
    if lyap is not None:
        d["lyapunov"] = {"m": len(lyap.exponents), "sd": lyap.sd, "lower_bound": lyap.lower_bound,
                         "top": float(lyap.exponents[0]) if len(lyap.exponents) else None, "n_hvp": lyap.n_hvp,
                         "module_energy": lyap.extras.get("module_energy")}
    return d


def _dry_report(cfg: RunConfig, loaded: LoadedModel, est: SDEstimate, before: EvalReport, plan: Plan,
                tolerance: float, training: dict[str, Any], pre: Any = None) -> RunReport:
    from sdcompress.compress import count_storage

    params, n_bytes = count_storage(loaded.model)
    return RunReport(
        model=cfg.model.name, dataset=str(cfg.data.name), sd_before=float(est.sd), sd_after=None, d_before=int(est.d),
        d_after=None, test_loss_before=before.test_loss, test_loss_after=None,  # type: ignore[arg-type]
        params_before=params, params_after=params - plan.params_before() + plan.params_after(),
        bytes_before=n_bytes, bytes_after=n_bytes - plan.bytes_before() + plan.bytes_after(),
        verdict={"preserved": None, "tolerance": tolerance, "message": "dry run: plan.json written, nothing compressed "
                 "(sizes after are the plan's predictions)"},
        plan=_plan_summary(plan), evaluation_before=before.to_dict(), estimate=_estimate_summary(est, None),
        training=training, config=cfg.to_dict(), preflight=None if pre is None else pre.to_dict(),
    )


__all__ = ["run_pipeline"]
