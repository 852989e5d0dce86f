"""Running a recipe, in one process or data parallel under torchrun / accelerate launch."""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from sdcompress.io import LOCK_FILE, FolderLock
from sdcompress.recipe.loader import load_recipe, save_resolved_recipe

log = logging.getLogger(__name__)


@contextlib.contextmanager
def launch_context(config: Any) -> Iterator[tuple[Any, bool]]:
    """Set up data parallelism when launched by ``torchrun`` / ``accelerate launch``.

    With ``WORLD_SIZE`` > 1 in the environment an ``accelerate.Accelerator`` is created
    (``cpu=True`` when CUDA is absent or the recipe says ``device: cpu``: gloo; otherwise
    NCCL with ``cuda:LOCAL_RANK`` made the current device, which is where ``device:
    auto``/``cuda`` then put each process's tensors). That initialises
    ``torch.distributed``, and from then on every Hessian-vector product and gradient of
    the estimator is sharded over the processes and all-reduced
    (:mod:`sdcompress.linalg.distributed`). Only the main process writes into
    ``output.dir``: the others work in a private copy of it (so they resume from the same
    stage) that is deleted afterwards, and log only warnings. A built-in model is trained
    into the cache before the process group starts (see :func:`_warm_builtin_cache`).

    Yields:
        (the config to run, whether this is the main process).
    """
    size = int(os.environ.get("WORLD_SIZE", "1") or 1)
    if size <= 1:
        yield config, True
        return
    import shutil
    import tempfile

    import torch
    import torch.distributed as dist
    from accelerate import Accelerator

    use_cpu = getattr(config, "device", None) == "cpu" or not torch.cuda.is_available()
    _warm_builtin_cache(config, use_cpu)
    owns_group = not dist.is_initialized()
    accelerator = Accelerator(cpu=use_cpu)
    lib_logger = logging.getLogger("sdcompress")
    old_level = lib_logger.level
    scratch = None
    output = getattr(config, "output", None)
    if output is not None and getattr(output, "dir", None) is not None and Path(output.dir).is_dir():
        # every process refuses a folder another run holds, before the barrier (one refusing alone would hang the rest)
        FolderLock(output.dir, what="run folder").check_free()
    if not accelerator.is_main_process:
        lib_logger.setLevel(logging.WARNING)
        if output is not None and getattr(output, "dir", None) is not None:
            # a private copy of the run folder as it is now, so that every process makes the
            # same resume / refuse decisions and runs the same collectives as the main one
            scratch = tempfile.mkdtemp(prefix=f"sdcompress-rank{accelerator.process_index}-")
            private = Path(scratch) / "run"
            if Path(output.dir).is_dir():
                shutil.copytree(output.dir, private, symlinks=True, ignore=shutil.ignore_patterns(LOCK_FILE))
            config = dataclasses.replace(config, output=dataclasses.replace(output, dir=str(private)))
    accelerator.wait_for_everyone()  # the main process writes only after every copy is made
    log.info("data parallel over %d processes (%s backend, device %s)", size, dist.get_backend(), accelerator.device)
    ok = False
    try:
        yield config, accelerator.is_main_process
        ok = True
    finally:
        lib_logger.setLevel(old_level)
        if scratch is not None:
            shutil.rmtree(scratch, ignore_errors=True)
        if owns_group and dist.is_initialized():
            if ok:  # after a failure the other processes may never get here: no barrier then
                dist.barrier()
            dist.destroy_process_group()


def _warm_builtin_cache(config: Any, use_cpu: bool) -> None:
    """Train a built-in model into the shared cache *before* ``torch.distributed`` starts.

    The cache is guarded by a file lock. Inside the process group, the process holding
    the lock would train, and its sharpness measurements (all-reduced Hessian-vector
    products) would wait for processes that are themselves waiting for the lock: a
    deadlock. Before the group exists, the first process trains alone and the others
    load its result when the lock is released.
    """
    from sdcompress.models import BUILTIN_MODELS

    model = getattr(config, "model", None)
    if model is None or model.name not in BUILTIN_MODELS:
        return
    folder = getattr(getattr(config, "output", None), "dir", None)
    if folder is not None and (Path(folder) / "trained").is_dir():
        return  # resuming: the pipeline loads the run's own copy
    import torch

    from sdcompress.train import pretrained_builtin

    device = None if use_cpu else torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
    pretrained_builtin(model.name, train_config=config.train, data_config=config.data,
                       model_options=model.options, model_seed=model.seed, device=device)


def run_recipe(path: str | Path, overrides: Sequence[str] = (), *, presets: Sequence[str] = ()) -> Any:
    """Load a recipe and run it with :func:`sdcompress.pipeline.run_pipeline`.

    Single process, or data parallel when launched by ``torchrun`` / ``accelerate launch``
    (see :func:`launch_context`). The main process writes the resolved recipe (every
    field spelled out, presets and overrides applied) to
    ``OUTPUT_DIR/resolved_recipe.yaml`` once the pipeline has started the run folder,
    also when the run stops early, so an interrupted run can be resumed from it.

    Args:
        path: the recipe file.
        overrides: ``section.key=value`` strings.
        presets: extra presets layered over the file (below ``overrides``).

    Returns:
        What ``run_pipeline`` returns (a ``RunReport``).

    Raises:
        ConfigError: a bad recipe or override (see :func:`load_recipe`); and whatever the
            pipeline raises.
    """
    from sdcompress.pipeline import run_pipeline

    config = load_recipe(path, overrides, presets=presets)
    if hasattr(config, "resolved"):
        config = config.resolved()  # fills in the run folder's name, so it is known here
    with launch_context(config) as (run_config, is_main):
        folder = getattr(getattr(config, "output", None), "dir", None)
        try:
            return run_pipeline(run_config)
        finally:
            # the pipeline refuses a non-empty folder without its config.json, so the recipe
            # goes in only once the pipeline has made the folder its own
            if is_main and folder is not None and (Path(folder) / "config.json").is_file():
                save_resolved_recipe(config, folder, source=str(path))
