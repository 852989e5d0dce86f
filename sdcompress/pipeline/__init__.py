"""The main job end to end (see :mod:`sdcompress.pipeline.run`): ``RunConfig`` and ``run_pipeline``."""

from sdcompress.pipeline.config import OutputConfig, RunConfig, resolve_device
from sdcompress.pipeline.folder import ARTIFACTS, clear_run, prepare_folder
from sdcompress.pipeline.run import run_pipeline

__all__ = ["ARTIFACTS", "OutputConfig", "RunConfig", "clear_run", "prepare_folder", "resolve_device", "run_pipeline"]
