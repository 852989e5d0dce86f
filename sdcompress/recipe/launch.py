"""Running a recipe, in one process or data parallel under torchrun / accelerate launch."""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from sdcompress.recipe.loader import load_recipe, save_resolved_recipe

log = logging.getLogger(__name__)


@contextlib.contextmanager
def launch_context(config: Any) -> Iterator[tuple[Any, bool]]:
    """Set up data parallelism when launched by ``torchrun`` / ``accelerate launch``.

    With ``WORLD_SIZE`` > 1 in the environment an ``accelerate.Accelerator`` is created
    (``cpu=True`` when CUDA is absent or the recipe says ``device: cpu``; gloo on CPU,
    NCCL on GPUs), which initialises ``torch.distributed``; from then on every
    Hessian-vector product and gradient of the estimator is sharded over the processes
    and all-reduced (:mod:`sdcompress.linalg.distributed`). The device becomes the
    accelerator's (``cuda:LOCAL_RANK``) unless the recipe names one. Only the main
    process writes into ``output.dir``: the others write into a temporary folder that
    is deleted afterwards, and log only warnings.

    Yields:
        (the config to run, whether this is the main process).
    """
    size = int(os.environ.get("WORLD_SIZE", "1") or 1)
    if size <= 1:
        yield config, True
        return
    import tempfile

    import torch
    import torch.distributed as dist
    from accelerate import Accelerator

    device = getattr(config, "device", None)
    owns_group = not dist.is_initialized()
    accelerator = Accelerator(cpu=device == "cpu" or not torch.cuda.is_available())
    if device in (None, "auto"):
        config = dataclasses.replace(config, device=str(accelerator.device)) if hasattr(config, "device") else config
    lib_logger = logging.getLogger("sdcompress")
    old_level = lib_logger.level
    scratch = None
    if not accelerator.is_main_process:
        lib_logger.setLevel(logging.WARNING)
        output = getattr(config, "output", None)
        if output is not None and hasattr(output, "dir"):
            scratch = tempfile.mkdtemp(prefix=f"sdcompress-rank{accelerator.process_index}-")
            out_dir = Path(scratch) / "run"
            config = dataclasses.replace(config, output=dataclasses.replace(output, dir=type(output.dir)(out_dir)))
    log.info("data parallel over %d processes (%s, device %s)", size, dist.get_backend(), accelerator.device)
    try:
        yield config, accelerator.is_main_process
    finally:
        lib_logger.setLevel(old_level)
        if scratch is not None:
            import shutil

            shutil.rmtree(scratch, ignore_errors=True)
        if owns_group and dist.is_initialized():
            dist.barrier()
            dist.destroy_process_group()


def run_recipe(path: str | Path, overrides: Sequence[str] = (), *, presets: Sequence[str] = ()) -> Any:
    """Load a recipe and run it with :func:`sdcompress.pipeline.run_pipeline`.

    Single process, or data parallel when launched by ``torchrun`` / ``accelerate launch``
    (see :func:`launch_context`). The resolved recipe is written to
    ``OUTPUT_DIR/resolved_recipe.yaml`` by the main process.

    Args:
        path: the recipe file.
        overrides: ``section.key=value`` strings.
        presets: extra presets layered over the file (below ``overrides``).

    Returns:
        What ``run_pipeline`` returns.

    Raises:
        ConfigError: a bad recipe or override (see :func:`load_recipe`); and whatever the
            pipeline raises.
    """
    from sdcompress.pipeline import run_pipeline

    config = load_recipe(path, overrides, presets=presets)
    with launch_context(config) as (run_config, is_main):
        result = run_pipeline(run_config)
        if is_main and getattr(getattr(run_config, "output", None), "dir", None) is not None:
            save_resolved_recipe(run_config, run_config.output.dir, source=str(path))
    return result
