"""sdcompress: the Sharpness Dimension (SD) of networks at the edge of stability, and
compression guided by it.

The public API is re-exported here lazily (importing ``sdcompress`` stays cheap and a
stage that is not needed is never imported). See README.md for a tour.
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

# public name -> module that defines it
_EXPORTS: dict[str, str] = {
    # data / models
    "load_data": "sdcompress.data",
    "BatchStream": "sdcompress.data",
    "DatasetBundle": "sdcompress.data",
    "FunctionalLoss": "sdcompress.models",
    # errors
    "SdcompressError": "sdcompress.errors",
    "ConfigError": "sdcompress.errors",
    "DataError": "sdcompress.errors",
    "ModelError": "sdcompress.errors",
    "OfflineError": "sdcompress.errors",
    "DivergenceError": "sdcompress.errors",
    "EstimatorError": "sdcompress.errors",
    "PlanError": "sdcompress.errors",
    "CompressionError": "sdcompress.errors",
    # train
    "TrainConfig": "sdcompress.train",
    "train_sgd": "sdcompress.train",
    # estimator
    "sharpness_dimension": "sdcompress.estimator",
    "estimate_sd": "sdcompress.estimator",
    "lyapunov_spectrum": "sdcompress.estimator",
    "SDEstimate": "sdcompress.estimator",
    # plan / compress / evaluate
    "plan": "sdcompress.plan",
    "Plan": "sdcompress.plan",
    "compress_": "sdcompress.compress",
    "evaluate": "sdcompress.evaluate",
    # api (load_model here handles compressed folders too)
    "load_model": "sdcompress.api",
    "run_pipeline": "sdcompress.api",
    # recipes and the fine-tuning callback
    "load_recipe": "sdcompress.recipe",
    "dump_recipe": "sdcompress.recipe",
    "run_recipe": "sdcompress.recipe",
    "SDCallback": "sdcompress.callback",
    "SDTracker": "sdcompress.callback",
    # configs and artifacts of every stage
    "ModelConfig": "sdcompress.config",
    "DataConfig": "sdcompress.config",
    "EstimateConfig": "sdcompress.estimator",
    "PlanConfig": "sdcompress.plan",
    "ModulePlan": "sdcompress.plan",
    "make_plan": "sdcompress.plan",
    "describe_modules": "sdcompress.plan",
    "module_statistics": "sdcompress.plan",
    "EvalConfig": "sdcompress.evaluate",
    "EvalReport": "sdcompress.evaluate",
    "Verdict": "sdcompress.evaluate",
    "verdict": "sdcompress.evaluate",
    "RunReport": "sdcompress.report",
    "render_run": "sdcompress.report",
    "RunConfig": "sdcompress.pipeline",
    "OutputConfig": "sdcompress.pipeline",
    "plan_model": "sdcompress.api",
    "save_compressed": "sdcompress.compress",
    "load_compressed": "sdcompress.compress",
    "CompressionReport": "sdcompress.compress",
}

__all__ = sorted(_EXPORTS) + ["__version__"]


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        value = getattr(importlib.import_module(_EXPORTS[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'sdcompress' has no attribute {name!r}")
